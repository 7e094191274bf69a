"""params.yaml: the one config source. Each stage takes its own section."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax.

    PyYAML follows YAML 1.1, where a float needs a dot: `lr: 1e-4` would load as the
    string "1e-4". DVC reads and writes params.yaml with a YAML 1.2 parser, so
    `dvc exp run -S train.lr=1e-4` is a float to DVC; this loader reads it as one too."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values, floats read as YAML 1.2 (and DVC) read them."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The whole params file as a dict; a clear error if it is missing or malformed."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
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


T = TypeVar("T")


def build_config(cls: type[T], sec: Mapping[str, Any], name: str) -> T:
    """A (frozen) dataclass from a params section. Unknown keys and values the dataclass
    refuses are `ConfigError`s naming the section, never a TypeError deep in a stage."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(sec) - names)
    if unknown:
        raise ConfigError(f"params {name}: unknown keys {unknown}")
    try:
        return cls(**dict(sec))
    except TypeError as exc:
        raise ConfigError(f"params {name}: {exc}") from exc
