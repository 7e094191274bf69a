"""intersect on dask.distributed end to end: an external scheduler + workers started
with dask's own CLI (separate processes, 127.0.0.1 only) give the same files as a
LocalCluster, whether the address comes from --scheduler or DASK_SCHEDULER_ADDRESS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import shapely
import yaml

from earthloc.cli import main
from support import texas_csv

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EARTHLOC = str(BIN / "earthloc")
DASK = str(BIN / "dask")
BBOX = ["-100", "25", "-90", "35"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    env["MPLBACKEND"] = "Agg"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} -> exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def write_params(dest: Path) -> Path:
    """The real params with no scheduler configured (the tests choose it)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["intersect"]["scheduler_address"] = None
    params["intersect"]["n_workers"] = 2
    dest.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("intersect_inputs")
    params = write_params(d / "params.yaml")
    env = clean_env()
    grid, queries = d / "regions.parquet", d / "queries.parquet"
    run([EARTHLOC, "grid", "--params", str(params), "--bbox", *BBOX, "--out", str(grid)], d, env)
    csv_path = texas_csv(d / "queries.csv", 300)
    run(
        [
            EARTHLOC,
            "queries",
            "--params",
            str(params),
            str(csv_path),
            "--out",
            str(queries),
            "--rejected",
            str(d / "rejected.csv"),
        ],
        d,
        env,
    )
    assert len(gpd.read_parquet(grid)) > 0
    assert len(gpd.read_parquet(queries)) == 300
    return {"dir": d, "params": params, "grid": grid, "queries": queries}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # The worker's nanny/worker children live in the process group we created.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """`dask scheduler` + `dask worker --nworkers 2` as separate processes on 127.0.0.1."""
    from dask.distributed import Client

    d = tmp_path_factory.mktemp("dask_cluster")
    sched_file = d / "scheduler.json"
    env = clean_env()
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: open(d / f"{name}.log", "wb") for name in ("scheduler", "workers")}

    def log_text() -> str:
        for fh in logs.values():
            fh.flush()
        return "\n".join(f"--- {n}.log\n{(d / f'{n}.log').read_text(errors='replace')[-4000:]}" for n in logs)

    try:
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--scheduler-file",
                    str(sched_file),
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                cwd=d,
                env=env,
                stdout=logs["scheduler"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 60
        address = None
        while time.monotonic() < deadline:
            assert procs[0].poll() is None, f"dask scheduler exited\n{log_text()}"
            try:
                address = json.loads(sched_file.read_text())["address"]
                break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.2)
        assert address, f"no scheduler file after 60 s\n{log_text()}"
        assert address.startswith("tcp://127.0.0.1:"), address

        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    "--scheduler-file",
                    str(sched_file),
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--local-directory",
                    str(d / "scratch"),
                    "--memory-limit",
                    "0",
                ],
                cwd=d,
                env=env,
                stdout=logs["workers"],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        client = Client(scheduler_file=str(sched_file), timeout="30s")
        try:
            client.wait_for_workers(2, timeout=60)
        except TimeoutError:
            pytest.fail(f"2 workers did not register in 60 s\n{log_text()}")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
        yield {"address": address, "client": client, "log": log_text}
        client.close()
    finally:
        for p in reversed(procs):
            _stop(p)
        for fh in logs.values():
            fh.close()


# ---------------------------------------------------------------------------
# helpers on the external cluster: the workers' region-tree cache shows who did the work


def _worker_tree_caches(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    # A lambda travels by value (the test module is not importable on the workers).
    return client.run(lambda: len(__import__("pipeline.stages.intersect", fromlist=["_"])._TREE_CACHE))


def _clear_worker_tree_caches(client) -> None:  # type: ignore[no-untyped-def]
    client.run(lambda: __import__("pipeline.stages.intersect", fromlist=["_"])._TREE_CACHE.clear())


def _intersect(inputs: dict[str, Path], out: Path, env: dict[str, str], *extra: str) -> None:
    run(
        [
            EARTHLOC,
            "intersect",
            "--params",
            str(inputs["params"]),
            "--queries",
            str(inputs["queries"]),
            "--grid",
            str(inputs["grid"]),
            "--out-dir",
            str(out),
            *extra,
        ],
        inputs["dir"],
        env,
    )


def _load(out: Path) -> tuple[pd.DataFrame, dict, dict]:  # type: ignore[type-arg]
    import torch

    table = pd.read_parquet(out / "intersections_2021.parquet")
    pt = torch.load(out / "queries_intersections_with_db_2021.pt", weights_only=True)
    summary = json.loads((out / "intersections_summary.json").read_text())
    return table, pt, summary


# ---------------------------------------------------------------------------
# tests


@pytest.mark.slow
def test_external_scheduler_flag_env_and_local_cluster_give_identical_outputs(
    inputs: dict[str, Path], dask_cluster: dict[str, object]
) -> None:
    client, address = dask_cluster["client"], str(dask_cluster["address"])
    d = inputs["dir"]

    # 1. --scheduler tcp://127.0.0.1:PORT
    _clear_worker_tree_caches(client)
    _intersect(inputs, d / "A", clean_env(), "--scheduler", address)
    used = _worker_tree_caches(client)
    assert sum(used.values()) >= 1, f"the external workers did no work: {used}\n{dask_cluster['log']()}"

    # 2. DASK_SCHEDULER_ADDRESS instead of the flag
    _clear_worker_tree_caches(client)
    _intersect(inputs, d / "C", clean_env(DASK_SCHEDULER_ADDRESS=address))
    used = _worker_tree_caches(client)
    assert sum(used.values()) >= 1, f"DASK_SCHEDULER_ADDRESS was not used: {used}"

    # 3. no address anywhere: a LocalCluster, and the external workers stay idle
    _clear_worker_tree_caches(client)
    _intersect(inputs, d / "B", clean_env())
    assert sum(_worker_tree_caches(client).values()) == 0

    ref_table, ref_pt, ref_summary = _load(d / "B")
    assert len(ref_table) > 0
    assert ref_summary["num_pairs"] == len(ref_table) > 0
    assert ref_summary["num_queries"] == len(ref_pt) == 300
    assert sum(len(v) for v in ref_pt.values()) == len(ref_table)
    for other in ("A", "C"):
        table, pt, summary = _load(d / other)
        pd.testing.assert_frame_equal(table, ref_table, check_exact=True)
        assert pt == ref_pt
        assert summary == ref_summary
        # Every output is promised byte-identical whatever ran it.
        for name in (
            "intersections_2021.parquet",
            "queries_intersections_with_db_2021.pt",
            "intersections_summary.json",
        ):
            assert (d / other / name).read_bytes() == (d / "B" / name).read_bytes(), name


def _tiny_inputs(d: Path) -> tuple[Path, Path]:
    box = shapely.box(-95.0, 29.0, -94.0, 30.0)
    gpd.GeoDataFrame({"query_id": ["ISS001-E-1"], "filename": ["q.jpg"]}, geometry=[box], crs="EPSG:4326").to_parquet(
        d / "q.parquet"
    )
    gpd.GeoDataFrame({"region_id": ["r1"], "zoom": [9]}, geometry=[box], crs="EPSG:4326").to_parquet(d / "g.parquet")
    return d / "q.parquet", d / "g.parquet"


def test_unreachable_scheduler_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    params = write_params(tmp_path / "params.yaml")
    q, g = _tiny_inputs(tmp_path)
    rc = main(
        [
            "intersect",
            "--params",
            str(params),
            "--queries",
            str(q),
            "--grid",
            str(g),
            "--out-dir",
            str(tmp_path / "out"),
            "--scheduler",
            "tcp://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("earthloc intersect: error: cannot reach dask scheduler tcp://127.0.0.1:9"), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # gave up at the connect, before any work
