"""Where the synthetic world puts its continents: a coarse land-fraction grid of the real Earth.

Why: the database regions are chosen with the real GLOBE land mask (`pipeline.landmask`),
and query footprints are real, so the synthetic world must have land where the Earth has
land, or a footprint over Texas would show open sea while its database regions show
ground. The world biases its continent field with a smooth signed version of this grid
(`signed_land`); its own noise octaves then draw the coast detail.

The grid (`land_quarter_degree.npz`, beside this module) is the land fraction of every
0.25-degree cell of the `global-land-mask` package's GLOBE 30-arc-second raster, stored
as uint8 (0..255). It is shipped because loading the package's raster takes ~1 GB of
memory and seconds, far too much for every tile-server process; `build_land_fraction`
regenerates it exactly (`python -m pipeline.synthetic.landfield` rewrites the file).
Rows run south to north from -90, columns west to east from -180 (cell centres at
-90 + (i + 0.5) / 4 and -180 + (j + 0.5) / 4).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

CELLS_PER_DEGREE = 4
GRID_FILE = Path(__file__).with_name("land_quarter_degree.npz")
# Gaussian blur of the signed field, in cells (0.25 deg): the real coast is smoothed over
# ~50 km so the world's noise can move it by a few tens of km and draw its detail.
BLUR_CELLS = 2.0


def build_land_fraction() -> npt.NDArray[np.uint8]:
    """Land fraction (720, 1440) of the 0.25-degree cells from the GLOBE raster, 0..255."""
    from global_land_mask import globe  # ~1 GB and seconds to load: only when rebuilding

    sea = globe._mask  # True = sea, rows from +90 southwards, cols from -180 eastwards
    block = sea.shape[0] // (180 * CELLS_PER_DEGREE)
    rows, cols = 180 * CELLS_PER_DEGREE, 360 * CELLS_PER_DEGREE
    sea_count = np.zeros((rows, cols), dtype=np.int32)
    for r in range(0, rows, 60):  # in bands, so the uint8 view stays small
        band = sea[r * block : (r + 60) * block].view(np.uint8)
        sea_count[r : r + 60] = band.reshape(-1, block, cols, block).sum(axis=(1, 3), dtype=np.int32)
    frac = 1.0 - sea_count / float(block * block)
    return np.round(frac[::-1] * 255.0).astype(np.uint8)  # south to north


def _gaussian_kernel(sigma: float) -> npt.NDArray[np.float64]:
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


@lru_cache(maxsize=1)
def signed_land() -> npt.NDArray[np.float32]:
    """The blurred signed land field (720 + 4, 1440 + 4) in [-1, 1] (+1 land, -1 sea), padded
    by two cells on every side for 4-tap interpolation: columns wrap round the
    antimeridian, rows repeat the polar row."""
    with np.load(GRID_FILE) as npz:
        frac = npz["land_fraction"].astype(np.float64) / 255.0
    k = _gaussian_kernel(BLUR_CELLS)
    r = k.size // 2
    # wrap in longitude (no seam at 180 degrees), edge in latitude
    padded = np.pad(frac, ((r, r), (0, 0)), mode="edge")
    padded = np.pad(padded, ((0, 0), (r, r)), mode="wrap")
    blurred = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, padded)
    blurred = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, blurred)
    signed = 2.0 * blurred - 1.0
    signed = np.pad(signed, ((2, 2), (0, 0)), mode="edge")
    signed = np.pad(signed, ((0, 0), (2, 2)), mode="wrap")
    return np.ascontiguousarray(signed, dtype=np.float32)


def _catmull_rom(t: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Weights (4, ...) of the taps at -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    t = t.astype(np.float32)
    t2, t3 = t * t, t * t * t
    return np.stack(
        [-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0, -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2]
    )


def _taps(
    coord_cells: npt.NDArray[np.floating], n: int, wrap: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Padded-grid indices (4, ...) and Catmull-Rom weights (4, ...) of positions in cell units
    (cell centres at integers)."""
    base = np.floor(coord_cells)
    w = _catmull_rom(coord_cells - base)
    i0 = base.astype(np.intp)
    i0 = i0 % n if wrap else np.clip(i0, -1, n - 1)
    idx = i0[None] + np.arange(-1, 3).reshape(4, *([1] * i0.ndim)) + 2  # +2: padding
    return idx, w


def _row_coord(lat_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return (np.asarray(lat_deg, dtype=np.float64) + 90.0) * CELLS_PER_DEGREE - 0.5


def _col_coord(lon_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return ((np.asarray(lon_deg, dtype=np.float64) + 180.0) % 360.0) * CELLS_PER_DEGREE - 0.5


def sample_points(lon_deg: npt.ArrayLike, lat_deg: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The signed land field at points (broadcast lon/lat in degrees), bicubic (C1 smooth,
    so relief shading shows no cell edges)."""
    g = signed_land()
    lon_b, lat_b = np.broadcast_arrays(np.asarray(lon_deg, dtype=np.float64), np.asarray(lat_deg, dtype=np.float64))
    ri, rw = _taps(_row_coord(lat_b), 180 * CELLS_PER_DEGREE, wrap=False)
    ci, cw = _taps(_col_coord(lon_b), 360 * CELLS_PER_DEGREE, wrap=True)
    out = np.zeros(lon_b.shape, dtype=np.float32)
    for a in range(4):
        row = np.zeros(lon_b.shape, dtype=np.float32)
        for b in range(4):
            row += cw[b] * g[ri[a], ci[b]]
        out += rw[a] * row
    return out


def sample_grid(lon_deg: npt.ArrayLike, lat_deg: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The signed land field on the grid lat_deg (rows) x lon_deg (cols): separable, so a
    tile costs two small matrix products instead of a per-pixel gather."""
    g = signed_land()
    lon = np.asarray(lon_deg, dtype=np.float64).ravel()
    lat = np.asarray(lat_deg, dtype=np.float64).ravel()
    ri, rw = _taps(_row_coord(lat), 180 * CELLS_PER_DEGREE, wrap=False)
    ci, cw = _taps(_col_coord(lon), 360 * CELLS_PER_DEGREE, wrap=True)
    r_lo, r_hi = int(ri.min()), int(ri.max()) + 1
    cols = np.unique(ci)
    sub = g[r_lo:r_hi][:, cols]  # (R, C): the few cells the tile touches
    ay = np.zeros((lat.size, r_hi - r_lo), dtype=np.float32)
    ax = np.zeros((lon.size, cols.size), dtype=np.float32)
    rows_n = np.arange(lat.size)
    cols_n = np.arange(lon.size)
    col_pos = np.searchsorted(cols, ci)
    for t in range(4):  # the four taps of a row are distinct cells: plain += is exact
        ay[rows_n, ri[t] - r_lo] += rw[t]
        ax[cols_n, col_pos[t]] += cw[t]
    # einsum, not matmul: tiny products on a threaded BLAS stall on a busy machine
    rows = np.einsum("ir,rc->ic", ay, sub)
    return np.einsum("ic,jc->ij", rows, ax).astype(np.float32, copy=False)


def main() -> None:
    frac = build_land_fraction()
    np.savez_compressed(GRID_FILE, land_fraction=frac)
    print(GRID_FILE, frac.shape, f"land share {frac.mean() / 255:.3f}")


if __name__ == "__main__":
    main()
