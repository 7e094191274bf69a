"""`dvc repro` end to end on a mini copy of the project (small bbox, ~200 real queries
near Texas, two evaluation sets): everything runs once, nothing reruns, and editing one
evaluation set's params reruns that stage only.

The mini project holds its own copy of dvc.yaml, pipeline/ and earthloc/, and the stage
commands import that copy: `earthloc` is the venv's console script (an editable install of
the checkout), but PYTHONPATH puts the mini project first on sys.path, ahead of the
editable finder (which setuptools appends to sys.meta_path after the path finder).
`test_stage_commands_import_the_mini_copy` checks that."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import texas_csv

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ALL_STAGES = {"grid", "queries", "intersect", "evalset@texas", "evalset@val"}
GEOMETRY_STAGES = ("grid", "queries", "intersect", "evalset")
RUNNING = re.compile(r"Running stage '([^']+)'")

pytestmark = pytest.mark.slow


def make_params(dest: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["grid"]["bbox"] = [-100, 25, -90, 35]
    params["queries"]["csv"] = "data/inputs/metadata_queries_images.csv"
    params["intersect"]["scheduler_address"] = None
    params["intersect"]["n_workers"] = 1
    params["evalset"]["sets"] = {
        "texas": {"lat": 30.0, "lon": -95.0, "query_radius_km": 2500, "db_radius_km": 5000},
        "val": {"lat": 30.0, "lon": -95.0, "query_radius_km": 500, "db_radius_km": 1200},
    }
    dest.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def set_radius(project: Path, name: str, km: int) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["evalset"]["sets"][name]["query_radius_km"] = km
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


class Project:
    def __init__(self, root: Path, site_cache: Path) -> None:
        self.root = root
        env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "PYTHONPATH")}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(root),
            DVC_NO_ANALYTICS="1",
            DVC_SITE_CACHE_DIR=str(site_cache),
            MPLBACKEND="Agg",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_CONFIG_NOSYSTEM="1",
        )
        self.env = env

    def run(self, *cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(cmd), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (
                f"{' '.join(cmd)} -> exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def dvc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "dvc"), *args)

    def repro(self, *args: str) -> tuple[set[str], str]:
        proc = self.dvc("repro", *args)
        out = proc.stdout + proc.stderr
        ran = RUNNING.findall(out)
        assert len(ran) == len(set(ran)), out
        return set(ran), out

    def status_clean(self) -> None:
        out = self.dvc("status").stdout + self.dvc("status", "--json").stdout
        assert "Data and pipelines are up to date" in out, out
        assert json.loads(self.dvc("status", "--json").stdout) == {}

    def summary(self, name: str) -> dict:  # type: ignore[type-arg]
        return json.loads((self.root / "data" / "evalsets" / name / "summary.json").read_text())

    def lock(self) -> dict:  # type: ignore[type-arg]
        return yaml.safe_load((self.root / "dvc.lock").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    base = tmp_path_factory.mktemp("dvc")
    root = base / "mini"
    root.mkdir()
    # The geometry stages only: the pixel stages (fetch, train, evaluate, ...) have their own
    # end-to-end tests, and `make repro` runs the whole pipeline.
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    dvc_yaml["stages"] = {k: v for k, v in dvc_yaml["stages"].items() if k in GEOMETRY_STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False), encoding="utf-8")
    for pkg in ("pipeline", "earthloc"):
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    make_params(root / "params.yaml")
    texas_csv(root / "data" / "inputs" / "metadata_queries_images.csv", 200)
    (root / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    p = Project(root, base / "dvc-site-cache")
    p.run("git", "init", "-q")
    p.dvc("init", "-q")
    p.dvc("config", "core.analytics", "false")
    return p


def test_stage_commands_import_the_mini_copy(project: Project) -> None:
    code = "import earthloc.cli, pipeline.stages.evalset as m; print(earthloc.cli.__file__); print(m.__file__)"
    out = project.run(sys.executable, "-c", code).stdout.split()
    assert out == [str(project.root / "earthloc" / "cli.py"), str(project.root / "pipeline" / "stages" / "evalset.py")]
    assert shutil.which("earthloc", path=project.env["PATH"]) == str(BIN / "earthloc")


def test_repro_runs_everything_then_nothing_then_only_the_edited_set(project: Project) -> None:
    root = project.root

    # (a) the first repro runs every stage and makes every output
    ran, out = project.repro()
    assert ran == ALL_STAGES, out
    for rel in (
        "data/grid/regions.parquet",
        "data/queries/queries.parquet",
        "data/queries/rejected.csv",
        "data/intersections/intersections_2021.parquet",
        "data/intersections/queries_intersections_with_db_2021.pt",
        "data/intersections/intersections_summary.json",
        "dvc.lock",
    ):
        assert (root / rel).is_file(), rel
    for name in ("texas", "val"):
        for f in ("queries.csv", "database.csv", "positives.parquet", "dropped.csv", "map.png", "summary.json"):
            assert (root / "data" / "evalsets" / name / f).is_file(), (name, f)
    assert json.loads((root / "data/intersections/intersections_summary.json").read_text())["num_pairs"] > 0
    texas0, val0 = project.summary("texas"), project.summary("val")
    assert texas0["num_queries"] > 0 and val0["num_queries"] > 0 and val0["num_db"] > 0
    assert val0["query_radius_km"] == 500
    lock0 = project.lock()["stages"]
    assert set(lock0) == ALL_STAGES
    project.status_clean()

    # (b) a second repro runs nothing
    ran, out = project.repro()
    assert ran == set(), out
    assert "Data and pipelines are up to date" in out, out
    project.status_clean()

    # (c) one evaluation set's radius: only that stage reruns
    set_radius(root, "val", 600)
    status = json.loads(project.dvc("status", "--json").stdout)
    assert set(status) == {"evalset@val"}, status
    ran, out = project.repro()
    assert ran == {"evalset@val"}, out
    lock1 = project.lock()["stages"]
    assert lock1["evalset@val"]["params"]["params.yaml"]["evalset.sets.val"]["query_radius_km"] == 600
    assert {k: v for k, v in lock1.items() if k != "evalset@val"} == {
        k: v for k, v in lock0.items() if k != "evalset@val"
    }
    assert project.summary("texas") == texas0
    assert project.summary("val")["query_radius_km"] == 600
    project.status_clean()

    # (d) a single stage as the target, after editing its radius: that stage alone
    set_radius(root, "texas", 2400)
    ran, out = project.repro("evalset@texas")
    assert ran == {"evalset@texas"}, out
    lock2 = project.lock()["stages"]
    assert lock2["evalset@texas"]["params"]["params.yaml"]["evalset.sets.texas"]["query_radius_km"] == 2400
    assert {k: v for k, v in lock2.items() if k != "evalset@texas"} == {
        k: v for k, v in lock1.items() if k != "evalset@texas"
    }
    assert project.summary("texas")["query_radius_km"] == 2400
    project.status_clean()
