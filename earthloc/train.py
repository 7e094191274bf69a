"""The train stage: EarthLoc's training loop (paper Sec. 4-5, docs/upstream.md §4-§8), resumable and DDP-ready.

One iteration: B regions drawn from one cluster (`earthloc.batches`), their four year images
decoded in DataLoader workers (`earthloc.data`), year-wise augmentation on the device
(`earthloc.augment`), the model, the neutral-aware multi-similarity loss over all B*4 views
with the neutral matrix of true footprint overlap, one Adam step.

Reproducibility and resume. Every random draw is a pure function of (seed, iteration):
the batch's regions (`batch_regions`), the augmentation parameters (a torch.Generator
seeded from (seed, iteration)), and the random clusters. So the data order does not live
in any iterator; a checkpoint (model, optimizer, cluster assignment, iteration, best
metric, early-stopping counter, dvclive step, and the python/numpy/torch RNG states for
anything else) is enough for a killed run to end with the same weights as an
uninterrupted one. Checkpoints go to `<checkpoints>/last.pt` atomically (DVC `persist`);
a checkpoint made with different params (fingerprint) is not resumed. Changing only
`train.iterations` (or worker counts) resumes, so a run can be extended.

DistributedDataParallel (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK): gloo on CPU, nccl on
CUDA. Every rank computes the same global batch (pure function), loads and embeds its
contiguous share of the B regions, and the descriptors are all-gathered with autograd
(`torch.distributed.nn.functional.all_gather`), so the loss, its labels (region position
in the global batch) and the neutral matrix are the global ones on every rank: the loss
equals the single-process loss. The gather's backward sums the B-wide gradient from all
ranks (W x) and DDP averages over W, which gives exactly the single-process gradient.
BatchNorm layers that use batch statistics see only the rank's share; on CUDA they are
converted to SyncBatchNorm (`train.sync_batchnorm`), on CPU torch has no SyncBatchNorm,
so CPU DDP matches single-process exactly only when no BN layer uses batch statistics
(e.g. every backbone stage frozen with `model.freeze_bn_stats`). Only rank 0 validates,
logs and writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from earthloc.augment import AugmentConfig, YearwiseAugment, normalize, to_float
from earthloc.batches import ClusterAssignment, batch_regions, kmeans_clusters, neutral_pairs, random_clusters, rank_share
from earthloc.data import YEARS, RegionYearsDataset, TrainingRegions, loader, one_line, training_regions
from earthloc.loss import LossConfig, LossOutput, NeutralAwareMSLoss
from earthloc.model import ModelConfig, build_model, save_checkpoint, unwrap
from pipeline.errors import ConfigError, InputError
from pipeline.io import atomic_path, write_json
from pipeline.params import build_config

log = logging.getLogger(__name__)

STREAM_AUGMENT = 3  # seed stream of the augmentation generator (batches.py uses 1 and 2)
CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
# Keys that change how fast or how far a run goes, not what a given iteration computes:
# a checkpoint stays resumable when only these change.
OPERATIONAL_KEYS = frozenset(
    {"iterations", "num_workers", "prefetch_factor", "checkpoint_every", "val_batch_size", "val_num_workers", "threads",
     "embed_batch_size", "log_every"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """The `train` section of params.yaml. Paper/upstream values in comments."""

    regions_per_batch: int = 16  # B regions x 4 years per batch (upstream 96)
    iterations: int = 100  # optimiser steps (upstream 500 per epoch x 20 epochs)
    lr: float = 1e-4  # Adam, no weight decay, no schedule (upstream)
    years: tuple[int, ...] = YEARS
    load_size: int = 160  # image side after decoding, before augmentation (upstream 800)
    seed: int = 0
    # clusters
    recluster_every: int = 50  # iterations between k-means reclusterings; 0 = random clusters only (upstream 2000)
    n_clusters: int = 8  # upstream 50
    kmeans_niter: int = 20  # upstream 100
    kmeans_max_points_per_centroid: int = 256  # faiss default, as upstream
    cluster_choice: str = "uniform"  # "uniform" (upstream) or "size": how a batch's cluster is picked
    small_cluster: str = "replace"  # "replace" (upstream: draw with replacement) or "merge" (into the nearest big cluster)
    # input pipeline
    num_workers: int = 2
    prefetch_factor: int = 2
    embed_batch_size: int = 64  # images per forward when embedding for the clustering
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    # checkpoints, validation, logging
    checkpoint_every: int = 25
    val_every: int = 50  # 0 = no validation (the last weights are the model)
    val_set: str = "data/evalsets/demo_val"
    val_batch_size: int = 32
    val_num_workers: int = 1
    patience: int = 0  # validations without a better R@5 before stopping; 0 = never stop early (upstream 10 epochs)
    sync_batchnorm: bool = True  # SyncBatchNorm under CUDA DDP
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    log_every: int = 1  # dvclive step every this many iterations

    def __post_init__(self) -> None:
        object.__setattr__(self, "years", tuple(int(y) for y in self.years))
        for name in ("regions_per_batch", "iterations", "load_size", "num_workers", "prefetch_factor", "embed_batch_size",
                     "checkpoint_every", "val_every", "recluster_every", "patience", "n_clusters", "kmeans_niter",
                     "log_every", "val_batch_size", "val_num_workers"):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"train.{name} must be a non-negative integer, got {v!r}")
        if self.regions_per_batch < 2:
            raise ConfigError("train.regions_per_batch must be >= 2 (a batch needs negatives)")
        if self.n_clusters < 1 or self.checkpoint_every < 1 or self.log_every < 1 or self.embed_batch_size < 1:
            raise ConfigError("train.n_clusters, checkpoint_every, log_every and embed_batch_size must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.cluster_choice not in ("uniform", "size"):
            raise ConfigError(f"train.cluster_choice must be uniform or size, got {self.cluster_choice!r}")
        if self.small_cluster not in ("replace", "merge"):
            raise ConfigError(f"train.small_cluster must be replace or merge, got {self.small_cluster!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if 2021 not in self.years:
            raise ConfigError("train.years must include 2021 (the clustering year)")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> TrainConfig:
        return build_config(cls, sec, "train")


@dataclass(frozen=True)
class TrainPaths:
    tiles_root: Path = Path("tiles")
    regions: Path = Path("data/grid/regions.parquet")
    model_out: Path = Path("models/earthloc.pt")
    checkpoints: Path = Path("models/train/checkpoints")
    live_dir: Path = Path("models/train/dvclive")


@dataclass(frozen=True)
class Configs:
    train: TrainConfig
    model: ModelConfig
    augment: AugmentConfig
    loss: LossConfig

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Configs:
        def sec(name: str) -> Mapping[str, Any]:
            value = params.get(name, {})
            if not isinstance(value, Mapping):
                raise ConfigError(f"params: section {name!r} is not a mapping")
            return value

        model = ModelConfig.from_section(sec("model"))
        return cls(
            TrainConfig.from_section(sec("train")), model, AugmentConfig.from_section(sec("augment"), model.image_size),
            LossConfig.from_section(sec("loss")),
        )  # fmt: skip

    def fingerprint(self, region_ids: Sequence[str]) -> str:
        """What a checkpoint must agree with to be resumed: every non-operational setting and the training regions."""
        train = {k: v for k, v in asdict(self.train).items() if k not in OPERATIONAL_KEYS}
        blob = json.dumps(
            {"train": train, "model": self.model.to_dict(), "augment": asdict(self.augment), "loss": asdict(self.loss),
             "regions": hashlib.sha256("\n".join(region_ids).encode()).hexdigest()},
            sort_keys=True, default=list,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TrainState:
    """Everything besides model and optimizer that a resumed run needs."""

    iteration: int
    clusters: ClusterAssignment
    best_r5: float = -math.inf
    best_iteration: int = -1
    bad_validations: int = 0
    live_step: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)  # validation results


@dataclass(frozen=True)
class TrainSummary:
    iterations_done: int
    resumed_from: int | None
    best_r5: float | None
    best_iteration: int
    stopped_early: bool
    seconds: float
    seconds_per_iteration: float
    n_regions: int
    n_neutral_pairs: int
    world_size: int
    final_loss: float | None


# -- seeds and RNG state -------------------------------------------------------------------------
def derived_seed(seed: int, stream: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, stream, iteration]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in types torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {"bit_generator": n["bit_generator"], "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
         "has_gauss": n["has_gauss"], "gauss": n["gauss"]}
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- distributed ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun (or a test) describes in the environment; no-op alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local)


def _device(cfg: TrainConfig, d: Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


# -- checkpoints ---------------------------------------------------------------------------------
def save_train_checkpoint(path: Path, model: torch.nn.Module, cfg: ModelConfig, optimizer: torch.optim.Optimizer,
                          state: TrainState, fingerprint: str) -> None:  # fmt: skip
    save_checkpoint(
        path, model, cfg,
        optimizer=optimizer.state_dict(),
        iteration=state.iteration,
        clusters={"labels": torch.from_numpy(state.clusters.labels), "n_clusters": state.clusters.n_clusters,
                  "source": state.clusters.source, "iteration": state.clusters.iteration},
        best_r5=state.best_r5, best_iteration=state.best_iteration, bad_validations=state.bad_validations,
        live_step=state.live_step, stopped_early=state.stopped_early, history=state.history,
        rng=rng_state(), fingerprint=fingerprint,
    )  # fmt: skip
    write_json(path.with_suffix(".json"), {"iteration": state.iteration, "fingerprint": fingerprint})


def load_train_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str,
                          device: torch.device) -> TrainState | None:  # fmt: skip
    """Restore model, optimizer and RNG states from `path`; None when absent or made with other params."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated file cannot happen (atomic writes) but a foreign one can
        raise InputError(f"{path}: unreadable training checkpoint ({exc}); delete it to start afresh") from exc
    if payload.get("fingerprint") != fingerprint:
        log.warning("train: %s was made with other params or regions; starting afresh", path)
        return None
    unwrap(model).load_state_dict(payload["state_dict"], strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    c = payload["clusters"]
    clusters = ClusterAssignment(c["labels"].cpu().numpy().astype(np.int64), int(c["n_clusters"]), str(c["source"]), int(c["iteration"]))
    return TrainState(
        iteration=int(payload["iteration"]), clusters=clusters, best_r5=float(payload["best_r5"]),
        best_iteration=int(payload["best_iteration"]), bad_validations=int(payload["bad_validations"]),
        live_step=int(payload["live_step"]), stopped_early=bool(payload["stopped_early"]),
        history=list(payload["history"]),
    )  # fmt: skip


# -- clustering ----------------------------------------------------------------------------------
@torch.no_grad()
def embed_year(model: torch.nn.Module, regions: TrainingRegions, year: int, *, image_size: int, batch_size: int,
               num_workers: int, device: torch.device, d: Dist, seed: int) -> np.ndarray:  # fmt: skip
    """(N, D) float32 descriptors of every training region's `year` image (eval mode, no TTA).

    Under DDP each rank embeds a contiguous share and the shares are all-gathered."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    ds = RegionYearsDataset(regions, image_size, years=[year])
    shares = np.array_split(np.arange(len(regions)), d.world_size)
    mine = shares[d.rank]
    batches = [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
    out = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        for batch in loader(ds, batches, num_workers=num_workers, seed=seed):
            x = normalize(to_float(batch.images[:, 0].to(device, non_blocking=True)))
            with autocast:
                out.append(net(x).float())
    except InputError as exc:
        raise InputError(one_line(exc)) from exc
    finally:
        net.train(was_training)
    dim = unwrap(model).cfg.descriptor_dim
    local = torch.cat(out) if out else torch.zeros(0, dim, device=device)
    if d.enabled:
        longest = max(len(s) for s in shares)
        padded = torch.zeros(longest, dim, device=device)
        padded[: len(local)] = local
        gathered = [torch.zeros_like(padded) for _ in range(d.world_size)]
        dist.all_gather(gathered, padded)
        local = torch.cat([g[: len(s)] for g, s in zip(gathered, shares)])
    return local.cpu().numpy().astype(np.float32)


def recluster(model: torch.nn.Module, regions: TrainingRegions, cfg: TrainConfig, mcfg: ModelConfig, iteration: int,
              device: torch.device, d: Dist) -> ClusterAssignment:  # fmt: skip
    desc = embed_year(model, regions, 2021, image_size=mcfg.image_size, batch_size=cfg.embed_batch_size,
                      num_workers=cfg.num_workers, device=device, d=d, seed=cfg.seed)  # fmt: skip
    labels = torch.zeros(len(regions), dtype=torch.int64)
    n_clusters = torch.zeros(1, dtype=torch.int64)
    if d.is_main:
        ca = kmeans_clusters(
            desc, cfg.n_clusters, seed=derived_seed(cfg.seed, 4, iteration) % 2**31, niter=cfg.kmeans_niter,
            max_points_per_centroid=cfg.kmeans_max_points_per_centroid,
            min_cluster_size=cfg.regions_per_batch if cfg.small_cluster == "merge" else 0, iteration=iteration,
        )  # fmt: skip
        labels, n_clusters = torch.from_numpy(ca.labels), torch.tensor([ca.n_clusters])
    if d.enabled:  # one assignment for all ranks: rank 0's
        dist.broadcast(labels, 0)
        dist.broadcast(n_clusters, 0)
    return ClusterAssignment(labels.numpy().astype(np.int64), int(n_clusters[0]), "kmeans", iteration)


# -- validation ----------------------------------------------------------------------------------
def validate(model: torch.nn.Module, cfg: TrainConfig, mcfg: ModelConfig, tiles_root: Path, device: torch.device) -> dict[int, float]:
    from earthloc.retrieval import evaluate_set

    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        res = evaluate_set(
            net, cfg.val_set, tiles_root, image_size=mcfg.image_size, batch_size=cfg.val_batch_size,
            num_workers=cfg.val_num_workers, device=device, bf16=device.type == "cuda",
        )  # fmt: skip
    finally:
        net.train(was_training)
    return {int(k): float(v) for k, v in res.recalls.items()}


# -- dvclive ---------------------------------------------------------------------------------------
def _truncate_live(live_dir: Path, step: int) -> None:
    """Drop dvclive rows logged after the checkpoint we resume from (a killed run logged them)."""
    plots = live_dir / "plots" / "metrics"
    if not plots.is_dir():
        return
    for tsv in plots.rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        col = header.split("\t").index("step") if "step" in header.split("\t") else None
        if col is None:
            continue
        keep = [r for r in rows if int(r.split("\t")[col]) < step]
        with atomic_path(tsv) as tmp:
            tmp.write_text("\n".join([header, *keep]) + "\n", encoding="utf-8")


def _open_live(live_dir: Path, resume_step: int | None) -> Any:
    from dvclive import Live

    if resume_step is None:
        live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None)
    else:
        _truncate_live(live_dir, resume_step)
        live = Live(dir=str(live_dir), resume=True, save_dvc_exp=False, dvcyaml=None)
        live.step = resume_step
    return live


# -- the loop --------------------------------------------------------------------------------------
def train_step(net: torch.nn.Module, augment: YearwiseAugment, loss_fn: NeutralAwareMSLoss,
               optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor, neutral: torch.Tensor,
               generator: torch.Generator, *, distributed: bool = False) -> LossOutput:  # fmt: skip
    """One optimiser step on a (r, Y, 3, H, W) uint8 batch (this rank's share of the global batch).

    `labels` (B*Y,) and `neutral` (B, B) are the global batch's; under DDP the descriptors of
    all ranks are gathered (with autograd) before the loss, so every rank computes the global loss."""
    views = augment(images, generator)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        emb = net(views)
    if distributed:
        from torch.distributed.nn.functional import all_gather

        emb = torch.cat(all_gather(emb), dim=0)
    out = loss_fn(emb, labels, neutral)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


def _sync_flag(flag: bool, d: Dist) -> bool:
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, 0)
    return bool(t.item())


def train(configs: Configs, paths: TrainPaths = TrainPaths()) -> TrainSummary:
    """Train (or resume) and write the best model to `paths.model_out`. Returns a summary."""
    cfg, mcfg = configs.train, configs.model
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    d = init_distributed("cuda" if wants_cuda else "cpu")
    device = _device(cfg, d)
    if cfg.regions_per_batch % d.world_size:
        raise ConfigError(f"train.regions_per_batch {cfg.regions_per_batch} must be a multiple of WORLD_SIZE {d.world_size}")
    if cfg.val_every and not Path(cfg.val_set).is_dir():
        raise InputError(f"{cfg.val_set}: validation set not found (build it with the evalset stage, or set train.val_every: 0)")
    t0 = time.monotonic()
    seed_everything(cfg.seed)

    regions = training_regions(paths.tiles_root, paths.regions, cfg.years)
    neutral = neutral_pairs(regions.footprints)
    fingerprint = configs.fingerprint(regions.region_ids.tolist())
    n_years = len(cfg.years)

    # The initial weights are those of torch.manual_seed(cfg.seed) + build_model (nothing above
    # draws from torch's generator): the checkpoints record init_seed, and the evaluate stage's
    # untrained baseline rebuilds exactly this network (tests/test_train.py checks it).
    model = build_model(mcfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    ckpt_path = paths.checkpoints / CHECKPOINT_NAME
    state = load_train_checkpoint(ckpt_path, model, optimizer, fingerprint, device)
    resumed_from = state.iteration if state is not None else None
    if state is None:
        state = TrainState(0, random_clusters(len(regions), cfg.n_clusters, cfg.seed))
        if d.is_main:  # a best model of an earlier run with other params must not be taken for this run's
            (paths.checkpoints / BEST_NAME).unlink(missing_ok=True)
    if d.is_main:
        print(
            f"train: {len(regions)} regions x {n_years} years, {neutral.n_pairs} neutral pairs, world size {d.world_size}, "
            f"device {device}, " + (f"resuming at iteration {resumed_from}" if resumed_from is not None else "starting afresh"),
            flush=True,
        )

    net: torch.nn.Module = model
    if d.enabled:
        if device.type == "cuda" and cfg.sync_batchnorm:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    net.train()
    augment = YearwiseAugment(configs.augment)
    loss_fn = NeutralAwareMSLoss.from_config(configs.loss)
    dataset = RegionYearsDataset(regions, cfg.load_size)
    live = _open_live(paths.live_dir, state.live_step if resumed_from is not None else None) if d.is_main else None
    labels = torch.arange(cfg.regions_per_batch, device=device).repeat_interleave(n_years)
    done_before = state.iteration
    last_loss: float | None = None

    while state.iteration < cfg.iterations and not state.stopped_early:
        it0 = state.iteration
        if cfg.recluster_every and it0 > 0 and it0 % cfg.recluster_every == 0 and state.clusters.iteration != it0:
            state.clusters = recluster(net, regions, cfg, mcfg, it0, device, d)
            if d.is_main:
                sizes = state.clusters.sizes()
                print(f"train: iteration {it0}: reclustered into {state.clusters.n_clusters} clusters "
                      f"(sizes {sizes.min()}-{sizes.max()})", flush=True)  # fmt: skip
        seg_end = cfg.iterations
        if cfg.recluster_every:
            seg_end = min(seg_end, (it0 // cfg.recluster_every + 1) * cfg.recluster_every)
        schedule = [
            batch_regions(state.clusters, seed=cfg.seed, iteration=i, batch_size=cfg.regions_per_batch,
                          cluster_choice=cfg.cluster_choice)  # type: ignore[arg-type]
            for i in range(it0, seg_end)
        ]  # fmt: skip
        share = rank_share(schedule[0], d.rank, d.world_size)
        dl = loader(dataset, [b[share].tolist() for b in schedule], num_workers=cfg.num_workers,
                    seed=derived_seed(cfg.seed, 5, it0) % 2**63, prefetch_factor=cfg.prefetch_factor)  # fmt: skip
        try:
            for global_batch, batch in zip(schedule, dl):
                i = state.iteration
                gen = torch.Generator().manual_seed(derived_seed(cfg.seed, STREAM_AUGMENT, i))
                neutral_m = torch.from_numpy(neutral.matrix(global_batch)).to(device)
                out = train_step(net, augment.at_iteration(i), loss_fn, optimizer,
                                 batch.images.to(device, non_blocking=True), labels, neutral_m, gen,
                                 distributed=d.enabled)  # fmt: skip
                state.iteration = i + 1
                last_loss = float(out.loss.detach())
                if live is not None and (i % cfg.log_every == 0 or state.iteration == cfg.iterations):
                    live.log_metric("train/loss", last_loss)
                    live.log_metric("train/mined_pos", out.n_pos)
                    live.log_metric("train/mined_neg", out.n_neg)
                    live.log_metric("train/batch_acc", out.batch_acc)
                    live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
                    live.log_metric("train/iteration", state.iteration)
                if cfg.val_every and (state.iteration % cfg.val_every == 0 or state.iteration == cfg.iterations):
                    _validate_step(net, cfg, mcfg, paths, device, d, state, live)
                if live is not None and (i % cfg.log_every == 0 or state.iteration == cfg.iterations):
                    live.next_step()
                    state.live_step = live.step
                if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations or state.stopped_early:
                    if d.is_main:
                        save_train_checkpoint(ckpt_path, net, mcfg, optimizer, state, fingerprint)
                    if d.enabled:
                        dist.barrier()
                if state.stopped_early:
                    break
        except InputError as exc:  # re-raised from a loader worker with a traceback in the message
            raise InputError(one_line(exc)) from exc
        finally:
            del dl

    if d.is_main:
        _write_model(net, mcfg, paths, state, cfg)
        if live is not None:
            live.end()
    if d.enabled:
        dist.barrier()
    seconds = time.monotonic() - t0
    n_done = state.iteration - done_before
    summary = TrainSummary(
        iterations_done=state.iteration, resumed_from=resumed_from,
        best_r5=state.best_r5 if state.best_iteration >= 0 else None, best_iteration=state.best_iteration,
        stopped_early=state.stopped_early, seconds=round(seconds, 2),
        seconds_per_iteration=round(seconds / n_done, 3) if n_done else 0.0, n_regions=len(regions),
        n_neutral_pairs=neutral.n_pairs, world_size=d.world_size, final_loss=last_loss,
    )  # fmt: skip
    if d.is_main:
        print(f"train: {summary}", flush=True)
    return summary


def _validate_step(net: torch.nn.Module, cfg: TrainConfig, mcfg: ModelConfig, paths: TrainPaths, device: torch.device,
                   d: Dist, state: TrainState, live: Any) -> None:  # fmt: skip
    """Rank 0 validates, keeps the best model by R@5 and decides early stopping; all ranks learn the decision."""
    stop = False
    if d.is_main:
        rec = validate(net, cfg, mcfg, paths.tiles_root, device)
        r5 = rec.get(5, float("nan"))
        state.history.append({"iteration": float(state.iteration), **{f"R@{k}": v for k, v in rec.items()}})
        if live is not None:
            for k in (1, 5, 10, 20):
                if k in rec:
                    live.log_metric(f"val/R@{k}", rec[k])
        if r5 > state.best_r5:
            state.best_r5, state.best_iteration, state.bad_validations = r5, state.iteration, 0
            save_checkpoint(paths.checkpoints / BEST_NAME, net, mcfg, iteration=state.iteration,
                            val_recalls={str(k): v for k, v in rec.items()}, init_seed=cfg.seed)  # fmt: skip
        else:
            state.bad_validations += 1
        stop = bool(cfg.patience) and state.bad_validations >= cfg.patience
        print(f"train: iteration {state.iteration}: val R@1/5/10/20 = "
              + "/".join(f"{rec.get(k, float('nan')):.1f}" for k in (1, 5, 10, 20))
              + f" (best R@5 {state.best_r5:.1f} at {state.best_iteration})", flush=True)  # fmt: skip
    state.stopped_early = _sync_flag(stop, d)


def _write_model(net: torch.nn.Module, mcfg: ModelConfig, paths: TrainPaths, state: TrainState, cfg: TrainConfig) -> None:
    """The stage output: the best validated model, or the last weights when there is no validation."""
    best = paths.checkpoints / BEST_NAME
    if cfg.val_every and best.is_file():
        paths.model_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(paths.model_out) as tmp:
            tmp.write_bytes(best.read_bytes())
    else:
        save_checkpoint(paths.model_out, net, mcfg, iteration=state.iteration, init_seed=cfg.seed)


def run(params: Mapping[str, Any], paths: TrainPaths = TrainPaths()) -> TrainSummary:
    """Entry point of `earthloc train`."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from earthloc import astroloc_train

    if astroloc_train.uses_astroloc_loop(params):  # AstroLoc losses on (params astroloc): photos join the batches
        return astroloc_train.run(params, paths)  # type: ignore[return-value]
    summary = train(Configs.from_params(params), paths)
    return summary
