"""Fetch plan and outage benchmark: how long `earthloc fetch --plan` takes, and how long a
fetch with the production client settings (params fetch.client) takes to give up on a
source that cannot be reached.

- plan: `pipeline.stages.fetch.plan` for every shard of params (areas of interest and world)
  on the given grid and tile store; prints the plan and its wall time.
- outage: the regions of one zoom of the areas of interest against a local port nothing
  listens on (connection refused at once, as with a dead host that answers RST); the time
  is the retry backoff the breaker allows before `fetch.client.refusal_limit` consecutive
  tiles have failed. A black-holed host (connect timeout) adds `connect_timeout_s` per attempt.

    .venv/bin/python benchmarks/bench_fetch_plan.py [--grid data/grid/regions.parquet] [--root tiles] [--outage]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from pipeline.errors import SourceRefusedError  # noqa: E402
from pipeline.fetch.run import fetch_regions  # noqa: E402
from pipeline.params import load_params, section  # noqa: E402
from pipeline.stages import fetch  # noqa: E402


def bench_plan(params: fetch.FetchParams, grid: Path, root: Path) -> None:
    shards = [(y, z) for y in params.years for z in params.zooms]
    t0 = time.perf_counter()
    lines = fetch.plan(params, grid, root, shards)
    elapsed = time.perf_counter() - t0
    print("\n".join(lines))
    print(f"\nplan of {len(shards)} shards: {elapsed:.1f} s")


def bench_outage(params: fetch.FetchParams, grid: Path, zoom: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/wmts/1.0.0/{{layer}}/default/g/{{z}}/{{y}}/{{x}}.jpg"
    cfg = replace(params.client, url_template=dead)
    regions = fetch.select_regions(grid, zoom, params.aois)
    rc = replace(params.run, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            fetch_regions(regions, [params.years[-1]], [zoom], tmp, cfg, rc)
            outcome = "finished (breaker did not trip)"
        except SourceRefusedError as exc:
            outcome = str(exc)
        elapsed = time.perf_counter() - t0
    print(f"outage, {len(regions)} regions of zoom {zoom}, client {cfg.max_concurrency} in flight, "
          f"{cfg.max_attempts} attempts, backoff base {cfg.backoff_base_s} s, refusal_limit {cfg.refusal_limit}: "
          f"stopped after {elapsed:.1f} s\n  {outcome}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--grid", type=Path, default=ROOT / "data/grid/regions.parquet")
    ap.add_argument("--root", type=Path, default=ROOT / "tiles")
    ap.add_argument("--outage", action="store_true", help="also time the stop against a dead port")
    ap.add_argument("--zoom", type=int, default=9)
    args = ap.parse_args()
    params = fetch.FetchParams.from_section(section(load_params(args.params), "fetch"))
    bench_plan(params, args.grid, args.root)
    if args.outage:
        bench_outage(params, args.grid, args.zoom)


if __name__ == "__main__":
    main()
