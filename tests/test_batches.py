"""Neutral pairs from true footprints (zooms, touching, antimeridian) and clustered batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely

from earthloc.batches import (
    ClusterAssignment,
    batch_regions,
    kmeans_clusters,
    neutral_pairs,
    random_clusters,
    rank_share,
)
from pipeline.geo.regions import describe_regions


def footprints(regions: list[tuple[int, int, int]]) -> np.ndarray:
    _, fps = describe_regions(pd.DataFrame(regions, columns=["zoom", "row", "col"]))
    return np.asarray(fps, dtype=object)


def test_overlapping_zooms_are_neutral_touching_are_not() -> None:
    z9 = (9, 210, 120)  # covers z9 tiles rows 210-213, cols 120-123
    inside_z10 = (10, 422, 242)  # z10 rows 422-425 = z9 rows 211-212.5: inside
    inside_z11 = (11, 846, 486)  # inside the z9 region too
    overlap_z9 = (9, 212, 120)  # stride-2 neighbour: 50 % overlap
    touch_z9 = (9, 214, 120)  # starts where z9 ends: shares an edge only
    touch_z10 = (10, 428, 240)  # z10 rows 428-431 = z9 rows 214-215.5: touches from below
    corner_z9 = (9, 214, 124)  # shares only the SE corner point
    far = (9, 230, 140)
    regs = [z9, inside_z10, inside_z11, overlap_z9, touch_z9, touch_z10, corner_z9, far]
    fps = footprints(regs)
    assert shapely.touches(fps[0], fps[4]) and shapely.touches(fps[0], fps[5]) and shapely.touches(fps[0], fps[6])
    pairs = neutral_pairs(fps)
    m = pairs.matrix(np.arange(len(regs)))
    assert m.dtype == bool and (m == m.T).all() and m.diagonal().all()
    assert m[0, 1] and m[0, 2] and m[1, 2]  # a z9 region and the z10/z11 regions inside it
    assert m[0, 3]  # 50 % overlap at one zoom
    assert not m[0, 4] and not m[0, 5] and not m[0, 6]  # touching edges or corners
    assert not m[0, 7] and not m[7, :7].any()
    # upstream's box rule on these axis-aligned regions gives the same answer
    b = shapely.bounds(fps)
    box = ~((b[:, None, 3] <= b[None, :, 1]) | (b[None, :, 3] <= b[:, None, 1])
            | (b[:, None, 2] <= b[None, :, 0]) | (b[None, :, 2] <= b[:, None, 0]))  # fmt: skip
    assert (box == m).all()


def test_antimeridian_region_is_neutral_with_both_sides() -> None:
    n = 1 << 9
    split = (9, 200, n - 2)  # columns 510, 511, 0, 1: split at ±180 into a MultiPolygon
    east_side = (9, 200, n - 4)  # columns 508-511: overlaps the west part (lon < 180)
    west_side = (9, 200, 0)  # columns 0-3: overlaps the part beyond -180
    z10_west = (10, 401, 1)  # inside west_side and the split region's -180 part
    touch_east = (9, 200, n - 6)  # columns 506-509 overlap east_side only... 506..509 vs split 510: touches? no gap
    far_west = (9, 200, 4)  # columns 4-7: touches west_side, far from the split region
    regs = [split, east_side, west_side, z10_west, touch_east, far_west]
    fps = footprints(regs)
    assert fps[0].geom_type == "MultiPolygon"
    m = neutral_pairs(fps).matrix(np.arange(len(regs)))
    assert m[0, 1] and m[0, 2] and m[0, 3]  # both sides of ±180, and a finer zoom
    assert not m[1, 2]  # lon 174.4..180 and -180..-177.2 share no ground
    assert not m[0, 4]  # columns 506-509 end where the split region begins (lon 178.6): touching
    assert not m[0, 5] and not m[2, 5]  # starts at column 4 = where west_side ends


def test_neutral_pairs_sparse_and_duplicates() -> None:
    regs = [(10, 400 + 2 * i, 100 + 2 * j) for i in range(6) for j in range(6)]
    pairs = neutral_pairs(footprints(regs))
    # interior region: itself + 8 stride-2 neighbours (4x4 regions, stride 2, 50 % overlap)
    assert len(pairs.neighbours(14)) == 9
    assert pairs.n_pairs == (len(pairs.keys) - 36) // 2
    m = pairs.matrix([14, 14, 0])  # a region drawn twice is neutral with itself
    assert m[0, 1] and not m[0, 2]


def test_random_clusters_partition_regions() -> None:
    ca = random_clusters(103, 10, seed=3)
    assert ca.source == "random" and ca.n_clusters == 10
    assert sorted(np.concatenate([ca.members(c) for c in range(10)]).tolist()) == list(range(103))
    assert ca.sizes().min() >= 10
    assert (random_clusters(103, 10, seed=3).labels == ca.labels).all()
    assert not (random_clusters(103, 10, seed=4).labels == ca.labels).all()


def test_batches_come_from_one_cluster_and_are_pure() -> None:
    ca = random_clusters(200, 5, seed=0)
    for it in range(20):
        b = batch_regions(ca, seed=0, iteration=it, batch_size=16)
        assert len(set(ca.labels[b].tolist())) == 1  # one cluster
        assert len(set(b.tolist())) == 16  # without replacement (clusters hold 40)
        assert (b == batch_regions(ca, seed=0, iteration=it, batch_size=16)).all()  # pure function
    assert not (
        batch_regions(ca, seed=0, iteration=0, batch_size=16) == batch_regions(ca, seed=0, iteration=1, batch_size=16)
    ).all()


def test_small_cluster_draws_with_replacement_and_choice_by_size() -> None:
    labels = np.array([0] * 3 + [1] * 97)
    ca = ClusterAssignment(labels, 2, "kmeans", 0)
    seen_small = False
    for it in range(40):
        b = batch_regions(ca, seed=1, iteration=it, batch_size=8)
        if ca.labels[b[0]] == 0:
            seen_small = True
            assert set(b.tolist()) <= {0, 1, 2} and len(b) == 8
    assert seen_small  # uniform choice picks the 3-region cluster about half the time
    by_size = [
        ca.labels[batch_regions(ca, seed=1, iteration=it, batch_size=8, cluster_choice="size")[0]] for it in range(200)
    ]
    assert np.mean(np.asarray(by_size) == 0) < 0.1


def test_kmeans_clusters_follow_descriptors_and_merge() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 20
    blob = np.repeat(np.arange(4), 50)
    x = (centres[blob] + rng.normal(size=(200, 16))).astype(np.float32)
    ca = kmeans_clusters(x, 8, seed=1, niter=20)
    assert ca.n_clusters == 8 and ca.source == "kmeans" and ca.labels.shape == (200,)
    for c in range(8):  # no cluster mixes two well-separated blobs
        assert len(set(blob[ca.labels == c].tolist())) <= 1
    assert (kmeans_clusters(x, 8, seed=1, niter=20).labels == ca.labels).all()  # seeded
    merged = kmeans_clusters(x, 8, seed=1, niter=20, min_cluster_size=40)
    assert merged.sizes().min() >= 40 and merged.n_clusters <= 5
    assert sorted(np.unique(merged.labels).tolist()) == list(range(merged.n_clusters))


@pytest.mark.parametrize("b,w", [(16, 2), (12, 3), (8, 1)])
def test_rank_shares_cover_the_batch(b: int, w: int) -> None:
    batch = np.arange(b)
    parts = [batch[rank_share(batch, r, w)] for r in range(w)]
    assert np.concatenate(parts).tolist() == batch.tolist()
    assert len({len(p) for p in parts}) == 1
