"""How much of the trained model's lead over the baselines is the training run's luck?

Trains the default configuration (params.yaml) once per seed, each into its own scratch
directory, evaluates every model on one evaluation set (default `demo`), and prints one
row per seed: R@1/5/10/20 (uncollapsed, the paper's count) and the margin over random and
over the untrained network at R@10 with its 95 % bootstrap interval over queries
(`metrics.json` -> `margins`, docs/evaluation.md). The last rows are the mean and the
spread over seeds.

Usage (after `make repro`, from the repository root, `.venv` active):
    python benchmarks/seed_spread.py [--seeds 0 1 2] [--set demo] [--work DIR] [-S key=value ...]

`-S section.key=value` (YAML value) overrides params for every seed, e.g.
`-S augment.crop_fraction=0.5`. Each seed costs one `earthloc train` and one
`earthloc evaluate` (about 2.5 min on 2 CPU cores with the default params). The workspace
(models/, data/eval/, params.yaml) is not touched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from param_overrides import override  # benchmarks/param_overrides.py (this folder is on sys.path)

from pipeline.params import parse_yaml

N_SHOWN = (1, 5, 10, 20)


def run_seed(seed: int, params: dict[str, Any], eval_set: str, work: Path) -> dict[str, Any]:
    d = work / f"seed_{seed}"
    d.mkdir(parents=True, exist_ok=True)
    p = json.loads(json.dumps(params))
    p["train"]["seed"] = seed
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    t0 = time.monotonic()
    with open(d / "train.log", "w") as log:
        subprocess.run(
            ["earthloc", "train", "--params", str(d / "params.yaml"), "--tiles", "tiles",
             "--grid", "data/grid/regions.parquet", "--out", str(d / "model.pt"), "--checkpoints", str(d / "ckpt"),
             "--live-dir", str(d / "live")],
            check=True, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    t1 = time.monotonic()
    with open(d / "evaluate.log", "w") as log:
        subprocess.run(
            ["earthloc", "evaluate", eval_set, "--params", str(d / "params.yaml"), "--model", str(d / "model.pt"),
             "--out-dir", str(d / "eval")],
            check=True, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    metrics = json.loads((d / "eval" / "metrics.json").read_text())
    metrics["_seconds"] = {"train": round(t1 - t0, 1), "evaluate": round(time.monotonic() - t1, 1)}
    return metrics


def _cell(m: dict[str, Any]) -> str:
    return f"{m['diff']:+.1f} [{m['lo']:+.1f}, {m['hi']:+.1f}]"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", default="demo", help="evaluation set (data/evalsets/<set>)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="section.key=value")
    args = ap.parse_args(argv)

    if not Path("tiles").is_dir() or not Path("data/evalsets", args.set).is_dir():
        raise SystemExit("run `make repro` first: the tiles and the evaluation sets are needed")
    params = parse_yaml(Path(args.params).read_text())
    for a in args.overrides:
        override(params, a)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="seed_spread_"))
    print(f"seed spread on {args.set!r}, seeds {args.seeds}, overrides {args.overrides or 'none'}, work {work}",
          flush=True)  # fmt: skip

    head = ["seed"] + [f"R@{n}" for n in N_SHOWN] + ["R@10 - random", "R@10 - untrained", "train s"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    per_seed: list[dict[str, Any]] = []
    for seed in args.seeds:
        m = run_seed(seed, params, args.set, work)
        per_seed.append(m)
        model = m["methods"]["model"]
        cells = [str(seed)] + [f"{model[f'R@{n}']:.1f}" for n in N_SHOWN]
        cells += [_cell(m["margins"]["model-random"]["R@10"]) if "model-random" in m["margins"] else "-",
                  _cell(m["margins"]["model-untrained"]["R@10"]) if "model-untrained" in m["margins"] else "-",
                  f"{m['_seconds']['train']:.0f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)

    if len(per_seed) > 1:
        for label, fn in (("mean", statistics.mean), ("std", statistics.stdev)):
            cells = [label] + [f"{fn([m['methods']['model'][f'R@{n}'] for m in per_seed]):.1f}" for n in N_SHOWN]
            cells += [f"{fn([m['margins']['model-random']['R@10']['diff'] for m in per_seed]):.1f}"
                      if all("model-random" in m["margins"] for m in per_seed) else "-", "-", "-"]  # fmt: skip
            print("| " + " | ".join(cells) + " |")
    base = per_seed[0]["methods"]
    for name in ("random", "untrained", "nadir"):
        if name in base:
            print(f"{name}: " + " / ".join(f"R@{n} {base[name][f'R@{n}']:.1f}" for n in N_SHOWN))


if __name__ == "__main__":
    sys.exit(main())
