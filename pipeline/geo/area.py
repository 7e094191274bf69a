"""Ellipsoidal (WGS84) areas through an equal-area projection.

EPSG:6933 (WGS 84 / NSIDC EASE-Grid 2.0 Global) is a cylindrical equal-area map of the
WGS84 ellipsoid: the planar area of any shape drawn in it is that shape's area on the
ellipsoid. Meridians and parallels are straight lines there, so a Web-Mercator region
(a lon/lat rectangle) maps to an exact rectangle, and its area is exact with no
densification. Footprint quads have edges that are straight in lon/lat; they are
densified (`shapely.segmentize`) before projection so the projected edges follow them.

Doing the intersections in this plane (`pipeline.geo.overlap`) makes every
intersection area a geodesic area at the cost of a vectorised coordinate transform,
instead of one `pyproj.Geod` call per polygon. The tests check both against
`pyproj.Geod`.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import pyproj
import shapely

GeomArray = npt.NDArray[np.object_]
FloatArray = npt.NDArray[np.float64]

EQUAL_AREA_CRS = "EPSG:6933"
M2_PER_KM2 = 1e6
# Default step (degrees) to which footprint edges are densified; params.yaml
# queries.densify_deg overrides it. 0.25 deg keeps edges within ~15 m of the lon/lat line.
DEFAULT_DENSIFY_DEG = 0.25


@functools.lru_cache(maxsize=1)
def _to_equal_area() -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", EQUAL_AREA_CRS, always_xy=True)


def to_equal_area(geoms: GeomArray, densify_deg: float | None = None) -> GeomArray:
    """Project lon/lat geometries to EPSG:6933 metres, densifying edges first if asked."""
    geoms = np.asarray(geoms, dtype=object)
    if densify_deg is not None and densify_deg > 0:
        geoms = shapely.segmentize(geoms, densify_deg)
    tr = _to_equal_area()

    def project(coords: FloatArray) -> FloatArray:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, project)


def area_km2(geoms: GeomArray, densify_deg: float | None = None) -> FloatArray:
    """Ellipsoidal area in km² of lon/lat geometries (edges straight in lon/lat)."""
    return shapely.area(to_equal_area(geoms, densify_deg)) / M2_PER_KM2


def geod_area_km2(geom: shapely.Geometry) -> float:
    """Geodesic area in km² by pyproj.Geod (edges are geodesics). The independent
    reference for tests and for comparing with NASA's SQ_KM_AREA."""
    geod = pyproj.Geod(ellps="WGS84")
    area, _ = geod.geometry_area_perimeter(shapely.geometry.shape(geom))
    return abs(area) / M2_PER_KM2


def geod_quad_area_km2(lats: FloatArray, lons: FloatArray) -> FloatArray:
    """Geodesic area in km² of quads given by corner arrays (n, 4); geodesic edges.

    This is how NASA-style footprint areas are usually computed; the queries stage
    uses it only to compare with SQ_KM_AREA."""
    geod = pyproj.Geod(ellps="WGS84")
    lats = np.asarray(lats, dtype=np.float64)
    lons = np.asarray(lons, dtype=np.float64)
    out = np.empty(len(lats))
    for i in range(len(lats)):
        a, _ = geod.polygon_area_perimeter(lons[i], lats[i])
        out[i] = abs(a) / M2_PER_KM2
    return out
