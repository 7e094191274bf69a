"""Synthetic-world benchmark: milliseconds per 256-px tile on one core.

    python benchmarks/bench_synthetic.py [--tiles N] [--seed S]

For zooms 9, 10 and 11 it renders N tiles (a row of neighbours at each of a few land,
coast, mountain and sea places, every place for two years) with `render_tile` and prints
the CPU time and the wall time per tile, first with glibc's default allocator settings,
then after `tune_allocator()` (what the tile server does: keep freed heap instead of
page-faulting it back for every tile). Each figure is the median of three passes. BLAS
is pinned to one thread before numpy is imported; the renderer itself uses no BLAS.
CPU time is the figure to compare with the 20 ms target: on a shared machine wall time
also counts waiting for the core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mercantile  # noqa: E402

from pipeline.synthetic.server import tune_allocator  # noqa: E402
from pipeline.synthetic.world import render_tile  # noqa: E402

# (lon, lat) on the real Earth, whose land the world follows: Texas coastal plain, the
# Alps, the Amazon mouth (coast), the Sahara, the open Pacific
PLACES = ((-96.5, 30.5), (9.0, 46.3), (-48.5, -1.3), (10.0, 24.0), (-170.0, 10.0))
YEARS = (2018, 2021)


def bench_zoom(zoom: int, tiles: int, seed: int) -> tuple[float, float, int]:
    """(CPU ms, wall ms, count) per tile over `tiles` tiles spread over PLACES and YEARS."""
    jobs = []
    per_place = max(1, tiles // (len(PLACES) * len(YEARS)))
    for lon, lat in PLACES:
        t = mercantile.tile(lon, lat, zoom)
        for year in YEARS:
            jobs += [(t.x + k, t.y, year) for k in range(per_place)]
    render_tile(zoom, jobs[0][0], jobs[0][1], jobs[0][2], seed=seed)  # warm caches (sea level, tables)
    cpus, walls = [], []
    for _ in range(3):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for x, y, year in jobs:
            render_tile(zoom, x % (1 << zoom), y, year, seed=seed)
        cpus.append(time.process_time() - cpu0)
        walls.append(time.perf_counter() - wall0)
    return 1000.0 * statistics.median(cpus) / len(jobs), 1000.0 * statistics.median(walls) / len(jobs), len(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=50, help="tiles per zoom (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"render_tile, 256x256, one core, seed {args.seed}, median of 3 passes")
    print(f"{'allocator':>9} {'zoom':>4} {'tiles':>6} {'cpu ms/tile':>12} {'wall ms/tile':>13}")
    for label in ("default", "tuned"):
        if label == "tuned" and not tune_allocator():
            print("(no glibc: allocator left as it is)")
            break
        for zoom in (9, 10, 11):
            cpu, wall, n = bench_zoom(zoom, args.tiles, args.seed)
            print(f"{label:>9} {zoom:>4} {n:>6} {cpu:>12.1f} {wall:>13.1f}")


if __name__ == "__main__":
    main()
