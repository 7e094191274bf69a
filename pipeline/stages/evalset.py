"""evalset stage: one point-of-interest evaluation set (docs/upstream.md §3.2).

Reads the grid, the query footprints and the 2021 intersections; writes to
`data/evalsets/<name>/` (all atomically):
  queries.csv      kept queries: query_index, query_id, filename, nadir_lat, nadir_lon, num_positives,
                   pass_id (the ISS pass, `pipeline.geo.passes`; folds assign whole passes)
  database.csv     db_index, region_id, zoom, path (upstream 2021 path), center_lat, center_lon
  positives.parquet  query_index, query_id, db_index, region_id, iou, intersection_km2
  dropped.csv      query_id, reason (no_positive | positive_outside_db), counts, nadir distance
  summary.json     the counts
  map.png          POI, both radius circles, query footprints, database extent, coastlines
                   (drawn by `pipeline.presentation.evalset_map`)
The selection itself is `pipeline.geo.evalset.select_evalset`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.geo.evalset import (
    EvalSet,
    EvalSetSpec,
    select_evalset,
    summarize,
)
from pipeline.geo.names import db_relpath
from pipeline.geo.passes import DEFAULT_MAX_DAY_GAP, DEFAULT_MAX_FRAME_GAP, pass_ids
from pipeline.io import atomic_path, read_geoparquet, write_json, write_text
from pipeline.params import load_params, section
from pipeline.presentation.evalset_map import render_map
from pipeline.schema import CENTER_COLUMNS, CORNER_COLUMNS, DATABASE_YEAR, GRID_COLUMNS, NADIR_COLUMNS, QUERY_COLUMNS

GRID_COLS = [*GRID_COLUMNS, "geometry"]
QUERY_COLS = [*QUERY_COLUMNS, "geometry"]
INTERSECTION_COLS = ["query_id", "region_id", "iou", "intersection_km2"]


# ---------------------------------------------------------------------------
# Parameters


SPEC_KEYS = {"lat", "lon", "query_radius_km", "db_radius_km", "folds", "take_folds", "zooms"}


def _zoom_list(raw: Any) -> tuple[int, ...] | None:
    """`zooms` of a set: absent = every zoom; else a list of integer zooms ("09" allowed,
    as fetch.zooms writes them), sorted and de-duplicated. ValueError otherwise."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValueError(f"zooms must be a list of integers, got {raw!r}")
    zooms: set[int] = set()
    for z in raw:
        if isinstance(z, bool) or not isinstance(z, (int, str)):
            raise ValueError(f"zooms must be a list of integers, got {z!r}")
        zooms.add(int(z, 10) if isinstance(z, str) else z)
    return tuple(sorted(zooms))


def load_spec(params: dict[str, Any], name: str) -> tuple[EvalSetSpec, int]:
    """The named set of params `evalset.sets` and the database year."""
    sec = section(params, "evalset")
    sets = sec.get("sets")
    if not isinstance(sets, dict) or not sets:
        raise ConfigError("params evalset: 'sets' is missing or empty")
    if name not in sets:
        raise ConfigError(f"params evalset: unknown set {name!r}; valid names: {', '.join(sorted(map(str, sets)))}")
    entry = sets[name]
    if not isinstance(entry, dict):
        raise ConfigError(f"params evalset.sets.{name}: expected a mapping")
    missing = [k for k in ("lat", "lon", "query_radius_km", "db_radius_km") if k not in entry]
    if missing:
        raise ConfigError(f"params evalset.sets.{name}: missing {', '.join(missing)}")
    unknown = sorted(set(map(str, entry)) - SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"params evalset.sets.{name}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(SPEC_KEYS))}"
        )
    try:
        spec = EvalSetSpec(
            name=name,
            lat=float(entry["lat"]),
            lon=float(entry["lon"]),
            query_radius_km=float(entry["query_radius_km"]),
            db_radius_km=float(entry["db_radius_km"]),
            folds=int(entry.get("folds", 1)),
            take_folds=tuple(int(f) for f in entry.get("take_folds", [0])),
            zooms=_zoom_list(entry.get("zooms")),
        )
        year = int(sec.get("year", DATABASE_YEAR))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params evalset.sets.{name}: {exc}") from exc
    if not 1900 < year < 2100:
        raise ConfigError(f"params evalset.year: implausible year {year}")
    return spec, year


def load_pass_rule(params: dict[str, Any]) -> tuple[int, int]:
    """(max_frame_gap, max_day_gap) of the pass rule: params `evalset.pass_max_frame_gap`
    and `evalset.pass_max_day_gap`. The pairs stage reads the same keys, so training and
    evaluation agree on what a pass is."""
    sec = params.get("evalset") or {}
    try:
        gap = int(sec.get("pass_max_frame_gap", DEFAULT_MAX_FRAME_GAP))
        days = int(sec.get("pass_max_day_gap", DEFAULT_MAX_DAY_GAP))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params evalset.pass_max_frame_gap / pass_max_day_gap: {exc}") from exc
    if gap < 0 or days < 0:
        raise ConfigError("params evalset.pass_max_frame_gap and pass_max_day_gap must be >= 0")
    return gap, days


def with_pass_ids(queries: pd.DataFrame, max_frame_gap: int, max_day_gap: int, source: Path | str) -> pd.DataFrame:
    """`queries` plus a `pass_id` column, computed on the whole table (a pass is defined by
    its neighbouring frames, so it must see them all). One-line InputError on bad dates."""
    try:
        ids = pass_ids(
            queries["mission"], queries["roll"], queries["frame"], queries["date"], max_frame_gap, max_day_gap
        )
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from exc
    return queries.assign(pass_id=ids)


# ---------------------------------------------------------------------------
# Inputs


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path}: no such file (run the stage that makes it first)")
    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises several types; report one line
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc


def _require_columns(path: Path, needed: list[str]) -> None:
    have = set(_parquet_columns(path))
    missing = [c for c in needed if c not in have]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")


def _require_unique(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    dup = df.duplicated(cols, keep="first")
    if dup.any():
        example = df.loc[dup, cols].iloc[0].tolist()
        raise InputError(f"{path}: {int(dup.sum())} duplicate {'/'.join(cols)} value(s), e.g. {example}")


def read_inputs(grid: Path, queries: Path, intersections: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read and check the three inputs; one-line InputError on anything inconsistent."""
    grid, queries, intersections = Path(grid), Path(queries), Path(intersections)
    _require_columns(grid, GRID_COLS)
    _require_columns(queries, QUERY_COLS)
    _require_columns(intersections, INTERSECTION_COLS)
    regions = read_geoparquet(grid, columns=GRID_COLS)
    qs = read_geoparquet(queries, columns=QUERY_COLS)
    try:
        pairs = pd.read_parquet(intersections, columns=INTERSECTION_COLS)
    except Exception as exc:
        raise InputError(f"{intersections}: not a readable Parquet file ({exc})") from exc

    _require_unique(regions, ["region_id"], grid)
    _require_unique(qs, ["query_id"], queries)
    _require_unique(pairs, ["query_id", "region_id"], intersections)
    for col in CENTER_COLUMNS:
        if not np.isfinite(regions[col].to_numpy(dtype=np.float64)).all():
            raise InputError(f"{grid}: {col} has missing or non-finite values")
    for col in NADIR_COLUMNS:
        if not np.isfinite(qs[col].to_numpy(dtype=np.float64)).all():
            raise InputError(f"{queries}: {col} has missing or non-finite values")
    unknown_r = ~pairs["region_id"].isin(regions["region_id"])
    if unknown_r.any():
        raise InputError(
            f"{intersections}: {int(unknown_r.sum())} row(s) name regions not in {grid} "
            f"(e.g. {pairs.loc[unknown_r, 'region_id'].iloc[0]}); were both built from the same grid?"
        )
    unknown_q = ~pairs["query_id"].isin(qs["query_id"])
    if unknown_q.any():
        raise InputError(
            f"{intersections}: {int(unknown_q.sum())} row(s) name queries not in {queries} "
            f"(e.g. {pairs.loc[unknown_q, 'query_id'].iloc[0]}); were both built from the same queries?"
        )
    return regions, qs, pairs


# ---------------------------------------------------------------------------
# Outputs


def database_paths(database: pd.DataFrame, year: int) -> list[str]:
    """Upstream relative path of every database row (`database/<year>_ZZ/.../@...@.jpg`)."""
    corners = database[list(CORNER_COLUMNS)].to_numpy(dtype=np.float64)
    return [
        db_relpath(tuple(c), rid, int(z), year, float(la), float(lo), float(a))
        for c, rid, z, la, lo, a in zip(
            corners,
            database["region_id"].to_numpy(),
            database["zoom"].to_numpy(),
            database["center_lat"].to_numpy(),
            database["center_lon"].to_numpy(),
            database["area_km2"].to_numpy(),
            strict=True,
        )
    ]


def _write_csv(df: pd.DataFrame, dest: Path) -> None:
    write_text(dest, df.to_csv(index=False, lineterminator="\n"))


def write_outputs(out_dir: Path, ev: EvalSet, year: int, summary: dict[str, Any]) -> None:
    queries = ev.queries[["query_index", "query_id", "filename", *NADIR_COLUMNS, "num_positives", "pass_id"]]
    database = pd.DataFrame(
        {
            "db_index": ev.database["db_index"].to_numpy(),
            "region_id": ev.database["region_id"].to_numpy(),
            "zoom": ev.database["zoom"].to_numpy(),
            "path": database_paths(ev.database, year),
            "center_lat": ev.database["center_lat"].to_numpy(),
            "center_lon": ev.database["center_lon"].to_numpy(),
        }
    )
    _write_csv(pd.DataFrame(queries), out_dir / "queries.csv")
    _write_csv(database, out_dir / "database.csv")
    _write_csv(ev.dropped, out_dir / "dropped.csv")
    with atomic_path(out_dir / "positives.parquet") as tmp:
        ev.positives.to_parquet(tmp, index=False)
    write_json(out_dir / "summary.json", summary)


# ---------------------------------------------------------------------------
# Stage


def run(
    spec: EvalSetSpec,
    year: int,
    grid: Path,
    queries: Path,
    intersections: Path,
    out_dir: Path,
    draw_map: bool = True,
    pass_rule: tuple[int, int] = (DEFAULT_MAX_FRAME_GAP, DEFAULT_MAX_DAY_GAP),
) -> dict[str, Any]:
    regions, qs, pairs = read_inputs(grid, queries, intersections)
    qs = with_pass_ids(qs, *pass_rule, source=queries)
    ev = select_evalset(spec, qs, regions, pairs)
    summary: dict[str, Any] = summarize(spec, ev)
    summary.update(
        {
            "year": year,
            "pass_max_frame_gap": pass_rule[0],
            "pass_max_day_gap": pass_rule[1],
            "inputs": {"grid": str(grid), "queries": str(queries), "intersections": str(intersections)},
        }
    )
    out_dir = Path(out_dir)
    write_outputs(out_dir, ev, year, summary)
    if draw_map:
        table = pd.DataFrame(
            {
                "geometry": qs.geometry.to_numpy(),
                "nadir_lat": qs["nadir_lat"].to_numpy(),
                "nadir_lon": qs["nadir_lon"].to_numpy(),
            },
            index=qs["query_id"].to_numpy(),
        )
        render_map(out_dir / "map.png", spec, ev, table, summary)
    return summary


def summary_line(s: dict[str, Any], out_dir: Path) -> str:
    mean = s["mean_positives_per_query"]
    mean_text = f"{mean:.1f}" if mean is not None else "n/a"
    return (
        f"evalset {s['name']}: {s['num_queries']} queries kept of {s['num_within_radius']} within "
        f"{s['query_radius_km']:g} km (dropped {s['num_dropped_no_positive']} no_positive, "
        f"{s['num_dropped_positive_outside_db']} positive_outside_db), {s['num_db']} database regions within "
        f"{s['db_radius_km']:g} km, {mean_text} positives/query -> {out_dir}"
    )


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    spec, year = load_spec(params, args.name)
    out_dir = Path(args.out_dir) if args.out_dir is not None else Path("data/evalsets") / args.name
    summary = run(
        spec,
        year,
        Path(args.grid),
        Path(args.queries),
        Path(args.intersections),
        out_dir,
        pass_rule=load_pass_rule(params),
    )
    print(summary_line(summary, out_dir))
