"""params.yaml loading: YAML 1.2 floats (as DVC writes them), clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from earthloc.trainer import TrainConfig
from pipeline.errors import ConfigError
from pipeline.params import load_params, parse_yaml, section

ROOT = Path(__file__).resolve().parents[1]


def test_exponent_floats_without_a_dot_are_floats() -> None:
    # PyYAML alone reads these as strings (YAML 1.1); DVC's YAML 1.2 parser as floats.
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"
    values = parse_yaml("a: 1e-4\nb: -2E+3\nc: 3.0e-4\nd: .5\ne: 1.5\nf: 7\ng: .inf\nh: 1_000")
    assert values["a"] == pytest.approx(1e-4) and isinstance(values["a"], float)
    assert values["b"] == -2000.0 and isinstance(values["b"], float)
    assert values["c"] == pytest.approx(3e-4) and values["d"] == 0.5 and values["e"] == 1.5
    assert values["f"] == 7 and isinstance(values["f"], int)
    assert math.isinf(values["g"])
    assert values["h"] == 1000  # YAML 1.1 integer with underscores, unchanged


def test_strings_that_only_look_numeric_stay_strings() -> None:
    values = parse_yaml("q: '1e-4'\nv: 2.14.1\nz: ['09', '10']\nw: 1e\nx: e5\ny: 1e-4a")
    assert values == {"q": "1e-4", "v": "2.14.1", "z": ["09", "10"], "w": "1e", "x": "e5", "y": "1e-4a"}


def test_project_params_load_as_before() -> None:
    # The new float rule changes no value of the shipped params.yaml.
    text = (ROOT / "params.yaml").read_text()
    assert parse_yaml(text) == yaml.safe_load(text)


def test_train_section_with_dvc_style_lr(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 1e-4\n  iterations: 5\n")
    cfg = TrainConfig.from_section(section(load_params(p), "train"))
    assert cfg.lr == pytest.approx(1e-4)


def test_a_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="params train"):
        TrainConfig.from_section(section(load_params(p), "train"))
