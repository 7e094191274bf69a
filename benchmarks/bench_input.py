"""Input pipeline speed: images/s per core of decode + resize (earthloc.images.load_rgb), with and
without PIL's JPEG draft mode, and the throughput of the training DataLoader.

    python benchmarks/bench_input.py --tiles tiles --grid data/grid/regions.parquet --size 160

Without a tile store, `--synthetic N` writes N 1024-px JPEGs of the synthetic world into a
temporary store first. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from earthloc.data import RegionYearsDataset, loader, training_regions
from earthloc.images import load_rgb


def per_core(paths: list[Path], size: int, draft: bool) -> float:
    load_rgb(paths[0], size, draft=draft)  # warm the page cache and imports
    t0 = time.process_time()
    for p in paths:
        load_rgb(p, size, draft=draft)
    return len(paths) / (time.process_time() - t0)


def synthetic_jpegs(root: Path, n: int) -> list[Path]:
    from PIL import Image

    from pipeline.synthetic.world import render_tile

    out = []
    for i in range(n):
        tiles = [[render_tile(2021, 11, 840 + r, 480 + 4 * i + c) for c in range(4)] for r in range(4)]
        img = np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)
        p = root / f"img_{i}.jpg"
        Image.fromarray(img).save(p, quality=75)
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=Path, default=Path("tiles"))
    ap.add_argument("--grid", type=Path, default=Path("data/grid/regions.parquet"))
    ap.add_argument("--size", type=int, nargs="+", default=[160, 320])
    ap.add_argument("--images", type=int, default=120, help="images decoded per measurement")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader measurement")
    ap.add_argument("--regions-per-batch", type=int, default=16)
    ap.add_argument("--synthetic", type=int, default=0, help="use N synthetic 1024-px JPEGs instead of a store")
    args = ap.parse_args()

    regions = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        paths = synthetic_jpegs(Path(tmp.name), args.synthetic)
    else:
        regions = training_regions(args.tiles, args.grid)
        paths = [regions.abs_path(i, y) for i in range(len(regions)) for y in range(len(regions.years))][: args.images]
    print(f"input pipeline: {len(paths)} JPEGs of 1024 px, decode + bilinear resize, one process (CPU time)")
    for size in args.size:
        full = per_core(paths, size, draft=False)
        fast = per_core(paths, size, draft=True)
        print(f"  size {size:4d}: {fast:7.1f} img/s per core with draft mode, {full:6.1f} without ({fast / full:.1f}x)")

    if regions is not None:
        size = args.size[0]
        ds = RegionYearsDataset(regions, size)
        b = args.regions_per_batch
        n_batches = max(1, min(len(regions) // b, 8))
        batches = [list(range(i * b, (i + 1) * b)) for i in range(n_batches)]
        t0 = time.monotonic()
        n = 0
        for batch in loader(ds, batches, num_workers=args.workers, seed=0):
            n += batch.images.shape[0] * batch.images.shape[1]
        wall = time.monotonic() - t0
        print(
            f"  DataLoader, {args.workers} workers, size {size}, B={b} regions x 4 years: {n / wall:.1f} img/s wall "
            f"({n} images in {wall:.1f} s, incl. worker start-up; {os.cpu_count()} cores shared)"
        )


if __name__ == "__main__":
    main()
