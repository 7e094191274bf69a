"""Exact footprint overlaps between queries and regions.

All geometry happens in the equal-area plane (`pipeline.geo.area`), where planar area
is ellipsoidal area: an STRtree over the regions finds candidate pairs in bulk, shapely
computes each pair's exact intersection polygon vectorised, and its area is already a
geodesic area. Footprints arrive in EPSG:4326, split at the antimeridian, so pieces on
both sides of ±180 meet the regions there correctly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely

from pipeline.geo.area import M2_PER_KM2, to_equal_area

GeomArray = npt.NDArray[np.object_]

OVERLAP_COLUMNS = ["query_index", "region_index", "intersection_km2", "iou", "query_fraction", "region_fraction"]


def overlap_pairs(
    query_ea: GeomArray,
    region_ea: GeomArray,
    query_area_km2: npt.NDArray[np.float64],
    region_area_km2: npt.NDArray[np.float64],
    min_intersection_km2: float = 0.0,
    tree: shapely.STRtree | None = None,
) -> pd.DataFrame:
    """Overlaps of equal-area-plane geometries; areas given in km².

    Returns one row per (query, region) pair whose exact intersection exceeds
    `min_intersection_km2` (touching footprints, area 0, are never pairs), sorted by
    query then region position."""
    tree = tree if tree is not None else shapely.STRtree(region_ea)
    # Bounding-box candidates only: the exact clip below is cheaper than an
    # "intersects" predicate, and pairs that merely touch get area 0 and drop out.
    qi, ri = tree.query(query_ea)
    inter = intersection_areas(query_ea, region_ea, qi, ri) / M2_PER_KM2
    keep = inter > min_intersection_km2
    qi, ri, inter = qi[keep], ri[keep], inter[keep]
    qa, ra = query_area_km2[qi], region_area_km2[ri]
    out = pd.DataFrame(
        {
            "query_index": qi.astype(np.int64),
            "region_index": ri.astype(np.int64),
            "intersection_km2": inter,
            "iou": inter / (qa + ra - inter),
            "query_fraction": inter / qa,
            "region_fraction": inter / ra,
        }
    )
    return out.sort_values(["query_index", "region_index"], kind="stable").reset_index(drop=True)


def is_rectangle(geoms: GeomArray) -> npt.NDArray[np.bool_]:
    """True for single axis-aligned rectangles (a region not split at ±180)."""
    rect = shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON
    rect &= shapely.get_num_coordinates(geoms) == 5
    rect &= np.isclose(shapely.area(geoms), shapely.area(shapely.envelope(geoms)), rtol=1e-12, atol=0.0)
    return rect


def intersection_areas(
    query_ea: GeomArray, region_ea: GeomArray, qi: npt.NDArray[np.intp], ri: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Exact area of query_ea[qi] ∩ region_ea[ri] for every pair.

    Regions are rectangles in the equal-area plane, so each region clips all its
    candidate queries at once with GEOS's rectangle clipping (`clip_by_rect`, about 6x
    faster than a general overlay per pair). Regions split at the antimeridian are
    MultiPolygons and take the general `intersection`."""
    areas = np.zeros(len(qi))
    if len(qi) == 0:
        return areas
    rect = is_rectangle(region_ea)
    general = ~rect[ri]
    if general.any():
        areas[general] = shapely.area(shapely.intersection(query_ea[qi[general]], region_ea[ri[general]]))
    sel = np.flatnonzero(~general)
    order = sel[np.argsort(ri[sel], kind="stable")]
    r_sorted = ri[order]
    starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    bounds = shapely.bounds(region_ea)
    for s, e in zip(starts.tolist(), ends.tolist()):
        idx = order[s:e]
        xmin, ymin, xmax, ymax = bounds[r_sorted[s]]
        areas[idx] = shapely.area(shapely.clip_by_rect(query_ea[qi[idx]], xmin, ymin, xmax, ymax))
    return areas


def overlap_table(
    query_geoms: GeomArray,
    region_geoms: GeomArray,
    densify_deg: float,
    min_intersection_km2: float = 0.0,
) -> pd.DataFrame:
    """Overlaps of EPSG:4326 footprints (convenience wrapper for audits and tests).

    Query edges are densified to `densify_deg` before projection (they are straight in
    lon/lat); region edges are meridians and parallels, exact without densifying."""
    q = to_equal_area(np.asarray(query_geoms, dtype=object), densify_deg)
    r = to_equal_area(np.asarray(region_geoms, dtype=object))
    return overlap_pairs(q, r, shapely.area(q) / M2_PER_KM2, shapely.area(r) / M2_PER_KM2, min_intersection_km2)
