"""Training throughput of a params file on this machine: the train stage's own step and loader.

    python benchmarks/train_throughput.py --params params.yaml --minutes 1 --device cpu
    python benchmarks/train_throughput.py --params params_paper.yaml --minutes 5 --device cuda
    python benchmarks/train_throughput.py --params params_paper.yaml --max-iterations 2 --regions-per-batch 8

Each iteration is `earthloc.trainer.train_step` (year-wise augmentation on the device, forward
under bf16 autocast on CUDA, the params' objectives on the global batch, backward, Adam)
fed by `earthloc.data.loader` (JPEG decoding in `train.num_workers` processes), exactly as
the train stage runs it. Without --tiles the regions are generated: random-texture JPEGs of
--image-px pixels (the tile store's 1024 by default), written to a temporary folder, so the
benchmark runs anywhere. With --tiles (and --grid) it reads the real store.

Printed: iterations/s, images/s (region views per second), the share of wall time spent
waiting for the loader, CPU seconds per step (on a shared machine wall time depends on the
neighbours, CPU time much less), and peak memory: the accelerator's peak allocation on CUDA,
the process's peak resident set on CPU (loader processes not included). The first
--warmup iterations are run but not counted (allocator and kernel warm-up). Figures from
other machines differ; docs/training.md records the ones measured.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from earthloc.augment import YearwiseAugment
from earthloc.batches import NeutralPairs, batch_regions, neutral_pairs, random_clusters, rank_share
from earthloc.data import RegionItem, RegionYearsDataset, loader, training_regions
from earthloc.distributed import Dist
from earthloc.images import load_rgb
from earthloc.model import build_model
from earthloc.objectives import RegionMS
from earthloc.seeds import derived_seed, seed_everything
from earthloc.trainer import BatchPlan, StepTools, train_step
from pipeline import config
from pipeline.schema import STREAM_LOADER


class GeneratedRegions(Dataset[RegionItem]):
    """N regions x Y years of random-texture JPEGs on disk, decoded like the tile store's."""

    def __init__(self, root: Path, n_regions: int, n_years: int, image_px: int, load_size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # One noise field, shifted per image: texture (JPEG sizes and decode times like satellite
        # tiles', not like flat colour) without drawing millions of numbers per image.
        noise = rng.integers(-24, 25, (image_px, image_px, 3), dtype=np.int16)
        self.paths: list[list[Path]] = []
        for r in range(n_regions):
            base = np.kron(
                rng.integers(0, 256, (16, 16, 3), dtype=np.int16), np.ones((-(-image_px // 16),) * 2 + (1,), np.int16)
            )
            base = base[:image_px, :image_px]
            row = []
            for y in range(n_years):
                shift = tuple(int(v) for v in rng.integers(0, image_px, 2))
                img = np.clip(base + np.roll(noise, shift, axis=(0, 1)), 0, 255).astype(np.uint8)
                path = root / f"r{r:04d}_y{y}.jpg"
                Image.fromarray(img).save(path, quality=90)
                row.append(path)
            self.paths.append(row)
        self.load_size = load_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> RegionItem:
        arr = np.stack([load_rgb(p, self.load_size) for p in self.paths[i]]).transpose(0, 3, 1, 2)
        return RegionItem(torch.from_numpy(np.ascontiguousarray(arr)), int(i))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--minutes", type=float, default=1.0, help="measure for this long (after warm-up)")
    ap.add_argument("--max-iterations", type=int, default=None, help="stop after this many measured iterations")
    ap.add_argument("--warmup", type=int, default=1, help="iterations run first and not counted")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument(
        "--regions-per-batch", type=int, default=None, help="override train.regions_per_batch (say so when quoting)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: train.threads)")
    ap.add_argument("--tiles", type=Path, default=None, help="a tile store; default: generated images")
    ap.add_argument("--grid", type=Path, default=Path("data/grid/regions.parquet"))
    ap.add_argument("--image-px", type=int, default=1024, help="side of the generated JPEGs")
    args = ap.parse_args(argv)

    configs = config.training_config(config.load(args.params))
    cfg, mcfg = configs.train, configs.model
    if args.regions_per_batch:
        cfg = replace(cfg, regions_per_batch=args.regions_per_batch)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_throughput: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    threads = args.threads or cfg.threads
    if threads:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    n_years = len(cfg.years)

    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        if args.tiles is not None:
            regions = training_regions(args.tiles, args.grid, cfg.years)
            dataset: Dataset[RegionItem] = RegionYearsDataset(regions, cfg.load_size)
            neutral = neutral_pairs(regions.footprints)
            n_regions, source = len(regions), f"tile store {args.tiles}"
        else:
            n_regions = max(2 * cfg.regions_per_batch, 32)
            t0 = time.monotonic()
            dataset = GeneratedRegions(Path(tmp), n_regions, n_years, args.image_px, cfg.load_size, cfg.seed)
            neutral = NeutralPairs(n_regions, np.arange(n_regions, dtype=np.int64) * (n_regions + 1))  # no overlaps
            source = (
                f"{n_regions} generated regions of {args.image_px}-px JPEGs ({time.monotonic() - t0:.0f} s to write)"
            )
        model = build_model(mcfg).to(device).train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        objective = RegionMS(configs.loss)
        tools = StepTools(model, optimizer, YearwiseAugment(configs.augment), (objective,), neutral, n_years, cfg.seed,
                          device, Dist())  # fmt: skip
        clusters = random_clusters(n_regions, min(cfg.n_clusters, max(1, n_regions // cfg.regions_per_batch)), cfg.seed)
        budget = args.max_iterations if args.max_iterations is not None else 100_000
        n_planned = args.warmup + budget
        plans = [BatchPlan(i, batch_regions(clusters, seed=cfg.seed, iteration=i, batch_size=cfg.regions_per_batch),
                           np.zeros(0, dtype=np.int64)) for i in range(n_planned)]  # fmt: skip
        share = rank_share(plans[0].regions, 0, 1)
        dl = loader(dataset, [p.regions[share].tolist() for p in plans], num_workers=cfg.num_workers,
                    seed=derived_seed(cfg.seed, STREAM_LOADER, 0) % 2**63, prefetch_factor=cfg.prefetch_factor)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        it = iter(dl)
        waited = stepped = cpu = 0.0
        measured = 0
        t_start = None
        deadline = None
        for i, plan in enumerate(plans):
            t0 = time.perf_counter()
            batch = next(it)
            t1, c1 = time.perf_counter(), time.process_time()
            out = train_step(tools, plan, batch.images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            if i < args.warmup:
                print(f"train_throughput: warm-up iteration {i}: {t2 - t0:.1f} s, loss {out.loss:.3f}", flush=True)
                continue
            if t_start is None:
                t_start, deadline = t0, t0 + 60.0 * args.minutes
            waited += t1 - t0
            stepped += t2 - t1
            cpu += time.process_time() - c1
            measured += 1
            if t2 >= deadline or measured >= budget:
                break
        del it, dl
        wall = waited + stepped
        if device.type == "cuda":
            peak = f"peak accelerator memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        else:
            peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (main process)"
        views = cfg.regions_per_batch * n_years
        print(
            f"train_throughput: {args.params}: {mcfg.backbone}, {cfg.load_size} px -> {mcfg.image_size} px, "
            f"D={mcfg.descriptor_dim}, B={cfg.regions_per_batch} regions x {n_years} years = {views} images/iteration, "
            f"{cfg.num_workers} loader processes, device {device}"
            + (" (bf16 autocast)" if device.type == "cuda" else f" ({torch.get_num_threads()} threads, fp32)")
            + f"; data: {source}",
            flush=True,
        )  # fmt: skip
        if not measured:
            print("train_throughput: no iteration measured (raise --minutes or --max-iterations)")
            return 1
        print(
            f"train_throughput: {measured} iterations in {wall:.1f} s: {measured / wall:.3f} iterations/s, "
            f"{measured * views / wall:.1f} images/s, loader wait {100 * waited / wall:.1f} % of wall time, {peak}; "
            f"{cpu / measured:.1f} CPU-s per step (main process, all its threads: the cost on a shared machine)",
            flush=True,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
