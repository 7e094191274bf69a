"""GIS export: region mosaics as georeferenced Cloud-Optimized GeoTIFFs in EPSG:3857.

A region image is 4x4 Web-Mercator tiles of 256 px, so its georeference is exact and
needs no warping: the transform is the Web-Mercator bounds of its NW tile's corner
and a pixel size of one 256th of a tile. Any set of regions of ONE zoom lies on the
same pixel grid (tiles nest at a zoom), so a mosaic of many regions is a plain copy
of each image into its window of one big raster.

Antimeridian. Region columns wrap modulo 2**zoom: the last region of a row covers
tile columns 2**z-2 .. 2**z+1. Such a region (and any mosaic containing it) is
written as ONE continuous raster whose east part has x beyond +20037508.34 m, the
Web-Mercator x of the same ground shifted by one world width. GDAL and QGIS draw
it there (just east of the world edge), and pixels are never resampled or split.
A mosaic of regions on both sides of ±180 starts at the column after the widest
empty gap, so it stays as narrow as the regions allow.

Overlaps. Neighbouring regions overlap by half (stride 2) and hold the same ground
built from the same WMTS tiles; in a mosaic, regions are written in (row, col)
order and the later one wins, so the seams are invisible up to JPEG noise.

Output. Written to a tiled temporary GTiff beside the destination (so a world mosaic
never has to fit in memory), then copied by GDAL's COG driver (internal tiles,
overviews, compression from params `export`) to a temporary name and renamed into
place: a killed export leaves no partial file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image

from pipeline.errors import ConfigError, InputError
from pipeline.geo.names import db_relpath, parse_filename
from pipeline.geo.regions import GridSpec, describe_regions, parse_region_id
from pipeline.io import atomic_path, write_text
from pipeline.params import build_config, check_keys
from pipeline.schema import CORNER_COLUMNS, DATABASE_YEAR

# Web-Mercator (EPSG:3857) sphere: x = R * lon, so the world is 2 * pi * R wide.
EARTH_RADIUS_M = 6378137.0
HALF_WORLD_M = math.pi * EARTH_RADIUS_M  # 20037508.342789244
TILE_PX = 256
COMPRESSIONS = ("DEFLATE", "JPEG", "LZW", "ZSTD", "NONE")


@dataclass(frozen=True)
class ExportConfig:
    """The `export` params section plus the grid shape (from the `grid` section)."""

    compress: str = "DEFLATE"  # DEFLATE keeps the JPEG's pixels exactly; JPEG is ~4x smaller
    jpeg_quality: int = 90  # only with compress: JPEG
    blocksize: int = 256  # internal tile size; 256 px = one WMTS tile
    overview_resampling: str = "AVERAGE"
    region_tiles: int = GridSpec.region_tiles
    stride: int = GridSpec.stride

    def __post_init__(self) -> None:
        if self.compress.upper() not in COMPRESSIONS:
            raise ConfigError(f"export.compress must be one of {COMPRESSIONS}, got {self.compress!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("export.jpeg_quality must be in 1..100")
        if self.blocksize < 16 or self.blocksize % 16:
            raise ConfigError(f"export.blocksize must be a multiple of 16, got {self.blocksize}")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None, grid: GridSpec | None = None) -> ExportConfig:
        """From the `export` section; the region shape comes from the grid (`region_tiles`
        and `stride` are keys of `grid`, so here they are unknown keys)."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)} - {"region_tiles", "stride"}, "export")
        grid = grid or GridSpec()
        return build_config(cls, {**sec, "region_tiles": grid.region_tiles, "stride": grid.stride}, "export")


class RegionKey(NamedTuple):
    region_id: str
    zoom: int
    row: int
    col: int


class Mosaic(NamedTuple):
    """Where a set of one-zoom regions lands: the raster's NW tile and size in tiles.

    `col0` may be any column; columns of regions east of it are unwrapped (>= col0),
    so the raster can run past 2**zoom (east of the antimeridian)."""

    zoom: int
    row0: int
    col0: int
    rows: int
    cols: int


# --------------------------------------------------------------------- geometry (pure)


def tile_size_m(zoom: int) -> float:
    return 2.0 * HALF_WORLD_M / (1 << zoom)


def tile_xy_bounds(zoom: int, row: int, col: int, rows: int = 1, cols: int = 1) -> tuple[float, float, float, float]:
    """EPSG:3857 (left, bottom, right, top) of a block of tiles; `col` may exceed 2**zoom."""
    size = tile_size_m(zoom)
    left = -HALF_WORLD_M + col * size
    top = HALF_WORLD_M - row * size
    return left, top - rows * size, left + cols * size, top


def parse_region(region_id: str, cfg: ExportConfig) -> RegionKey:
    """A region id checked against the grid: zoom, rows within the world, stride."""
    try:
        zoom, row, col = parse_region_id(region_id)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if not 1 <= zoom <= 22:
        raise InputError(f"unknown region {region_id}: zoom {zoom} outside 1..22")
    n = 1 << zoom
    if row + cfg.region_tiles > n or col >= n:
        raise InputError(f"unknown region {region_id}: row/col outside the {n}x{n} tiles of zoom {zoom}")
    if row % cfg.stride or col % cfg.stride:
        raise InputError(f"unknown region {region_id}: row and col must be multiples of the grid stride {cfg.stride}")
    return RegionKey(region_id, zoom, row, col)


def plan_mosaic(regions: Sequence[RegionKey], region_tiles: int = 4) -> Mosaic:
    """The smallest raster holding every region (all of one zoom), wrapping at ±180 if that is narrower."""
    if not regions:
        raise InputError("no regions to export")
    zooms = {r.zoom for r in regions}
    if len(zooms) != 1:
        raise InputError(f"a mosaic needs regions of one zoom, got zooms {sorted(zooms)}")
    zoom = zooms.pop()
    n = 1 << zoom
    cols = np.unique([r.col for r in regions])
    # Start after the widest gap between region columns, the wrap-round gap first on ties
    # (then nothing is shifted). A single region, or regions not near ±180, start at min col.
    gaps = np.diff(np.append(cols, cols[0] + n))  # gaps[i]: from cols[i] to the next, circularly
    wrap_gap = gaps[-1]
    i = int(np.argmax(gaps))
    col0 = int(cols[0]) if wrap_gap >= gaps[i] else int(cols[(i + 1) % len(cols)])
    span = int(max((c - col0) % n for c in cols)) + region_tiles
    rows = [r.row for r in regions]
    return Mosaic(zoom, min(rows), col0, max(rows) - min(rows) + region_tiles, span)


def mosaic_bounds(m: Mosaic) -> tuple[float, float, float, float]:
    return tile_xy_bounds(m.zoom, m.row0, m.col0, m.rows, m.cols)


def region_offset(m: Mosaic, r: RegionKey) -> tuple[int, int]:
    """Pixel (row, col) offset of a region's NW corner inside the mosaic."""
    n = 1 << m.zoom
    return (r.row - m.row0) * TILE_PX, ((r.col - m.col0) % n) * TILE_PX


# --------------------------------------------------------------------- finding images


def region_relpath(key: RegionKey, year: int, region_tiles: int = 4) -> str:
    """Upstream relpath of a region's year-`year` image (as the fetch stage names it)."""
    df, _ = describe_regions(pd.DataFrame({"zoom": [key.zoom], "row": [key.row], "col": [key.col]}), region_tiles)
    r = df.iloc[0]
    corners = [r[c] for c in CORNER_COLUMNS]
    return db_relpath(corners, key.region_id, key.zoom, year, r.center_lat, r.center_lon, r.area_km2)


def manifest_path(root: Path, year: int, zoom: int) -> Path:
    return root / "manifests" / f"{year}_{zoom:02d}.parquet"


def _load_manifest(root: Path, year: int, zoom: int) -> pd.DataFrame | None:
    path = manifest_path(root, year, zoom)
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path, columns=["region_id", "path", "status", "reason"])
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{path}: unreadable manifest ({exc})") from exc


def find_images(root: Path, keys: Sequence[RegionKey], year: int, region_tiles: int = 4) -> dict[str, Path]:
    """region_id -> image path. The shard manifest decides (a region it records as not
    `ok` is an error with its reason); without a manifest entry the upstream name is
    computed. A missing file is an error naming the shard to fetch."""
    out: dict[str, Path] = {}
    manifests: dict[int, pd.DataFrame | None] = {}
    for key in keys:
        if key.zoom not in manifests:
            man = _load_manifest(root, year, key.zoom)
            manifests[key.zoom] = None if man is None else man.set_index("region_id")
        man = manifests[key.zoom]
        rel = None
        if man is not None and key.region_id in man.index:
            row = man.loc[key.region_id]
            if row["status"] != "ok":
                raise InputError(
                    f"region {key.region_id} year {year}: fetch status {row['status']} ({row['reason'] or 'no reason'})"
                )
            rel = str(row["path"])
        if rel is None:
            rel = region_relpath(key, year, region_tiles)
        path = root / rel
        if not path.is_file():
            raise InputError(
                f"region {key.region_id} year {year}: no image at {path} (fetch shard {year}_{key.zoom:02d} first)"
            )
        out[key.region_id] = path
    return out


def shard_regions(root: Path, year: int, zoom: int) -> list[str]:
    """Region ids of every image of a shard: the manifest's `ok` rows, or the files on disk."""
    man = _load_manifest(root, year, zoom)
    if man is not None:
        ids = man.loc[man["status"] == "ok", "region_id"].astype(str).tolist()
    else:
        shard = root / "database" / f"{year}_{zoom:02d}"
        ids = [parse_filename(p.name).image_id for p in shard.glob("*/*.jpg")]
    if not ids:
        raise InputError(f"shard {year}_{zoom:02d} under {root} has no images (fetch it first)")
    return sorted(set(ids))


def query_positives(intersections: Path, query_id: str, zoom: int) -> list[str]:
    """Region ids of one query's positives (any overlap) at `zoom`, from the intersect table."""
    if not intersections.exists():
        raise InputError(f"{intersections}: no such file (run the intersect stage first)")
    df = pd.read_parquet(
        intersections, columns=["query_id", "region_id", "zoom"], filters=[("query_id", "==", query_id)]
    )
    if df.empty:
        raise InputError(f"query {query_id} has no positives in {intersections} (unknown id or no overlap)")
    ids = df.loc[df["zoom"] == zoom, "region_id"].astype(str).tolist()
    if not ids:
        raise InputError(f"query {query_id} has no positives at zoom {zoom} (zooms: {sorted(df['zoom'].unique())})")
    return sorted(ids)


# --------------------------------------------------------------------- writing


def _read_rgb(path: Path, size: int) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    if arr.shape[:2] != (size, size):
        raise InputError(f"{path}: expected {size}x{size} pixels, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def _cog_options(cfg: ExportConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "BLOCKSIZE": cfg.blocksize,
        "COMPRESS": cfg.compress.upper(),
        "OVERVIEWS": "AUTO",
        "OVERVIEW_RESAMPLING": cfg.overview_resampling,
        "BIGTIFF": "IF_SAFER",
    }
    if cfg.compress.upper() == "JPEG":
        opts["QUALITY"] = cfg.jpeg_quality
    elif cfg.compress.upper() in ("DEFLATE", "LZW", "ZSTD"):
        opts["PREDICTOR"] = "YES"  # horizontal differencing: smaller lossless files for imagery
    return opts


def write_cog(
    dest: Path,
    images: dict[str, Path],
    keys: Sequence[RegionKey],
    cfg: ExportConfig,
    tags: dict[str, str] | None = None,
) -> Mosaic:
    """Write the regions `keys` (images by region id) as one EPSG:3857 COG at `dest`."""
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    mosaic = plan_mosaic(keys, cfg.region_tiles)
    height, width = mosaic.rows * TILE_PX, mosaic.cols * TILE_PX
    left, _, _, top = mosaic_bounds(mosaic)
    res = tile_size_m(mosaic.zoom) / TILE_PX
    transform = Affine(res, 0.0, left, 0.0, -res, top)
    size = cfg.region_tiles * TILE_PX
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A mask marks the pixels no region covers (a sparse set of regions leaves holes);
    # mask blocks never written read as 0, so only the covered windows are written.
    single = len(keys) == 1
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest.parent) as tmpdir:
        stage = Path(tmpdir) / "stage.tif"
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
            "crs": CRS.from_epsg(3857), "transform": transform, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "compress": "DEFLATE", "BIGTIFF": "IF_SAFER", "photometric": "RGB",
        }  # fmt: skip
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(stage, "w", **profile) as dst:
                for key in sorted(keys, key=lambda k: (k.row, (k.col - mosaic.col0) % (1 << mosaic.zoom))):
                    arr = _read_rgb(images[key.region_id], size)
                    r0, c0 = region_offset(mosaic, key)
                    win = Window(c0, r0, size, size)
                    dst.write(np.moveaxis(arr, -1, 0), window=win)
                    if not single:
                        dst.write_mask(np.full((size, size), 255, dtype=np.uint8), window=win)
                dst.update_tags(**(tags or {}))
            with atomic_path(dest) as tmp:
                rasterio.shutil.copy(stage, tmp, driver="COG", **_cog_options(cfg))
    return mosaic


# --------------------------------------------------------------------- user-level


@dataclass(frozen=True)
class ExportResult:
    path: Path
    region_ids: tuple[str, ...]
    mosaic: Mosaic
    bounds: tuple[float, float, float, float]


def _tags(root: Path, year: int, zoom: int, region_ids: Iterable[str]) -> dict[str, str]:
    ids = list(region_ids)
    tags = {"EARTHLOC_YEAR": str(year), "EARTHLOC_ZOOM": str(zoom), "EARTHLOC_REGIONS": str(len(ids))}
    if len(ids) <= 64:
        tags["EARTHLOC_REGION_IDS"] = " ".join(ids)
    attribution = root / "database" / f"{year}_{zoom:02d}" / "ATTRIBUTION.txt"
    if attribution.is_file():
        # The licence travels with the pixels (CC BY-NC-SA needs the credit).
        tags["TIFFTAG_COPYRIGHT"] = attribution.read_text(encoding="utf-8").strip()
    return tags


def export_regions(
    root: str | os.PathLike[str],
    region_ids: Sequence[str],
    year: int,
    dest: str | os.PathLike[str],
    cfg: ExportConfig | None = None,
) -> ExportResult:
    """Write the year-`year` images of `region_ids` (one zoom) as one COG at `dest`."""
    cfg = cfg or ExportConfig()
    root = Path(root)
    keys = [parse_region(rid, cfg) for rid in dict.fromkeys(region_ids)]
    if not keys:
        raise InputError("no regions to export")
    images = find_images(root, keys, year, cfg.region_tiles)
    mosaic = write_cog(Path(dest), images, keys, cfg, _tags(root, year, keys[0].zoom, images))
    return ExportResult(Path(dest), tuple(k.region_id for k in keys), mosaic, mosaic_bounds(mosaic))


def export_each(
    root: str | os.PathLike[str],
    region_ids: Sequence[str],
    year: int,
    out_dir: str | os.PathLike[str],
    cfg: ExportConfig | None = None,
) -> list[ExportResult]:
    """One COG per region: `<out_dir>/<region_id>_<year>.tif`. All inputs are checked first."""
    cfg = cfg or ExportConfig()
    root, out_dir = Path(root), Path(out_dir)
    keys = [parse_region(rid, cfg) for rid in dict.fromkeys(region_ids)]
    if not keys:
        raise InputError("no regions to export")
    images = find_images(root, keys, year, cfg.region_tiles)
    results = []
    for key in keys:
        dest = out_dir / f"{key.region_id}_{year}.tif"
        m = write_cog(dest, images, [key], cfg, _tags(root, year, key.zoom, [key.region_id]))
        results.append(ExportResult(dest, (key.region_id,), m, mosaic_bounds(m)))
    return results


def query_geojson(
    queries_parquet: Path, query_id: str, region_ids: Sequence[str], region_tiles: int = 4
) -> dict[str, Any]:
    """GeoJSON (EPSG:4326) of a query footprint and the outlines of the given regions."""
    import shapely

    from pipeline.io import read_geoparquet

    q = read_geoparquet(queries_parquet, columns=["query_id", "filename", "geometry"])
    q = q[q["query_id"] == query_id]
    if q.empty:
        raise InputError(f"query {query_id} is not in {queries_parquet}")
    features = [
        {
            "type": "Feature",
            "properties": {"kind": "footprint", "query_id": query_id, "filename": str(q.iloc[0]["filename"])},
            "geometry": shapely.geometry.mapping(q.iloc[0].geometry),
        }
    ]
    zrc = [parse_region_id(r) for r in region_ids]
    df, geoms = describe_regions(pd.DataFrame(zrc, columns=["zoom", "row", "col"]), region_tiles)
    for rid, geom in zip(df["region_id"], geoms):
        features.append(
            {"type": "Feature", "properties": {"kind": "positive", "region_id": str(rid)},
             "geometry": shapely.geometry.mapping(geom)}
        )  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def export_query(
    root: str | os.PathLike[str],
    query_id: str,
    zoom: int,
    year: int,
    out_dir: str | os.PathLike[str],
    intersections: str | os.PathLike[str],
    queries_parquet: str | os.PathLike[str] | None = None,
    cfg: ExportConfig | None = None,
) -> tuple[ExportResult, Path | None]:
    """All 2021 positives of a query at `zoom` as one COG `<out_dir>/<query_id>_<year>_<ZZ>.tif`,
    plus `<query_id>.geojson` (footprint + positive outlines) when `queries_parquet` is given."""
    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    ids = query_positives(Path(intersections), query_id, zoom)
    res = export_regions(root, ids, year, out_dir / f"{query_id}_{year}_{zoom:02d}.tif", cfg)
    geojson = None
    if queries_parquet is not None:
        geojson = out_dir / f"{query_id}.geojson"
        write_text(geojson, json.dumps(query_geojson(Path(queries_parquet), query_id, ids, cfg.region_tiles)) + "\n")
    return res, geojson


# --------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ExportRequest:
    """What `earthloc export` was asked for: exactly one of `region_ids`, `query` or
    `all_of_shard`, and where the inputs and outputs are."""

    tiles: Path
    out: Path
    year: int = DATABASE_YEAR
    region_ids: tuple[str, ...] = ()
    query: str | None = None  # one mosaic of this query's positives at `zoom`
    all_of_shard: bool = False  # every image of the shard (`year`, `zoom`)
    zoom: int | None = None
    mosaic: bool = False  # one COG of all regions instead of one per region
    intersections: Path = Path("data/intersections/intersections_2021.parquet")
    queries: Path | None = Path("data/queries/queries.parquet")  # None: no footprint GeoJSON with `query`


def run(config: ExportConfig, request: ExportRequest) -> list[ExportResult]:
    """Write the requested COGs (and a query's footprint GeoJSON); print one line per file."""
    modes = sum([bool(request.region_ids), request.query is not None, request.all_of_shard])
    if modes != 1:
        raise ConfigError("give region ids, --query QUERY_ID or --all (exactly one)")
    if (request.query is not None or request.all_of_shard) and request.zoom is None:
        raise ConfigError("--query and --all need --zoom")
    results: list[ExportResult] = []
    if request.query is not None:
        assert request.zoom is not None
        res, geojson = export_query(request.tiles, request.query, request.zoom, request.year, request.out,
                                    request.intersections, request.queries, config)  # fmt: skip
        results.append(res)
        if geojson is not None:
            print(f"{geojson}: footprint of {request.query} and its {len(res.region_ids)} positives (EPSG:4326)")
    else:
        if request.all_of_shard:
            assert request.zoom is not None
            ids: Sequence[str] = shard_regions(request.tiles, request.year, request.zoom)
        else:
            ids = request.region_ids
        if request.mosaic:
            zooms = {parse_region(r, config).zoom for r in ids}
            name = f"mosaic_{request.year}_{zooms.pop():02d}.tif" if len(zooms) == 1 else "mosaic.tif"
            results.append(export_regions(request.tiles, ids, request.year, request.out / name, config))
        else:
            results.extend(export_each(request.tiles, ids, request.year, request.out, config))
    for r in results:
        m = r.mosaic
        print(f"{r.path}: {len(r.region_ids)} region(s), {m.cols * TILE_PX}x{m.rows * TILE_PX} px, EPSG:3857 "
              f"bounds {tuple(round(v, 2) for v in r.bounds)}")  # fmt: skip
    return results
