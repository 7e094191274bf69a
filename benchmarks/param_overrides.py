"""`-S section.key=value` overrides of a params dict, shared by the benchmark scripts that
train and evaluate with modified params (seed_spread.py, learning.py), as `dvc exp run -S`
would set them."""

from __future__ import annotations

from typing import Any

from pipeline.params import parse_yaml


def override(params: dict[str, Any], assignment: str) -> None:
    """`section.key=value` (a YAML value) into params; a path params does not have is an error."""
    key, sep, raw = assignment.partition("=")
    if not sep or "." not in key:
        raise SystemExit(f"-S {assignment!r}: expected section.key=value")
    node = params
    *parents, leaf = key.split(".")
    for name in parents:
        if not isinstance(node.get(name), dict):
            raise SystemExit(f"-S {assignment!r}: no section {name!r} on that path")
        node = node[name]
    if leaf not in node:
        raise SystemExit(f"-S {assignment!r}: no key {key!r}")
    node[leaf] = parse_yaml(raw)
