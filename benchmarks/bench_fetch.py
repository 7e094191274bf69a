"""Fetch benchmark: unique-tile fetcher (pipeline.fetch.run) vs a naive 16-requests-per-region one.

Both talk to the same local stub WMTS (tests/fetch_stub.py, 127.0.0.1 only) with the same
client settings (concurrency cap, start spacing), and both write the same mosaics. The start
spacing stands in for the polite rate limit that bounds a real run, so throughput follows the
number of requests. Default: every stride-2 region of zoom 5 (16 x 15 = 240, a closed ring of
columns, so only the top and bottom edges cost extra tiles) x 2 years.

    .venv/bin/python benchmarks/bench_fetch.py [--zoom 5] [--region-rows 15] [--years 2]
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fetch_stub import StubWmts  # noqa: E402

from pipeline.fetch.client import ClientConfig, WmtsClient  # noqa: E402
from pipeline.fetch.plan import region_tile_keys  # noqa: E402
from pipeline.fetch.run import RunConfig, _describe, _jobs_for_shard, fetch_regions  # noqa: E402
from pipeline.fetch.store import TileStore  # noqa: E402


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
    ap.add_argument("--zoom", type=int, default=5)
    ap.add_argument("--region-rows", type=int, default=15, help="rows of regions (stride 2) from the top")
    ap.add_argument("--region-cols", type=int, default=None, help="default: the whole ring of columns")
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--min-interval", type=float, default=0.005, help="seconds between request starts")
    ap.add_argument("--latency", type=float, default=0.005, help="server-side delay per request")
    args = ap.parse_args()

    n = 1 << args.zoom
    ncols = args.region_cols or n // 2
    regions = pd.DataFrame(
        [(args.zoom, 2 * i, 2 * j) for i in range(args.region_rows) for j in range(ncols)], columns=["zoom", "row", "col"]
    )
    years = list(range(2021 - args.years + 1, 2022))
    images = len(regions) * len(years)
    threads = 2 * args.concurrency
    print(f"{len(regions)} regions x {len(years)} years = {images} region-images at zoom {args.zoom}; "
          f"concurrency {args.concurrency}, start spacing {args.min_interval * 1e3:.0f} ms, "
          f"server latency {args.latency * 1e3:.0f} ms")  # fmt: skip

    with StubWmts(latency_s=args.latency) as stub, tempfile.TemporaryDirectory() as tmp:
        cfg = ClientConfig(url_template=stub.restful, contact="bench@example.invalid",
                           max_concurrency=args.concurrency, min_interval_s=args.min_interval)  # fmt: skip
        t0 = time.perf_counter()
        s = fetch_regions(regions, years, [args.zoom], Path(tmp) / "unique", cfg,
                          RunConfig(progress=False, source="synthetic", threads=threads))  # fmt: skip
        t_unique = time.perf_counter() - t0
        req_unique = stub.total_hits()
        assert s["regions_written"] == images, s

        t0 = time.perf_counter()
        written = naive_fetch(regions, years, args.zoom, Path(tmp) / "naive", cfg, threads)
        t_naive = time.perf_counter() - t0
        req_naive = stub.total_hits() - req_unique
        assert written == images

    for name, t, req in (("unique-tile", t_unique, req_unique), ("naive", t_naive, req_naive)):
        print(f"{name:12s} {t:7.2f} s  {images / t:7.1f} region-images/s  {req:6d} requests  "
              f"{req / images:5.2f} requests/region-image")  # fmt: skip
    print(f"speed-up {t_naive / t_unique:.2f}x (target >= 3), unique requests per region-year "
          f"{req_unique / images:.2f} (target <= 4.3)")  # fmt: skip


if __name__ == "__main__":
    main()
