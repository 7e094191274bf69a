"""grid stage: the database regions as GeoParquet (EPSG:4326), one row per region."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely

from pipeline.errors import ConfigError
from pipeline.geo.regions import GridSpec, build_regions, describe_regions, region_rows
from pipeline.io import write_geoparquet
from pipeline.landmask import tile_land_counts
from pipeline.params import build_config, check_keys
from pipeline.schema import GRID_COLUMNS


@dataclass(frozen=True)
class GridParams:
    """The `grid` params section. Its first four keys shape the grid (GridSpec, whose
    defaults are the only ones); the rest say which regions of it are kept."""

    spec: GridSpec = field(default_factory=GridSpec)
    min_land_fraction: float = 0.0
    land_samples_per_tile: int = 8
    bbox: tuple[float, float, float, float] | None = None

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> GridParams:
        """From the flat `grid` section: GridSpec's keys build `spec`, the others this
        class; an unknown key is an error naming it."""
        sec = dict(sec or {})
        spec_keys = {f.name for f in fields(GridSpec)}
        own_keys = {f.name for f in fields(cls)} - {"spec"}
        check_keys(sec, spec_keys | own_keys, "grid")
        spec = build_config(GridSpec, {k: v for k, v in sec.items() if k in spec_keys}, "grid")
        own = {k: v for k, v in sec.items() if k in own_keys}
        if own.get("bbox") is not None:
            own["bbox"] = parse_bbox(own["bbox"])
        return replace(build_config(cls, own, "grid"), spec=spec)


@dataclass(frozen=True)
class GridPaths:
    """Where the grid stage writes."""

    out: Path  # the regions GeoParquet


def parse_bbox(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(west, south, east, north); west > east means the box crosses the antimeridian."""
    if len(values) != 4:
        raise ConfigError(f"bbox needs 4 numbers W S E N, got {list(values)}")
    w, s, e, n = (float(v) for v in values)
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(f"bbox out of range or empty: {[w, s, e, n]}")
    return w, s, e, n


def bbox_geometry(bbox: tuple[float, float, float, float]) -> shapely.Geometry:
    w, s, e, n = bbox
    if w <= e:
        return shapely.box(w, s, e, n)
    return shapely.MultiPolygon([shapely.box(w, s, 180.0, n), shapely.box(-180.0, s, e, n)])


def build_grid(params: GridParams) -> gpd.GeoDataFrame:
    """All land regions of the grid (optionally only those meeting the bbox)."""
    spec = params.spec
    finest = max(spec.zooms)
    # The finest-zoom tile rows that any region of any zoom covers, aligned so the
    # counts coarsen exactly to every other zoom.
    align = 1 << (finest - min(spec.zooms))
    lo = min(int(region_rows(z, spec).min()) << (finest - z) for z in spec.zooms)
    hi = max((int(region_rows(z, spec).max()) + spec.region_tiles) << (finest - z) for z in spec.zooms)
    lo, hi = lo // align * align, -(-hi // align) * align
    counts = tile_land_counts(finest, lo, hi, params.land_samples_per_tile)
    regions = build_regions(spec, counts, finest, params.land_samples_per_tile, params.min_land_fraction)
    table, geoms = describe_regions(regions, spec.region_tiles)
    gdf = gpd.GeoDataFrame(table, geometry=geoms, crs="EPSG:4326")
    if params.bbox is not None:
        gdf = gdf[shapely.intersects(gdf.geometry.values, bbox_geometry(params.bbox))].reset_index(drop=True)
    gdf = gdf.sort_values(["zoom", "row", "col"], kind="stable").reset_index(drop=True)
    return gdf[[*GRID_COLUMNS, "land_fraction", "geometry"]]


def run(config: GridParams, paths: GridPaths) -> dict[str, Any]:
    """Build the grid, write it to `paths.out`; return counts (regions per zoom, wraps)."""
    t0 = time.perf_counter()
    gdf = build_grid(config)
    write_geoparquet(gdf, paths.out)
    per_zoom = {int(k): int(v) for k, v in gdf.groupby("zoom").size().items()}
    wraps = int((gdf["col"] + config.spec.region_tiles > 2 ** gdf["zoom"]).sum())
    print(
        f"grid: {len(gdf):,} regions {per_zoom} ({wraps} across the antimeridian) "
        f"-> {paths.out} in {time.perf_counter() - t0:.1f} s"
    )
    return {"regions": int(len(gdf)), "regions_per_zoom": per_zoom, "across_antimeridian": wraps}


__all__ = ["GridParams", "GridPaths", "bbox_geometry", "build_grid", "parse_bbox", "run"]
