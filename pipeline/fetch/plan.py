"""Which tiles to ask for (pure, no I/O).

Stride-2 regions of 4x4 tiles overlap by half in each direction, so every tile sits in
about 4 regions of its zoom. Fetching each unique (year, z, y, x) tile once and building
every mosaic from the shared tiles costs ~4 requests per region-year instead of 16."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.fetch.client import TileKey

Region = tuple[int, int, int]  # zoom, NW row, NW col


def region_tiles(zoom: int, row: int, col: int, size: int = 4) -> list[tuple[int, int, int]]:
    """(z, y, x) of a region's tiles in paste order (row-major from the NW tile).

    Columns wrap modulo 2**zoom (regions may cross the antimeridian); rows may not."""
    n = 1 << zoom
    if not (0 <= row and row + size <= n):
        raise ValueError(f"region rows {row}..{row + size - 1} outside 0..{n - 1} at zoom {zoom}")
    return [(zoom, row + r, (col + c) % n) for r in range(size) for c in range(size)]


def region_tile_keys(year: int, zoom: int, row: int, col: int, size: int = 4) -> list[TileKey]:
    return [TileKey(year, z, y, x) for z, y, x in region_tiles(zoom, row, col, size)]


def unique_tiles(regions: Iterable[Region], years: Sequence[int], size: int = 4) -> list[TileKey]:
    """Every tile needed by `regions` x `years`, once, in first-use order.

    First-use order (regions in the given order) lets the runner finish regions early."""
    seen: dict[TileKey, None] = {}
    regs = list(regions)
    for year in years:
        for zoom, row, col in regs:
            for key in region_tile_keys(year, zoom, row, col, size):
                seen.setdefault(key, None)
    return list(seen)


@dataclass(frozen=True)
class RequestCounts:
    """Requests a plan needs: `unique` with tile sharing, `naive` at size² per region-year."""

    region_years: int
    unique: int
    naive: int

    @property
    def per_region_year(self) -> float:
        return self.unique / self.region_years if self.region_years else 0.0

    @property
    def saving(self) -> float:
        """naive / unique: how many times fewer requests the unique plan makes."""
        return self.naive / self.unique if self.unique else 0.0


def request_counts(regions: Iterable[Region], years: Sequence[int], size: int = 4) -> RequestCounts:
    regs = list(dict.fromkeys(regions))
    n = len(regs) * len(years)
    return RequestCounts(n, len(unique_tiles(regs, years, size)), n * size * size)
