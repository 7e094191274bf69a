"""`earthloc audit`: one query's regions, GeoJSON and map; --check against the footprints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch

from earthloc import cli
from figure_support import colour_pixels, load_rgb
from pipeline.errors import InputError
from pipeline.geo import tiles
from pipeline.geo.area import DEFAULT_DENSIFY_DEG
from pipeline.geo.footprints import quads_from_corners, split_antimeridian, unwrap_ring_lons
from pipeline.geo.names import query_filename
from pipeline.geo.overlap import overlap_table
from pipeline.geo.regions import describe_regions
from pipeline.stages.intersect import pairs_table, upstream_dict
from pipeline.tools import audit

# Queries: a tilted quad in Europe, one across the antimeridian, one over open sea far
# from every region, and one the intersection files will leave out.
QUERIES = {
    "ISS001-E-1": [(44.0, 4.1), (45.2, 4.6), (44.9, 6.0), (43.7, 5.5)],
    "ISS002-E-22": [(-10.5, 179.3), (-9.6, 179.4), (-9.7, -179.4), (-10.6, -179.5)],
    "ISS003-E-333": [(-40.0, -30.0), (-39.5, -30.0), (-39.5, -29.4), (-40.0, -29.4)],
    "ISS004-E-4444": [(44.2, 3.0), (44.6, 3.0), (44.6, 3.6), (44.2, 3.6)],
}


def _regions_near(lat: float, lon: float, zoom: int, n: int) -> list[tuple[int, int, int]]:
    row0 = int(tiles.lat_to_row(lat, zoom)) - 4
    col0 = int(tiles.lon_to_col(lon, zoom)) - 4
    size = 2**zoom
    return [(zoom, row0 + 2 * i, (col0 + 2 * j) % size) for i in range(n) for j in range(n)]


def make_grid() -> gpd.GeoDataFrame:
    zrc = []
    for z, n in ((9, 3), (10, 4), (11, 5)):
        zrc += _regions_near(44.5, 5.0, z, n)
        zrc += _regions_near(-10.0, 180.0, z, n)  # some of these wrap across ±180
    df = pd.DataFrame(sorted(set(zrc)), columns=["zoom", "row", "col"])
    df["land_fraction"] = 0.5
    table, geoms = describe_regions(df)
    return gpd.GeoDataFrame(table, geometry=geoms, crs="EPSG:4326")


def make_queries() -> gpd.GeoDataFrame:
    rows = []
    ids = list(QUERIES)
    lats = np.array([[c[0] for c in QUERIES[q]] for q in ids])
    lons = np.array([[c[1] for c in QUERIES[q]] for q in ids])
    geoms = split_antimeridian(quads_from_corners(lats, unwrap_ring_lons(lons)))
    for qid, corners, geom in zip(ids, lats.tolist(), geoms):
        i = ids.index(qid)
        flat = [v for pair in QUERIES[qid] for v in pair]
        nadir_lat, nadir_lon = float(np.mean(corners)), float(lons[i][0])
        rows.append(
            {
                "query_id": qid,
                "date": "20210615",
                "filename": query_filename(flat, qid, "20210615", nadir_lat, nadir_lon, 12345, "90.0"),
                "nadir_lat": round(nadir_lat, 1),
                "nadir_lon": round(nadir_lon, 1),
                "orientation": 90.0,
                "nasa_area_km2": 12345.0,
                "area_km2": 12000.0,
                "crosses_antimeridian": geom.geom_type == "MultiPolygon",
                "geometry": geom,
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("audit")
    grid, queries = make_grid(), make_queries()
    grid.to_parquet(d / "regions.parquet")
    queries.to_parquet(d / "queries.parquet")
    pairs = overlap_table(queries.geometry.values, grid.geometry.values, densify_deg=DEFAULT_DENSIFY_DEG)
    table = pairs_table(pairs, queries, grid)
    table = table[table["query_id"] != "ISS004-E-4444"].reset_index(drop=True)  # a query the file forgot
    table.to_parquet(d / "intersections.parquet", index=False)
    listed = queries[queries["query_id"] != "ISS004-E-4444"]
    torch.save(upstream_dict(table, listed, grid, 2021), d / "intersections.pt")
    return {"dir": d, "table": table, "queries": queries, "grid": grid}


def ns(world: dict[str, object], tmp_path: Path, intersections: Path, **kw: object) -> argparse.Namespace:
    d = world["dir"]
    base = {
        "intersections": intersections,
        "query_id": None,
        "grid": d / "regions.parquet",
        "queries": d / "queries.parquet",
        "out_dir": tmp_path / "out",
        "check": False,
        "sample": 0,
        "seed": 0,
        "params": Path("params.yaml"),
    }
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(autouse=True)
def _no_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: audit uses the defaults the files were made with


def test_fixture_is_meaningful(world: dict[str, object]) -> None:
    table = world["table"]
    per_q = table.groupby("query_id").size()
    assert per_q["ISS001-E-1"] > 10 and per_q["ISS002-E-22"] > 3
    assert "ISS003-E-333" not in per_q  # over open sea: no regions
    assert set(table["zoom"]) == {9, 10, 11}


def test_audit_one_query_parquet(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = world["dir"]
    rc = cli.cmd_audit(ns(world, tmp_path, d / "intersections.parquet", query_id="ISS001-E-1"))
    assert rc == 0
    out = capsys.readouterr().out
    expected = world["table"].query("query_id == 'ISS001-E-1'").sort_values("iou", ascending=False)
    lines = out.splitlines()
    order = [next(i for i, ln in enumerate(lines) if rid in ln) for rid in expected["region_id"]]
    assert order == sorted(order)  # sorted by IoU, best first
    gj = json.loads((tmp_path / "out" / "ISS001-E-1.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    assert len(gj["features"]) == 1 + len(expected)
    q = gj["features"][0]
    assert q["properties"]["role"] == "query" and q["properties"]["query_id"] == "ISS001-E-1"
    ring = q["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and -180 <= ring[0][0] <= 180  # lon first
    regions = {f["properties"]["region_id"]: f["properties"] for f in gj["features"][1:]}
    best = expected.iloc[0]
    assert regions[best["region_id"]]["iou"] == pytest.approx(best["iou"])
    # the map draws the query footprint (bold black), the best region (red dashes) and the nadir (orange star)
    rgb = load_rgb(tmp_path / "out" / "ISS001-E-1.png")
    assert rgb.shape[0] > 300 and rgb.shape[1] > 300
    assert colour_pixels(rgb, "black", tol=30) > 200
    assert colour_pixels(rgb, "tab:red") > 50
    assert colour_pixels(rgb, "orange") > 20


def _points(coords: list) -> list:
    if isinstance(coords[0], (int, float)):
        return [coords]
    return [p for c in coords for p in _points(c)]


def test_audit_antimeridian_query_pt_by_filename(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = world["dir"]
    name = world["queries"].set_index("query_id").loc["ISS002-E-22", "filename"]
    assert cli.cmd_audit(ns(world, tmp_path, d / "intersections.pt", query_id=name)) == 0
    out = capsys.readouterr().out
    assert "database/2021_" in out  # db paths shown for .pt sources
    gj = json.loads((tmp_path / "out" / "ISS002-E-22.geojson").read_text())
    assert gj["features"][0]["geometry"]["type"] == "MultiPolygon"
    assert any(f["geometry"]["type"] == "MultiPolygon" for f in gj["features"][1:])  # wrapping regions
    for f in gj["features"]:
        xs = [p[0] for p in _points(f["geometry"]["coordinates"])]
        assert min(xs) >= -180 and max(xs) <= 180
    rgb = load_rgb(tmp_path / "out" / "ISS002-E-22.png")  # both halves of the split footprint drawn
    assert colour_pixels(rgb, "black", tol=30) > 200 and colour_pixels(rgb, "tab:red") > 50


def test_audit_query_without_regions(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = world["dir"]
    assert cli.cmd_audit(ns(world, tmp_path, d / "intersections.parquet", query_id="ISS003-E-333")) == 0
    assert "0 overlapping regions" in capsys.readouterr().out
    gj = json.loads((tmp_path / "out" / "ISS003-E-333.geojson").read_text())
    assert len(gj["features"]) == 1
    rgb = load_rgb(tmp_path / "out" / "ISS003-E-333.png")
    assert colour_pixels(rgb, "black", tol=30) > 200  # the footprint is drawn
    assert colour_pixels(rgb, "tab:red") == 0  # and no best region


@pytest.mark.parametrize("fname", ["intersections.parquet", "intersections.pt"])
def test_unknown_query_and_bad_files(world: dict[str, object], tmp_path: Path, fname: str) -> None:
    d = world["dir"]
    with pytest.raises(InputError, match="unknown query id"):
        cli.cmd_audit(ns(world, tmp_path, d / fname, query_id="ISS999-E-1"))
    with pytest.raises(InputError, match="not a query id"):
        cli.cmd_audit(ns(world, tmp_path, d / fname, query_id="../../etc/passwd"))
    bad = tmp_path / f"junk{Path(fname).suffix}"
    bad.write_bytes(b"not a file of that kind")
    with pytest.raises(InputError, match="not a readable"):
        cli.cmd_audit(ns(world, tmp_path, bad))
    with pytest.raises(InputError, match="no such file"):
        cli.cmd_audit(ns(world, tmp_path, tmp_path / f"absent{Path(fname).suffix}"))


def test_pt_with_wrong_structure(world: dict[str, object], tmp_path: Path) -> None:
    p = tmp_path / "wrong.pt"
    torch.save({"not a file name": []}, p)
    with pytest.raises(InputError, match="not an upstream query file name"):
        cli.cmd_audit(ns(world, tmp_path, p))


def test_pt_entry_not_a_6_tuple(world: dict[str, object], tmp_path: Path) -> None:
    name = world["queries"]["filename"].iloc[0]
    p = tmp_path / "short.pt"
    torch.save({name: [("database/x.jpg", "09_0001_0002", 1.0)]}, p)
    with pytest.raises(InputError, match="not a 6-tuple"):
        cli.cmd_audit(ns(world, tmp_path, p))


def test_legacy_pt_format_is_read(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a zip archive: read through torch.load(weights_only=True), same table."""
    d = world["dir"]
    data = torch.load(d / "intersections.pt", weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    a = audit.load_intersections(d / "intersections.pt").pairs
    b = audit.load_intersections(legacy).pairs
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == len(world["table"])


def test_summary(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = world["dir"]
    assert cli.cmd_audit(ns(world, tmp_path, d / "intersections.pt")) == 0
    out = capsys.readouterr().out
    assert f"3 queries, {len(world['table'])} pairs" in out


def _complete(world: dict[str, object], tmp_path: Path) -> tuple[Path, Path]:
    """Both files with the forgotten query put back: fully correct."""
    grid, queries = world["grid"], world["queries"]
    table = pairs_table(
        overlap_table(queries.geometry.values, grid.geometry.values, DEFAULT_DENSIFY_DEG), queries, grid
    )
    pq, pt = tmp_path / "full.parquet", tmp_path / "full.pt"
    table.to_parquet(pq, index=False)
    torch.save(upstream_dict(table, queries, grid, 2021), pt)
    return pq, pt


@pytest.mark.parametrize("fmt", ["parquet", "pt"])
def test_check_correct_file_passes(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    pq, pt = _complete(world, tmp_path)
    rc = cli.cmd_audit(ns(world, tmp_path, pq if fmt == "parquet" else pt, check=True))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 of 4 queries" in out and " 0 disagreements" in out
    csv = pd.read_csv(tmp_path / "out" / "check_disagreements.csv")
    assert list(csv.columns) == audit.DISAGREEMENT_COLUMNS and len(csv) == 0


def test_check_finds_query_missing_from_file(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = world["dir"]
    assert cli.cmd_audit(ns(world, tmp_path, d / "intersections.parquet", check=True)) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "ISS004-E-4444 x " in out and "not in the file at all" in out
    csv = pd.read_csv(tmp_path / "out" / "check_disagreements.csv")
    assert set(csv["kind"]) == {"missing"} and set(csv["query_id"]) == {"ISS004-E-4444"}


def _edit_parquet(path: Path, how: str) -> tuple[str, str]:
    t = pd.read_parquet(path)
    i = int(np.flatnonzero(t["query_id"] == "ISS001-E-1")[3])
    qid, rid = t.loc[i, "query_id"], t.loc[i, "region_id"]
    if how == "iou":
        t.loc[i, "iou"] *= 1.001
    elif how == "delete":
        t = t.drop(index=i)
    elif how == "bogus":
        rid = "11_0000_0000"  # a region of nowhere near the query
        t = pd.concat([t, pd.DataFrame([{**t.loc[0].to_dict(), "region_id": rid}])], ignore_index=True)
        qid = t.loc[0, "query_id"]
    t.to_parquet(path, index=False)
    return qid, rid


@pytest.mark.parametrize("how", ["iou", "delete", "bogus"])
def test_check_flags_edited_parquet(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    pq, _ = _complete(world, tmp_path)
    qid, rid = _edit_parquet(pq, how)
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True)) == 1
    out = capsys.readouterr().out
    flagged = [ln for ln in out.splitlines() if f"{qid} x {rid}" in ln]
    assert flagged, out
    kind = {"iou": "value", "delete": "missing", "bogus": "unknown_region"}[how]
    assert any(ln.split()[0] == kind for ln in flagged)


def test_check_flags_extra_pair_on_known_region(
    world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq, _ = _complete(world, tmp_path)
    t = pd.read_parquet(pq)
    rid = t.loc[t["query_id"] == "ISS002-E-22", "region_id"].iloc[0]  # a real region, far from ISS001-E-1
    row = t[t["query_id"] == "ISS001-E-1"].iloc[[0]].assign(region_id=rid)
    pd.concat([t, row], ignore_index=True).to_parquet(pq, index=False)
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True)) == 1
    out = capsys.readouterr().out
    assert any(ln.split()[0] == "extra" and f"ISS001-E-1 x {rid}" in ln for ln in out.splitlines()), out


def test_check_flags_edited_pt(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, pt = _complete(world, tmp_path)
    data = torch.load(pt, weights_only=True)
    key = world["queries"].set_index("query_id").loc["ISS002-E-22", "filename"]
    path, rid, km2, iou, qf, rf = data[key][1]
    data[key][1] = (path, rid, km2 * 1.01, iou, qf, rf)
    p0, rid0, *rest = data[key][0]
    data[key][0] = (p0.replace("@2021@", "@2020@"), rid0, *rest)
    torch.save(data, pt)
    assert cli.cmd_audit(ns(world, tmp_path, pt, check=True)) == 1
    out = capsys.readouterr().out
    assert any(f"ISS002-E-22 x {rid} intersection_km2" in ln for ln in out.splitlines()), out
    assert any(f"ISS002-E-22 x {rid0} db_relpath" in ln for ln in out.splitlines()), out


def test_check_uses_params_file(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file made with other parameters than params.yaml's disagrees everywhere, with a hint."""
    pq, _ = _complete(world, tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("queries:\n  densify_deg: 2.0\nintersect:\n  min_intersection_km2: 0.0\n")
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True)) == 1  # params.yaml in the working directory
    out = capsys.readouterr().out
    assert "densify_deg=2" in out and "hint:" in out
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True, params=tmp_path / "absent.yaml")) == 0
    assert "defaults, no params file" in capsys.readouterr().out


def test_check_sample_is_seeded(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq, _ = _complete(world, tmp_path)
    a = audit.sample_queries(world["queries"], 2, seed=7)
    assert len(a) == 2 and np.array_equal(a, audit.sample_queries(world["queries"], 2, seed=7))
    assert len(audit.sample_queries(world["queries"], 0, seed=7)) == 4
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True, sample=2, seed=7)) == 0
    assert "2 of 4 queries" in capsys.readouterr().out


def test_printout_is_capped(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq, _ = _complete(world, tmp_path)
    t = pd.read_parquet(pq)
    t["iou"] *= 2.0  # every pair now disagrees (value + inconsistent)
    t.to_parquet(pq, index=False)
    assert cli.cmd_audit(ns(world, tmp_path, pq, check=True)) == 1
    out = capsys.readouterr().out
    n = len(pd.read_csv(tmp_path / "out" / "check_disagreements.csv"))
    assert n > audit.MAX_PRINTED
    assert f"... and {n - audit.MAX_PRINTED} more" in out


def test_cli(world: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = world["dir"]
    common = ["--grid", str(d / "regions.parquet"), "--queries", str(d / "queries.parquet"), "--out-dir", str(tmp_path)]
    assert cli.main(["audit", str(d / "intersections.pt"), "ISS001-E-1", *common]) == 0
    assert (tmp_path / "ISS001-E-1.geojson").exists() and (tmp_path / "ISS001-E-1.png").exists()
    capsys.readouterr()
    assert cli.main(["audit", str(d / "intersections.pt"), "ISS999-E-9", *common]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown query id 'ISS999-E-9'" in err
    assert cli.main(["audit", str(d / "intersections.pt"), "--check", *common]) == 1  # ISS004-E-4444 is missing
