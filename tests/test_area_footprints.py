"""Areas (`pipeline.geo.area`) against pyproj.Geod, footprint construction and checks
(`pipeline.geo.footprints`), and upstream file names (`pipeline.geo.names`, §1, §10.9)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geo.area import area_km2, geod_area_km2, geod_quad_area_km2
from pipeline.geo.footprints import check_quads, quads_from_corners, split_antimeridian, unwrap_ring_lons
from pipeline.geo.names import (
    db_filename,
    db_relpath,
    latlon_bin,
    parse_filename,
    query_filename,
    swap_year,
)

ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = ROOT / "data" / "inputs" / "metadata_queries_images.csv"
GEOD = pyproj.Geod(ellps="WGS84")
SETTINGS = settings(max_examples=100, deadline=None)


def geod_km2(geom: shapely.Geometry, step: float = 0.01) -> float:
    """Reference: pyproj.Geod area of the polygon with edges segmentized to `step`
    degrees, so its geodesic edges follow the lon/lat-straight edges."""
    total = 0.0
    for part in shapely.get_parts(shapely.segmentize(geom, step)):
        a, _ = GEOD.geometry_area_perimeter(part)
        total += abs(a)
    return total / 1e6


# --- area ------------------------------------------------------------------------------


@SETTINGS
@given(
    st.floats(-180.0, 170.0),
    st.floats(-70.0, 65.0),
    st.floats(0.05, 10.0),
    st.floats(0.05, 5.0),
)
def test_area_of_rectangles_matches_geod(west, south, width, height):
    north = min(70.0, south + height)
    box = shapely.box(west, south, west + width, north)
    got = float(area_km2(np.array([box]))[0])
    assert got == pytest.approx(geod_km2(box), rel=1e-4)


def convex_quad(rng: np.random.Generator, lat_lim: float = 70.0, size: float = 3.0) -> shapely.Polygon:
    """Corners on an ellipse at increasing angles (one per quadrant): convex."""
    cx = rng.uniform(-175, 175)
    cy = rng.uniform(-lat_lim + size, lat_lim - size)
    ax, ay = rng.uniform(0.1, size / 2, size=2)
    rot = rng.uniform(0, 2 * np.pi)
    ang = rot + np.arange(4) * np.pi / 2 + rng.uniform(-0.6, 0.6, size=4)
    xs = cx + ax * np.cos(ang)
    ys = cy + ay * np.sin(ang)
    return shapely.Polygon(np.column_stack([xs, ys]))


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_area_of_convex_quads_matches_geod(seed):
    quad = convex_quad(np.random.default_rng(seed))
    assert quad.is_valid
    got = float(area_km2(np.array([quad]), densify_deg=0.25)[0])
    assert got == pytest.approx(geod_km2(quad), rel=1e-3)


def test_area_is_vectorised_and_ignores_longitude():
    boxes = np.array([shapely.box(w, 10, w + 2, 12) for w in (-180.0, -30.0, 0.0, 100.0, 178.0)])
    a = area_km2(boxes)
    np.testing.assert_allclose(a, a[0], rtol=1e-9)


# WGS84 in closed form, independent of pyproj: the area between two parallels and two
# meridians on an ellipsoid of revolution is b²·Δλ/2·(q(φ2) − q(φ1)) with the authalic
# function q(φ) = sinφ/(1 − e²sin²φ) + artanh(e·sinφ)/e.
WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)


def _authalic_q(lat_deg: float) -> float:
    s = np.sin(np.radians(lat_deg))
    e = np.sqrt(WGS84_E2)
    return float(s / (1 - WGS84_E2 * s * s) + np.arctanh(e * s) / e)


def _lonlat_box_km2(w: float, s: float, e: float, n: float) -> float:
    b2 = WGS84_A**2 * (1 - WGS84_E2)
    return b2 * np.radians(e - w) / 2 * (_authalic_q(n) - _authalic_q(s)) / 1e6


def test_geod_area_km2_of_an_equator_to_pole_lune_is_the_closed_form():
    # equator and meridians are geodesics, so this polygon's geodesic area is exact:
    # 30° of longitude of one hemisphere
    lune = shapely.Polygon([(10, 0), (40, 0), (40, 90), (10, 90)])
    assert geod_area_km2(lune) == pytest.approx(_lonlat_box_km2(10, 0, 40, 90), rel=1e-9)


@pytest.mark.parametrize("box", [(10, 45, 12, 47), (-100, 25, -90, 35), (170, -60, 175, -50), (0, -1, 0.703125, 0)])
def test_geod_area_km2_of_densified_lonlat_boxes_is_the_closed_form(box):
    # parallels are not geodesics, but with vertices 0.001° apart the geodesic chords
    # follow them to ~1e-11 of the area
    w, s, e, n = box
    lons = np.linspace(w, e, int(round((e - w) / 0.001)) + 1)
    ring = [(x, s) for x in lons] + [(x, n) for x in lons[::-1]]
    assert geod_area_km2(shapely.Polygon(ring)) == pytest.approx(_lonlat_box_km2(*box), rel=1e-8)


def test_geod_quad_area_matches_nasa_sq_km_area():
    with open(REAL_CSV, newline="") as fh:
        rows = [r for _, r in zip(range(200), csv.DictReader(fh))]
    lats = np.array([[float(r[f"{c}_LAT"]) for c in ("LL", "UL", "UR", "LR")] for r in rows])
    lons = np.array([[float(r[f"{c}_LON"]) for c in ("LL", "UL", "UR", "LR")] for r in rows])
    nasa = np.array([float(r["SQ_KM_AREA"]) for r in rows])
    got = geod_quad_area_km2(lats, lons)
    np.testing.assert_allclose(got, nasa, rtol=0.01)
    # And the equal-area projection of the (densified) footprints agrees too.
    ea = area_km2(quads_from_corners(lats, lons), densify_deg=0.25)
    np.testing.assert_allclose(ea, nasa, rtol=0.01)


# --- footprints ---------------------------------------------------------------------------


def test_unwrap_ring_lons():
    lons = np.array(
        [
            [179.5, 179.8, -179.7, -179.9],  # crosses: negatives + 360
            [10.0, 11.0, 12.0, 11.5],  # unchanged
            [-179.0, -178.0, -177.5, -178.5],  # near but not crossing
            [-10.0, 10.0, 20.0, -5.0],  # spans 30 deg: unchanged
        ]
    )
    out = unwrap_ring_lons(lons)
    np.testing.assert_array_equal(out[0], [179.5, 179.8, 180.3, 180.1])
    np.testing.assert_array_equal(out[1:], lons[1:])
    assert lons[0, 2] == -179.7  # input not modified


def test_quads_from_corners_order_and_closure():
    lats = np.array([[45.0, 47.0, 47.0, 45.0], [0.0, 1.0, 1.0, 0.0]])
    lons = np.array([[8.0, 8.0, 11.0, 11.0], [179.0, 179.0, 181.0, 181.0]])
    quads = quads_from_corners(lats, lons)
    assert len(quads) == 2
    for q, la, lo in zip(quads, lats, lons):
        coords = np.asarray(q.exterior.coords)
        assert coords.shape == (5, 2)
        np.testing.assert_array_equal(coords[:4, 0], lo)
        np.testing.assert_array_equal(coords[:4, 1], la)
        np.testing.assert_array_equal(coords[4], coords[0])
    assert quads[0].area == pytest.approx(6.0)
    assert quads[1].bounds == (179.0, 0.0, 181.0, 1.0)


def _assert_within_world(g):
    minx, miny, maxx, maxy = g.bounds
    assert -180.0 <= minx and maxx <= 180.0


def test_split_antimeridian_quad():
    lats = np.array([[-10.0, -9.0, -9.2, -10.3]])
    lons = np.array([[179.0, 179.2, -179.0, -179.3]])
    ulons = unwrap_ring_lons(lons)
    quad = quads_from_corners(lats, ulons)
    split = split_antimeridian(quad)[0]
    assert split.geom_type == "MultiPolygon"
    assert len(split.geoms) == 2
    _assert_within_world(split)
    assert split.is_valid
    east, west = sorted(split.geoms, key=lambda p: -p.bounds[0])
    assert east.bounds[2] == pytest.approx(180.0) and west.bounds[0] == pytest.approx(-180.0)
    shifted = quads_from_corners(lats, ulons - 10.0)
    a_split = float(area_km2(np.array([split]), 0.01)[0])
    a_shift = float(area_km2(shifted, 0.01)[0])
    assert a_split == pytest.approx(a_shift, rel=1e-6)
    # The planar lon/lat area is conserved too.
    assert split.area == pytest.approx(quad[0].area, rel=1e-12)


def test_split_antimeridian_region_box_and_passthrough():
    boxes = np.array(
        [
            shapely.box(177.1875, 40.0, 182.8125, 42.0),  # east > 180
            shapely.box(-183.0, -5.0, -178.0, 5.0),  # west < -180
            shapely.box(10.0, 40.0, 12.0, 42.0),  # untouched
            shapely.box(176.0, 0.0, 180.0, 1.0),  # ends exactly at 180: untouched
        ]
    )
    out = split_antimeridian(boxes)
    assert out[2] is boxes[2] or out[2].equals(boxes[2])
    assert out[3].equals(boxes[3])
    for g, orig in zip(out[:2], boxes[:2]):
        assert g.geom_type == "MultiPolygon" and len(g.geoms) == 2
        _assert_within_world(g)
        ref = shapely.affinity.translate(orig, xoff=-10.0 if orig.bounds[2] > 180 else 10.0)
        assert float(area_km2(np.array([g]))[0]) == pytest.approx(float(area_km2(np.array([ref]))[0]), rel=1e-6)
    parts = sorted(shapely.get_parts(out[0]), key=lambda p: p.bounds[0])
    assert parts[0].bounds == pytest.approx((-180.0, 40.0, -177.1875, 42.0))
    assert parts[1].bounds == pytest.approx((177.1875, 40.0, 180.0, 42.0))


def test_check_quads_classifies():
    cases = {
        "good": ([[45, 47, 47.2, 45.1]], [[8, 8.1, 11, 11.2]], ""),
        # A rectangle with two corners swapped: the lobes cancel to area 0, still a bow-tie.
        "bowtie": ([[45, 47, 45, 47]], [[8, 8, 11, 11]], "self_intersecting_footprint"),
        "bowtie_skewed": ([[45, 47.2, 45.1, 47]], [[8, 8.1, 11.2, 11]], "self_intersecting_footprint"),
        "repeated": ([[45, 47, 47, 47]], [[8, 8, 11, 8]], "degenerate_footprint"),
        "collinear": ([[45, 46, 47, 45]], [[8, 9, 10, 11]], "degenerate_footprint"),
        "zero_area": ([[45, 46, 47, 48]], [[8, 9, 10, 11]], "degenerate_footprint"),
        "all_same": ([[45, 45, 45, 45]], [[8, 8, 8, 8]], "degenerate_footprint"),
        "good_across_180": ([[-10, -9, -9.2, -10.3]], [[179, 179.2, 181, 180.7]], ""),
    }
    lats = np.array([c[0][0] for c in cases.values()], dtype=float)
    lons = np.array([c[1][0] for c in cases.values()], dtype=float)
    res = check_quads(quads_from_corners(lats, lons))
    assert res.reason.tolist() == [c[2] for c in cases.values()]
    detail = dict(zip(cases, res.detail.tolist()))
    assert detail["good"] == ""
    assert detail["repeated"] == "two corners coincide"
    assert detail["collinear"] == "three corners are collinear"
    assert "Self-intersection" in detail["bowtie"] and "Self-intersection" in detail["bowtie_skewed"]


def test_check_quads_accepts_real_footprints():
    with open(REAL_CSV, newline="") as fh:
        rows = [r for _, r in zip(range(200), csv.DictReader(fh))]
    lats = np.array([[float(r[f"{c}_LAT"]) for c in ("LL", "UL", "UR", "LR")] for r in rows])
    lons = np.array([[float(r[f"{c}_LON"]) for c in ("LL", "UL", "UR", "LR")] for r in rows])
    res = check_quads(quads_from_corners(lats, unwrap_ring_lons(lons)))
    assert (res.reason == "").all()


# --- names (§1, §10.9) ----------------------------------------------------------------

DB_NAME = (
    "@45.08904@8.43750@47.04018@8.43750@47.04018@11.25000@45.08904@11.25000"
    "@09_0180_0268@2021@46.06461@9.84375@47000@0@.jpg"
)
DB_PATH = f"database/2021_09/50_10/{DB_NAME}"


def test_parse_upstream_db_filename():
    for name in (DB_NAME, DB_PATH, "/data/" + DB_PATH, "C:\\data\\" + DB_PATH.replace("/", "\\")):
        p = parse_filename(name)
        assert p.year == 2021 and p.time == "2021"
        assert p.image_id == "09_0180_0268"
        lats, lons = p.corners[0::2], p.corners[1::2]
        assert (min(lats), min(lons)) == (45.08904, 8.4375)
        assert (max(lats), max(lons)) == (47.04018, 11.25)
        assert (p.nadir_lat, p.nadir_lon) == (46.06461, 9.84375)
        assert p.area_km2 == 47000 and p.orientation == "0"


def test_parse_query_filename():
    name = "@-0.032098@-92.206751@-1.424320@-91.402004@-0.892056@-90.217980@0.500167@-91.022728@ISS063-E-38464@20200705@-0.2@-48.9@16909@-15.4@.jpg"
    p = parse_filename(name)
    assert p.year == 2020 and p.time == "20200705"
    assert p.image_id == "ISS063-E-38464"
    assert p.orientation == "-15.4"
    assert int(float(p.orientation)) == -15


@pytest.mark.parametrize(
    "name",
    [
        DB_NAME.replace("@0@.jpg", "@.jpg"),  # 15 tokens
        DB_NAME + "@",  # 17 tokens
        DB_NAME[1:],  # no leading @
        DB_NAME.replace(".jpg", ".png"),
        DB_NAME.replace("@2021@", "@1850@"),
    ],
)
def test_parse_rejects_malformed(name):
    with pytest.raises(ValueError):
        parse_filename(name)


def test_fifteen_tokens_raise():
    name = "@".join([""] + ["1"] * 13 + [".jpg"])
    assert len(name.split("@")) == 15
    with pytest.raises(ValueError):
        parse_filename(name)


@pytest.mark.parametrize(
    "lat,lon,expected",
    [
        (46.06, 9.84, "50_10"),
        (45.0, 55.0, "40_60"),
        (-5.0, -5.0, "0_0"),
        (55.0, 175.0, "60_180"),
        (-45.0, -175.0, "-40_-180"),
        (-15.0, 25.0, "-20_20"),
    ],
)
def test_latlon_bin_half_to_even(lat, lon, expected):
    assert latlon_bin(lat, lon) == expected
    assert "-0" not in latlon_bin(-5.0, -4.0)


def test_swap_year_changes_only_folder_and_year_token():
    out = swap_year(DB_PATH, 2018)
    assert out == DB_PATH.replace("/2021_", "/2018_").replace("@2021@", "@2018@")
    changed = [(a, b) for a, b in zip(DB_PATH.split("@"), out.split("@")) if a != b]
    assert changed == [("database/2021_09/50_10/", "database/2018_09/50_10/"), ("2021", "2018")]
    # A 2021 area (or any other field spelling 2021) is left alone, unlike a substring replace.
    tricky = DB_PATH.replace("@47000@", "@2021@")
    out2 = swap_year(tricky, 2019)
    assert out2.split("@")[10] == "2019" and out2.split("@")[13] == "2021"
    assert parse_filename(out2).year == 2019


def test_swap_year_rejects_bad_paths():
    with pytest.raises(ValueError):
        swap_year(DB_NAME, 2018)  # not a database path
    with pytest.raises(ValueError):
        swap_year(DB_PATH.replace("2021_09", "2020_09"), 2018)  # folder and file disagree
    with pytest.raises(ValueError):
        # Documented: a non-2021 source is an error, not a silent no-op / re-swap.
        swap_year(DB_PATH.replace("/2021_", "/2019_").replace("@2021@", "@2019@"), 2018)


def test_db_filename_and_relpath_format():
    corners = [45.089036, 8.4375, 47.040182, 8.4375, 47.040182, 11.25, 45.089036, 11.25]
    name = db_filename(corners, "09_0180_0268", 2021, 46.064609, 9.84375, 42365.6)
    assert name == (
        "@45.08904@8.43750@47.04018@8.43750@47.04018@11.25000@45.08904@11.25000"
        "@09_0180_0268@2021@46.06461@9.84375@42366@0@.jpg"
    )
    rel = db_relpath(corners, "09_0180_0268", 9, 2021, 46.064609, 9.84375, 42365.6)
    assert rel == f"database/2021_09/50_10/{name}"
    p = parse_filename(rel)
    assert p.corners == tuple(round(c, 5) for c in corners)
    with pytest.raises(ValueError):
        db_filename(corners[:6], "09_0180_0268", 2021, 0, 0, 1)


def test_query_filename_format():
    corners = [-0.032098, -92.206751, -1.42432, -91.402004, -0.892056, -90.21798, 0.500167, -91.022728]
    name = query_filename(corners, "ISS047-E-55412", "20160409", 0.44, -88.46, 25733.4, "114.9")
    assert name == (
        "@-0.032098@-92.206751@-1.424320@-91.402004@-0.892056@-90.217980@0.500167@-91.022728"
        "@ISS047-E-55412@20160409@0.4@-88.5@25733@114.9@.jpg"
    )
    p = parse_filename(name)
    assert p.year == 2016 and p.area_km2 == 25733 and p.orientation == "114.9"
    for bad in ("ISS047/E/1", "ISS047-E-..", "ISS@1", "ISS 1", "", "-ISS1", "ISS1-"):
        with pytest.raises(ValueError):
            query_filename(corners, bad, "20160409", 0, 0, 1, "0")


def test_db_area_rounds_to_int():
    name = db_filename([0.0] * 8, "09_0000_0000", 2021, 0.0, 0.0, 97812.5)
    assert name.split("@")[13] == "97812"  # Python round: half to even
    assert parse_filename(name).area_km2 == 97812
