"""What the training loop optimises: objectives behind one interface (`base.Objective`).

- `RegionMS` (earthloc_ms): EarthLoc's neutral-aware multi-similarity loss over the region views;
- `PhotoPairs` (photo_pairs): AstroLoc's astronaut photos against the batch's regions;
- `WeightedClusters` (weighted_clusters): AstroLoc's region loss weighted by cluster relevance.

params `astroloc.losses` switches each on, `astroloc.weights` scales it; the total loss is
the weighted sum in the order above (`OBJECTIVE_ORDER`)."""

from __future__ import annotations

from pathlib import Path

from earthloc.astroloc import AstroLocConfig
from earthloc.data import TrainingRegions
from earthloc.loss import LossConfig
from earthloc.objectives.base import Objective, ObjectiveOutput, StepBatch
from earthloc.objectives.clusters import WeightedClusters
from earthloc.objectives.photos import PhotoPairs, PhotoPool, photo_pool
from earthloc.objectives.regions import RegionMS
from pipeline.errors import InputError

# The order of the terms in the sum (floating-point addition is not associative: a
# different order gives different weights in the last bits).
OBJECTIVE_ORDER = ("earthloc_ms", "weighted_clusters", "photo_pairs")


def build_objectives(acfg: AstroLocConfig, loss: LossConfig, regions: TrainingRegions, tiles_root: Path,
                     image_size: int) -> list[Objective]:  # fmt: skip
    """The switched-on objectives of params `astroloc`, in `OBJECTIVE_ORDER`; photos read once for all."""
    sw = acfg.losses
    pool: PhotoPool | None = None
    if sw.needs_photos:
        pool = photo_pool(tiles_root, Path(acfg.pairs), Path(acfg.neutral), regions)
        if not len(pool):
            raise InputError("astroloc: no training photo: fetch the photos of an area outside every evaluation set "
                             "(fetch.aois) and rerun the pairs stage")  # fmt: skip
    out: list[Objective] = []
    if sw.earthloc_ms:
        out.append(RegionMS(loss, acfg.weight("earthloc_ms")))
    if sw.weighted_clusters:
        assert pool is not None
        out.append(
            WeightedClusters(pool, loss, acfg.clusters, image_size=image_size, weight=acfg.weight("weighted_clusters"))
        )
    if sw.photo_pairs:
        assert pool is not None
        out.append(PhotoPairs(pool, regions, acfg.photo_loss, photos_per_batch=acfg.photos_per_batch,
                              image_size=image_size, weight=acfg.weight("photo_pairs")))  # fmt: skip
    return out


__all__ = ["OBJECTIVE_ORDER", "Objective", "ObjectiveOutput", "PhotoPairs", "PhotoPool", "RegionMS", "StepBatch",
           "WeightedClusters", "build_objectives", "photo_pool"]  # fmt: skip
