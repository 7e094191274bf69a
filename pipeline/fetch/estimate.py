"""What a fetch will cost before it asks for anything: regions, tiles, requests, bytes, disk, time.

Pure arithmetic on the plan (pipeline.fetch.plan's tile sharing) and on mean sizes: the
mean region image and the mean raw tile. Means come from the store's own manifests when a
shard of the same source was fetched before, else from constants (docs/image_stages.md,
"Fetch plan"):
- synthetic source: measured over the 669 images and 3,256 tiles of the default build
  (2021, zooms 9-11): 116,819 B per 1024x1024 image at JPEG quality 75, 12,551 B per tile;
- EOX: the published database (about 727,000 images plus 17,763 query photos, all 1024x1024
  JPEG at quality 75) takes about 65 GB, about 87 KB per image; the tile is that image scaled
  by the tile/image ratio measured on the synthetic source (0.107), about 9.4 KB.
The time is the one the start spacing allows at best (`requests x min_interval_s`): the
concurrency cap and the server's latency can only make it longer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Region = tuple[int, int, int]  # zoom, NW row, NW col


@dataclass(frozen=True)
class MeanSizes:
    """Mean bytes of one region image and one raw tile, and where the figures come from."""

    image_bytes: float
    tile_bytes: float
    origin: str


SYNTHETIC_SIZES = MeanSizes(116_819.0, 12_551.0, "constants measured on the synthetic source")
EOX_SIZES = MeanSizes(87_000.0, 9_400.0, "constants from the size of EOX's published database")


@dataclass(frozen=True)
class ShardEstimate:
    """One shard's remaining work. `disk_bytes` is the peak the fetch adds: the images it
    writes plus the raw tiles it caches until the shard is complete."""

    shard: str
    regions: int  # planned
    regions_done: int  # ok in the manifest already
    unique_tiles: int  # tiles of the regions still to fetch
    tiles_cached: int  # of those, already in the tile cache
    image_bytes: float
    tile_bytes: float
    min_interval_s: float

    @property
    def requests(self) -> int:
        return self.unique_tiles - self.tiles_cached

    @property
    def download_bytes(self) -> float:
        return self.requests * self.tile_bytes

    @property
    def disk_bytes(self) -> float:
        return (self.regions - self.regions_done) * self.image_bytes + self.download_bytes

    @property
    def seconds(self) -> float:
        return self.requests * self.min_interval_s


def tile_ids(regions: Iterable[Region], size: int = 4) -> np.ndarray:
    """Unique tiles of `regions` as int64 ids `(z << 50) | (y << 25) | x` (columns wrap).

    Vectorised: a world zoom of 134,000 regions has 2 million tile uses."""
    arr = np.asarray(list(regions), dtype=np.int64).reshape(-1, 3)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    z, row, col = arr[:, 0:1], arr[:, 1:2], arr[:, 2:3]
    dr, dc = np.divmod(np.arange(size * size, dtype=np.int64), size)
    y = row + dr
    x = (col + dc) % (np.int64(1) << z)
    ids = np.sort(((np.broadcast_to(z, y.shape) << 50) | (y << 25) | x).ravel())
    # sort and keep the first of each run: a hash-based np.unique is several times slower here
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))]


def tile_id(z: int, y: int, x: int) -> int:
    return (z << 50) | (y << 25) | x


def estimate_shard(
    shard: str, regions: Sequence[Region], done: Sequence[Region], cached: Iterable[tuple[int, int, int]],
    sizes: MeanSizes, min_interval_s: float, size: int = 4,
) -> ShardEstimate:  # fmt: skip
    """The estimate for `regions`, of which `done` are complete; `cached` are (z, y, x) in the cache."""
    done_set = set(done)
    todo = [r for r in dict.fromkeys(regions) if r not in done_set]
    needed = tile_ids(todo, size)
    have = np.fromiter((tile_id(*t) for t in cached), dtype=np.int64)
    n_cached = int(np.isin(needed, have).sum()) if have.size else 0
    return ShardEstimate(
        shard, len(set(regions)), len(set(regions)) - len(todo), int(needed.size), n_cached,
        sizes.image_bytes, sizes.tile_bytes, min_interval_s,
    )  # fmt: skip


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def format_table(title: str, rows: Sequence[ShardEstimate]) -> list[str]:
    """Aligned lines: one per shard and a total."""
    head = f"{'shard':<8} {'regions':>8} {'done':>8} {'tiles':>9} {'cached':>8} {'requests':>9} " \
           f"{'download':>10} {'disk':>10} {'time':>8}"  # fmt: skip
    out = [title, head]

    def line(
        name: str, reg: int, done: int, tiles: int, cached: int, req: int, dl: float, disk: float, t: float
    ) -> str:
        return (f"{name:<8} {reg:>8} {done:>8} {tiles:>9} {cached:>8} {req:>9} {human_bytes(dl):>10} "
                f"{human_bytes(disk):>10} {human_seconds(t):>8}")  # fmt: skip

    for r in rows:
        out.append(line(r.shard, r.regions, r.regions_done, r.unique_tiles, r.tiles_cached, r.requests,
                        r.download_bytes, r.disk_bytes, r.seconds))  # fmt: skip
    out.append(line(
        "total", sum(r.regions for r in rows), sum(r.regions_done for r in rows), sum(r.unique_tiles for r in rows),
        sum(r.tiles_cached for r in rows), sum(r.requests for r in rows), sum(r.download_bytes for r in rows),
        sum(r.disk_bytes for r in rows), sum(r.seconds for r in rows),
    ))  # fmt: skip
    return out
