"""Does training learn? Seeds x recipes, each model against its own initialisation and every baseline.

For each recipe (the small EarthLoc variant of params.yaml, and AstroLoc: the same params
with `astroloc.losses` photo_pairs + weighted_clusters) and each seed, the train stage's
loop (`earthloc.trainer.train`) trains a model into a scratch folder, and the evaluate
stage (`pipeline.stages.evaluate.run_set`, with params.yaml's `evaluate` section) scores it on one
evaluation set with all of that section's baselines; the untrained baseline is the very
network the run started from (its checkpoint's init_seed). One table: per recipe and seed,
the model's R@1 and R@10 and its margin over every baseline, with the interval the
evaluate stage writes into metrics.json (`margins`), whichever resampling it uses.

    python benchmarks/learning.py --seeds 0 1 2 3 4 --set demo            # after `make repro`
    python benchmarks/learning.py --seeds 0 --recipes earthloc -S train.iterations=10   # a quick look

A recipe passes on a seed when every margin over `untrained` and over the non-learned
descriptor baselines (names given by --must-beat) has its lower bound above zero at R@1 and
R@10 (collapsed counts when metrics.json has margins for them). The workspace (models/,
data/eval/) is not touched; each run writes under --work, and a run finished there
(`learning.json`) is reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from param_overrides import override  # benchmarks/param_overrides.py (this folder is on sys.path)

from pipeline.io import write_json
from pipeline.params import load_params

RECIPES: dict[str, dict[str, bool]] = {
    "earthloc": {"earthloc_ms": True, "photo_pairs": False, "weighted_clusters": False},
    "astroloc": {"earthloc_ms": False, "photo_pairs": True, "weighted_clusters": True},
}
SHOWN = (1, 10)


def run_one(params: dict[str, Any], recipe: str, seed: int, eval_set: str, work: Path) -> dict[str, Any]:
    """Train one model and evaluate it; the evaluate stage's metrics.json, plus timings."""
    from earthloc.trainer import TrainPaths, train
    from pipeline.config import evaluate_config, training_config
    from pipeline.stages.evaluate import run_set

    d = work / f"{recipe}_seed{seed}"
    done = d / "learning.json"
    if done.is_file():  # a finished run of an earlier invocation with the same --work
        return dict(json.loads(done.read_text()))
    p = json.loads(json.dumps(params))
    p["train"]["seed"] = seed
    p.setdefault("astroloc", {})["losses"] = dict(RECIPES[recipe])
    t0 = time.monotonic()
    paths = TrainPaths(Path("tiles"), Path("data/grid/regions.parquet"), d / "model.pt", d / "ckpt", d / "live")
    summary = train(training_config(p), paths)
    t1 = time.monotonic()
    metrics = run_set(eval_set, evaluate_config(p), d / "model.pt", d / "eval")
    metrics["_run"] = {"train_s": round(t1 - t0, 1), "evaluate_s": round(time.monotonic() - t1, 1),
                       "best_iteration": summary.best_iteration}  # fmt: skip
    write_json(done, metrics)
    return metrics


def uses_collapsed(m: dict[str, Any]) -> bool:
    """Collapsed counts when metrics.json has margins for them, so recalls and margins count alike."""
    return any("collapsed" in by_n for by_n in (m.get("margins") or {}).values())


def margin(m: dict[str, Any], baseline: str, n: int) -> dict[str, float] | None:
    by_n = (m.get("margins") or {}).get(f"model-{baseline}") or {}
    return (by_n.get("collapsed") or {}).get(f"R@{n}") if uses_collapsed(m) else by_n.get(f"R@{n}")


def margin_cells(m: dict[str, Any], baseline: str) -> list[str]:
    cells = []
    for n in SHOWN:
        v = margin(m, baseline, n)
        cells.append("-" if not v else f"{v['diff']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}]")
    return cells


def passes(m: dict[str, Any], must_beat: list[str]) -> bool:
    """Every margin over the named baselines above zero, lower bound included, at R@1 and R@10."""
    for baseline in must_beat:
        for n in SHOWN:
            v = margin(m, baseline, n)
            if not v or not v["lo"] > 0:
                return False
    return True


def recall(m: dict[str, Any], method: str, n: int) -> str:
    scores = m["methods"][method]
    v = (scores.get("collapsed") or {}).get(f"R@{n}") if uses_collapsed(m) else scores.get(f"R@{n}")
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--set", default="demo", help="evaluation set (data/evalsets/<set>)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--must-beat",
        nargs="+",
        default=["untrained"],
        help="baselines whose margin must stay above zero (add the non-learned descriptor's name)",
    )
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], metavar="section.key=value")
    args = ap.parse_args(argv)

    if not Path("tiles").is_dir() or not Path("data/evalsets", args.set).is_dir():
        print("learning: run `make repro` first (tiles and data/evalsets/<set> are needed)", file=sys.stderr)
        return 1
    params = load_params(args.params)
    for a in args.overrides:
        override(params, a)
    work = args.work or Path(tempfile.mkdtemp(prefix="learning_"))
    t0 = time.monotonic()
    results: list[tuple[str, int, dict[str, Any]]] = []
    for recipe in args.recipes:
        for seed in args.seeds:
            results.append((recipe, seed, run_one(params, recipe, seed, args.set, work)))

    baselines = [b for b in results[0][2]["methods"] if b != "model"]
    head = ["recipe", "seed", "R@1", "R@10", "kept iteration"]
    for b in baselines:
        head += [f"R@1 - {b}", f"R@10 - {b}"]
    head.append("pass")
    counting = "collapsed" if uses_collapsed(results[0][2]) else "uncollapsed"
    print(f"\nlearning on {args.set!r} ({counting} recall; margins with the evaluate stage's intervals), "
          f"overrides {args.overrides or 'none'}, {time.monotonic() - t0:.0f} s, work {work}\n")  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for recipe, seed, m in results:
        cells = [recipe, str(seed), recall(m, "model", 1), recall(m, "model", 10), str(m["_run"]["best_iteration"])]
        for b in baselines:
            cells += margin_cells(m, b)
        cells.append("yes" if passes(m, args.must_beat) else "no")
        print("| " + " | ".join(cells) + " |")
    print("\nbaselines (first run's; untrained differs per seed):")
    for b in baselines:
        print(f"- {b}: " + " / ".join(f"R@{n} {recall(results[0][2], b, n)}" for n in SHOWN))
    print("\nover seeds (mean ± sd):")
    for recipe in args.recipes:
        runs = [m for r, _, m in results if r == recipe]
        for method, label in (("model", "trained"), ("untrained", "its own initialisation")):
            print(f"- {recipe}, {label}: " + ", ".join(f"R@{n} {spread(runs, method, n)}" for n in SHOWN))
        print(f"- {recipe}: {sum(passes(m, args.must_beat) for m in runs)} of {len(runs)} seeds pass")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\n{time.monotonic() - t0:.0f} s wall, {cpu.ru_utime + cpu.ru_stime:.0f} CPU-s in this process "
          f"(runs reused from --work count as 0)")  # fmt: skip
    return 0


def spread(runs: list[dict[str, Any]], method: str, n: int) -> str:
    values = [float(v) for m in runs if (v := recall(m, method, n)) != "-"]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


if __name__ == "__main__":
    sys.exit(main())
