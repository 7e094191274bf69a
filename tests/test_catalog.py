"""The catalog stage on a small real build: a grid over Texas, real NASA footprints, a tile
store with manifests, an evaluation set and a small trained-shape model. Every document and
every item is valid STAC against the bundled schemas, pystac reads the catalog back, DuckDB
finds exactly the regions the grid puts in a box, and the model's MLM description matches
the checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import duckdb  # a pinned dev dependency: missing means a broken environment, not a skip
import numpy as np
import pandas as pd
import pystac
import pytest
import shapely
from PIL import Image
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from stac_geoparquet.arrow import stac_table_to_items

from earthloc.model import load_model, parameter_counts
from pipeline.errors import IntegrityError
from pipeline.geo.names import db_relpath
from pipeline.io import read_geoparquet, write_geoparquet, write_json
from pipeline.params import load_params, section
from pipeline.stages import catalog, grid, queries
from retrieval_support import tiny_checkpoint
from support import ROOT, texas_csv

CORNERS = ["ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon"]
YEARS = (2020, 2021)


def _build_inputs(root: Path) -> tuple[catalog.CatalogParams, catalog.BuildContext, pd.DataFrame]:
    g = grid.build_grid(grid.GridParams.from_section({"zooms": [9, 10], "bbox": [-98.0, 28.0, -93.0, 32.0]}))
    write_geoparquet(g, root / "data/grid/regions.parquet")
    qp = queries.QueriesParams.from_section(section(load_params(ROOT / "params.yaml"), "queries"))
    out = root / "data/queries/queries.parquet"
    queries.run(qp, queries.QueriesPaths(texas_csv(root / "in.csv", 6), out, root / "data/queries/rejected.csv"))
    qs = read_geoparquet(out)
    tiles = root / "tiles"
    fetched = g.iloc[:5]
    for year in YEARS:
        for zoom in (9, 10):
            rows = []
            for r in fetched[fetched["zoom"] == zoom].itertuples(index=False):
                rel = db_relpath(
                    [getattr(r, c) for c in CORNERS], r.region_id, r.zoom, year, r.center_lat, r.center_lon, r.area_km2
                )
                (tiles / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (year % 256, 80, 40)).save(tiles / rel)
                rows.append({"region_id": r.region_id, "path": rel, "status": "ok"})
            rows.append({"region_id": g.iloc[-1]["region_id"], "path": "database/none.jpg", "status": "failed"})
            (tiles / "manifests").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(tiles / "manifests" / f"{year}_{zoom:02d}.parquet")
    photo = qs.iloc[0]
    (tiles / "queries").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16)).save(tiles / "queries" / photo["filename"])
    pd.DataFrame(
        [
            {"query_id": photo["query_id"], "path": f"queries/{photo['filename']}", "status": "ok"},
            {"query_id": qs.iloc[1]["query_id"], "path": "queries/x.jpg", "status": "failed"},
        ]
    ).to_parquet(tiles / "queries" / "manifest.parquet")
    set_dir = root / "data/evalsets/tiny"
    set_dir.mkdir(parents=True)
    qs[["query_id", "filename"]].iloc[:4].to_csv(set_dir / "queries.csv", index=False)
    g[["region_id", "zoom"]].iloc[:7].to_csv(set_dir / "database.csv", index=False)
    write_json(set_dir / "summary.json", {"num_db": 7, "num_positives": 11})
    model = tiny_checkpoint(root / "models/earthloc.pt")
    write_json(
        root / "data/eval/tiny/metrics.json",
        {"num_queries": 4, "num_db": 7, "methods": {"model": {"R@1": 25.0, "R@5": 50.0, "collapsed": {}}}},
    )
    (root / "export").mkdir()
    (root / "export" / f"{fetched.iloc[0]['region_id']}_2021.tif").write_bytes(b"II*\x00")
    p = catalog.CatalogParams(
        out_dir=str(root / "data/catalog"),
        grid=str(root / "data/grid/regions.parquet"),
        queries=str(root / "data/queries/queries.parquet"),
        tiles_root=str(tiles),
        evalsets_dir=str(root / "data/evalsets"),
        eval_dir=str(root / "data/eval"),
        model=str(model),
        export_dir=str(root / "export"),
        validate_items=0,
    )
    ctx = catalog.BuildContext(
        YEARS,
        (9, 10),
        "synthetic",
        "synthetic",
        ("tiny", "absent"),
        {"train": {"lr": 1e-4, "batch_regions": 8}, "loss": {"margin": 0.1}},
    )
    return p, ctx, g


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame, catalog.CatalogParams]:
    root = tmp_path_factory.mktemp("build")
    p, ctx, g = _build_inputs(root)
    summary = catalog.run(p, ctx)
    return Path(p.out_dir), summary, g, p


def _items(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return list(stac_table_to_items(pq.read_table(path)))


def test_summary_counts_what_was_built(built) -> None:
    _, s, g, _ = built
    assert s["regions"] == len(g) and s["regions_fetched"] == 5
    assert s["queries"] == 6 and s["photos"] == 1
    assert s["evalsets"] == ["tiny"] and s["model"] is True
    assert s["items_validated"] == len(g) + 6


def test_every_document_and_item_read_back_is_valid_stac(built) -> None:
    out, _, g, _ = built
    docs = sorted(out.glob("*.json"))
    assert {d.name for d in docs} == {
        "catalog.json",
        "database.json",
        "queries.json",
        "evalset-tiny.json",
        "model.json",
    }
    for d in docs:
        catalog.validate(json.loads(d.read_text()))
    for name in ("database.parquet", "queries.parquet"):
        items = _items(out / name)
        assert items
        for it in items:
            catalog.validate(it)
    assert len(_items(out / "database.parquet")) == len(g)


def test_schema_violation_and_unbundled_schema_are_one_line_errors() -> None:
    with pytest.raises(IntegrityError, match=r"'r1' fails the STAC 1\.1\.0 schema at bbox"):
        catalog.validate(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": "r1",
                "geometry": None,
                "bbox": "west",
                "properties": {"datetime": None},
                "links": [],
                "assets": {},
            }
        )
    eo = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
    with pytest.raises(IntegrityError, match="not bundled"):
        catalog._schema(eo)
    with pytest.raises(
        IntegrityError, match=r"'r1' declares extension .*/eo/v2\.0\.0/schema\.json, whose schema is not bundled"
    ):
        catalog.validate(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "stac_extensions": [eo],
                "id": "r1",
                "geometry": None,
                "properties": {"datetime": "2021-01-01T00:00:00Z"},
                "links": [],
                "assets": {},
            }
        )


def test_bundled_extension_schemas_carry_the_uri_they_are_registered_under() -> None:
    from importlib import resources

    bundled = {
        uri for uri in catalog.SCHEMA_FILES if not uri.startswith(("https://schemas.stacspec.org/", "https://geojson"))
    }
    assert set(catalog.EXTENSION_SCHEMAS) < bundled
    for uri in bundled:
        text = resources.files("pipeline").joinpath("stac_schemas", catalog.SCHEMA_FILES[uri]).read_text()
        assert json.loads(text)["$id"].rstrip("#") == uri


def _shipped_region_item(built) -> dict:
    out, _, _, _ = built
    item = _items(out / "database.parquet")[0]
    assert catalog.PROJECTION_EXT in item["stac_extensions"]
    return item


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("proj:shape", "1024x1024", "'1024x1024' is not of type 'array'"),
        ("proj:shape", [1024], "is too short"),
        ("proj:code", 3857, "3857 is not of type 'string', 'null'"),
        ("proj:transform", [1.0, 0.0], "not valid under any of the given schemas"),
    ],
)
def test_region_item_breaking_the_projection_extension_fails_at_that_field(built, field, value, message) -> None:
    item = _shipped_region_item(built)
    catalog.validate(item)  # the shipped item passes the core and the projection schema
    item["properties"][field] = value
    with pytest.raises(IntegrityError) as err:
        catalog.validate(item)
    text = str(err.value)
    assert "\n" not in text
    assert f"fails the projection v2.0.0 extension schema at properties/{field}: " in text and message in text


def _shipped_model_document(built) -> dict:
    out, _, _, _ = built
    doc = json.loads((out / "model.json").read_text())
    assert catalog.MLM_EXT in doc["stac_extensions"]
    catalog.validate(doc)  # as shipped: valid against the core and the MLM schema
    return doc


@pytest.mark.parametrize("field", ["mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output"])
def test_model_document_missing_a_required_mlm_field_fails_naming_it(built, field) -> None:
    doc = _shipped_model_document(built)
    del doc["properties"][field]
    with pytest.raises(IntegrityError) as err:
        catalog.validate(doc)
    text = str(err.value)
    assert "\n" not in text
    assert "'earthloc-model' fails the MLM v1.4.0 extension schema at properties: " in text
    assert f"'{field}' is a required property" in text


def test_model_document_breaking_mlm_rules_fails_at_the_field(built) -> None:
    doc = _shipped_model_document(built)
    doc["properties"]["mlm:input"][0]["input"]["data_type"] = "float33"  # checked by the raster schema it $refs
    with pytest.raises(
        IntegrityError, match=r"MLM v1\.4\.0 extension schema at properties/mlm:input/0/input/data_type"
    ):
        catalog.validate(doc)
    doc = _shipped_model_document(built)
    del doc["assets"]["weights"]["mlm:artifact_type"]  # a model asset must say how it was saved
    with pytest.raises(IntegrityError, match=r"at assets/weights: 'mlm:artifact_type' is a required property"):
        catalog.validate(doc)
    doc = _shipped_model_document(built)
    doc["properties"]["mlm:tasks"] = ["place-recognition"]
    with pytest.raises(IntegrityError, match=r"at properties/mlm:tasks/0: 'place-recognition' is not one of"):
        catalog.validate(doc)


def test_projjson_is_checked_against_the_bundled_proj_schema_without_network(built, monkeypatch) -> None:
    import socket

    from pyproj import CRS

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    catalog._VALIDATORS.clear()  # build the validators again under the patch
    _shipped_model_document(built)  # the MLM schema and the raster schema it references
    item = _shipped_region_item(built)
    item["properties"]["proj:projjson"] = CRS.from_epsg(3857).to_json_dict()
    catalog.validate(item)
    item["properties"]["proj:projjson"] = {"type": "ProjectedCRS", "name": 3857}
    with pytest.raises(IntegrityError, match="projection v2.0.0 extension schema at properties/proj:projjson"):
        catalog.validate(item)


def test_pystac_reads_the_catalog_and_assets_resolve_to_files(built) -> None:
    out, _, g, _ = built
    root = pystac.Catalog.from_file(str(out / "catalog.json"))
    children = {c.id: c for c in root.get_children()}
    assert set(children) == {"database", "queries", "evalset-tiny"}
    db = children["database"]
    assert isinstance(db, pystac.Collection) and db.license == "MIT" and "SYNTHETIC" in db.description
    assert "SYNTHETIC" in children["queries"].description
    model = next(root.get_items())
    assert model.id == "earthloc-model"
    for it in _items(out / "database.parquet") + _items(out / "queries.parquet"):
        for asset in it["assets"].values():
            assert (out / asset["href"]).resolve().is_file(), asset["href"]
    db_items = {it["id"]: it for it in _items(out / "database.parquet")}
    fetched = [it for it in db_items.values() if it["assets"]]
    assert len(fetched) == 5
    first = db_items[g.iloc[0]["region_id"]]
    assert set(first["assets"]) == {"image_2020", "image_2021", "cog_2021"}
    assert first["properties"]["earthloc:years"] == list(YEARS)


def test_projection_extension_matches_the_web_mercator_tiles(built) -> None:
    out, _, g, _ = built
    import mercantile

    for it in _items(out / "database.parquet")[:20]:
        item = pystac.Item.from_dict(it)
        proj = ProjectionExtension.ext(item)
        assert proj.code == "EPSG:3857" and proj.shape == [1024, 1024]
        zoom, row, col = (int(v) for v in it["id"].split("_"))
        ul, lr = mercantile.xy_bounds(col, row, zoom), mercantile.xy_bounds(col + 3, row + 3, zoom)
        np.testing.assert_allclose(proj.bbox, [ul.left, lr.bottom, lr.right, ul.top], rtol=0, atol=1e-3)
        west, south, east, north = it["bbox"]
        assert shapely.geometry.shape(it["geometry"]).equals(shapely.box(west, south, east, north))


def test_duckdb_bbox_and_date_search_returns_exactly_the_grid_regions_in_the_box(built) -> None:
    out, _, g, _ = built
    box = (-96.37, 29.21, -94.83, 30.77)
    want = set(g.loc[g.intersects(shapely.box(*box)), "region_id"])
    assert 0 < len(want) < len(g)
    sql = (
        f"SELECT id FROM read_parquet('{out / 'database.parquet'}') WHERE bbox.xmin <= ? AND bbox.xmax >= ? "
        "AND bbox.ymin <= ? AND bbox.ymax >= ? AND start_datetime <= ?::TIMESTAMPTZ AND end_datetime >= ?::TIMESTAMPTZ"
    )
    con = duckdb.connect()
    got = {r[0] for r in con.execute(sql, [box[2], box[0], box[3], box[1], "2021-06-30", "2021-06-01"]).fetchall()}
    assert got == want
    assert con.execute(sql, [box[2], box[0], box[3], box[1], "2015-12-31", "2015-01-01"]).fetchall() == []
    q = con.execute(f"SELECT id, year(datetime) FROM read_parquet('{out / 'queries.parquet'}') ORDER BY id").fetchall()
    assert len(q) == 6 and all(y >= 2000 for _, y in q)


def test_evaluation_set_collection_names_its_queries_and_database(built) -> None:
    out, _, g, _ = built
    ev = json.loads((out / "evalset-tiny.json").read_text())
    q_ids = {it["id"] for it in _items(out / "queries.parquet")}
    assert len(ev["earthloc:queries"]) == 4 and set(ev["earthloc:queries"]) <= q_ids
    assert ev["earthloc:database"] == g["region_id"].iloc[:7].tolist()
    assert {"queries.csv", "database.csv"} <= set(ev["assets"])
    for a in ev["assets"].values():
        assert (out / a["href"]).resolve().is_file()


def test_model_item_describes_the_checkpoint_with_mlm(built) -> None:
    out, _, _, p = built
    item = pystac.Item.from_file(str(out / "model.json"))
    mlm = MLMExtension.ext(item)
    model, cfg = load_model(p.model)
    assert mlm.tasks == ["similarity-search"] and mlm.framework == "PyTorch"
    assert mlm.total_parameters == parameter_counts(model)[0]
    inp = mlm.input[0]
    assert inp.input.shape == [-1, 3, cfg.image_size, cfg.image_size] and inp.bands == ["red", "green", "blue"]
    scaling = item.properties["mlm:input"][0]["value_scaling"]  # an array per band (MLM >= 1.3)
    assert [s["type"] for s in scaling] == ["z-score"] * 3
    np.testing.assert_allclose([s["mean"] for s in scaling], [m * 255 for m in (0.485, 0.456, 0.406)])
    np.testing.assert_allclose([s["stddev"] for s in scaling], [v * 255 for v in (0.229, 0.224, 0.225)])
    assert mlm.output[0].result.shape == [-1, cfg.descriptor_dim]
    hyper = item.properties["mlm:hyperparameters"]
    assert hyper["train.lr"] == 1e-4 and hyper["model.backbone"] == "resnet18"
    assert item.properties["earthloc:metrics"]["tiny"]["R@5"] == 50.0
    assert "mlm:model" in item.assets["weights"].roles
    assert (out / item.assets["weights"].href).resolve() == Path(p.model).resolve()


def test_eox_source_carries_its_licence_and_attribution(tmp_path) -> None:
    p, ctx, _ = _build_inputs(tmp_path)
    catalog.run(replace(p, model=None), replace(ctx, source="eox"))
    db = json.loads((Path(p.out_dir) / "database.json").read_text())
    assert db["license"] == "CC-BY-NC-SA-4.0"
    assert "Copernicus Sentinel" in db["attribution"] and "modified" in db["attribution"]
    assert any(link["rel"] == "license" for link in db["links"])
    assert {pr["name"] for pr in db["providers"]} >= {"EOX IT Services GmbH"}
    assert not (Path(p.out_dir) / "model.json").exists()


def test_manifest_listing_a_missing_image_is_refused(tmp_path) -> None:
    p, ctx, _ = _build_inputs(tmp_path)
    m = pd.read_parquet(Path(p.tiles_root) / "manifests/2021_09.parquet")
    (Path(p.tiles_root) / m.loc[m["status"] == "ok", "path"].iloc[0]).unlink()
    with pytest.raises(IntegrityError, match="listed as fetched but is not in"):
        catalog.run(p, ctx)


def test_region_across_the_antimeridian_keeps_its_split_geometry_and_one_pixel_grid() -> None:
    import mercantile

    g = grid.build_grid(grid.GridParams.from_section({"zooms": [9], "bbox": [178.0, 50.0, -178.0, 53.0]}))
    items = {it["id"]: it for it in catalog.region_items(g, {}, YEARS, tiles_href="../../tiles")}
    crossing = g[g["ll_lon"] > g["lr_lon"]]
    assert len(crossing) and len(crossing) < len(g)
    for r in crossing.itertuples(index=False):
        it = items[r.region_id]
        catalog.validate(it)
        west, south, east, north = it["bbox"]
        assert west > east and (west, east) == (r.ll_lon, r.lr_lon)
        assert shapely.geometry.shape(it["geometry"]).equals(r.geometry)
        assert it["geometry"]["type"] == "MultiPolygon"
        x0, _, x1, _ = it["properties"]["proj:bbox"]
        tile = mercantile.xy_bounds(0, 0, 9)
        assert x1 - x0 == pytest.approx(4 * (tile.right - tile.left), rel=1e-9)
        assert x0 == pytest.approx(mercantile.xy(r.ll_lon, 0)[0], rel=1e-9) and x1 > 20037508.0


def test_stac_bbox_of_a_footprint_split_at_the_antimeridian() -> None:
    split = shapely.MultiPolygon([shapely.box(178.5, -10, 180, -8), shapely.box(-180, -10, -179, -8.5)])
    assert catalog.stac_bbox(split) == [178.5, -10.0, -179.0, -8.0]
    assert catalog.stac_bbox(shapely.box(10, 20, 11, 21)) == [10.0, 20.0, 11.0, 21.0]
    apart = shapely.MultiPolygon([shapely.box(10, 0, 11, 1), shapely.box(-11, 0, -10, 1)])
    assert catalog.stac_bbox(apart) == [-11.0, 0.0, 11.0, 1.0]
