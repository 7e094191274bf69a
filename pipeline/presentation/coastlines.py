"""Coastlines for maps, derived offline from the `global-land-mask` raster.

There is no Natural Earth data and no network, so coastlines are the 0.5 contour of
the sea fraction of the GLOBE 30-arc-second land/sea mask (`globe._mask`, an *ocean*
mask: True = sea; row 0 is latitude 90, column 0 is longitude -180, 120 cells per
degree). The mask is block-averaged to `step_deg` cells first, so the contour is
smooth and small islands below the cell size fade out instead of aliasing.

Every map of the project takes its coastlines from here, so the evaluation-set map,
the audit's query map and the audit page show the same lines:
- lon/lat maps: `coastlines_in_box(west, south, east, north)` -> polylines in the
  box's own longitudes (the box may run past ±180);
- projected maps: `sea_fraction_grid(...)` once, `SeaFraction.at(lat, lon)` at the
  inverse-projected pixel centres, then `contour_segments(x, y, frac)` in map units.
Drawing them with matplotlib is `pipeline.presentation.maps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CELLS_PER_DEG = 120  # the GLOBE raster is 30 arc-seconds


def _ocean_mask() -> npt.NDArray[np.bool_]:
    from global_land_mask import globe  # imported lazily: loading the raster takes a few seconds

    return globe._mask


@dataclass(frozen=True)
class SeaFraction:
    """Sea fraction (0 = land .. 1 = sea) on a regular lon/lat grid of cell centres.

    `lons` is increasing and may run past 180 when the grid crosses the antimeridian;
    `lats` is increasing; `frac` has shape (len(lats), len(lons))."""

    lons: npt.NDArray[np.float64]
    lats: npt.NDArray[np.float64]
    frac: npt.NDArray[np.float32]

    def at(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Bilinear sea fraction at points (any shape). Points outside the grid or
        not finite get NaN. Longitudes are wrapped into the grid's range."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        lon0, dlon = self.lons[0], self.lons[1] - self.lons[0]
        lat0, dlat = self.lats[0], self.lats[1] - self.lats[0]
        # Wrap longitudes to [lon0 - dlon/2, lon0 - dlon/2 + 360).
        lonw = (lon - (lon0 - dlon / 2)) % 360.0 + (lon0 - dlon / 2)
        fx = (lonw - lon0) / dlon
        fy = (lat - lat0) / dlat
        nx, ny = len(self.lons), len(self.lats)
        ok = np.isfinite(fx) & np.isfinite(fy) & (fx >= -0.5) & (fx <= nx - 0.5) & (fy >= -0.5) & (fy <= ny - 0.5)
        fx = np.clip(np.where(ok, fx, 0.0), 0.0, nx - 1.0)
        fy = np.clip(np.where(ok, fy, 0.0), 0.0, ny - 1.0)
        x0 = np.minimum(np.floor(fx).astype(np.intp), max(nx - 2, 0))
        y0 = np.minimum(np.floor(fy).astype(np.intp), max(ny - 2, 0))
        x1 = np.minimum(x0 + 1, nx - 1)
        y1 = np.minimum(y0 + 1, ny - 1)
        tx = (fx - x0).astype(np.float32)
        ty = (fy - y0).astype(np.float32)
        f = self.frac
        top = f[y0, x0] * (1 - tx) + f[y0, x1] * tx
        bot = f[y1, x0] * (1 - tx) + f[y1, x1] * tx
        out = top * (1 - ty) + bot * ty
        return np.where(ok, out, np.float32(np.nan)).astype(np.float32)


def sea_fraction_grid(west: float, south: float, east: float, north: float, step_deg: float = 0.1) -> SeaFraction:
    """Block-averaged sea fraction over a lon/lat box, cells of about `step_deg`
    (rounded to a whole number of 30" raster cells). `west > east` crosses the
    antimeridian; the returned longitudes then run continuously past 180."""
    if not (-90.0 <= south < north <= 90.0):
        raise ValueError(f"need -90 <= south < north <= 90, got {south}, {north}")
    if step_deg <= 0:
        raise ValueError(f"step_deg must be positive, got {step_deg}")
    k = max(1, int(round(step_deg * CELLS_PER_DEG)))
    if east <= west:
        east += 360.0
    if east - west > 360.0:
        east = west + 360.0
    mask = _ocean_mask()
    nrows, ncols = mask.shape
    # Raster rows (north to south) covering [south, north], in whole blocks of k.
    r0 = int(np.floor((90.0 - north) * CELLS_PER_DEG / k)) * k
    r1 = min(nrows, int(np.ceil((90.0 - south) * CELLS_PER_DEG / k)) * k)
    r0 = max(0, r0)
    nby = max(1, (r1 - r0) // k)
    r1 = r0 + nby * k
    c0 = int(np.floor((west + 180.0) * CELLS_PER_DEG / k)) * k
    nbx = max(1, int(np.ceil((east + 180.0) * CELLS_PER_DEG / k)) - c0 // k)
    nbx = min(nbx, ncols // k)
    cols = (c0 + np.arange(nbx * k)) % ncols
    if cols[-1] >= cols[0] and cols[-1] - cols[0] == len(cols) - 1:
        block = mask[r0:r1, cols[0] : cols[-1] + 1]  # a view, no copy
    else:
        block = mask[r0:r1][:, cols]
    frac = block.reshape(nby, k, nbx, k).sum(axis=(1, 3), dtype=np.int32).astype(np.float32) / (k * k)
    lats = 90.0 - (r0 + (np.arange(nby) + 0.5) * k) / CELLS_PER_DEG
    lons = -180.0 + (c0 + (np.arange(nbx) + 0.5) * k) / CELLS_PER_DEG
    # Ascending latitude for plotting.
    return SeaFraction(lons=lons, lats=lats[::-1].copy(), frac=np.ascontiguousarray(frac[::-1]))


def contour_segments(
    x: npt.ArrayLike, y: npt.ArrayLike, z: npt.ArrayLike, level: float = 0.5
) -> list[npt.NDArray[np.float64]]:
    """Polylines (each an (n, 2) array of x, y) of the `level` contour of `z`.

    `x`, `y` are 1-D (len = z.shape[1], z.shape[0]) or 2-D like `z`; NaN in `z` is
    masked (no line through it)."""
    import contourpy

    z = np.asarray(z, dtype=np.float64)
    mask = ~np.isfinite(z)
    zm = np.ma.array(np.where(mask, 0.0, z), mask=mask) if mask.any() else z
    gen = contourpy.contour_generator(
        np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), zm, line_type=contourpy.LineType.Separate
    )
    return [np.asarray(seg, dtype=np.float64) for seg in gen.lines(level) if len(seg) >= 2]


def coastline_segments(
    west: float, south: float, east: float, north: float, step_deg: float = 0.1
) -> list[npt.NDArray[np.float64]]:
    """Coastline polylines (each an (n, 2) array of lon, lat) over a lon/lat box.

    With `west > east` (crossing the antimeridian) longitudes run past 180, so the
    lines stay continuous on a map whose x axis runs from `west` to `east + 360`."""
    sf = sea_fraction_grid(west, south, east, north, step_deg)
    return contour_segments(sf.lons, sf.lats, sf.frac)


def coastlines_in_box(
    west: float, south: float, east: float, north: float, step_deg: float = 0.1
) -> list[npt.NDArray[np.float64]]:
    """Coastline polylines over a box given in continuous map longitudes.

    `west < east`, and either may lie past ±180 (a map centred near the antimeridian
    runs from, say, 170 to 190): the raster is read modulo 360 and the lines come back
    in the box's own longitudes, so they need no shifting onto the axes. Latitudes are
    clamped to ±90; a box 360° wide or wider is the whole world, read once."""
    south, north = max(south, -90.0), min(north, 90.0)
    if east - west >= 360.0:
        west, east = -180.0, 180.0
    return coastline_segments(west, south, min(east, west + 359.99), north, step_deg)
