"""Print the AstroLoc ablation table from DVC experiments (`dvc exp show --json`).

Usage: python benchmarks/ablation_table.py EXP_NAME... (see benchmarks/ablation.sh)
One row per experiment: its loss switches, train iterations, and the model's R@1/5/10/100
(uncollapsed, the paper's count) with the nadir restriction (set demo) and lost in space
(set demo_lost_in_space)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

SETS = (("demo", "nadir"), ("demo_lost_in_space", "lost in space"))
NS = (1, 5, 10, 100)


def _nodes(obj: Any) -> Iterator[dict[str, Any]]:
    """Every experiment record in DVC's JSON (a dict with a name and a data block)."""
    if isinstance(obj, dict):
        if "name" in obj and isinstance(obj.get("data"), dict):
            yield obj
        for v in obj.values():
            yield from _nodes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _nodes(v)


def _file_data(block: dict[str, Any], suffix: str) -> dict[str, Any]:
    for path, entry in (block or {}).items():
        if path.replace("\\", "/").endswith(suffix):
            return (entry or {}).get("data") or {}
    return {}


def rows(exp_json: Any, names: list[str]) -> list[list[str]]:
    found = {n["name"]: n["data"] for n in _nodes(exp_json) if n.get("name") in names}
    out = []
    for name in names:
        data = found.get(name)
        if data is None:
            out.append([name, "(not found)"])
            continue
        params = _file_data(data.get("params", {}), "params.yaml")
        losses = params.get("astroloc", {}).get("losses", {})
        on = "+".join(k for k in ("earthloc_ms", "photo_pairs", "weighted_clusters") if losses.get(k)) or "?"
        row = [name, on, str(params.get("train", {}).get("iterations", "?"))]
        for set_name, _ in SETS:
            m = _file_data(data.get("metrics", {}), f"data/eval/{set_name}/metrics.json")
            model = m.get("methods", {}).get("model", {})
            row += [f"{model[f'R@{n}']:.1f}" if model.get(f"R@{n}") is not None else "-" for n in NS]
        out.append(row)
    return out


def main(argv: list[str]) -> int:
    names = argv or ["earthloc", "astroloc", "photo_pairs", "weighted_clusters"]
    res = subprocess.run(["dvc", "exp", "show", "--json", "--no-pager"], capture_output=True, text=True, check=True)
    table = rows(json.loads(res.stdout), names)
    head = ["experiment", "losses", "iterations"] + [f"{label} R@{n}" for _, label in SETS for n in NS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
