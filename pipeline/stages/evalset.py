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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
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
from pipeline.params import build_config, check_keys
from pipeline.presentation.evalset_map import render_map
from pipeline.schema import CENTER_COLUMNS, CORNER_COLUMNS, DATABASE_YEAR, GRID_COLUMNS, NADIR_COLUMNS, QUERY_COLUMNS

GRID_COLS = [*GRID_COLUMNS, "geometry"]
QUERY_COLS = [*QUERY_COLUMNS, "geometry"]
INTERSECTION_COLS = ["query_id", "region_id", "iou", "intersection_km2"]


# ---------------------------------------------------------------------------
# Parameters


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


# The keys a set must give: its POI and its two radii have no sensible default.
REQUIRED_SET_KEYS = ("lat", "lon", "query_radius_km", "db_radius_km")


def set_spec(name: str, entry: Any) -> EvalSetSpec:
    """One named set of `evalset.sets` as an EvalSetSpec (whose defaults are the only ones);
    an unknown or missing key is a ConfigError naming the set."""
    where = f"evalset.sets.{name}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"params {where}: expected a mapping")
    check_keys(entry, {f.name for f in fields(EvalSetSpec)} - {"name"}, where)
    missing = [k for k in REQUIRED_SET_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"params {where}: missing {', '.join(missing)}")
    convert: dict[str, Callable[[Any], Any]] = {
        "lat": float,
        "lon": float,
        "query_radius_km": float,
        "db_radius_km": float,
        "folds": int,
        "take_folds": lambda folds: tuple(int(f) for f in folds),
        "zooms": _zoom_list,
    }
    try:
        return EvalSetSpec(name=name, **{str(k): convert[str(k)](v) for k, v in entry.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params {where}: {exc}") from exc


@dataclass(frozen=True)
class EvalsetParams:
    """The `evalset` params section: the named sets, the database year, and the pass rule
    (`pipeline.geo.passes`). The pairs stage reads the same pass rule, so training and
    evaluation agree on what a pass is."""

    sets: tuple[EvalSetSpec, ...] = ()
    year: int = DATABASE_YEAR
    pass_max_frame_gap: int = DEFAULT_MAX_FRAME_GAP
    pass_max_day_gap: int = DEFAULT_MAX_DAY_GAP

    def __post_init__(self) -> None:
        for key in ("year", "pass_max_frame_gap", "pass_max_day_gap"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if not 1900 < self.year < 2100:
            raise ValueError(f"implausible year {self.year}")
        if self.pass_max_frame_gap < 0 or self.pass_max_day_gap < 0:
            raise ValueError("pass_max_frame_gap and pass_max_day_gap must be >= 0")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> EvalsetParams:
        """From the `evalset` section: every named set is built (and checked), not only the
        one a run asks for, so a typo in any set is found by any stage that reads them."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)}, "evalset")
        sets = sec.pop("sets", None)
        if not isinstance(sets, Mapping) or not sets:
            raise ConfigError("params evalset: 'sets' is missing or empty")
        specs = tuple(set_spec(str(name), entry) for name, entry in sets.items())
        return replace(build_config(cls, sec, "evalset"), sets=specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sets)

    @property
    def pass_rule(self) -> tuple[int, int]:
        """(max_frame_gap, max_day_gap), the arguments of `pipeline.geo.passes.pass_ids`."""
        return self.pass_max_frame_gap, self.pass_max_day_gap

    def spec(self, name: str) -> EvalSetSpec:
        """The named set; a ConfigError listing the valid names if there is none."""
        for s in self.sets:
            if s.name == name:
                return s
        raise ConfigError(f"params evalset: unknown set {name!r}; valid names: {', '.join(sorted(self.names))}")


@dataclass(frozen=True)
class EvalsetPaths:
    """What the evalset stage reads, and the folder it writes."""

    grid: Path
    queries: Path
    intersections: Path
    out_dir: Path


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


def run(config: EvalsetParams, paths: EvalsetPaths, name: str, draw_map: bool = True) -> dict[str, Any]:
    """Build the named set of `config` into `paths.out_dir`; return its summary."""
    spec, year, pass_rule = config.spec(name), config.year, config.pass_rule
    grid, queries, intersections = Path(paths.grid), Path(paths.queries), Path(paths.intersections)
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
    out_dir = Path(paths.out_dir)
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
