"""Web-Mercator (GoogleMapsCompatible) tile maths, vectorised over numpy arrays.

mercantile answers the same questions one tile at a time; the grid needs them for
hundreds of thousands of tiles at once, so the formulas live here and the tests
check them against mercantile over many zooms.

Conventions: `row` grows southward from 0 at 85.0511°N, `col` grows eastward from 0
at 180°W, both may be fractional (a position inside a tile) and `col` may run past
2**zoom (a region that wraps across the antimeridian); longitudes are then returned
unwrapped (> 180) and callers wrap them with `wrap_lon`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]


def tile_count(zoom: int) -> int:
    """Number of tile rows (= columns) at `zoom`."""
    if zoom < 0 or zoom > 30:
        raise ValueError(f"zoom must be in 0..30, got {zoom}")
    return 1 << zoom


def row_to_lat(row: ArrayLike, zoom: int) -> FloatArray:
    """Latitude in degrees of the northern edge of tile `row` (fractional rows allowed)."""
    n = tile_count(zoom)
    y = np.asarray(row, dtype=np.float64)
    return np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * y / n))))


def col_to_lon(col: ArrayLike, zoom: int) -> FloatArray:
    """Longitude in degrees of the western edge of tile `col`, not wrapped."""
    n = tile_count(zoom)
    return 360.0 * np.asarray(col, dtype=np.float64) / n - 180.0


def lat_to_row(lat: ArrayLike, zoom: int) -> FloatArray:
    """Fractional tile row of latitude `lat` (degrees, |lat| < 85.0511)."""
    n = tile_count(zoom)
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    return n * (1.0 - np.arcsinh(np.tan(phi)) / np.pi) / 2.0


def lon_to_col(lon: ArrayLike, zoom: int) -> FloatArray:
    """Fractional tile column of longitude `lon` (degrees)."""
    n = tile_count(zoom)
    return n * (np.asarray(lon, dtype=np.float64) + 180.0) / 360.0


def wrap_lon(lon: ArrayLike) -> FloatArray:
    """Longitude folded into [-180, 180); 180 itself maps to -180."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0
