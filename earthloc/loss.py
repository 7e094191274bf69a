"""Neutral-aware multi-similarity loss (paper Eq. 3; docs/upstream.md §6).

A batch holds R regions x Y years; the Y views of a region share a label and are mutual
positives. Two different regions that overlap on the ground (`neutral[i, j]` True, e.g. a
zoom-9 region and a zoom-10 region inside it) are *neutral*: neither positive nor negative.
Every other pair of different regions is a negative.

The loss is pytorch-metric-learning's MultiSimilarityLoss (cosine similarity, mean over all
N rows, rows without pairs included) fed with pairs chosen by a multi-similarity miner.
Two orders of mining and neutral filtering (`neutral_order`):

- "upstream": PML's MultiSimilarityMiner over all pairs, then mined negatives that are
  neutral are dropped. A neutral pair can still be an anchor's hardest negative, and so
  decide which positives are mined (docs/upstream.md §9.1 lists this as a bug): an overlapping
  region, which looks very similar, raises the bar and more positives pass.
- "paper" (default): neutral pairs are removed before mining, so they can be neither the
  hardest negative nor a mined negative. This is what Eq. 3 says (neutral pairs carry no
  term at all) and it keeps neutrality consistent: a pair that is not a negative does not
  act as one anywhere. "upstream" stays available to reproduce the published code.

The loss is computed in float32 even under autocast: with bf16 similarities the miner's
epsilon test (0.1) flips for pairs near the boundary (docs/upstream.md §10.4), which makes mining
depend on the precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import MultiSimilarityLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner
from torch import nn

from pipeline.errors import ConfigError
from pipeline.params import build_config

NEUTRAL_ORDERS = ("paper", "upstream")
OVERLAP_RULES = ("neutral", "positive")
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # (a1, p, a2, n)


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    n_pos: int  # positive pairs that entered the loss
    n_neg: int  # negative pairs that entered the loss
    # Upstream's logged "batch_acc": 100 * (1 - distinct anchors of positive pairs / N).
    # A mining-difficulty statistic (share of images with no hard positive), not an accuracy.
    batch_acc: float


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 1.0  # positive-pair temperature (PML default 2; upstream 1)
    beta: float = 50.0  # negative-pair temperature
    base: float = 0.0  # lambda, the similarity margin (PML default 0.5; upstream 0)
    epsilon: float = 0.1  # miner margin
    neutral_order: str = "paper"  # "paper" or "upstream", see the module docstring
    mining: bool = True  # False: every positive and every non-neutral negative pair
    # Two different regions whose footprints overlap: "neutral" (paper Eq. 3: no term) or
    # "positive" (pulled together like the years of one region). "positive" trains the
    # evaluation's own rule, under which every region a photo overlaps is a hit.
    overlap: str = "neutral"

    def __post_init__(self) -> None:
        if self.neutral_order not in NEUTRAL_ORDERS:
            raise ConfigError(f"loss.neutral_order {self.neutral_order!r}: expected one of {NEUTRAL_ORDERS}")
        if self.overlap not in OVERLAP_RULES:
            raise ConfigError(f"loss.overlap {self.overlap!r}: expected one of {OVERLAP_RULES}")
        if self.overlap == "positive" and self.neutral_order == "upstream":
            raise ConfigError("loss.overlap: positive needs neutral_order: paper (upstream's miner sees labels only)")
        if self.alpha <= 0 or self.beta <= 0 or self.epsilon < 0:
            raise ConfigError("loss: alpha and beta must be > 0 and epsilon >= 0")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> LossConfig:
        return build_config(cls, sec, "loss")


def pair_masks(
    labels: torch.Tensor, neutral: torch.Tensor, overlap: str = "neutral"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive, negative, neutral) boolean (N, N) masks over images.

    positive: same label, not the image itself. neutral: different labels whose regions
    overlap (`neutral` indexed by label id). negative: different labels, not neutral.
    With overlap="positive" the overlapping pairs are positives instead, and none is neutral."""
    n = labels.numel()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    neutral_pairs = neutral.to(device=labels.device, dtype=torch.bool)[labels[:, None], labels[None, :]] & ~same
    if overlap == "positive":
        return (same & ~eye) | neutral_pairs, ~same & ~neutral_pairs, torch.zeros_like(neutral_pairs)
    return same & ~eye, ~same & ~neutral_pairs, neutral_pairs


def mine_masked(
    sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-similarity mining restricted to the pairs in `pos` and `neg` (boolean masks).

    Same rule as PML's MultiSimilarityMiner on a similarity, but pairs outside both masks
    (neutral ones) are invisible: they are never the hardest negative. For anchor a, keep
    positive p if S_ap - eps < max_n S_an and negative n if S_an + eps > min_p S_ap; an
    anchor without a positive or without a negative keeps nothing."""
    hardest_neg = sim.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
    hardest_pos = sim.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
    return pos & (sim - epsilon < hardest_neg), neg & (sim + epsilon > hardest_pos)


def _pairs(pos: torch.Tensor, neg: torch.Tensor) -> Pairs:
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    return a1, p, a2, n


class NeutralAwareMSLoss(nn.Module):
    """forward(emb (N, D), labels (N,) long in [0, R), neutral (R, R) bool) -> LossOutput."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 50.0,
        base: float = 0.0,
        epsilon: float = 0.1,
        neutral_order: str = "paper",
        mining: bool = True,
        overlap: str = "neutral",
    ) -> None:
        super().__init__()
        self.cfg = LossConfig(alpha, beta, base, epsilon, neutral_order, mining, overlap)
        self.miner = MultiSimilarityMiner(epsilon=epsilon)
        self.loss_fn = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> NeutralAwareMSLoss:
        return cls(cfg.alpha, cfg.beta, cfg.base, cfg.epsilon, cfg.neutral_order, cfg.mining, cfg.overlap)

    def select_pairs(self, emb: torch.Tensor, labels: torch.Tensor, neutral: torch.Tensor) -> Pairs:
        """The (a1, p, a2, n) index tuple that enters the loss."""
        pos, neg, neutral_pairs = pair_masks(labels, neutral, self.cfg.overlap)
        if not self.cfg.mining:
            return _pairs(pos, neg)
        if self.cfg.neutral_order == "upstream":
            a1, p, a2, n = self.miner(emb, labels)
            keep = ~neutral_pairs[a2, n]
            return a1, p, a2[keep], n[keep]
        with torch.no_grad():
            unit = F.normalize(emb, dim=1)
            sim = unit @ unit.T
        return _pairs(*mine_masked(sim, pos, neg, self.cfg.epsilon))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, neutral: torch.Tensor) -> LossOutput:
        if emb.ndim != 2 or labels.shape != (emb.shape[0],):
            raise ValueError(f"expected emb (N, D) and labels (N,), got {tuple(emb.shape)} and {tuple(labels.shape)}")
        if neutral.ndim != 2 or neutral.shape[0] != neutral.shape[1]:
            raise ValueError(f"neutral must be (R, R), got {tuple(neutral.shape)}")
        labels = labels.to(device=emb.device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= neutral.shape[0]):
            raise ValueError(f"labels must lie in [0, {neutral.shape[0]}) to index the neutral matrix")
        with torch.autocast(device_type=emb.device.type, enabled=False):
            emb = emb.float()
            pairs = self.select_pairs(emb, labels, neutral)
            loss = self.loss_fn(emb, labels, pairs)
        a1, _, a2, _ = pairs
        n = max(labels.numel(), 1)
        batch_acc = 100.0 * (1.0 - torch.unique(a1).numel() / n)
        return LossOutput(loss, int(a1.numel()), int(a2.numel()), batch_acc)
