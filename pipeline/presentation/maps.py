"""Matplotlib pieces shared by the project's maps: coastline layers, longitudes around
the antimeridian, and polygons as drawable paths.

Maps draw in continuous longitudes (a map of the Fiji area runs from 175 to 185, not
from 175 to -175), so geometries stored in [-180, 180] are moved by whole turns next to
the map's centre before drawing (`near_lon`), and labels wrap back (`wrap_lon`).
matplotlib is imported inside the functions: the pipeline's logic imports this package
without paying for it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import shapely

from pipeline.presentation.coastlines import coastlines_in_box

COASTLINE_STYLE: dict[str, Any] = {"colors": "0.25", "linewidths": 0.6, "zorder": 1}


LonT = TypeVar("LonT", float, npt.NDArray[np.float64])


def wrap_lon(lon: LonT) -> LonT:
    """Map longitudes (a number or an array) as geographic ones, in [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def near_lon(geoms: npt.NDArray[Any], ref_lon: float) -> npt.NDArray[Any]:
    """Each geometry moved by the whole number of turns (360°) that brings its centroid
    within 180° of `ref_lon`, as a whole: its vertices stay together, so a region cut at
    ±180 into two parts lands as two neighbours that can be joined again."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) == 0:
        return geoms
    cx = shapely.get_x(shapely.centroid(geoms))
    dx = 360.0 * np.round((ref_lon - cx) / 360.0)
    if not np.any(dx):
        return geoms
    coords, idx = shapely.get_coordinates(geoms, return_index=True)
    coords[:, 0] += dx[idx]
    return shapely.set_coordinates(geoms.copy(), coords)


def exterior_rings(geoms: npt.NDArray[Any]) -> list[npt.NDArray[np.float64]]:
    """Exterior rings (as (n, 2) arrays) of every polygon part, in order; other
    geometry types are skipped."""
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    parts = parts[shapely.get_type_id(parts) == 3]
    return [shapely.get_coordinates(r) for r in shapely.get_exterior_ring(parts)]


def polygon_path(geom: shapely.Geometry) -> Any:
    """A (multi)polygon as one matplotlib Path with its holes (None when it has no
    polygon part), for a PathPatch: a union with holes fills correctly."""
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


def draw_segments(ax: Any, segments: list[npt.NDArray[np.float64]], **style: Any) -> Any:
    """Add polylines to a matplotlib Axes as one LineCollection and return it.
    Default style `COASTLINE_STYLE`: thin dark grey lines under everything else."""
    from matplotlib.collections import LineCollection

    lc = LineCollection(segments, **{**COASTLINE_STYLE, **style})
    ax.add_collection(lc)
    return lc


def draw_coastlines(
    ax: Any, west: float, south: float, east: float, north: float, step_deg: float = 0.1, **style: Any
) -> Any:
    """Coastlines of a lon/lat box (continuous longitudes, see `coastlines_in_box`)
    drawn onto a plain lon/lat Axes; returns the LineCollection."""
    return draw_segments(ax, coastlines_in_box(west, south, east, north, step_deg), **style)
