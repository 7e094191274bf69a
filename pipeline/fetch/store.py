"""The tile store: upstream-layout mosaics, a raw-tile cache and per-shard manifests.

Layout under `root` (normally `tiles/`):
- `database/<YEAR>_<ZZ>/<LATBIN>_<LONBIN>/<upstream name>.jpg`: 1024x1024 RGB mosaics,
  exactly upstream's folders and names (`pipeline.geo.names.db_relpath`), so upstream
  code can glob them; `database/<YEAR>_<ZZ>/ATTRIBUTION.txt` carries the licence.
- `.tilecache/<layer>/<z>/<y>/<x>.jpg`: raw tiles as served, so reruns and resumed runs
  never ask twice for a tile they already hold.
- `manifests/<YEAR>_<ZZ>.parquet` (one row per region) and `<YEAR>_<ZZ>.tiles.parquet`
  (one row per tile fetch): what was written, from where, and every failure.
Every file is written atomically (`pipeline.io.atomic_path`): a killed run leaves whole
files or none, plus at worst stale `.*.tmp` files that `sweep_temp` removes.
One shard (year, zoom) must be written by one run at a time; `shard_lock` enforces it.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.errors import FetchError
from pipeline.io import atomic_path, exclusive_lock, write_text

REGION_COLUMNS = [
    "region_id", "year", "zoom", "path", "sha256", "bytes", "url_template", "layer", "tiles",
    "status", "attempts", "reason", "fetched_at", "source_id",
]  # fmt: skip
TILE_COLUMNS = ["year", "z", "y", "x", "url", "status", "attempts", "reason", "history", "bytes", "fetched_at"]

EOX_ATTRIBUTION = """\
EOxCloudless https://cloudless.eox.at by EOX IT Services GmbH (Contains modified Copernicus Sentinel data {year})

Licence: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International (CC BY-NC-SA 4.0),
https://creativecommons.org/licenses/by-nc-sa/4.0/

The images in this folder are MODIFIED from the original: each is a mosaic of 4x4 WMTS tiles of
layer {layer} (zoom {zoom}), re-encoded as a 1024x1024 JPEG (quality {quality}) by earthloc-pipeline.
They inherit the NonCommercial and ShareAlike terms. Note: a layer's data year can differ from its label.
"""

SYNTHETIC_ATTRIBUTION = """\
SYNTHETIC DATA - not satellite imagery.

The images in this folder are mosaics of procedurally generated tiles served by the project's local
synthetic WMTS server (layer {layer}, zoom {zoom}, label year {year}), re-encoded as 1024x1024 JPEG
(quality {quality}). They contain no Copernicus Sentinel or EOX data and carry no third-party licence.
"""


def shard_name(year: int, zoom: int) -> str:
    return f"{year}_{zoom:02d}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def build_mosaic(tiles: Sequence[bytes], size: int = 4, tile_px: int = 256) -> Image.Image:
    """RGB canvas of size x size tiles; tile i = (r, c) = divmod(i, size) goes to (256c, 256r)."""
    if len(tiles) != size * size:
        raise ValueError(f"need {size * size} tiles, got {len(tiles)}")
    canvas = Image.new("RGB", (size * tile_px, size * tile_px))
    for i, data in enumerate(tiles):
        r, c = divmod(i, size)
        with Image.open(io.BytesIO(data)) as im:
            canvas.paste(im.convert("RGB"), (c * tile_px, r * tile_px))
    return canvas


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """JPEG bytes; Pillow's encoder is deterministic, so equal pixels give equal files."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def read_manifest(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A Parquet manifest, or an empty one with `columns` if it does not exist yet."""
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types; report one line
        raise FetchError(f"{path}: unreadable manifest ({exc}); delete it to rebuild from the files") from exc


class TileStore:
    """Paths and atomic reads/writes under one store root."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- raw tile cache -------------------------------------------------------------
    def cache_path(self, layer: str, z: int, y: int, x: int) -> Path:
        return self.root / ".tilecache" / layer / str(z) / str(y) / f"{x}.jpg"

    def put_tile(self, layer: str, z: int, y: int, x: int, data: bytes) -> None:
        atomic_write_bytes(self.cache_path(layer, z, y, x), data)

    def read_tile(self, layer: str, z: int, y: int, x: int) -> bytes:
        return self.cache_path(layer, z, y, x).read_bytes()

    def drop_tile(self, layer: str, z: int, y: int, x: int) -> None:
        self.cache_path(layer, z, y, x).unlink(missing_ok=True)

    # -- mosaics ----------------------------------------------------------------------
    def write_mosaic(self, relpath: str, tiles: Sequence[bytes], quality: int) -> tuple[str, int]:
        """Write one region image atomically; return (sha256, bytes)."""
        data = encode_jpeg(build_mosaic(tiles), quality)
        atomic_write_bytes(self.root / relpath, data)
        return sha256_bytes(data), len(data)

    def is_complete(self, relpath: str, sha256: str) -> bool:
        """The region file exists and still has the manifest's hash."""
        path = self.root / relpath
        return path.is_file() and sha256_file(path) == sha256

    def shard_dir(self, year: int, zoom: int) -> Path:
        return self.root / "database" / shard_name(year, zoom)

    def write_attribution(self, year: int, zoom: int, layer: str, quality: int, source: str) -> None:
        """ATTRIBUTION.txt and LICENSE_EOX.txt beside the images (CC BY-NC-SA needs both the
        credit and the statement that the work was modified)."""
        template = SYNTHETIC_ATTRIBUTION if source == "synthetic" else EOX_ATTRIBUTION
        text = template.format(year=year, zoom=zoom, layer=layer, quality=quality)
        shard = self.shard_dir(year, zoom)
        write_text(shard / "ATTRIBUTION.txt", text)
        if source != "synthetic":
            write_text(shard / "LICENSE_EOX.txt", text)

    # -- manifests ----------------------------------------------------------------------
    def manifest_path(self, year: int, zoom: int, kind: str = "regions") -> Path:
        suffix = "" if kind == "regions" else f".{kind}"
        return self.root / "manifests" / f"{shard_name(year, zoom)}{suffix}.parquet"

    def load_manifest(self, year: int, zoom: int, kind: str = "regions") -> pd.DataFrame:
        path = self.manifest_path(year, zoom, kind)
        return read_manifest(path, REGION_COLUMNS if kind == "regions" else TILE_COLUMNS)

    def save_manifest(self, year: int, zoom: int, rows: pd.DataFrame, kind: str = "regions") -> pd.DataFrame:
        """Merge `rows` into the shard's manifest (newest row per region/tile wins) and write it atomically."""
        keys = ["region_id"] if kind == "regions" else ["z", "y", "x"]
        old = self.load_manifest(year, zoom, kind)
        merged = rows if old.empty else pd.concat([old, rows], ignore_index=True) if not rows.empty else old
        merged = merged.drop_duplicates(keys, keep="last").sort_values(keys).reset_index(drop=True)
        with atomic_path(self.manifest_path(year, zoom, kind)) as tmp:
            merged.to_parquet(tmp, index=False, compression="zstd")
        return merged

    def replace_manifest(self, year: int, zoom: int, rows: pd.DataFrame, kind: str = "regions") -> None:
        """Write the shard's manifest as exactly `rows` (atomic)."""
        with atomic_path(self.manifest_path(year, zoom, kind)) as tmp:
            rows.reset_index(drop=True).to_parquet(tmp, index=False, compression="zstd")

    # -- crash hygiene --------------------------------------------------------------------
    def sweep_temp(self, year: int, zoom: int, layer: str) -> int:
        """Remove temp files a killed run left in this shard's own folders and of this shard's
        own manifests (`atomic_path` names them `.<file name>.<random>.tmp`). Other shards'
        manifest temp files are left alone: another run may be writing them under its lock."""
        n = 0
        for base in (self.shard_dir(year, zoom), self.root / ".tilecache" / layer / str(zoom)):
            if base.exists():
                for p in base.rglob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        for kind in ("regions", "tiles"):
            manifest = self.manifest_path(year, zoom, kind)
            if manifest.parent.is_dir():
                for p in manifest.parent.glob(f".{glob.escape(manifest.name)}.*.tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    def shard_lock(self, year: int, zoom: int) -> AbstractContextManager[None]:
        """Exclusive, non-blocking lock on one shard, so two runs never write it at once.

        Every step that deletes or rewrites a shard's files (reset, prune, sweep, tile-cache
        trim) runs inside it; a run that cannot take it has changed nothing."""
        path = self.root / "manifests" / f".{shard_name(year, zoom)}.lock"
        name = shard_name(year, zoom)
        busy = FetchError(f"shard {name} is being written by another run ({path}); nothing was changed")
        return exclusive_lock(path, busy)
