"""Database regions: 4x4-tile windows of the Web-Mercator grid, named by their NW tile.

A region at (zoom, row, col) covers tile rows row..row+3 and columns col..col+3 modulo
2**zoom, so the last regions of a row wrap across the antimeridian and the 50 %
overlap of stride-2 regions holds all the way round the globe. (Upstream stopped at
the antimeridian.) Everything here is pure and vectorised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely

from pipeline.errors import ConfigError
from pipeline.geo import tiles
from pipeline.geo.area import area_km2
from pipeline.geo.footprints import split_antimeridian
from pipeline.schema import CENTER_COLUMNS, CORNER_COLUMNS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

REGION_ID_RE = re.compile(r"^(\d{2})_(\d{4})_(\d{4})$")


@dataclass(frozen=True)
class GridSpec:
    """Shape of the region grid: which zooms, how big a region, how far apart."""

    zooms: tuple[int, ...] = (9, 10, 11)
    region_tiles: int = 4
    stride: int = 2
    max_abs_lat: float = 60.0

    def __post_init__(self) -> None:
        if not self.zooms:
            raise ConfigError("grid.zooms is empty")
        for z in self.zooms:
            if not 1 <= z <= 22:
                raise ConfigError(f"grid.zooms: zoom {z} outside 1..22")
            if (1 << z) % self.stride:
                raise ConfigError(f"grid.stride {self.stride} does not divide 2**{z}")
        if self.region_tiles < 1 or self.stride < 1:
            raise ConfigError("grid.region_tiles and grid.stride must be >= 1")
        if not 0 < self.max_abs_lat <= 85.0:
            raise ConfigError(f"grid.max_abs_lat must be in (0, 85], got {self.max_abs_lat}")


class Bounds(NamedTuple):
    """Region bounds in degrees; `east` is unwrapped (> 180 for wrapping regions)."""

    west: FloatArray
    south: FloatArray
    east: FloatArray
    north: FloatArray


def region_rows(zoom: int, spec: GridSpec) -> IntArray:
    """NW tile rows (multiples of the stride) of regions wholly within ±max_abs_lat."""
    n = tiles.tile_count(zoom)
    rows = np.arange(0, n - spec.region_tiles + 1, spec.stride, dtype=np.int64)
    north = tiles.row_to_lat(rows, zoom)
    south = tiles.row_to_lat(rows + spec.region_tiles, zoom)
    keep = (north <= spec.max_abs_lat + 1e-12) & (south >= -spec.max_abs_lat - 1e-12)
    return rows[keep]


def region_cols(zoom: int, spec: GridSpec) -> IntArray:
    """NW tile columns of regions: every stride-th column, wrapping ones included."""
    return np.arange(0, tiles.tile_count(zoom), spec.stride, dtype=np.int64)


def region_bounds(zoom: IntArray, row: IntArray, col: IntArray, region_tiles: int = 4) -> Bounds:
    """Bounds of regions given by arrays of zoom, NW row and NW column."""
    zoom = np.asarray(zoom, dtype=np.int64)
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    n = np.exp2(zoom.astype(np.float64))
    # Same formulas as tiles.row_to_lat / col_to_lon, written for a zoom per element.
    north = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * row / n))))
    south = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * (row + region_tiles) / n))))
    west = 360.0 * col / n - 180.0
    east = 360.0 * (col + region_tiles) / n - 180.0
    return Bounds(west, south, east, north)


def region_footprint(bounds: Bounds) -> npt.NDArray[np.object_]:
    """EPSG:4326 footprints, split into a MultiPolygon where a region wraps ±180."""
    boxes = shapely.box(bounds.west, bounds.south, bounds.east, bounds.north)
    return split_antimeridian(boxes)


def region_id(zoom: IntArray, row: IntArray, col: IntArray) -> npt.NDArray[np.str_]:
    """Upstream's `ZZ_RRRR_CCCC` ids."""
    return np.array([f"{z:02d}_{r:04d}_{c:04d}" for z, r, c in zip(zoom.tolist(), row.tolist(), col.tolist())])


def parse_region_id(rid: str) -> tuple[int, int, int]:
    """(zoom, row, col) of a `ZZ_RRRR_CCCC` id."""
    m = REGION_ID_RE.match(rid)
    if not m:
        raise ValueError(f"not a region id (ZZ_RRRR_CCCC): {rid!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def candidate_regions(spec: GridSpec) -> pd.DataFrame:
    """Every region of the grid (land or not) as columns zoom, row, col."""
    parts = []
    for z in spec.zooms:
        rows = region_rows(z, spec)
        cols = region_cols(z, spec)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        parts.append(pd.DataFrame({"zoom": np.full(rr.size, z, dtype=np.int64), "row": rr.ravel(), "col": cc.ravel()}))
    return pd.concat(parts, ignore_index=True)


def window_sums(tile_values: npt.NDArray[np.int64], rows: IntArray, cols: IntArray, size: int) -> npt.NDArray[np.int64]:
    """Sum of `tile_values[row:row+size, col:col+size]` per region, columns wrapping.

    `tile_values` has one row per tile row (index = absolute tile row) and one column
    per tile column. Computed with a 2-D prefix sum, so it is O(1) per region."""
    n_cols = tile_values.shape[1]
    padded = np.concatenate([tile_values, tile_values[:, : size - 1]], axis=1) if size > 1 else tile_values
    csum = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=np.int64)
    csum[1:, 1:] = padded.cumsum(axis=0).cumsum(axis=1)
    r0, c0 = rows, cols % n_cols
    r1, c1 = r0 + size, c0 + size
    return csum[r1, c1] - csum[r0, c1] - csum[r1, c0] + csum[r0, c0]


def coarsen_counts(counts: npt.NDArray[np.int64], factor: int) -> npt.NDArray[np.int64]:
    """Sum `factor` x `factor` blocks: tile counts at zoom z-k from zoom z (factor 2**k).

    Web-Mercator tiles nest exactly, so this is exact; the row count must be a
    multiple of `factor` (rows are absolute tile rows starting at 0)."""
    if factor == 1:
        return counts
    h, w = counts.shape
    if h % factor or w % factor:
        raise ValueError(f"shape {counts.shape} is not a multiple of {factor}")
    return counts.reshape(h // factor, factor, w // factor, factor).sum(axis=(1, 3))


def build_regions(
    spec: GridSpec,
    land_counts: npt.NDArray[np.int64],
    land_zoom: int,
    samples_per_tile: int,
    min_land_fraction: float,
) -> pd.DataFrame:
    """Regions whose land fraction exceeds `min_land_fraction`, without geometry.

    `land_counts[r, c]` is the number of land samples in tile (r, c) at `land_zoom`
    (the finest zoom), each tile holding `samples_per_tile`² samples."""
    cand = candidate_regions(spec)
    frac = np.empty(len(cand))
    for z in spec.zooms:
        sel = (cand["zoom"] == z).to_numpy()
        factor = 1 << (land_zoom - z)
        counts = coarsen_counts(land_counts, factor)
        per_region = spec.region_tiles**2 * (samples_per_tile * factor) ** 2
        sums = window_sums(counts, cand["row"].to_numpy()[sel], cand["col"].to_numpy()[sel], spec.region_tiles)
        frac[sel] = sums / per_region
    cand["land_fraction"] = frac
    return cand[cand["land_fraction"] > min_land_fraction].reset_index(drop=True)


def describe_regions(regions: pd.DataFrame, region_tiles: int = 4) -> tuple[pd.DataFrame, npt.NDArray[np.object_]]:
    """Add ids, corners, centre and geodesic area to a (zoom, row, col) table.

    Corners follow upstream's filename order LL, UL, UR, LR (= SW, NW, NE, SE for a
    north-up region), with longitudes wrapped into [-180, 180). The centre is the
    mean of the corner latitudes and of the (unwrapped) longitudes, as upstream's
    file names encode it. Returns the table and the footprints."""
    z = regions["zoom"].to_numpy()
    r = regions["row"].to_numpy()
    c = regions["col"].to_numpy()
    b = region_bounds(z, r, c, region_tiles)
    west, east = tiles.wrap_lon(b.west), tiles.wrap_lon(b.east)
    east = np.where(east == -180.0, 180.0, east)  # a region ending at the antimeridian ends at +180
    out = pd.DataFrame(
        {
            "region_id": region_id(z, r, c),
            "zoom": z,
            "row": r,
            "col": c,
            # (lat, lon) of the lower-left, upper-left, upper-right and lower-right corner
            **dict(zip(CORNER_COLUMNS, (b.south, west, b.north, west, b.north, east, b.south, east))),
            **dict(zip(CENTER_COLUMNS, ((b.north + b.south) / 2.0, tiles.wrap_lon((b.west + b.east) / 2.0)))),
        }
    )
    geoms = region_footprint(b)
    # Lon/lat rectangles are exact rectangles in the equal-area plane: no densifying.
    # The area does not depend on longitude, so measure each box moved to start at
    # -180, which keeps wrapping regions from being projected across the globe.
    out["area_km2"] = area_km2(shapely.box(-180.0, b.south, -180.0 + (b.east - b.west), b.north))
    for col in ("land_fraction",):
        if col in regions:
            out[col] = regions[col].to_numpy()
    return out, geoms
