"""Fetch benchmark: unique-tile fetcher (pipeline.fetch.run) vs a naive 16-requests-per-region one.

Both talk to the same local synthetic WMTS (pipeline/synthetic/server.py, 127.0.0.1) with the
same client settings (concurrency cap, request-start spacing) and write the same mosaics.
Every tile the run needs is rendered into the server's cache before timing, so both fetchers
pay the same per-request server cost and neither pays for rendering; what differs is the
number of requests and the local work. The start spacing is the politeness knob that bounds
a real run (EOX: 0.5 s, params fetch.client.min_interval_s); the benchmark reports several
spacings, from 0 (CPU-bound: mosaic decode/encode dominates) upward.
Default: the regions of zoom 11 of the areas fetched for every year (params fetch.aois), one year.

    .venv/bin/python benchmarks/bench_fetch.py [--zoom 11] [--years 1] [--spacings 0 0.005 0.02]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from pipeline.fetch.client import ClientConfig, WmtsClient  # noqa: E402
from pipeline.fetch.plan import region_tile_keys  # noqa: E402
from pipeline.fetch.run import RunConfig, _describe, _jobs_for_shard, fetch_regions  # noqa: E402
from pipeline.fetch.store import TileStore  # noqa: E402
from pipeline.params import parse_yaml  # noqa: E402


def naive_fetch(regions: pd.DataFrame, years: list[int], zoom: int, root: Path, cfg: ClientConfig, threads: int) -> int:
    """16 GETs per region-year (upstream's way), same client limits; returns regions written."""
    store = TileStore(root)
    df = _describe(regions, [zoom], 4)
    jobs = [j for y in years for j in _jobs_for_shard(df, y, 4)]

    def one(job) -> bool:  # type: ignore[no-untyped-def]
        keys = region_tile_keys(job.year, job.zoom, job.keys[0].y, job.keys[0].x)
        results = [client.get_tile(k) for k in keys]
        if any(r.status != "ok" for r in results):
            return False
        store.write_mosaic(job.relpath, [r.data for r in results], 75)  # type: ignore[misc]
        return True

    with WmtsClient(cfg) as client, ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, jobs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoom", type=int, default=11)
    ap.add_argument("--years", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument(
        "--spacings", type=float, nargs="+", default=[0.0, 0.005, 0.02], help="seconds between request starts"
    )
    ap.add_argument("--grid", type=Path, default=ROOT / "data/grid/regions.parquet")
    args = ap.parse_args()

    from pipeline.stages.fetch import FetchParams, local_template, select_regions
    from pipeline.synthetic.server import SyntheticTileServer

    params = FetchParams.from_section(parse_yaml((ROOT / "params.yaml").read_text())["fetch"])
    # The areas fetched for every year (the training areas), not the wide 2021-only database disc.
    regions = select_regions(args.grid, args.zoom, params.aois, min(params.years))
    years = list(range(2021 - args.years + 1, 2022))
    images = len(regions) * len(years)
    threads = 2 * args.concurrency
    print(f"{len(regions)} regions x {len(years)} years = {images} region-images at zoom {args.zoom} "
          f"(default AOI); concurrency {args.concurrency}")  # fmt: skip

    from pipeline.fetch.plan import request_counts, unique_tiles

    # The plan for the whole world (what a world build asks EOX for), per zoom and in all.
    world = pd.read_parquet(args.grid, columns=["zoom", "row", "col"])
    total_unique = total_regions = 0
    for z in sorted(world["zoom"].unique()):
        w = world[world["zoom"] == z]
        c = request_counts([(int(z), int(r), int(col)) for r, col in zip(w["row"], w["col"])], [2021])
        total_unique, total_regions = total_unique + c.unique, total_regions + c.region_years
        print(f"world plan zoom {z}: {c.region_years} regions, {c.unique} unique tiles per year = "
              f"{c.per_region_year:.2f} requests per region-year (naive 16)")  # fmt: skip
    print(f"world plan, all zooms: {total_unique / total_regions:.3f} requests per region-year "
          f"({16 * total_regions / total_unique:.2f}x fewer than naive)")  # fmt: skip

    keys = unique_tiles([(args.zoom, int(r.row), int(r.col)) for r in regions.itertuples()], years)
    with SyntheticTileServer(seed=0, cache_tiles=len(keys) + 16) as server:
        t0 = time.perf_counter()
        for k in keys:  # warm the server's cache: rendering is not what is measured
            server.tile(params.client.layer(k.year), "default", "g", k.z, k.y, k.x)
        print(f"server cache warmed with {len(keys)} tiles in {time.perf_counter() - t0:.1f} s")
        template = local_template(params.client.url_template, server.base_url)
        for spacing in args.spacings:
            cfg = ClientConfig(url_template=template, contact="bench@example.invalid",
                               max_concurrency=args.concurrency, min_interval_s=spacing)  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                r0 = server.requests
                t0 = time.perf_counter()
                s = fetch_regions(regions, years, [args.zoom], Path(tmp) / "unique", cfg,
                                  RunConfig(progress=False, source="synthetic", threads=threads))  # fmt: skip
                t_unique = time.perf_counter() - t0
                req_unique = server.requests - r0
                assert s["regions_written"] == images, s

                t0 = time.perf_counter()
                written = naive_fetch(regions, years, args.zoom, Path(tmp) / "naive", cfg, threads)
                t_naive = time.perf_counter() - t0
                req_naive = server.requests - r0 - req_unique
                assert written == images
            print(f"-- request-start spacing {spacing * 1e3:.0f} ms")
            for name, t, req in (("unique-tile", t_unique, req_unique), ("naive", t_naive, req_naive)):
                print(f"{name:12s} {t:7.2f} s  {images / t:7.1f} region-images/s  {req:6d} requests  "
                      f"{req / images:5.2f} requests/region-image")  # fmt: skip
            print(f"throughput {t_naive / t_unique:.2f}x the naive fetcher (target >= 3), "
                  f"{req_unique / images:.2f} requests per region-year (target <= 4.3)")  # fmt: skip


if __name__ == "__main__":
    main()
