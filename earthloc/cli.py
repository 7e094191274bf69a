"""The `earthloc` command: one subcommand per pipeline stage, plus tools.

Stage modules are imported only when their subcommand runs, so `earthloc --help`
and the light stages start fast (no torch, no dask unless needed)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import EarthLocError

Handler = Callable[[argparse.Namespace], int | None]


# Where the pipeline's stages write their outputs (dvc.yaml's outs): the default of every
# command flag that reads one, in one place.
WORKSPACE_PATHS = {
    "grid": Path("data/grid/regions.parquet"),
    "queries": Path("data/queries/queries.parquet"),
    "intersections": Path("data/intersections/intersections_2021.parquet"),
    "tiles": Path("tiles"),
    "evalsets": Path("data/evalsets"),
}


def _workspace_arg(p: argparse.ArgumentParser, name: str, help: str | None = None) -> None:
    p.add_argument(f"--{name}", type=Path, default=WORKSPACE_PATHS[name], help=help)


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")


def _model_arg(p: argparse.ArgumentParser, section: str) -> None:
    """`--model`: the project's checkpoint or published EarthLoc weights (earthloc/published.py)."""
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model checkpoint, or upstream's or torchgeo's EarthLoc weights (default: {section}.model)",
    )


def cmd_grid(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipeline import config
    from pipeline.stages import grid

    cfg = config.grid_config(config.load(args.params))
    if args.bbox is not None:
        cfg = replace(cfg, bbox=grid.parse_bbox(args.bbox))
    if args.world:
        cfg = replace(cfg, bbox=None)
    grid.run(cfg, grid.GridPaths(out=args.out))


def cmd_queries(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import queries

    cfg = config.queries_config(config.load(args.params))
    csv = args.csv if args.csv is not None else Path(cfg.csv)
    queries.run(cfg, queries.QueriesPaths(csv=csv, out=args.out, rejected=args.rejected))


def cmd_intersect(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipeline import config
    from pipeline.stages import intersect

    cfg = config.intersect_config(config.load(args.params))
    if args.scheduler is not None:
        cfg = replace(cfg, scheduler_address=args.scheduler)
    intersect.run(cfg, intersect.IntersectPaths(queries=args.queries, grid=args.grid, out_dir=args.out_dir))


def cmd_evalset(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import evalset

    cfg = config.evalset_config(config.load(args.params))
    out_dir = args.out_dir if args.out_dir is not None else Path("data/evalsets") / args.name
    paths = evalset.EvalsetPaths(
        grid=args.grid, queries=args.queries, intersections=args.intersections, out_dir=out_dir
    )
    summary = evalset.run(cfg, paths, args.name)
    print(evalset.summary_line(summary, out_dir))


def cmd_fetch(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.errors import ConfigError
    from pipeline.fetch.store import shard_name
    from pipeline.stages import fetch

    cfg = config.fetch_config(config.load(args.params))
    if not args.all and args.zoom is None:
        raise ConfigError("--zoom is required with --year")
    if args.all:
        shards = [(y, z) for y in cfg.years for z in cfg.zooms]
    else:
        try:
            shards = [(args.year, int(args.zoom, 10))]
        except ValueError as exc:
            raise ConfigError(f"--zoom must be a number, got {args.zoom!r}") from exc
    if args.plan:
        for year, zoom in shards:
            if year not in cfg.years or zoom not in cfg.zooms:
                raise ConfigError(f"shard {shard_name(year, zoom)} is not in fetch.years x fetch.zooms of params")
        print("\n".join(fetch.plan(cfg, args.grid, args.root, shards)))
        return
    for year, zoom in shards:
        summary = args.summary if args.summary is not None else Path("data/fetch") / f"{shard_name(year, zoom)}.json"
        fetch.run_shard(cfg, year, zoom, args.grid, args.root, summary, args.scheduler)


def cmd_pairs(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import pairs

    cfg = config.pairs_config(config.load(args.params))
    paths = pairs.PairsPaths(
        intersections=args.intersections,
        queries=args.queries,
        grid=args.grid,
        evalsets_dir=args.evalsets,
        tiles_root=args.tiles,
        out_dir=args.out_dir,
    )
    summary = pairs.run(cfg, paths)
    print(pairs.summary_line(summary, args.out_dir))


def cmd_fetch_queries(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import fetch_queries

    cfg = config.fetch_queries_config(config.load(args.params))
    paths = fetch_queries.FetchQueriesPaths(
        queries=args.queries, intersections=args.intersections, root=args.root, summary=args.summary
    )
    fetch_queries.run(cfg, paths)


def cmd_lost_in_space(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import lost_in_space

    spec = config.lost_in_space_config(config.load(args.params)).spec(args.name)
    out = args.out_dir if args.out_dir is not None else args.evalsets / spec.name
    paths = lost_in_space.LostInSpacePaths(
        evalsets_dir=args.evalsets, intersections=args.intersections, grid=args.grid, tiles_root=args.tiles, out_dir=out
    )
    s = lost_in_space.run(spec, paths)
    print(
        f"lost_in_space {s['name']}: {s['num_queries']} of {s['num_source_queries']} queries of {s['source']} "
        f"against all {s['num_db']} fetched {s['year']} regions (no nadir prior) -> {out}"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from pipeline import config
    from pipeline.tools import audit

    # The params are read only for --check: summarising or drawing a file needs none.
    params = audit.AuditParams()
    if args.check:
        if args.params.exists():
            params = config.audit_config(config.load(args.params), source=str(args.params))
        else:
            params = audit.AuditParams(source="defaults, no params file")
    request = audit.AuditRequest(
        intersections=args.intersections,
        grid=args.grid,
        queries=args.queries,
        out_dir=args.out_dir,
        query_id=args.query_id,
        check=args.check,
        sample=args.sample,
        seed=args.seed,
    )
    summary = audit.run(params, request)
    return 1 if summary["disagreements"] else 0


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import train

    cfg = config.training_config(config.load(args.params))
    train.run(cfg, train.TrainPaths(args.tiles, args.grid, args.out, args.checkpoints, args.live_dir))


def cmd_export(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.tools import export

    request = export.ExportRequest(
        tiles=args.tiles,
        out=args.out,
        year=args.year,
        region_ids=tuple(args.region_ids),
        query=args.query,
        all_of_shard=args.all,
        zoom=args.zoom,
        mosaic=args.mosaic,
        intersections=args.intersections,
        queries=None if args.no_footprint else args.queries,
    )
    export.run(config.export_config(config.load(args.params)), request)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipeline import config
    from pipeline.stages import evaluate

    cfg = config.evaluate_config(config.load(args.params))
    if args.sets:
        cfg = replace(cfg, sets=tuple(args.sets))
    evaluate.run(cfg, evaluate.EvaluatePaths(model=args.model, out_dir=args.out_dir))


def cmd_index(args: argparse.Namespace) -> None:
    from pipeline import config
    from pipeline.stages import index

    cfg = config.index_config(config.load(args.params))
    index.run(cfg, index.IndexPaths(model=args.model, out_dir=args.out_dir))


def cmd_localize(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipeline import config
    from pipeline.errors import ConfigError
    from pipeline.tools import localize

    cfg = config.localize_config(config.load(args.params))
    # 0 is not a usable count or radius: like an absent flag, it leaves the params value.
    if args.top:
        cfg = replace(cfg, top=args.top)
    if args.radius_km:
        cfg = replace(cfg, radius_km=args.radius_km)
    nadir = (args.nadir[0], args.nadir[1]) if args.nadir else None
    if nadir is not None and not (-90 <= nadir[0] <= 90 and -180 <= nadir[1] <= 180):
        raise ConfigError(f"--nadir {nadir[0]} {nadir[1]}: latitude or longitude out of range")
    request = localize.LocalizeRequest(
        image=args.image, nadir=nadir, model=args.model, index_dir=args.index, out=args.out
    )
    localize.run(cfg, request)


def cmd_catalog(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from pipeline import config
    from pipeline.stages import catalog

    params = config.load(args.params)
    cfg = config.catalog_config(params)
    if args.out_dir is not None:
        cfg = replace(cfg, out_dir=str(args.out_dir))
    s = catalog.run(cfg, config.catalog_context(params))
    print(
        f"catalog: {s['regions']} regions ({s['regions_fetched']} with images), {s['queries']} queries "
        f"({s['photos']} photos), evaluation sets {s['evalsets'] or 'none'}, model {'yes' if s['model'] else 'no'}; "
        f"{s['documents_validated']} documents and {s['items_validated']} items valid STAC {catalog.STAC_VERSION} "
        f"-> {cfg.out_dir}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earthloc",
        description="Build the EarthLoc database pipeline stage by stage (see dvc.yaml), or inspect its outputs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("grid", help="database regions -> GeoParquet", description="Build the region grid.")
    _params_arg(p)
    p.add_argument("--out", type=Path, required=True, help="output GeoParquet")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--bbox",
        type=float,
        nargs=4,
        metavar=("W", "S", "E", "N"),
        help="only regions meeting this box (W > E crosses ±180)",
    )
    g.add_argument("--world", action="store_true", help="ignore grid.bbox from params")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser(
        "queries",
        help="NASA photo metadata -> footprints",
        description="Ingest astronaut-photo metadata (NASA CSV) into footprints; every rejected row is recorded with its reason.",
    )
    _params_arg(p)
    p.add_argument("csv", type=Path, nargs="?", help="NASA metadata CSV (default: queries.csv in params)")
    p.add_argument("--out", type=Path, required=True, help="output GeoParquet")
    p.add_argument("--rejected", type=Path, required=True, help="output CSV of rejected rows")
    p.set_defaults(func=cmd_queries)

    p = sub.add_parser(
        "intersect",
        help="query x region overlaps",
        description="Exact footprint intersections of every query with every region, on dask.distributed.",
    )
    _params_arg(p)
    p.add_argument("--queries", type=Path, required=True, help="queries GeoParquet")
    p.add_argument("--grid", type=Path, required=True, help="regions GeoParquet")
    p.add_argument("--out-dir", type=Path, required=True, help="output directory")
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler address (else params, DASK_SCHEDULER_ADDRESS, or a LocalCluster)",
    )
    p.set_defaults(func=cmd_intersect)

    p = sub.add_parser(
        "evalset",
        help="one POI evaluation set",
        description="Build one point-of-interest evaluation set (queries, database, positives, summary, map).",
    )
    _params_arg(p)
    p.add_argument("name", help="set name, a key of evalset.sets in params (texas, alps, ..., val)")
    _workspace_arg(p, "grid")
    _workspace_arg(p, "queries")
    _workspace_arg(p, "intersections")
    p.add_argument("--out-dir", type=Path, default=None, help="default: data/evalsets/<name>")
    p.set_defaults(func=cmd_evalset)

    p = sub.add_parser(
        "fetch",
        help="database images of one (year, zoom) shard",
        description="Fetch the regions of the areas of interest (params fetch.aois) for one year and zoom from the WMTS source (the local synthetic Earth by default) into the tile store, resuming where a previous run stopped.",
    )
    _params_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--year", type=int, help="layer year (2018..2021)")
    g.add_argument("--all", action="store_true", help="every shard of fetch.years x fetch.zooms, one after another")
    p.add_argument("--zoom", default=None, help="zoom, e.g. 09 or 9 (with --year)")
    _workspace_arg(p, "grid")
    p.add_argument("--root", type=Path, default=WORKSPACE_PATHS["tiles"], help="tile store root (default: tiles)")
    p.add_argument("--summary", type=Path, default=None, help="metrics JSON (default: data/fetch/<YEAR>_<ZZ>.json)")
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler address (else params fetch.run.scheduler_address or an in-process cluster)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print regions, tiles, requests, bytes, disk and time per shard and in total (areas of interest and world) without fetching",
    )
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "fetch-queries",
        help="query photos of the fetched area",
        description="Make the photos of the queries all of whose 2021 positives are in the tile store: simulated from the synthetic Earth (offline default) or downloaded from NASA (params fetch_queries.source), resized to upstream's 1024x1024, resuming where a previous run stopped.",
    )
    _params_arg(p)
    _workspace_arg(p, "queries")
    _workspace_arg(p, "intersections")
    p.add_argument("--root", type=Path, default=WORKSPACE_PATHS["tiles"], help="tile store root (default: tiles)")
    p.add_argument("--summary", type=Path, default=Path("data/fetch/queries.json"), help="metrics JSON")
    p.set_defaults(func=cmd_fetch_queries)

    p = sub.add_parser(
        "pairs",
        help="AstroLoc (photo, region) training pairs",
        description="Training pairs of astronaut photos and 2021 database regions with IoU >= pairs.min_iou, excluding every photo of every evaluation set (kept, dropped, or with its nadir within a set's query radius), restricted to images present in the tile store.",
    )
    _params_arg(p)
    _workspace_arg(p, "intersections")
    _workspace_arg(p, "queries")
    _workspace_arg(p, "grid")
    _workspace_arg(p, "evalsets", help="folder of the evaluation sets")
    _workspace_arg(p, "tiles", help="tile store root (manifests say which images exist)")
    p.add_argument("--out-dir", type=Path, default=Path("data/pairs"))
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser(
        "lost-in-space",
        help="an evaluation set without the nadir prior",
        description="The queries of an evaluation set against every fetched database region (all areas of interest, all zooms): the lost-in-space setting. Params section lost_in_space; output in the evalset layout for `earthloc evaluate`.",
    )
    _params_arg(p)
    p.add_argument("name", help="a key of lost_in_space.sets in params")
    _workspace_arg(p, "evalsets")
    _workspace_arg(p, "intersections")
    _workspace_arg(p, "grid")
    _workspace_arg(p, "tiles")
    p.add_argument("--out-dir", type=Path, default=None, help="default: <evalsets>/<name>")
    p.set_defaults(func=cmd_lost_in_space)

    p = sub.add_parser(
        "audit",
        help="inspect an intersection file",
        description="Show the regions a query overlaps (km², IoU, fractions) with a GeoJSON and a PNG map, or --check a file against the footprints.",
    )
    _params_arg(p)
    p.add_argument("intersections", type=Path, help="intersections Parquet or upstream .pt file")
    p.add_argument("query_id", nargs="?", help="query id (MISSION-ROLL-FRAME) or upstream query filename")
    _workspace_arg(p, "grid")
    _workspace_arg(p, "queries")
    p.add_argument("--out-dir", type=Path, default=Path("audit"), help="where the GeoJSON and PNG go")
    p.add_argument(
        "--check", action="store_true", help="re-derive a sample of pairs from the footprints and report disagreements"
    )
    p.add_argument("--sample", type=int, default=2000, help="queries to re-derive with --check (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "train",
        help="train the EarthLoc model",
        description="Train (or resume) the EarthLoc model on every region with all four years in the tile store; params sections train, model, augment, loss. Under torchrun, DistributedDataParallel.",
    )
    _params_arg(p)
    _workspace_arg(p, "tiles", help="tile store root (default: tiles)")
    _workspace_arg(p, "grid", help="regions GeoParquet (footprints)")
    p.add_argument(
        "--out", type=Path, default=Path("models/earthloc.pt"), help="best model (default: models/earthloc.pt)"
    )
    p.add_argument("--checkpoints", type=Path, default=Path("models/train/checkpoints"), help="resumable checkpoints")
    p.add_argument("--live-dir", type=Path, default=Path("models/train/dvclive"), help="dvclive metrics and plots")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="region images -> GeoTIFF for GIS",
        description="Write region images (by id, one query's positives, or a whole shard) as Cloud-Optimized GeoTIFFs in EPSG:3857, one per region or one --mosaic.",
    )
    _params_arg(p)
    p.add_argument("region_ids", nargs="*", metavar="REGION_ID", help="regions ZZ_RRRR_CCCC (one zoom for --mosaic)")
    p.add_argument(
        "--query",
        metavar="QUERY_ID",
        help="one mosaic of this query's 2021 positives at --zoom, plus its footprint as GeoJSON",
    )
    p.add_argument("--all", action="store_true", help="every image of the shard (--year, --zoom)")
    p.add_argument("--year", type=int, default=2021, help="image year (default 2021)")
    p.add_argument("--zoom", type=int, help="zoom for --query and --all")
    p.add_argument("--mosaic", action="store_true", help="one COG of all regions instead of one per region")
    _workspace_arg(p, "tiles", help="tile store root (default tiles/)")
    p.add_argument("--out", type=Path, default=Path("export"), help="output directory (default export/)")
    _workspace_arg(p, "intersections")
    _workspace_arg(p, "queries", help="footprints for --query")
    p.add_argument("--no-footprint", action="store_true", help="with --query, skip the footprint GeoJSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "evaluate",
        help="evaluate the model on evaluation sets",
        description="Recall@N (4x90 TTA, uncollapsed as the paper and collapsed), orientation, baselines (random, nadir, untrained); writes data/eval/<set>/ (metrics.json, curves/, predictions.parquet, grid.png, audit.html). Params section evaluate.",
    )
    _params_arg(p)
    p.add_argument("sets", nargs="*", metavar="SET", help="evaluation set names (default: evaluate.sets)")
    _model_arg(p, "evaluate")
    p.add_argument(
        "--out-dir", type=Path, default=None, help="output directory for a single set (default: data/eval/<set>)"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "index",
        help="descriptor index of the fetched database",
        description="Embed every fetched region image of index.year at 0/90/180/270 degrees into a faiss index for `earthloc localize` (params section index).",
    )
    _params_arg(p)
    _model_arg(p, "index")
    p.add_argument("--out-dir", type=Path, default=None, help="index directory (default: index.out_dir)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "localize",
        help="localize a photo against the index",
        description="Find the database regions that best match a photo: with --nadir only regions within localize.radius_km of it (2500 km), without it the whole index. Prints the top-K footprints with score and predicted orientation; --out writes GeoJSON.",
    )
    _params_arg(p)
    p.add_argument("image", type=Path, help="photo (JPEG/PNG)")
    p.add_argument("--nadir", type=float, nargs=2, metavar=("LAT", "LON"), help="ISS nadir point; restricts the search")
    p.add_argument("--top", type=int, default=None, help="number of regions (default: localize.top)")
    _model_arg(p, "localize")
    p.add_argument(
        "--index", type=Path, default=None, help="index directory from `earthloc index` (default: localize.index_dir)"
    )
    p.add_argument(
        "--radius-km", type=float, default=None, help="search radius around the nadir (default: localize.radius_km)"
    )
    p.add_argument("--out", type=Path, default=None, help="GeoJSON of the top-K footprints")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser(
        "catalog",
        help="STAC catalog of the build",
        description="Describe the build as a STAC catalog: the database regions and the query photos as stac-geoparquet Items, one Collection per evaluation set, the model with the MLM extension; validated against the bundled STAC schemas. Params section catalog.",
    )
    _params_arg(p)
    p.add_argument("--out-dir", type=Path, default=None, help="catalog directory (default: catalog.out_dir)")
    p.set_defaults(func=cmd_catalog)
    return parser


def _one_line(message: str) -> str:
    """An error message as one line: line breaks and other control characters (from a
    file name or a value quoted from a hostile file) shown as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except EarthLocError as exc:
        print(f"earthloc {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as other CLI tools do.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A path the user named that cannot be read or written (a directory, no permission,
        # a full disk): bad input or environment, not a bug, so one line too.
        print(f"earthloc {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
