"""evalset stage: one point-of-interest evaluation set.

Reads the grid, the query footprints and the 2021 intersections; writes to
`data/evalsets/<name>/` (all atomically):
  queries.csv      kept queries: query_index, query_id, filename, nadir_lat, nadir_lon, num_positives,
                   pass_id (the ISS pass, `pipeline.geo.passes`; folds assign whole passes)
  database.csv     db_index, region_id, zoom, path (upstream 2021 path), center_lat, center_lon
  positives.parquet  query_index, query_id, db_index, region_id, iou, intersection_km2
  dropped.csv      query_id, reason (no_positive | positive_outside_db), counts, nadir distance
  summary.json     the counts
  map.png          POI, both radius circles, query footprints, database extent, coastlines
The selection itself is `pipeline.geo.evalset.select_evalset`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely

from pipeline.errors import ConfigError, InputError
from pipeline.geo.distance import EARTH_RADIUS_KM, haversine_km
from pipeline.geo.evalset import (
    DROP_NO_POSITIVE,
    DROP_POSITIVE_OUTSIDE_DB,
    EvalSet,
    EvalSetSpec,
    geodesic_circle,
    select_evalset,
    summarize,
)
from pipeline.geo.names import db_relpath
from pipeline.geo.passes import DEFAULT_MAX_DAY_GAP, DEFAULT_MAX_FRAME_GAP, pass_ids
from pipeline.io import atomic_path, read_geoparquet, write_json, write_text
from pipeline.params import load_params, section

CORNER_COLS = ["ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon"]
GRID_COLS = ["region_id", "zoom", "row", "col", *CORNER_COLS, "center_lat", "center_lon", "area_km2", "geometry"]
QUERY_COLS = ["query_id", "mission", "roll", "frame", "date", "filename", "nadir_lat", "nadir_lon", "geometry"]
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
        raise ConfigError(f"params evalset.sets.{name}: unknown key(s) {', '.join(unknown)}; "
                          f"valid keys: {', '.join(sorted(SPEC_KEYS))}")
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
        year = int(sec.get("year", 2021))
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
        ids = pass_ids(queries["mission"], queries["roll"], queries["frame"], queries["date"],
                       max_frame_gap, max_day_gap)
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
    for col in ("center_lat", "center_lon"):
        if not np.isfinite(regions[col].to_numpy(dtype=np.float64)).all():
            raise InputError(f"{grid}: {col} has missing or non-finite values")
    for col in ("nadir_lat", "nadir_lon"):
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
    corners = database[CORNER_COLS].to_numpy(dtype=np.float64)
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
    queries = ev.queries[["query_index", "query_id", "filename", "nadir_lat", "nadir_lon", "num_positives", "pass_id"]]
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
# Map: azimuthal equidistant projection centred on the POI, on the same sphere
# (R = 6371 km) as the selection, so both radius circles are true circles.

LAND_RGB = (0.953, 0.937, 0.894)
SEA_RGB = (0.855, 0.910, 0.953)
KEPT_COLOR = "#1f5fbf"
NO_POS_COLOR = "#e08a00"
OUTSIDE_COLOR = "#c2185b"
DB_COLOR = "#2e7d32"
Q_RADIUS_COLOR = "#0d2c6b"
MAX_DRAW_KM = 0.5 * math.pi * EARTH_RADIUS_KM  # footprints beyond a quarter circumference are not drawn


class _Aeqd:
    def __init__(self, lat: float, lon: float) -> None:
        from pyproj import Proj

        self.lat, self.lon = lat, lon
        self._proj = Proj(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +R={EARTH_RADIUS_KM * 1000.0} +units=km +no_defs")

    def fwd(self, lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        x, y = self._proj(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        return np.asarray(x), np.asarray(y)

    def inv(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        lon, lat = self._proj(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), inverse=True)
        return np.asarray(lon), np.asarray(lat)

    def geoms(self, geoms: npt.NDArray[Any]) -> npt.NDArray[Any]:
        def f(c: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            x, y = self.fwd(c[:, 0], c[:, 1])
            return np.column_stack([x, y])

        return shapely.transform(geoms, f)


def _rings(geoms: npt.NDArray[Any]) -> list[npt.NDArray[np.float64]]:
    """Exterior rings (as (n, 2) arrays) of every polygon part."""
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    parts = parts[shapely.get_type_id(parts) == 3]
    return [shapely.get_coordinates(r) for r in shapely.get_exterior_ring(parts)]


def _drawable(geoms: npt.NDArray[Any], aeqd: _Aeqd) -> npt.NDArray[np.bool_]:
    """Footprints whose every vertex is within MAX_DRAW_KM of the POI (farther ones,
    mostly mislabelled footprints, distort in the projection and are off the map anyway)."""
    geoms = np.asarray(geoms, dtype=object)
    ok = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    coords, idx = shapely.get_coordinates(geoms[ok], return_index=True)
    out = np.zeros(len(geoms), dtype=bool)
    if len(coords):
        d = haversine_km(aeqd.lat, aeqd.lon, coords[:, 1], coords[:, 0])
        far = np.zeros(int(ok.sum()), dtype=bool)
        np.logical_or.at(far, idx, d > MAX_DRAW_KM)
        out[np.flatnonzero(ok)] = ~far
    return out


def _db_extent(db_geoms: npt.NDArray[Any], aeqd: _Aeqd) -> shapely.Geometry:
    """Union of the database footprints, in map coordinates. The union runs in lon/lat
    (fast on these axis-aligned boxes) after shifting longitudes into the POI-centred
    window, so pieces split at ±180 join up again; then it is densified and projected."""
    geoms = np.asarray(db_geoms, dtype=object)
    if len(geoms) == 0:
        return shapely.Polygon()
    lon0 = aeqd.lon
    # Shift each polygon part as a whole (by its centroid) into [lon0 - 180, lon0 + 180).
    parts = shapely.get_parts(geoms)
    cx = shapely.get_x(shapely.centroid(parts))
    offset = 360.0 * np.round((((cx - lon0 + 180.0) % 360.0 - 180.0) + lon0 - cx) / 360.0)
    shifted = _translate(parts, offset)
    union = shapely.union_all(shifted)
    union = shapely.segmentize(union, 0.5)
    return shapely.orient_polygons(aeqd.geoms(np.array([union], dtype=object))[0])


def _translate(parts: npt.NDArray[Any], dx: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """Translate each geometry by its own x offset (vectorised through get/set_coordinates)."""
    if not np.any(dx):
        return parts
    coords, idx = shapely.get_coordinates(parts, return_index=True)
    coords[:, 0] += dx[idx]
    return shapely.set_coordinates(parts.copy(), coords)


def _polygon_path(geom: shapely.Geometry) -> Any:
    from matplotlib.path import Path as MplPath

    verts: list[npt.NDArray[np.float64]] = []
    codes: list[npt.NDArray[np.uint8]] = []
    for poly in shapely.get_parts(np.array([geom], dtype=object)):
        if shapely.get_type_id(poly) != 3 or poly.is_empty:
            continue
        for ring in [poly.exterior, *poly.interiors]:
            c = np.asarray(ring.coords)
            code = np.full(len(c), MplPath.LINETO, dtype=np.uint8)
            code[0] = MplPath.MOVETO
            code[-1] = MplPath.CLOSEPOLY
            verts.append(c)
            codes.append(code)
    if not verts:
        return None
    return MplPath(np.concatenate(verts), np.concatenate(codes))


def _graticule(aeqd: _Aeqd, step: float) -> tuple[list[tuple[float, npt.NDArray]], list[tuple[float, npt.NDArray]]]:
    """Projected meridians and parallels as (value, (n, 2) array with NaN breaks)."""
    far = 0.75 * math.pi * EARTH_RADIUS_KM

    def line(lons: npt.NDArray[np.float64], lats: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = aeqd.fwd(lons, lats)
        bad = haversine_km(aeqd.lat, aeqd.lon, lats, lons) > far
        x, y = np.where(bad, np.nan, x), np.where(bad, np.nan, y)
        return np.column_stack([x, y])

    lat_s = np.linspace(-89.0, 89.0, 357)
    lon_s = np.linspace(-180.0, 180.0, 721)
    meridians = [(lo, line(np.full_like(lat_s, lo), lat_s)) for lo in np.arange(-180.0, 180.0, step)]
    parallels = [(la, line(lon_s, np.full_like(lon_s, la))) for la in np.arange(-80.0, 80.0 + step / 2, step)]
    return meridians, parallels


def _edge_crossings(line: npt.NDArray[np.float64], axis: int, value: float, lo: float, hi: float) -> list[float]:
    """Where a polyline crosses coordinate[axis] == value, as the other coordinate, within [lo, hi]."""
    a = line[:, axis] - value
    b = line[:, 1 - axis]
    s = np.sign(a)
    i = np.flatnonzero((s[:-1] * s[1:] < 0) & np.isfinite(a[:-1]) & np.isfinite(a[1:]))
    t = a[i] / (a[i] - a[i + 1])
    v = b[i] + t * (b[i + 1] - b[i])
    return [float(x) for x in v if lo <= x <= hi]


def _fmt_lon(v: float) -> str:
    v = (v + 180.0) % 360.0 - 180.0
    if abs(v) < 1e-9 or abs(abs(v) - 180.0) < 1e-9:
        return f"{abs(v):g}°"
    return f"{abs(v):g}°{'E' if v > 0 else 'W'}"


def _fmt_lat(v: float) -> str:
    return "0°" if abs(v) < 1e-9 else f"{abs(v):g}°{'N' if v > 0 else 'S'}"


def _land_background(aeqd: _Aeqd, half: float, npix: int) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray]:
    """Sea fraction sampled at the centres of an npix x npix map grid."""
    from pipeline.coastlines import sea_fraction_grid

    xs = np.linspace(-half, half, npix)
    ys = np.linspace(-half, half, npix)
    gx, gy = np.meshgrid(xs, ys)
    lon, lat = aeqd.inv(gx, gy)
    fin = np.isfinite(lon) & np.isfinite(lat)
    lat_f, lon_f = lat[fin], lon[fin]
    south, north = max(-90.0, float(lat_f.min()) - 0.5), min(90.0, float(lat_f.max()) + 0.5)
    rel = (lon_f - aeqd.lon + 180.0) % 360.0 - 180.0
    if north >= 89.0 or south <= -89.0 or rel.max() - rel.min() > 350.0:
        west, east = -180.0, 180.0
    else:
        west = (aeqd.lon + rel.min() - 0.5 + 180.0) % 360.0 - 180.0
        east = (aeqd.lon + rel.max() + 0.5 + 180.0) % 360.0 - 180.0
    pixel_deg = 2.0 * half / npix / 111.2
    step = min(0.25, max(1.0 / 120.0, pixel_deg))
    sf = sea_fraction_grid(west, south, east, north, step)
    frac = np.full(gx.shape, np.nan, dtype=np.float32)
    frac[fin] = sf.at(lat_f, lon_f)
    return xs, ys, frac


def render_map(
    dest: Path,
    spec: EvalSetSpec,
    ev: EvalSet,
    queries: pd.DataFrame,
    summary: dict[str, Any],
) -> None:
    """Write the set's map as a PNG (~1600 px wide), atomically.

    `queries`: indexed by query_id, with geometry (lon/lat footprint), nadir_lat and
    nadir_lon, for (at least) the kept and dropped queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, PathPatch

    from pipeline.coastlines import contour_segments, draw_segments

    aeqd = _Aeqd(spec.lat, spec.lon)
    radius = max(spec.db_radius_km, spec.query_radius_km)
    half = radius * 1.08

    fig, ax = plt.subplots(figsize=(10.0, 10.6), dpi=160)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.92)
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal")

    # Land and sea, then coastlines.
    xs, ys, frac = _land_background(aeqd, half, 900)
    cmap = LinearSegmentedColormap.from_list("landsea", [LAND_RGB, SEA_RGB]).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=0.0, vmax=1.0, origin="lower",
              extent=(xs[0], xs[-1], ys[0], ys[-1]), interpolation="bilinear", zorder=0)
    draw_segments(ax, contour_segments(xs, ys, frac), colors="0.45", linewidths=0.5, zorder=1)

    # Graticule, labelled where it meets the bottom and left edges.
    step = 10.0 if radius >= 2000 else 5.0
    meridians, parallels = _graticule(aeqd, step)
    from matplotlib.collections import LineCollection

    ax.add_collection(LineCollection([m for _, m in meridians] + [p for _, p in parallels],
                                     colors="0.6", linewidths=0.35, linestyles=":", zorder=1.5))
    xt: list[tuple[float, str]] = []
    for lo, m in meridians:
        xt += [(x, _fmt_lon(lo)) for x in _edge_crossings(m, 1, -half, -half, half)]
    yt: list[tuple[float, str]] = []
    for la, p in parallels:
        yt += [(y, _fmt_lat(la)) for y in _edge_crossings(p, 0, -half, -half, half)]
    ax.set_xticks([t for t, _ in sorted(xt)], [s for _, s in sorted(xt)], fontsize=7)
    ax.set_yticks([t for t, _ in sorted(yt)], [s for _, s in sorted(yt)], fontsize=7)
    ax.tick_params(length=3, color="0.5")

    # Database extent.
    db_geoms = ev.database.geometry.to_numpy() if "geometry" in ev.database else np.array([], dtype=object)
    extent = _db_extent(db_geoms, aeqd)
    path = _polygon_path(extent) if not extent.is_empty else None
    if path is not None:
        ax.add_patch(PathPatch(path, facecolor=DB_COLOR, alpha=0.13, edgecolor="none", zorder=2))
        ax.add_patch(PathPatch(path, facecolor="none", edgecolor=DB_COLOR, linewidth=0.7, alpha=0.8, zorder=2.1))

    # Query footprints: kept, then the two kinds of drops on top.
    groups = [
        (ev.queries["query_id"].to_numpy(), KEPT_COLOR, 0.05, 0.35),
        (ev.dropped.loc[ev.dropped["reason"] == DROP_NO_POSITIVE, "query_id"].to_numpy(), NO_POS_COLOR, 0.08, 0.55),
        (ev.dropped.loc[ev.dropped["reason"] == DROP_POSITIVE_OUTSIDE_DB, "query_id"].to_numpy(), OUTSIDE_COLOR,
         0.08, 0.6),
    ]
    not_drawn = 0
    for z, (ids, color, fa, ea) in enumerate(groups):
        g = queries["geometry"].reindex(ids).to_numpy()
        ok = _drawable(g, aeqd)
        not_drawn += int((~ok).sum())
        rings = _rings(aeqd.geoms(g[ok]))
        if rings:
            ax.add_collection(PolyCollection(rings, facecolors=matplotlib.colors.to_rgba(color, fa),
                                             edgecolors=matplotlib.colors.to_rgba(color, ea),
                                             linewidths=0.3, zorder=3 + z))

    # Nadirs of the dropped queries (their footprints may lie far away: label errors).
    if len(ev.dropped):
        nadir = queries[["nadir_lat", "nadir_lon"]].reindex(ev.dropped["query_id"].to_numpy())
        nx, ny = aeqd.fwd(nadir["nadir_lon"].to_numpy(), nadir["nadir_lat"].to_numpy())
        colors = np.where(ev.dropped["reason"].to_numpy() == DROP_NO_POSITIVE, NO_POS_COLOR, OUTSIDE_COLOR)
        ax.scatter(nx, ny, s=14, marker="x", c=list(colors), linewidths=0.9, zorder=6)

    # Radius circles and the POI.
    for r, color, ls in ((spec.query_radius_km, Q_RADIUS_COLOR, "--"), (spec.db_radius_km, DB_COLOR, "-")):
        clat, clon = geodesic_circle(spec.lat, spec.lon, r)
        cx, cy = aeqd.fwd(clon, clat)
        ax.plot(cx, cy, color=color, linestyle=ls, linewidth=1.4, zorder=7)
    ax.plot([0.0], [0.0], marker="*", markersize=16, markerfacecolor="#ffd600", markeredgecolor="k",
            markeredgewidth=0.8, linestyle="none", zorder=8)

    s = summary
    mean = s["mean_positives_per_query"]
    handles = [
        Line2D([], [], marker="*", markersize=12, markerfacecolor="#ffd600", markeredgecolor="k", linestyle="none",
               label=f"POI ({spec.lat:g}°, {spec.lon:g}°)"),
        Line2D([], [], color=Q_RADIUS_COLOR, linestyle="--", label=f"query radius {spec.query_radius_km:g} km (nadir)"),
        Line2D([], [], color=DB_COLOR, label=f"database radius {spec.db_radius_km:g} km (region centre)"),
        Patch(facecolor=matplotlib.colors.to_rgba(DB_COLOR, 0.2), edgecolor=DB_COLOR,
              label=f"database regions: {s['num_db']:,}"),
        Patch(facecolor=matplotlib.colors.to_rgba(KEPT_COLOR, 0.15), edgecolor=KEPT_COLOR,
              label=f"kept query footprints: {s['num_queries']:,}"),
        Patch(facecolor=matplotlib.colors.to_rgba(NO_POS_COLOR, 0.2), edgecolor=NO_POS_COLOR,
              label=f"dropped, no positive: {s['num_dropped_no_positive']:,}"),
        Patch(facecolor=matplotlib.colors.to_rgba(OUTSIDE_COLOR, 0.2), edgecolor=OUTSIDE_COLOR,
              label=f"dropped, positive outside database: {s['num_dropped_positive_outside_db']:,}"),
        Line2D([], [], marker="x", color="0.3", markersize=5, linestyle="none",
               label="nadir of a dropped query (colour = reason)"),
        Line2D([], [], color="0.45", linewidth=0.8, label="coastline (GLOBE land mask)"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=7.5, framealpha=0.92)
    ax.set_title(
        f"EarthLoc evaluation set '{spec.name}'\n"
        f"{s['num_queries']:,} of {s['num_within_radius']:,} queries kept · {s['num_db']:,} database regions · "
        + (f"{mean:.1f} positives per query" if mean is not None else "no positives"),
        fontsize=11,
    )
    zooms = ", ".join(f"z{z}: {n:,}" for z, n in s["num_db_per_zoom"].items())
    note = (
        f"Azimuthal equidistant projection centred on the POI (sphere R = {EARTH_RADIUS_KM:g} km, distances from the "
        f"POI are true); graticule every {step:g}°. Database per zoom: {zooms or 'none'}."
    )
    if not_drawn:
        note += f" {not_drawn} footprint(s) farther than {MAX_DRAW_KM:,.0f} km not drawn."
    fig.text(0.5, 0.035, note, ha="center", va="center", fontsize=7, color="0.3", wrap=True)

    _save_png(fig, dest)
    plt.close(fig)


def _save_png(fig: Any, dest: Path) -> None:
    """Save as a 256-colour PNG (fast-octree palette keeps the few saturated marker
    colours; the map has few distinct colours, so this is visually lossless and about
    a quarter of the RGBA size), atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG", optimize=True)


# ---------------------------------------------------------------------------
# Stage


def run(
    spec: EvalSetSpec, year: int, grid: Path, queries: Path, intersections: Path, out_dir: Path, draw_map: bool = True,
    pass_rule: tuple[int, int] = (DEFAULT_MAX_FRAME_GAP, DEFAULT_MAX_DAY_GAP),
) -> dict[str, Any]:
    regions, qs, pairs = read_inputs(grid, queries, intersections)
    qs = with_pass_ids(qs, *pass_rule, source=queries)
    ev = select_evalset(spec, qs, regions, pairs)
    summary: dict[str, Any] = summarize(spec, ev)
    summary.update({"year": year, "pass_max_frame_gap": pass_rule[0], "pass_max_day_gap": pass_rule[1],
                    "inputs": {"grid": str(grid), "queries": str(queries),
                               "intersections": str(intersections)}})
    out_dir = Path(out_dir)
    write_outputs(out_dir, ev, year, summary)
    if draw_map:
        table = pd.DataFrame(
            {"geometry": qs.geometry.to_numpy(), "nadir_lat": qs["nadir_lat"].to_numpy(),
             "nadir_lon": qs["nadir_lon"].to_numpy()},
            index=qs["query_id"].to_numpy(),
        )
        render_map(out_dir / "map.png", spec, ev, table, summary)
    return summary


def summary_line(s: dict[str, Any], out_dir: Path) -> str:
    mean = s["mean_positives_per_query"]
    return (
        f"evalset {s['name']}: {s['num_queries']} queries kept of {s['num_within_radius']} within "
        f"{s['query_radius_km']:g} km (dropped {s['num_dropped_no_positive']} no_positive, "
        f"{s['num_dropped_positive_outside_db']} positive_outside_db), {s['num_db']} database regions within "
        f"{s['db_radius_km']:g} km, {'%.1f' % mean if mean is not None else 'n/a'} positives/query -> {out_dir}"
    )


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    spec, year = load_spec(params, args.name)
    out_dir = Path(args.out_dir) if args.out_dir is not None else Path("data/evalsets") / args.name
    summary = run(spec, year, Path(args.grid), Path(args.queries), Path(args.intersections), out_dir,
                  pass_rule=load_pass_rule(params))
    print(summary_line(summary, out_dir))
