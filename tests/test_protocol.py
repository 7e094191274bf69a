"""The demo protocol's plumbing: tiles rendered in worker processes are the same bytes,
areas of interest fetched for some years only, and query photos limited to the ones used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from pipeline.errors import ConfigError, InputError
from pipeline.geo.aoi import Aoi, aois_for, aois_for_year, in_aois
from pipeline.synthetic.server import SyntheticTileServer, layer_name, tile_jpeg

TILES = [(11, 845, 483), (10, 422, 241), (9, 211, 120)]  # z, y, x around (30 N, 95 W)


def test_worker_processes_serve_the_same_bytes_as_in_process_rendering() -> None:
    with SyntheticTileServer(seed=0, render_processes=2) as srv, requests.Session() as http:
        for z, y, x in TILES:
            url = f"{srv.base_url}/wmts/1.0.0/{layer_name(2019)}/default/g/{z}/{y}/{x}.jpg"
            resp = http.get(url, timeout=60)
            assert resp.status_code == 200, resp.text
            assert resp.content == tile_jpeg(z, x, y, 2019, 0)
        assert srv.tiles_rendered == len(TILES)
        # out-of-range tiles are still refused before any worker is asked
        bad = http.get(f"{srv.base_url}/wmts/1.0.0/{layer_name(2019)}/default/g/9/512/0.jpg", timeout=10)
        assert bad.status_code == 404


def test_negative_render_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="render_processes"):
        SyntheticTileServer(render_processes=-1)


# --------------------------------------------------------------------------- areas with years

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def fetch_section(**over: Any) -> dict[str, Any]:
    sec = json.loads(json.dumps(PARAMS["fetch"]))
    sec.update(over)
    sec["run"]["progress"] = False
    return sec


def test_an_area_names_the_years_it_is_fetched_for() -> None:
    wide = Aoi.from_dict({"name": "db", "lat": 30.0, "lon": -95.0, "radius_km": 300, "years": [2021]})
    small = Aoi.from_dict({"name": "train", "lat": 30.0, "lon": -95.0, "radius_km": 100})
    assert wide.years == (2021,) and small.years is None
    assert aois_for_year((wide, small), 2021) == (wide, small)
    assert aois_for_year((wide, small), 2018) == (small,)
    assert aois_for_year(None, 2018) is None  # the world stays the world
    assert aois_for_year((wide,), 2019) == () and not in_aois([30.0], [-95.0], ()).any()


@pytest.mark.parametrize("years", [[], "2021", 2021, ["x"]])
def test_bad_area_years_are_refused(years: Any) -> None:
    with pytest.raises(ValueError):
        Aoi.from_dict({"lat": 0, "lon": 0, "radius_km": 10, "years": years})


def test_an_area_names_the_zooms_it_is_fetched_at() -> None:
    wide = Aoi.from_dict({"name": "db", "lat": 30.0, "lon": -95.0, "radius_km": 300, "years": [2021],
                          "zooms": ["10"]})  # fmt: skip
    small = Aoi.from_dict({"name": "train", "lat": 30.0, "lon": -95.0, "radius_km": 100})
    assert wide.zooms == (10,) and small.zooms is None
    assert aois_for((wide, small), 2021, 10) == (wide, small)
    assert aois_for((wide, small), 2021, 9) == (small,)
    assert aois_for((wide, small), 2018, 10) == (small,)
    assert aois_for((wide, small), zoom=11) == (small,)
    assert aois_for(None, 2021, 9) is None


@pytest.mark.parametrize("zooms", [[], "10", 10, ["x"], [9.5], [True], [31]])
def test_bad_area_zooms_are_refused(zooms: Any) -> None:
    with pytest.raises(ValueError, match="zooms"):
        Aoi.from_dict({"lat": 0, "lon": 0, "radius_km": 10, "zooms": zooms})


def test_area_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        Aoi.from_dict({"lat": 0, "lon": 0, "radius_km": 10, "yeras": [2021]})


def test_an_area_year_outside_fetch_years_is_a_config_error() -> None:
    from pipeline.stages.fetch import FetchParams

    aois = [{"name": "a", "lat": 0, "lon": 0, "radius_km": 10, "years": [2017]}]
    with pytest.raises(ConfigError, match="2017"):
        FetchParams.from_section(fetch_section(aois=aois))
    aois = [{"name": "a", "lat": 0, "lon": 0, "radius_km": 10, "zooms": [12]}]
    with pytest.raises(ConfigError, match=r"zoom\(s\) \[12\]"):
        FetchParams.from_section(fetch_section(aois=aois))
    with pytest.raises(ConfigError, match="render_processes"):
        FetchParams.from_section(fetch_section(run={**PARAMS["fetch"]["run"], "render_processes": -1}))


def test_shards_select_the_areas_of_their_year(tmp_path: Path) -> None:
    from pipeline.stages import fetch, grid

    out = tmp_path / "regions.parquet"
    grid.run(grid.GridParams.from_section({"zooms": [10], "bbox": [-98.0, 27.0, -92.0, 33.0]}), grid.GridPaths(out))
    aois = (Aoi("db", 30.0, -95.0, 250.0, (2021,)), Aoi("train", 30.0, -95.0, 100.0))
    r2021 = fetch.select_regions(out, 10, aois, 2021)
    r2018 = fetch.select_regions(out, 10, aois, 2018)
    assert 0 < len(r2018) < len(r2021)
    assert set(r2018["region_id"]) == set(fetch.select_regions(out, 10, aois[1:])["region_id"])
    assert set(r2021["region_id"]) == set(fetch.select_regions(out, 10, aois)["region_id"])


def test_shards_select_the_areas_of_their_zoom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from earthloc.cli import main as cli_main
    from pipeline.stages import fetch, grid

    out = tmp_path / "regions.parquet"
    grid.run(grid.GridParams.from_section({"zooms": [10, 11], "bbox": [-98.0, 27.0, -92.0, 33.0]}), grid.GridPaths(out))
    aois = (Aoi("db", 30.0, -95.0, 250.0, (2021,), (10,)), Aoi("train", 30.0, -95.0, 100.0))
    z10, z11 = fetch.select_regions(out, 10, aois, 2021), fetch.select_regions(out, 11, aois, 2021)
    assert set(z10["zoom"]) == {10} and set(z11["zoom"]) == {11}
    # zoom 11 of 2021 is the training disc only; zoom 10 of 2021 the wide disc
    assert set(z11["region_id"]) == set(fetch.select_regions(out, 11, aois[1:], 2021)["region_id"])
    assert set(z10["region_id"]) == set(fetch.select_regions(out, 10, aois[:1], 2021)["region_id"])
    assert len(fetch.select_regions(out, 10, aois[1:], 2021)) < len(z10)

    # `fetch --plan` counts exactly the regions each shard selects
    sec = fetch_section(aois=[{"name": a.name, "lat": a.lat, "lon": a.lon, "radius_km": a.radius_km,
                               **({"years": list(a.years)} if a.years else {}),
                               **({"zooms": list(a.zooms)} if a.zooms else {})} for a in aois],
                        zooms=["10", "11"])  # fmt: skip
    params = json.loads(json.dumps(PARAMS))
    params["fetch"] = sec
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert cli_main(["fetch", "--plan", "--all", "--params", str(tmp_path / "params.yaml"), "--grid", str(out),
                     "--root", str(tmp_path / "tiles")]) == 0  # fmt: skip
    lines = capsys.readouterr().out.split("world (aois null")[0].splitlines()
    planned = {ln.split()[0]: int(ln.split()[1]) for ln in lines if ln[:4].isdigit() and "_" in ln.split()[0]}
    fp = fetch.FetchParams.from_section(sec)
    expected = {f"{y}_{z:02d}": len(fetch.select_regions(out, z, fp.aois, y)) for y in fp.years for z in fp.zooms}
    assert planned == expected
    assert planned["2018_10"] < planned["2021_10"] and planned["2018_11"] == planned["2021_11"]


# --------------------------------------------------------------------------- which photos


def test_photo_scope_params_are_checked() -> None:
    from pipeline.fetch.queries import PhotoScope

    assert PhotoScope.from_section(None) is None
    s = PhotoScope.from_section({"evalsets": ["demo"], "aois": ["cape"]})
    assert (
        s is not None
        and s.evalsets == ("demo",)
        and s.evalset_queries("demo") == Path("data/evalsets/demo/queries.csv")
    )
    for bad in ({"evalsets": "demo"}, {"evalsets": ["../x"]}, {"aoi": ["cape"]}, ["demo"]):
        with pytest.raises(ConfigError):
            PhotoScope.from_section(bad)


def test_scope_keeps_the_evaluation_queries_and_the_training_area(tmp_path: Path) -> None:
    from pipeline.fetch.queries import PhotoScope
    from pipeline.stages.fetch_queries import apply_scope

    photographable = pd.DataFrame(
        {
            "query_id": ["A-1", "A-2", "B-1", "C-1", "C-2"],
            "nadir_lat": [30.0, 30.5, 33.0, -35.0, -34.5],
            "nadir_lon": [-95.0, -95.0, -95.0, 19.0, 19.5],
        }
    )
    (tmp_path / "demo").mkdir()
    pd.DataFrame({"query_index": [0, 1], "query_id": ["A-1", "Z-9"]}).to_csv(tmp_path / "demo/queries.csv", index=False)
    (tmp_path / "demo_val").mkdir()
    pd.DataFrame({"query_index": [0], "query_id": ["A-2"]}).to_csv(tmp_path / "demo_val/queries.csv", index=False)
    aois = (Aoi("texas", 30.0, -95.0, 1000.0, (2021,)), Aoi("cape", -35.0, 19.0, 100.0))
    scope = PhotoScope(("demo", "demo_val"), ("cape",), str(tmp_path))
    # Z-9 is in demo but not photographable (it overlaps a region of a zoom the store lacks):
    # the set judged it on its own zooms, so it gets a photo. C-3 lies in the training area
    # but has a positive outside the fetched regions: no photo. B-1 lies in the 2021 area
    # but in no evaluation set and no training area: no photo.
    queries = pd.concat([photographable, pd.DataFrame({"query_id": ["Z-9", "C-3"], "nadir_lat": [31.0, -35.2],
                                                       "nadir_lon": [-95.0, 19.2]})])  # fmt: skip
    queries = queries.sample(frac=1.0, random_state=0)  # the order of the table does not matter
    out = apply_scope(queries, photographable, scope, aois)
    assert list(out["query_id"]) == ["A-1", "A-2", "C-1", "C-2", "Z-9"]

    with pytest.raises(ConfigError, match="nowhere"):
        apply_scope(queries, photographable, PhotoScope((), ("nowhere",), str(tmp_path)), aois)
    with pytest.raises(InputError, match="no such file"):
        apply_scope(queries, photographable, PhotoScope(("missing",), (), str(tmp_path)), aois)
    with pytest.raises(InputError, match="not in the query table"):
        apply_scope(queries[queries["query_id"] != "Z-9"], photographable, scope, aois)


# --------------------------------------------------------------------------- the protocol in params


def test_fetch_queries_depends_on_every_evaluation_set_it_photographs() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["fetch_queries"]
    scope = PARAMS["fetch_queries"]["scope"]
    for name in scope["evalsets"]:
        assert f"data/evalsets/{name}/queries.csv" in dvc["deps"], name
    assert "fetch.aois" in dvc["params"]
    names = {a["name"] for a in PARAMS["fetch"]["aois"]}
    assert set(scope["aois"]) <= names


def test_the_demo_database_is_exactly_a_2021_area_and_training_has_every_year() -> None:
    sets = PARAMS["evalset"]["sets"]
    aois = [Aoi.from_dict(a) for a in PARAMS["fetch"]["aois"]]
    year = int(PARAMS["evalset"]["year"])
    for name in ("demo", "demo_val"):
        s = sets[name]
        same = [a for a in aois if (a.lat, a.lon, a.radius_km) == (s["lat"], s["lon"], s["db_radius_km"])]
        assert same and all(a.fetched_in(year) for a in same), name
        # the area is fetched at exactly the set's zooms
        assert all(a.zooms == (None if s.get("zooms") is None else tuple(sorted(s["zooms"]))) for a in same), name
        # no query loses a positive outside the database: the database reaches beyond every
        # footprint of a query within the query radius (checked on real data below)
        assert s["db_radius_km"] > s["query_radius_km"]
    train_years = PARAMS["train"]["years"]
    assert any(all(a.fetched_in(y) for y in train_years) for a in aois)


DEMO = ROOT / "data" / "evalsets" / "demo"


@pytest.mark.skipif(not (DEMO / "positives.parquet").exists(), reason="needs the evalset stage's demo set (dvc repro)")
def test_built_demo_set_has_a_low_base_rate_and_drops_nothing() -> None:
    from earthloc.retrieval.recall import random_recall_curve

    summary = json.loads((DEMO / "summary.json").read_text())
    if summary["db_radius_km"] != PARAMS["evalset"]["sets"]["demo"]["db_radius_km"]:
        pytest.skip("data/evalsets/demo was built with other params")
    queries = pd.read_csv(DEMO / "queries.csv")
    database = pd.read_csv(DEMO / "database.csv")
    assert summary["num_dropped_positive_outside_db"] == 0
    r10 = random_recall_curve(len(database), queries["num_positives"].to_numpy(), 10, copies=4)[9]
    assert np.isfinite(r10) and r10 <= 10.0  # the protocol's requirement, not a measured result


def test_demo_protocol_on_a_set_this_test_builds(tmp_path: Path) -> None:
    """The demo sets, built here from the shipped NASA rows near the POI, the params' grid
    over the database disc and the project's exact overlaps: no query loses a positive
    outside the database, and a random ranking's R@10 stays within the protocol's 10 %."""
    from earthloc.retrieval.recall import random_recall_curve
    from pipeline.config import evalset_config
    from pipeline.geo.overlap import overlap_table
    from pipeline.io import write_geoparquet
    from pipeline.stages import evalset as evalset_stage
    from pipeline.stages.grid import GridParams, build_grid
    from pipeline.stages.intersect import IntersectParams, pairs_table
    from pipeline.stages.queries import QueriesParams, ingest, read_nasa_csv

    sets = PARAMS["evalset"]["sets"]
    for name in ("demo", "demo_val"):  # one database disc for both: the grid below is built once
        s = sets[name]
        assert (s["lat"], s["lon"], s["db_radius_km"]) == (
            sets["demo"]["lat"],
            sets["demo"]["lon"],
            sets["demo"]["db_radius_km"],
        )
    poi_lat, poi_lon, db_km = sets["demo"]["lat"], sets["demo"]["lon"], sets["demo"]["db_radius_km"]

    # Rows a little beyond the query radius too, so the stage's own distance test decides.
    # Passes (and so folds) are found among these rows only; the two rules hold per query.
    near = tmp_path / "near.csv"
    from pipeline.geo.distance import haversine_km
    from support import nasa_rows

    radius = sets["demo"]["query_radius_km"] + 50  # every query any demo set can select
    assert nasa_rows(near, lambda lat, lon: haversine_km(poi_lat, poi_lon, lat, lon) <= radius) > 0
    qparams = QueriesParams.from_section(PARAMS["queries"])
    queries, rejected = ingest(read_nasa_csv(near), qparams)
    assert rejected.empty, rejected
    # A box holding the database disc: degrees of latitude and of longitude at its poleward edge.
    dlat = db_km / 111.0 + 1.0
    dlon = db_km / (111.0 * np.cos(np.radians(abs(poi_lat) + dlat))) + 1.0
    grid_params = GridParams.from_section(
        {**PARAMS["grid"], "bbox": [poi_lon - dlon, poi_lat - dlat, poi_lon + dlon, poi_lat + dlat]}
    )
    regions = build_grid(grid_params)
    intersect = IntersectParams.from_section(PARAMS.get("intersect"), qparams.densify_deg)
    pairs = overlap_table(
        queries.geometry.values, regions.geometry.values, intersect.densify_deg, intersect.min_intersection_km2
    )
    paths = {"grid": tmp_path / "regions.parquet", "queries": tmp_path / "queries.parquet",
             "intersections": tmp_path / "intersections.parquet"}  # fmt: skip
    write_geoparquet(regions, paths["grid"])
    write_geoparquet(queries, paths["queries"])
    pairs_table(pairs, queries, regions).to_parquet(paths["intersections"], index=False)

    for name in ("demo", "demo_val"):
        stage_paths = evalset_stage.EvalsetPaths(
            paths["grid"], paths["queries"], paths["intersections"], tmp_path / name
        )
        summary = evalset_stage.run(evalset_config(PARAMS), stage_paths, name, draw_map=False)
        assert summary["num_queries"] > 0, name
        assert summary["num_dropped_positive_outside_db"] == 0, name
        built = pd.read_csv(tmp_path / name / "queries.csv")
        database = pd.read_csv(tmp_path / name / "database.csv")
        r10 = random_recall_curve(len(database), built["num_positives"].to_numpy(), 10, copies=4)[9]
        assert np.isfinite(r10) and r10 <= 10.0, (name, r10)  # the protocol's requirement
