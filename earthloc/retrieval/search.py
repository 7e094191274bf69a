"""Top-k search of query descriptors in the database index, raw faiss ids mapped back to
(DB image, rotation), and the rotations of one DB image collapsed to its best one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from earthloc.retrieval.index import IndexSpec, build_index
from earthloc.retrieval.protocol import ROTATIONS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query after mapping raw faiss ids back: DB image, rotation angle (degrees,
    counter-clockwise applied to the DB image), score (inner product). Slots faiss could not
    fill hold db_index -1, angle -1, score -inf. `raw_id` is the faiss row (-1 if none)."""

    db_index: IntArray
    angle: IntArray
    score: FloatArray
    raw_id: IntArray

    @property
    def k(self) -> int:
        return int(self.db_index.shape[1])

    def head(self, k: int) -> SearchResult:
        return SearchResult(self.db_index[:, :k], self.angle[:, :k], self.score[:, :k], self.raw_id[:, :k])


def map_raw_ids(raw: npt.ArrayLike, num_db: int, rotations: Sequence[int] = ROTATIONS) -> tuple[IntArray, IntArray]:
    """Raw rotation-major ids -> (db_index = j mod N, angle = rotations[j div N]); -1 stays -1
    (upstream's Python modulo turned it into image N-1 at -90°)."""
    raw = np.asarray(raw, dtype=np.int64)
    if num_db <= 0:
        raise ValueError("num_db must be positive")
    rot = np.asarray(rotations, dtype=np.int64)
    valid = raw >= 0
    if np.any(raw[valid] >= num_db * len(rot)):
        raise ValueError("raw id beyond the rotation-major index")
    db_index = np.where(valid, raw % num_db, -1)
    angle = np.where(valid, rot[np.where(valid, raw // num_db, 0)], -1)
    return db_index, angle


def search(
    db_desc: npt.ArrayLike | None,
    query_desc: npt.ArrayLike,
    k: int,
    *,
    index: Any = None,
    index_spec: IndexSpec = IndexSpec(),
    num_db: int | None = None,
    rotations: Sequence[int] = ROTATIONS,
) -> SearchResult:
    """Top-k raw (uncollapsed) results of each query.

    `db_desc` (R, N, D) builds an index of `index_spec`; or pass a prebuilt `index` with
    `num_db` = N. `query_desc` is (M, D), or (R', M, D) of which rotation 0 is used."""
    q = np.asarray(query_desc, dtype=np.float32)
    if q.ndim == 3:
        q = q[0]
    q = np.ascontiguousarray(q)
    if index is None:
        if db_desc is None:
            raise ValueError("give db_desc or index")
        a = np.asarray(db_desc)
        num_db = a.shape[1] if a.ndim == 3 else (a.shape[0] // len(rotations))
        index = build_index(a, index_spec)
    if num_db is None:
        num_db = index.ntotal // len(rotations)
    if index.ntotal != num_db * len(rotations):
        raise ValueError(f"index holds {index.ntotal} vectors, expected {num_db} x {len(rotations)} rotations")
    if k < 1:
        raise ValueError("k must be positive")
    m = q.shape[0]
    raw = np.full((m, k), -1, dtype=np.int64)
    score = np.full((m, k), -np.inf, dtype=np.float32)
    # Ask faiss for no more than it holds, then pad: the -1 guard upstream lacked.
    k_eff = min(k, int(index.ntotal))
    if m and k_eff:
        s, i = index.search(q, k_eff)
        raw[:, :k_eff] = i
        score[:, :k_eff] = np.where(i >= 0, s, -np.inf)
    db_index, angle = map_raw_ids(raw, num_db, rotations)
    return SearchResult(db_index, angle, score, raw)


def collapse_rotations(res: SearchResult, k: int | None = None) -> SearchResult:
    """Keep each DB image once, at its best-scoring (first) rank, then re-rank images; pad
    with -1. To get an exact collapsed top-k, search R*k raw results first (each image
    takes at most R raw ranks)."""
    m, kk = res.db_index.shape
    k = kk if k is None else k
    out = SearchResult(
        np.full((m, k), -1, np.int64), np.full((m, k), -1, np.int64),
        np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64),
    )  # fmt: skip
    for qi in range(m):
        row = res.db_index[qi]
        valid = np.flatnonzero(row >= 0)
        _, first = np.unique(row[valid], return_index=True)
        keep = valid[np.sort(first)][:k]
        n = len(keep)
        out.db_index[qi, :n] = row[keep]
        out.angle[qi, :n] = res.angle[qi, keep]
        out.score[qi, :n] = res.score[qi, keep]
        out.raw_id[qi, :n] = res.raw_id[qi, keep]
    return out
