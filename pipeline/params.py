"""params.yaml: the one config source. Each stage takes its own section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The whole params file as a dict; a clear error if it is missing or malformed."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One stage's section, or a clear error naming what is missing."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"params: section {name!r} is missing or not a mapping")
    return value
