"""Simulated-photo benchmark: CPU seconds per 1024-px photo on one core.

    python benchmarks/bench_photos.py [--n N] [--size PX] [--render-px PX]

Renders the first N queries (by query id) whose nadir lies within 500 km of the Texas POI
(30, -95) from data/queries/queries.parquet with `render_photo` (all effects, their own
year, orientation and nadir) and prints CPU and wall seconds per photo (median, mean,
max). BLAS is pinned to one thread; the renderer itself uses none. The budget is about
one second per photo.
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.schema import CORNER_COLUMNS  # noqa: E402
from pipeline.synthetic.photos import photo_seed, render_photo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--render-px", type=int, default=None)
    parser.add_argument("--queries", type=Path, default=ROOT / "data" / "queries" / "queries.parquet")
    args = parser.parse_args()
    q = pd.read_parquet(args.queries).sort_values("query_id")
    lat, lon = np.radians(q["nadir_lat"]), np.radians(q["nadir_lon"])
    d = 6371.0 * np.arccos(
        np.clip(
            np.sin(lat) * np.sin(np.radians(30)) + np.cos(lat) * np.cos(np.radians(30)) * np.cos(lon - np.radians(-95)),
            -1,
            1,
        )
    )
    rows = q[d < 500].head(args.n)
    render_photo([float(v) for v in rows.iloc[0][CORNER_COLUMNS]], 2021, 0, 64)  # warm caches
    cpus, walls, areas = [], [], []
    for _, r in rows.iterrows():
        c0, w0 = time.process_time(), time.perf_counter()
        render_photo(
            [float(r[c]) for c in CORNER_COLUMNS], int(r["year"]), photo_seed(r["query_id"]), args.size,
            orientation=float(r["orientation"]), nadir=(float(r["nadir_lat"]), float(r["nadir_lon"])),
            render_px=args.render_px,
        )  # fmt: skip
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
        areas.append(float(r["nasa_area_km2"]))
    print(
        f"render_photo {args.size}px, render_px {args.render_px or 'default'}, {len(cpus)} Texas queries "
        f"({min(areas):.0f}-{max(areas):.0f} km2), one core"
    )
    for name, xs in (("cpu s/photo", cpus), ("wall s/photo", walls)):
        print(f"{name:>13}: median {statistics.median(xs):.2f}  mean {statistics.mean(xs):.2f}  max {max(xs):.2f}")


if __name__ == "__main__":
    main()
