"""Web-Mercator tile maths (`pipeline.geo.tiles`) and regions (`pipeline.geo.regions`)
checked against mercantile, brute-force loops and docs/upstream.md §10.10."""

from __future__ import annotations

import math

import mercantile
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.geo import tiles
from pipeline.geo.regions import (
    GridSpec,
    coarsen_counts,
    parse_region_id,
    region_bounds,
    region_cols,
    region_id,
    region_rows,
    window_sums,
)

TOL = 1e-9
SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def tile_xyz(draw, zmin: int = 0, zmax: int = 22):
    z = draw(st.integers(zmin, zmax))
    n = 1 << z
    return draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1)), z


# --- tiles vs mercantile -----------------------------------------------------------


@SETTINGS
@given(tile_xyz())
def test_tile_edges_match_mercantile(xyz):
    x, y, z = xyz
    b = mercantile.bounds(x, y, z)
    assert float(tiles.row_to_lat(y, z)) == pytest.approx(b.north, abs=TOL)
    assert float(tiles.row_to_lat(y + 1, z)) == pytest.approx(b.south, abs=TOL)
    assert float(tiles.col_to_lon(x, z)) == pytest.approx(b.west, abs=TOL)
    assert float(tiles.col_to_lon(x + 1, z)) == pytest.approx(b.east, abs=TOL)


@SETTINGS
@given(
    st.integers(0, 22),
    st.lists(st.tuples(st.integers(0, 2**22 - 1), st.integers(0, 2**22 - 1)), min_size=1, max_size=20),
)
def test_tile_edges_vectorised(z, xy):
    n = 1 << z
    xs = np.array([x % n for x, _ in xy])
    ys = np.array([y % n for _, y in xy])
    north = tiles.row_to_lat(ys, z)
    west = tiles.col_to_lon(xs, z)
    for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        b = mercantile.bounds(x, y, z)
        assert north[i] == pytest.approx(b.north, abs=TOL)
        assert west[i] == pytest.approx(b.west, abs=TOL)


@SETTINGS
@given(st.integers(0, 22), st.floats(-85.0, 85.0), st.floats(-180.0, 179.999999))
def test_point_to_tile_matches_mercantile(z, lat, lon):
    frow = float(tiles.lat_to_row(lat, z))
    fcol = float(tiles.lon_to_col(lon, z))
    # Away from tile edges: float noise may put a point on either side of an edge.
    assume(abs(frow - round(frow)) > 1e-6 and abs(fcol - round(fcol)) > 1e-6)
    t = mercantile.tile(lon, lat, z)
    assert (t.x, t.y) == (math.floor(fcol), math.floor(frow))


@SETTINGS
@given(st.integers(0, 22), st.floats(-85.05, 85.05))
def test_lat_row_round_trip(z, lat):
    assert float(tiles.row_to_lat(tiles.lat_to_row(lat, z), z)) == pytest.approx(lat, abs=1e-9)


@SETTINGS
@given(st.integers(0, 22), st.floats(0.0, 1.0))
def test_row_lat_round_trip(z, frac):
    row = frac * (1 << z)
    assert float(tiles.lat_to_row(tiles.row_to_lat(row, z), z)) == pytest.approx(row, abs=1e-6)


@SETTINGS
@given(st.integers(0, 22), st.floats(-180.0, 180.0))
def test_lon_col_round_trip(z, lon):
    assert float(tiles.col_to_lon(tiles.lon_to_col(lon, z), z)) == pytest.approx(lon, abs=1e-9)


def test_wrap_lon():
    got = tiles.wrap_lon([-180.0, 180.0, 190.0, 360.0, -190.0, 0.0, 179.5, 540.0])
    np.testing.assert_allclose(got, [-180.0, -180.0, -170.0, 0.0, 170.0, 0.0, 179.5, -180.0], atol=1e-12)


@SETTINGS
@given(st.floats(-1000.0, 1000.0))
def test_wrap_lon_range_and_congruence(lon):
    w = float(tiles.wrap_lon(lon))
    assert -180.0 <= w < 180.0
    k = (lon - w) / 360.0
    assert k == pytest.approx(round(k), abs=1e-9)


def test_tile_count_limits():
    assert tiles.tile_count(0) == 1 and tiles.tile_count(11) == 2048
    with pytest.raises(ValueError):
        tiles.tile_count(-1)
    with pytest.raises(ValueError):
        tiles.tile_count(31)


# --- upstream numeric vectors (§10.10) ---------------------------------------------


@pytest.mark.parametrize(
    "z,row,col,north,south,west,east",
    [
        (9, 180, 268, 47.040182, 45.089036, 8.4375, 11.25),
        (10, 384, 512, 40.979898, 39.909736, 0.0, 1.40625),
        # The doc's S -0.703107 is the south edge of a 4-tile region (row 1028), not of one tile.
        (11, 1024, 0, 0.0, -0.703107, -180.0, -179.296875),
    ],
)
def test_upstream_region_vectors(z, row, col, north, south, west, east):
    b = region_bounds(np.array([z]), np.array([row]), np.array([col]))
    assert b.north[0] == pytest.approx(north, abs=1e-6)
    assert b.south[0] == pytest.approx(south, abs=1e-6)
    assert b.west[0] == pytest.approx(west, abs=1e-9)
    assert b.east[0] == pytest.approx(east, abs=1e-9)
    # Same numbers from the per-tile functions.
    assert float(tiles.row_to_lat(row, z)) == pytest.approx(north, abs=1e-6)
    assert float(tiles.row_to_lat(row + 4, z)) == pytest.approx(south, abs=1e-6)


def test_upstream_top_row():
    assert float(tiles.row_to_lat(0, 9)) == pytest.approx(85.051129, abs=1e-6)
    assert float(tiles.row_to_lat(1024, 11)) == pytest.approx(0.0, abs=1e-12)


# --- regions -------------------------------------------------------------------------


@st.composite
def regions(draw, zmin: int = 1, zmax: int = 22):
    z = draw(st.integers(zmin, zmax))
    n = 1 << z
    return z, draw(st.integers(0, max(0, n - 4))), draw(st.integers(0, n - 1))


@SETTINGS
@given(st.lists(regions(2, 22), min_size=1, max_size=20))
def test_region_bounds_match_mercantile(items):
    z = np.array([i[0] for i in items])
    r = np.array([i[1] for i in items])
    c = np.array([i[2] for i in items])
    b = region_bounds(z, r, c)
    for k, (zz, rr, cc) in enumerate(items):
        n = 1 << zz
        nw = mercantile.bounds(cc, rr, zz)
        se = mercantile.bounds((cc + 3) % n, rr + 3, zz)
        assert b.north[k] == pytest.approx(nw.north, abs=TOL)
        assert b.west[k] == pytest.approx(nw.west, abs=TOL)
        assert b.south[k] == pytest.approx(se.south, abs=TOL)
        # East is unwrapped: west + 4 tiles, and congruent to the SE tile's east edge.
        assert b.east[k] == pytest.approx(nw.west + 4 * 360.0 / n, abs=TOL)
        assert float(tiles.wrap_lon(b.east[k])) == pytest.approx(float(tiles.wrap_lon(se.east)), abs=TOL)
        assert b.east[k] - b.west[k] > 0


def test_region_bounds_wrap_past_antimeridian():
    z = 9
    b = region_bounds(np.array([z]), np.array([100]), np.array([510]))
    assert b.west[0] == pytest.approx(180.0 - 2 * 360 / 512)
    assert b.east[0] == pytest.approx(180.0 + 2 * 360 / 512)


@pytest.mark.parametrize("z", range(5, 12))
def test_region_rows_brute_force(z):
    spec = GridSpec(zooms=(z,))
    n = 1 << z
    expected = []
    for row in range(0, n - 3):
        north = mercantile.bounds(0, row, z).north
        south = mercantile.bounds(0, row + 3, z).south
        if row % spec.stride == 0 and north <= 60.0 and south >= -60.0:
            expected.append(row)
    got = region_rows(z, spec)
    assert got.tolist() == expected
    assert len(expected) > 0


def test_region_cols_all_around():
    cols = region_cols(9, GridSpec(zooms=(9,)))
    assert cols.tolist() == list(range(0, 512, 2))


def test_gridspec_validation():
    with pytest.raises(ConfigError):
        GridSpec(zooms=())
    with pytest.raises(ConfigError):
        GridSpec(zooms=(0,))
    with pytest.raises(ConfigError):
        GridSpec(zooms=(9,), stride=3)
    with pytest.raises(ConfigError):
        GridSpec(zooms=(9,), max_abs_lat=90.0)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 9999), st.integers(0, 9999)), min_size=1, max_size=10))
def test_region_id_round_trip(items):
    z = np.array([i[0] for i in items], dtype=np.int64)
    r = np.array([i[1] for i in items], dtype=np.int64)
    c = np.array([i[2] for i in items], dtype=np.int64)
    ids = region_id(z, r, c)
    for rid, item in zip(ids.tolist(), items):
        assert len(rid) == 12 and rid[2] == "_" and rid[7] == "_"
        assert parse_region_id(rid) == item


def test_region_id_format_and_bad_ids():
    assert region_id(np.array([9]), np.array([180]), np.array([268])).tolist() == ["09_0180_0268"]
    for bad in ["9_0180_0268", "09_180_0268", "09_0180_0268x", "09-0180-0268", "", "aa_bbbb_cccc"]:
        with pytest.raises(ValueError):
            parse_region_id(bad)


# --- window sums and coarsening ---------------------------------------------------------


@SETTINGS
@given(
    st.integers(1, 5),
    st.integers(0, 8),
    st.integers(0, 8),
    st.integers(0, 2**31 - 1),
)
def test_window_sums_brute_force(size, extra_h, extra_w, seed):
    rng = np.random.default_rng(seed)
    h, w = size + extra_h, size + extra_w
    vals = rng.integers(0, 100, size=(h, w)).astype(np.int64)
    m = 30
    rows = rng.integers(0, h - size + 1, size=m)
    cols = rng.integers(0, 2 * w, size=m)  # columns past the end wrap too
    got = window_sums(vals, rows, cols, size)
    for k in range(m):
        expected = 0
        for i in range(rows[k], rows[k] + size):
            for j in range(cols[k], cols[k] + size):
                expected += vals[i, j % w]
        assert got[k] == expected


def test_window_sums_wrapping_example():
    vals = np.arange(16, dtype=np.int64).reshape(4, 4)
    # Rows 1..2, columns 3, 0 (wrapping).
    got = window_sums(vals, np.array([1]), np.array([3]), 2)
    assert got.tolist() == [7 + 4 + 11 + 8]


@SETTINGS
@given(st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_coarsen_counts_brute_force(factor, bh, bw, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=(bh * factor, bw * factor)).astype(np.int64)
    got = coarsen_counts(counts, factor)
    assert got.shape == (bh, bw)
    for i in range(bh):
        for j in range(bw):
            expected = 0
            for a in range(factor):
                for b in range(factor):
                    expected += counts[i * factor + a, j * factor + b]
            assert got[i, j] == expected
    assert got.sum() == counts.sum()


def test_coarsen_counts_rejects_bad_shape():
    with pytest.raises(ValueError):
        coarsen_counts(np.zeros((6, 8), dtype=np.int64), 4)


def test_coarsened_window_equals_fine_window():
    """A region at zoom z-1 covers exactly the tiles of the 8x8 fine window: nesting."""
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 9, size=(32, 32)).astype(np.int64)
    coarse = coarsen_counts(fine, 2)
    rows, cols = np.array([0, 4, 12]), np.array([2, 14, 15])
    np.testing.assert_array_equal(window_sums(coarse, rows, cols, 4), window_sums(fine, 2 * rows, 2 * cols, 8))
