"""Percentile bootstrap intervals of recalls and of the margin between two methods,
resampling queries or whole clusters of queries (ISS passes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd


def paired_margin(
    a: npt.ArrayLike, b: npt.ArrayLike, ns: Sequence[int], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[int, dict[str, float]]:
    """Recall@N of method a minus method b, in points, with a percentile bootstrap interval
    over queries (paired: the same resampled queries for both).

    `a` and `b` are (Q, len(ns)) per-query hit indicators or hit probabilities (a random
    ranking's expected hit, `random_hit_probability`). The interval says whether a
    difference is larger than what the choice of queries alone could produce."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 2 or a_.shape[1] != len(ns):
        raise ValueError(f"paired_margin: shapes {a_.shape} and {b_.shape} for {len(ns)} cut-offs")
    d = 100.0 * (a_ - b_)
    q = d.shape[0]
    if q == 0:
        return {int(n): {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")} for n in ns}
    rng = np.random.default_rng(seed)
    boot = np.stack([d[rng.integers(0, q, q)].mean(axis=0) for _ in range(n_boot)])
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    return {int(n): {"diff": float(d[:, j].mean()), "lo": float(lo[j]), "hi": float(hi[j])} for j, n in enumerate(ns)}


def cluster_bootstrap_means(
    values: npt.ArrayLike, clusters: npt.ArrayLike | None, *, n_boot: int = 2000, seed: int = 0
) -> npt.NDArray[np.float64]:
    """(n_boot, J) bootstrap replicates of the column means of `values` (Q, J), resampling
    whole clusters with replacement (None: every row its own cluster).

    Photos of one ISS pass are near-duplicates, so they are not independent draws: an
    interval that resamples photos one by one is too narrow. Resampling passes keeps each
    pass's photos together; a replicate's mean is over all photos of the drawn passes."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"cluster_bootstrap_means: values must be (Q, J), got shape {v.shape}")
    q = v.shape[0]
    labels = np.arange(q) if clusters is None else pd.factorize(np.asarray(clusters, dtype=object))[0]
    if len(labels) != q:
        raise ValueError(f"cluster_bootstrap_means: {len(labels)} cluster labels for {q} rows")
    c = int(labels.max()) + 1 if q else 0
    if c == 0:
        return np.full((n_boot, v.shape[1]), np.nan)
    sums = np.zeros((c, v.shape[1]))
    np.add.at(sums, labels, v)
    sizes = np.bincount(labels, minlength=c).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(c, np.full(c, 1.0 / c), size=n_boot).astype(np.float64)  # (n_boot, C) counts
    return (draws @ sums) / (draws @ sizes)[:, None]


def cluster_interval(
    values: npt.ArrayLike,
    clusters: npt.ArrayLike | None,
    ns: Sequence[int],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    scale: float = 100.0,
) -> dict[int, dict[str, float]]:
    """Mean of each column of `values` (Q, len(ns)) x `scale`, with a percentile interval
    from `cluster_bootstrap_means`: {n: {value, lo, hi}}."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(ns):
        raise ValueError(f"cluster_interval: shape {v.shape} for {len(ns)} cut-offs")
    if v.shape[0] == 0:
        return {int(n): {"value": float("nan"), "lo": float("nan"), "hi": float("nan")} for n in ns}
    boot = scale * cluster_bootstrap_means(v, clusters, n_boot=n_boot, seed=seed)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    mean = scale * v.mean(axis=0)
    return {int(n): {"value": float(mean[j]), "lo": float(lo[j]), "hi": float(hi[j])} for j, n in enumerate(ns)}


def cluster_margin(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    ns: Sequence[int],
    clusters: npt.ArrayLike | None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[int, dict[str, float]]:
    """Recall@N of method a minus method b, in points, with a paired percentile interval
    over clusters (passes): both methods see the same resampled passes. `a`, `b`: (Q,
    len(ns)) hit indicators or hit probabilities. With `clusters=None` this is the
    per-query bootstrap."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 2 or a_.shape[1] != len(ns):
        raise ValueError(f"cluster_margin: shapes {a_.shape} and {b_.shape} for {len(ns)} cut-offs")
    m = cluster_interval(a_ - b_, clusters, ns, n_boot=n_boot, seed=seed, level=level)
    return {n: {"diff": v["value"], "lo": v["lo"], "hi": v["hi"]} for n, v in m.items()}
