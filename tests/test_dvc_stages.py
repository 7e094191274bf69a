"""Every stage's DVC declaration (deps, outs, params), checked without running the stages.

tests/test_dvc_pipeline.py runs the geometry stages for real; the pixel stages (fetch,
train, evaluate, ...) take minutes each, too long to rerun per edit in CI. Here a copy
of the project gets a placeholder file for every declared dependency and output that
does not exist, `dvc commit` records them in dvc.lock as if every stage had run, and
then one input at a time is edited and `dvc status` asked which stages are out of date.

What this proves: for every stage of dvc.yaml (all foreach and matrix instances), the
lock records the declared params, deps and outs; editing one params key marks exactly
the stages that declare it (or a section above it) and no other; editing a code module
marks exactly the stages that list it; and every data dependency is either a source
file of the repository or another stage's output, so DVC's graph reruns everything
downstream of an edited stage once that stage has produced new outputs. It does not
prove that a stage reads only what it declares: tests/test_dvc_deps.py checks the code
side, and each stage's own tests check its params.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from contextlib import chdir
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def placeholder(path: Path) -> None:
    """A stand-in for a file (a name with a suffix) or a folder (one file inside)."""
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"placeholder {path.name}\n", encoding="utf-8")
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "placeholder.txt").write_text("placeholder\n", encoding="utf-8")


class Mini:
    """A copy of the project's code, dvc.yaml and params.yaml with every stage committed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repo(self) -> Any:
        """DVC's Python API resolves stage paths against the working directory: call it
        inside `with chdir(mini.root)`."""
        from dvc.repo import Repo

        assert Path.cwd() == self.root
        return Repo(str(self.root))

    def status(self) -> set[str]:
        with chdir(self.root):
            return set(self.repo().status())

    def stages(self) -> dict[str, tuple[list[str], list[str]]]:
        """Stage name -> (file dependency paths, output paths), all foreach/matrix instances."""
        from dvc.dependency.param import ParamsDependency

        with chdir(self.root):
            return {
                s.addressing: (
                    [d.def_path for d in s.deps if not isinstance(d, ParamsDependency)],
                    [o.def_path for o in s.outs],
                )
                for s in self.repo().index.stages
            }

    def lock(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "dvc.lock").read_text(encoding="utf-8"))["stages"]

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Mini:
    root = tmp_path_factory.mktemp("dvc_stages") / "mini"
    root.mkdir()
    for rel in ("pipeline", "earthloc"):
        shutil.copytree(ROOT / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / rel, root / rel)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    os.environ["DVC_NO_ANALYTICS"] = "1"
    from dvc.repo import Repo

    m = Mini(root)
    with chdir(root):
        Repo.init(str(root))
        repo = m.repo()
        for stage in repo.index.stages:
            for item in [*stage.deps, *stage.outs]:
                if not (root / item.def_path).exists():
                    placeholder(root / item.def_path)
        repo.commit(force=True)
        # Committing writes .gitignore files into output folders, which changes the hash of a
        # folder dependency committed before them (pairs depends on data/evalsets): once more.
        repo = m.repo()
        for name in repo.status():
            repo.commit(name, force=True)
    return m


def stage_names(mini: Mini) -> set[str]:
    return set(mini.stages())


def leaf_paths(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, f"{prefix}.{k}")]
    return [prefix]


def get(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def changed(value: Any) -> Any:
    """A different value of the same kind, so the stage's code would see a real change."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_edited"
    if isinstance(value, list):
        return [*value, copy.deepcopy(value[-1]) if value else 1]
    if value is None:
        return 1
    raise AssertionError(f"no edit for {value!r}")


class QuotingDumper(yaml.SafeDumper):
    """Quotes every string. PyYAML writes "09" bare, which DVC's YAML 1.2 reader takes for
    the number 9 (renaming the fetch@<year>-09 shards); quoted, both readers agree."""


QuotingDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style='"'))


def set_param(root: Path, dotted: str, value: Any) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.dump(params, Dumper=QuotingDumper, sort_keys=False), encoding="utf-8")


def declared_params(lock: dict[str, Any]) -> dict[str, set[str]]:
    return {name: set(st.get("params", {}).get("params.yaml", {})) for name, st in lock.items()}


def test_every_stage_is_committed_with_its_declaration(mini: Mini) -> None:
    lock = mini.lock()
    assert set(lock) == stage_names(mini)
    assert mini.status() == set(), "a freshly committed project is up to date"
    for name, (deps, outs) in mini.stages().items():
        entry = lock[name]
        assert sorted(d["path"] for d in entry.get("deps", [])) == sorted(deps)
        assert sorted(o["path"] for o in entry.get("outs", [])) == sorted(outs)
        assert entry.get("params", {}).get("params.yaml"), f"{name} declares no params"


def test_every_data_dependency_is_a_source_or_another_stages_output(mini: Mini) -> None:
    stages = mini.stages()
    outs = {o: name for name, (_, stage_outs) in stages.items() for o in stage_outs}
    for name, (deps, _) in stages.items():
        for path in deps:
            produced = [p for p in outs if path == p or path.startswith(p + "/") or p.startswith(path + "/")]
            assert produced or (ROOT / path).exists(), (
                f"{name}: dependency {path} is neither in the repository nor any stage's output"
            )


def expected_stages(declared: dict[str, set[str]], leaf: str) -> set[str]:
    return {name for name, ps in declared.items() if any(leaf == p or leaf.startswith(p + ".") for p in ps)}


def params_cases(mini: Mini) -> list[tuple[str, set[str]]]:
    """(leaf params key, stages that must go out of date) to edit one at a time.

    One leaf per distinct set of declaring stages (editing a second key declared by exactly
    the same stages would prove nothing new, and each `dvc status` costs seconds), and for
    each top-level section one leaf that no stage declares (batch sizes, worker counts,
    paths of tools): editing it must rerun nothing."""
    declared = declared_params(mini.lock())
    params = mini.params()
    entries = sorted({p for ps in declared.values() for p in ps})
    cases: list[tuple[str, set[str]]] = []
    seen: set[frozenset[str]] = set()
    for entry in entries:
        leaf = leaf_paths(get(params, entry), entry)[0]
        expected = expected_stages(declared, leaf)
        if frozenset(expected) not in seen:
            seen.add(frozenset(expected))
            cases.append((leaf, expected))
    for section, value in params.items():
        free = [leaf for leaf in leaf_paths(value, section) if not expected_stages(declared, leaf)]
        if free:
            cases.append((free[0], set()))
    return cases


def test_editing_each_params_key_marks_exactly_the_stages_that_declare_it(mini: Mini) -> None:
    original = (mini.root / "params.yaml").read_text(encoding="utf-8")
    cases = params_cases(mini)
    kinds = {name.split("@")[0] for _, expected in cases for name in expected}
    assert kinds == {name.split("@")[0] for name in mini.lock()}  # every stage kind is edited at least once
    wrong: list[str] = []
    try:
        for leaf, expected in cases:
            set_param(mini.root, leaf, changed(get(mini.params(), leaf)))
            got = mini.status()
            if got != expected:
                wrong.append(f"{leaf}: dvc status {sorted(got)}, declared by {sorted(expected)}")
            (mini.root / "params.yaml").write_text(original, encoding="utf-8")
    finally:
        (mini.root / "params.yaml").write_text(original, encoding="utf-8")
    assert not wrong, "\n".join(wrong)
    assert mini.status() == set()


@pytest.mark.parametrize("rel", ["pipeline/geo/regions.py", "pipeline/io.py", "earthloc/model.py"])
def test_editing_a_module_marks_exactly_the_stages_that_list_it(mini: Mini, rel: str) -> None:
    path = mini.root / rel
    before = path.read_bytes()
    lock = mini.lock()
    expected = {
        name
        for name, st in lock.items()
        if any(rel == d["path"] or rel.startswith(d["path"].rstrip("/") + "/") for d in st.get("deps", []))
    }
    assert expected, f"no stage lists {rel}"
    try:
        path.write_bytes(before + b"\n# edited\n")
        assert mini.status() == expected
    finally:
        path.write_bytes(before)
    assert mini.status() == set()
