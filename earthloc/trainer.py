"""The training loop of the train stage: one loop for every objective (paper Sec. 4-5), resumable and DDP-ready.

One iteration: B regions drawn from one cluster (`earthloc.batches`, or by an objective),
plus any photos an objective draws with one positive region each; the regions' four year
images decoded in DataLoader workers (`earthloc.data`), year-wise augmentation on the
device (`earthloc.augment`), one forward pass of views and photos, the weighted sum of the
objectives' losses on the global batch (`earthloc.objectives`), one Adam step. The loop
owns data, segments (runs of iterations between re-clusterings and objective refreshes,
whose batch schedule is known up front so loader workers decode ahead), DDP, checkpoints,
validation (the initial network included), the best model and dvclive; an objective owns
only its loss and what it draws (docs/training.md).

Reproducibility and resume. Every random draw is a pure function of (seed, stream,
iteration) (`earthloc.seeds`), so the data order does not live in any iterator; a
checkpoint (model, optimizer, cluster assignment, objective states, iteration, best metric,
early-stopping counter, validation history, dvclive step, and the python/numpy/torch RNG
states for anything else) is enough for a killed run to end with the same weights as an
uninterrupted one. Checkpoints go to `<checkpoints>/last.pt` atomically (DVC `persist`); a
checkpoint made with different params (fingerprint) is not resumed. Changing only
`train.iterations` (or worker counts) resumes, so a run can be extended.

DistributedDataParallel (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK): gloo on CPU, nccl on
CUDA. Every rank computes the same global batch (pure function), loads and embeds its
contiguous share of the batch's regions and photos, and the descriptors are all-gathered
with autograd, so every objective's loss, its labels (region position in the global batch)
and the neutral matrix are the global ones on every rank: the loss equals the
single-process loss, and the gradient too (`earthloc.distributed.gather_with_grad`).
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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from earthloc.astroloc import AstroLocConfig
from earthloc.augment import AugmentConfig, YearwiseAugment, normalize, to_float
from earthloc.batches import (
    ClusterAssignment,
    NeutralPairs,
    batch_regions,
    kmeans_clusters,
    neutral_pairs,
    random_clusters,
    rank_share,
)
from earthloc.data import YEARS, RegionYearsDataset, TrainingRegions, loader, one_line, training_regions
from earthloc.distributed import Dist, barrier, broadcast_flag, gather_with_grad, init_distributed
from earthloc.embedding import EmbedContext, embed_year
from earthloc.loss import LossConfig
from earthloc.model import ModelConfig, build_model, save_checkpoint, unwrap
from earthloc.objectives import Objective, StepBatch, build_objectives
from earthloc.seeds import derived_seed, rng_state, seed_everything, set_rng_state
from pipeline.errors import ConfigError, InputError
from pipeline.io import atomic_path, write_json
from pipeline.params import build_config
from pipeline.schema import DATABASE_YEAR, STREAM_AUGMENT, STREAM_KMEANS, STREAM_LOADER

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
BEST_NAME = "best.pt"
SUMMARY_NAME = "summary.json"
CLUSTERING_YEAR = DATABASE_YEAR  # the year whose descriptors the k-means groups
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
    small_cluster: str = (
        "replace"  # "replace" (upstream: draw with replacement) or "merge" (into the nearest big cluster)
    )
    # input pipeline
    num_workers: int = 2
    prefetch_factor: int = 2
    embed_batch_size: int = 64  # images per forward when embedding for the clustering
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    # checkpoints, validation, logging
    checkpoint_every: int = 25
    val_every: int = 50  # 0 = no validation (the last weights are the model)
    val_set: str = "data/evalsets/demo_val"
    # database angles ranked at validation; evaluation always ranks 0/90/180/270. Fewer angles
    # make each validation cheaper on CPU (the demo's database is ~1,900 regions)
    val_rotations: tuple[int, ...] = (0, 90, 180, 270)
    val_batch_size: int = 32
    val_num_workers: int = 1
    patience: int = 0  # validations without a better R@5 before stopping; 0 = never stop early (upstream 10 epochs)
    sync_batchnorm: bool = True  # SyncBatchNorm under CUDA DDP
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    log_every: int = 1  # dvclive step every this many iterations

    def __post_init__(self) -> None:
        object.__setattr__(self, "years", tuple(int(y) for y in self.years))
        rot = tuple(int(r) for r in self.val_rotations)
        if not rot or any(r not in (0, 90, 180, 270) for r in rot) or len(set(rot)) != len(rot):
            raise ConfigError(f"train.val_rotations must be distinct angles of 0, 90, 180, 270, got {list(rot)}")
        object.__setattr__(self, "val_rotations", rot)
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
        if CLUSTERING_YEAR not in self.years:
            raise ConfigError(f"train.years must include {CLUSTERING_YEAR} (the clustering year)")

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
class TrainingConfig:
    """Everything the train stage reads from params.yaml, one dataclass per section
    (`pipeline.config.training_config` builds it): the checkpoint fingerprint covers all of them."""

    train: TrainConfig
    model: ModelConfig
    augment: AugmentConfig  # its out_size is model.image_size
    loss: LossConfig
    astroloc: AstroLocConfig = field(default_factory=AstroLocConfig)  # which objectives, their weights

    def fingerprint(self, region_ids: Sequence[str]) -> str:
        """What a checkpoint must agree with to be resumed: every non-operational setting and the training regions."""
        train = {k: v for k, v in asdict(self.train).items() if k not in OPERATIONAL_KEYS}
        blob = json.dumps(
            {"train": train, "model": self.model.to_dict(), "augment": asdict(self.augment), "loss": asdict(self.loss),
             "astroloc": asdict(self.astroloc), "regions": hashlib.sha256("\n".join(region_ids).encode()).hexdigest()},
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
    objectives: tuple[str, ...] = ("earthloc_ms",)
    final_components: dict[str, float] = field(default_factory=dict)  # each objective's last loss (unweighted)
    details: dict[str, Any] = field(default_factory=dict)  # each objective's summary (photos, cluster weights)


# -- checkpoints ---------------------------------------------------------------------------------
def save_train_checkpoint(path: Path, model: torch.nn.Module, cfg: ModelConfig, optimizer: torch.optim.Optimizer,
                          state: TrainState, fingerprint: str, objectives: Sequence[Objective] = ()) -> None:  # fmt: skip
    save_checkpoint(
        path, model, cfg,
        optimizer=optimizer.state_dict(),
        iteration=state.iteration,
        clusters={"labels": torch.from_numpy(state.clusters.labels), "n_clusters": state.clusters.n_clusters,
                  "source": state.clusters.source, "iteration": state.clusters.iteration},
        best_r5=state.best_r5, best_iteration=state.best_iteration, bad_validations=state.bad_validations,
        live_step=state.live_step, stopped_early=state.stopped_early, history=state.history,
        rng=rng_state(), fingerprint=fingerprint, objectives={o.name: o.state_dict() for o in objectives},
    )  # fmt: skip
    write_json(path.with_suffix(".json"), {"iteration": state.iteration, "fingerprint": fingerprint})


def load_train_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str,
                          device: torch.device, objectives: Sequence[Objective] = ()) -> TrainState | None:  # fmt: skip
    """Restore model, optimizer, objective and RNG states from `path`; None when absent or made with other params."""
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
    saved = payload.get("objectives", {})
    for o in objectives:
        o.load_state_dict(saved.get(o.name, {}))
    c = payload["clusters"]
    clusters = ClusterAssignment(
        c["labels"].cpu().numpy().astype(np.int64), int(c["n_clusters"]), str(c["source"]), int(c["iteration"])
    )
    return TrainState(
        iteration=int(payload["iteration"]), clusters=clusters, best_r5=float(payload["best_r5"]),
        best_iteration=int(payload["best_iteration"]), bad_validations=int(payload["bad_validations"]),
        live_step=int(payload["live_step"]), stopped_early=bool(payload["stopped_early"]),
        history=list(payload["history"]),
    )  # fmt: skip


# -- clustering ----------------------------------------------------------------------------------
def recluster(model: torch.nn.Module, regions: TrainingRegions, cfg: TrainConfig, ctx: EmbedContext,
              iteration: int) -> ClusterAssignment:  # fmt: skip
    """k-means of the current 2021 descriptors: rank 0 clusters, every rank gets its assignment."""
    import torch.distributed as dist

    desc = embed_year(model, regions, CLUSTERING_YEAR, ctx)
    labels = torch.zeros(len(regions), dtype=torch.int64)
    n_clusters = torch.zeros(1, dtype=torch.int64)
    if ctx.dist.is_main:
        ca = kmeans_clusters(
            desc, cfg.n_clusters, seed=derived_seed(cfg.seed, STREAM_KMEANS, iteration) % 2**31, niter=cfg.kmeans_niter,
            max_points_per_centroid=cfg.kmeans_max_points_per_centroid,
            min_cluster_size=cfg.regions_per_batch if cfg.small_cluster == "merge" else 0, iteration=iteration,
        )  # fmt: skip
        labels, n_clusters = torch.from_numpy(ca.labels), torch.tensor([ca.n_clusters])
    if ctx.dist.enabled:  # one assignment for all ranks: rank 0's
        dist.broadcast(labels, 0)
        dist.broadcast(n_clusters, 0)
    return ClusterAssignment(labels.numpy().astype(np.int64), int(n_clusters[0]), "kmeans", iteration)


# -- validation ----------------------------------------------------------------------------------
def validate(
    model: torch.nn.Module, cfg: TrainConfig, mcfg: ModelConfig, tiles_root: Path, device: torch.device
) -> dict[int, float]:
    from earthloc.retrieval.evalset import evaluate_set

    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        res = evaluate_set(
            net, cfg.val_set, tiles_root, image_size=mcfg.image_size, batch_size=cfg.val_batch_size,
            num_workers=cfg.val_num_workers, device=device, bf16=device.type == "cuda", rotations=cfg.val_rotations,
        )  # fmt: skip
    finally:
        net.train(was_training)
    return {int(k): float(v) for k, v in res.recalls.items()}


# -- dvclive ---------------------------------------------------------------------------------------
def _truncate_live(live_dir: Path, step: int, n_validations: int) -> None:
    """Drop dvclive rows a killed run logged after the checkpoint we resume from.

    Training rows are kept below the checkpoint's step; validation rows are counted instead
    (the checkpoint's history says how many validations it holds), since a validation is
    logged at the step of the weights it describes, which can be the checkpoint's own step."""
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
        if tsv.relative_to(plots).parts[0] == "val":
            keep = rows[:n_validations]
        else:
            keep = [r for r in rows if int(r.split("\t")[col]) < step]
        with atomic_path(tsv) as tmp:
            tmp.write_text("\n".join([header, *keep]) + "\n", encoding="utf-8")


def _open_live(live_dir: Path, resume_step: int | None, n_validations: int = 0) -> Any:
    from dvclive import Live

    if resume_step is None:
        live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None)
    else:
        _truncate_live(live_dir, resume_step, n_validations)
        live = Live(dir=str(live_dir), resume=True, save_dvc_exp=False, dvcyaml=None)
        live.step = resume_step
    return live


# -- the loop --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    """What iteration `iteration` trains on, pure in (seed, iteration, clusters, objective state)."""

    iteration: int
    regions: npt.NDArray[np.int64]  # (R,) the B drawn regions, then one positive region per photo
    photos: npt.NDArray[np.int64]  # (P,)


@dataclass(frozen=True)
class StepTools:
    """The fixed parts of an optimiser step: the network (DDP-wrapped or not), what it optimises, how views are made."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    augment: YearwiseAugment
    objectives: tuple[Objective, ...]
    neutral: NeutralPairs
    n_years: int
    seed: int
    device: torch.device
    dist: Dist


@dataclass(frozen=True)
class StepResult:
    loss: float
    components: dict[str, float]  # each objective's loss, unweighted
    metrics: dict[str, float]  # each objective's extra figures


def plan_batch(
    objectives: Sequence[Objective], clusters: ClusterAssignment, cfg: TrainConfig, iteration: int
) -> BatchPlan:
    """The regions (drawn from one cluster, or by an objective) and photos of `iteration`."""
    regions: npt.NDArray[np.int64] | None = None
    for o in objectives:
        regions = o.draw_regions(seed=cfg.seed, iteration=iteration, batch_size=cfg.regions_per_batch)
        if regions is not None:
            break
    if regions is None:
        regions = batch_regions(clusters, seed=cfg.seed, iteration=iteration, batch_size=cfg.regions_per_batch,
                                cluster_choice=cfg.cluster_choice)  # type: ignore[arg-type]  # fmt: skip
    photos = np.zeros(0, dtype=np.int64)
    for o in objectives:
        drawn = o.draw_photos(seed=cfg.seed, iteration=iteration)
        if drawn is not None:
            photos, extra = drawn
            regions = np.concatenate([regions, extra])
    return BatchPlan(iteration, regions, photos)


def train_step(tools: StepTools, plan: BatchPlan, images: torch.Tensor) -> StepResult:
    """One optimiser step on this rank's share of the plan's regions ((r, Y, 3, H, W) uint8) and photos.

    One forward pass embeds this rank's region views and photos together (BatchNorm sees them
    as one batch); under DDP the descriptors of all ranks are gathered with autograd, so every
    objective computes the loss of the global batch on every rank."""
    d, device = tools.dist, tools.device
    gen = torch.Generator().manual_seed(derived_seed(tools.seed, STREAM_AUGMENT, plan.iteration))
    views = tools.augment(images.to(device, non_blocking=True), gen)
    photo_share = plan.photos[rank_share(plan.photos, d.rank, d.world_size)]
    photo_owner = next((o for o in tools.objectives if o.draws_photos), None)
    x = views
    if len(photo_share) and photo_owner is not None:
        x = torch.cat([views, normalize(to_float(photo_owner.photo_images(photo_share).to(device)))])
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        emb = tools.net(x)
    region_emb, photo_emb = gather_with_grad(emb[: len(views)], d), emb[len(views) :]
    if len(plan.photos):
        photo_emb = gather_with_grad(photo_emb, d)
    batch = StepBatch(
        iteration=plan.iteration, regions=plan.regions, photos=plan.photos, region_emb=region_emb, photo_emb=photo_emb,
        labels=torch.arange(len(plan.regions), device=device).repeat_interleave(tools.n_years),
        neutral=torch.from_numpy(tools.neutral.matrix(plan.regions)).to(device),
    )  # fmt: skip
    total: torch.Tensor | None = None
    components: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for o in tools.objectives:
        out = o.loss(batch)
        term = out.loss if o.weight == 1.0 else o.weight * out.loss
        total = term if total is None else total + term
        components[o.name] = float(out.loss.detach())
        metrics.update(out.metrics)
    assert total is not None
    tools.optimizer.zero_grad(set_to_none=True)
    total.backward()
    tools.optimizer.step()
    return StepResult(float(total.detach()), components, metrics)


def _device(cfg: TrainConfig, d: Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _check_world(configs: TrainingConfig, d: Dist) -> None:
    """Every rank must hold the same number of regions and photos: the all-gather needs equal shapes."""
    cfg, acfg = configs.train, configs.astroloc
    n_photos = acfg.photos_per_batch if acfg.losses.photo_pairs else 0
    if cfg.regions_per_batch % d.world_size:
        raise ConfigError(
            f"train.regions_per_batch {cfg.regions_per_batch} must be a multiple of WORLD_SIZE {d.world_size}"
        )
    if n_photos % d.world_size:
        raise ConfigError(f"astroloc.photos_per_batch {n_photos} must be a multiple of WORLD_SIZE {d.world_size}")


def train(configs: TrainingConfig, paths: TrainPaths = TrainPaths()) -> TrainSummary:
    """Train (or resume) and write the best model to `paths.model_out`. Returns a summary."""
    cfg, mcfg = configs.train, configs.model
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    d = init_distributed("cuda" if wants_cuda else "cpu")
    device = _device(cfg, d)
    _check_world(configs, d)
    if cfg.val_every and not Path(cfg.val_set).is_dir():
        raise InputError(
            f"{cfg.val_set}: validation set not found (build it with the evalset stage, or set train.val_every: 0)"
        )
    t0 = time.monotonic()
    seed_everything(cfg.seed)

    regions = training_regions(paths.tiles_root, paths.regions, cfg.years)
    neutral = neutral_pairs(regions.footprints)
    objectives = tuple(build_objectives(configs.astroloc, configs.loss, regions, paths.tiles_root, mcfg.image_size))
    fingerprint = configs.fingerprint(regions.region_ids.tolist())
    n_years = len(cfg.years)

    # The initial weights are those of torch.manual_seed(cfg.seed) + build_model (nothing above
    # draws from torch's generator): the checkpoints record init_seed, and the evaluate stage's
    # untrained baseline rebuilds exactly this network (tests/test_train.py checks it).
    model = build_model(mcfg).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    ckpt_path = paths.checkpoints / CHECKPOINT_NAME
    state = load_train_checkpoint(ckpt_path, model, optimizer, fingerprint, device, objectives)
    resumed_from = state.iteration if state is not None else None
    if state is None:
        state = TrainState(0, random_clusters(len(regions), cfg.n_clusters, cfg.seed))
        if d.is_main:  # a best model of an earlier run with other params must not be taken for this run's
            (paths.checkpoints / BEST_NAME).unlink(missing_ok=True)
    n_photos = sum(o.summary().get("n_photos", 0) for o in objectives)
    if d.is_main:
        print(
            f"train: {len(regions)} regions x {n_years} years, {neutral.n_pairs} neutral pairs, "
            f"objectives {[o.name for o in objectives]}" + (f", {n_photos} training photos" if n_photos else "")
            + f", world size {d.world_size}, device {device}, "
            + (f"resuming at iteration {resumed_from}" if resumed_from is not None else "starting afresh"),
            flush=True,
        )  # fmt: skip

    net: torch.nn.Module = model
    if d.enabled:
        if device.type == "cuda" and cfg.sync_batchnorm:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    net.train()
    augment = YearwiseAugment(configs.augment)
    dataset = RegionYearsDataset(regions, cfg.load_size)
    live = _open_live(paths.live_dir, state.live_step if resumed_from is not None else None,
                      len(state.history)) if d.is_main else None  # fmt: skip
    ctx = EmbedContext(mcfg.image_size, cfg.embed_batch_size, cfg.num_workers, cfg.seed, device, d)
    done_before = state.iteration
    last: StepResult | None = None

    if cfg.val_every and state.iteration == 0 and not state.history:
        # The initial network is a candidate: selection can return it when training does not help.
        _validate_step(net, cfg, mcfg, paths, device, d, state, live)

    while state.iteration < cfg.iterations and not state.stopped_early:
        it0 = state.iteration
        if cfg.recluster_every and it0 > 0 and it0 % cfg.recluster_every == 0 and state.clusters.iteration != it0:
            state.clusters = recluster(net, regions, cfg, ctx, it0)
            if d.is_main:
                sizes = state.clusters.sizes()
                print(f"train: iteration {it0}: reclustered into {state.clusters.n_clusters} clusters "
                      f"(sizes {sizes.min()}-{sizes.max()})", flush=True)  # fmt: skip
        for o in objectives:
            if o.refresh_every and it0 % o.refresh_every == 0:
                msg = o.refresh(net, regions, ctx, it0)
                if msg and d.is_main:
                    print(f"train: {o.name}: {msg}", flush=True)
        # A segment runs up to the next re-clustering or refresh, so its whole batch schedule
        # is known up front and the DataLoader's workers can decode ahead.
        seg_end = cfg.iterations
        for every in (cfg.recluster_every, *(o.refresh_every for o in objectives)):
            if every:
                seg_end = min(seg_end, (it0 // every + 1) * every)
        schedule = [plan_batch(objectives, state.clusters, cfg, i) for i in range(it0, seg_end)]
        share = rank_share(schedule[0].regions, d.rank, d.world_size)
        dl = loader(dataset, [p.regions[share].tolist() for p in schedule], num_workers=cfg.num_workers,
                    seed=derived_seed(cfg.seed, STREAM_LOADER, it0) % 2**63, prefetch_factor=cfg.prefetch_factor)  # fmt: skip
        tools = StepTools(net, optimizer, augment, objectives, neutral, n_years, cfg.seed, device, d)
        try:
            for plan, batch in zip(schedule, dl):
                i = state.iteration
                last = train_step(tools, plan, batch.images)
                state.iteration = i + 1
                logged = i % cfg.log_every == 0 or state.iteration == cfg.iterations
                if live is not None and logged:
                    live.log_metric("train/loss", last.loss)
                    for name, value in {**last.metrics, **last.components}.items():
                        live.log_metric(f"train/{name}", value)
                    live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
                    live.log_metric("train/iteration", state.iteration)
                    live.next_step()
                    state.live_step = live.step
                if cfg.val_every and (state.iteration % cfg.val_every == 0 or state.iteration == cfg.iterations):
                    _validate_step(net, cfg, mcfg, paths, device, d, state, live)
                if (
                    state.iteration % cfg.checkpoint_every == 0
                    or state.iteration == cfg.iterations
                    or state.stopped_early
                ):
                    if d.is_main:
                        save_train_checkpoint(ckpt_path, net, mcfg, optimizer, state, fingerprint, objectives)
                    barrier(d)
                if state.stopped_early:
                    break
        except InputError as exc:  # re-raised from a loader worker with a traceback in the message
            raise InputError(one_line(exc)) from exc
        finally:
            del dl

    if d.is_main:
        _write_model(net, mcfg, paths, state, cfg, objectives)
        if live is not None:
            live.end()
    barrier(d)
    seconds = time.monotonic() - t0
    n_done = state.iteration - done_before
    details: dict[str, Any] = {}
    for o in objectives:
        details.update(o.summary())
    summary = TrainSummary(
        iterations_done=state.iteration, resumed_from=resumed_from,
        best_r5=state.best_r5 if state.best_iteration >= 0 else None, best_iteration=state.best_iteration,
        stopped_early=state.stopped_early, seconds=round(seconds, 2),
        seconds_per_iteration=round(seconds / n_done, 3) if n_done else 0.0, n_regions=len(regions),
        n_neutral_pairs=neutral.n_pairs, world_size=d.world_size, final_loss=last.loss if last else None,
        objectives=tuple(o.name for o in objectives), final_components=dict(last.components) if last else {},
        details=details,
    )  # fmt: skip
    if d.is_main:
        write_json(paths.checkpoints / SUMMARY_NAME, asdict(summary))
        print(f"train: {summary}", flush=True)
    return summary


def _validate_step(net: torch.nn.Module, cfg: TrainConfig, mcfg: ModelConfig, paths: TrainPaths, device: torch.device,
                   d: Dist, state: TrainState, live: Any) -> None:  # fmt: skip
    """Rank 0 validates, keeps the best model by R@5 and decides early stopping; all ranks learn the decision.

    dvclive logs the result at the step of the weights it describes: step 0 for the initial
    network, and after the step of the iteration that produced the weights."""
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
        elif state.iteration > 0:  # the initial network's result is the bar, not a failed attempt
            state.bad_validations += 1
        stop = bool(cfg.patience) and state.bad_validations >= cfg.patience
        print(f"train: iteration {state.iteration}: val R@1/5/10/20 = "
              + "/".join(f"{rec.get(k, float('nan')):.1f}" for k in (1, 5, 10, 20))
              + f" (best R@5 {state.best_r5:.1f} at {state.best_iteration})", flush=True)  # fmt: skip
    state.stopped_early = broadcast_flag(stop, d)


def _write_model(net: torch.nn.Module, mcfg: ModelConfig, paths: TrainPaths, state: TrainState, cfg: TrainConfig,
                 objectives: Sequence[Objective]) -> None:  # fmt: skip
    """The stage output: the best validated model, or the last weights when there is no validation."""
    best = paths.checkpoints / BEST_NAME
    paths.model_out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.val_every and best.is_file():
        with atomic_path(paths.model_out) as tmp:
            tmp.write_bytes(best.read_bytes())
    else:
        save_checkpoint(paths.model_out, net, mcfg, iteration=state.iteration, init_seed=cfg.seed,
                        objectives=[o.name for o in objectives])  # fmt: skip
