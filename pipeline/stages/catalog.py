"""catalog stage: a STAC catalog of what the pipeline built, for STAC clients and GIS.

Writes to `data/catalog/` (every file atomically):
  catalog.json            the root Catalog, linking the collections below and the model
  database.json           Collection of the database regions (licence, providers, extent)
  database.parquet        its Items in stac-geoparquet, one per grid region: geometry and bbox
                          in EPSG:4326, the projection extension (EPSG:3857 bbox, 1024x1024
                          shape and transform), one JPEG asset per fetched year (`image_<YEAR>`)
                          and one COG per exported year (`cog_<YEAR>`) when `export_dir` is set
  queries.json            Collection of the astronaut photos
  queries.parquet         its Items: footprint, acquisition date, nadir, orientation, the
                          photo asset when the photo is in the tile store, NASA's page as `via`
  evalset-<NAME>.json     one Collection per evaluation set: its query and database item ids,
                          its extent, and its CSV/Parquet files as assets
  model.json              the trained model as an Item with the machine-learning-model (MLM)
                          extension: architecture, input shape and scaling, output size,
                          training recipe, evaluation metrics
Asset hrefs are relative to `data/catalog/` (e.g. `../../tiles/database/...`), so the catalog
keeps working wherever the repository (or a `dvc pull` of it) lies.

Items go to Parquet, not to one JSON file each: a world grid is ~180,000 regions, and
stac-geoparquet is what STAC tools (DuckDB, rustac, stac-geoparquet, GeoPandas) read in one
go. The JSON documents and the items are validated against the STAC 1.1.0 JSON schemas and
the schemas of the extensions they declare (projection v2.0.0, MLM v1.4.0), all bundled in
`pipeline/stac_schemas/` (`validate`), never fetched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import shapely

from pipeline.errors import ConfigError, InputError, IntegrityError
from pipeline.io import atomic_path, read_geoparquet, write_json
from pipeline.schema import CORNER_COLUMNS, corner_lat_lon_columns

STAC_VERSION = "1.1.0"
PROJECTION_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
MLM_EXT = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
PARQUET_TYPE = "application/vnd.apache.parquet"
JPEG_TYPE = "image/jpeg"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
REGION_PX = 1024  # side of a region image: 4 x 4 tiles of 256 px
WEB_MERCATOR_HALF = math.pi * 6378137.0  # EPSG:3857 x at longitude 180 (metres)
CATALOG_ID = "earthloc"
# Schema URI -> bundled file (pipeline/stac_schemas/). Anything else is refused, not fetched.
_SPEC = "https://schemas.stacspec.org/v1.1.0"
SCHEMA_FILES = {
    f"{_SPEC}/item-spec/json-schema/item.json": "stac-spec/v1.1.0/item.json",
    f"{_SPEC}/catalog-spec/json-schema/catalog.json": "stac-spec/v1.1.0/catalog.json",
    f"{_SPEC}/collection-spec/json-schema/collection.json": "stac-spec/v1.1.0/collection.json",
    **{
        f"{_SPEC}/item-spec/json-schema/{n}.json": f"stac-spec/v1.1.0/{n}.json"
        for n in ("bands", "basics", "common", "data-values", "datetime", "instrument", "licensing", "provider")
    },
    "https://geojson.org/schema/Feature.json": "geojson/Feature.json",
    "https://geojson.org/schema/Geometry.json": "geojson/Geometry.json",
    PROJECTION_EXT: "stac-extensions/projection-v2.0.0.json",
    MLM_EXT: "stac-extensions/mlm-v1.4.0.json",
    # What those two reference: PROJJSON for `proj:projjson`; raster (data types), processing
    # (expressions) and classification (classes) for the MLM input and output objects.
    "https://proj.org/schemas/v0.7/projjson.schema.json": "proj/projjson-v0.7.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "stac-extensions/raster-v1.1.0.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json": "stac-extensions/processing-v1.1.0.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json": "stac-extensions/classification-v1.1.0.json",
}
# Extension schema URI -> short name for messages. A document is validated against the core
# schema of its type and against every extension it declares; declaring one that is not listed
# here is an error, so nothing the catalog writes goes unchecked by accident.
EXTENSION_SCHEMAS = {PROJECTION_EXT: "projection v2.0.0", MLM_EXT: "MLM v1.4.0"}
CORE_SCHEMA = {
    "Feature": f"{_SPEC}/item-spec/json-schema/item.json",
    "Catalog": f"{_SPEC}/catalog-spec/json-schema/catalog.json",
    "Collection": f"{_SPEC}/collection-spec/json-schema/collection.json",
}

# What the imagery's licence demands, per fetch.source. EOxCloudless is CC BY-NC-SA 4.0 and
# contains modified Copernicus Sentinel data: the credit, the licence and the statement that
# the images were modified must travel with them. The synthetic Earth is the project's own.
_DATABASE_SOURCES: dict[str, dict[str, Any]] = {
    "synthetic": {
        "license": "MIT",
        "title": "EarthLoc database regions (SYNTHETIC imagery)",
        "description": (
            "SYNTHETIC DATA, not satellite imagery: 1024x1024 JPEG mosaics of 4x4 Web-Mercator tiles of the "
            "procedurally generated Earth that the pipeline serves locally, one per database region and year "
            "label. They contain no Copernicus Sentinel or EOX data and carry no third-party licence."
        ),
        "attribution": "Synthetic imagery generated by earthloc-pipeline; no third-party data.",
        "providers": [
            {
                "name": "earthloc-pipeline (synthetic Earth)",
                "roles": ["producer", "processor", "host"],
                "description": "Procedural imagery generated and mosaicked by the pipeline",
            }
        ],
    },
    "eox": {
        "license": "CC-BY-NC-SA-4.0",
        "title": "EarthLoc database regions (EOxCloudless Sentinel-2 mosaics)",
        "description": (
            "1024x1024 JPEG mosaics of 4x4 Web-Mercator tiles of EOxCloudless (Sentinel-2 cloudless) yearly "
            "layers, one per database region and year, MODIFIED from the original (mosaicked and re-encoded). "
            "Licence CC BY-NC-SA 4.0: the NonCommercial and ShareAlike terms apply to these images."
        ),
        "attribution": (
            "EOxCloudless https://cloudless.eox.at by EOX IT Services GmbH (Contains modified "
            "Copernicus Sentinel data); modified by earthloc-pipeline"
        ),
        "providers": [
            {"name": "EOX IT Services GmbH", "roles": ["licensor", "producer"], "url": "https://cloudless.eox.at"},
            {
                "name": "European Union, Copernicus Sentinel-2",
                "roles": ["producer"],
                "description": "Contains modified Copernicus Sentinel data",
            },
            {"name": "earthloc-pipeline", "roles": ["processor"], "description": "Mosaicked and re-encoded"},
        ],
    },
}
_NASA_CREDIT = "Image courtesy of the Earth Science and Remote Sensing Unit, NASA Johnson Space Center"


@dataclass(frozen=True)
class CatalogParams:
    """The `catalog` section of params.yaml."""

    out_dir: str = "data/catalog"
    grid: str = "data/grid/regions.parquet"
    queries: str = "data/queries/queries.parquet"
    tiles_root: str = "tiles"
    evalsets_dir: str = "data/evalsets"
    eval_dir: str = "data/eval"  # metrics of `earthloc evaluate`, one folder per set
    model: str | None = "models/earthloc.pt"  # null: no model item
    export_dir: str | None = None  # COGs of `earthloc export` (<region_id>_<year>.tif); null: none
    validate_items: int = 1000  # items of each Parquet validated against the schema (0 = all)

    def __post_init__(self) -> None:
        if self.validate_items < 0:
            raise ConfigError(f"catalog.validate_items {self.validate_items}: must be >= 0")


@dataclass(frozen=True)
class BuildContext:
    """What the catalog needs from other sections of params.yaml."""

    years: tuple[int, ...]
    zooms: tuple[int, ...]
    source: str  # fetch.source: whose imagery (licence, providers)
    photo_source: str  # fetch_queries.source
    sets: tuple[str, ...]  # evaluation sets to describe (evalset.sets + lost_in_space.sets)
    recipe: Mapping[str, Any] = field(default_factory=dict)  # train/model/augment/loss/astroloc sections

    def __post_init__(self) -> None:
        if self.source not in _DATABASE_SOURCES:
            raise ConfigError(
                f"fetch.source {self.source!r}: the catalog knows the licences of {sorted(_DATABASE_SOURCES)}"
            )


# The sections the model item records as written (its training recipe).
RECIPE_SECTIONS = ("train", "model", "augment", "loss", "astroloc")


# ---------------------------------------------------------------------------
# Pure builders: tables in, STAC dicts out


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def year_span(years: Sequence[int]) -> tuple[str, str]:
    """The first instant of the first year and the last second of the last year, UTC."""
    return _iso(datetime(min(years), 1, 1, tzinfo=UTC)), _iso(datetime(max(years), 12, 31, 23, 59, 59, tzinfo=UTC))


def mercator_x(lon: np.ndarray) -> np.ndarray:
    return np.radians(lon) * 6378137.0


def mercator_y(lat: np.ndarray) -> np.ndarray:
    return 6378137.0 * np.arcsinh(np.tan(np.radians(lat)))


def _polygon(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def region_items(
    grid: pd.DataFrame,
    images: Mapping[str, Mapping[int, str]],
    years: Sequence[int],
    *,
    tiles_href: str,
    cogs: Mapping[str, Mapping[int, str]] | None = None,
) -> list[dict[str, Any]]:
    """One STAC Item per grid region. `images[region_id][year]` is the JPEG's path relative
    to the tile store (only fetched images get an asset); `cogs[region_id][year]` an
    exported COG's href relative to the catalog. Region edges are meridians and parallels
    (Web-Mercator tile edges), so the footprint is its lon/lat box (split at the antimeridian)."""
    start, end = year_span(years)
    (ll_lat, ll_lon), (ul_lat, _), _, (_, lr_lon) = corner_lat_lon_columns()
    west, east = grid[ll_lon].to_numpy(np.float64), grid[lr_lon].to_numpy(np.float64)
    south, north = grid[ll_lat].to_numpy(np.float64), grid[ul_lat].to_numpy(np.float64)
    # A region across the antimeridian has west > east: STAC keeps that order in its bbox, its
    # geometry is the grid's two parts split at +-180, and its pixels are one continuous strip
    # of the Mercator plane, so proj:bbox runs past x = 20037508 m rather than wrapping.
    x0 = mercator_x(west)
    x1 = x0 + mercator_x(np.mod(east - west, 360.0))
    y0, y1 = mercator_y(south), mercator_y(north)
    if "geometry" in grid.columns:
        geometries = [json.loads(g) for g in shapely.to_geojson(np.asarray(grid.geometry))]
    else:
        geometries = [
            _polygon(*b) for b in zip(west.tolist(), south.tolist(), east.tolist(), north.tolist(), strict=True)
        ]
    items = []
    cogs = cogs or {}
    for i, (rid, zoom) in enumerate(zip(grid["region_id"].tolist(), grid["zoom"].tolist(), strict=True)):
        assets: dict[str, dict[str, Any]] = {}
        for year, rel in sorted(images.get(rid, {}).items()):
            ys, ye = year_span([year])
            assets[f"image_{year}"] = {
                "href": f"{tiles_href}/{rel}",
                "type": JPEG_TYPE,
                "roles": ["data"],
                "title": f"{year} mosaic, {REGION_PX}x{REGION_PX} JPEG",
                "start_datetime": ys,
                "end_datetime": ye,
            }
        for year, href in sorted(cogs.get(rid, {}).items()):
            assets[f"cog_{year}"] = {
                "href": href,
                "type": COG_TYPE,
                "roles": ["data"],
                "title": f"{year} mosaic, Cloud-Optimized GeoTIFF (EPSG:3857)",
            }
        res_x, res_y = (x1[i] - x0[i]) / REGION_PX, (y1[i] - y0[i]) / REGION_PX
        items.append(
            {
                "type": "Feature",
                "stac_version": STAC_VERSION,
                "stac_extensions": [PROJECTION_EXT],
                "id": rid,
                "collection": "database",
                "geometry": geometries[i],
                "bbox": [float(west[i]), float(south[i]), float(east[i]), float(north[i])],
                "properties": {
                    "datetime": None,
                    "start_datetime": start,
                    "end_datetime": end,
                    "earthloc:zoom": int(zoom),
                    "earthloc:years": sorted(int(y) for y in images.get(rid, {})),
                    "proj:code": "EPSG:3857",
                    "proj:bbox": [float(x0[i]), float(y0[i]), float(x1[i]), float(y1[i])],
                    "proj:shape": [REGION_PX, REGION_PX],
                    "proj:transform": [float(res_x), 0.0, float(x0[i]), 0.0, -float(res_y), float(y1[i])],
                },
                "links": [
                    {
                        "rel": "collection",
                        "href": "./database.json",
                        "type": "application/json",
                        "title": "database regions",
                    }
                ],
                "assets": assets,
            }
        )
    return items


def stac_bbox(geom: shapely.Geometry) -> list[float]:
    """[west, south, east, north] of a lon/lat geometry; for one split at the antimeridian
    (parts touching both +180 and -180) west > east, as STAC prescribes, instead of a box
    around the whole world."""
    minx, miny, maxx, maxy = (float(v) for v in shapely.bounds(geom))
    parts = shapely.get_parts(geom)
    bounds = shapely.bounds(parts)
    if len(parts) > 1 and np.isclose(bounds[:, 2].max(), 180.0) and np.isclose(bounds[:, 0].min(), -180.0):
        eastern = bounds[bounds[:, 0] > 0.0]  # parts ending at +180
        western = bounds[bounds[:, 2] < 0.0]  # parts starting at -180
        if len(eastern) and len(western) and len(eastern) + len(western) == len(parts):
            return [float(eastern[:, 0].min()), miny, float(western[:, 2].max()), maxy]
    return [minx, miny, maxx, maxy]


def query_items(queries: pd.DataFrame, photos: Mapping[str, str], *, tiles_href: str) -> list[dict[str, Any]]:
    """One STAC Item per astronaut photo. `photos[query_id]` is the photo's path relative to
    the tile store when it is there."""
    items = []
    for row in queries.itertuples(index=False):
        geom = row.geometry
        date = datetime.strptime(str(row.date), "%Y%m%d").replace(tzinfo=UTC)
        assets = {}
        if row.query_id in photos:
            assets["photo"] = {
                "href": f"{tiles_href}/{photos[row.query_id]}",
                "type": JPEG_TYPE,
                "roles": ["data"],
                "title": "photo as the pipeline stores it (1024x1024 JPEG)",
            }
        # Every link of every item has the same keys: Parquet stores them as one struct type.
        links = [{"rel": "collection", "href": "./queries.json", "type": "application/json", "title": "query photos"}]
        if row.url:
            links.append({"rel": "via", "href": str(row.url), "type": JPEG_TYPE, "title": "NASA's image"})
        items.append(
            {
                "type": "Feature",
                "stac_version": STAC_VERSION,
                "stac_extensions": [],
                "id": str(row.query_id),
                "collection": "queries",
                "geometry": json.loads(shapely.to_geojson(geom)),
                "bbox": stac_bbox(geom),
                "properties": {
                    "datetime": _iso(date),
                    "platform": "ISS",
                    "earthloc:mission": str(row.mission),
                    "earthloc:roll": str(row.roll),
                    "earthloc:frame": str(row.frame),
                    "earthloc:nadir": [float(row.nadir_lon), float(row.nadir_lat)],
                    "earthloc:orientation_deg": None if pd.isna(row.orientation) else float(row.orientation),
                    "earthloc:area_km2": float(row.area_km2),
                    "earthloc:filename": str(row.filename),
                },
                "links": links,
                "assets": assets,
            }
        )
    return items


def _extent(bboxes: np.ndarray, start: str | None, end: str | None) -> dict[str, Any]:
    if len(bboxes):
        lo, hi = bboxes.min(axis=0), bboxes.max(axis=0)
        box = [float(lo[0]), float(lo[1]), float(hi[2]), float(hi[3])]
    else:
        box = [-180.0, -90.0, 180.0, 90.0]
    return {"spatial": {"bbox": [box]}, "temporal": {"interval": [[start, end]]}}


def _bboxes(items: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.asarray([it["bbox"] for it in items], dtype=np.float64).reshape(-1, 4)


def _collection(
    cid: str,
    title: str,
    description: str,
    license_: str,
    extent: dict[str, Any],
    providers: list[dict[str, Any]],
    links: list[dict[str, Any]],
    assets: dict[str, Any],
    extensions: Sequence[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(extensions),
        "id": cid,
        "title": title,
        "description": description,
        "license": license_,
        "providers": providers,
        "extent": extent,
        "links": links,
        "assets": assets,
        **extra,
    }


def _root_links(self_name: str) -> list[dict[str, Any]]:
    return [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "./catalog.json", "type": "application/json"},
        {"rel": "self", "href": f"./{self_name}", "type": "application/json"},
    ]


def database_collection(items: Sequence[Mapping[str, Any]], source: str, years: Sequence[int]) -> dict[str, Any]:
    lic = _DATABASE_SOURCES[source]
    links = _root_links("database.json")
    if lic["license"].startswith("CC-"):
        links.append(
            {
                "rel": "license",
                "href": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
                "type": "text/html",
                "title": "CC BY-NC-SA 4.0",
            }
        )
    start, end = year_span(years)
    fetched = sum(1 for it in items if it["assets"])
    return _collection(
        "database",
        lic["title"],
        lic["description"],
        lic["license"],
        _extent(_bboxes(items), start, end),
        lic["providers"],
        links,
        {
            "items": {
                "href": "./database.parquet",
                "type": PARQUET_TYPE,
                "roles": ["stac-items"],
                "title": "the region Items (stac-geoparquet)",
            }
        },
        [PROJECTION_EXT],
        attribution=lic["attribution"],
        summaries={
            "earthloc:zoom": sorted({int(it["properties"]["earthloc:zoom"]) for it in items}),
            "proj:code": ["EPSG:3857"],
            "earthloc:years": [int(y) for y in sorted(years)],
        },
        **{"earthloc:num_regions": len(items), "earthloc:num_regions_fetched": fetched},
    )


def queries_collection(items: Sequence[Mapping[str, Any]], photo_source: str) -> dict[str, Any]:
    dates = sorted(it["properties"]["datetime"] for it in items)
    synthetic = photo_source == "synthetic"
    description = (
        "Astronaut photos of Earth from the ISS (NASA's Gateway to Astronaut Photography of Earth): footprint "
        "(the photo's four corners as NASA published them), acquisition date, nadir point and orientation. "
        + (
            "The photo assets are SYNTHETIC: rendered by the pipeline from its synthetic Earth over each real "
            "footprint, not NASA's photos."
            if synthetic
            else "The photo assets are NASA's photos, resized."
        )
    )
    # Extension fields (names with a colon) reach _collection's **extra as a mapping.
    counts: dict[str, Any] = {
        "earthloc:num_queries": len(items),
        "earthloc:num_photos": sum(1 for it in items if it["assets"]),
    }
    providers = [
        {
            "name": "NASA Johnson Space Center, Earth Science and Remote Sensing Unit",
            "roles": ["producer", "licensor"],
            "url": "https://eol.jsc.nasa.gov",
        }
    ]
    if synthetic:
        providers.append({"name": "earthloc-pipeline (synthetic photos)", "roles": ["processor"]})
    return _collection(
        "queries",
        "Astronaut photos (queries)",
        description,
        "other",
        _extent(_bboxes(items), dates[0] if dates else None, dates[-1] if dates else None),
        providers,
        _root_links("queries.json"),
        {
            "items": {
                "href": "./queries.parquet",
                "type": PARQUET_TYPE,
                "roles": ["stac-items"],
                "title": "the photo Items (stac-geoparquet)",
            }
        },
        attribution=_NASA_CREDIT + ("; photos rendered synthetically by earthloc-pipeline" if synthetic else ""),
        **counts,
    )


def evalset_collection(
    name: str,
    set_dir: Path,
    queries_rel: str,
    regions: pd.DataFrame,
    query_items_by_id: Mapping[str, Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """A Collection that names the set's query and database items (ids in `queries` and
    `database`) and carries its files as assets."""
    q = pd.read_csv(set_dir / "queries.csv", usecols=["query_id"], dtype=str)
    d = pd.read_csv(set_dir / "database.csv", usecols=["region_id"], dtype=str)
    qids, rids = q["query_id"].tolist(), d["region_id"].tolist()
    unknown = [r for r in rids if r not in regions.index]
    if unknown:
        raise IntegrityError(f"{set_dir}/database.csv: region {unknown[0]} is not in the grid")
    unknown = [x for x in qids if x not in query_items_by_id]
    if unknown:
        raise IntegrityError(f"{set_dir}/queries.csv: query {unknown[0]} is not in the query footprints")
    dates = sorted(query_items_by_id[x]["properties"]["datetime"] for x in qids)
    boxes = np.asarray(
        [query_items_by_id[x]["bbox"] for x in qids]
        + regions.loc[rids, ["west", "south", "east", "north"]].to_numpy().tolist(),
        dtype=np.float64,
    ).reshape(-1, 4)
    assets = {
        f: {"href": f"{queries_rel}/{name}/{f}", "type": t, "roles": ["metadata"]}
        for f, t in (
            ("queries.csv", "text/csv"),
            ("database.csv", "text/csv"),
            ("positives.parquet", PARQUET_TYPE),
            ("dropped.csv", "text/csv"),
        )
        if (set_dir / f).is_file()
    }
    links = [
        *_root_links(f"evalset-{name}.json"),
        {"rel": "derived_from", "href": "./queries.json", "type": "application/json", "title": "query photos"},
        {"rel": "derived_from", "href": "./database.json", "type": "application/json", "title": "database regions"},
    ]
    keep = {k: summary[k] for k in ("num_db", "num_positives", "db_radius_km", "query_radius_km") if k in summary}
    return _collection(
        f"evalset-{name}",
        f"Evaluation set {name}",
        f"Evaluation set {name}: {len(qids)} query photos (Items of the `queries` collection, listed in "
        f"`earthloc:queries`) against {len(rids)} database regions (Items of `database`, in `earthloc:database`).",
        "other",
        _extent(boxes, dates[0] if dates else None, dates[-1] if dates else None),
        [],
        links,
        assets,
        **{"earthloc:queries": qids, "earthloc:database": rids, "earthloc:summary": keep},
    )


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def model_item(
    model_path: Path, href: str, recipe: Mapping[str, Any], metrics: Mapping[str, Any], years: Sequence[int]
) -> dict[str, Any]:
    """The model as an MLM Item: what it is, what it takes, what it gives, how it was trained
    and how it scored. Reads the checkpoint (any format `earthloc.published` loads)."""
    import torch

    from earthloc.model import parameter_counts
    from earthloc.published import load_checkpoint, preprocessing

    ckpt = load_checkpoint(model_path)
    cfg, pre = ckpt.cfg, preprocessing(ckpt.cfg)
    total, _ = parameter_counts(ckpt.model)
    hyper: dict[str, Any] = {}
    _flatten("", {"model": cfg.to_dict(), **{k: v for k, v in recipe.items() if k != "model"}}, hyper)
    hyper = {k: v for k, v in hyper.items() if v is not None} or {"model.backbone": cfg.backbone}
    # (x / 255 - mean) / std  ==  (x - 255 mean) / (255 std): one z-score per band on 0..255 pixels.
    scaling = [
        {"type": "z-score", "mean": m / pre.scale, "stddev": s / pre.scale}
        for m, s in zip(pre.mean, pre.std, strict=True)
    ]
    start, end = year_span(years)
    bands = [{"name": name, "description": f"8-bit {name} channel"} for name in ("red", "green", "blue")]
    props = {
        "datetime": None,
        "start_datetime": start,
        "end_datetime": end,
        "title": "EarthLoc retrieval model",
        "description": (
            "Embeds a satellite image or an astronaut photo into an L2-normalised descriptor; nearest "
            "descriptors (cosine similarity) find the database regions a photo shows."
        ),
        "mlm:name": "EarthLoc",
        "mlm:architecture": f"{cfg.backbone} (to layer3) + MixVPR ({cfg.mix_depth} mixers) + linear head",
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": torch.__version__.split("+")[0],
        "mlm:total_parameters": int(total),
        "mlm:pretrained": cfg.weights is not None,
        "mlm:pretrained_source": "ImageNet (torchvision ResNet weights)" if cfg.weights else None,
        "mlm:batch_size_suggestion": 16,
        "mlm:accelerator": None,
        # STAC 1.1 common-metadata bands, which the MLM input's band names refer to: the MLM schema
        # wants named input bands described (STAC bands, eo:bands or raster:bands), and STAC 1.1
        # allows `bands` in properties only when an asset carries them too (the weights, below).
        "bands": list(bands),
        "mlm:input": [
            {
                "name": "RGB image",
                "bands": ["red", "green", "blue"],
                "input": {
                    "shape": [-1, 3, cfg.image_size, cfg.image_size],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "description": (
                    f"8-bit RGB resized (shorter side, bilinear, antialiased) to {pre.size} and centre-cropped "
                    f"square, then / 255 and standardised with ImageNet's mean {list(pre.mean)} and std "
                    f"{list(pre.std)}; the model's own input_norm: {pre.input_norm}"
                ),
                "value_scaling": scaling,
                "resize_type": "interpolation-linear",
            }
        ],
        "mlm:output": [
            {
                "name": "descriptor",
                "tasks": ["similarity-search"],
                "result": {
                    "shape": [-1, cfg.descriptor_dim],
                    "dim_order": ["batch", "embedding"],
                    "data_type": "float32",
                },
                "description": "L2-normalised descriptor; compare with the inner product",
            }
        ],
        "mlm:hyperparameters": hyper,
        "earthloc:metrics": dict(metrics),
        "earthloc:weights_format": ckpt.extra.get("weights_format", "earthloc"),
    }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_EXT],
        "id": "earthloc-model",
        "geometry": None,
        "properties": props,
        "links": _root_links("model.json"),
        "assets": {
            "weights": {
                "href": href,
                "type": "application/octet-stream; application=pytorch",
                "roles": ["mlm:model", "mlm:weights"],
                "title": "checkpoint (torch.save)",
                "mlm:artifact_type": "torch.save",
                "bands": list(bands),
            }
        },
    }


def eval_metrics(eval_dir: Path, sets: Iterable[str]) -> dict[str, Any]:
    """The model's Recall@N per evaluated set, from `earthloc evaluate`'s metrics.json."""
    out: dict[str, Any] = {}
    for name in sets:
        path = eval_dir / name / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        model = (m.get("methods") or {}).get("model") or {}
        out[name] = {k: v for k, v in model.items() if k.startswith("R@")} | {
            "num_queries": m.get("num_queries"),
            "num_db": m.get("num_db"),
        }
    return out


def root_catalog(children: Sequence[tuple[str, str]], source: str) -> dict[str, Any]:
    links = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "self", "href": "./catalog.json", "type": "application/json"},
    ]
    links += [
        {"rel": "child" if kind != "item" else "item", "href": f"./{name}", "type": "application/json"}
        for name, kind in children
    ]
    synthetic = " The database imagery is SYNTHETIC." if source == "synthetic" else ""
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": CATALOG_ID,
        "title": "EarthLoc pipeline build",
        "description": (
            "Database regions, astronaut photos, evaluation sets and the retrieval model built by "
            f"earthloc-pipeline.{synthetic}"
        ),
        "links": links,
    }


# ---------------------------------------------------------------------------
# Validation against the bundled schemas


def _schema(uri: str) -> dict[str, Any]:
    name = SCHEMA_FILES.get(uri.split("#", 1)[0])
    if name is None:
        raise IntegrityError(f"schema {uri} is not bundled in pipeline/stac_schemas (validation never downloads)")
    return json.loads(resources.files("pipeline").joinpath("stac_schemas", name).read_text(encoding="utf-8"))


_VALIDATORS: dict[str, Any] = {}


def _validator(uri: str) -> Any:
    """A Draft 7 validator for the bundled schema at `uri`, resolving every $ref offline."""
    if uri not in _VALIDATORS:
        from jsonschema import Draft7Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        # `retrieve` is the attrs alias of Registry's private field; mypy's dataclass_transform
        # support does not apply attrs aliases, so it sees no such parameter.
        registry = Registry(  # type: ignore[call-arg]
            retrieve=lambda ref: Resource.from_contents(_schema(ref), default_specification=DRAFT7)
        )
        registry = registry.with_resources(
            (u, Resource.from_contents(_schema(u), default_specification=DRAFT7)) for u in SCHEMA_FILES
        )
        _VALIDATORS[uri] = Draft7Validator(_schema(uri), registry=registry)
    return _VALIDATORS[uri]


def _first_violation(uri: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(where, message) of the most relevant violation of schema `uri`, or None if `obj` is valid."""
    from jsonschema.exceptions import best_match

    # best_match descends into oneOf/anyOf branches, so the message names the field at fault
    # rather than "not valid under any of the given schemas" for the whole object.
    err = best_match(_validator(uri).iter_errors(obj))
    if err is None:
        return None
    return "/".join(str(p) for p in err.absolute_path) or "(top level)", err.message.splitlines()[0][:300]


def validate(obj: Mapping[str, Any]) -> None:
    """IntegrityError naming the object, the schema and its first violation, if any.

    Checks the STAC core schema of the object's type, then each extension schema the object
    declares in `stac_extensions` (all bundled: see EXTENSION_SCHEMAS).
    """
    kind = obj.get("type")
    if kind not in CORE_SCHEMA:
        raise IntegrityError(f"STAC object {obj.get('id')!r}: type {kind!r} is not Feature, Catalog or Collection")
    checks = [(CORE_SCHEMA[kind], f"STAC {STAC_VERSION} schema")]
    for ext in obj.get("stac_extensions") or []:
        if ext not in EXTENSION_SCHEMAS:
            raise IntegrityError(
                f"STAC {kind} {obj.get('id')!r} declares extension {ext}, whose schema is not bundled in "
                "pipeline/stac_schemas (validation never downloads)"
            )
        checks.append((ext, f"{EXTENSION_SCHEMAS[ext]} extension schema"))
    for uri, label in checks:
        found = _first_violation(uri, obj)
        if found is not None:
            where, message = found
            raise IntegrityError(f"STAC {kind} {obj.get('id')!r} fails the {label} at {where}: {message}")


def _validate_items(items: Sequence[Mapping[str, Any]], limit: int) -> int:
    if limit == 0 or len(items) <= limit:
        chosen = items
    else:  # spread over the file: first, last and evenly between
        chosen = [items[i] for i in np.linspace(0, len(items) - 1, limit).astype(int)]
    for it in chosen:
        validate(it)
    return len(chosen)


# ---------------------------------------------------------------------------
# Stage


def _fetched_images(tiles: Path, years: Sequence[int], zooms: Sequence[int]) -> dict[str, dict[int, str]]:
    """region_id -> {year: path relative to the tile store} for every image a manifest lists as ok."""
    out: dict[str, dict[int, str]] = {}
    for year in years:
        for zoom in zooms:
            path = tiles / "manifests" / f"{year}_{zoom:02d}.parquet"
            if not path.is_file():
                continue
            m = pd.read_parquet(path, columns=["region_id", "path", "status"])
            for rid, rel in m.loc[m["status"] == "ok", ["region_id", "path"]].itertuples(index=False):
                if not (tiles / rel).is_file():
                    raise IntegrityError(f"{path}: {rel} is listed as fetched but is not in {tiles}")
                out.setdefault(rid, {})[int(year)] = rel
    return out


def _stored_photos(tiles: Path) -> dict[str, str]:
    path = tiles / "queries" / "manifest.parquet"
    if not path.is_file():
        return {}
    m = pd.read_parquet(path, columns=["query_id", "path", "status"])
    return dict(m.loc[m["status"] == "ok", ["query_id", "path"]].itertuples(index=False))


def _exported_cogs(export_dir: Path | None, region_ids: set[str], rel_to: Path) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    if export_dir is None or not export_dir.is_dir():
        return out
    for tif in sorted(export_dir.glob("*_*.tif")):
        rid, _, year = tif.stem.rpartition("_")
        if rid in region_ids and year.isdigit():
            out.setdefault(rid, {})[int(year)] = _relhref(tif, rel_to)
    return out


def _relhref(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def write_items_parquet(items: Sequence[dict[str, Any]], dest: Path) -> None:
    """stac-geoparquet, written atomically. An empty list still gives a readable file."""
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    with atomic_path(dest) as tmp:
        if items:
            to_parquet(parse_stac_items_to_arrow(list(items)), tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)


def run(p: CatalogParams, ctx: BuildContext) -> dict[str, Any]:
    out = Path(p.out_dir)
    tiles = Path(p.tiles_root)
    out.mkdir(parents=True, exist_ok=True)
    tiles_href = _relhref(tiles, out)
    if not ctx.years:
        raise ConfigError("fetch.years is empty: the database items need the years of their imagery")

    grid = read_geoparquet(p.grid)
    needed = {"region_id", "zoom", *CORNER_COLUMNS}
    missing = needed - set(grid.columns)
    if missing:
        raise InputError(f"{p.grid}: columns {sorted(missing)} missing: not a grid from `earthloc grid`")
    images = _fetched_images(tiles, ctx.years, ctx.zooms)
    unknown = sorted(set(images) - set(grid["region_id"]))
    if unknown:
        raise IntegrityError(f"{tiles}/manifests: region {unknown[0]} was fetched but is not in {p.grid}")
    cogs = _exported_cogs(Path(p.export_dir) if p.export_dir else None, set(grid["region_id"]), out)
    db_items = region_items(grid, images, ctx.years, tiles_href=tiles_href, cogs=cogs)

    queries = read_geoparquet(p.queries)
    q_items = query_items(queries, _stored_photos(tiles), tiles_href=tiles_href)

    checked = _validate_items(db_items, p.validate_items) + _validate_items(q_items, p.validate_items)
    write_items_parquet(db_items, out / "database.parquet")
    write_items_parquet(q_items, out / "queries.parquet")
    docs: dict[str, dict[str, Any]] = {
        "database.json": database_collection(db_items, ctx.source, ctx.years),
        "queries.json": queries_collection(q_items, ctx.photo_source),
    }
    by_id = {it["id"]: it for it in q_items}
    region_box = pd.DataFrame(
        [it["bbox"] for it in db_items], columns=["west", "south", "east", "north"], index=[it["id"] for it in db_items]
    )
    sets_dir = Path(p.evalsets_dir)
    described = []
    for name in ctx.sets:
        set_dir = sets_dir / name
        if not (set_dir / "queries.csv").is_file():
            continue  # not built (yet): nothing to describe
        summary_path = set_dir / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        docs[f"evalset-{name}.json"] = evalset_collection(
            name, set_dir, _relhref(sets_dir, out), region_box, by_id, summary
        )
        described.append(name)
    children = [(n, "collection") for n in docs]
    if p.model is not None and Path(p.model).is_file():
        docs["model.json"] = model_item(
            Path(p.model), _relhref(Path(p.model), out), ctx.recipe, eval_metrics(Path(p.eval_dir), ctx.sets), ctx.years
        )
        children.append(("model.json", "item"))
    docs["catalog.json"] = root_catalog(children, ctx.source)
    for name, doc in docs.items():
        validate(doc)
        write_json(out / name, doc)
    return {
        "out_dir": str(out),
        "regions": len(db_items),
        "regions_fetched": sum(1 for it in db_items if it["assets"]),
        "queries": len(q_items),
        "photos": sum(1 for it in q_items if it["assets"]),
        "evalsets": described,
        "model": "model.json" in docs,
        "items_validated": checked,
        "documents_validated": len(docs),
    }
