"""The pairs stage: AstroLoc's training pairs never contain an evaluation photo, nor any
photo of an ISS pass that has a frame in an evaluation set.

A hand-made case checks every exclusion reason, the IoU threshold, the neutral pairs and
the tile-store filters; a world the test builds runs the evalset and pairs stages end to
end and checks that no pass of any evaluation photo, kept or dropped, reaches the pairs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml

from earthloc.cli import main as cli_main
from pipeline.config import evalset_config, pairs_config
from pipeline.errors import ConfigError, InputError
from pipeline.geo.pairs import SetArea, SetMembers, excluded_photos, leaked_ids, select_pairs
from pipeline.stages.pairs import fetched_photos, fetched_regions, read_members

ROOT = Path(__file__).resolve().parents[1]

# Photos: A and B near POI (0, 0) (A listed as kept, B dropped), C near POI (0, 0) but listed
# nowhere (stale set outputs), D and E far away (trainable), F only in the second set's list.
NADIRS = pd.DataFrame(
    {
        "query_id": ["A", "B", "C", "D", "E", "F"],
        "nadir_lat": [0.0, 1.0, 2.0, 40.0, -40.0, 60.0],
        "nadir_lon": [0.0, 1.0, 2.0, 100.0, -100.0, 60.0],
    }
)
MEMBERS = (SetMembers("poi", frozenset({"A"}), frozenset({"B"})), SetMembers("other", frozenset(), frozenset({"F"})))
AREAS = (SetArea("poi", 0.0, 0.0, 500.0), SetArea("other", -80.0, 0.0, 10.0))
INTER = pd.DataFrame(
    {
        "query_id": ["A", "B", "C", "D", "D", "D", "E", "E", "F"],
        "region_id": [
            "09_0001_0001",
            "09_0001_0001",
            "10_0002_0002",
            "09_0010_0010",
            "10_0020_0020",
            "11_0040_0040",
            "11_0050_0050",
            "11_0051_0051",
            "09_0060_0060",
        ],
        "zoom": [9, 9, 10, 9, 10, 11, 11, 11, 9],
        "iou": [0.5, 0.5, 0.5, 0.30, 0.05, 0.25, 0.40, 0.10, 0.9],
        "intersection_km2": [1.0] * 9,
    }
)


def test_excluded_photos_reasons() -> None:
    ex = excluded_photos(NADIRS, MEMBERS, AREAS)
    assert dict(zip(ex["query_id"], ex["reason"], strict=True)) == {
        "A": "evalset_query",
        "B": "evalset_dropped",
        "C": "near_poi",
        "F": "evalset_dropped",
    }
    assert ex.set_index("query_id").loc["A", "sets"] == "poi"  # A is also near POI "poi": one set
    # A margin widens the nadir check: D lies ~11,900 km from (0, 0).
    wide = excluded_photos(NADIRS, MEMBERS, (SetArea("poi", 0.0, 0.0, 500.0),), margin_km=12_000.0)
    assert "D" in set(wide["query_id"]) and "E" in set(wide["query_id"])


def test_select_pairs_hand_made() -> None:
    ex = excluded_photos(NADIRS, MEMBERS, AREAS)
    res = select_pairs(INTER, ex["query_id"], min_iou=0.2)
    got = set(zip(res.pairs["query_id"], res.pairs["region_id"], strict=True))
    assert got == {("D", "09_0010_0010"), ("D", "11_0040_0040"), ("E", "11_0050_0050")}
    assert set(zip(res.neutral["query_id"], res.neutral["region_id"], strict=True)) == {
        ("D", "10_0020_0020"),
        ("E", "11_0051_0051"),
    }
    assert leaked_ids(res.pairs, MEMBERS) == set()
    assert res.counts["photos_excluded_evalset"] == 4
    # Tile-store filters: D's zoom-9 region missing, E's photo missing.
    res2 = select_pairs(INTER, ex["query_id"], 0.2, regions_ok={"11_0040_0040", "11_0050_0050"}, photos_ok={"D"})
    assert set(zip(res2.pairs["query_id"], res2.pairs["region_id"], strict=True)) == {("D", "11_0040_0040")}
    assert res2.counts["photos_without_image"] == 1


def test_leaked_ids_detects_a_leak() -> None:
    res = select_pairs(INTER, [], min_iou=0.2)  # nothing excluded: A, B, F leak
    assert leaked_ids(res.pairs, MEMBERS) == {"A", "B", "F"}


def _params(tmp: Path, **pairs: object) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["pairs"].update(pairs)
    return params


def test_params_validation(tmp_path: Path) -> None:
    p = pairs_config(_params(tmp_path))
    sets = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["evalset"]["sets"]
    assert p.exclude_sets == tuple(sets)  # default: every evaluation set
    with pytest.raises(ConfigError, match="unknown set"):
        pairs_config(_params(tmp_path, exclude_sets=["nowhere"]))
    with pytest.raises(ConfigError, match="min_iou"):
        pairs_config(_params(tmp_path, min_iou=0.0))
    with pytest.raises(ConfigError, match="regions"):
        pairs_config(_params(tmp_path, regions="some"))


def test_tile_store_filters(tmp_path: Path) -> None:
    assert fetched_regions(tmp_path, (2018, 2021)) is None and fetched_photos(tmp_path) is None
    m = tmp_path / "manifests"
    m.mkdir()
    pd.DataFrame({"region_id": ["r1", "r2"], "status": ["ok", "ok"]}).to_parquet(m / "2018_09.parquet")
    pd.DataFrame({"region_id": ["r1", "r2"], "status": ["ok", "failed"]}).to_parquet(m / "2021_09.parquet")
    pd.DataFrame({"z": [9], "status": ["ok"]}).to_parquet(m / "2021_09.tiles.parquet")  # tile manifest: ignored
    assert fetched_regions(tmp_path, (2018, 2021)) == {"r1"}
    (tmp_path / "queries").mkdir()
    pd.DataFrame({"query_id": ["A", "D"], "status": ["ok", "not_found"]}).to_parquet(
        tmp_path / "queries" / "manifest.parquet"
    )
    assert fetched_photos(tmp_path) == {"A"}


def test_missing_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="build the set first"):
        read_members(tmp_path, ("texas",))


# ---------------------------------------------------------------------------
# End to end on a world the test builds: evalset stage, then pairs stage


def _box(lat: float, lon: float, half: float) -> shapely.Geometry:
    return shapely.box(lon - half, lat - half, lon + half, lat + half)


def _build_world(root: Path) -> dict[str, Path]:
    """Regions every 1° along the equator (lon -3..12) and three ISS passes:
    P1 (ISS050 frames 100-110) flies from the POI (0, 0) eastwards out of every set's disc;
    P2 (ISS050 frames 5000-5010, weeks later) photographs only lon 7-10, far from the POI;
    P3 (ISS051 frames 200-204) photographs only the POI's disc."""
    lons = np.arange(-3.0, 13.0)
    regions = gpd.GeoDataFrame(
        {
            "region_id": [f"09_0100_{i:04d}" for i in range(len(lons))],
            "zoom": 9,
            "row": 100,
            "col": np.arange(len(lons)),
            "ll_lat": -0.5,
            "ll_lon": lons - 0.5,
            "ul_lat": 0.5,
            "ul_lon": lons - 0.5,
            "ur_lat": 0.5,
            "ur_lon": lons + 0.5,
            "lr_lat": -0.5,
            "lr_lon": lons + 0.5,
            "center_lat": 0.0,
            "center_lon": lons,
            "area_km2": 12300.0,
        },
        geometry=[_box(0.0, lo, 0.5) for lo in lons],
        crs="EPSG:4326",
    )
    photos = (
        [("ISS050", 100 + k, "20210105", float(k)) for k in range(11)]
        + [("ISS050", 5000 + k, "20210301", 7.0 + 0.3 * k) for k in range(11)]
        + [("ISS051", 200 + k, "20210107", -1.0 + 0.5 * k) for k in range(5)]
    )
    queries = gpd.GeoDataFrame(
        {
            "query_id": [f"{m}-E-{f}" for m, f, _, _ in photos],
            "mission": [m for m, _, _, _ in photos],
            "roll": "E",
            "frame": [str(f) for _, f, _, _ in photos],
            "date": [d for _, _, d, _ in photos],
            "filename": [f"@{m}-E-{f}@.jpg" for m, f, _, _ in photos],
            "nadir_lat": 0.0,
            "nadir_lon": [lo for _, _, _, lo in photos],
        },
        geometry=[_box(0.0, lo, 0.6) for _, _, _, lo in photos],
        crs="EPSG:4326",
    )
    inter = []
    for qid, geom in zip(queries["query_id"], queries.geometry, strict=True):
        for rid, rg in zip(regions["region_id"], regions.geometry, strict=True):
            if geom.intersects(rg):
                a = geom.intersection(rg).area
                inter.append(
                    {
                        "query_id": qid,
                        "region_id": rid,
                        "zoom": 9,
                        "iou": a / geom.union(rg).area,
                        "intersection_km2": a * 12300.0,
                    }
                )
    paths = {
        "grid": root / "regions.parquet",
        "queries": root / "queries.parquet",
        "intersections": root / "intersections_2021.parquet",
        "evalsets": root / "evalsets",
    }
    regions.to_parquet(paths["grid"])
    queries.to_parquet(paths["queries"])
    pd.DataFrame(inter).to_parquet(paths["intersections"], index=False)
    return paths


def test_no_pass_of_an_evaluation_photo_in_pairs(tmp_path: Path) -> None:
    """Build two folded sets with the evalset stage, run the pairs stage through the CLI,
    and prove that no trained photo shares an ISS pass with any photo a set lists."""
    from pipeline.geo.passes import pass_ids
    from pipeline.stages import evalset as evalset_stage

    w = _build_world(tmp_path)
    disc = {"lat": 0.0, "lon": 0.0, "query_radius_km": 300.0, "db_radius_km": 2000.0, "folds": 2}
    params = {
        "evalset": {
            "year": 2021,
            "pass_max_frame_gap": 20,
            "pass_max_day_gap": 1,
            "sets": {"poi_test": {**disc, "take_folds": [1]}, "poi_val": {**disc, "take_folds": [0]}},
        },
        "pairs": {"min_iou": 0.1, "year": 2021, "regions": "all", "photos": "all"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for name in ("poi_test", "poi_val"):
        paths = evalset_stage.EvalsetPaths(w["grid"], w["queries"], w["intersections"], w["evalsets"] / name)
        evalset_stage.run(evalset_config(params), paths, name, draw_map=False)
    out = tmp_path / "pairs"
    rc = cli_main(
        [
            "pairs",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out-dir",
            str(out),
            "--intersections",
            str(w["intersections"]),
            "--queries",
            str(w["queries"]),
            "--grid",
            str(w["grid"]),
            "--evalsets",
            str(w["evalsets"]),
            "--tiles",
            str(tmp_path / "no_tiles"),
        ]
    )
    assert rc == 0

    q = pd.read_parquet(w["queries"])
    pass_of = dict(zip(q["query_id"], pass_ids(q["mission"], q["roll"], q["frame"], q["date"], 20, 1), strict=True))
    listed: set[str] = set()
    for name in ("poi_test", "poi_val"):
        sq = pd.read_csv(w["evalsets"] / name / "queries.csv", dtype={"query_id": str})
        assert (sq["pass_id"] == sq["query_id"].map(pass_of)).all()  # queries.csv carries the pass
        listed |= set(sq["query_id"]) | set(
            pd.read_csv(w["evalsets"] / name / "dropped.csv", dtype={"query_id": str})["query_id"]
        )
    assert {pass_of[x] for x in listed} == {"ISS050-E-20210105-100", "ISS051-E-20210107-200"}
    pairs = pd.read_parquet(out / "pairs.parquet")
    neutral = pd.read_parquet(out / "neutral.parquet")
    trained = set(pairs["query_id"]) | set(neutral["query_id"])
    assert trained == {f"ISS050-E-{5000 + k}" for k in range(11)}  # P2 only: not vacuous
    assert not {pass_of[x] for x in trained} & {pass_of[x] for x in listed}
    # P1's frames far outside the disc are excluded for their pass alone.
    ex = pd.read_csv(out / "excluded.csv", dtype={"query_id": str}).set_index("query_id")
    far_p1 = [f"ISS050-E-{100 + k}" for k in range(6, 11)]
    assert (ex.loc[far_p1, "reason"] == "evalset_pass").all()
    assert json.loads((out / "summary.json").read_text())["excluded_photos"]["evalset_pass"] >= len(far_p1)
    # Without the pass rule they would be trained on, and the leak check names them.
    members = read_members(w["evalsets"], ("poi_test", "poi_val"))
    direct = excluded_photos(
        q[["query_id", "nadir_lat", "nadir_lon"]], members, (SetArea("poi_test", 0.0, 0.0, 300.0),)
    )
    loose = select_pairs(pd.read_parquet(w["intersections"]), direct["query_id"], 0.1)
    assert set(far_p1) <= leaked_ids(loose.pairs, members, pass_of)
    assert not leaked_ids(loose.pairs, members) & set(far_p1)  # by id alone they look clean
