"""lost_in_space stage: an evaluation set without the nadir restriction.

EarthLoc's protocol searches only the database regions within `db_radius_km` of the POI,
which uses the photo's known nadir as a prior. "Lost in space" (AstroLoc) drops the prior:
the database is every region image there is. Here that is every region whose `year`
image is `ok` in the tile store (all fetched areas of interest, all zooms); the queries
are those of a source evaluation set (e.g. `demo`), and a query is dropped when one of its
positives (any zoom, from the intersections) is not in that database, as in the evalset
stage. `zooms` (optional) keeps the database and the positives at those zooms only, as the
evalset stage's `zooms` does, so a lost-in-space set of a one-zoom source set drops nothing.
The output has the evalset stage's layout, so `earthloc evaluate` reads it as is:
  data/evalsets/<name>/{queries.csv, database.csv, positives.parquet, dropped.csv, summary.json}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.io import atomic_path, write_json, write_text
from pipeline.params import build_config, check_keys
from pipeline.schema import DATABASE_YEAR, REGION_FOOTPRINT_COLUMNS
from pipeline.stages.pairs import _read_parquet, fetched_regions, region_paths


@dataclass(frozen=True)
class LostInSpaceSpec:
    """One named set of `lost_in_space.sets`, with the section's year: what a run builds."""

    name: str
    source: str  # the evaluation set whose queries are used
    year: int = DATABASE_YEAR
    zooms: tuple[int, ...] | None = None  # None: every zoom

    def __post_init__(self) -> None:
        zooms = self.zooms
        if zooms is not None and (
            not isinstance(zooms, tuple) or not zooms or not all(type(z) is int and 0 <= z <= 30 for z in zooms)
        ):
            raise ValueError(f"zooms: expected a non-empty list of zooms, got {zooms!r}")


@dataclass(frozen=True)
class LostInSpaceParams:
    """The `lost_in_space` params section: the database year and the named sets."""

    sets: tuple[LostInSpaceSpec, ...] = ()
    year: int = DATABASE_YEAR

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> LostInSpaceParams:
        """From the `lost_in_space` section; an unknown key, in the section or in a set, is a
        ConfigError naming it."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)}, "lost_in_space")
        sets = sec.pop("sets", None) or {}
        if not isinstance(sets, Mapping):
            raise ConfigError("params lost_in_space.sets: expected a mapping of named sets")
        own = build_config(cls, sec, "lost_in_space")
        specs = []
        for name, entry in sets.items():
            where = f"lost_in_space.sets.{name}"
            if not isinstance(entry, Mapping) or "source" not in entry:
                raise ConfigError(f"params {where}: expected a mapping with 'source'")
            check_keys(entry, {f.name for f in fields(LostInSpaceSpec)} - {"name", "year"}, where)
            entry = {**entry, "source": str(entry["source"])}
            if isinstance(entry.get("zooms"), list) and all(type(z) is int for z in entry["zooms"]):
                entry["zooms"] = sorted(set(entry["zooms"]))
            specs.append(build_config(LostInSpaceSpec, {**entry, "name": str(name), "year": own.year}, where))
        return replace(own, sets=tuple(specs))

    def spec(self, name: str) -> LostInSpaceSpec:
        """The named set; a ConfigError listing the valid names if there is none."""
        for s in self.sets:
            if s.name == name:
                return s
        raise ConfigError(
            f"params lost_in_space.sets: unknown set {name!r}; valid: {sorted(s.name for s in self.sets)}"
        )


@dataclass(frozen=True)
class LostInSpacePaths:
    """What the lost_in_space stage reads, and the folder it writes."""

    evalsets_dir: Path
    intersections: Path
    grid: Path
    tiles_root: Path
    out_dir: Path


def build(
    queries: pd.DataFrame, intersections: pd.DataFrame, database: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(kept queries re-indexed, positives, dropped) for `queries` against `database` (pure).

    `queries`: query_id, filename, ... ; `intersections`: query_id, region_id, iou,
    intersection_km2; `database`: db_index, region_id."""
    db_index = pd.Series(database["db_index"].to_numpy(), index=database["region_id"].to_numpy())
    inter = intersections.loc[intersections["query_id"].isin(queries["query_id"])]
    in_db = inter["region_id"].isin(db_index.index)
    n_pos = inter.groupby("query_id").size()
    n_out = inter.loc[~in_db].groupby("query_id").size()
    q = queries.drop(columns=["query_index", "num_positives"], errors="ignore").copy()
    q["num_positives"] = q["query_id"].map(n_pos).fillna(0).astype(np.int64)
    q["num_outside_db"] = q["query_id"].map(n_out).fillna(0).astype(np.int64)
    drop = (q["num_positives"] == 0) | (q["num_outside_db"] > 0)
    dropped = pd.DataFrame(
        {
            "query_id": q.loc[drop, "query_id"].to_numpy(),
            "reason": np.where(q.loc[drop, "num_positives"] == 0, "no_positive", "positive_outside_db"),
            "num_positives": q.loc[drop, "num_positives"].to_numpy(),
            "num_outside_db": q.loc[drop, "num_outside_db"].to_numpy(),
        }
    )
    kept = q.loc[~drop].drop(columns=["num_outside_db"]).reset_index(drop=True)
    kept.insert(0, "query_index", np.arange(len(kept), dtype=np.int64))
    qidx = pd.Series(kept["query_index"].to_numpy(), index=kept["query_id"].to_numpy())
    pos = inter.loc[inter["query_id"].isin(qidx.index)]
    positives = (
        pd.DataFrame(
            {
                "query_index": pos["query_id"].map(qidx).to_numpy(np.int64),
                "query_id": pos["query_id"].to_numpy(),
                "db_index": pos["region_id"].map(db_index).to_numpy(np.int64),
                "region_id": pos["region_id"].to_numpy(),
                "iou": pos["iou"].to_numpy(),
                "intersection_km2": pos["intersection_km2"].to_numpy(),
            }
        )
        .sort_values(["query_index", "db_index"], kind="stable")
        .reset_index(drop=True)
    )
    return kept, positives, dropped


def run(spec: LostInSpaceSpec, paths: LostInSpacePaths) -> dict[str, Any]:
    """Build the set `spec` into `paths.out_dir`; return its summary."""
    evalsets_dir, intersections, grid = paths.evalsets_dir, paths.intersections, paths.grid
    tiles_root, out_dir = paths.tiles_root, paths.out_dir
    src = Path(evalsets_dir) / spec.source / "queries.csv"
    if not src.is_file():
        raise InputError(f"{src}: missing; build the source set first (dvc repro evalset@{spec.source})")
    queries = pd.read_csv(src, dtype={"query_id": str})
    ok = fetched_regions(Path(tiles_root), (spec.year,))
    if not ok:
        raise InputError(f"{tiles_root}/manifests: no {spec.year} region image is ok (run the fetch stage first)")
    g = _read_parquet(Path(grid), list(REGION_FOOTPRINT_COLUMNS))
    if spec.zooms is not None:
        g = g.loc[g["zoom"].isin(spec.zooms)]
    at_zooms = set(g["region_id"])
    g = g.loc[g["region_id"].isin(ok)].sort_values("region_id").reset_index(drop=True)
    database = pd.DataFrame(
        {
            "db_index": np.arange(len(g), dtype=np.int64),
            "region_id": g["region_id"].to_numpy(),
            "zoom": g["zoom"].to_numpy(),
            "path": region_paths(g, spec.year).to_numpy(),
            "center_lat": g["center_lat"].to_numpy(),
            "center_lon": g["center_lon"].to_numpy(),
        }
    )
    inter = _read_parquet(Path(intersections), ["query_id", "region_id", "iou", "intersection_km2"])
    if spec.zooms is not None:
        inter = inter.loc[inter["region_id"].isin(at_zooms)]
    kept, positives, dropped = build(queries, inter, database)
    summary = {
        "name": spec.name,
        "source": spec.source,
        "year": spec.year,
        "setting": "lost_in_space",
        "zooms": None if spec.zooms is None else list(spec.zooms),
        "num_source_queries": int(len(queries)),
        "num_queries": int(len(kept)),
        "num_db": int(len(database)),
        "num_db_per_zoom": {str(int(z)): int(n) for z, n in database["zoom"].value_counts().sort_index().items()},
        "num_dropped_no_positive": int((dropped["reason"] == "no_positive").sum()),
        "num_dropped_positive_outside_db": int((dropped["reason"] == "positive_outside_db").sum()),
        "num_positives": int(len(positives)),
    }
    out_dir = Path(out_dir)
    write_text(out_dir / "queries.csv", kept.to_csv(index=False, lineterminator="\n"))
    write_text(out_dir / "database.csv", database.to_csv(index=False, lineterminator="\n"))
    write_text(out_dir / "dropped.csv", dropped.to_csv(index=False, lineterminator="\n"))
    with atomic_path(out_dir / "positives.parquet") as tmp:
        positives.to_parquet(tmp, index=False)
    write_json(out_dir / "summary.json", summary)
    return summary
