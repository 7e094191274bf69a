"""evalset stage: selection (pure), outputs, map, errors; haversine test vectors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from earthloc.cli import cmd_evalset
from figure_support import colour_pixels, load_rgb
from pipeline.errors import ConfigError, InputError
from pipeline.geo.distance import haversine_km
from pipeline.geo.evalset import (
    DROP_NO_POSITIVE,
    DROP_POSITIVE_OUTSIDE_DB,
    EvalSetSpec,
    geodesic_circle,
    select_evalset,
    summarize,
)
from pipeline.geo.names import db_relpath
from pipeline.presentation import evalset_map
from pipeline.schema import CORNER_COLUMNS
from pipeline.stages import evalset as stage

# ---------------------------------------------------------------------------
# Haversine test vectors (docs/upstream.md §10.1)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((0, 0), (0, 1), 111.19493),
        ((0, 179.5), (0, -179.5), 111.19493),
        ((90, 0), (-90, 0), 20015.0868),
        ((45, 10), (30, -95), 8756.799),
        ((30, -95), (38, -122), 2631.763),  # Texas -> Napa
        ((45, 10), (23, 30), 3045.153),  # Alps -> Toshka
        ((-3, -60), (40, 105), 15632.355),  # Amazon -> Gobi
    ],
)
def test_haversine_vectors(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert float(haversine_km(a[0], a[1], b[0], b[1])) == pytest.approx(km, rel=1e-6)
    assert float(haversine_km(b[0], b[1], a[0], a[1])) == pytest.approx(km, rel=1e-6)


# ---------------------------------------------------------------------------
# A tiny world around the POI (0, 0). Radii are exact haversine distances to points
# on the equator, so a point placed there lies exactly on the circle.

RQ = float(haversine_km(0, 0, 0, 20.0))  # query radius: nadir (0, 20) is exactly on it
RD = float(haversine_km(0, 0, 0, 30.0))  # database radius: centre (0, 30) is exactly on it
SPEC = EvalSetSpec("tiny", 0.0, 0.0, RQ, RD)

# region id, zoom, row, col, centre lat, centre lon
REGIONS = [
    ("10_0005_0001", 10, 5, 1, 0.0, 10.0),  # rb: in DB
    ("09_0002_0002", 9, 2, 2, 0.0, 5.0),  # ra: in DB
    ("09_0002_0009", 9, 2, 9, 0.0, 30.0),  # rc: exactly on the DB radius -> outside
    ("09_0002_0012", 9, 2, 12, 0.0, 40.0),  # rd: outside
    ("10_0007_0000", 10, 7, 0, 5.0, -5.0),  # re: in DB
    ("11_0001_0001", 11, 1, 1, 0.0, 29.99),  # rf: just inside
    ("09_0002_0063", 9, 2, 63, 0.0, 180.0),  # rg: split at ±180, far away
]
# query id, nadir lat, nadir lon, positive region ids
QUERIES = [
    ("ISS001-E-7", 0.0, 1.0, ["09_0002_0002", "10_0005_0001"]),  # kept
    ("ISS001-E-2", 0.0, 19.999, ["11_0001_0001"]),  # kept (just inside)
    ("ISS001-E-3", 0.0, 20.0, ["11_0001_0001"]),  # exactly on the query radius -> not selected
    ("ISS001-E-4", 1.0, 1.0, []),  # no positive
    ("ISS001-E-5", 0.0, 15.0, ["10_0005_0001", "09_0002_0009"]),  # a positive outside the DB
    ("ISS001-E-6", 0.0, 50.0, ["09_0002_0012"]),  # far: not selected
    ("ISS001-E-1", -2.0, -3.0, ["10_0007_0000"]),  # kept
    ("ISS001-E-8", 0.0, 179.8, ["09_0002_0063"]),  # far, footprint crosses ±180
]


def _box(lat: float, lon: float, half: float = 0.5) -> shapely.Geometry:
    """A lon/lat box, split into two parts when it crosses ±180."""
    w, e, s, n = lon - half, lon + half, lat - half, lat + half
    if e > 180:
        return shapely.MultiPolygon([shapely.box(w, s, 180, n), shapely.box(-180, s, e - 360, n)])
    return shapely.box(w, s, e, n)


def make_regions() -> gpd.GeoDataFrame:
    rows = []
    for rid, z, r, c, la, lo in REGIONS:
        h = 0.5
        rows.append(
            {
                "region_id": rid,
                "zoom": z,
                "row": r,
                "col": c,
                "ll_lat": la - h,
                "ll_lon": lo - h,
                "ul_lat": la + h,
                "ul_lon": lo - h,
                "ur_lat": la + h,
                "ur_lon": lo + h,
                "lr_lat": la - h,
                "lr_lon": lo + h,
                "center_lat": la,
                "center_lon": lo,
                "area_km2": 12345.6,
                "land_fraction": 1.0,
                "geometry": _box(la, lo, h),
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")


def make_queries() -> gpd.GeoDataFrame:
    rows = []
    for qid, la, lo, _ in QUERIES:
        g = _box(la, lo, 0.4)
        rows.append(
            {
                "query_id": qid,
                "mission": "ISS001",
                "roll": "E",
                "frame": qid.rsplit("-", 1)[1],
                "date": "20210101",
                "nadir_lat": la,
                "nadir_lon": lo,
                "orientation": 0.0,
                "nasa_area_km2": 9000,
                "area_km2": 9000.0,
                "filename": f"@q@{qid}@.jpg",
                "url": "http://example.invalid",
                "crosses_antimeridian": g.geom_type == "MultiPolygon",
                "geometry": g,
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")


def make_intersections() -> pd.DataFrame:
    zoom = {r[0]: r[1] for r in REGIONS}
    rows = [
        {
            "query_id": qid,
            "region_id": rid,
            "zoom": zoom[rid],
            "intersection_km2": 100.0 + k,
            "iou": 0.1 * (k + 1),
            "query_fraction": 0.5,
            "region_fraction": 0.5,
        }
        for qid, _, _, pos in QUERIES
        for k, rid in enumerate(pos)
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "grid": tmp_path / "in" / "regions.parquet",
        "queries": tmp_path / "in" / "queries.parquet",
        "intersections": tmp_path / "in" / "intersections_2021.parquet",
        "params": tmp_path / "params.yaml",
    }
    paths["grid"].parent.mkdir()
    make_regions().to_parquet(paths["grid"])
    make_queries().to_parquet(paths["queries"])
    make_intersections().to_parquet(paths["intersections"], index=False)
    params = {
        "grid": {"zooms": [9, 10, 11]},
        "evalset": {
            "year": 2021,
            "sets": {
                "tiny": {"lat": 0.0, "lon": 0.0, "query_radius_km": RQ, "db_radius_km": RD},
                "alps": {"lat": 45.0, "lon": 10.0, "query_radius_km": 2500, "db_radius_km": 5000},
            },
        },
    }
    paths["params"].write_text(yaml.safe_dump(params))
    return paths


def _spec(sec: dict, name: str) -> EvalSetSpec:
    return stage.EvalsetParams.from_section(sec).spec(name)


def _args(world: dict[str, Path], name: str = "tiny", out_dir: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(
        params=world["params"],
        name=name,
        grid=world["grid"],
        queries=world["queries"],
        intersections=world["intersections"],
        out_dir=out_dir,
    )


# ---------------------------------------------------------------------------
# Selection (pure)


def test_radii_round_trip_through_yaml(world: dict[str, Path]) -> None:
    cfg = stage.EvalsetParams.from_section(yaml.safe_load(world["params"].read_text())["evalset"])
    spec, year = cfg.spec("tiny"), cfg.year
    assert (spec.query_radius_km, spec.db_radius_km, year) == (RQ, RD, 2021)


def test_select_evalset_counts_and_reasons() -> None:
    ev = select_evalset(SPEC, make_queries(), make_regions(), make_intersections())
    # Within the query radius (strict): E-7, E-2, E-4, E-5, E-1; not E-3 (on the circle), E-6, E-8.
    assert ev.num_within_radius == 5
    assert ev.queries["query_id"].tolist() == ["ISS001-E-1", "ISS001-E-2", "ISS001-E-7"]
    assert ev.queries["query_index"].tolist() == [0, 1, 2]
    assert ev.queries["num_positives"].tolist() == [1, 1, 2]
    dropped = dict(zip(ev.dropped["query_id"], ev.dropped["reason"], strict=True))
    assert dropped == {"ISS001-E-4": DROP_NO_POSITIVE, "ISS001-E-5": DROP_POSITIVE_OUTSIDE_DB}
    assert ev.dropped.set_index("query_id").loc["ISS001-E-5", "num_outside_db"] == 1

    # Database: centre strictly within RD, ordered by (zoom, row, col).
    assert ev.database["region_id"].tolist() == ["09_0002_0002", "10_0005_0001", "10_0007_0000", "11_0001_0001"]
    assert ev.database["db_index"].tolist() == [0, 1, 2, 3]

    # Positives as database indices.
    pos = ev.positives
    assert list(pos.columns) == ["query_index", "query_id", "db_index", "region_id", "iou", "intersection_km2"]
    got = {(r.query_id, r.db_index) for r in pos.itertuples()}
    assert got == {("ISS001-E-1", 2), ("ISS001-E-2", 3), ("ISS001-E-7", 0), ("ISS001-E-7", 1)}
    assert pos["query_index"].tolist() == sorted(pos["query_index"].tolist())
    row = pos[(pos.query_id == "ISS001-E-7") & (pos.region_id == "10_0005_0001")].iloc[0]
    assert row.iou == pytest.approx(0.2) and row.intersection_km2 == pytest.approx(101.0)

    s = summarize(SPEC, ev)
    assert s["num_within_radius"] == 5 and s["num_queries"] == 3 and s["num_db"] == 4
    assert s["num_dropped_no_positive"] == 1 and s["num_dropped_positive_outside_db"] == 1
    assert s["mean_positives_per_query"] == pytest.approx(4 / 3)
    assert s["num_db_per_zoom"] == {"9": 1, "10": 2, "11": 1}
    assert s["num_positives_per_zoom"] == {"9": 1, "10": 2, "11": 1}


def test_zooms_keep_the_database_and_positives_of_those_zooms() -> None:
    spec = EvalSetSpec("tiny10", 0.0, 0.0, RQ, RD, zooms=(10,))
    ev = select_evalset(spec, make_queries(), make_regions(), make_intersections())
    assert ev.database["region_id"].tolist() == ["10_0005_0001", "10_0007_0000"]
    assert set(ev.database["zoom"]) == {10} and set(ev.positives["region_id"].str[:2]) == {"10"}
    # E-5's zoom-9 positive outside the database is not a positive of this set, so it is
    # kept; E-2 overlaps only a zoom-11 region, so it has no positive here.
    assert ev.queries["query_id"].tolist() == ["ISS001-E-1", "ISS001-E-5", "ISS001-E-7"]
    assert ev.queries["num_positives"].tolist() == [1, 1, 1]
    dropped = dict(zip(ev.dropped["query_id"], ev.dropped["reason"], strict=True))
    assert dropped == {"ISS001-E-2": DROP_NO_POSITIVE, "ISS001-E-4": DROP_NO_POSITIVE}
    s = summarize(spec, ev)
    assert s["zooms"] == [10] and s["num_db_per_zoom"] == {"10": 2} and s["num_positives_per_zoom"] == {"10": 3}
    # Every zoom listed = no zooms given.
    every = select_evalset(EvalSetSpec("all", 0.0, 0.0, RQ, RD, zooms=(9, 10, 11)), make_queries(), make_regions(),
                           make_intersections())  # fmt: skip
    plain = select_evalset(SPEC, make_queries(), make_regions(), make_intersections())
    pd.testing.assert_frame_equal(every.positives, plain.positives)
    pd.testing.assert_frame_equal(every.dropped, plain.dropped)
    assert summarize(SPEC, plain)["zooms"] is None


def test_set_zooms_are_parsed_strictly() -> None:
    base = {"lat": 0.0, "lon": 0.0, "query_radius_km": 1, "db_radius_km": 2}
    spec = _spec({"sets": {"s": {**base, "zooms": ["11", 9, 9]}}}, "s")
    assert spec.zooms == (9, 11)
    assert _spec({"sets": {"s": base}}, "s").zooms is None
    for bad in ({"zooms": []}, {"zooms": 10}, {"zooms": "10"}, {"zooms": [31]}, {"zooms": [-1]}, {"zooms": ["x"]},
                {"zooms": [9.5]}, {"zooms": [True]}, {"zoom": [10]}, {"db_radius": 3}):  # fmt: skip
        with pytest.raises(ConfigError, match="evalset.sets.s"):
            _spec({"sets": {"s": {**base, **bad}}}, "s")


def test_strict_radius_with_inverse_geodesic() -> None:
    """A nadir placed at exactly the query radius by the inverse (forward geodesic)
    problem is excluded; one a metre closer is included."""
    from pyproj import Geod

    geod = Geod(a=6371000.0, f=0.0)
    lon_in, lat_in, _ = geod.fwd(20.0, 10.0, 37.0, 999_999.0)
    lon_on, lat_on, _ = geod.fwd(20.0, 10.0, 37.0, 1_000_000.0)
    d_on = float(haversine_km(10.0, 20.0, lat_on, lon_on))
    spec = EvalSetSpec("x", 10.0, 20.0, d_on, 2000.0)  # the radius is this point's own distance
    qs = pd.DataFrame({"query_id": ["a", "b"], "nadir_lat": [lat_in, lat_on], "nadir_lon": [lon_in, lon_on]})
    regions = pd.DataFrame(
        {"region_id": ["r"], "zoom": [9], "row": [0], "col": [0], "center_lat": [10.0], "center_lon": [20.0]}
    )
    pairs = pd.DataFrame({"query_id": ["a", "b"], "region_id": ["r", "r"]})
    ev = select_evalset(spec, qs, regions, pairs)
    assert ev.num_within_radius == 1 and ev.queries["query_id"].tolist() == ["a"]
    assert d_on == pytest.approx(1000.0, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    q=st.lists(st.tuples(st.floats(-60, 60), st.floats(-180, 180)), min_size=0, max_size=25),
    r=st.lists(st.tuples(st.floats(-60, 60), st.floats(-180, 180)), min_size=1, max_size=25),
    links=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24)), max_size=60),
    radii=st.tuples(st.floats(100, 8000), st.floats(100, 12000)),
)
def test_select_evalset_invariants(q, r, links, radii) -> None:  # type: ignore[no-untyped-def]
    spec = EvalSetSpec("h", 20.0, 30.0, radii[0], radii[1])
    qs = pd.DataFrame(
        {
            "query_id": [f"Q{i:03d}" for i in range(len(q))],
            "nadir_lat": [a for a, _ in q],
            "nadir_lon": [b for _, b in q],
        }
    )
    regions = pd.DataFrame(
        {
            "region_id": [f"R{i:03d}" for i in range(len(r))],
            "zoom": [9 + i % 3 for i in range(len(r))],
            "row": [i // 3 for i in range(len(r))],
            "col": [i for i in range(len(r))],
            "center_lat": [a for a, _ in r],
            "center_lon": [b for _, b in r],
        }
    )
    pairs = pd.DataFrame(
        {
            "query_id": [f"Q{a:03d}" for a, _ in links if a < len(q)],
            "region_id": [f"R{b % len(r):03d}" for a, b in links if a < len(q)],
        }
    ).drop_duplicates()
    ev = select_evalset(spec, qs, regions, pairs)

    d_q = haversine_km(spec.lat, spec.lon, qs["nadir_lat"], qs["nadir_lon"])
    d_r = haversine_km(spec.lat, spec.lon, regions["center_lat"], regions["center_lon"])
    assert ev.num_within_radius == int((d_q < spec.query_radius_km).sum())
    assert len(ev.database) == int((d_r < spec.db_radius_km).sum())
    assert len(ev.queries) + len(ev.dropped) == ev.num_within_radius
    db_ids = set(ev.database["region_id"])
    truth = pairs.groupby("query_id")["region_id"].apply(set).to_dict()
    for row in ev.queries.itertuples():
        assert truth[row.query_id] and truth[row.query_id] <= db_ids
        assert row.num_positives == len(truth[row.query_id])
    for row in ev.dropped.itertuples():
        pos = truth.get(row.query_id, set())
        assert row.reason == (DROP_NO_POSITIVE if not pos else DROP_POSITIVE_OUTSIDE_DB)
        assert pos or row.num_positives == 0
        assert not pos or not pos <= db_ids
    # Positives point at the right database rows.
    assert (
        ev.database["region_id"].to_numpy()[ev.positives["db_index"].to_numpy()] == ev.positives["region_id"].to_numpy()
    ).all()
    assert len(ev.positives) == int(ev.queries["num_positives"].sum())


def test_geodesic_circle_is_at_radius_and_unwrapped() -> None:
    lats, lons = geodesic_circle(0.0, 179.0, 500.0)
    assert len(lats) == 361 and lats[0] == lats[-1]
    d = haversine_km(0.0, 179.0, lats, lons)
    np.testing.assert_allclose(d, 500.0, rtol=1e-9)
    assert np.abs(np.diff(lons)).max() < 10  # no jump at ±180
    assert lons.max() > 180  # it crossed, and continued past 180


# ---------------------------------------------------------------------------
# The stage: files, map, errors


def test_stage_writes_outputs(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cmd_evalset(_args(world))  # out_dir None -> data/evalsets/tiny
    out = tmp_path / "data" / "evalsets" / "tiny"
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("evalset tiny: 3 queries kept of 5")

    q = pd.read_csv(out / "queries.csv")
    assert list(q.columns) == [
        "query_index",
        "query_id",
        "filename",
        "nadir_lat",
        "nadir_lon",
        "num_positives",
        "pass_id",
    ]
    assert set(q["pass_id"]) == {"ISS001-E-20210101-1"}  # frames 1..8 of one roll and day: one pass
    assert q["query_id"].tolist() == ["ISS001-E-1", "ISS001-E-2", "ISS001-E-7"]
    assert q["filename"].tolist() == ["@q@ISS001-E-1@.jpg", "@q@ISS001-E-2@.jpg", "@q@ISS001-E-7@.jpg"]

    db = pd.read_csv(out / "database.csv")
    assert list(db.columns) == ["db_index", "region_id", "zoom", "path", "center_lat", "center_lon"]
    regions = make_regions().set_index("region_id")
    for row in db.itertuples():
        g = regions.loc[row.region_id]
        corners = tuple(g[c] for c in CORNER_COLUMNS)
        assert row.path == db_relpath(corners, row.region_id, int(g.zoom), 2021, g.center_lat, g.center_lon, g.area_km2)
        assert row.path.startswith(f"database/2021_{int(g.zoom):02d}/")

    pos = pd.read_parquet(out / "positives.parquet")
    assert len(pos) == 4 and set(pos["db_index"]) == {0, 1, 2, 3}

    dropped = pd.read_csv(out / "dropped.csv")
    assert dict(zip(dropped["query_id"], dropped["reason"], strict=True)) == {
        "ISS001-E-4": "no_positive",
        "ISS001-E-5": "positive_outside_db",
    }

    s = json.loads((out / "summary.json").read_text())
    for key in (
        "name",
        "poi_lat",
        "poi_lon",
        "query_radius_km",
        "db_radius_km",
        "num_within_radius",
        "num_queries",
        "num_db",
        "num_dropped_no_positive",
        "num_dropped_positive_outside_db",
        "mean_positives_per_query",
        "num_db_per_zoom",
    ):
        assert key in s
    assert (s["name"], s["num_within_radius"], s["num_queries"], s["num_db"]) == ("tiny", 5, 3, 4)

    png = (out / "map.png").read_bytes()
    assert 10_000 < len(png) < 1_500_000
    # the map shows both radii and a marker for each kind of dropped query
    rgb = load_rgb(out / "map.png")
    for colour in (evalset_map.DB_COLOR, evalset_map.Q_RADIUS_COLOR):
        assert colour_pixels(rgb, colour) > 200, colour
    for colour in (evalset_map.NO_POS_COLOR, evalset_map.OUTSIDE_COLOR):
        assert colour_pixels(rgb, colour, tol=40) > 5, colour
    assert not list(out.glob(".*.tmp"))  # no leftover temporary files


def test_unknown_set_is_config_error(world: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown set 'nowhere'.*alps, tiny"):
        cmd_evalset(_args(world, "nowhere", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_reports_one_line(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from earthloc.cli import main as cli_main

    rc = cli_main(["evalset", "nowhere", "--params", str(world["params"]), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "valid names" in err


def test_bad_set_values_are_config_errors() -> None:
    params = {
        "evalset": {
            "sets": {
                "bad": {"lat": 95.0, "lon": 0.0, "query_radius_km": 1, "db_radius_km": 1},
                "neg": {"lat": 0.0, "lon": 0.0, "query_radius_km": -1, "db_radius_km": 1},
                "part": {"lat": 0.0},
            }
        }
    }
    for name in ("bad", "neg", "part"):
        with pytest.raises(ConfigError):
            _spec(params["evalset"], name)
    with pytest.raises(ConfigError):
        _spec({}, "bad")


def test_intersections_naming_unknown_region_is_input_error(world: dict[str, Path], tmp_path: Path) -> None:
    pairs = make_intersections()
    pairs.loc[0, "region_id"] = "09_9999_9999"
    pairs.to_parquet(world["intersections"], index=False)
    with pytest.raises(InputError, match="not in"):
        cmd_evalset(_args(world, out_dir=tmp_path / "out"))


def test_missing_input_is_input_error(world: dict[str, Path], tmp_path: Path) -> None:
    world["queries"].unlink()
    with pytest.raises(InputError, match="no such file"):
        cmd_evalset(_args(world, out_dir=tmp_path / "out"))


def test_coastline_segments_italy() -> None:
    from pipeline.presentation.coastlines import coastline_segments

    segs = coastline_segments(6.0, 36.0, 19.0, 47.0, step_deg=0.2)
    assert segs and all(s.ndim == 2 and s.shape[1] == 2 for s in segs)
    pts = np.concatenate(segs)
    assert pts[:, 0].min() >= 6.0 and pts[:, 0].max() <= 19.0
    assert pts[:, 1].min() >= 36.0 and pts[:, 1].max() <= 47.0
    assert sum(len(s) for s in segs) > 200
