"""pairs stage: AstroLoc's (astronaut photo, 2021 database region) training pairs.

Reads the 2021 intersections, the query footprints (file names, nadirs), the grid (to name
the 2021 database paths), the evaluation sets (to exclude their photos) and, when present,
the tile store's manifests (to keep only images that exist). Writes to `data/pairs/`:
  pairs.parquet    query_id, filename, region_id, zoom, iou, intersection_km2, path
                   (path = the region's 2021 image relative to the tile store root)
  neutral.parquet  query_id, region_id, zoom, iou: overlaps of kept photos below min_iou
                   (neither positive nor negative for the photo-to-region loss)
  excluded.csv     query_id, reason, sets: every photo that must not be trained on (a
                   whole ISS pass goes when any of its frames is an evaluation photo)
  summary.json     DVC metrics
The selection itself is `pipeline.geo.pairs`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError, IntegrityError
from pipeline.geo.names import db_relpath
from pipeline.geo.pairs import (
    NEUTRAL_COLUMNS,
    PAIR_COLUMNS,
    SetArea,
    SetMembers,
    excluded_photos,
    leaked_ids,
    select_pairs,
    summarize,
)
from pipeline.geo.passes import DEFAULT_MAX_DAY_GAP, DEFAULT_MAX_FRAME_GAP
from pipeline.io import atomic_path, write_json, write_text
from pipeline.params import build_config, check_keys
from pipeline.schema import CORNER_COLUMNS, DATABASE_YEAR, QUERY_COLUMNS, REGION_FOOTPRINT_COLUMNS
from pipeline.stages.evalset import EvalsetParams, with_pass_ids

REGION_MANIFEST_RE = re.compile(r"^(\d{4})_(\d{2})\.parquet$")  # tiles/manifests/<YEAR>_<ZZ>.parquet
MODES = ("fetched", "all")


@dataclass(frozen=True)
class PairsParams:
    """The `pairs` section of params.yaml, plus what it takes from the `evalset` section:
    the query discs of the sets it must avoid (for the nadir check) and the pass rule."""

    min_iou: float = 0.1
    year: int = DATABASE_YEAR
    # Names of evalset.sets whose photos are excluded; "all" in params.yaml (every set)
    # is resolved to the names when the section is built.
    exclude_sets: tuple[str, ...] = ()
    exclude_margin_km: float = 0.0  # widen every set's query radius by this for the nadir check
    regions: str = "fetched"  # fetched: only regions whose images exist for every year in `years`; all
    photos: str = "fetched"  # fetched: only photos whose image exists; all
    years: tuple[int, ...] = (2018, 2019, 2020, 2021)  # years a region's images must all exist in
    areas: tuple[SetArea, ...] = ()  # the query discs of `exclude_sets`, from evalset.sets
    pass_rule: tuple[int, int] = (DEFAULT_MAX_FRAME_GAP, DEFAULT_MAX_DAY_GAP)  # evalset.pass_max_*

    def __post_init__(self) -> None:
        if not 0.0 < self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {self.min_iou}")
        if self.regions not in MODES or self.photos not in MODES:
            raise ValueError(f"regions and photos must be one of {MODES}")
        if self.exclude_margin_km < 0:
            raise ValueError("exclude_margin_km must be >= 0")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None, evalset: EvalsetParams) -> PairsParams:
        """From the `pairs` section and the built `evalset` section; an unknown key, or a
        set name that `evalset.sets` lacks, is a ConfigError naming it."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)} - FROM_EVALSET, "pairs")
        sets = {s.name: s for s in evalset.sets}
        raw = sec.pop("exclude_sets", "all")
        names = tuple(sets) if raw == "all" else tuple(str(n) for n in (raw or []))
        unknown = sorted(set(names) - set(sets))
        if unknown:
            raise ConfigError(f"params pairs.exclude_sets: unknown set(s) {unknown}; valid: {sorted(sets)}")
        areas = tuple(SetArea(n, sets[n].lat, sets[n].lon, sets[n].query_radius_km) for n in names)
        sec.update(exclude_sets=names, areas=areas, pass_rule=evalset.pass_rule)
        return build_config(cls, sec, "pairs")


# Fields of PairsParams that the `evalset` section supplies: not keys of `pairs`.
FROM_EVALSET = frozenset({"areas", "pass_rule"})


@dataclass(frozen=True)
class PairsPaths:
    """What the pairs stage reads, and the folder it writes."""

    intersections: Path
    queries: Path
    grid: Path
    evalsets_dir: Path
    tiles_root: Path
    out_dir: Path


# ---------------------------------------------------------------------------
# Inputs


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: no such file (run the stage that makes it first)")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{path}: not a readable Parquet file with columns {columns} ({exc})") from exc


def _read_ids(path: Path) -> frozenset[str]:
    try:
        df = pd.read_csv(path, usecols=["query_id"], dtype={"query_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a CSV with a query_id column ({exc})") from exc
    return frozenset(df["query_id"].dropna())


def read_members(evalsets_dir: Path, names: tuple[str, ...]) -> tuple[SetMembers, ...]:
    """queries.csv and dropped.csv of every named set; a missing queries.csv is an error
    (a set that was never built cannot be proven absent from the pairs)."""
    out = []
    for name in names:
        d = Path(evalsets_dir) / name
        if not (d / "queries.csv").exists():
            raise InputError(f"{d / 'queries.csv'}: missing; build the set first (dvc repro evalset@{name})")
        dropped = _read_ids(d / "dropped.csv") if (d / "dropped.csv").exists() else frozenset()
        out.append(SetMembers(name, _read_ids(d / "queries.csv"), dropped))
    return tuple(out)


def fetched_regions(tiles_root: Path, years: tuple[int, ...]) -> set[str] | None:
    """Regions whose image is `ok` in the tile store for every year; None if no manifest exists."""
    mdir = Path(tiles_root) / "manifests"
    files = [f for f in sorted(mdir.glob("*.parquet")) if REGION_MANIFEST_RE.match(f.name)] if mdir.is_dir() else []
    if not files:
        return None
    ok_by_year: dict[int, set[str]] = {y: set() for y in years}
    for f in files:
        year = int(REGION_MANIFEST_RE.match(f.name).group(1))  # type: ignore[union-attr]
        if year not in ok_by_year:
            continue
        m = _read_parquet(f, ["region_id", "status"])
        ok_by_year[year] |= set(m.loc[m["status"] == "ok", "region_id"].astype(str))
    return set.intersection(*ok_by_year.values()) if ok_by_year else set()


def fetched_photos(tiles_root: Path) -> set[str] | None:
    """Photos whose image is `ok` in tiles/queries/manifest.parquet; None if there is none."""
    path = Path(tiles_root) / "queries" / "manifest.parquet"
    if not path.exists():
        return None
    m = _read_parquet(path, ["query_id", "status"])
    return set(m.loc[m["status"] == "ok", "query_id"].astype(str))


def region_paths(grid: pd.DataFrame, year: int) -> pd.Series:
    """Upstream database path of each region's `year` image, indexed by region_id."""
    corners = grid[list(CORNER_COLUMNS)].to_numpy(dtype=np.float64)
    paths = [
        db_relpath(tuple(c), rid, int(z), year, float(la), float(lo), float(a))
        for c, rid, z, la, lo, a in zip(
            corners,
            grid["region_id"],
            grid["zoom"],
            grid["center_lat"],
            grid["center_lon"],
            grid["area_km2"],
            strict=True,
        )
    ]
    return pd.Series(paths, index=grid["region_id"].to_numpy(), dtype=object)


# ---------------------------------------------------------------------------
# Stage


def run(p: PairsParams, paths: PairsPaths) -> dict[str, Any]:
    """Select the pairs, prove that no evaluation photo is among them, write them to
    `paths.out_dir`; return the summary."""
    intersections, queries, grid = paths.intersections, paths.queries, paths.grid
    evalsets_dir, tiles_root, out_dir = paths.evalsets_dir, paths.tiles_root, paths.out_dir
    inter = _read_parquet(Path(intersections), ["query_id", "region_id", "zoom", "iou", "intersection_km2"])
    qs = _read_parquet(Path(queries), list(QUERY_COLUMNS))
    qs = with_pass_ids(qs, *p.pass_rule, source=queries)
    members = read_members(Path(evalsets_dir), p.exclude_sets)
    excluded = excluded_photos(qs, members, p.areas, p.exclude_margin_km)

    regions_ok = fetched_regions(Path(tiles_root), p.years) if p.regions == "fetched" else None
    photos_ok = fetched_photos(Path(tiles_root)) if p.photos == "fetched" else None
    res = select_pairs(inter, excluded["query_id"], p.min_iou, regions_ok, photos_ok)

    # Belt and braces: the proof of no leakage runs on the very table that is written.
    pass_of = dict(zip(qs["query_id"], qs["pass_id"], strict=True))
    leaks = leaked_ids(res.pairs, members, pass_of) | (set(res.pairs["query_id"]) & set(excluded["query_id"]))
    if leaks:
        raise IntegrityError(f"pairs: {len(leaks)} evaluation photo(s) would be trained on, e.g. {sorted(leaks)[0]}")

    used = res.pairs["region_id"].unique()
    g = _read_parquet(Path(grid), list(REGION_FOOTPRINT_COLUMNS))
    g = g.loc[g["region_id"].isin(used)]
    if len(g) != len(used):
        raise InputError(f"{grid}: lacks regions named in {intersections}; were both built from the same grid?")
    paths = region_paths(g, p.year)
    filenames = qs.set_index("query_id")["filename"]
    pairs = res.pairs.assign(
        filename=res.pairs["query_id"].map(filenames).to_numpy(),
        path=res.pairs["region_id"].map(paths).to_numpy(),
    )[PAIR_COLUMNS]

    summary: dict[str, Any] = summarize(pairs, excluded, res.counts, p.min_iou)
    summary.update(
        {
            "year": p.year,
            "exclude_sets": list(p.exclude_sets),
            "exclude_margin_km": p.exclude_margin_km,
            "region_filter": (
                p.regions
                if regions_ok is not None or p.regions == "all"
                else "fetched requested, no tile manifests: not restricted"
            ),
            "photo_filter": (
                p.photos
                if photos_ok is not None or p.photos == "all"
                else "fetched requested, no query manifest: not restricted"
            ),
            "num_neutral_pairs": int(len(res.neutral)),
        }
    )
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "pairs.parquet") as tmp:
        pairs.to_parquet(tmp, index=False)
    with atomic_path(out_dir / "neutral.parquet") as tmp:
        res.neutral[NEUTRAL_COLUMNS].to_parquet(tmp, index=False)
    write_text(out_dir / "excluded.csv", excluded.to_csv(index=False, lineterminator="\n"))
    write_json(out_dir / "summary.json", summary)
    return summary


def summary_line(s: dict[str, Any], out_dir: Path) -> str:
    ex = s["excluded_photos"]
    return (
        f"pairs: {s['num_pairs']} pairs (iou >= {s['min_iou']:g}) of {s['num_photos']} photos and "
        f"{s['num_regions']} regions; excluded {s['num_excluded_photos']} evaluation photos "
        f"({', '.join(f'{k} {v}' for k, v in ex.items())}); regions: {s['region_filter']}; "
        f"photos: {s['photo_filter']} -> {out_dir}"
    )
