"""params.yaml: the one config source. Each stage takes its own section."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
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
    return yaml.load(text, Loader=ParamsLoader)  # safe: ParamsLoader is a SafeLoader subclass


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


def check_keys(sec: Mapping[str, Any], allowed: Iterable[str], name: str) -> None:
    """A `ConfigError` naming the first key of `sec` not in `allowed` (with the closest
    allowed key as a hint): a misspelt key must never fall back silently to a default."""
    allowed = sorted(allowed)
    unknown = sorted(str(k) for k in set(sec) - set(allowed))
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if len(unknown) == 1:
        raise ConfigError(f"params {name}: unknown key {unknown[0]!r}{hint}")
    raise ConfigError(f"params {name}: unknown keys {', '.join(repr(k) for k in unknown)}")


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no conversions, still strict
        return {}


def _union_options(hint: Any) -> tuple[Any, ...]:
    """The members of `X | Y` (or `Optional[X]`); just `(hint,)` for any other type."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field holds (also `X | None`), else None."""
    options = _union_options(hint)
    found = [t for t in options if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return found[0] if len(found) == 1 else None


def _wants_tuple(hint: Any) -> bool:
    options = _union_options(hint)
    return any(typing.get_origin(t) is tuple or t is tuple for t in options)


def build_config(cls: type[T], sec: Mapping[str, Any] | None, name: str) -> T:
    """A (frozen) dataclass from a params section.

    Strict at every level: an unknown key is a `ConfigError` naming it (`params
    fetch.client: unknown key 'max_concurency'`), and a field holding a dataclass is
    built from its nested mapping the same way. YAML lists become tuples where the field
    is a tuple (frozen configs must be hashable) and integers become floats where the
    field is a float. Absent keys take the dataclass's
    default, so each default is written once, on the dataclass. Values the dataclass
    refuses are `ConfigError`s naming the section, never a TypeError deep in a stage."""
    if sec is None:
        sec = {}
    if not isinstance(sec, Mapping):
        raise ConfigError(f"params {name}: expected a mapping, got {type(sec).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    check_keys(sec, fields, name)
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in sec.items():
        hint = hints.get(key)
        nested = _nested_dataclass(hint) if hint is not None else None
        if nested is not None and isinstance(value, Mapping):
            value = build_config(nested, value, f"{name}.{key}")
        elif isinstance(value, list) and hint is not None and _wants_tuple(hint):
            value = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML's `60` where the field is a float
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"params {name}: {exc}") from exc
