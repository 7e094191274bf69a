"""The evaluation-set map (`data/evalsets/<name>/map.png`): the POI, both radius
circles, the query footprints kept and dropped, the database extent, land and sea.

Azimuthal equidistant projection centred on the POI, on the same sphere (R = 6371 km)
as the selection, so both radius circles are true circles and distances from the POI
are true. The selection itself is `pipeline.geo.evalset`; this module only draws it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely

from pipeline.geo.distance import EARTH_RADIUS_KM, haversine_km
from pipeline.geo.evalset import DROP_NO_POSITIVE, DROP_POSITIVE_OUTSIDE_DB, EvalSet, EvalSetSpec, geodesic_circle
from pipeline.io import atomic_path
from pipeline.presentation.coastlines import contour_segments, sea_fraction_grid
from pipeline.presentation.maps import draw_segments, exterior_rings, near_lon, polygon_path, wrap_lon
from pipeline.schema import NADIR_COLUMNS

LAND_RGB = (0.953, 0.937, 0.894)
SEA_RGB = (0.855, 0.910, 0.953)
KEPT_COLOR = "#1f5fbf"
NO_POS_COLOR = "#e08a00"
OUTSIDE_COLOR = "#c2185b"
DB_COLOR = "#2e7d32"
Q_RADIUS_COLOR = "#0d2c6b"
MAX_DRAW_KM = 0.5 * math.pi * EARTH_RADIUS_KM  # footprints beyond a quarter circumference are not drawn


class PoiProjection:
    """Azimuthal equidistant projection centred on (lat, lon), in km on the selection's
    sphere: map coordinates are true distances and bearings from the POI."""

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


def _drawable(geoms: npt.NDArray[Any], aeqd: PoiProjection) -> npt.NDArray[np.bool_]:
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


def _db_extent(db_geoms: npt.NDArray[Any], aeqd: PoiProjection) -> shapely.Geometry:
    """Union of the database footprints, in map coordinates. The union runs in lon/lat
    (fast on these axis-aligned boxes) after shifting longitudes into the POI-centred
    window, so pieces split at ±180 join up again; then it is densified and projected."""
    geoms = np.asarray(db_geoms, dtype=object)
    if len(geoms) == 0:
        return shapely.Polygon()
    union = shapely.union_all(near_lon(shapely.get_parts(geoms), aeqd.lon))
    union = shapely.segmentize(union, 0.5)
    return shapely.orient_polygons(aeqd.geoms(np.array([union], dtype=object))[0])


GraticuleLines = list[tuple[float, npt.NDArray[np.float64]]]  # (degrees, (n, 2) map points with NaN breaks)


def _graticule(aeqd: PoiProjection, step: float) -> tuple[GraticuleLines, GraticuleLines]:
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
    v = wrap_lon(v)
    if abs(v) < 1e-9 or abs(abs(v) - 180.0) < 1e-9:
        return f"{abs(v):g}°"
    return f"{abs(v):g}°{'E' if v > 0 else 'W'}"


def _fmt_lat(v: float) -> str:
    return "0°" if abs(v) < 1e-9 else f"{abs(v):g}°{'N' if v > 0 else 'S'}"


def _land_background(aeqd: PoiProjection, half: float, npix: int) -> tuple[npt.NDArray, npt.NDArray, npt.NDArray]:
    """Sea fraction sampled at the centres of an npix x npix map grid."""
    xs = np.linspace(-half, half, npix)
    ys = np.linspace(-half, half, npix)
    gx, gy = np.meshgrid(xs, ys)
    lon, lat = aeqd.inv(gx, gy)
    fin = np.isfinite(lon) & np.isfinite(lat)
    lat_f, lon_f = lat[fin], lon[fin]
    south, north = max(-90.0, float(lat_f.min()) - 0.5), min(90.0, float(lat_f.max()) + 0.5)
    rel = wrap_lon(lon_f - aeqd.lon)
    if north >= 89.0 or south <= -89.0 or rel.max() - rel.min() > 350.0:
        west, east = -180.0, 180.0
    else:
        west = wrap_lon(aeqd.lon + float(rel.min()) - 0.5)
        east = wrap_lon(aeqd.lon + float(rel.max()) + 0.5)
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
    fig = evalset_figure(spec, ev, queries, summary)
    import matplotlib.pyplot as plt

    save_palette_png(fig, dest)
    plt.close(fig)


def evalset_figure(spec: EvalSetSpec, ev: EvalSet, queries: pd.DataFrame, summary: dict[str, Any]) -> Any:
    """The map as a matplotlib Figure with one Axes in map km (POI at the origin);
    `render_map` saves it. The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, PathPatch

    aeqd = PoiProjection(spec.lat, spec.lon)
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
    ax.imshow(
        np.ma.masked_invalid(frac),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        origin="lower",
        extent=(xs[0], xs[-1], ys[0], ys[-1]),
        interpolation="bilinear",
        zorder=0,
    )
    draw_segments(ax, contour_segments(xs, ys, frac), colors="0.45", linewidths=0.5, zorder=1)

    # Graticule, labelled where it meets the bottom and left edges.
    step = 10.0 if radius >= 2000 else 5.0
    meridians, parallels = _graticule(aeqd, step)
    draw_segments(
        ax,
        [m for _, m in meridians] + [p for _, p in parallels],
        colors="0.6",
        linewidths=0.35,
        linestyles=":",
        zorder=1.5,
    )
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
    path = polygon_path(extent) if not extent.is_empty else None
    if path is not None:
        ax.add_patch(PathPatch(path, facecolor=DB_COLOR, alpha=0.13, edgecolor="none", zorder=2))
        ax.add_patch(PathPatch(path, facecolor="none", edgecolor=DB_COLOR, linewidth=0.7, alpha=0.8, zorder=2.1))

    # Query footprints: kept, then the two kinds of drops on top.
    groups = [
        (ev.queries["query_id"].to_numpy(), KEPT_COLOR, 0.05, 0.35),
        (ev.dropped.loc[ev.dropped["reason"] == DROP_NO_POSITIVE, "query_id"].to_numpy(), NO_POS_COLOR, 0.08, 0.55),
        (
            ev.dropped.loc[ev.dropped["reason"] == DROP_POSITIVE_OUTSIDE_DB, "query_id"].to_numpy(),
            OUTSIDE_COLOR,
            0.08,
            0.6,
        ),
    ]
    not_drawn = 0
    for z, (ids, color, fa, ea) in enumerate(groups):
        g = queries["geometry"].reindex(ids).to_numpy()
        ok = _drawable(g, aeqd)
        not_drawn += int((~ok).sum())
        rings = exterior_rings(aeqd.geoms(g[ok]))
        if rings:
            ax.add_collection(
                PolyCollection(
                    rings,
                    facecolors=matplotlib.colors.to_rgba(color, fa),
                    edgecolors=matplotlib.colors.to_rgba(color, ea),
                    linewidths=0.3,
                    zorder=3 + z,
                )
            )

    # Nadirs of the dropped queries (their footprints may lie far away: label errors).
    if len(ev.dropped):
        lat_col, lon_col = NADIR_COLUMNS
        nadir = queries[[lat_col, lon_col]].reindex(ev.dropped["query_id"].to_numpy())
        nx, ny = aeqd.fwd(nadir[lon_col].to_numpy(), nadir[lat_col].to_numpy())
        colors = np.where(ev.dropped["reason"].to_numpy() == DROP_NO_POSITIVE, NO_POS_COLOR, OUTSIDE_COLOR)
        ax.scatter(nx, ny, s=14, marker="x", c=list(colors), linewidths=0.9, zorder=6)

    # Radius circles and the POI.
    for r, color, ls in ((spec.query_radius_km, Q_RADIUS_COLOR, "--"), (spec.db_radius_km, DB_COLOR, "-")):
        clat, clon = geodesic_circle(spec.lat, spec.lon, r)
        cx, cy = aeqd.fwd(clon, clat)
        ax.plot(cx, cy, color=color, linestyle=ls, linewidth=1.4, zorder=7)
    ax.plot(
        [0.0],
        [0.0],
        marker="*",
        markersize=16,
        markerfacecolor="#ffd600",
        markeredgecolor="k",
        markeredgewidth=0.8,
        linestyle="none",
        zorder=8,
    )

    s = summary
    mean = s["mean_positives_per_query"]
    handles = [
        Line2D(
            [],
            [],
            marker="*",
            markersize=12,
            markerfacecolor="#ffd600",
            markeredgecolor="k",
            linestyle="none",
            label=f"POI ({spec.lat:g}°, {spec.lon:g}°)",
        ),
        Line2D([], [], color=Q_RADIUS_COLOR, linestyle="--", label=f"query radius {spec.query_radius_km:g} km (nadir)"),
        Line2D([], [], color=DB_COLOR, label=f"database radius {spec.db_radius_km:g} km (region centre)"),
        Patch(
            facecolor=matplotlib.colors.to_rgba(DB_COLOR, 0.2),
            edgecolor=DB_COLOR,
            label=f"database regions: {s['num_db']:,}",
        ),
        Patch(
            facecolor=matplotlib.colors.to_rgba(KEPT_COLOR, 0.15),
            edgecolor=KEPT_COLOR,
            label=f"kept query footprints: {s['num_queries']:,}",
        ),
        Patch(
            facecolor=matplotlib.colors.to_rgba(NO_POS_COLOR, 0.2),
            edgecolor=NO_POS_COLOR,
            label=f"dropped, no positive: {s['num_dropped_no_positive']:,}",
        ),
        Patch(
            facecolor=matplotlib.colors.to_rgba(OUTSIDE_COLOR, 0.2),
            edgecolor=OUTSIDE_COLOR,
            label=f"dropped, positive outside database: {s['num_dropped_positive_outside_db']:,}",
        ),
        Line2D(
            [],
            [],
            marker="x",
            color="0.3",
            markersize=5,
            linestyle="none",
            label="nadir of a dropped query (colour = reason)",
        ),
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
    return fig


def save_palette_png(fig: Any, dest: Path) -> None:
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
