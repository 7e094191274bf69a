"""The audit's map of one query (`<out_dir>/<query_id>.png`): the query footprint, its
nadir, and the regions it overlaps coloured by IoU, one panel per zoom, over coastlines.

Plain lon/lat axes (stretched by 1/cos(latitude) so shapes look right) in continuous
longitudes: a query across the antimeridian is drawn around 180, not split in two.
The overlaps themselves come from `pipeline.tools.audit`; this module only draws them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.io import atomic_path
from pipeline.presentation.maps import draw_coastlines, near_lon, wrap_lon

COASTLINE_STYLE: dict[str, Any] = {"colors": "0.2", "linewidths": 0.8, "zorder": 2.5}


def coastline_step_deg(west: float, east: float) -> float:
    """Land-mask block size for a panel `east - west` degrees wide: about 80 blocks
    across, between 0.02° (a 2 x 2 cell block) and 0.1°."""
    return float(np.clip((east - west) / 80.0, 0.02, 0.1))


def _shift_lon(geom: shapely.Geometry, ref_lon: float) -> shapely.Geometry:
    """`geom` with each polygon part next to `ref_lon` (see `near_lon`); pieces that
    meet at the antimeridian become one polygon again."""
    parts = near_lon(shapely.get_parts(geom), ref_lon)
    return parts[0] if len(parts) == 1 else shapely.union_all(parts, grid_size=1e-9)


def _lon_label(v: float, _pos: Any = None) -> str:
    w = wrap_lon(v)
    return "±180" if abs(abs(w) - 180.0) < 1e-9 else f"{w:g}"


def format_date(value: Any) -> str:
    """YYYYMMDD as YYYY-MM-DD; anything else as it is."""
    s = str(value)
    return f"{s[:4]}-{s[4:6]}-{s[6:]}" if len(s) == 8 and s.isdigit() else s


def query_png(dest: Path, query: pd.Series, pairs: pd.DataFrame, regions: gpd.GeoDataFrame) -> None:
    """Write the query's map as a PNG, atomically (see `query_figure`)."""
    fig = query_figure(query, pairs, regions)
    import matplotlib.pyplot as plt

    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def query_figure(query: pd.Series, pairs: pd.DataFrame, regions: gpd.GeoDataFrame) -> Any:
    """The query's map as a matplotlib Figure, one lon/lat panel per zoom level.

    `query`: a queries-table row (geometry, nadir_lat, nadir_lon, query_id; date and
    area_km2 when known). `pairs`: its rows of the intersection table (region_id, zoom,
    iou). `regions`: the grid (region_id, geometry). The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.cm
    import matplotlib.colors
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Polygon as MplPolygon

    qgeom = query.geometry
    qb = shapely.bounds(qgeom)
    ref_lon = 180.0 if qb[2] - qb[0] > 180.0 else float(qgeom.centroid.x)
    qgeom = _shift_lon(qgeom, ref_lon)
    qb = shapely.bounds(qgeom)
    mid_lat = (qb[1] + qb[3]) / 2.0
    aspect = 1.0 / max(math.cos(math.radians(mid_lat)), 0.05)
    nadir_lon = float(query["nadir_lon"])
    nadir_lon += 360.0 * round((ref_lon - nadir_lon) / 360.0)
    nadir_lat = float(query["nadir_lat"])

    merged = pairs.merge(regions[["region_id", "geometry"]], on="region_id", how="left")
    merged = merged[merged["geometry"].notna()]
    zooms: list[int | None] = [*sorted(int(z) for z in merged["zoom"].dropna().unique())] or [None]
    vmax = float(merged["iou"].max()) if len(merged) else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(vmin=0.0, vmax=vmax)

    fig, axes = plt.subplots(1, len(zooms), figsize=(5.2 * len(zooms) + 1.2, 5.8), squeeze=False, layout="constrained")
    for ax, z in zip(axes[0], zooms):
        sub = merged[merged["zoom"] == z].sort_values("iou") if z is not None else merged.iloc[:0]
        geoms = [_shift_lon(g, ref_lon) for g in sub["geometry"]]
        patches, colours = [], []
        for g, iou in zip(geoms, sub["iou"]):
            for p in shapely.get_parts(g):
                patches.append(MplPolygon(np.asarray(p.exterior.coords), closed=True))
                colours.append(iou)
        if patches:
            # Same-zoom regions overlap (stride < size), so fills are faint and each
            # region's IoU is read from the marker at its centre.
            fill = PatchCollection(patches, cmap=cmap, norm=norm, alpha=0.12, linewidths=0)
            fill.set_array(np.asarray(colours))
            ax.add_collection(fill)
            edges = PatchCollection(patches, facecolor="none", linewidths=1.0, alpha=0.9)
            edges.set_edgecolor(cmap(norm(np.asarray(colours))))
            ax.add_collection(edges)
            cx = np.array([(shapely.bounds(g)[0] + shapely.bounds(g)[2]) / 2 for g in geoms])
            cy = np.array([(shapely.bounds(g)[1] + shapely.bounds(g)[3]) / 2 for g in geoms])
            ax.scatter(cx, cy, c=sub["iou"], cmap=cmap, norm=norm, s=70, edgecolors="k", linewidths=0.5, zorder=4)
            if len(sub) <= 30:
                for x, y, v in zip(cx, cy, sub["iou"]):
                    ax.annotate(
                        f"{v:.2f}",
                        (x, y),
                        xytext=(0, 6),
                        textcoords="offset points",
                        ha="center",
                        fontsize=6.5,
                        zorder=8,
                    )
            best = sub.iloc[-1]
            for p in shapely.get_parts(geoms[-1]):
                x, y = p.exterior.xy
                ax.plot(x, y, color="tab:red", lw=1.8, ls="--", zorder=5)
            title = f"zoom {z}: {len(sub)} regions\nbest IoU {best['iou']:.3f} ({best['region_id']}, red dashes)"
            bounds = np.array([shapely.bounds(g) for g in geoms] + [qb])
        else:
            title = "no overlapping regions"
            bounds = np.array([qb])
        for p in shapely.get_parts(qgeom):
            x, y = p.exterior.xy
            ax.plot(x, y, color="black", lw=2.6, zorder=6)
        w, s = bounds[:, 0].min(), bounds[:, 1].min()
        e, n = bounds[:, 2].max(), bounds[:, 3].max()
        pad = 0.06 * max(e - w, n - s)
        w, s, e, n = w - pad, s - pad, e + pad, n + pad
        if w <= nadir_lon <= e and s <= nadir_lat <= n:
            ax.plot(nadir_lon, nadir_lat, marker="*", ms=14, color="orange", mec="black", zorder=7, label="nadir")
        else:
            ax.annotate(
                f"nadir ({nadir_lat:.1f}, {wrap_lon(nadir_lon):.1f}) off map",
                xy=(0.02, 0.02),
                xycoords="axes fraction",
                fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8},
            )
        draw_coastlines(ax, w, s, e, n, coastline_step_deg(w, e), **COASTLINE_STYLE)
        ax.set_xlim(w, e)
        ax.set_ylim(s, n)
        ax.set_aspect(aspect)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_lon_label))
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, lw=0.3, alpha=0.5)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[0].tolist(), shrink=0.8, label="IoU with the query")
    area = query.get("area_km2", float("nan"))
    fig.suptitle(
        f"{query['query_id']}   {format_date(query.get('date', ''))}   footprint {area:,.0f} km²   "
        f"nadir ({nadir_lat:.1f}, {float(query['nadir_lon']):.1f})   {len(merged)} overlapping regions\n"
        "query footprint: bold black; nadir: star; dots: region centres coloured by IoU; grey: coastlines",
        fontsize=10,
    )
    return fig
