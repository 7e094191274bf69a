"""The fetch stage: params, AOI selection, the synthetic source end to end, resume,
pruning after the AOI shrinks, a new source fetching the shard anew, the CLI."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from earthloc.cli import main as cli_main
from fetch_stub import StubWmts
from pipeline import config
from pipeline.errors import ConfigError, FetchError
from pipeline.fetch.client import EOX_KVP, EOX_RESTFUL
from pipeline.fetch.store import TileStore
from pipeline.geo.aoi import Aoi, in_aois
from pipeline.geo.distance import haversine_km
from pipeline.geo.names import parse_filename
from pipeline.stages import fetch, fetch_queries, grid

ROOT = Path(__file__).resolve().parents[1]
POI = (30.0, -95.0)


def section(**over: Any) -> dict[str, Any]:
    sec = yaml.safe_load((ROOT / "params.yaml").read_text())["fetch"]
    sec = json.loads(json.dumps(sec))  # deep copy
    sec.update(over)
    sec["run"]["progress"] = False
    sec["run"]["checkpoint_s"] = 0.0
    return sec


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grid") / "regions.parquet"
    grid.run(grid.GridParams.from_section({"zooms": [10, 11], "bbox": [-96.0, 29.0, -94.0, 31.0]}), grid.GridPaths(out))
    return out


def test_params_from_the_project_file() -> None:
    p = fetch.FetchParams.from_section(section())
    assert p.source == "synthetic" and p.zooms == (9, 10, 11) and p.years == (2018, 2019, 2020, 2021)
    assert p.client.url_template == EOX_RESTFUL and p.client.min_interval_s >= 0.5  # polite toward EOX
    assert p.aois is not None and p.aois[0].radius_km > 0
    assert fetch.FetchParams.from_section(section(url_form="kvp")).client.url_template == EOX_KVP
    assert fetch.FetchParams.from_section(section(aois=None)).aois is None


@pytest.mark.parametrize(
    "over", [{"source": "bing"}, {"url_form": "wms"}, {"zooms": ["x"]}, {"aois": [{"lat": 0, "lon": 0}]},
             {"aois": [{"lat": 95, "lon": 0, "radius_km": 10}]}],
)  # fmt: skip
def test_bad_params_are_config_errors(over: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        fetch.FetchParams.from_section(section(**over))


def test_local_template_keeps_eox_layout() -> None:
    local = fetch.local_template(EOX_KVP, "http://127.0.0.1:5555")
    assert local.startswith("http://127.0.0.1:5555/wmts?layer={layer}&") and local.endswith("TileRow={y}")
    assert fetch.local_template(EOX_RESTFUL, "http://127.0.0.1:1").endswith(
        "/wmts/1.0.0/{layer}/default/g/{z}/{y}/{x}.jpg"
    )


def test_in_aois_is_strict_and_none_is_world() -> None:
    lat = np.array([30.0, 30.0, 40.0])
    lon = np.array([-95.0, -95.0 + 100.0 / 96.3, -95.0])
    d = haversine_km(30.0, -95.0, lat, lon)
    mask = in_aois(lat, lon, [Aoi("a", 30.0, -95.0, float(d[1]))])
    assert mask.tolist() == [True, False, False]  # a point exactly at the radius is outside
    assert in_aois(lat, lon, None).all()
    two = [Aoi("a", 30.0, -95.0, 10.0), Aoi("b", 40.0, -95.0, 10.0)]
    assert in_aois(lat, lon, two).tolist() == [True, False, True]


def run(tmp: Path, grid_file: Path, radius_km: float, zoom: int = 11, **over: Any) -> dict[str, Any]:
    sec = section(aois=[{"name": "t", "lat": POI[0], "lon": POI[1], "radius_km": radius_km}], **over)
    params = fetch.FetchParams.from_section(sec)
    return fetch.run_shard(params, 2021, zoom, grid_file, tmp / "tiles", tmp / f"m{zoom}.json")


def test_synthetic_shard_end_to_end_resume_prune_and_reset(tmp_path: Path, grid_file: Path) -> None:
    first = run(tmp_path, grid_file, 60.0)
    regions = pd.read_parquet(grid_file)
    expected = regions[(regions.zoom == 11) & in_aois(regions.center_lat, regions.center_lon, [Aoi("t", *POI, 60.0)])]
    assert 1 < len(expected) < 20
    assert first["regions_written"] == len(expected) and first["regions_failed"] == 0
    files = sorted((tmp_path / "tiles" / "database" / "2021_11").rglob("*.jpg"))
    assert {parse_filename(f.name).image_id for f in files} == set(expected.region_id)
    with Image.open(files[0]) as im:
        assert im.size == (1024, 1024) and im.mode == "RGB"
    assert "SYNTHETIC" in (tmp_path / "tiles" / "database" / "2021_11" / "ATTRIBUTION.txt").read_text()
    man = pd.read_parquet(tmp_path / "tiles" / "manifests" / "2021_11.parquet")
    assert (man.status == "ok").all() and man.source_id.str.startswith("synthetic|seed=0|world=").all()
    metrics = json.loads((tmp_path / "m11.json").read_text())
    assert metrics["regions_planned"] == metrics["regions_ok"] == len(expected)
    assert metrics["unique_tiles"] < metrics["naive_requests"] == 16 * len(expected)
    assert not (tmp_path / "tiles" / ".tilecache" / "s2cloudless-2021_3857" / "11").exists()  # raw tiles dropped

    # nothing is fetched again
    again = run(tmp_path, grid_file, 60.0)
    assert again["regions_written"] == 0 and again["regions_skipped"] == len(expected) and again["tiles_requested"] == 0
    # the DVC metrics describe the shard, not the run: a resumed run writes the same file
    assert json.loads((tmp_path / "m11.json").read_text()) == metrics

    # a smaller AOI: the shard keeps exactly the planned regions
    small = run(tmp_path, grid_file, 30.0)
    kept = sorted((tmp_path / "tiles" / "database" / "2021_11").rglob("*.jpg"))
    assert small["pruned_images"] == len(files) - len(kept) > 0
    man = pd.read_parquet(tmp_path / "tiles" / "manifests" / "2021_11.parquet")
    assert sorted(man.path) == sorted(p.relative_to(tmp_path / "tiles").as_posix() for p in kept)

    # another world (seed): the shard is fetched anew, not resumed into
    other = run(tmp_path, grid_file, 30.0, synthetic={"seed": 7, "max_concurrency": 4, "min_interval_s": 0.0})
    assert other["regions_written"] == len(kept) and other["regions_skipped"] == 0
    assert pd.read_parquet(tmp_path / "tiles" / "manifests" / "2021_11.parquet").source_id.str.contains("seed=7").all()


def test_cli_shard_and_errors(tmp_path: Path, grid_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"] = section(aois=[{"lat": POI[0], "lon": POI[1], "radius_km": 40.0}])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["fetch", "--params", str(tmp_path / "params.yaml"), "--grid", str(grid_file), "--root", str(tmp_path / "t")]
    assert cli_main([*args, "--year", "2021", "--zoom", "10", "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["shard"] == "2021_10"
    assert cli_main([*args, "--year", "2017", "--zoom", "10"]) == 1
    assert "not in fetch.years" in capsys.readouterr().err
    assert cli_main([*args, "--year", "2021"]) == 1
    assert cli_main(["fetch", "--params", str(tmp_path / "params.yaml"), "--grid", str(tmp_path / "nope.parquet"),
                     "--year", "2021", "--zoom", "10"]) == 1  # fmt: skip
    assert "run the grid stage first" in capsys.readouterr().err


def run_queries(params: dict[str, Any], tmp: Path, summary: Path | None) -> dict[str, Any]:
    """The fetch_queries stage on the queries, pairs and tile store under `tmp`."""
    paths = fetch_queries.FetchQueriesPaths(tmp / "queries.parquet", tmp / "pairs.parquet", tmp / "tiles", summary)
    return fetch_queries.run(config.fetch_queries_config(params), paths)


def test_query_photos_stage_selects_renders_resumes_and_prunes(tmp_path: Path, grid_file: Path) -> None:
    from pipeline.stages import queries as queries_stage
    from support import texas_csv

    run(tmp_path, grid_file, 40.0, zoom=11)
    run(tmp_path, grid_file, 40.0, zoom=10)
    csv = texas_csv(tmp_path / "q.csv", 3)
    qparams = queries_stage.QueriesParams.from_section(yaml.safe_load((ROOT / "params.yaml").read_text())["queries"])
    queries_stage.run(qparams, queries_stage.QueriesPaths(csv, tmp_path / "queries.parquet", tmp_path / "rejected.csv"))
    qids = sorted(pd.read_parquet(tmp_path / "queries.parquet").query_id)
    fetched = sorted(pd.read_parquet(tmp_path / "tiles" / "manifests" / "2021_11.parquet").region_id)
    # q0: every positive fetched; q1: one positive outside the store; q2: no positive at all
    pairs = pd.DataFrame(
        {"query_id": [qids[0]] * 2 + [qids[1]] * 2, "region_id": [fetched[0], fetched[1], fetched[0], "11_0001_0001"]}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"] = section(zooms=["10", "11"])
    params["fetch_queries"].update(workers=1, size=256, scope=None)  # every photographable query

    s = run_queries(params, tmp_path, tmp_path / "q.json")
    photos = sorted((tmp_path / "tiles" / "queries").glob("*.jpg"))
    assert [parse_filename(p.name).image_id for p in photos] == [qids[0]] and s["ok"] == 1
    with Image.open(photos[0]) as im:
        assert im.size == (256, 256)
    qm = json.loads((tmp_path / "q.json").read_text())
    assert qm["queries_selected"] == qm["photos_ok"] == 1 and qm["photo_bytes"] == photos[0].stat().st_size
    assert run_queries(params, tmp_path, tmp_path / "q.json")["reused"] == 1
    assert json.loads((tmp_path / "q.json").read_text()) == qm  # resumed: the same DVC metrics

    # the positive region leaves the store: the photo goes too
    pairs.assign(region_id=["11_0001_0001"] * 4).to_parquet(tmp_path / "pairs.parquet")
    s = run_queries(params, tmp_path, None)
    assert s["pruned_photos"] == 1 and not list((tmp_path / "tiles" / "queries").glob("*.jpg"))

    # scoped: an evaluation set's query gets its photo although one of its positives (of a
    # zoom the set does not use) is outside the store; nothing else is photographed
    (tmp_path / "evalsets" / "demo").mkdir(parents=True)
    pd.DataFrame({"query_index": [0], "query_id": [qids[1]]}).to_csv(
        tmp_path / "evalsets/demo/queries.csv", index=False
    )
    params["fetch_queries"]["scope"] = {"evalsets": ["demo"], "aois": [], "evalsets_dir": str(tmp_path / "evalsets")}
    s = run_queries(params, tmp_path, None)
    photos = sorted((tmp_path / "tiles" / "queries").glob("*.jpg"))
    assert [parse_filename(p.name).image_id for p in photos] == [qids[1]] and s["ok"] == 1


# -- reliability: concurrent runs, outages, what a rerun needs ------------------------------
def stub_section(stub: StubWmts, **client: Any) -> dict[str, Any]:
    """A stage section whose `eox` source is the local stub (so the test controls faults)."""
    return {"source": "eox", "url_template": stub.restful, "contact": "tests@example.invalid",
            "client": {"max_concurrency": 2, "min_interval_s": 0.0, "backoff_base_s": 0.01, **client}}  # fmt: skip


def aoi_regions(grid_file: Path, radius_km: float, zoom: int = 11) -> pd.DataFrame:
    regions = pd.read_parquet(grid_file)
    inside = in_aois(regions.center_lat, regions.center_lon, [Aoi("t", *POI, radius_km)])
    return regions[(regions.zoom == zoom) & inside].sort_values(["row", "col"]).reset_index(drop=True)


def test_a_second_fetch_on_a_busy_shard_touches_nothing(tmp_path: Path, grid_file: Path) -> None:
    expected = aoi_regions(grid_file, 60.0)
    outcome: dict[str, Any] = {}
    with StubWmts(latency_s=0.1) as stub:
        first = threading.Thread(target=lambda: outcome.update(run(tmp_path, grid_file, 60.0, **stub_section(stub))))
        first.start()
        manifest = tmp_path / "tiles" / "manifests" / "2021_11.parquet"
        deadline = time.monotonic() + 60
        while not manifest.exists() and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.is_alive(), "the first run must still be fetching"
        # another source (the synthetic Earth) on the same shard: it would reset the shard
        with pytest.raises(FetchError, match="being written by another run.*nothing was changed"):
            run(tmp_path, grid_file, 60.0)
        first.join(120)
    assert outcome["regions_written"] == len(expected) and outcome["regions_failed"] == 0
    man = pd.read_parquet(manifest)
    assert (man.status == "ok").all() and len(man) == len(expected)
    store = TileStore(tmp_path / "tiles")
    assert all(store.is_complete(p, sha) for p, sha in zip(man.path, man.sha256))
    assert man.source_id.str.startswith(stub.restful).all()


def test_outage_stops_the_stage_with_one_line(
    tmp_path: Path, grid_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/wmts/1.0.0/{{layer}}/default/g/{{z}}/{{y}}/{{x}}.jpg"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"] = section(aois=[{"lat": POI[0], "lon": POI[1], "radius_km": 40.0}], source="eox", url_template=dead,
                              client={"max_attempts": 2, "backoff_base_s": 0.0, "refusal_limit": 3, "min_interval_s": 0.0})  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rc = cli_main(["fetch", "--params", str(tmp_path / "params.yaml"), "--grid", str(grid_file),
                   "--root", str(tmp_path / "t"), "--year", "2021", "--zoom", "10", "--summary", str(tmp_path / "s.json")])  # fmt: skip
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1 and len(err) == 1 and "unreachable: 3 consecutive tiles ended in connection" in err[0], err


def test_regions_not_found_keep_their_tiles_for_the_rerun(
    tmp_path: Path, grid_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = aoi_regions(grid_file, 40.0)
    victim = expected.iloc[0]
    gone = ("s2cloudless-2021_3857", 11, int(victim.row), int(victim.col))  # the NW tile of one region
    with StubWmts(missing={gone}) as stub:  # one server for both runs: its URL is the source's identity
        first = run(tmp_path, grid_file, 40.0, **stub_section(stub))
        lost = first["regions_not_found"]
        assert lost >= 1 and first["regions_written"] == len(expected) - lost
        out = capsys.readouterr().out  # progress is off, the closing line is not
        assert f"{lost} not found" in out and "fetch:" in out
        cache = tmp_path / "tiles" / ".tilecache" / "s2cloudless-2021_3857" / "11"
        man = pd.read_parquet(tmp_path / "tiles" / "manifests" / "2021_11.parquet")
        pending = {tuple(int(v) for v in t.split("/")) for ts in man.loc[man.status != "ok", "tiles"] for t in ts}
        kept = {(11, int(p.parent.name), int(p.stem)) for p in cache.rglob("*.jpg")}
        assert kept == pending - {gone[1:]}  # exactly what the rerun needs, nothing of complete regions
        with stub.lock:  # the tile has appeared since
            stub.missing.clear()
            stub.hits.clear()
        again = run(tmp_path, grid_file, 40.0, **stub_section(stub))
        assert dict(stub.hits) == {gone: 1}
    assert again["regions_written"] == lost and again["regions_skipped"] == len(expected) - lost
    assert not cache.exists()  # complete now: the raw tiles go


# -- plan before fetching --------------------------------------------------------------------
def test_tile_ids_count_what_the_fetch_plan_shares() -> None:
    from pipeline.fetch.estimate import tile_ids
    from pipeline.fetch.plan import unique_tiles

    rng = np.random.default_rng(0)
    regs = [(z, int(r), int(c)) for z in (3, 5) for r, c in rng.integers(0, (1 << z) - 4, (40, 2))]
    regs += [(5, 0, 30), (5, 2, 31)]  # across the antimeridian
    ids = tile_ids(regs)
    assert len(ids) == len(unique_tiles(regs, [2021]))
    keys = {((k.z << 50) | (k.y << 25) | k.x) for k in unique_tiles(regs, [2021])}
    assert set(ids.tolist()) == keys


def test_plan_predicts_the_requests_and_sends_none(
    tmp_path: Path, grid_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.fetch.plan import request_counts

    small, big = aoi_regions(grid_file, 40.0), aoi_regions(grid_file, 60.0)
    with StubWmts() as stub:
        run(tmp_path, grid_file, 40.0, **stub_section(stub))
        stub.hits.clear()
        sec = section(aois=[{"name": "t", "lat": POI[0], "lon": POI[1], "radius_km": 60.0}], **stub_section(stub))
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["fetch"] = sec
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        capsys.readouterr()
        assert cli_main(["fetch", "--plan", "--params", str(tmp_path / "params.yaml"), "--grid", str(grid_file),
                         "--root", str(tmp_path / "tiles"), "--year", "2021", "--zoom", "11"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert stub.total_hits() == 0
        assert "areas of interest" in out and "world (aois null" in out and "means of the tile store's manifests" in out

        fp = fetch.FetchParams.from_section(sec)
        store = TileStore(tmp_path / "tiles")
        sizes = fetch.mean_sizes(store, "eox")
        man = pd.read_parquet(store.manifest_path(2021, 11))
        tiles = pd.read_parquet(store.manifest_path(2021, 11, "tiles"))
        assert sizes.image_bytes == man["bytes"].mean() and sizes.tile_bytes == tiles["bytes"].mean()
        est = fetch.estimate_shard_fetch(store, fp, 2021, 11, fetch.select_regions(grid_file, 11, fp.aois),
                                         fetch.source_id(fp), sizes)  # fmt: skip
        todo = big[~big.region_id.isin(small.region_id)]
        assert (est.regions, est.regions_done) == (len(big), len(small))
        assert est.unique_tiles == request_counts(list(zip(todo.zoom, todo.row, todo.col)), [2021]).unique
        assert est.tiles_cached == 0  # the complete shard dropped its raw tiles
        assert est.download_bytes == est.requests * sizes.tile_bytes
        assert est.disk_bytes == len(todo) * sizes.image_bytes + est.download_bytes
        assert est.seconds == est.requests * fp.client.min_interval_s
        row = next(ln.split() for ln in out.splitlines() if ln.startswith("2021_11"))
        assert row[1:6] == [str(v) for v in (est.regions, est.regions_done, est.unique_tiles, 0, est.requests)]

        run(tmp_path, grid_file, 60.0, **stub_section(stub))
        assert stub.total_hits() == est.requests  # the plan's requests are the fetch's requests


def test_a_fetch_that_would_not_fit_stops_before_the_first_request(
    tmp_path: Path, grid_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "free_bytes", lambda path: 10_000)
    with StubWmts() as stub:
        with pytest.raises(FetchError, match=r"shard 2021_11 needs about .* 10\.0 kB free.*nothing was fetched"):
            run(tmp_path, grid_file, 40.0, **stub_section(stub))
        assert stub.total_hits() == 0
    assert not (tmp_path / "tiles" / "database").exists()
