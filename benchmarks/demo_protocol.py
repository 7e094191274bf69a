"""The demo protocol's radii from geometry alone: what each (query radius, database radius) costs and gives.

For each candidate pair of radii around the demo POI it builds the `demo` (test) and
`demo_val` sets exactly as the evalset stage does (`select_evalset` with the params' folds
and zooms), and the fetch plan exactly as the fetch stage does (`fetch.aois` with their
years and zooms, the database disc widened to the candidate database radius), then prints
one Markdown row:
test queries kept and dropped (positive outside the database), database regions, mean
positives per test query, the exact expected Recall@10 of a random ranking (hypergeometric,
`earthloc.retrieval.recall.random_recall_curve`) uncollapsed (4 rotated copies per region, as
evaluate ranks them) and collapsed (one entry per region), the validation queries, the
region images and unique tiles every fetch shard needs in all, and the photos the scoped
fetch_queries renders (every query of both sets, plus the training areas' photos whose
positives are all fetched). `--zooms` replaces the sets' and the database disc's zooms
(a what-if); without it the zooms are the params'. No pixels are needed: inputs are the grid, the query footprints and
the intersections (`earthloc grid/queries/intersect`).

    .venv/bin/python benchmarks/demo_protocol.py [--data data] [--query-radii 300 400] [--db-radii 1200 1600]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from earthloc.retrieval.recall import random_recall_curve  # noqa: E402
from pipeline.config import evalset_config  # noqa: E402
from pipeline.fetch.plan import request_counts  # noqa: E402
from pipeline.fetch.queries import select_queries  # noqa: E402
from pipeline.geo.aoi import aois_for, in_aois  # noqa: E402
from pipeline.geo.evalset import select_evalset  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.stages.evalset import with_pass_ids  # noqa: E402
from pipeline.stages.fetch import FetchParams  # noqa: E402


def fetch_plan(regions: pd.DataFrame, params: FetchParams) -> tuple[int, int, set[str]]:
    """(region images, unique tiles) over every shard, and the 2021 region ids."""
    images = tiles = 0
    ids_2021: set[str] = set()
    for year in params.years:
        for zoom in params.zooms:
            aois = aois_for(params.aois, year, zoom)
            part = regions[regions["zoom"] == zoom]
            part = part[in_aois(part["center_lat"].to_numpy(), part["center_lon"].to_numpy(), aois)]
            images += len(part)
            tiles += request_counts([(zoom, int(r), int(c)) for r, c in zip(part["row"], part["col"])], [year]).unique
            if year == 2021:
                ids_2021 |= set(part["region_id"])
    return images, tiles, ids_2021


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="folder with grid/, queries/, intersections/")
    ap.add_argument("--query-radii", type=float, nargs="+", default=[300.0, 400.0])
    ap.add_argument("--db-radii", type=float, nargs="+", default=[400.0, 800.0, 1200.0, 1500.0, 1600.0, 1700.0])
    ap.add_argument("--db-aoi", default="texas_demo", help="the fetch.aois entry that is the evaluation database")
    ap.add_argument(
        "--zooms",
        type=int,
        nargs="+",
        default=None,
        help="a what-if: these zooms for both sets and the database disc (default: the params')",
    )
    args = ap.parse_args()

    params = load_params(args.params)
    fetch = FetchParams.from_section(params["fetch"])
    evalsets = evalset_config(params)
    test_spec, val_spec = evalsets.spec("demo"), evalsets.spec("demo_val")
    scope = (params.get("fetch_queries") or {}).get("scope") or {}
    photo_aois = tuple(a for a in fetch.aois or () if a.name in set(scope.get("aois") or []))

    regions = pd.read_parquet(args.data / "grid/regions.parquet",
                              columns=["region_id", "zoom", "row", "col", "center_lat", "center_lon"])  # fmt: skip
    queries = pd.read_parquet(
        args.data / "queries/queries.parquet",
        columns=["query_id", "nadir_lat", "nadir_lon", "mission", "roll", "frame", "date"],
    )
    queries = with_pass_ids(queries, *evalsets.pass_rule, source=args.data / "queries/queries.parquet")
    pairs = pd.read_parquet(args.data / "intersections/intersections_2021.parquet", columns=["query_id", "region_id"])
    zooms = None if args.zooms is None else tuple(sorted(set(args.zooms)))
    if zooms is not None:
        test_spec, val_spec = (dataclasses.replace(s, zooms=zooms) for s in (test_spec, val_spec))
    print(f"zooms: test {list(test_spec.zooms or ['all'])}, validation {list(val_spec.zooms or ['all'])}")

    print("| query radius km | database radius km | test queries | dropped | database regions | mean positives "
          "| random R@10 uncollapsed | random R@10 collapsed | val queries | region images | tiles | photos |")  # fmt: skip
    print("|" + "---:|" * 12)
    for rq in args.query_radii:
        for rdb in args.db_radii:
            sets = [select_evalset(dataclasses.replace(s, query_radius_km=rq, db_radius_km=rdb), queries, regions, pairs)
                    for s in (test_spec, val_spec)]  # fmt: skip
            test, val = sets
            npos = test.queries["num_positives"].to_numpy()
            n_db = len(test.database)
            r10u = float(random_recall_curve(n_db, npos, 10, copies=4)[9])
            r10c = float(random_recall_curve(n_db, npos, 10, copies=1)[9])
            aois = tuple(dataclasses.replace(a, radius_km=rdb, **({"zooms": zooms} if zooms else {}))
                         if a.name == args.db_aoi else a for a in fetch.aois or ())  # fmt: skip
            images, tiles, ids_2021 = fetch_plan(regions, dataclasses.replace(fetch, aois=aois))
            photographable = select_queries(queries, pairs, ids_2021)
            evalset_ids = set(test.queries["query_id"]) | set(val.queries["query_id"])
            in_area = in_aois(
                photographable["nadir_lat"].to_numpy(), photographable["nadir_lon"].to_numpy(), photo_aois
            )
            photos = len(evalset_ids | set(photographable.loc[in_area, "query_id"]))
            print(f"| {rq:.0f} | {rdb:.0f} | {len(test.queries)} | {len(test.dropped)} | {n_db} | {np.mean(npos):.1f} "
                  f"| {r10u:.1f} % | {r10c:.1f} % | {len(val.queries)} | {images} | {tiles} | {photos} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
