"""Model benchmark on CPU: seconds per training iteration (forward + neutral-aware loss +
backward + Adam step) of an R-region x Y-year batch, and of the year-wise augmentation
that precedes it, for the small config (params.yaml `model`) and the paper config
(ModelConfig() defaults: ResNet-50, 320 px, 4096-D).

    .venv/bin/python benchmarks/bench_model.py [--configs small paper] [--regions 4] [--years 4]
        [--iters 5] [--threads 2] [--load-size 160] [--backbone resnet18 --image-size 128 --dim 512]

--backbone/--image-size/--dim override the small config (to compare candidates).
The first iteration is a warm-up and is not counted; the figure is the median. On a machine
shared with other jobs, --threads 1 is much faster than 2 (OpenMP threads wait at barriers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from earthloc.augment import AugmentConfig, YearwiseAugment  # noqa: E402
from earthloc.loss import NeutralAwareMSLoss  # noqa: E402
from earthloc.model import ModelConfig, build_model, parameter_counts  # noqa: E402
from pipeline.params import load_params, section  # noqa: E402


def bench(cfg: ModelConfig, regions: int, years: int, iters: int, load_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = NeutralAwareMSLoss()
    augment = YearwiseAugment(AugmentConfig(out_size=cfg.image_size))
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(regions, years, 3, load_size, load_size)
    labels = torch.arange(regions).repeat_interleave(years)
    neutral = torch.eye(regions, dtype=torch.bool)
    aug_times, step_times = [], []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        views = augment(raw, gen)
        t1 = time.perf_counter()
        out = loss_fn(model(views), labels, neutral)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i:  # the first iteration allocates and warms up
            aug_times.append(t1 - t0)
            step_times.append(t2 - t1)
    total, trainable = parameter_counts(model)
    return {
        "params": total,
        "trainable": trainable,
        "augment_s": statistics.median(aug_times),
        "step_s": statistics.median(step_times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["small", "paper"], choices=["small", "paper"])
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--years", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--load-size", type=int, default=None, help="input side before augmentation (default: small 160, paper 800)"
    )
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.regions} regions x {args.years} years, "
        f"load average {load} on {os.cpu_count()} CPUs"
    )
    for name in args.configs:
        if name == "paper":
            cfg, load = ModelConfig(), args.load_size or 800
        else:
            cfg = ModelConfig.from_section(section(load_params(args.params), "model"))
            overrides = {
                k: v
                for k, v in (("backbone", args.backbone), ("image_size", args.image_size), ("descriptor_dim", args.dim))
                if v is not None
            }
            cfg, load = replace(cfg, **overrides), args.load_size or 160
        r = bench(cfg, args.regions, args.years, args.iters, load)
        print(
            f"{name:5s} {cfg.backbone} {cfg.image_size}px {cfg.descriptor_dim}-D "
            f"({r['params']:,} params, {r['trainable']:,} trainable), input {load}px: "
            f"fwd+loss+bwd+step {r['step_s']:.3f} s/it, augmentation {r['augment_s']:.3f} s/it, "
            f"{args.regions * args.years / r['step_s']:.1f} img/s"
        )


if __name__ == "__main__":
    main()
