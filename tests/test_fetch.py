"""Fetch stage: plan, client faults, store layout, fault-tolerant identical output, resume, refusal.

Offline: everything talks to a stub WMTS on 127.0.0.1 (tests/fetch_stub.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fetch_stub import StubWmts, tile_jpeg
from pipeline.errors import SourceRefusedError
from pipeline.fetch.client import ClientConfig, TileKey, WmtsClient, validate_tile
from pipeline.fetch.plan import region_tiles, request_counts, unique_tiles
from pipeline.fetch.run import RunConfig, fetch_regions
from pipeline.geo.names import parse_filename
from pipeline.geo.regions import parse_region_id
from pipeline.synthetic.server import SyntheticTileServer

ROOT = Path(__file__).resolve().parents[1]
YEARS = [2020, 2021]
ZOOM = 5
LAYER = "s2cloudless-{year}_3857"


def block(n_rows: int = 3, n_cols: int = 3, zoom: int = ZOOM, row0: int = 10, col0: int = 30) -> pd.DataFrame:
    """A contiguous stride-2 block of regions (col0=30 at zoom 5 makes it wrap ±180)."""
    n = 1 << zoom
    rows = [(zoom, row0 + 2 * i, (col0 + 2 * j) % n) for i in range(n_rows) for j in range(n_cols)]
    return pd.DataFrame(rows, columns=["zoom", "row", "col"])


def config(stub: StubWmts, kvp: bool = False, **kw: object) -> ClientConfig:
    base = dict(
        url_template=stub.kvp if kvp else stub.restful, contact="tests@example.invalid", max_concurrency=4,
        min_interval_s=0.0, connect_timeout_s=2.0, read_timeout_s=0.5, max_attempts=4, backoff_base_s=0.01,
        backoff_max_s=0.05, retry_after_cap_s=1.0, refusal_limit=5,
    )  # fmt: skip
    base.update(kw)
    return ClientConfig(**base)  # type: ignore[arg-type]


RUN = RunConfig(progress=False, source="synthetic", checkpoint_s=0.0)


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file except the manifests (which hold timestamps and attempt counts)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "manifests" not in p.parts
    }


def layer_tile(year: int, z: int, y: int, x: int) -> tuple[str, int, int, int]:
    return (LAYER.format(year=year), z, y, x)


# -- plan ----------------------------------------------------------------------------------
def test_plan_unique_tiles_about_four_per_region_year() -> None:
    regs = list(block(30, 30, zoom=9, row0=100, col0=0).itertuples(index=False, name=None))
    counts = request_counts(regs, YEARS)
    assert counts.naive == 16 * len(regs) * 2
    assert counts.per_region_year <= 4.3
    assert counts.saving >= 3.7
    small = request_counts(list(block().itertuples(index=False, name=None)), YEARS)
    assert small.unique == 2 * 8 * 8  # 3x3 stride-2 regions cover 8x8 tiles


def test_plan_wraps_columns_and_dedupes() -> None:
    tiles = region_tiles(3, 0, 6)
    assert [t[2] for t in tiles[:4]] == [6, 7, 0, 1]
    keys = unique_tiles([(3, 0, 6), (3, 0, 6), (3, 2, 0)], [2021])
    assert len(keys) == len(set(keys)) == 16 + 16 - 4
    with pytest.raises(ValueError):
        region_tiles(3, 6, 0)  # rows do not wrap


# -- client ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "503", "timeout", "reset", "truncated", "html"])
def test_client_retries_transient_faults(fault: str) -> None:
    tid = layer_tile(2021, 5, 3, 4)
    with StubWmts(faults={tid: [fault]}) as stub, WmtsClient(config(stub)) as client:
        res = client.get_tile(TileKey(2021, 5, 3, 4))
        assert res.status == "ok" and res.attempts == 2
        assert res.data == tile_jpeg(*tid)
        assert res.history[0] != "ok" and stub.hits[tid] == 2
        assert stub.user_agents == {"earthloc-pipeline/0.1.0 (+tests@example.invalid)"}


def recording_client(cfg: ClientConfig) -> tuple[WmtsClient, list[float]]:
    """A client whose waits between attempts are recorded instead of slept."""
    waits: list[float] = []
    return WmtsClient(cfg, sleep=waits.append), waits


@pytest.mark.parametrize(
    ("header", "cap", "expected"),
    [("429", 5.0, 1.0), ("429:30", 0.25, 0.25), ("429:date+3600", 0.25, 0.25), ("429:date-60", 5.0, 0.0)],
)
def test_client_waits_retry_after_up_to_the_cap(header: str, cap: float, expected: float) -> None:
    # delta-seconds below the cap are honoured; above it (or as an HTTP date an hour ahead)
    # the cap acts; a date in the past means "now"
    tid = layer_tile(2021, 5, 3, 4)
    with StubWmts(faults={tid: [header]}) as stub:
        client, waits = recording_client(config(stub, kvp=True, retry_after_cap_s=cap))
        with client:
            res = client.get_tile(TileKey(2021, 5, 3, 4))
        assert res.status == "ok" and res.history == ("http_429", "ok")
        assert waits == [expected]


def test_client_waits_an_http_date_retry_after() -> None:
    tid = layer_tile(2021, 5, 3, 4)
    with StubWmts(faults={tid: ["429:date+30"]}) as stub:
        client, waits = recording_client(config(stub, retry_after_cap_s=300.0))
        with client:
            assert client.get_tile(TileKey(2021, 5, 3, 4)).status == "ok"
    # the date has one-second resolution and was written a moment before it was read
    assert len(waits) == 1 and 28.0 <= waits[0] <= 30.0


def test_request_starts_are_spaced_on_the_wire() -> None:
    interval, n = 0.2, 8
    with StubWmts() as stub, WmtsClient(config(stub, max_concurrency=4, min_interval_s=interval)) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client.get_tile, [TileKey(2021, 5, 0, x) for x in range(n)]))
        starts = sorted(stub.starts)
    assert all(r.status == "ok" for r in results) and len(starts) == n
    gaps = np.diff(starts)
    # arrival times carry the scheduler's jitter: no two starts closer than half the spacing,
    # and the whole run at least as long as the spacing allows, bar one interval
    assert gaps.min() >= interval / 2, gaps
    assert starts[-1] - starts[0] >= (n - 2) * interval, gaps


def test_requests_in_flight_never_exceed_the_cap() -> None:
    cap = 3
    with StubWmts(latency_s=0.05) as stub, WmtsClient(config(stub, max_concurrency=cap)) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(client.get_tile, [TileKey(2021, 5, 0, x) for x in range(24)]))
        assert all(r.status == "ok" for r in results) and stub.total_hits() == 24
        assert 2 <= stub.max_in_flight <= cap, stub.max_in_flight


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_network_failures_trip_the_breaker_after_a_bounded_number_of_tries() -> None:
    url = f"http://127.0.0.1:{free_port()}" + "/wmts/1.0.0/{layer}/default/g/{z}/{y}/{x}.jpg"
    cfg = ClientConfig(url_template=url, contact="t@example.invalid", min_interval_s=0.0, max_attempts=2,
                       backoff_base_s=0.0, refusal_limit=3)  # fmt: skip
    client, waits = recording_client(cfg)
    results = []
    with client, pytest.raises(SourceRefusedError, match="unreachable: 3 consecutive tiles ended in connection"):
        for x in range(100):
            results.append(client.get_tile(TileKey(2021, 5, 0, x)))
    assert [r.reason for r in results] == ["connection"] * 2  # the third tile raised
    assert client.requests == 3 * 2 and len(waits) == 3


def test_client_404_not_retried_and_offhost_redirect_refused() -> None:
    gone, moved = layer_tile(2021, 5, 1, 1), layer_tile(2021, 5, 1, 2)
    with StubWmts(missing={gone}, faults={moved: ["redirect_offhost"]}) as stub, WmtsClient(config(stub)) as c:
        res = c.get_tile(TileKey(2021, 5, 1, 1))
        assert (res.status, res.attempts, res.reason) == ("not_found", 1, "http_404")
        res = c.get_tile(TileKey(2021, 5, 1, 2))
        assert (res.status, res.attempts, res.reason) == ("failed", 1, "redirect_offhost")
        assert stub.hits[gone] == 1 and stub.hits[moved] == 1


def test_client_gives_up_after_max_attempts() -> None:
    tid = layer_tile(2021, 5, 2, 2)
    with StubWmts(faults={tid: ["503"] * 10}) as stub, WmtsClient(config(stub, max_attempts=3)) as client:
        res = client.get_tile(TileKey(2021, 5, 2, 2))
        assert (res.status, res.attempts, res.reason) == ("failed", 3, "http_503") and stub.hits[tid] == 3


def test_validate_tile() -> None:
    good = tile_jpeg("L", 1, 0, 0)
    assert validate_tile(good, "image/jpeg", 256) is None
    assert validate_tile(good, "text/html", 256) == "bad_content_type"
    assert validate_tile(good[:-600], "image/jpeg", 256) == "undecodable"
    assert validate_tile(good, "image/jpeg", 512) == "bad_size"


# -- runs ----------------------------------------------------------------------------------------
def test_layout_names_and_mosaic(tmp_path: Path) -> None:
    regions = block(2, 2)
    with StubWmts() as stub:
        summary = fetch_regions(regions, YEARS, [ZOOM], tmp_path, config(stub, kvp=True), RUN)
    assert summary["regions_written"] == 8 and summary["tiles_requested"] == 2 * 6 * 6
    files = sorted((tmp_path / "database").glob("*/*/*.jpg"))  # upstream's depth-3 glob
    assert len(files) == 8
    for f in files:
        p = parse_filename(f.name)
        zoom, row, col = parse_region_id(p.image_id)
        assert f.parent.parent.name == f"{p.year}_{zoom:02d}"
        assert f.parent.name == f"{int(round(p.nadir_lat, -1))}_{int(round(p.nadir_lon, -1))}"
        img = Image.open(f)
        assert img.size == (1024, 1024) and img.mode == "RGB"
        # tile (row+r, col+c) sits at x=256c, y=256r (JPEG re-encoding is lossy: compare loosely)
        a = np.asarray(img, dtype=float)
        for r, c in [(0, 0), (1, 3), (3, 2)]:
            tid = layer_tile(p.year, zoom, row + r, (col + c) % 32)
            ref = np.asarray(Image.open(__import__("io").BytesIO(tile_jpeg(*tid))).convert("RGB"), dtype=float)
            assert np.abs(a[256 * r : 256 * r + 256, 256 * c : 256 * c + 256] - ref).mean() < 4.0
    for year in YEARS:
        text = (tmp_path / "database" / f"{year}_05" / "ATTRIBUTION.txt").read_text()
        assert "SYNTHETIC" in text
    man = pd.read_parquet(tmp_path / "manifests" / "2021_05.parquet")
    assert set(man["status"]) == {"ok"} and len(man) == 4 and man["sha256"].str.len().eq(64).all()


def test_faults_give_identical_tree_and_are_recorded(tmp_path: Path) -> None:
    regions = block()
    gone = layer_tile(2021, ZOOM, 10, 30)  # genuinely missing in both runs: corner of one region
    faults = {
        layer_tile(2020, ZOOM, 11, 31): ["500"],
        layer_tile(2020, ZOOM, 12, 1): ["503", "503"],
        layer_tile(2021, ZOOM, 13, 0): ["429"],
        layer_tile(2021, ZOOM, 14, 2): ["timeout"],
        layer_tile(2020, ZOOM, 15, 3): ["reset"],
        layer_tile(2021, ZOOM, 16, 31): ["truncated"],
        layer_tile(2020, ZOOM, 17, 30): ["html"],
    }
    with StubWmts(missing={gone}) as stub:
        clean = fetch_regions(regions, YEARS, [ZOOM], tmp_path / "clean", config(stub), RUN)
    with StubWmts(missing={gone}, faults=faults) as stub:
        faulty = fetch_regions(regions, YEARS, [ZOOM], tmp_path / "faulty", config(stub), RUN)
        assert stub.hits[layer_tile(2021, ZOOM, 10, 30)] == 1  # 404 asked once
    assert tree(tmp_path / "clean") == tree(tmp_path / "faulty")
    assert clean["regions_not_found"] == faulty["regions_not_found"] == 1
    assert faulty["regions_written"] == 17 and faulty["tiles_not_found"] == 1
    reasons = faulty["attempt_reasons"]
    for r in ["http_500", "http_503", "http_429", "timeout", "connection", "undecodable", "bad_content_type"]:
        assert reasons.get(r, 0) >= 1, (r, reasons)
    assert reasons["http_503"] == 2 and reasons["http_404"] == 1
    assert faulty["http_requests"] == clean["http_requests"] + 8
    tiles = pd.read_parquet(tmp_path / "faulty" / "manifests" / "2020_05.tiles.parquet")
    assert tiles.loc[(tiles.y == 12) & (tiles.x == 1), "history"].item() == "http_503;http_503;ok"
    man = pd.read_parquet(tmp_path / "faulty" / "manifests" / "2021_05.parquet")
    missing = man[man["status"] != "ok"]
    assert missing["region_id"].tolist() == ["05_0010_0030"] and "not_found@5/10/30" in missing["reason"].item()
    assert man.loc[man["region_id"] == "05_0012_0000", "reason"].str.contains("http_429").item()


def test_rerun_fetches_nothing_and_retries_failed(tmp_path: Path) -> None:
    regions = block()
    gone = layer_tile(2021, ZOOM, 10, 30)
    with StubWmts(missing={gone}) as stub:
        fetch_regions(regions, YEARS, [ZOOM], tmp_path, config(stub), RUN)
    stale = [
        tmp_path / "database" / "2021_05" / "10_0" / ".@x@.jpg.abc123.tmp",  # what a kill -9 can leave
        tmp_path / ".tilecache" / "s2cloudless-2021_3857" / "5" / "10" / ".30.jpg.def456.tmp",
    ]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    with StubWmts() as stub:  # the tile has appeared since
        again = fetch_regions(regions, YEARS, [ZOOM], tmp_path, config(stub), RUN)
        assert dict(stub.hits) == {gone: 1}
    assert again["regions_skipped"] == 17 and again["regions_written"] == 1
    assert again["temp_files_swept"] == 2 and list(tmp_path.rglob("*.tmp")) == []
    assert pd.read_parquet(tmp_path / "manifests" / "2021_05.parquet")["status"].eq("ok").all()


def test_timeouts_trip_the_breaker() -> None:
    tiles = [layer_tile(2021, 5, 0, x) for x in range(3)]
    with StubWmts(faults={t: ["timeout"] for t in tiles}, hang_s=1.0) as stub:
        client, _ = recording_client(config(stub, max_attempts=1, refusal_limit=2, read_timeout_s=0.2))
        with client, pytest.raises(SourceRefusedError, match="unreachable: 2 consecutive tiles ended in timeout"):
            for t in tiles:
                client.get_tile(TileKey(2021, *t[1:]))
        assert stub.total_hits() == 2


def test_refusal_stops_with_clear_error(tmp_path: Path) -> None:
    with StubWmts(refuse_all=True) as stub:
        cfg = config(stub)
        with pytest.raises(SourceRefusedError, match="refuses us: 5 consecutive tiles ended in http_403"):
            fetch_regions(block(), YEARS, [ZOOM], tmp_path, cfg, RUN)
        # the breaker counts a tile before its concurrency slot is free and checks before every
        # send: besides the 5 refused tiles, at most the other slots' requests reach the server
        assert 5 <= stub.total_hits() <= cfg.refusal_limit + cfg.max_concurrency - 1


def test_refusal_bound_is_exact_one_at_a_time() -> None:
    with StubWmts(refuse_all=True) as stub, WmtsClient(config(stub)) as client:
        with pytest.raises(SourceRefusedError):
            for x in range(100):
                client.get_tile(TileKey(2021, 5, 0, x))
        assert stub.total_hits() == 5


def test_an_outage_stops_the_run(tmp_path: Path) -> None:
    # every connection dropped without an answer: the breaker stops the run instead of trying
    # each of the 2 x 8 x 8 tiles max_attempts times
    with StubWmts(reset_all=True) as stub:
        cfg = config(stub)
        with pytest.raises(SourceRefusedError, match="unreachable: 5 consecutive tiles ended in connection"):
            fetch_regions(block(), YEARS, [ZOOM], tmp_path, cfg, RUN)
        threads = 2 * cfg.max_concurrency  # RunConfig's default dask threads
        assert stub.total_hits() <= (cfg.refusal_limit + threads - 1) * cfg.max_attempts


def test_resume_rehashes_finished_images_and_refetches_a_corrupt_one(tmp_path: Path) -> None:
    regions = block(2, 2)
    with StubWmts() as stub:
        fetch_regions(regions, [2021], [ZOOM], tmp_path / "clean", config(stub), RUN)
        fetch_regions(regions, [2021], [ZOOM], tmp_path / "run", config(stub), RUN)
    shutil.rmtree(tmp_path / "run" / ".tilecache")  # as the stage leaves a complete shard
    victim = sorted((tmp_path / "run" / "database").rglob("*.jpg"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same name, other bytes
    victim.write_bytes(bytes(data))
    with StubWmts() as stub:
        again = fetch_regions(regions, [2021], [ZOOM], tmp_path / "run", config(stub), RUN)
        refetched = set(stub.hits)
    zoom, row, col = parse_region_id(parse_filename(victim.name).image_id)
    assert refetched == {layer_tile(2021, zoom, row + r, (col + c) % 32) for r in range(4) for c in range(4)}
    assert again["regions_written"] == 1 and again["regions_skipped"] == 3
    assert tree(tmp_path / "run" / "database") == tree(tmp_path / "clean" / "database")


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, pandas as pd
    from pipeline.fetch.client import ClientConfig
    from pipeline.fetch.run import RunConfig, fetch_regions
    url, root = sys.argv[1], sys.argv[2]
    regions = pd.DataFrame([(5, 10 + 2 * i, 2 * j) for i in range(3) for j in range(4)], columns=["zoom", "row", "col"])
    cfg = ClientConfig(url_template=url, contact="t@example.invalid", max_concurrency=2, min_interval_s=0.0)
    fetch_regions(regions, [2020, 2021], [5], root, cfg, RunConfig(progress=False, source="synthetic", checkpoint_s=0.3))
    """
)


def test_sweep_removes_a_killed_runs_manifest_temp_files_of_its_own_shard_only(tmp_path: Path) -> None:
    # A kill between atomic_path's mkstemp and its rename leaves `.<manifest>.<random>.tmp`.
    from pipeline.fetch.store import TileStore
    from pipeline.io import atomic_path

    store = TileStore(tmp_path)
    mine = store.manifest_path(2020, 5, "tiles")
    other = store.manifest_path(2021, 5, "regions")
    mine.parent.mkdir(parents=True)
    left: list[Path] = []
    for dest in (mine, store.manifest_path(2020, 5, "regions"), other):
        with pytest.raises(KeyboardInterrupt), atomic_path(dest) as tmp:
            Path(tmp).write_bytes(b"half a parquet")
            left.append(Path(tmp))
            os.link(tmp, Path(tmp).with_name(Path(tmp).name + ".keep"))  # what survives a SIGKILL
            raise KeyboardInterrupt
    for p in left:
        Path(str(p) + ".keep").rename(p)
    assert all(p.exists() and p.name.endswith(".tmp") for p in left)
    assert store.sweep_temp(2020, 5, "s2cloudless-2020_3857") == 2
    assert [p.exists() for p in left] == [False, False, True]  # the 2021 shard is not this run's


def test_kill_and_resume_is_identical_and_refetches_nothing(tmp_path: Path) -> None:
    regions = pd.DataFrame([(5, 10 + 2 * i, 2 * j) for i in range(3) for j in range(4)], columns=["zoom", "row", "col"])
    script = tmp_path / "run_fetch.py"
    script.write_text(KILL_SCRIPT)
    with StubWmts() as stub:
        fetch_regions(regions, YEARS, [ZOOM], tmp_path / "clean", config(stub), RUN)
    with StubWmts(latency_s=0.03) as stub:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, str(script), stub.restful, str(tmp_path / "run")], cwd=ROOT, env=env)
        deadline = time.monotonic() + 30
        while stub.total_hits() < 60 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = set(stub.hits)
    assert 60 <= len(first) < 2 * 8 * 10, "the kill must land mid-run"
    cache = tmp_path / "run" / ".tilecache"
    cached = {(p.parts[-4], int(p.parts[-3]), int(p.parts[-2]), int(p.stem)) for p in cache.rglob("*.jpg")}
    assert cached and cached <= first
    before = len(list((tmp_path / "run" / "database").glob("*/*/*.jpg")))
    print("kill state:", len(first), "tiles hit,", len(cached), "cached,", before, "images")
    with StubWmts() as stub:
        resumed = fetch_regions(regions, YEARS, [ZOOM], tmp_path / "run", config(stub), RUN)
        assert not (set(stub.hits) & cached), "a cached tile was fetched again"
        assert set(stub.hits) | cached == {
            layer_tile(y, ZOOM, r, c) for y in YEARS for r in range(10, 18) for c in range(10)
        }
    assert list((tmp_path / "run").rglob("*.tmp")) == []
    assert tree(tmp_path / "run") == tree(tmp_path / "clean")
    assert resumed["regions_skipped"] + resumed["regions_written"] == 24
    print(
        "resume:", {k: resumed[k] for k in ("regions_skipped", "regions_written", "tiles_reused", "temp_files_swept")}
    )
    with StubWmts() as stub:
        third = fetch_regions(regions, YEARS, [ZOOM], tmp_path / "run", config(stub), RUN)
        assert stub.total_hits() == 0 and third["regions_skipped"] == 24


def test_with_synthetic_server(tmp_path: Path) -> None:
    with SyntheticTileServer(seed=0) as srv:
        url = srv.base_url + "/wmts/1.0.0/{layer}/default/g/{z}/{y}/{x}.jpg"
        cfg = ClientConfig(url_template=url, contact="t@example.invalid", max_concurrency=4, min_interval_s=0.0)
        summary = fetch_regions(block(1, 2), [2021], [ZOOM], tmp_path, cfg, RUN)
    assert summary["regions_written"] == 2 and summary["tiles_requested"] == 4 * 6
    assert len(list((tmp_path / "database" / "2021_05").glob("*/*.jpg"))) == 2
