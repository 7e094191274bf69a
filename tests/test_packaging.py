"""The package declares what it imports, and installs and runs from a clean virtualenv.

`pip install .` must give a working `earthloc`: every third-party package the code imports
is a declared dependency in pyproject.toml, every declared dependency has an exact pin
in requirements*.txt, and a fresh virtualenv with those pins plus `--no-deps .` imports
every module and answers `earthloc --help`."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"pipeline", "earthloc"}
# modules of tests/ and benchmarks/ imported by name (helpers that sit beside the tests)
LOCAL_HELPERS = {p.stem for d in ("tests", "benchmarks") for p in (ROOT / d).glob("*.py")}


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert m, spec
    return canonical(m.group(1))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def declared(extra: str | None = None) -> set[str]:
    project = pyproject()["project"]
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {requirement_name(s) for s in specs}


def pinned(*files: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for name in files:
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                n, _, v = line.partition("==")
                pins[canonical(n)] = v
    return pins


def third_party_imports(*folders: str) -> dict[str, str]:
    """Top-level name of every absolute import outside the stdlib and the project -> one file using it."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top in LOCAL_HELPERS:
                        continue
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def distributions_of(imports: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Import name -> (distribution, file), from the installed packages' metadata."""
    by_module = importlib.metadata.packages_distributions()
    out: dict[str, tuple[str, str]] = {}
    for module, where in imports.items():
        dists = by_module.get(module)
        assert dists, f"{where} imports {module!r}, which no installed distribution provides"
        # Several distributions may install into one import name (plugins of a namespace,
        # e.g. pystac's extension packages): the module is declared when its own is.
        names = [canonical(d) for d in dists]
        own = [n for n in names if n == canonical(module)]
        out[module] = ((own or names)[0], where)
    return out


def test_the_import_scan_finds_known_imports() -> None:
    runtime = third_party_imports("pipeline", "earthloc")
    assert {"numpy", "torch", "shapely", "yaml"} <= set(runtime)
    assert not FIRST_PARTY & set(runtime) and "json" not in runtime


def test_every_runtime_import_is_a_declared_dependency() -> None:
    deps = declared()
    missing = {
        f"{dist} (imported as {module} in {where})"
        for module, (dist, where) in distributions_of(third_party_imports("pipeline", "earthloc")).items()
        if dist not in deps
    }
    assert not missing, f"add to [project] dependencies in pyproject.toml: {sorted(missing)}"


def test_every_test_and_benchmark_import_is_declared() -> None:
    deps = declared() | declared("dev")
    missing = {
        f"{dist} (imported as {module} in {where})"
        for module, (dist, where) in distributions_of(third_party_imports("tests", "benchmarks")).items()
        if dist not in deps
    }
    assert not missing, f"add to [project.optional-dependencies] dev in pyproject.toml: {sorted(missing)}"


def test_every_declared_dependency_is_pinned() -> None:
    runtime_pins = pinned("requirements.txt")
    all_pins = pinned("requirements.txt", "requirements-dev.txt")
    assert not declared() - set(runtime_pins), f"pin in requirements.txt: {sorted(declared() - set(runtime_pins))}"
    dev = declared("dev")
    assert not dev - set(all_pins), f"pin in requirements-dev.txt: {sorted(dev - set(all_pins))}"


def test_pins_satisfy_the_declared_ranges() -> None:
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    pins = pinned("requirements.txt", "requirements-dev.txt")
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        version = pins[canonical(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}"


@pytest.mark.slow
def test_clean_virtualenv_installs_the_package_and_runs_it(tmp_path: Path) -> None:
    """pip's cache (and the local wheel directory pip is configured with) keeps this to
    an unpack and a link step: nothing is downloaded twice."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR")}
    env["PIP_NO_INPUT"] = "1"

    def run(*cmd: str | Path, cwd: Path = tmp_path) -> str:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, (
            f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        return proc.stdout

    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "--quiet", "-r", ROOT / "requirements.txt")
    # Built from a copy of what the package is made of, so that the build leaves nothing in
    # the checkout and cannot pick up files lying around in it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in sorted(FIRST_PARTY):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(py, "-m", "pip", "install", "--quiet", "--no-deps", src)

    out = run(venv / "bin" / "earthloc", "--help")
    assert "usage: earthloc" in out and "evaluate" in out and "fetch" in out
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in FIRST_PARTY
        for p in (ROOT / pkg).rglob("*.py")
    )
    code = (
        "import importlib, sys, pathlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import pipeline, earthloc\n"
        "print(pathlib.Path(pipeline.__file__).parent)\n"
    )
    installed = Path(run(py, "-c", code).strip())
    assert ROOT not in installed.parents, installed  # imported from the venv, not the checkout
    assert (installed / "synthetic" / "land_quarter_degree.npz").is_file()
    assert any((installed.parent / "earthloc" / "assets" / "leaflet").iterdir())
