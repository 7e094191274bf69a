"""`pipeline.geo.overlap.overlap_table` against a brute-force reference.

The reference needs no spatial index, no equal-area projection and no antimeridian
split: every (query, region) pair is intersected in lon/lat with the *unwrapped* query
and the *unwrapped* region box shifted by -360, 0 and +360, and the area of the
intersection comes from pyproj.Geod on a finely segmentized polygon."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely

from pipeline.geo import tiles
from pipeline.geo.footprints import quads_from_corners, split_antimeridian, unwrap_ring_lons
from pipeline.geo.overlap import OVERLAP_COLUMNS, overlap_table
from pipeline.geo.regions import region_bounds, region_footprint

GEOD = pyproj.Geod(ellps="WGS84")
DENSIFY = 0.01
SLIVER_KM2 = 1e-6
# Window of the test (unwrapped longitudes): it straddles the antimeridian.
LON0, LON1, LAT0, LAT1 = 165.0, 195.0, -35.0, 15.0


def geod_km2(geom: shapely.Geometry, step: float = 0.01) -> float:
    total = 0.0
    for part in shapely.get_parts(shapely.segmentize(geom, step)):
        if part.geom_type != "Polygon" or part.area == 0:
            continue
        a, _ = GEOD.geometry_area_perimeter(part)
        total += abs(a)
    return total / 1e6


# --- data ----------------------------------------------------------------------------------


def make_regions() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Real regions (zoom 6..8, stride 2, columns modulo 2**z) meeting the window."""
    rows = []
    for z in (6, 7, 8):
        n = 1 << z
        for r in range(0, n - 3, 2):
            north, south = float(tiles.row_to_lat(r, z)), float(tiles.row_to_lat(r + 4, z))
            if south >= LAT1 or north <= LAT0:
                continue
            for c in range(0, n, 2):
                west = float(tiles.col_to_lon(c, z))
                east = west + 4 * 360.0 / n
                if any(west + k < LON1 and east + k > LON0 for k in (-360.0, 0.0, 360.0)):
                    rows.append((z, r, c))
    df = pd.DataFrame(rows, columns=["zoom", "row", "col"])
    b = region_bounds(df["zoom"].to_numpy(), df["row"].to_numpy(), df["col"].to_numpy())
    unwrapped = shapely.box(b.west, b.south, b.east, b.north)
    return df, region_footprint(b), unwrapped


def random_corners(rng: np.random.Generator, n: int, convex: bool) -> tuple[np.ndarray, np.ndarray]:
    """n quads 0.2..3 deg across, corners as (lat, lon) in [-180, 180] like the CSV."""
    lats, lons = [], []
    while len(lats) < n:
        cx, cy = rng.uniform(LON0 + 2, LON1 - 2), rng.uniform(LAT0 + 2, LAT1 - 2)
        size = rng.uniform(0.2, 3.0)
        ang = rng.uniform(0, 2 * np.pi) + np.arange(4) * np.pi / 2 + rng.uniform(-0.5, 0.5, 4)
        rad = size / 2 * rng.uniform(0.6, 1.0, 4)
        if not convex:
            rad[rng.integers(4)] *= rng.uniform(0.1, 0.35)  # pull one corner in: a dart
        x, y = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
        poly = shapely.Polygon(np.column_stack([x, y]))
        if not poly.is_valid or poly.area < 1e-3:
            continue
        if convex != (abs(poly.convex_hull.area - poly.area) < 1e-12):
            continue
        lats.append(y)
        lons.append(tiles.wrap_lon(x))
    return np.array(lats), np.array(lons)


def make_queries(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Queries as the queries stage builds them (split) and their unwrapped quads."""
    rng = np.random.default_rng(seed)
    la1, lo1 = random_corners(rng, 40, convex=True)
    la2, lo2 = random_corners(rng, 25, convex=False)
    # Hand-made ones straddling ±180, one of them a dart.
    la3 = np.array(
        [[-10.0, -9.0, -9.2, -10.3], [-20.0, -18.0, -18.5, -20.2], [0.5, 2.5, 2.5, 0.5], [-5.0, -3.0, -4.2, -3.0]]
    )
    lo3 = np.array(
        [
            [179.0, 179.2, -179.0, -179.3],
            [178.5, 178.7, -178.8, -178.6],
            [179.9, 179.9, -179.9, -179.9],
            [179.0, 179.0, 179.8, -178.0],
        ]
    )
    lats = np.concatenate([la1, la2, la3])
    lons = np.concatenate([lo1, lo2, lo3])
    ulons = unwrap_ring_lons(lons)
    unwrapped = quads_from_corners(lats, ulons)
    assert shapely.is_valid(unwrapped).all()
    return split_antimeridian(unwrapped), unwrapped


def reference(q_unwrapped: np.ndarray, r_unwrapped: np.ndarray) -> pd.DataFrame:
    """Brute force over every pair and every longitude shift."""
    nq, nr = len(q_unwrapped), len(r_unwrapped)
    qi, ri = np.meshgrid(np.arange(nq), np.arange(nr), indexing="ij")
    qi, ri = qi.ravel(), ri.ravel()
    inter_deg2 = np.zeros(len(qi))
    pieces = []
    for shift in (-360.0, 0.0, 360.0):
        moved = shapely.transform(r_unwrapped, lambda c, s=shift: c + np.array([s, 0.0]))
        inter = shapely.intersection(q_unwrapped[qi], moved[ri])
        inter_deg2 += shapely.area(inter)
        pieces.append(inter)
    q_area = np.array([geod_km2(g) for g in q_unwrapped])
    r_area = np.array([geod_km2(g) for g in r_unwrapped])
    rows = []
    for k in np.flatnonzero(inter_deg2 > 0):
        a = sum(geod_km2(p[k]) for p in pieces if not shapely.is_empty(p[k]))
        if a > SLIVER_KM2:
            i, j = qi[k], ri[k]
            rows.append((i, j, a, a / (q_area[i] + r_area[j] - a), a / q_area[i], a / r_area[j]))
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)


@pytest.fixture(scope="module")
def data():
    df, regions, regions_unwrapped = make_regions()
    queries, queries_unwrapped = make_queries()
    ours = overlap_table(queries, regions, DENSIFY)
    ref = reference(queries_unwrapped, regions_unwrapped)
    return {
        "df": df,
        "regions": regions,
        "queries": queries,
        "ours": ours,
        "ref": ref,
    }


# --- tests -------------------------------------------------------------------------------


def test_fixture_is_meaningful(data):
    df, regions, queries = data["df"], data["regions"], data["queries"]
    assert 200 <= len(df) <= 600
    assert set(df["zoom"]) == {6, 7, 8}
    kinds = shapely.get_type_id(regions)
    assert (kinds == shapely.GeometryType.MULTIPOLYGON).sum() >= 5
    assert (shapely.get_type_id(queries) == shapely.GeometryType.MULTIPOLYGON).sum() >= 4
    for g in list(regions) + list(queries):
        b = g.bounds
        assert -180.0 <= b[0] and b[2] <= 180.0
    assert len(data["ref"]) > 300


def test_columns_and_order(data):
    ours = data["ours"]
    assert list(ours.columns) == OVERLAP_COLUMNS
    keys = list(zip(ours["query_index"], ours["region_index"]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert (ours["intersection_km2"] > 0).all()


def test_pairs_match_brute_force(data):
    ours, ref = data["ours"], data["ref"]
    ours_set = {
        (int(a), int(b)): v for a, b, v in zip(ours["query_index"], ours["region_index"], ours["intersection_km2"])
    }
    ref_set = {(int(a), int(b)): v for a, b, v in zip(ref["query_index"], ref["region_index"], ref["intersection_km2"])}
    # Pairs only one side reports must be slivers near the threshold.
    for k in ours_set.keys() - ref_set.keys():
        assert ours_set[k] < 1e-3, (k, ours_set[k])
    for k in ref_set.keys() - ours_set.keys():
        assert ref_set[k] < 1e-3, (k, ref_set[k])
    big = {k for k, v in ref_set.items() if v > 1e-3}
    assert big <= ours_set.keys()


def test_areas_and_ratios_match_brute_force(data):
    ours, ref = data["ours"], data["ref"]
    m = ours.merge(ref, on=["query_index", "region_index"], suffixes=("", "_ref"))
    assert len(m) >= 0.99 * len(ref)
    big = m["intersection_km2_ref"] > 1.0
    for col in ("intersection_km2", "iou", "query_fraction", "region_fraction"):
        np.testing.assert_allclose(m.loc[big, col], m.loc[big, f"{col}_ref"], rtol=1e-3, err_msg=col)
    # Every overlap, small ones included: relative or absolute (km²) agreement.
    np.testing.assert_allclose(m["intersection_km2"], m["intersection_km2_ref"], rtol=1e-4, atol=1e-3)
    for col in ("iou", "query_fraction", "region_fraction"):
        assert ((m[col] > 0) & (m[col] <= 1 + 1e-9)).all(), col


def test_antimeridian_pairs_are_found(data):
    """Queries built across ±180 meet regions on both sides (and wrapping regions)."""
    ours, df, queries = data["ours"], data["df"], data["queries"]
    multi_q = np.flatnonzero(shapely.get_type_id(queries) == shapely.GeometryType.MULTIPOLYGON)
    for q in multi_q:
        hit = ours[ours["query_index"] == q]
        assert len(hit) > 0
        # Both parts of the split query lie at the antimeridian, on either side.
        cents = [shapely.get_parts(queries[q])[k].centroid.x for k in range(2)]
        assert min(cents) < -179 and max(cents) > 179
        wraps = df.iloc[hit["region_index"]]
        assert ((wraps["col"] + 4) > 2 ** wraps["zoom"]).any()


def test_touching_pairs_are_not_reported():
    b = region_bounds(np.array([8, 8]), np.array([120, 126]), np.array([254, 100]))
    regions = region_footprint(b)  # region 0 wraps ±180 (cols 254..257 at z8)
    w1 = float(b.west[1])
    n0, s0 = float(b.north[0]), float(b.south[0])
    queries = np.array(
        [
            shapely.box(w1 - 1.0, float(b.south[1]), w1, float(b.north[1])),  # west of region 1, sharing its edge
            shapely.box(
                float(b.east[1]), float(b.south[1]) + 0.1, float(b.east[1]) + 2.0, float(b.north[1]) - 0.1
            ),  # east
            shapely.box(w1 + 0.5, float(b.north[1]), w1 + 1.5, float(b.north[1]) + 1.0),  # north
            shapely.box(-175.0, s0 - 1.0, -174.0, s0),  # below wrapping region 0, corner-free edge touch
            shapely.box(w1 + 0.5, float(b.north[1]) + 0.1, w1 + 1.5, float(b.north[1]) + 1.0),  # disjoint
        ]
    )
    assert float(b.east[0]) > 180 and n0 > s0
    out = overlap_table(queries, regions, 0.05)
    assert out.empty
    assert list(out.columns) == OVERLAP_COLUMNS


def test_query_inside_region_and_region_inside_query():
    # z6 region 22.5 deg wide; a small tilted quad well inside it.
    big = region_bounds(np.array([6]), np.array([30]), np.array([34]))
    small = region_bounds(np.array([11]), np.array([30 * 32 + 20]), np.array([34 * 32 + 30]))
    regions = np.concatenate([region_footprint(big), region_footprint(small)])
    cx = float((small.west[0] + small.east[0]) / 2)
    cy = float((small.south[0] + small.north[0]) / 2)
    inner = shapely.Polygon(
        [(cx - 0.1, cy - 0.1), (cx + 0.05, cy - 0.12), (cx + 0.12, cy + 0.1), (cx - 0.08, cy + 0.03)]
    )
    outer = shapely.Polygon([(cx - 1.5, cy - 1.4), (cx + 1.4, cy - 1.6), (cx + 1.6, cy + 1.5), (cx - 1.3, cy + 1.2)])
    assert shapely.contains(outer, regions[1]) and shapely.contains(regions[1], inner)
    out = overlap_table(np.array([inner, outer]), regions, 0.05).set_index(["query_index", "region_index"])
    assert set(out.index) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert out.loc[(0, 0), "query_fraction"] == pytest.approx(1.0, rel=1e-9)
    assert out.loc[(0, 1), "query_fraction"] == pytest.approx(1.0, rel=1e-9)
    assert out.loc[(1, 0), "query_fraction"] == pytest.approx(1.0, rel=1e-9)  # outer is inside the z6 region too
    assert out.loc[(1, 1), "region_fraction"] == pytest.approx(1.0, rel=1e-9)
    assert out.loc[(1, 1), "iou"] == pytest.approx(out.loc[(1, 1), "intersection_km2"] / geod_km2(outer), rel=1e-3)
    assert out.loc[(1, 1), "intersection_km2"] == pytest.approx(geod_km2(regions[1]), rel=1e-6)


def test_same_footprint_has_iou_one():
    b = region_bounds(np.array([7, 7]), np.array([60, 50]), np.array([126, 10]))
    regions = region_footprint(b)  # the first wraps ±180
    out = overlap_table(regions, regions, 0.05)
    diag = out[out["query_index"] == out["region_index"]]
    assert len(diag) == 2
    np.testing.assert_allclose(diag["iou"], 1.0, rtol=1e-9)


def test_min_intersection_filter(data):
    queries, regions, ours = data["queries"], data["regions"], data["ours"]
    cut = float(np.median(ours["intersection_km2"]))
    filt = overlap_table(queries, regions, DENSIFY, min_intersection_km2=cut)
    expected = ours[ours["intersection_km2"] > cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(filt, expected)


def test_input_order_does_not_matter(data):
    queries, regions, ours = data["queries"], data["regions"], data["ours"]
    rng = np.random.default_rng(7)
    pq, pr = rng.permutation(len(queries)), rng.permutation(len(regions))
    out = overlap_table(queries[pq], regions[pr], DENSIFY)
    out["query_index"] = pq[out["query_index"].to_numpy()]
    out["region_index"] = pr[out["region_index"].to_numpy()]
    out = out.sort_values(["query_index", "region_index"]).reset_index(drop=True)
    assert out[["query_index", "region_index"]].equals(ours[["query_index", "region_index"]])
    for col in OVERLAP_COLUMNS[2:]:
        np.testing.assert_allclose(out[col], ours[col], rtol=1e-9, err_msg=col)
