"""Footprint polygons in EPSG:4326 from corner coordinates, split at the antimeridian.

A footprint whose corners straddle ±180° is first unwrapped (its western longitudes
shifted by +360 so the quadrilateral is contiguous), checked for validity there, and
then cut into the part east of -180 and the part west of +180. The result is a
MultiPolygon with both parts in [-180, 180], which is what GeoParquet/GeoJSON readers
expect, and what makes planar intersection tests correct near the antimeridian.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import shapely

FloatArray = npt.NDArray[np.float64]
GeomArray = npt.NDArray[np.object_]


def unwrap_ring_lons(lons: FloatArray) -> FloatArray:
    """Shift longitudes of rings that span more than 180° so they become contiguous.

    `lons` has shape (n, k): n rings of k vertices in [-180, 180]. A ring is taken to
    cross the antimeridian when its longitude span exceeds 180°; its negative
    longitudes are then moved by +360 (so it lies in [0, 360)). Other rings are
    returned unchanged.
    """
    lons = np.asarray(lons, dtype=np.float64)
    crosses = (lons.max(axis=1) - lons.min(axis=1)) > 180.0
    out = lons.copy()
    out[crosses] = np.where(out[crosses] < 0.0, out[crosses] + 360.0, out[crosses])
    return out


def quads_from_corners(lats: FloatArray, lons: FloatArray) -> GeomArray:
    """Polygons (n,) from corner arrays of shape (n, 4), in the corners' order.

    Longitudes may be unwrapped (outside [-180, 180]); see `split_antimeridian`.
    """
    lats = np.asarray(lats, dtype=np.float64)
    lons = np.asarray(lons, dtype=np.float64)
    coords = np.stack([lons, lats], axis=-1)  # (n, 4, 2)
    closed = np.concatenate([coords, coords[:, :1, :]], axis=1)  # (n, 5, 2)
    n = closed.shape[0]
    rings = shapely.linearrings(closed.reshape(-1, 2), indices=np.repeat(np.arange(n), 5))
    return shapely.polygons(rings)


def boxes(west: FloatArray, south: FloatArray, east: FloatArray, north: FloatArray) -> GeomArray:
    """Axis-aligned lon/lat rectangles; `east` may exceed 180 (unwrapped)."""
    return shapely.box(west, south, east, north)


def split_antimeridian(geoms: GeomArray) -> GeomArray:
    """Fold geometries with unwrapped longitudes back into [-180, 180].

    Geometries entirely inside [-180, 180] are returned as they are. The others are
    clipped to the three 360°-wide windows centred on -360, 0 and +360, each piece is
    shifted into [-180, 180], and the pieces become one MultiPolygon.
    """
    geoms = np.asarray(geoms, dtype=object)
    out = geoms.copy()
    b = shapely.bounds(geoms)
    outside = (b[:, 0] < -180.0) | (b[:, 2] > 180.0)
    if not outside.any():
        return out
    sub = geoms[outside]
    pieces = []
    for shift in (-360.0, 0.0, 360.0):
        # The window [-180 + shift, 180 + shift] lands on [-180, 180] after -shift.
        clipped = shapely.clip_by_rect(sub, -180.0 + shift, -90.0, 180.0 + shift, 90.0)
        moved = shapely.transform(clipped, lambda c, s=shift: c - np.array([s, 0.0]))
        pieces.append(moved)
    stacked = np.stack(pieces, axis=1)  # (m, 3)
    parts = []
    for row in stacked:
        polys = [p for g in row if not shapely.is_empty(g) for p in shapely.get_parts(g) if p.area > 0]
        parts.append(shapely.MultiPolygon(polys) if len(polys) > 1 else polys[0])
    folded = np.empty(len(parts), dtype=object)
    folded[:] = parts
    out[outside] = folded
    return out


class QuadCheck(NamedTuple):
    """Outcome of `check_quads`: a reason per quad, '' where the quad is usable."""

    reason: npt.NDArray[np.str_]
    detail: npt.NDArray[np.str_]


def check_quads(quads: GeomArray, min_area_deg2: float = 1e-10) -> QuadCheck:
    """Classify quadrilaterals (with unwrapped longitudes) as usable or not.

    `degenerate_footprint`: two corners coincide, or the quad has (near) zero area, or
    three corners are collinear so it collapses to a triangle or a line.
    `self_intersecting_footprint`: the ring crosses itself (a bow-tie: the corners are
    not in ring order).
    """
    n = len(quads)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    coords = shapely.get_coordinates(quads).reshape(n, 5, 2)[:, :4, :]
    # Two equal corners (after rounding away float noise) make a degenerate quad.
    diffs = coords[:, :, None, :] - coords[:, None, :, :]
    dist = np.hypot(diffs[..., 0], diffs[..., 1])
    iu = np.triu_indices(4, k=1)
    repeated = (dist[:, iu[0], iu[1]] < 1e-9).any(axis=1)
    # Signed area of each corner triangle: zero means three collinear corners.
    a, b, c, d = (coords[:, i, :] for i in range(4))

    def cross(p: FloatArray, q: FloatArray, r: FloatArray) -> FloatArray:
        return (q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0])

    tri = np.stack([cross(a, b, c), cross(b, c, d), cross(c, d, a), cross(d, a, b)], axis=1)
    collinear = (np.abs(tri) < min_area_deg2).any(axis=1)
    area = shapely.area(quads)
    valid = shapely.is_valid(quads)
    # Only a valid ring's area means anything: a bow-tie's lobes cancel (a rectangle
    # with two corners swapped has area 0) and it is self-intersecting, not degenerate.
    tiny = (area < min_area_deg2) & valid
    degenerate = repeated | collinear | tiny
    reason[degenerate] = "degenerate_footprint"
    detail[repeated] = "two corners coincide"
    detail[collinear & ~repeated] = "three corners are collinear"
    detail[tiny & ~repeated & ~collinear] = f"area below {min_area_deg2} deg^2"
    bad = ~valid & ~degenerate
    reason[bad] = "self_intersecting_footprint"
    for i in np.flatnonzero(bad):
        detail[i] = shapely.is_valid_reason(quads[i])
    return QuadCheck(reason.astype(str), detail.astype(str))
