"""grid stage: the database regions as GeoParquet (EPSG:4326), one row per region."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely

from pipeline.errors import ConfigError
from pipeline.geo.regions import GridSpec, build_regions, describe_regions, region_rows
from pipeline.io import write_geoparquet
from pipeline.landmask import tile_land_counts


@dataclass(frozen=True)
class GridParams:
    spec: GridSpec
    min_land_fraction: float = 0.0
    land_samples_per_tile: int = 8
    bbox: tuple[float, float, float, float] | None = None

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> GridParams:
        try:
            spec = GridSpec(
                zooms=tuple(int(z) for z in sec.get("zooms", (9, 10, 11))),
                region_tiles=int(sec.get("region_tiles", 4)),
                stride=int(sec.get("stride", 2)),
                max_abs_lat=float(sec.get("max_abs_lat", 60.0)),
            )
            bbox = sec.get("bbox")
            return cls(
                spec=spec,
                min_land_fraction=float(sec.get("min_land_fraction", 0.0)),
                land_samples_per_tile=int(sec.get("land_samples_per_tile", 8)),
                bbox=parse_bbox(bbox) if bbox is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params grid: {exc}") from exc


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
    return gdf[
        ["region_id", "zoom", "row", "col", "ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon",
         "lr_lat", "lr_lon", "center_lat", "center_lon", "area_km2", "land_fraction", "geometry"]
    ]


def run(out: Path, params: GridParams) -> gpd.GeoDataFrame:
    t0 = time.perf_counter()
    gdf = build_grid(params)
    write_geoparquet(gdf, out)
    per_zoom = gdf.groupby("zoom").size().to_dict()
    wraps = int((gdf["col"] + params.spec.region_tiles > 2 ** gdf["zoom"]).sum())
    print(
        f"grid: {len(gdf):,} regions {per_zoom} ({wraps} across the antimeridian) "
        f"-> {out} in {time.perf_counter() - t0:.1f} s"
    )
    return gdf


__all__ = ["GridParams", "bbox_geometry", "build_grid", "parse_bbox", "run"]
