"""EarthLoc's objective: the neutral-aware multi-similarity loss over the batch's region views (earthloc/loss.py)."""

from __future__ import annotations

from earthloc.loss import LossConfig, NeutralAwareMSLoss
from earthloc.objectives.base import Objective, ObjectiveOutput, StepBatch


class RegionMS(Objective):
    """All R*Y views of the batch's regions: views of one region are positives, views of
    regions with overlapping footprints neutral (or positive, `loss.overlap`), the rest negatives."""

    name = "earthloc_ms"

    def __init__(self, cfg: LossConfig, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.loss_fn = NeutralAwareMSLoss.from_config(cfg)

    def loss(self, batch: StepBatch) -> ObjectiveOutput:
        out = self.loss_fn(batch.region_emb, batch.labels, batch.neutral)
        return ObjectiveOutput(out.loss, {"mined_pos": out.n_pos, "mined_neg": out.n_neg, "batch_acc": out.batch_acc})
