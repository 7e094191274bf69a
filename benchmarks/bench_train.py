"""Seconds per training iteration on this machine (CPU, fp32): augmentation + forward + loss +
backward + Adam step (earthloc.train.train_step), on batches decoded beforehand so the figure
is the compute a step needs (the input pipeline runs in parallel workers; bench_input.py).

    python benchmarks/bench_train.py                     # the small config of params.yaml
    python benchmarks/bench_train.py --paper --regions-per-batch 8   # ResNet-50, 320 px

The paper config is upstream's (ResNet-50 to layer3, MixVPR 4096-D, 800-px loads, 320-px
views) except B: upstream's 96 regions (384 views) does not fit a CPU benchmark, so B is
given on the command line and printed. Images are random uint8 unless --tiles gives a store."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from earthloc.augment import AugmentConfig, YearwiseAugment
from earthloc.loss import LossConfig, NeutralAwareMSLoss
from earthloc.model import ModelConfig, build_model, parameter_counts
from earthloc.train import Configs, train_step
from pipeline.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--paper", action="store_true", help="ResNet-50, 320 px views of 800 px loads, 4096-D")
    ap.add_argument("--regions-per-batch", type=int, default=None, help="B (default: train.regions_per_batch)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfgs = Configs.from_params(load_params(args.params))
    if args.paper:
        mcfg, load = ModelConfig(), 800
        acfg, lcfg = AugmentConfig(out_size=mcfg.image_size), LossConfig()
    else:
        mcfg, load, acfg, lcfg = cfgs.model, cfgs.train.load_size, cfgs.augment, cfgs.loss
    b = args.regions_per_batch or cfgs.train.regions_per_batch
    model = build_model(mcfg, load_weights=False).train()
    total, trainable = parameter_counts(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    aug, loss_fn = YearwiseAugment(acfg), NeutralAwareMSLoss.from_config(lcfg)
    images = torch.randint(0, 256, (b, 4, 3, load, load), dtype=torch.uint8)
    labels = torch.arange(b).repeat_interleave(4)
    neutral = torch.eye(b, dtype=torch.bool)
    times, cpu = [], []
    for i in range(args.iterations + 1):  # the first is warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        out = train_step(model, aug, loss_fn, opt, images, labels, neutral, torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t, c = float(np.median(times[1:])), float(np.median(cpu[1:]))
    # CPU seconds (all threads) tell the cost on a shared machine, where wall time depends on the neighbours.
    model.eval()
    with torch.no_grad():
        x = torch.randn(32, 3, mcfg.image_size, mcfg.image_size)
        model(x)
        c0 = time.process_time()
        model(x)
        fwd = (time.process_time() - c0) / 32
    name = "paper" if args.paper else "small (params.yaml)"
    print(
        f"{name}: {mcfg.backbone}, {load}px -> {mcfg.image_size}px views, D={mcfg.descriptor_dim}, "
        f"{total / 1e6:.1f} M params ({trainable / 1e6:.1f} M trainable), B={b} regions x 4 = {4 * b} views: "
        f"{t:.2f} s/iteration wall, {c:.2f} CPU-s/iteration ({torch.get_num_threads()} threads; median of {args.iterations}; "
        f"loss {float(out.loss.detach()):.3f}); inference {1000 * fwd:.1f} CPU-ms per image"
    )


if __name__ == "__main__":
    main()
