"""AstroLoc's relevance-weighted cluster objective (earthloc/astroloc.py, `ClusterWeights`).

Every `refresh_every` iterations from iteration 0, the 2021 region descriptors of the
current weights are clustered (faiss k-means) and the training photos' descriptors counted
per nearest centroid; a cluster's weight is its smoothed, normalised count. The region
batch's neutral-aware MS loss is then averaged with per-image weights, and (with
`astroloc.clusters.use: sample|both`) the batch's cluster is drawn with p_k = w_k / sum w."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from earthloc.astroloc import (
    ClusterConfig,
    ClusterWeights,
    WeightedClusterMSLoss,
    cluster_sampling_probs,
    cluster_weights,
)
from earthloc.data import TrainingRegions
from earthloc.embedding import EmbedContext, embed_images, embed_year
from earthloc.loss import LossConfig, NeutralAwareMSLoss
from earthloc.objectives.base import IntArray, Objective, ObjectiveOutput, StepBatch
from earthloc.objectives.photos import PhotoDataset, PhotoPool
from earthloc.seeds import derived_seed
from pipeline.schema import DATABASE_YEAR, STREAM_CLUSTER_WEIGHTS, STREAM_WEIGHTED_BATCH

CLUSTERING_YEAR = DATABASE_YEAR


def weighted_batch(cw: ClusterWeights, *, seed: int, iteration: int, batch_size: int) -> IntArray:
    """B regions of one cluster drawn with probability p_k = w_k / sum(w) among non-empty clusters."""
    sizes = np.bincount(cw.region_cluster, minlength=len(cw.weights))
    nonempty = np.flatnonzero(sizes > 0)
    rng = np.random.default_rng([seed, STREAM_WEIGHTED_BATCH, iteration])
    k = int(rng.choice(nonempty, p=cluster_sampling_probs(cw.weights[nonempty])))
    members = np.flatnonzero(cw.region_cluster == k)
    return rng.choice(members, size=batch_size, replace=members.size < batch_size).astype(np.int64)


class WeightedClusters(Objective):
    name = "weighted_clusters"

    def __init__(self, pool: PhotoPool, loss: LossConfig, cfg: ClusterConfig, *, image_size: int,
                 weight: float = 1.0) -> None:  # fmt: skip
        super().__init__(weight)
        self.pool, self.cfg = pool, cfg
        self.photos = PhotoDataset(pool, image_size)
        self.loss_fn = WeightedClusterMSLoss(NeutralAwareMSLoss.from_config(loss))
        self.weights: ClusterWeights | None = None
        self.refreshed_at = -1

    @property
    def refresh_every(self) -> int:
        return self.cfg.refresh_every

    def refresh(
        self, model: torch.nn.Module, regions: TrainingRegions, ctx: EmbedContext, iteration: int
    ) -> str | None:
        if self.refreshed_at == iteration:  # resumed at a refresh the checkpoint already holds
            return None
        region_desc = embed_year(model, regions, CLUSTERING_YEAR, ctx)
        photo_desc = embed_images(model, self.photos, ctx)
        ccfg = replace(self.cfg, seed=derived_seed(self.cfg.seed, STREAM_CLUSTER_WEIGHTS, iteration) % 2**31)
        self.weights, self.refreshed_at = cluster_weights(region_desc, photo_desc, ccfg), iteration
        return (f"iteration {iteration}: relevance weights over {len(self.weights.weights)} clusters: photo counts "
                f"{self.weights.photo_counts.tolist()}, weights {np.round(self.weights.weights, 2).tolist()}")  # fmt: skip

    def draw_regions(self, *, seed: int, iteration: int, batch_size: int) -> IntArray | None:
        if self.weights is None or self.cfg.use not in ("sample", "both"):
            return None
        return weighted_batch(self.weights, seed=seed, iteration=iteration, batch_size=batch_size)

    def loss(self, batch: StepBatch) -> ObjectiveOutput:
        n = len(batch.regions)
        w = (
            torch.ones(n)
            if self.weights is None
            else torch.from_numpy(self.weights.region_weights()[batch.regions]).float()
        )
        out = self.loss_fn(batch.region_emb, batch.labels, batch.neutral, w)
        return ObjectiveOutput(out.loss)

    def state_dict(self) -> dict[str, Any]:
        if self.weights is None:
            return {"refreshed_at": self.refreshed_at}
        cw = self.weights
        return {"refreshed_at": self.refreshed_at, "centroids": torch.from_numpy(cw.centroids.copy()),
                "region_cluster": torch.from_numpy(cw.region_cluster.copy()),
                "photo_counts": torch.from_numpy(cw.photo_counts.copy()), "weights": torch.from_numpy(cw.weights.copy())}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshed_at = int(state.get("refreshed_at", -1))
        if "weights" not in state:
            self.weights = None
            return
        self.weights = ClusterWeights(
            state["centroids"].cpu().numpy(), state["region_cluster"].cpu().numpy().astype(np.int64),
            state["photo_counts"].cpu().numpy().astype(np.int64), state["weights"].cpu().numpy().astype(np.float64),
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        if self.weights is None:
            return {}
        return {"cluster_photo_counts": self.weights.photo_counts.tolist(),
                "cluster_weights": [round(float(w), 4) for w in self.weights.weights]}  # fmt: skip
