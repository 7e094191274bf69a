"""Geometry benchmarks: prints figures, asserts nothing.

    python benchmarks/bench_geometry.py [--skip-large] [--queries N --regions M]

1. world grid: wall time of `build_grid` and the region count (paper: "roughly 175k").
2. real intersect: the 17,763 real queries against the world grid on dask
   (LocalCluster, 2 workers, cluster start-up included), plus the single-process time.
3. large intersect: N generated queries (real footprints moved to random places) against
   M generated regions (the whole stride-2 grid, sea included, to the latitude that
   yields M) on the same 2-worker LocalCluster.
4. evaluation sets next to the paper's Table 1 (read from data/evalsets/*/summary.json
   when `dvc repro` has made them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.geo.regions import GridSpec, candidate_regions, describe_regions  # noqa: E402
from pipeline.stages.grid import GridParams, build_grid  # noqa: E402
from pipeline.stages.intersect import IntersectParams, intersect_queries  # noqa: E402

PAPER_TABLE1 = {  # name: (queries, database) from the EarthLoc paper, Table 1
    "texas": (6142, "34k"),
    "alps": (2394, "53k"),
    "california": (3568, "30k"),
    "gobi": (726, "54k"),
    "amazon": (682, "19k"),
    "toshka": (2164, "63k"),
}


def bench_grid() -> object:
    t0 = time.perf_counter()
    grid = build_grid(GridParams(spec=GridSpec()))
    dt = time.perf_counter() - t0
    per_zoom = grid.groupby("zoom").size().to_dict()
    print(f"[grid] world: {len(grid):,} regions {per_zoom} in {dt:.1f} s (paper: roughly 175k; target <= 15 s)")
    return grid


def bench_real_intersect(grid: object) -> None:
    import geopandas as gpd

    from pipeline.geo.area import to_equal_area
    from pipeline.geo.overlap import overlap_pairs
    from pipeline.stages.queries import QueriesParams, ingest, read_nasa_csv

    params = QueriesParams()
    queries, _ = ingest(read_nasa_csv(ROOT / params.csv), params)
    ip = IntersectParams(n_workers=2, threads_per_worker=1, partitions=8, densify_deg=params.densify_deg)
    t0 = time.perf_counter()
    pairs = intersect_queries(queries, grid, ip)
    dt = time.perf_counter() - t0
    print(
        f"[intersect] {len(queries):,} real queries x {len(grid):,} regions: {len(pairs):,} pairs, "
        f"{dt:.1f} s wall on a 2-worker LocalCluster incl. start-up (target <= 10 s)"
    )
    t0 = time.perf_counter()
    q = to_equal_area(queries.geometry.values, params.densify_deg)
    r = to_equal_area(gpd.GeoSeries(grid.geometry).values)
    single = overlap_pairs(q, r, shapely.area(q) / 1e6, shapely.area(r) / 1e6)
    print(f"[intersect] same on one process, no dask: {time.perf_counter() - t0:.1f} s ({len(single):,} pairs)")


def generated_regions(m: int) -> object:
    """The first `m` regions of the stride-2 grid with sea, widening the latitude band
    until there are enough."""
    import geopandas as gpd

    for lat in (60.0, 65.0, 70.0, 75.0, 80.0, 85.0):
        cand = candidate_regions(GridSpec(max_abs_lat=lat))
        if len(cand) >= m:
            break
    rng = np.random.default_rng(0)
    cand = cand.iloc[np.sort(rng.choice(len(cand), size=min(m, len(cand)), replace=False))].reset_index(drop=True)
    table, geoms = describe_regions(cand)
    return gpd.GeoDataFrame(table, geometry=geoms, crs="EPSG:4326")


def generated_queries(n: int) -> object:
    """Real footprints shifted to random longitudes and latitudes (shape and size
    distribution kept), split at the antimeridian where they now cross it."""
    import geopandas as gpd

    from pipeline.geo.footprints import quads_from_corners, split_antimeridian
    from pipeline.schema import CORNER_LAT_COLUMNS, CORNER_LON_COLUMNS
    from pipeline.stages.queries import QueriesParams, ingest, read_nasa_csv

    params = QueriesParams()
    real, _ = ingest(read_nasa_csv(ROOT / params.csv), params)
    rng = np.random.default_rng(1)
    pick = rng.integers(0, len(real), n)
    lats = real[list(CORNER_LAT_COLUMNS)].to_numpy()[pick]
    lons = real[list(CORNER_LON_COLUMNS)].to_numpy()[pick]
    dlat = rng.uniform(-55, 55, n) - lats.mean(axis=1)
    dlon = rng.uniform(-180, 180, n) - lons.mean(axis=1)
    lats = np.clip(lats + dlat[:, None], -84, 84)
    lons = lons + dlon[:, None]  # may leave [-180, 180]: split_antimeridian folds it back
    geoms = split_antimeridian(quads_from_corners(lats, lons))
    return gpd.GeoDataFrame({"query_id": [f"GEN-E-{i}" for i in range(n)]}, geometry=geoms, crs="EPSG:4326")


def bench_large(n_queries: int, n_regions: int) -> None:
    t0 = time.perf_counter()
    regions = generated_regions(n_regions)
    queries = generated_queries(n_queries)
    print(
        f"[large] generated {len(queries):,} queries and {len(regions):,} regions in {time.perf_counter() - t0:.1f} s"
    )
    ip = IntersectParams(n_workers=2, threads_per_worker=1, partitions=32)
    t0 = time.perf_counter()
    pairs = intersect_queries(queries, regions, ip)
    dt = time.perf_counter() - t0
    print(
        f"[large] {len(queries):,} queries x {len(regions):,} regions: {len(pairs):,} pairs in {dt:.1f} s "
        f"({dt / 60:.2f} min) on a 2-worker LocalCluster (target <= 10 min)"
    )


def report_evalsets() -> None:
    root = ROOT / "data" / "evalsets"
    print("[evalset] name: kept queries / database (ours) vs paper Table 1")
    for name, (pq, pdb) in PAPER_TABLE1.items():
        f = root / name / "summary.json"
        if not f.exists():
            print(f"[evalset] {name}: not built (run `make repro`)")
            continue
        s = json.loads(f.read_text())
        print(
            f"[evalset] {name:<11} {s['num_queries']:>5} / {s['num_db']:>6,}   paper {pq:>5} / {pdb:>4}   "
            f"(within radius {s['num_within_radius']}, dropped: no positive {s['num_dropped_no_positive']}, "
            f"positive outside db {s['num_dropped_positive_outside_db']})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--queries", type=int, default=300_000)
    ap.add_argument("--regions", type=int, default=700_000)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    grid = bench_grid()
    bench_real_intersect(grid)
    if not args.skip_large:
        bench_large(args.queries, args.regions)
    report_evalsets()


if __name__ == "__main__":
    main()
