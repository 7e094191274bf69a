"""Synthetic tile server benchmark: tiles/s with rendering in the HTTP threads vs in worker processes.

Two measurements per setting of `render_processes` (pipeline/synthetic/server.py):
- `http`: distinct tiles (never cached, so every request renders) of zoom 11 around the demo
  POI, requested over HTTP by `--concurrency` threads; tiles/s of the server alone.
- `fetch`: the fetch stage's own runner (pipeline.fetch.run.fetch_regions) writing the mosaics
  of `--regions` zoom-11 regions from a fresh server: tiles/s and region images/s of the
  whole stage, whose client decodes tiles and encodes mosaics in the same process as an
  in-process server.
Every setting serves the same tiles; the script checks that their bytes are identical.
Wall-clock rates depend on what else runs: on a machine shared with other work they are
lower bounds. The `http` line also reports CPU seconds per tile (this process and its
worker processes, HTTP included), which load barely changes, and the ceiling that implies:
in-process rendering holds the GIL, so at most one core works on tiles (1 / cpu per tile);
with N worker processes min(N, cores) do.

    .venv/bin/python benchmarks/bench_tile_server.py [--tiles 240] [--regions 40] [--processes 0 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from pipeline.fetch.client import ClientConfig  # noqa: E402
from pipeline.fetch.plan import request_counts  # noqa: E402
from pipeline.fetch.run import RunConfig, fetch_regions  # noqa: E402
from pipeline.synthetic.server import SyntheticTileServer, layer_name  # noqa: E402

ZOOM = 11
YEAR = 2021


def tile_keys(n: int, offset: int) -> list[tuple[int, int, int]]:
    """`n` distinct zoom-11 tiles (z, y, x) near (30 N, 95 W), starting `offset` tiles east."""
    y0, x0 = 845, 483  # the tile holding the demo POI at zoom 11
    side = int(n**0.5) + 1
    return [(ZOOM, y0 + i // side, x0 + offset + i % side) for i in range(n)]


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the pool's workers, once shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def http_rate(processes: int, n: int, concurrency: int, offset: int) -> tuple[float, float, str]:
    """(tiles/s, CPU s of the whole run, sha256 of all bodies in key order) over HTTP from a
    fresh server; n = 0 measures the start-up and warm-up alone."""
    keys = tile_keys(n, offset)
    cpu0 = _cpu_seconds()
    with SyntheticTileServer(seed=0, cache_tiles=0, render_processes=processes) as srv:
        base = f"{srv.base_url}/wmts/1.0.0/{layer_name(YEAR)}/default/g"
        # Warm-up outside the timing: worker start-up and the world's lazily built fields.
        with ThreadPoolExecutor(max(processes, 1)) as pool:
            list(
                pool.map(lambda x: urllib.request.urlopen(f"{base}/{ZOOM}/0/{x}.jpg").read(), range(max(processes, 1)))
            )

        def get(key: tuple[int, int, int]) -> bytes:
            z, y, x = key
            with urllib.request.urlopen(f"{base}/{z}/{y}/{x}.jpg") as r:
                return bytes(r.read())

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            bodies = list(pool.map(get, keys))
        seconds = max(time.perf_counter() - t0, 1e-9)
    cpu = _cpu_seconds() - cpu0
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in bodies)).hexdigest()
    return n / seconds, cpu, digest


def fetch_rate(processes: int, regions: pd.DataFrame, concurrency: int, writers: int) -> tuple[float, float, str]:
    """(tiles/s, region images/s, sha256 of the mosaics) of fetch_regions against a fresh server."""
    from pipeline.stages.fetch import local_template

    unique = request_counts([(ZOOM, int(r), int(c)) for r, c in zip(regions["row"], regions["col"])], [YEAR]).unique
    with SyntheticTileServer(seed=0, render_processes=processes) as srv, tempfile.TemporaryDirectory() as tmp:
        urllib.request.urlopen(f"{srv.base_url}/wmts/1.0.0/{layer_name(YEAR)}/default/g/{ZOOM}/0/0.jpg").read()
        template = local_template(ClientConfig().url_template, srv.base_url)
        cfg = ClientConfig(url_template=template, contact="bench@example.invalid", max_concurrency=concurrency,
                           min_interval_s=0.0)  # fmt: skip
        t0 = time.perf_counter()
        summary = fetch_regions(regions, [YEAR], [ZOOM], Path(tmp), cfg,
                                RunConfig(progress=False, source="synthetic", writers=writers))  # fmt: skip
        seconds = time.perf_counter() - t0
        assert summary["regions_failed"] == 0, summary
        h = hashlib.sha256()
        for p in sorted(Path(tmp, "database").rglob("*.jpg")):
            h.update(p.read_bytes())
    return unique / seconds, len(regions) / seconds, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=240, help="distinct tiles per http measurement")
    ap.add_argument("--regions", type=int, default=40, help="zoom-11 regions per fetch measurement")
    ap.add_argument("--processes", type=int, nargs="+", default=[0, 2], help="render_processes settings")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (params fetch.synthetic)")
    ap.add_argument("--writers", type=int, default=2, help="fetch runner threads (params fetch.run.writers)")
    ap.add_argument("--grid", type=Path, default=ROOT / "data/grid/regions.parquet")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start")

    digests = set()
    for p in args.processes:
        _, startup_cpu, _ = http_rate(p, 0, args.concurrency, offset=0)
        rate, cpu, digest = http_rate(p, args.tiles, args.concurrency, offset=0)
        cpu = (cpu - startup_cpu) / args.tiles
        digests.add(digest)
        ceiling = min(max(p, 1), os.cpu_count() or 1) / cpu
        print(f"http   render_processes={p}: {rate:6.1f} tiles/s ({args.tiles} distinct zoom-{ZOOM} tiles, "
              f"{args.concurrency} in flight); {1e3 * cpu:.1f} ms CPU per tile, CPU-bound ceiling "
              f"{ceiling:.0f} tiles/s")  # fmt: skip
    print("tile bytes identical across settings:", len(digests) == 1)

    if args.regions > 0:
        if not args.grid.exists():
            sys.exit(f"{args.grid}: no such file (run the grid stage first, or pass --regions 0)")
        from pipeline.geo.distance import haversine_km

        g = pd.read_parquet(args.grid, columns=["region_id", "zoom", "row", "col", "center_lat", "center_lon",
                                                "ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon",
                                                "lr_lat", "lr_lon", "area_km2"])  # fmt: skip
        g = g[g["zoom"] == ZOOM]
        g = g.assign(d=haversine_km(30.0, -95.0, g["center_lat"].to_numpy(), g["center_lon"].to_numpy()))
        regions = g.nsmallest(args.regions, "d").drop(columns="d").reset_index(drop=True)
        digests = set()
        for p in args.processes:
            tiles_s, images_s, digest = fetch_rate(p, regions, args.concurrency, args.writers)
            digests.add(digest)
            print(f"fetch  render_processes={p}: {tiles_s:6.1f} tiles/s, {images_s:5.2f} region images/s "
                  f"({len(regions)} zoom-{ZOOM} regions)")  # fmt: skip
        print("mosaic bytes identical across settings:", len(digests) == 1)


if __name__ == "__main__":
    main()
