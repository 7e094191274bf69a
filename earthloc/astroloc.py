"""AstroLoc's two training losses (Berton et al. 2025), beside EarthLoc's region loss.

1. **Photo-to-region pairwise loss** (`PhotoPairLoss`). A batch also holds P astronaut
   photos; each is pulled toward the database images of its matching regions (IoU >=
   `pairs.min_iou`, from data/pairs/pairs.parquet) and pushed away from the other regions
   of the batch. A region that overlaps the photo's footprint below the threshold
   (data/pairs/neutral.parquet) is *neutral*: it shows part of the same ground, so it is
   neither pulled nor pushed. The form is multi-similarity with the photo as anchor and the
   region images (every year's view) as candidates:

       L_i = 1/alpha * log(1 + sum_{p in P_i} exp(-alpha (S_ip - lambda)))
           + 1/beta  * log(1 + sum_{n in N_i} exp( beta  (S_in - lambda)))

   S = cosine similarity, P_i/N_i the (optionally mined) positive/negative candidates of
   photo i, a term 0 when its set is empty; the loss is the mean of L_i over the P photos.
   Mining is the multi-similarity rule restricted to non-neutral pairs (as the region
   loss's "paper" order): keep a positive if S_ip - eps < max_n S_in, a negative if
   S_in + eps > min_p S_ip.

2. **Relevance-weighted cluster loss** (`ClusterWeights`, `WeightedClusterMSLoss`). The
   2021 region descriptors are clustered without labels (faiss k-means). The training
   photos' descriptors are assigned to their nearest centroid; cluster k receives c_k
   photos. Its weight is the smoothed, normalised count

       w_k = K * (c_k + tau) / (sum_j c_j + K * tau)

   (mean weight 1 over the K clusters; tau > 0 keeps clusters no photo falls in alive,
   tau -> infinity gives uniform weights = EarthLoc). The region batch's neutral-aware
   multi-similarity loss (the modeller's `NeutralAwareMSLoss`: same pairs, same mining) is
   then averaged with per-image weights: loss = 1/N * sum_i w_{cluster(region(i))} * L_i.
   So land that looks like what astronauts photograph counts more. The weights can also
   drive which cluster a batch is drawn from (`cluster_sampling_probs`, p_k = w_k / K).

All switches and weights live in params `astroloc` (`AstroLocConfig`), so the EarthLoc
and AstroLoc configurations run from the same code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import MultiSimilarityLoss
from pytorch_metric_learning.reducers import DoNothingReducer
from torch import nn

from earthloc.loss import LossOutput, NeutralAwareMSLoss
from pipeline.errors import ConfigError
from pipeline.params import check_keys

LOSS_NAMES = ("earthloc_ms", "photo_pairs", "weighted_clusters")
CLUSTER_USES = ("weight", "sample", "both")


# ---------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LossSwitches:
    earthloc_ms: bool = True  # EarthLoc's neutral-aware MS loss over the region batch
    photo_pairs: bool = False  # AstroLoc loss 1: photos vs the batch's regions
    weighted_clusters: bool = False  # AstroLoc loss 2: region MS loss weighted by cluster relevance

    @property
    def any(self) -> bool:
        return self.earthloc_ms or self.photo_pairs or self.weighted_clusters

    @property
    def needs_photos(self) -> bool:
        """Photos are loaded when a loss uses their pixels or their descriptors."""
        return self.photo_pairs or self.weighted_clusters


@dataclass(frozen=True)
class PhotoLossConfig:
    alpha: float = 1.0
    beta: float = 50.0
    base: float = 0.0  # lambda
    epsilon: float = 0.1  # miner margin
    mining: bool = True

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.beta <= 0 or self.epsilon < 0:
            raise ConfigError("astroloc.photo_loss: alpha and beta must be > 0 and epsilon >= 0")


@dataclass(frozen=True)
class ClusterConfig:
    n_clusters: int = 8  # K of the k-means on region descriptors
    smoothing: float = 1.0  # tau in w_k = K (c_k + tau) / (sum c + K tau)
    niter: int = 20
    max_points_per_centroid: int = 256
    refresh_every: int = 40  # iterations between re-clustering/re-weighting with the current model
    use: str = "weight"  # weight: per-image loss weights; sample: batch cluster drawn with p_k = w_k / K; both
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_clusters < 1 or self.niter < 1 or self.refresh_every < 1:
            raise ConfigError("astroloc.clusters: n_clusters, niter and refresh_every must be >= 1")
        if self.smoothing <= 0:
            raise ConfigError("astroloc.clusters.smoothing (tau) must be > 0")
        if self.use not in CLUSTER_USES:
            raise ConfigError(f"astroloc.clusters.use must be one of {CLUSTER_USES}, got {self.use!r}")


@dataclass(frozen=True)
class AstroLocConfig:
    """The `astroloc` params section."""

    losses: LossSwitches = field(default_factory=LossSwitches)
    weights: Mapping[str, float] = field(default_factory=lambda: {n: 1.0 for n in LOSS_NAMES})
    photos_per_batch: int = 8  # P photos per iteration; each brings one positive region into the region batch
    pairs: str = "data/pairs/pairs.parquet"
    neutral: str = "data/pairs/neutral.parquet"
    photo_loss: PhotoLossConfig = field(default_factory=PhotoLossConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        if not self.losses.any:
            raise ConfigError("astroloc.losses: switch on at least one loss")
        unknown = sorted(set(self.weights) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(f"astroloc.weights: unknown loss(es) {unknown}; valid: {list(LOSS_NAMES)}")
        if any(float(w) < 0 for w in self.weights.values()):
            raise ConfigError("astroloc.weights must be >= 0")
        if self.losses.needs_photos and self.photos_per_batch < 1:
            raise ConfigError("astroloc.photos_per_batch must be >= 1 when a photo loss is on")

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 1.0))

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> AstroLocConfig:
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)}, "astroloc")
        for key, sub in (("losses", LossSwitches), ("photo_loss", PhotoLossConfig), ("clusters", ClusterConfig)):
            if isinstance(sec.get(key), Mapping):
                check_keys(sec[key], {f.name for f in fields(sub)}, f"astroloc.{key}")
        try:
            kw: dict[str, Any] = {}
            if "losses" in sec:
                kw["losses"] = LossSwitches(**{k: bool(v) for k, v in dict(sec["losses"]).items()})
            if "weights" in sec:
                kw["weights"] = {str(k): float(v) for k, v in dict(sec["weights"]).items()}
            if "photo_loss" in sec:
                kw["photo_loss"] = PhotoLossConfig(**dict(sec["photo_loss"]))
            if "clusters" in sec:
                kw["clusters"] = ClusterConfig(**dict(sec["clusters"]))
            for k in ("photos_per_batch",):
                if k in sec:
                    kw[k] = int(sec[k])
            for k in ("pairs", "neutral"):
                if k in sec:
                    kw[k] = str(sec[k])
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"params astroloc: {exc}") from exc


# ---------------------------------------------------------------------------
# Loss 1: photos vs regions


class PhotoPairOutput(NamedTuple):
    loss: torch.Tensor
    n_pos: int
    n_neg: int
    n_neutral: int


def _ms_rows(
    sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, alpha: float, beta: float, base: float
) -> torch.Tensor:
    """Per-row multi-similarity terms over boolean candidate masks (rows = anchors).

    log(1 + sum exp(x)) is computed as logsumexp over [0, x...] for stability; an empty
    set gives log(1) = 0, as in PML."""
    zeros = sim.new_zeros(sim.shape[0], 1)
    pos_x = (-alpha * (sim - base)).masked_fill(~pos, float("-inf"))
    neg_x = (beta * (sim - base)).masked_fill(~neg, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zeros, pos_x], dim=1), dim=1) / alpha
    neg_term = torch.logsumexp(torch.cat([zeros, neg_x], dim=1), dim=1) / beta
    return pos_term + neg_term


class PhotoPairLoss(nn.Module):
    """forward(photo_emb (P, D), region_emb (N, D), positive (P, N) bool, neutral (P, N) bool)
    -> PhotoPairOutput. Column j of the masks describes region image j (any year's view)."""

    def __init__(self, cfg: PhotoLossConfig = PhotoLossConfig()) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(
        self, photo_emb: torch.Tensor, region_emb: torch.Tensor, positive: torch.Tensor, neutral: torch.Tensor
    ) -> PhotoPairOutput:
        p, n = photo_emb.shape[0], region_emb.shape[0]
        if positive.shape != (p, n) or neutral.shape != (p, n):
            raise ValueError(f"masks must be ({p}, {n}), got {tuple(positive.shape)} and {tuple(neutral.shape)}")
        with torch.autocast(device_type=photo_emb.device.type, enabled=False):
            sim = F.normalize(photo_emb.float(), dim=1) @ F.normalize(region_emb.float(), dim=1).T
            pos = positive.to(sim.device, torch.bool)
            neu = neutral.to(sim.device, torch.bool) & ~pos
            neg = ~pos & ~neu
            if self.cfg.mining:
                with torch.no_grad():
                    hardest_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
                    hardest_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
                    pos = pos & (sim - self.cfg.epsilon < hardest_neg)
                    neg = neg & (sim + self.cfg.epsilon > hardest_pos)
            rows = _ms_rows(sim, pos, neg, self.cfg.alpha, self.cfg.beta, self.cfg.base)
            loss = rows.mean() if p else sim.sum() * 0.0
        return PhotoPairOutput(loss, int(pos.sum()), int(neg.sum()), int(neu.sum()))


def photo_region_masks(
    photo_ids: list[str],
    region_ids: list[str],
    labels: npt.ArrayLike,
    positives: Mapping[str, set[str]],
    neutrals: Mapping[str, set[str]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, neutral) (P, N) masks for P photos against N region images.

    `region_ids[r]` names batch region r; `labels[j]` is the batch region of image j;
    `positives`/`neutrals` map a photo id to its positive/neutral region ids (pairs tables)."""
    lab = np.asarray(labels, dtype=np.int64)
    pos_r = np.array([[rid in positives.get(q, ()) for rid in region_ids] for q in photo_ids], dtype=bool)
    neu_r = np.array([[rid in neutrals.get(q, ()) for rid in region_ids] for q in photo_ids], dtype=bool)
    pos_r = pos_r.reshape(len(photo_ids), len(region_ids))
    neu_r = neu_r.reshape(len(photo_ids), len(region_ids))
    return torch.from_numpy(pos_r[:, lab]), torch.from_numpy(neu_r[:, lab] & ~pos_r[:, lab])


# ---------------------------------------------------------------------------
# Loss 2: relevance-weighted clusters


@dataclass(frozen=True)
class ClusterWeights:
    centroids: npt.NDArray[np.float32]  # (K, D)
    region_cluster: npt.NDArray[np.int64]  # (M,) cluster of each region
    photo_counts: npt.NDArray[np.int64]  # (K,) c_k: training photos nearest to each centroid
    weights: npt.NDArray[np.float64]  # (K,) w_k, mean 1

    def region_weights(self) -> npt.NDArray[np.float64]:
        """(M,) the weight of each region (its cluster's)."""
        return self.weights[self.region_cluster]

    def to_state(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("centroids", "region_cluster", "photo_counts", "weights")}


def relevance_weights(photo_counts: npt.ArrayLike, smoothing: float) -> npt.NDArray[np.float64]:
    """w_k = K (c_k + tau) / (sum_j c_j + K tau): smoothed counts normalised to mean 1."""
    c = np.asarray(photo_counts, dtype=np.float64)
    if c.ndim != 1 or not len(c) or (c < 0).any():
        raise ValueError("photo_counts must be a non-empty 1-D array of counts >= 0")
    if smoothing <= 0:
        raise ValueError("smoothing must be > 0")
    k = len(c)
    return k * (c + smoothing) / (c.sum() + k * smoothing)


def cluster_sampling_probs(weights: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """p_k = w_k / sum w (= w_k / K for mean-1 weights): draw a batch's cluster by relevance."""
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def nearest_centroid(x: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def cluster_weights(
    region_desc: npt.NDArray[np.float32], photo_desc: npt.NDArray[np.float32], cfg: ClusterConfig
) -> ClusterWeights:
    """k-means (faiss, seeded) on the region descriptors, photo counts per centroid, weights.

    K is capped at the number of regions (faiss needs at least K points)."""
    import faiss

    region_desc = np.ascontiguousarray(region_desc, dtype=np.float32)
    photo_desc = np.ascontiguousarray(photo_desc, dtype=np.float32).reshape(-1, region_desc.shape[1])
    k = int(min(cfg.n_clusters, len(region_desc)))
    if k < 1:
        raise ValueError("cluster_weights: no region descriptors")
    km = faiss.Kmeans(
        region_desc.shape[1],
        k,
        niter=cfg.niter,
        seed=cfg.seed,
        verbose=False,
        max_points_per_centroid=cfg.max_points_per_centroid,
        min_points_per_centroid=1,
    )
    km.train(region_desc)
    centroids = np.asarray(km.centroids, dtype=np.float32)
    region_cluster = nearest_centroid(region_desc, centroids)
    counts = (
        np.bincount(nearest_centroid(photo_desc, centroids), minlength=k)
        if len(photo_desc)
        else np.zeros(k, dtype=np.int64)
    )
    return ClusterWeights(centroids, region_cluster, counts.astype(np.int64), relevance_weights(counts, cfg.smoothing))


class WeightedClusterMSLoss(nn.Module):
    """The neutral-aware MS loss with per-image weights: 1/N sum_i w_i L_i.

    Pairs (and mining) come from `NeutralAwareMSLoss.select_pairs`, so with all weights 1
    this equals the EarthLoc loss exactly. forward(emb (N, D), labels (N,), neutral (R, R),
    label_weights (R,)) -> LossOutput (loss, n_pos, n_neg, batch_acc)."""

    def __init__(self, base: NeutralAwareMSLoss) -> None:
        super().__init__()
        self.base = base
        c = base.cfg
        self.per_row = MultiSimilarityLoss(alpha=c.alpha, beta=c.beta, base=c.base, reducer=DoNothingReducer())

    def forward(
        self, emb: torch.Tensor, labels: torch.Tensor, neutral: torch.Tensor, label_weights: torch.Tensor
    ) -> LossOutput:
        labels = labels.to(device=emb.device, dtype=torch.long)
        if label_weights.shape != (neutral.shape[0],):
            raise ValueError(f"label_weights must be ({neutral.shape[0]},), got {tuple(label_weights.shape)}")
        with torch.autocast(device_type=emb.device.type, enabled=False):
            emb = emb.float()
            pairs = self.base.select_pairs(emb, labels, neutral)
            a1, _, a2, _ = pairs
            n = labels.numel()
            if a1.numel() <= 1 and a2.numel() <= 1:  # PML's zero-loss path
                loss = emb.sum() * 0.0
            else:
                out = self.per_row(emb, labels, pairs)["loss"]
                rows = emb.new_zeros(n)
                rows[out["indices"]] = out["losses"].reshape(-1)
                w = label_weights.to(emb.device, torch.float32)[labels]
                loss = (w * rows).sum() / max(n, 1)
        batch_acc = 100.0 * (1.0 - torch.unique(a1).numel() / max(labels.numel(), 1))
        return LossOutput(loss, int(a1.numel()), int(a2.numel()), batch_acc)


__all__ = [
    "AstroLocConfig",
    "ClusterConfig",
    "ClusterWeights",
    "LossSwitches",
    "PhotoLossConfig",
    "PhotoPairLoss",
    "PhotoPairOutput",
    "WeightedClusterMSLoss",
    "cluster_sampling_probs",
    "cluster_weights",
    "nearest_centroid",
    "photo_region_masks",
    "relevance_weights",
]
