"""Recall@N from ranked DB indices, per query and over a set, and the exact expectation of
ranking the database uniformly at random."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from earthloc.retrieval.protocol import RECALL_NS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def first_hit_rank(pred_db_index: npt.ArrayLike, positives: Sequence[npt.ArrayLike]) -> IntArray:
    """0-based rank of the first positive in each query's predictions, or k if none."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    m, k = pred.shape
    if len(positives) != m:
        raise ValueError(f"{m} prediction rows but {len(positives)} positive lists")
    out = np.full(m, k, dtype=np.int64)
    for qi in range(m):
        pos = np.asarray(positives[qi], dtype=np.int64)
        hit = np.flatnonzero(np.isin(pred[qi], pos) & (pred[qi] >= 0))
        if len(hit):
            out[qi] = hit[0]
    return out


def recalls(
    pred_db_index: npt.ArrayLike,
    positives: Sequence[npt.ArrayLike],
    ns: Sequence[int] = RECALL_NS,
    collapse: bool = False,
) -> dict[int, float]:
    """Recall@N in percent: share of queries with a positive among their top-N predictions.

    `collapse=False` is upstream's count (a DB image repeated at several rotations takes
    several ranks); `collapse=True` drops repeats of an image after its first (best) rank.
    N beyond the number of prediction columns is an error (the count would be wrong)."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    if collapse:
        pred = _dedupe_rows(pred)
    m, k = pred.shape
    bad = [n for n in ns if n > k or n < 1]
    if bad:
        raise ValueError(f"recall N {bad} outside 1..{k} (the number of predictions per query)")
    if m == 0:
        return {int(n): float("nan") for n in ns}
    rank = first_hit_rank(pred, positives)
    return {int(n): float(100.0 * np.mean(rank < n)) for n in ns}


def _dedupe_rows(pred: IntArray) -> IntArray:
    out = np.full_like(pred, -1)
    for qi, row in enumerate(pred):
        valid = np.flatnonzero(row >= 0)
        _, first = np.unique(row[valid], return_index=True)
        keep = valid[np.sort(first)]
        out[qi, : len(keep)] = row[keep]
    return out


def recall_curve(
    pred_db_index: npt.ArrayLike, positives: Sequence[npt.ArrayLike], collapse: bool = False
) -> FloatArray:
    """Recall@N in percent for N = 1..k."""
    pred = np.asarray(pred_db_index, dtype=np.int64)
    if collapse:
        pred = _dedupe_rows(pred)
    m, k = pred.shape
    if m == 0:
        return np.full(k, np.nan, dtype=np.float32)
    rank = first_hit_rank(pred, positives)
    return (100.0 * np.cumsum(np.bincount(rank, minlength=k + 1)[:k]) / m).astype(np.float32)


def random_hit_probability(num_db: int, num_positives: npt.ArrayLike, k: int, copies: int = 1) -> FloatArray:
    """P(a positive in the top N), N = 1..k, per query (shape (Q, k), in [0, 1]), when the DB
    is ranked uniformly at random.

    The ranked list is a random order of `copies` x num_db entries (copies = 4: upstream's
    uncollapsed list of rotated copies; 1: collapsed), of which copies x P are positive
    for a query with P positives. P(no positive in the top n) = C(T - cP, n) / C(T, n)
    (hypergeometric)."""
    p = np.asarray(num_positives, dtype=np.float64).reshape(-1)
    total = copies * num_db
    i = np.arange(min(k, total), dtype=np.float64)
    neg = total - copies * p[:, None]
    # C(neg, n) / C(total, n) = prod_{i<n} (neg - i) / (total - i); a factor hits 0 once n > neg.
    miss = np.cumprod(np.clip(neg - i[None, :], 0.0, None) / (total - i[None, :]), axis=1)
    if k > total:  # beyond the whole list every query is found (if it has a positive)
        miss = np.concatenate([miss, np.repeat(miss[:, -1:], k - total, axis=1)], axis=1)
    return 1.0 - miss


def random_recall_curve(num_db: int, num_positives: npt.ArrayLike, k: int, copies: int = 1) -> FloatArray:
    """Expected Recall@N (N = 1..k, percent) of ranking the DB uniformly at random, exactly:
    `random_hit_probability` averaged over queries."""
    if np.asarray(num_positives).size == 0:
        return np.full(k, np.nan, dtype=np.float32)
    return (100.0 * np.mean(random_hit_probability(num_db, num_positives, k, copies), axis=0)).astype(np.float32)


def hits_at(first_rank: npt.ArrayLike, ns: Sequence[int]) -> FloatArray:
    """(Q, len(ns)) 0/1: whether each query's first positive (0-based rank, `first_hit_rank`)
    lies in its top N."""
    r = np.asarray(first_rank, dtype=np.int64).reshape(-1, 1)
    return (r < np.asarray(ns, dtype=np.int64)[None, :]).astype(np.float64)
