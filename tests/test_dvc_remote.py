"""Sharing a build through a DVC remote (docs/sharing.md), with real DVC and git on a tiny
two-stage pipeline: build, `dvc push` to a local-directory remote, `git clone` elsewhere,
`dvc pull`; the clone's `dvc status` is clean, its files are byte-identical, and
`dvc repro` there runs nothing (no stage is refetched or retrained)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# Stage "fetch" writes a folder of files (as the tile store), stage "train" reads it and
# writes one file (as the model). Each appends a line to a log outside the workspace, so a
# rerun anywhere would show.
DVC_YAML = """\
stages:
  fetch:
    cmd: {py} -c "import os,sys; os.makedirs('tiles', exist_ok=True); [open(f'tiles/{{i}}.bin','wb').write(os.urandom(4096)) for i in range(20)]; open(sys.argv[1],'a').write('fetch\\n')" {log}
    outs:
      - tiles
  train:
    cmd: {py} -c "import hashlib,os,sys; h=hashlib.sha256(b''.join(open(os.path.join('tiles',f),'rb').read() for f in sorted(os.listdir('tiles')))).hexdigest(); os.makedirs('models', exist_ok=True); open('models/model.txt','w').write(h); open(sys.argv[1],'a').write('train\\n')" {log}
    deps:
      - tiles
    outs:
      - models/model.txt
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "site_cache"),
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.org",
    )
    return env


def _run(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _digest(root: Path, rels: list[str]) -> dict[str, str]:
    out = {}
    for rel in rels:
        p = root / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_push_clone_pull_gives_an_up_to_date_identical_workspace(tmp_path: Path) -> None:
    env = _env(tmp_path)
    dvc = str(BIN / "dvc")
    src, clone, remote, log = tmp_path / "src", tmp_path / "clone", tmp_path / "remote", tmp_path / "runs.log"
    src.mkdir()
    _run(src, env, "git", "init", "-q")
    _run(src, env, dvc, "init", "-q")
    (src / "dvc.yaml").write_text(DVC_YAML.format(py=sys.executable, log=log), encoding="utf-8")
    _run(src, env, dvc, "repro")
    assert log.read_text().split() == ["fetch", "train"]
    _run(src, env, dvc, "remote", "add", "-d", "shared", str(remote))
    _run(src, env, dvc, "config", "cache.type", "reflink,hardlink,copy")
    _run(src, env, "git", "add", "-A")
    _run(src, env, "git", "commit", "-qm", "build")
    pushed = _run(src, env, dvc, "push", "--jobs", "4")
    assert "22 files pushed" in pushed  # 20 tiles, the model, and the folder's .dir listing

    _run(tmp_path, env, "git", "clone", "-q", str(src), str(clone))
    assert not (clone / "tiles").exists() and not (clone / "models" / "model.txt").exists()
    pulled = _run(clone, env, dvc, "pull", "--jobs", "4")
    assert "21 files added" in pulled, pulled
    status = _run(clone, env, dvc, "status")
    assert "Data and pipelines are up to date" in status
    assert _digest(clone, ["tiles", "models"]) == _digest(src, ["tiles", "models"])
    assert len(_digest(clone, ["tiles"])) == 20

    repro = _run(clone, env, dvc, "repro")
    assert "didn't change, skipping" in repro and "Running stage" not in repro
    assert log.read_text().split() == ["fetch", "train"]  # nothing reran, here or there
    assert _run(clone, env, dvc, "status", "--cloud").strip().endswith("Cache and remote 'shared' are in sync.")
