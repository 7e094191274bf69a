"""Land samples per Web-Mercator tile, from the `global-land-mask` package.

Why this dataset: global-land-mask ships the GLOBE 30-arc-second (about 1 km) land/sea
raster as a 2.5 MB numpy file, installs from PyPI with no compiled code, and exposes the
raster as an array, so a whole zoom level is sampled with one separable fancy index
(rows depend only on latitude, columns only on longitude) instead of a point query per
sample. roaring-landmask (GSHHG) is finer at coasts but answers point by point, and
Natural Earth polygons need a download or a heavier package.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.geo import tiles


def tile_land_counts(zoom: int, row_start: int, row_stop: int, samples_per_tile: int) -> npt.NDArray[np.int64]:
    """Land sample count of every tile in rows [row_start, row_stop) at `zoom`.

    Each tile is sampled on a regular `samples_per_tile` x `samples_per_tile` grid of
    pixel centres (uniform in Mercator, like the image itself). Returns an array of
    shape (2**zoom rows, 2**zoom cols) with zeros outside the requested rows, so it can
    be indexed by absolute tile row."""
    from global_land_mask import globe  # imported here: loading the raster takes ~0.5 s

    n = tiles.tile_count(zoom)
    s = samples_per_tile
    frac_rows = row_start + (np.arange((row_stop - row_start) * s) + 0.5) / s
    frac_cols = (np.arange(n * s) + 0.5) / s
    lat_idx = globe.lat_to_index(tiles.row_to_lat(frac_rows, zoom))
    lon_idx = globe.lon_to_index(tiles.col_to_lon(frac_cols, zoom))
    counts = np.zeros((n, n), dtype=np.int64)
    # Chunk the rows so the boolean sample block stays around 100 MB.
    chunk_rows = max(1, (100_000_000 // (n * s * s)))
    for r0 in range(row_start, row_stop, chunk_rows):
        r1 = min(row_stop, r0 + chunk_rows)
        li = lat_idx[(r0 - row_start) * s : (r1 - row_start) * s]
        # The package's raster is an *ocean* mask (True = sea; `globe.is_land` negates it).
        sea = globe._mask[np.ix_(li, lon_idx)]
        sea_count = sea.view(np.uint8).reshape(r1 - r0, s, n, s).sum(axis=3, dtype=np.int32).sum(axis=1)
        counts[r0:r1] = s * s - sea_count
    return counts
