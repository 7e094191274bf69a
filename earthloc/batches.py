"""Training batches: which regions are neutral to each other, and which regions form a batch.

Neutral pairs (paper Sec. 4.2, docs/upstream.md §4.3). Two regions whose footprints share ground
must not be pushed apart as negatives. Upstream tests lat/lon boxes of the corners; here
the footprints are the grid's polygons (MultiPolygons split at ±180 for regions across the
antimeridian), and a pair is neutral when their *interiors* intersect: `intersects` and
not `touches`. So, as upstream, regions that only share an edge are not neutral, a z9
region and the z10/z11 regions inside it are, and a region split at ±180 is neutral with
the regions it overlaps on either side. All pairs of the training set are found once
with an STRtree bulk query (vectorised shapely 2) and kept as sorted int64 keys
i * N + j, so a batch's (B, B) matrix is one binary search: this scales to the world
(175k regions, a few million pairs) without an N x N matrix.

Batches (paper Sec. 4.3, docs/upstream.md §4.2). A batch is B regions (each with its four years)
drawn from one cluster. Clusters come from k-means (faiss) on the current model's 2021
descriptors every `recluster_every` iterations; before the first clustering they are
random groups of *regions* (upstream's epochs 0-3 shuffled paths of all four years, so
most "quadruplets" were one year four times: bug §9.1, not repeated here).

Every batch is a pure function of (seed, iteration, cluster assignment): the batch order
does not depend on any iterator or RNG state, so a resumed run draws the same batches as
an uninterrupted one, and every DDP rank knows the whole global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import shapely

from pipeline.errors import ConfigError
from pipeline.schema import STREAM_BATCH, STREAM_RANDOM_CLUSTERS

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ClusterChoice = Literal["uniform", "size"]
SmallClusterPolicy = Literal["replace", "merge"]


# -- neutral pairs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NeutralPairs:
    """All ordered pairs (i, j) of training regions whose footprints share area, self included.

    `keys` holds i * n + j sorted ascending (symmetric: both (i, j) and (j, i) are there)."""

    n: int
    keys: IntArray

    @property
    def n_pairs(self) -> int:
        """Unordered pairs of distinct regions."""
        return (len(self.keys) - self.n) // 2

    def matrix(self, regions: npt.ArrayLike) -> BoolArray:
        """(B, B) bool: neutral[a, b] for the regions at batch positions a, b (duplicates included)."""
        idx = np.asarray(regions, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"region index outside 0..{self.n - 1}")
        query = idx[:, None] * self.n + idx[None, :]
        # Binary search in the sorted keys: O(B² log P), not a sort of all P pairs per batch.
        pos = np.minimum(np.searchsorted(self.keys, query), max(len(self.keys) - 1, 0))
        return self.keys[pos] == query if len(self.keys) else np.zeros(query.shape, dtype=bool)

    def neighbours(self, i: int) -> IntArray:
        """Regions neutral with region i (i itself included)."""
        lo, hi = np.searchsorted(self.keys, [i * self.n, (i + 1) * self.n])
        return self.keys[lo:hi] - i * self.n


def neutral_pairs(footprints: npt.ArrayLike) -> NeutralPairs:
    """Neutral pairs of polygons/MultiPolygons (EPSG:4326, already split at ±180).

    `intersects` and not `touches` is "the interiors meet", the exact form of upstream's
    strict box test (touching boxes are not neutral), on true footprints."""
    geoms = np.asarray(footprints, dtype=object)
    n = len(geoms)
    if n == 0:
        return NeutralPairs(0, np.zeros(0, dtype=np.int64))
    if shapely.is_missing(geoms).any() or shapely.is_empty(geoms).any():
        raise ValueError("every training region needs a non-empty footprint")
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="intersects")
    keep = ~shapely.touches(geoms[i], geoms[j])
    keys = np.unique(i[keep].astype(np.int64) * n + j[keep].astype(np.int64))
    # The predicate is symmetric, so both orders are present; the diagonal comes from self hits.
    return NeutralPairs(n, keys)


# -- clusters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterAssignment:
    """Cluster id per training region (index = training-region index)."""

    labels: IntArray
    n_clusters: int
    source: str  # "random" or "kmeans"
    iteration: int  # the training iteration at which it was computed

    def members(self, cluster: int) -> IntArray:
        return np.flatnonzero(self.labels == cluster)

    def sizes(self) -> IntArray:
        return np.bincount(self.labels, minlength=self.n_clusters).astype(np.int64)

    def to_state(self) -> dict[str, object]:
        return {
            "labels": self.labels.tolist(),
            "n_clusters": self.n_clusters,
            "source": self.source,
            "iteration": self.iteration,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> ClusterAssignment:
        return cls(
            np.asarray(state["labels"], dtype=np.int64), int(state["n_clusters"]),  # type: ignore[call-overload]
            str(state["source"]), int(state["iteration"]),  # type: ignore[call-overload]
        )  # fmt: skip


def random_clusters(n_regions: int, n_clusters: int, seed: int, iteration: int = 0) -> ClusterAssignment:
    """Random groups of regions (all four years of each), the clusters before the first k-means."""
    if n_regions < 1 or n_clusters < 1:
        raise ConfigError("need at least one region and one cluster")
    k = min(n_clusters, n_regions)
    rng = np.random.default_rng([seed, STREAM_RANDOM_CLUSTERS, iteration])
    labels = np.empty(n_regions, dtype=np.int64)
    for c, part in enumerate(np.array_split(rng.permutation(n_regions), k)):
        labels[part] = c
    return ClusterAssignment(labels, k, "random", iteration)


def kmeans_clusters(
    descriptors: npt.NDArray[np.float32],
    n_clusters: int,
    *,
    seed: int,
    niter: int = 100,
    max_points_per_centroid: int = 256,
    min_cluster_size: int = 0,
    iteration: int = 0,
) -> ClusterAssignment:
    """faiss k-means on (N, D) descriptors, every point assigned to its nearest centroid (L2).

    With `min_cluster_size` > 0, the members of smaller clusters are moved to the nearest
    centroid of a cluster that is large enough ("merge" policy), and ids are renumbered."""
    import faiss

    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n, d = x.shape
    k = max(1, min(n_clusters, n))
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, max_points_per_centroid=max_points_per_centroid)
    km.train(x)
    _, nearest = km.index.search(x, 1)
    labels = nearest[:, 0].astype(np.int64)
    centroids = km.centroids
    if centroids is None:  # faiss sets them in train(); None would be a faiss bug
        raise RuntimeError("faiss k-means returned no centroids")
    if min_cluster_size > 0:
        sizes = np.bincount(labels, minlength=k)
        big = np.flatnonzero(sizes >= min_cluster_size)
        if big.size == 0:  # nothing is large enough: one cluster of everything
            labels = np.zeros(n, dtype=np.int64)
            return ClusterAssignment(labels, 1, "kmeans", iteration)
        small_pts = np.flatnonzero(sizes[labels] < min_cluster_size)
        if small_pts.size:
            index = faiss.IndexFlatL2(d)
            index.add(np.ascontiguousarray(centroids[big]))
            _, j = index.search(x[small_pts], 1)
            labels[small_pts] = big[j[:, 0]]
        remap = np.full(k, -1, dtype=np.int64)
        remap[big] = np.arange(big.size)
        labels = remap[labels]
        k = int(big.size)
    return ClusterAssignment(labels, k, "kmeans", iteration)


def batch_regions(
    assignment: ClusterAssignment,
    *,
    seed: int,
    iteration: int,
    batch_size: int,
    cluster_choice: ClusterChoice = "uniform",
) -> IntArray:
    """The B training-region indices of batch `iteration`: a pure function of its arguments.

    One cluster is picked (uniformly among non-empty clusters, as upstream, or with
    probability proportional to its size), then B of its regions without replacement, or
    with replacement when it has fewer than B (as upstream; the duplicates are neutral to
    each other through the self pairs of `NeutralPairs`)."""
    if batch_size < 1:
        raise ConfigError("train.regions_per_batch must be >= 1")
    sizes = assignment.sizes()
    nonempty = np.flatnonzero(sizes > 0)
    rng = np.random.default_rng([seed, STREAM_BATCH, iteration])
    if cluster_choice == "uniform":
        cluster = int(nonempty[rng.integers(nonempty.size)])
    elif cluster_choice == "size":
        p = sizes[nonempty] / sizes[nonempty].sum()
        cluster = int(rng.choice(nonempty, p=p))
    else:
        raise ConfigError(f"train.cluster_choice must be uniform or size, got {cluster_choice!r}")
    members = assignment.members(cluster)
    return rng.choice(members, size=batch_size, replace=members.size < batch_size).astype(np.int64)


def rank_share(batch: IntArray, rank: int, world_size: int) -> slice:
    """The positions of a global batch that DDP rank `rank` loads and embeds (contiguous shares)."""
    bounds = np.linspace(0, len(batch), world_size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))
