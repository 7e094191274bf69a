"""queries stage: NASA astronaut-photo metadata (CSV) -> footprints (GeoParquet).

Every row either becomes a footprint or a line of rejected.csv with its CSV line
number and reason; nothing is dropped silently. The stage fails only when the
rejected share exceeds `queries.max_rejected_fraction`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError, RejectedShareError
from pipeline.geo.area import DEFAULT_DENSIFY_DEG, area_km2, geod_quad_area_km2
from pipeline.geo.footprints import check_quads, quads_from_corners, split_antimeridian, unwrap_ring_lons
from pipeline.geo.names import SAFE_ID_RE, query_filename
from pipeline.io import atomic_path, write_geoparquet

CORNER_COLUMNS = ["LL_LAT", "LL_LON", "UL_LAT", "UL_LON", "UR_LAT", "UR_LON", "LR_LAT", "LR_LON"]
NUMERIC_COLUMNS = [*CORNER_COLUMNS, "NADIR_LAT", "NADIR_LON", "SQ_KM_AREA", "ORIENTATION"]
ID_COLUMNS = ["MISSION", "ROLL", "FRAME"]
REQUIRED_COLUMNS = [*CORNER_COLUMNS, *ID_COLUMNS, "YYYYMMDD", "NADIR_LAT", "NADIR_LON", "SQ_KM_AREA", "ORIENTATION"]
OPTIONAL_COLUMNS = ["URL"]
REJECTED_COLUMNS = ["line", "query_id", "reason", "detail"]


@dataclass(frozen=True)
class QueriesParams:
    csv: str = "data/inputs/metadata_queries_images.csv"
    max_rejected_fraction: float = 0.01
    max_area_rel_diff: float = 0.05
    densify_deg: float = DEFAULT_DENSIFY_DEG

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> QueriesParams:
        try:
            p = cls(
                csv=str(sec.get("csv", cls.csv)),
                max_rejected_fraction=float(sec.get("max_rejected_fraction", cls.max_rejected_fraction)),
                max_area_rel_diff=float(sec.get("max_area_rel_diff", cls.max_area_rel_diff)),
                densify_deg=float(sec.get("densify_deg", cls.densify_deg)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params queries: {exc}") from exc
        if not 0 <= p.max_rejected_fraction <= 1:
            raise ConfigError("params queries.max_rejected_fraction must be within [0, 1]")
        if p.densify_deg <= 0:
            raise ConfigError("params queries.densify_deg must be > 0")
        return p


class _Rejections:
    """Collects the first reason each row is rejected for."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)

    def add(self, mask: np.ndarray, reason: str, detail: str | np.ndarray) -> None:
        new = mask & (self.reason == "")
        self.reason[new] = reason
        self.detail[new] = detail if isinstance(detail, str) else np.asarray(detail, dtype=object)[new]

    @property
    def ok(self) -> np.ndarray:
        return self.reason == ""


def read_nasa_csv(path: Path) -> pd.DataFrame:
    """The CSV as strings, with the physical line number of every record."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file")
            header = [h.strip() for h in header]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise InputError(f"{path}: not a NASA metadata CSV, missing columns {missing}")
            rows, lines, widths = [], [], []
            line = reader.line_num
            for rec in reader:
                lines.append(line + 1)
                line = reader.line_num
                widths.append(len(rec))
                rows.append((rec + [""] * len(header))[: len(header)])
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from exc
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df.insert(0, "_line", np.asarray(lines, dtype=np.int64))
    df["_width"] = np.asarray(widths, dtype=np.int64)
    df["_expected_width"] = len(header)
    for col in OPTIONAL_COLUMNS:
        if col not in df:
            df[col] = ""
    return df


def ingest(raw: pd.DataFrame, params: QueriesParams) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """Validate and convert a raw CSV table; returns (footprints, rejections)."""
    n = len(raw)
    rej = _Rejections(n)
    text = {c: raw[c].astype(str).str.strip() for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    query_id = (text["MISSION"] + "-" + text["ROLL"] + "-" + text["FRAME"]).to_numpy(dtype=object)

    rej.add((raw["_width"] != raw["_expected_width"]).to_numpy(), "wrong_field_count",
            "record has " + raw["_width"].astype(str).to_numpy(dtype=object) + " fields, header has "
            + raw["_expected_width"].astype(str).to_numpy(dtype=object))
    for col in REQUIRED_COLUMNS:
        rej.add((text[col] == "").to_numpy(), "missing_field", f"{col} is empty")
    values: dict[str, np.ndarray] = {}
    for col in NUMERIC_COLUMNS:
        num = pd.to_numeric(text[col], errors="coerce").to_numpy(dtype=np.float64)
        rej.add(~np.isfinite(num), "non_numeric_field", col + " is not a finite number: " + text[col].to_numpy(dtype=object))
        values[col] = num

    lats = np.stack([values[c] for c in CORNER_COLUMNS[0::2]], axis=1)
    lons = np.stack([values[c] for c in CORNER_COLUMNS[1::2]], axis=1)
    with np.errstate(invalid="ignore"):
        rej.add((np.abs(lats) > 90).any(axis=1), "coordinate_out_of_range", "a corner latitude is outside [-90, 90]")
        rej.add((np.abs(lons) > 180).any(axis=1), "coordinate_out_of_range", "a corner longitude is outside [-180, 180]")
        rej.add(np.abs(values["NADIR_LAT"]) > 90, "coordinate_out_of_range", "nadir latitude outside [-90, 90]")
        rej.add(np.abs(values["NADIR_LON"]) > 180, "coordinate_out_of_range", "nadir longitude outside [-180, 180]")
        rej.add(values["SQ_KM_AREA"] <= 0, "non_positive_area", "SQ_KM_AREA <= 0")

    safe = np.array([bool(SAFE_ID_RE.match(q)) for q in query_id])
    for col in ID_COLUMNS:
        part_ok = text[col].str.fullmatch(r"[A-Za-z0-9]+").to_numpy(dtype=bool)
        safe &= part_ok
    rej.add(~safe, "unsafe_id", "id has characters outside [A-Za-z0-9-]: " + pd.Series(query_id).map(repr).to_numpy(dtype=object))
    dates = pd.to_datetime(text["YYYYMMDD"], format="%Y%m%d", errors="coerce")
    rej.add(dates.isna().to_numpy(), "bad_date", "YYYYMMDD is not a valid date: " + text["YYYYMMDD"].to_numpy(dtype=object))

    # Duplicates: the first occurrence of an id wins; later ones name the line they repeat.
    first_line = pd.Series(raw["_line"].to_numpy()).groupby(query_id).transform("min").to_numpy()
    dup = raw["_line"].to_numpy() != first_line
    rej.add(dup, "duplicate_id", "same id as line " + pd.Series(first_line).astype(str).to_numpy(dtype=object))

    # Geometry only for rows that survived the field checks.
    cand = np.flatnonzero(rej.ok)
    ulons = unwrap_ring_lons(lons[cand])
    quads = quads_from_corners(lats[cand], ulons)
    check = check_quads(quads)
    bad_geom = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    details = np.full(n, "", dtype=object)
    bad_geom[cand] = check.reason != ""
    reasons[cand], details[cand] = check.reason, check.detail
    for reason in ("degenerate_footprint", "self_intersecting_footprint"):
        rej.add(bad_geom & (reasons == reason), reason, details)

    footprints = np.full(n, None, dtype=object)
    footprints[cand] = split_antimeridian(quads)
    crosses = np.zeros(n, dtype=bool)
    crosses[cand] = (ulons > 180).any(axis=1)
    area = np.full(n, np.nan)
    ok_geom = np.flatnonzero(rej.ok)
    area[ok_geom] = area_km2(footprints[ok_geom], params.densify_deg)
    geodesic = np.full(n, np.nan)
    geodesic[ok_geom] = geod_quad_area_km2(lats[ok_geom], lons[ok_geom])
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(geodesic - values["SQ_KM_AREA"]) / values["SQ_KM_AREA"]
    far = rej.ok & (rel > params.max_area_rel_diff)
    rej.add(far, "area_mismatch",
            np.array([f"geodesic area {g:.0f} km2 vs NASA {a:.0f} km2 ({r:.1%})" for g, a, r in
                      zip(geodesic, values["SQ_KM_AREA"], rel)], dtype=object))

    ok = rej.ok
    rejected = pd.DataFrame(
        {"line": raw["_line"].to_numpy()[~ok], "query_id": query_id[~ok],
         "reason": rej.reason[~ok], "detail": rej.detail[~ok]}
    )
    idx = np.flatnonzero(ok)
    corners = np.stack([values[c][idx] for c in CORNER_COLUMNS], axis=1)
    table = pd.DataFrame(
        {
            "query_id": query_id[idx].astype(str),
            "mission": text["MISSION"].to_numpy()[idx],
            "roll": text["ROLL"].to_numpy()[idx],
            "frame": text["FRAME"].to_numpy()[idx],
            "date": text["YYYYMMDD"].to_numpy()[idx],
            "year": dates.dt.year.to_numpy()[idx].astype(np.int64),
            "nadir_lat": values["NADIR_LAT"][idx],
            "nadir_lon": values["NADIR_LON"][idx],
            **{c.lower(): values[c][idx] for c in CORNER_COLUMNS},
            "orientation": values["ORIENTATION"][idx],
            "orientation_raw": text["ORIENTATION"].to_numpy()[idx],
            "nasa_area_km2": values["SQ_KM_AREA"][idx],
            "area_km2": area[idx],
            "geodesic_area_km2": geodesic[idx],
            "crosses_antimeridian": crosses[idx],
            "url": text["URL"].to_numpy()[idx],
            "source_line": raw["_line"].to_numpy()[idx],
        }
    )
    table.insert(
        6,
        "filename",
        [
            query_filename(c.tolist(), q, d, la, lo, a, o)
            for c, q, d, la, lo, a, o in zip(corners, table["query_id"], table["date"], table["nadir_lat"],
                                              table["nadir_lon"], table["nasa_area_km2"], table["orientation_raw"])
        ],
    )
    gdf = gpd.GeoDataFrame(table, geometry=footprints[idx], crs="EPSG:4326")
    return gdf, rejected


def write_rejected(rejected: pd.DataFrame, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        rejected.to_csv(tmp, index=False, columns=REJECTED_COLUMNS, quoting=csv.QUOTE_MINIMAL)


def run(csv_path: Path, out: Path, rejected_out: Path, params: QueriesParams) -> gpd.GeoDataFrame:
    t0 = time.perf_counter()
    raw = read_nasa_csv(csv_path)
    gdf, rejected = ingest(raw, params)
    # The rejection record is written even when the stage then fails: it is the diagnosis.
    write_rejected(rejected, rejected_out)
    share = len(rejected) / max(1, len(raw))
    by_reason = rejected["reason"].value_counts().to_dict()
    if share > params.max_rejected_fraction:
        raise RejectedShareError(
            f"{len(rejected)} of {len(raw)} rows rejected ({share:.1%} > max_rejected_fraction "
            f"{params.max_rejected_fraction:.1%}): {by_reason}; see {rejected_out}"
        )
    write_geoparquet(gdf, out)
    print(
        f"queries: {len(gdf):,} footprints, {len(rejected)} rejected {by_reason} "
        f"({int(gdf['crosses_antimeridian'].sum())} across the antimeridian) -> {out} in {time.perf_counter() - t0:.1f} s"
    )
    return gdf
