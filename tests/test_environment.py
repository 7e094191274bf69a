"""requirements.txt (+ dev) and environment.yml pin the same versions."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# pip name -> conda-forge name where they differ
CONDA_NAME = {"torch": "pytorch"}


def _pip_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-r"):
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"{name}: not an exact pin: {line!r}"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                n, v = line.split("==")
                pins[n.lower()] = v
        elif "=" in dep:
            n, v = dep.split("=", 1)
            pins[n.lower()] = v
    return pins


def test_every_pip_pin_is_in_environment_yml_with_the_same_version() -> None:
    pip, conda = _pip_pins(), _conda_pins()
    for name, version in pip.items():
        cname = CONDA_NAME.get(name, name)
        assert cname in conda, f"{name} pinned in requirements but missing from environment.yml"
        assert conda[cname] == version, f"{name}: requirements {version} vs environment.yml {conda[cname]}"


def test_environment_yml_has_nothing_requirements_lack() -> None:
    pip, conda = _pip_pins(), _conda_pins()
    reverse = {v: k for k, v in CONDA_NAME.items()}
    extra = {n for n in conda if n not in ("python", "pip") and reverse.get(n, n) not in pip}
    assert not extra, f"environment.yml pins packages requirements do not: {sorted(extra)}"
