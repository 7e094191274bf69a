"""benchmarks/ablation_table.py reads DVC's experiment JSON (shape of `dvc exp show --json`, DVC 3)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():  # benchmarks/ is not a package
    spec = importlib.util.spec_from_file_location("ablation_table", ROOT / "benchmarks" / "ablation_table.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _exp(name: str, losses: dict[str, bool], r1: float) -> dict:
    model = {"R@1": r1, "R@5": r1 + 1, "R@10": r1 + 2, "R@100": 100.0}
    return {
        "rev": "abc",
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"astroloc": {"losses": losses}, "train": {"iterations": 40}}}},
            "metrics": {
                "data/eval/demo/metrics.json": {"data": {"methods": {"model": model}}},
                "data/eval/demo_lost_in_space/metrics.json": {"data": {"methods": {"model": {**model, "R@1": r1 / 2}}}},
            },
        },
    }


def test_rows_from_dvc_json() -> None:
    doc = [
        {"rev": "workspace", "name": None, "data": {}},
        {
            "rev": "HEAD",
            "name": "main",
            "data": {},
            "experiments": [
                {"revs": [_exp("earthloc", {"earthloc_ms": True}, 10.0)]},
                {"revs": [_exp("astroloc", {"photo_pairs": True, "weighted_clusters": True}, 20.0)]},
            ],
        },
    ]
    rows = _module().rows(doc, ["earthloc", "astroloc", "missing"])
    assert rows[0] == ["earthloc", "earthloc_ms", "40", "10.0", "11.0", "12.0", "100.0", "5.0", "11.0", "12.0", "100.0"]
    assert rows[1][:4] == ["astroloc", "photo_pairs+weighted_clusters", "40", "20.0"]
    assert rows[2] == ["missing", "(not found)"]
