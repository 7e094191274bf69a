"""grid stage: `build_grid` on two small boxes (the Alps, and Fiji across ±180)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely

from pipeline.errors import ConfigError
from pipeline.geo import tiles
from pipeline.geo.area import area_km2
from pipeline.geo.regions import GridSpec, describe_regions, parse_region_id
from pipeline.stages.grid import GridParams, bbox_geometry, build_grid, parse_bbox
from support import geod_km2

GEOD = pyproj.Geod(ellps="WGS84")
COLUMNS = [
    "region_id",
    "zoom",
    "row",
    "col",
    "ll_lat",
    "ll_lon",
    "ul_lat",
    "ul_lon",
    "ur_lat",
    "ur_lon",
    "lr_lat",
    "lr_lon",
    "center_lat",
    "center_lon",
    "area_km2",
    "land_fraction",
    "geometry",
]
ALPS = (5.0, 43.0, 15.0, 48.0)
FIJI = (175.0, -20.0, -175.0, -10.0)


@pytest.fixture(scope="module")
def alps():
    return build_grid(GridParams(spec=GridSpec(), bbox=ALPS))


@pytest.fixture(scope="module")
def fiji():
    return build_grid(GridParams(spec=GridSpec(), bbox=FIJI))


@pytest.fixture(scope="module", params=["alps", "fiji"])
def grid(request, alps, fiji):
    return {"alps": alps, "fiji": fiji}[request.param]


def wraps(g) -> pd.Series:
    return g["col"] + 4 > 2 ** g["zoom"]


def test_columns_and_sorting(grid):
    assert list(grid.columns) == COLUMNS
    assert grid.crs.to_epsg() == 4326
    assert set(grid["zoom"]) == {9, 10, 11}
    assert grid["region_id"].is_unique
    keys = list(zip(grid["zoom"], grid["row"], grid["col"]))
    assert keys == sorted(keys)
    assert (grid["row"] % 2 == 0).all() and (grid["col"] % 2 == 0).all()
    assert ((grid["col"] >= 0) & (grid["col"] < 2 ** grid["zoom"])).all()


def test_region_id_format(grid):
    assert grid["region_id"].str.fullmatch(r"\d{2}_\d{4}_\d{4}").all()
    for rid, z, r, c in zip(grid["region_id"], grid["zoom"], grid["row"], grid["col"]):
        assert parse_region_id(rid) == (z, r, c)
        assert rid == f"{z:02d}_{r:04d}_{c:04d}"


def test_corners_match_tiles_and_geometry(grid):
    for _, g in grid.iterrows():
        z, r, c = int(g["zoom"]), int(g["row"]), int(g["col"])
        north, south = float(tiles.row_to_lat(r, z)), float(tiles.row_to_lat(r + 4, z))
        west = float(tiles.col_to_lon(c, z))
        east = west + 4 * 360.0 / 2**z
        assert g["ll_lat"] == g["lr_lat"] == pytest.approx(south, abs=1e-12)
        assert g["ul_lat"] == g["ur_lat"] == pytest.approx(north, abs=1e-12)
        assert g["ll_lon"] == g["ul_lon"] == pytest.approx(west, abs=1e-9)
        assert g["ur_lon"] == g["lr_lon"]
        assert -180 <= g["ll_lon"] < 180 and -180 < g["ur_lon"] <= 180
        minx, miny, maxx, maxy = g.geometry.bounds
        assert (miny, maxy) == pytest.approx((south, north), abs=1e-12)
        if east <= 180.0:
            assert g.geometry.geom_type == "Polygon"
            assert g["ur_lon"] == pytest.approx(east, abs=1e-9)
            assert (minx, maxx) == pytest.approx((g["ll_lon"], g["ur_lon"]), abs=1e-9)
        else:
            assert g["ur_lon"] == pytest.approx(east - 360.0, abs=1e-9)


def test_centre_is_corner_mean(grid):
    lat = grid[["ll_lat", "ul_lat", "ur_lat", "lr_lat"]].mean(axis=1)
    np.testing.assert_allclose(grid["center_lat"], lat, atol=1e-12)
    # Mean of the unwrapped corner longitudes, wrapped back.
    west = grid["ll_lon"].to_numpy()
    east = west + (grid["ur_lon"].to_numpy() - west) % 360.0
    lon = tiles.wrap_lon((2 * west + 2 * east) / 4)
    np.testing.assert_allclose(grid["center_lon"], lon, atol=1e-9)
    # The centre lies in the footprint (on its boundary for a region centred on ±180).
    assert shapely.intersects_xy(grid.geometry.values, grid["center_lon"], grid["center_lat"]).all()


def test_land_fraction(grid):
    assert ((grid["land_fraction"] > 0) & (grid["land_fraction"] <= 1)).all()


def test_alps_land_fraction_is_mostly_land(alps):
    assert alps["land_fraction"].median() > 0.8


def sampled_land_fraction(west: float, south: float, east: float, north: float, shift: float = 0.0,
                          n: int = 100) -> float:  # fmt: skip
    """Land share of a lon/lat box from global-land-mask's `is_land`, on an n x n grid of
    points uniform in Web-Mercator y and in longitude (as the image's pixels are), the box
    moved east by `shift` of its width. Independent of the grid's own tile counting."""
    from global_land_mask import globe

    def merc(lat: float) -> float:
        return float(np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)))

    y = merc(south) + (np.arange(n) + 0.5) / n * (merc(north) - merc(south))
    lats = np.degrees(2 * np.arctan(np.exp(y)) - np.pi / 2)
    lons = west + (shift + (np.arange(n) + 0.5) / n) * (east - west)
    lat, lon = np.meshgrid(lats, (lons + 180.0) % 360.0 - 180.0, indexing="ij")
    return float(globe.is_land(lat, lon).mean())


def test_land_fraction_matches_the_land_mask_sampled_independently(grid):
    """Coastal regions (where a window shifted by a tile changes the count): the grid's
    land_fraction agrees with the mask sampled here, and a shifted window would not."""
    coastal = grid[(grid["land_fraction"] > 0.15) & (grid["land_fraction"] < 0.85)]
    picked = coastal.iloc[np.linspace(0, len(coastal) - 1, 10).astype(int)]
    assert len(coastal) >= 10
    worst_shifted = 0.0
    for _, r in picked.iterrows():
        west = r["ll_lon"]
        east = west + (r["ur_lon"] - west) % 360.0  # unwrapped across ±180
        box = (west, r["ll_lat"], east, r["ul_lat"])
        assert r["land_fraction"] == pytest.approx(sampled_land_fraction(*box), abs=0.02), r["region_id"]
        worst_shifted = max(worst_shifted, abs(r["land_fraction"] - sampled_land_fraction(*box, shift=0.25)))
    assert worst_shifted > 0.1  # the comparison can tell a window one tile off


def test_meets_bbox(grid):
    bbox = ALPS if grid["ll_lat"].max() > 0 else FIJI
    assert shapely.intersects(grid.geometry.values, bbox_geometry(bbox)).all()


def test_area_matches_geod(grid):
    for _, g in grid.iterrows():
        assert g["area_km2"] == pytest.approx(geod_km2(g.geometry), rel=1e-4)
    np.testing.assert_allclose(grid["area_km2"], area_km2(grid.geometry.values), rtol=1e-9)


def test_stride_neighbours_overlap_by_half(grid):
    idx = {(z, r, c): i for i, (z, r, c) in enumerate(zip(grid["zoom"], grid["row"], grid["col"]))}
    geoms = grid.geometry.values
    n_h = n_v = 0
    for (z, r, c), i in idx.items():
        j = idx.get((z, r, (c + 2) % 2**z))  # east neighbour, wrapping
        if j is not None:
            inter = shapely.intersection(geoms[i], geoms[j])
            a = area_km2(np.array([inter]))[0]
            assert a == pytest.approx(grid["area_km2"].iloc[i] / 2, rel=1e-9)
            assert grid["area_km2"].iloc[i] == pytest.approx(grid["area_km2"].iloc[j], rel=1e-12)
            n_h += 1
        k = idx.get((z, r + 2, c))  # south neighbour: shares tile rows r+2..r+3
        if k is not None:
            inter = shapely.intersection(geoms[i], geoms[k])
            b = inter.bounds
            assert b[1] == pytest.approx(float(tiles.row_to_lat(r + 4, z)), abs=1e-12)
            assert b[3] == pytest.approx(float(tiles.row_to_lat(r + 2, z)), abs=1e-12)
            assert inter.area == pytest.approx(
                geoms[i].area * (b[3] - b[1]) / (grid["ul_lat"].iloc[i] - grid["ll_lat"].iloc[i]), rel=1e-9
            )
            n_v += 1
    assert n_h > 10 and n_v > 10


def test_fiji_wraps_antimeridian(fiji):
    w = wraps(fiji)
    assert w.sum() >= 3
    for _, g in fiji[w].iterrows():
        geom = g.geometry
        assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
        for part in geom.geoms:
            minx, _, maxx, _ = part.bounds
            assert -180 <= minx and maxx <= 180
        bounds = sorted(p.bounds for p in geom.geoms)
        assert bounds[0][0] == -180.0 and bounds[1][2] == 180.0
        assert bounds[0][2] == pytest.approx(g["ur_lon"]) and bounds[1][0] == pytest.approx(g["ll_lon"])
    assert (fiji.geometry.geom_type[~w] == "Polygon").all()
    # Regions on both sides of the antimeridian are present.
    assert (fiji["ll_lon"] > 170).any() and (fiji["ur_lon"] < -170).any()
    for _, g in fiji.iterrows():
        b = g.geometry.bounds
        assert -180 <= b[0] and b[2] <= 180


def test_fiji_region_ending_at_180(fiji):
    """A region whose east edge is the antimeridian is a Polygon ending at +180."""
    end = fiji[fiji["col"] + 4 == 2 ** fiji["zoom"]]
    assert len(end) > 0
    assert (end["ur_lon"] == 180.0).all()
    assert (end.geometry.geom_type == "Polygon").all()
    assert np.allclose([g.bounds[2] for g in end.geometry], 180.0)


@pytest.mark.parametrize("zoom,expected", [(9, 97.8e3), (10, 24.5e3), (11, 6.1e3)])
def test_equator_region_area(zoom, expected):
    n = 2**zoom
    df = pd.DataFrame({"zoom": [zoom, zoom], "row": [n // 2 - 2, n // 2], "col": [0, n - 2]})
    table, geoms = describe_regions(df)
    for a, g in zip(table["area_km2"], geoms):
        assert a == pytest.approx(expected, rel=0.01)
        assert a == pytest.approx(geod_km2(g), rel=1e-4)
    assert geoms[1].geom_type == "MultiPolygon"


def test_bbox_parsing():
    assert parse_bbox([175, -20, -175, -10]) == FIJI
    for bad in ([1, 2, 3], [0, 10, 5, 5], [-190, 0, 0, 1], [0, -95, 1, 1]):
        with pytest.raises(ConfigError):
            parse_bbox(bad)
    geom = bbox_geometry(FIJI)
    assert geom.geom_type == "MultiPolygon"
    assert shapely.contains_xy(geom, [179.5, -179.5], [-15, -15]).all()
    assert not shapely.contains_xy(geom, 0.0, -15.0)
    p = GridParams.from_section({"zooms": [9], "bbox": [5, 43, 15, 48]})
    assert p.spec.zooms == (9,) and p.bbox == ALPS
    with pytest.raises(ConfigError):
        GridParams.from_section({"zooms": [9], "stride": 3})
