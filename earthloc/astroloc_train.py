"""AstroLoc training: EarthLoc's loop with astronaut photos mixed into the batches.

The same loop trains every configuration of params `astroloc.losses` (EarthLoc =
earthloc_ms alone; AstroLoc = photo_pairs + weighted_clusters; any other mix for the
ablation), reusing the train stage's pieces (earthloc/train.py: training regions, neutral
pairs, clustered batches, year-wise augmentation, re-clustering, validation, dvclive), so
the configurations differ only in the losses.

One iteration i:
1. Region batch: B regions from one cluster (`earthloc.batches.batch_regions`, as EarthLoc),
   or, with `astroloc.clusters.use: sample|both`, from a relevance-weighted cluster
   (p_k = w_k / K).
2. Photo batch (when a photo loss is on): P training photos drawn with
   np.random.default_rng([seed, STREAM_PHOTOS, i]); for each, one of its positive regions
   (pairs.parquet, IoU >= pairs.min_iou) drawn uniformly is *appended* to the region batch,
   so every photo has at least one positive among the batch's regions; the rest of the
   batch are its negatives unless neutral (overlap below min_iou, or positive).
3. Images: the B+P regions' four years, augmented year-wise as EarthLoc; the P photos
   turned by the multiple of 90 degrees that brings north nearest to up (from the photo's
   orientation field, north lying `orientation` degrees clockwise from up), leaving at
   most 45 degrees, the range of the regions' rotation augmentation; evaluation rotates
   the database by 90-degree steps for the same reason. One forward pass for all.
4. Loss = sum over the switched-on losses of weight * loss:
   earthloc_ms (B+P regions x Y views, neutral-aware MS), weighted_clusters (the same with
   per-region cluster relevance weights), photo_pairs (photos vs the region views).
5. Relevance weights (weighted_clusters) are recomputed every `clusters.refresh_every`
   iterations from iteration 0: k-means of the 2021 region descriptors of the current
   model, photo descriptors of all training photos assigned to the nearest centroid.

Scope: single process (no DistributedDataParallel) and no mid-run resume: the AstroLoc
experiments on the demo are minutes long; the EarthLoc-only configuration keeps the train
stage's resumable DDP loop (`earthloc train` dispatches here only when a photo loss is on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from earthloc.astroloc import (
    AstroLocConfig,
    ClusterWeights,
    PhotoPairLoss,
    WeightedClusterMSLoss,
    cluster_sampling_probs,
    cluster_weights,
    photo_region_masks,
)
from earthloc.augment import YearwiseAugment, normalize, to_float
from earthloc.batches import batch_regions, neutral_pairs, random_clusters
from earthloc.data import RegionYearsDataset, TrainingRegions, load_rgb, loader, one_line, training_regions
from earthloc.loss import NeutralAwareMSLoss
from earthloc.model import build_model, save_checkpoint, unwrap
from earthloc.train import (
    STREAM_AUGMENT,
    Configs,
    Dist,
    TrainPaths,
    TrainState,
    _open_live,
    derived_seed,
    embed_year,
    recluster,
    seed_everything,
    validate,
)
from pipeline.errors import ConfigError, InputError
from pipeline.geo.names import parse_filename
from pipeline.io import atomic_path, write_json

# Not the train stage's best.pt/last.pt: the EarthLoc loop resumes from those (same folder,
# DVC-persisted), so an AstroLoc run must leave them alone or an EarthLoc rerun would
# pick up an AstroLoc model as its own best.
BEST_NAME = "astroloc_best.pt"
STREAM_PHOTOS = 7  # seed stream of the photo draw (batches.py uses 1, 2; train.py 3, 4, 5)
STREAM_WEIGHTED_BATCH = 8  # seed stream of the relevance-weighted cluster draw


# -- photos ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhotoPool:
    """The training photos: those with a positive among the training regions and an image on disk."""

    tiles_root: Path
    query_ids: npt.NDArray[np.str_]  # (Q,)
    paths: npt.NDArray[np.object_]  # (Q,) relative to tiles_root
    turns: npt.NDArray[np.int64]  # (Q,) counter-clockwise quarter turns that bring north nearest to up
    positives: dict[str, set[str]]  # query_id -> positive region ids (training regions only)
    neutrals: dict[str, set[str]]  # query_id -> neutral region ids
    positive_index: list[npt.NDArray[np.int64]]  # per photo, training-region indices of its positives

    def __len__(self) -> int:
        return len(self.query_ids)


def north_up_turns(orientation: str | float) -> int:
    """Quarter turns (counter-clockwise, torch.rot90 k) that bring north within 45 degrees of up.

    North lies `orientation` degrees clockwise from up; rotating the image counter-clockwise by
    that angle puts it up, so the nearest multiple of 90 degrees is round(orientation / 90)."""
    try:
        o = float(orientation)
    except (TypeError, ValueError):
        return 0
    return int(round(o / 90.0)) % 4 if math.isfinite(o) else 0


def photo_pool(tiles_root: Path, pairs_path: Path, neutral_path: Path, regions: TrainingRegions) -> PhotoPool:
    """Photos of pairs.parquet with a positive among `regions` and an image in tiles/queries/."""
    for p in (pairs_path, neutral_path):
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file (run the pairs stage first: dvc repro pairs)")
    try:
        pairs = pd.read_parquet(pairs_path, columns=["query_id", "filename", "region_id"])
        neutral = pd.read_parquet(neutral_path, columns=["query_id", "region_id"])
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{pairs_path}: unreadable pairs table ({exc})") from exc
    index_of = {rid: i for i, rid in enumerate(regions.region_ids.tolist())}
    pairs = pairs.loc[pairs["region_id"].isin(index_of)]
    names = pairs.drop_duplicates("query_id").set_index("query_id")["filename"]
    have = [q for q, f in names.items() if (Path(tiles_root) / "queries" / f).is_file()]
    ids = np.array(sorted(have), dtype=str)
    pos_groups = pairs.loc[pairs["query_id"].isin(have)].groupby("query_id")["region_id"]
    positives = {q: set(g) for q, g in pos_groups}
    neu = neutral.loc[neutral["query_id"].isin(have) & neutral["region_id"].isin(index_of)]
    neutrals = {q: set(g) for q, g in neu.groupby("query_id")["region_id"]}
    turns = []
    for q in ids:
        try:
            turns.append(north_up_turns(parse_filename(str(names[q])).orientation))
        except ValueError:  # a name without the upstream grammar: leave the photo as it is
            turns.append(0)
    return PhotoPool(
        tiles_root=Path(tiles_root),
        query_ids=ids,
        paths=np.array([f"queries/{names[q]}" for q in ids], dtype=object),
        turns=np.asarray(turns, dtype=np.int64),
        positives=positives,
        neutrals=neutrals,
        positive_index=[np.array(sorted(index_of[r] for r in positives[q]), dtype=np.int64) for q in ids],
    )


class PhotoDataset(Dataset[torch.Tensor]):
    """Item i = photo i as (3, S, S) uint8, turned north-up to the nearest 90 degrees."""

    def __init__(self, pool: PhotoPool, size: int) -> None:
        self.pool, self.size = pool, size

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> torch.Tensor:
        rgb = load_rgb(self.pool.tiles_root / str(self.pool.paths[i]), self.size)
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        k = int(self.pool.turns[i])
        return torch.rot90(x, k, dims=(1, 2)).contiguous() if k else x


def plan_photos(pool: PhotoPool, *, seed: int, iteration: int,
                n_photos: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(photo indices (P,), one positive training-region index per photo (P,)): pure in (seed, iteration)."""
    if not len(pool):
        raise InputError("astroloc: no training photo (pairs.parquet has none whose image and positive regions exist)")
    rng = np.random.default_rng([seed, STREAM_PHOTOS, iteration])
    photos = rng.choice(len(pool), size=n_photos, replace=len(pool) < n_photos).astype(np.int64)
    extra = np.array([rng.choice(pool.positive_index[p]) for p in photos], dtype=np.int64)
    return photos, extra


@torch.no_grad()
def embed_photos(model: torch.nn.Module, pool: PhotoPool, *, image_size: int, batch_size: int, device: torch.device
                 ) -> npt.NDArray[np.float32]:  # fmt: skip
    """(Q, D) descriptors of every training photo (eval mode), for the relevance weights."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    out = []
    try:
        for x in DataLoader(PhotoDataset(pool, image_size), batch_size=batch_size, num_workers=0):
            out.append(net(normalize(to_float(x.to(device)))).float().cpu())
    finally:
        net.train(was_training)
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, net.cfg.descriptor_dim), np.float32)


def weighted_batch(cw: ClusterWeights, *, seed: int, iteration: int, batch_size: int) -> npt.NDArray[np.int64]:
    """B regions of one cluster drawn with probability p_k = w_k / sum(w) among non-empty clusters."""
    sizes = np.bincount(cw.region_cluster, minlength=len(cw.weights))
    nonempty = np.flatnonzero(sizes > 0)
    rng = np.random.default_rng([seed, STREAM_WEIGHTED_BATCH, iteration])
    k = int(rng.choice(nonempty, p=cluster_sampling_probs(cw.weights[nonempty])))
    members = np.flatnonzero(cw.region_cluster == k)
    return rng.choice(members, size=batch_size, replace=members.size < batch_size).astype(np.int64)


# -- the loop --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AstroLocSummary:
    iterations_done: int
    best_r5: float | None
    best_iteration: int
    seconds: float
    seconds_per_iteration: float
    n_regions: int
    n_photos: int
    losses: dict[str, bool]
    final_loss: float | None
    final_components: dict[str, float]
    cluster_photo_counts: list[int] | None
    cluster_weights: list[float] | None


def _refresh_weights(net: torch.nn.Module, regions: TrainingRegions, pool: PhotoPool, configs: Configs,
                     acfg: AstroLocConfig, iteration: int, device: torch.device) -> ClusterWeights:  # fmt: skip
    cfg, mcfg = configs.train, configs.model
    region_desc = embed_year(net, regions, 2021, image_size=mcfg.image_size, batch_size=cfg.embed_batch_size,
                             num_workers=cfg.num_workers, device=device, d=Dist(), seed=cfg.seed)  # fmt: skip
    photo_desc = embed_photos(net, pool, image_size=mcfg.image_size, batch_size=cfg.embed_batch_size, device=device)
    from dataclasses import replace

    ccfg = replace(acfg.clusters, seed=derived_seed(acfg.clusters.seed, 9, iteration) % 2**31)
    return cluster_weights(region_desc, photo_desc, ccfg)


def _step(net: torch.nn.Module, images: torch.Tensor, batch: npt.NDArray[np.int64], photos: npt.NDArray[np.int64],
          pool: PhotoPool | None, photo_ds: PhotoDataset | None, regions: TrainingRegions, neutral: Any,
          augment: YearwiseAugment, ms: NeutralAwareMSLoss, wms: WeightedClusterMSLoss, ppl: PhotoPairLoss,
          optimizer: torch.optim.Optimizer, acfg: AstroLocConfig, cw: ClusterWeights | None, n_years: int,
          iteration: int, seed: int, device: torch.device) -> tuple[float, dict[str, float]]:  # fmt: skip
    """One optimiser step on one mixed batch; returns the total loss and its components."""
    sw = acfg.losses
    photo_x = torch.stack([photo_ds[int(p)] for p in photos]) if len(photos) and photo_ds is not None else None
    gen = torch.Generator().manual_seed(derived_seed(seed, STREAM_AUGMENT, iteration))
    views = augment(images.to(device), gen)
    n_views = views.shape[0]
    x = views if photo_x is None else torch.cat([views, normalize(to_float(photo_x.to(device)))])
    emb = net(x)
    region_emb, photo_emb = emb[:n_views], emb[n_views:]
    labels = torch.arange(len(batch), device=device).repeat_interleave(n_years)
    neutral_m = torch.from_numpy(neutral.matrix(batch)).to(device)

    total = emb.new_zeros(())
    comps: dict[str, float] = {}
    if sw.earthloc_ms:
        out = ms(region_emb, labels, neutral_m)
        total = total + acfg.weight("earthloc_ms") * out.loss
        comps["earthloc_ms"] = float(out.loss.detach())
    if sw.weighted_clusters:
        w = torch.ones(len(batch)) if cw is None else torch.from_numpy(cw.region_weights()[batch]).float()
        out = wms(region_emb, labels, neutral_m, w)
        total = total + acfg.weight("weighted_clusters") * out.loss
        comps["weighted_clusters"] = float(out.loss.detach())
    if sw.photo_pairs:
        assert pool is not None
        rids = regions.region_ids[batch].tolist()
        qids = pool.query_ids[photos].tolist()
        pos, neu = photo_region_masks(qids, rids, labels.cpu().numpy(), pool.positives, pool.neutrals)
        pout = ppl(photo_emb, region_emb, pos, neu)
        total = total + acfg.weight("photo_pairs") * pout.loss
        comps["photo_pairs"] = float(pout.loss.detach())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return float(total.detach()), comps


def train_astroloc(configs: Configs, acfg: AstroLocConfig, paths: TrainPaths = TrainPaths()) -> AstroLocSummary:
    """Train with the losses of `acfg` and write the best (or last) model to `paths.model_out`."""
    cfg, mcfg = configs.train, configs.model
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.val_every and not Path(cfg.val_set).is_dir():
        raise InputError(f"{cfg.val_set}: validation set not found "
                         "(build it with the evalset stage, or set train.val_every: 0)")
    t0 = time.monotonic()
    seed_everything(cfg.seed)
    sw = acfg.losses

    regions = training_regions(paths.tiles_root, paths.regions, cfg.years)
    neutral = neutral_pairs(regions.footprints)
    pool = (photo_pool(paths.tiles_root, Path(acfg.pairs), Path(acfg.neutral), regions) if sw.needs_photos
            else None)  # fmt: skip
    if pool is not None and not len(pool):
        raise InputError("astroloc: no training photo: fetch the photos of an area outside every evaluation set "
                         "(fetch.aois) and rerun the pairs stage")
    n_photos = acfg.photos_per_batch if sw.photo_pairs else 0
    n_years = len(cfg.years)
    n_pool = len(pool) if pool is not None else 0
    print(f"astroloc: {len(regions)} regions x {n_years} years, {n_pool} training photos, "
          f"losses {[k for k, v in vars(sw).items() if v]}", flush=True)  # fmt: skip

    model = build_model(mcfg).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    (paths.checkpoints / BEST_NAME).unlink(missing_ok=True)
    state = TrainState(0, random_clusters(len(regions), cfg.n_clusters, cfg.seed))
    augment = YearwiseAugment(configs.augment)
    ms = NeutralAwareMSLoss.from_config(configs.loss)
    wms = WeightedClusterMSLoss(ms)
    ppl = PhotoPairLoss(acfg.photo_loss)
    dataset = RegionYearsDataset(regions, cfg.load_size)
    photo_ds = PhotoDataset(pool, mcfg.image_size) if pool is not None else None
    live = _open_live(paths.live_dir, None)
    cw: ClusterWeights | None = None
    last_loss: float | None = None
    comps: dict[str, float] = {}
    net = model
    net.train()

    while state.iteration < cfg.iterations:
        it0 = state.iteration
        if cfg.recluster_every and it0 > 0 and it0 % cfg.recluster_every == 0 and state.clusters.iteration != it0:
            state.clusters = recluster(net, regions, cfg, mcfg, it0, device, Dist())
        if sw.weighted_clusters and pool is not None and it0 % acfg.clusters.refresh_every == 0:
            cw = _refresh_weights(net, regions, pool, configs, acfg, it0, device)
            print(f"astroloc: iteration {it0}: relevance weights over {len(cw.weights)} clusters: photo counts "
                  f"{cw.photo_counts.tolist()}, weights {np.round(cw.weights, 2).tolist()}", flush=True)  # fmt: skip
        # A segment runs up to the next re-clustering or re-weighting, so its whole batch
        # schedule is known up front and the DataLoader's workers can decode ahead.
        seg_end = cfg.iterations
        for every in (cfg.recluster_every, acfg.clusters.refresh_every if sw.weighted_clusters else 0):
            if every:
                seg_end = min(seg_end, (it0 // every + 1) * every)
        schedule: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for i in range(it0, seg_end):
            if cw is not None and acfg.clusters.use in ("sample", "both"):
                batch = weighted_batch(cw, seed=cfg.seed, iteration=i, batch_size=cfg.regions_per_batch)
            else:
                batch = batch_regions(state.clusters, seed=cfg.seed, iteration=i, batch_size=cfg.regions_per_batch,
                                      cluster_choice=cfg.cluster_choice)  # type: ignore[arg-type]  # fmt: skip
            photos = np.zeros(0, dtype=np.int64)
            if n_photos:
                assert pool is not None
                photos, extra = plan_photos(pool, seed=cfg.seed, iteration=i, n_photos=n_photos)
                batch = np.concatenate([batch, extra])
            schedule.append((batch, photos))
        dl = loader(dataset, [b.tolist() for b, _ in schedule], num_workers=cfg.num_workers,
                    seed=derived_seed(cfg.seed, 5, it0) % 2**63, prefetch_factor=cfg.prefetch_factor)  # fmt: skip
        try:
            for (batch, photos), images in zip(schedule, dl):
                last_loss, comps = _step(
                    net, images.images, batch, photos, pool, photo_ds, regions, neutral,
                    augment.at_iteration(state.iteration), ms, wms, ppl,
                    optimizer, acfg, cw, n_years, state.iteration, cfg.seed, device,
                )  # fmt: skip
                state.iteration += 1
                live.log_metric("train/loss", last_loss)
                for k, v in comps.items():
                    live.log_metric(f"train/{k}", v)
                if cfg.val_every and (state.iteration % cfg.val_every == 0 or state.iteration == cfg.iterations):
                    rec = validate(net, cfg, mcfg, paths.tiles_root, device)
                    r5 = rec.get(5, float("nan"))
                    for k in (1, 5, 10, 20):
                        if k in rec:
                            live.log_metric(f"val/R@{k}", rec[k])
                    if r5 > state.best_r5:
                        state.best_r5, state.best_iteration = r5, state.iteration
                        save_checkpoint(paths.checkpoints / BEST_NAME, net, mcfg, iteration=state.iteration,
                                        val_recalls={str(k): v for k, v in rec.items()}, astroloc=_switches(acfg),
                                        init_seed=cfg.seed)  # fmt: skip
                    print(f"astroloc: iteration {state.iteration}: loss {last_loss:.4f} {comps}; val R@1/5 = "
                          f"{rec.get(1, float('nan')):.1f}/{r5:.1f}", flush=True)  # fmt: skip
                live.next_step()
        except InputError as exc:  # re-raised from a loader worker with a traceback in the message
            raise InputError(one_line(exc)) from exc
        finally:
            del dl

    best = paths.checkpoints / BEST_NAME
    paths.model_out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.val_every and best.is_file():
        with atomic_path(paths.model_out) as tmp:
            tmp.write_bytes(best.read_bytes())
    else:
        save_checkpoint(paths.model_out, net, mcfg, iteration=state.iteration, astroloc=_switches(acfg),
                        init_seed=cfg.seed)
    live.end()
    seconds = time.monotonic() - t0
    summary = AstroLocSummary(
        iterations_done=state.iteration, best_r5=state.best_r5 if state.best_iteration >= 0 else None,
        best_iteration=state.best_iteration, seconds=round(seconds, 2),
        seconds_per_iteration=round(seconds / max(state.iteration, 1), 3), n_regions=len(regions),
        n_photos=len(pool) if pool is not None else 0, losses=_switches(acfg), final_loss=last_loss,
        final_components=comps, cluster_photo_counts=cw.photo_counts.tolist() if cw is not None else None,
        cluster_weights=[round(float(w), 4) for w in cw.weights] if cw is not None else None,
    )  # fmt: skip
    write_json(paths.checkpoints / "astroloc_summary.json", vars(summary))
    print(f"astroloc: {summary}", flush=True)
    return summary


def _switches(acfg: AstroLocConfig) -> dict[str, bool]:
    return {k: bool(v) for k, v in vars(acfg.losses).items()}


def uses_astroloc_loop(params: Mapping[str, Any]) -> bool:
    """True when params ask for anything but EarthLoc's loss alone (then `train_astroloc` runs)."""
    acfg = AstroLocConfig.from_section(params.get("astroloc"))
    return acfg.losses.photo_pairs or acfg.losses.weighted_clusters


def run(params: Mapping[str, Any], paths: TrainPaths = TrainPaths()) -> AstroLocSummary:
    acfg = AstroLocConfig.from_section(params.get("astroloc"))
    if acfg.losses.photo_pairs and acfg.photos_per_batch < 1:
        raise ConfigError("astroloc.photos_per_batch must be >= 1")
    return train_astroloc(Configs.from_params(params), acfg, paths)


__all__: Sequence[str] = ("PhotoPool", "photo_pool", "plan_photos", "north_up_turns", "train_astroloc", "run",
                          "uses_astroloc_loop", "weighted_batch", "embed_photos")
