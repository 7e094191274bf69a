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

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.io import atomic_path, write_json, write_text
from pipeline.params import load_params, section
from pipeline.schema import DATABASE_YEAR, REGION_FOOTPRINT_COLUMNS
from pipeline.stages.pairs import _read_parquet, fetched_regions, region_paths


@dataclass(frozen=True)
class LostInSpaceSpec:
    name: str
    source: str  # the evaluation set whose queries are used
    year: int = DATABASE_YEAR
    zooms: tuple[int, ...] | None = None  # None: every zoom

    @classmethod
    def from_params(cls, params: dict[str, Any], name: str) -> LostInSpaceSpec:
        sec = section(params, "lost_in_space")
        sets = sec.get("sets") or {}
        if name not in sets:
            raise ConfigError(f"params lost_in_space.sets: unknown set {name!r}; valid: {sorted(sets)}")
        entry = sets[name]
        if not isinstance(entry, dict) or "source" not in entry:
            raise ConfigError(f"params lost_in_space.sets.{name}: expected a mapping with 'source'")
        unknown = sorted(set(entry) - {"source", "zooms"})
        if unknown:
            raise ConfigError(f"params lost_in_space.sets.{name}: unknown key {unknown[0]!r}")
        zooms = entry.get("zooms")
        if zooms is not None:
            if not isinstance(zooms, list) or not zooms or not all(type(z) is int and 0 <= z <= 30 for z in zooms):
                raise ConfigError(f"params lost_in_space.sets.{name}.zooms: expected a non-empty list of zooms")
            zooms = tuple(sorted(set(zooms)))
        return cls(name, str(entry["source"]), int(sec.get("year", DATABASE_YEAR)), zooms)


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


def run(spec: LostInSpaceSpec, evalsets_dir: Path, intersections: Path, grid: Path, tiles_root: Path,
        out_dir: Path) -> dict[str, Any]:  # fmt: skip
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


def main(args: argparse.Namespace) -> None:
    spec = LostInSpaceSpec.from_params(load_params(args.params), args.name)
    out = Path(args.out_dir) if args.out_dir is not None else Path(args.evalsets) / spec.name
    s = run(spec, Path(args.evalsets), Path(args.intersections), Path(args.grid), Path(args.tiles), out)
    print(
        f"lost_in_space {s['name']}: {s['num_queries']} of {s['num_source_queries']} queries of {s['source']} "
        f"against all {s['num_db']} fetched {s['year']} regions (no nadir prior) -> {out}"
    )
