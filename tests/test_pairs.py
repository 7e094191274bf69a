"""The pairs stage: AstroLoc's training pairs never contain an evaluation photo.

A hand-made case checks every exclusion reason, the IoU threshold, the neutral pairs and
the tile-store filters; the real data in the working tree (data/evalsets/*) checks that no
query id of any evaluation set, kept or dropped, reaches the pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from earthloc.cli import main as cli_main
from pipeline.errors import ConfigError, InputError
from pipeline.geo.pairs import SetArea, SetMembers, excluded_photos, leaked_ids, select_pairs
from pipeline.stages.pairs import PairsParams, fetched_photos, fetched_regions, read_members

ROOT = Path(__file__).resolve().parents[1]

# Photos: A and B near POI (0, 0) (A listed as kept, B dropped), C near POI (0, 0) but listed
# nowhere (stale set outputs), D and E far away (trainable), F only in the second set's list.
NADIRS = pd.DataFrame({
    "query_id": ["A", "B", "C", "D", "E", "F"],
    "nadir_lat": [0.0, 1.0, 2.0, 40.0, -40.0, 60.0],
    "nadir_lon": [0.0, 1.0, 2.0, 100.0, -100.0, 60.0],
})
MEMBERS = (SetMembers("poi", frozenset({"A"}), frozenset({"B"})), SetMembers("other", frozenset(), frozenset({"F"})))
AREAS = (SetArea("poi", 0.0, 0.0, 500.0), SetArea("other", -80.0, 0.0, 10.0))
INTER = pd.DataFrame({
    "query_id": ["A", "B", "C", "D", "D", "D", "E", "E", "F"],
    "region_id": ["09_0001_0001", "09_0001_0001", "10_0002_0002", "09_0010_0010", "10_0020_0020",
                  "11_0040_0040", "11_0050_0050", "11_0051_0051", "09_0060_0060"],
    "zoom": [9, 9, 10, 9, 10, 11, 11, 11, 9],
    "iou": [0.5, 0.5, 0.5, 0.30, 0.05, 0.25, 0.40, 0.10, 0.9],
    "intersection_km2": [1.0] * 9,
})


def test_excluded_photos_reasons() -> None:
    ex = excluded_photos(NADIRS, MEMBERS, AREAS)
    assert dict(zip(ex["query_id"], ex["reason"], strict=True)) == {
        "A": "evalset_query", "B": "evalset_dropped", "C": "near_poi", "F": "evalset_dropped"}
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
        ("D", "10_0020_0020"), ("E", "11_0051_0051")}
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
    p = PairsParams.from_params(_params(tmp_path))
    sets = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["evalset"]["sets"]
    assert p.exclude_sets == tuple(sets)  # default: every evaluation set
    with pytest.raises(ConfigError, match="unknown set"):
        PairsParams.from_params(_params(tmp_path, exclude_sets=["nowhere"]))
    with pytest.raises(ConfigError, match="min_iou"):
        PairsParams.from_params(_params(tmp_path, min_iou=0.0))
    with pytest.raises(ConfigError, match="regions"):
        PairsParams.from_params(_params(tmp_path, regions="some"))


def test_tile_store_filters(tmp_path: Path) -> None:
    assert fetched_regions(tmp_path, (2018, 2021)) is None and fetched_photos(tmp_path) is None
    m = tmp_path / "manifests"
    m.mkdir()
    pd.DataFrame({"region_id": ["r1", "r2"], "status": ["ok", "ok"]}).to_parquet(m / "2018_09.parquet")
    pd.DataFrame({"region_id": ["r1", "r2"], "status": ["ok", "failed"]}).to_parquet(m / "2021_09.parquet")
    pd.DataFrame({"z": [9], "status": ["ok"]}).to_parquet(m / "2021_09.tiles.parquet")  # tile manifest: ignored
    assert fetched_regions(tmp_path, (2018, 2021)) == {"r1"}
    (tmp_path / "queries").mkdir()
    pd.DataFrame({"query_id": ["A", "D"], "status": ["ok", "not_found"]}).to_parquet(tmp_path / "queries" / "manifest.parquet")
    assert fetched_photos(tmp_path) == {"A"}


def test_missing_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="build the set first"):
        read_members(tmp_path, ("texas",))


# ---------------------------------------------------------------------------
# The real data of the working tree


REAL = [ROOT / "data" / "intersections" / "intersections_2021.parquet", ROOT / "data" / "queries" / "queries.parquet",
        ROOT / "data" / "grid" / "regions.parquet"]


@pytest.mark.skipif(not all(p.exists() for p in REAL), reason="pipeline outputs not built (dvc repro)")
def test_no_evaluation_photo_in_real_pairs(tmp_path: Path) -> None:
    """Run the stage on the working tree's data (all regions, all photos, so the check covers
    every photo that could ever be paired) and prove no set's kept or dropped id appears."""
    params = _params(tmp_path, regions="all", photos="all")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    out = tmp_path / "pairs"
    rc = cli_main(["pairs", "--params", str(tmp_path / "params.yaml"), "--out-dir", str(out),
                   "--intersections", str(REAL[0]), "--queries", str(REAL[1]), "--grid", str(REAL[2]),
                   "--evalsets", str(ROOT / "data" / "evalsets"), "--tiles", str(tmp_path / "no_tiles")])
    assert rc == 0
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) > 0
    set_names = params["evalset"]["sets"]
    listed: set[str] = set()
    for name in set_names:
        d = ROOT / "data" / "evalsets" / name
        listed |= set(pd.read_csv(d / "queries.csv", dtype={"query_id": str})["query_id"])
        listed |= set(pd.read_csv(d / "dropped.csv", dtype={"query_id": str})["query_id"])
    assert listed, "no evaluation set found in data/evalsets"
    assert not (set(pairs["query_id"]) & listed)
    assert not (set(pd.read_parquet(out / "neutral.parquet")["query_id"]) & listed)
    # And no trained photo's nadir lies within any set's query radius.
    from pipeline.geo.distance import haversine_km

    q = pd.read_parquet(REAL[1], columns=["query_id", "nadir_lat", "nadir_lon"]).set_index("query_id")
    nad = q.loc[pairs["query_id"].unique()]
    for s in set_names.values():
        d = haversine_km(s["lat"], s["lon"], nad["nadir_lat"], nad["nadir_lon"])
        assert (d >= s["query_radius_km"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_pairs"] == len(pairs) and sum(summary["pairs_per_zoom"].values()) == len(pairs)
    assert (pairs["iou"] >= params["pairs"]["min_iou"]).all()
    assert pairs["path"].str.startswith("database/2021_").all()
