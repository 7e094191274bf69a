"""The lost-in-space set: a source set's queries against every fetched region (no nadir prior)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from earthloc.retrieval.evalset import read_evalset
from pipeline.config import lost_in_space_config
from pipeline.errors import ConfigError, InputError
from pipeline.stages.lost_in_space import LostInSpacePaths, LostInSpaceSpec, build, run

QUERIES = pd.DataFrame(
    {
        "query_index": [0, 1, 2],
        "query_id": ["A", "B", "C"],
        "filename": ["a.jpg", "b.jpg", "c.jpg"],
        "nadir_lat": [0.0, 1.0, 2.0],
        "nadir_lon": [0.0, 1.0, 2.0],
        "num_positives": [1, 1, 1],
    }
)
INTER = pd.DataFrame(
    {
        "query_id": ["A", "A", "B", "B", "D"],
        "region_id": ["r2", "r1", "r1", "rX", "r1"],
        "iou": [0.3, 0.2, 0.5, 0.1, 0.9],
        "intersection_km2": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
)
DB = pd.DataFrame({"db_index": [0, 1, 2], "region_id": ["r0", "r1", "r2"]})


def test_build_hand_made() -> None:
    kept, pos, dropped = build(QUERIES.assign(pass_id=["P1", "P1", "P2"]), INTER, DB)
    assert kept["pass_id"].tolist() == ["P1"]  # the source set's passes carry over (pass bootstrap)
    assert kept["query_id"].tolist() == ["A"] and kept["query_index"].tolist() == [0]
    assert kept["num_positives"].tolist() == [2]
    assert pos[["query_index", "db_index"]].values.tolist() == [[0, 1], [0, 2]]
    assert dict(zip(dropped["query_id"], dropped["reason"], strict=True)) == {
        "B": "positive_outside_db",
        "C": "no_positive",
    }


def test_spec_from_params() -> None:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert lost_in_space_config(params).spec("demo_lost_in_space").source == "demo"
    with pytest.raises(ConfigError, match="unknown set"):
        lost_in_space_config(params).spec("nowhere")


def _paths(tmp_path: Path, store: dict[str, Path], out: Path) -> LostInSpacePaths:
    return LostInSpacePaths(tmp_path / "sets", tmp_path / "inter.parquet", store["grid"], store["tiles"], out)


def test_run_writes_an_evalset_the_evaluator_reads(tmp_path: Path) -> None:
    from train_fixtures import make_store

    s = make_store(tmp_path / "store")
    grid = pd.read_parquet(s["grid"], columns=["region_id"])
    rids = grid["region_id"].tolist()
    (tmp_path / "sets" / "src").mkdir(parents=True)
    QUERIES.assign(filename=["query_0.jpg", "query_1.jpg", "query_2.jpg"]).to_csv(
        tmp_path / "sets" / "src" / "queries.csv", index=False
    )
    inter = pd.DataFrame(
        {
            "query_id": ["A", "A", "B"],
            "region_id": [rids[0], rids[5], rids[3]],
            "iou": [0.3, 0.2, 0.5],
            "intersection_km2": [1.0, 1.0, 1.0],
        }
    )
    inter.to_parquet(tmp_path / "inter.parquet")
    out = tmp_path / "sets" / "lis"
    summary = run(LostInSpaceSpec("lis", "src"), _paths(tmp_path, s, out))
    assert summary["num_db"] == len(rids) and summary["num_queries"] == 2  # C has no positive
    ev = read_evalset(out, s["tiles"])
    assert len(ev.db_paths) == len(rids) and all(p.is_file() for p in ev.db_paths)
    assert [sorted(p.tolist()) for p in ev.positives] == [[0, 5], [3]]
    with pytest.raises(InputError, match="source set"):
        run(LostInSpaceSpec("lis", "nope"), _paths(tmp_path, s, out))


def test_zooms_keep_the_database_and_positives_of_those_zooms(tmp_path: Path) -> None:
    """A one-zoom source set: positives at other zooms neither count nor drop a query."""
    from train_fixtures import make_store

    s = make_store(tmp_path / "store")
    grid = pd.read_parquet(s["grid"], columns=["region_id", "zoom"])
    zooms = sorted(grid["zoom"].unique())
    keep = int(zooms[0])
    at = grid.loc[grid["zoom"] == keep, "region_id"].tolist()
    other = grid.loc[grid["zoom"] != keep, "region_id"].tolist()
    (tmp_path / "sets" / "src").mkdir(parents=True)
    QUERIES.to_csv(tmp_path / "sets" / "src" / "queries.csv", index=False)
    # A: one positive at the kept zoom and one elsewhere; B: only elsewhere (no positive then)
    region = [at[0], other[0] if other else at[1], other[-1] if other else at[2]]
    pd.DataFrame(
        {"query_id": ["A", "A", "B"], "region_id": region, "iou": [0.3, 0.2, 0.5], "intersection_km2": [1.0, 1.0, 1.0]}
    ).to_parquet(tmp_path / "inter.parquet")
    out = tmp_path / "sets" / "lis"
    summary = run(LostInSpaceSpec("lis", "src", zooms=(keep,)), _paths(tmp_path, s, out))
    assert summary["num_db"] == len(at) and summary["zooms"] == [keep]
    if other:
        assert summary["num_queries"] == 1 and summary["num_dropped_no_positive"] == 2
        assert summary["num_dropped_positive_outside_db"] == 0
    params = {"lost_in_space": {"sets": {"x": {"source": "demo", "zooms": "10"}}}}
    with pytest.raises(ConfigError, match="zooms"):
        lost_in_space_config(params).spec("x")
    params = {"lost_in_space": {"sets": {"x": {"source": "demo", "zoom": [10]}}}}
    with pytest.raises(ConfigError, match="unknown key 'zoom'"):
        lost_in_space_config(params).spec("x")
