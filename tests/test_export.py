"""GIS export: COGs in EPSG:3857 whose georeference matches mercantile and whose pixels match the JPEGs.

The tile store is made by the real fetch code against the local stub WMTS (zoom 5,
so a few regions are quick and one of them wraps the antimeridian)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import mercantile
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from PIL import Image

from earthloc.cli import main as cli_main
from fetch_stub import StubWmts
from pipeline.errors import EarthLocError
from pipeline.fetch.client import ClientConfig
from pipeline.fetch.run import RunConfig, fetch_regions
from pipeline.tools.export import (
    HALF_WORLD_M,
    ExportConfig,
    RegionKey,
    export_each,
    export_query,
    export_regions,
    plan_mosaic,
    region_relpath,
)

ROOT = Path(__file__).resolve().parents[1]
Z = 5
YEAR = 2021
# (row, col) of the regions in the store: a 2x2 block with a hole, one next to it
# (overlapping), and the region that wraps ±180 (cols 30, 31, 0, 1) with its neighbour at col 0.
REGIONS = [(10, 2), (10, 6), (14, 2), (10, 4), (10, 30), (10, 0)]
NOT_FOUND = (20, 10)  # one of its tiles answers 404, so the manifest records not_found


def rid(row: int, col: int, zoom: int = Z) -> str:
    return f"{zoom:02d}_{row:04d}_{col:04d}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiles")
    regions = pd.DataFrame([(Z, r, c) for r, c in [*REGIONS, NOT_FOUND]], columns=["zoom", "row", "col"])
    gone = (f"s2cloudless-{YEAR}_3857", Z, NOT_FOUND[0], NOT_FOUND[1])
    with StubWmts(missing={gone}) as stub:
        cfg = ClientConfig(url_template=stub.restful, contact="tests@example.invalid", max_concurrency=4,
                           min_interval_s=0.0, max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)  # fmt: skip
        summary = fetch_regions(regions, [YEAR], [Z], root, cfg, RunConfig(progress=False, source="synthetic"))
    assert summary["regions_written"] == len(REGIONS) and summary["regions_not_found"] == 1
    return root


def jpeg_pixels(root: Path, row: int, col: int) -> np.ndarray:
    key = RegionKey(rid(row, col), Z, row, col)
    with Image.open(root / region_relpath(key, YEAR)) as im:
        return np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)


def xy_bounds_of_block(zoom: int, row: int, col: int, rows: int, cols: int) -> tuple[float, float, float, float]:
    """Oracle: mercantile's bounds of the NW and SE tiles (SE column unwrapped by one world width)."""
    n = 1 << zoom
    nw = mercantile.xy_bounds(mercantile.Tile(col % n, row, zoom))
    se_col = col + cols - 1
    se = mercantile.xy_bounds(mercantile.Tile(se_col % n, row + rows - 1, zoom))
    shift = 2 * HALF_WORLD_M * ((se_col // n) - (col // n))
    return nw.left, se.bottom, se.right + shift, nw.top


def assert_cog(ds: rasterio.DatasetReader, blocksize: int = 256) -> None:
    """What makes it a COG that QGIS streams: internal tiles, overviews, the COG layout marker."""
    prof = ds.profile
    assert prof["tiled"] and prof["blockxsize"] == prof["blockysize"] == blocksize
    assert ds.overviews(1), "no overviews"
    assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_single_region_matches_mercantile_and_jpeg(store: Path, tmp_path: Path) -> None:
    row, col = REGIONS[0]
    res = export_regions(store, [rid(row, col)], YEAR, tmp_path / "one.tif")
    with rasterio.open(res.path) as ds:
        assert ds.crs.to_epsg() == 3857
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (1024, 1024, 3, "uint8")
        expected = xy_bounds_of_block(Z, row, col, 4, 4)
        assert tuple(ds.bounds) == pytest.approx(expected, abs=1e-6)
        assert ds.transform.a == pytest.approx((expected[2] - expected[0]) / 1024, rel=1e-12)
        assert_cog(ds)
        assert ds.profile["compress"] == "deflate"
        np.testing.assert_array_equal(ds.read(), jpeg_pixels(store, row, col))  # lossless copy
        assert ds.tags()["EARTHLOC_REGION_IDS"] == rid(row, col)
        assert "SYNTHETIC DATA" in ds.tags()["TIFFTAG_COPYRIGHT"]  # the shard's attribution travels along


def test_antimeridian_region_extends_east_of_the_world_edge(store: Path, tmp_path: Path) -> None:
    res = export_regions(store, [rid(10, 30)], YEAR, tmp_path / "wrap.tif")
    with rasterio.open(res.path) as ds:
        left, bottom, right, top = ds.bounds
        assert (left, bottom, right, top) == pytest.approx(xy_bounds_of_block(Z, 10, 30, 4, 4), abs=1e-6)
        assert right > HALF_WORLD_M  # tiles 0 and 1 sit one world width east
        assert right - 2 * HALF_WORLD_M == pytest.approx(mercantile.xy_bounds(mercantile.Tile(1, 10, Z)).right)
        np.testing.assert_array_equal(ds.read(), jpeg_pixels(store, 10, 30))


def test_mosaic_windows_mask_and_bounds(store: Path, tmp_path: Path) -> None:
    ids = [rid(10, 2), rid(10, 6), rid(14, 2)]  # an L: the SE quarter (rows 14-17, cols 6-9) is empty
    res = export_regions(store, ids, YEAR, tmp_path / "mosaic.tif")
    with rasterio.open(res.path) as ds:
        assert (ds.width, ds.height) == (2048, 2048)
        assert tuple(ds.bounds) == pytest.approx(xy_bounds_of_block(Z, 10, 2, 8, 8), abs=1e-6)
        assert_cog(ds)
        data = ds.read()
        np.testing.assert_array_equal(data[:, :1024, :1024], jpeg_pixels(store, 10, 2))
        np.testing.assert_array_equal(data[:, :1024, 1024:], jpeg_pixels(store, 10, 6))
        np.testing.assert_array_equal(data[:, 1024:, :1024], jpeg_pixels(store, 14, 2))
        mask = ds.dataset_mask()
        assert (mask[1024:, 1024:] == 0).all() and (mask[:1024, :] == 255).all() and (mask[:, :1024] == 255).all()


def test_mosaic_across_the_antimeridian_is_narrow(store: Path, tmp_path: Path) -> None:
    res = export_regions(store, [rid(10, 0), rid(10, 30)], YEAR, tmp_path / "am.tif")
    with rasterio.open(res.path) as ds:
        assert (ds.width, ds.height) == (6 * 256, 1024)  # cols 30..35 (= 30, 31, 0..3), not the whole world
        assert tuple(ds.bounds) == pytest.approx(xy_bounds_of_block(Z, 10, 30, 4, 6), abs=1e-6)
        data = ds.read()
        # col 0 was written after col 30 (east of it in the unwrapped frame), so it wins the overlap.
        np.testing.assert_array_equal(data[:, :, 512:], jpeg_pixels(store, 10, 0))
        np.testing.assert_array_equal(data[:, :, :512], jpeg_pixels(store, 10, 30)[:, :, :512])


def test_plan_mosaic_pure() -> None:
    def k(z: int, r: int, c: int) -> RegionKey:
        return RegionKey(rid(r, c, z), z, r, c)

    assert plan_mosaic([k(5, 10, 4)]) == (5, 10, 4, 4, 4)
    assert plan_mosaic([k(5, 10, 4), k(5, 12, 8)]) == (5, 10, 4, 6, 8)
    assert plan_mosaic([k(5, 0, 28), k(5, 0, 2), k(5, 0, 30)]) == (5, 0, 28, 4, 10)  # wraps: 28..37
    full = [k(3, 0, c) for c in range(0, 8, 2)]
    assert plan_mosaic(full) == (3, 0, 0, 4, 10)  # every column: start at 0, the last region runs past
    with pytest.raises(EarthLocError, match="one zoom"):
        plan_mosaic([k(5, 10, 4), k(6, 10, 4)])


def test_jpeg_compression_option(store: Path, tmp_path: Path) -> None:
    cfg = ExportConfig(compress="JPEG", jpeg_quality=90, blocksize=512)
    res = export_regions(store, [rid(10, 4)], YEAR, tmp_path / "j.tif", cfg)
    with rasterio.open(res.path) as ds:
        assert_cog(ds, blocksize=512)
        assert ds.profile["compress"] == "jpeg"
        diff = np.abs(ds.read().astype(np.int16) - jpeg_pixels(store, 10, 4).astype(np.int16))
        assert diff.mean() < 3.0  # lossy re-encoding, but the same picture


def test_each_writes_one_file_per_region(store: Path, tmp_path: Path) -> None:
    results = export_each(store, [rid(10, 2), rid(10, 6)], YEAR, tmp_path)
    assert [r.path.name for r in results] == [f"{rid(10, 2)}_{YEAR}.tif", f"{rid(10, 6)}_{YEAR}.tif"]
    assert not list(tmp_path.glob(".*"))  # no temp files left beside the outputs


def test_file_found_without_manifest(store: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    rel = region_relpath(RegionKey(rid(10, 2), Z, 10, 2), YEAR)
    (bare / rel).parent.mkdir(parents=True)
    shutil.copy(store / rel, bare / rel)
    res = export_regions(bare, [rid(10, 2)], YEAR, tmp_path / "b.tif")
    with rasterio.open(res.path) as ds:
        np.testing.assert_array_equal(ds.read(), jpeg_pixels(store, 10, 2))


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("5_10_2", "not a region id"),
        (rid(11, 2), "multiples of the grid stride"),
        (rid(30, 2), "outside the 32x32 tiles"),
        (rid(10, 40), "outside the 32x32 tiles"),
        (rid(12, 12), "no image at"),  # on the grid, never fetched
        (rid(*NOT_FOUND), "fetch status not_found"),
    ],
)
def test_bad_input_is_a_clear_error(store: Path, tmp_path: Path, region: str, message: str) -> None:
    with pytest.raises(EarthLocError, match=message):
        export_regions(store, [region], YEAR, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


def test_year_not_fetched_is_a_clear_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(EarthLocError, match="fetch shard 2019_05 first"):
        export_regions(store, [rid(10, 2)], 2019, tmp_path / "x.tif")


def _query_inputs(tmp_path: Path) -> tuple[Path, Path]:
    inter = pd.DataFrame(
        {"query_id": ["ISS001-E-1", "ISS001-E-1", "ISS001-E-1", "ISS002-E-2"],
         "region_id": [rid(10, 2), rid(10, 4), rid(10, 2, 6), rid(10, 6)],
         "zoom": [5, 5, 6, 5], "intersection_km2": [1.0] * 4, "iou": [0.1] * 4,
         "query_fraction": [0.1] * 4, "region_fraction": [0.1] * 4}
    )  # fmt: skip
    inter_path = tmp_path / "intersections_2021.parquet"
    inter.to_parquet(inter_path, index=False)
    poly = shapely.box(-140.0, 40.0, -135.0, 45.0)
    gdf = gpd.GeoDataFrame({"query_id": ["ISS001-E-1"], "filename": ["@q@.jpg"]}, geometry=[poly], crs="EPSG:4326")
    q_path = tmp_path / "queries.parquet"
    gdf.to_parquet(q_path, index=False)
    return inter_path, q_path


def test_query_export_mosaic_and_geojson(store: Path, tmp_path: Path) -> None:
    inter, queries = _query_inputs(tmp_path)
    res, geojson = export_query(store, "ISS001-E-1", 5, YEAR, tmp_path / "out", inter, queries)
    assert res.region_ids == (rid(10, 2), rid(10, 4))  # zoom 5 only
    with rasterio.open(res.path) as ds:
        assert tuple(ds.bounds) == pytest.approx(xy_bounds_of_block(Z, 10, 2, 4, 6), abs=1e-6)
    assert geojson is not None
    fc = json.loads(geojson.read_text())
    kinds = [f["properties"]["kind"] for f in fc["features"]]
    assert kinds == ["footprint", "positive", "positive"]
    # The positives' outlines are the lon/lat bounds of the same tiles.
    west, south, east, north = shapely.geometry.shape(fc["features"][1]["geometry"]).bounds
    nw, se = mercantile.bounds(mercantile.Tile(2, 10, Z)), mercantile.bounds(mercantile.Tile(5, 13, Z))
    assert (west, south, east, north) == pytest.approx((nw.west, se.south, se.east, nw.north), abs=1e-9)
    with pytest.raises(EarthLocError, match="no positives at zoom 7"):
        export_query(store, "ISS001-E-1", 7, YEAR, tmp_path / "out", inter)
    with pytest.raises(EarthLocError, match="unknown id or no overlap"):
        export_query(store, "ISS009-E-9", 5, YEAR, tmp_path / "out", inter)


def test_cli(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inter, queries = _query_inputs(tmp_path)
    params = ["--params", str(ROOT / "params.yaml"), "--tiles", str(store), "--out", str(tmp_path / "cli")]
    assert cli_main(["export", *params, "--all", "--zoom", "5", "--mosaic"]) == 0
    with rasterio.open(tmp_path / "cli" / f"mosaic_{YEAR}_05.tif") as ds:
        assert ds.crs.to_epsg() == 3857 and ds.tags()["EARTHLOC_REGIONS"] == str(len(REGIONS))
    assert cli_main(["export", *params, "--query", "ISS001-E-1", "--zoom", "5",
                     "--intersections", str(inter), "--queries", str(queries)]) == 0  # fmt: skip
    assert (tmp_path / "cli" / "ISS001-E-1.geojson").is_file()
    assert cli_main(["export", *params, rid(10, 2)]) == 0
    assert (tmp_path / "cli" / f"{rid(10, 2)}_{YEAR}.tif").is_file()
    capsys.readouterr()
    assert cli_main(["export", *params, rid(12, 12)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("earthloc export: error: region 05_0012_0012") and "\n" not in err
    assert cli_main(["export", *params, "--all"]) == 1
