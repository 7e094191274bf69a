"""AstroLoc's photo objective: astronaut photos pulled to their matching regions (earthloc/astroloc.py).

A batch also holds P training photos, drawn with np.random.default_rng([seed, STREAM_PHOTOS,
iteration]); for each, one of its positive regions (pairs.parquet, IoU >= pairs.min_iou)
drawn uniformly is appended to the region batch, so every photo has at least one positive
among the batch's regions; the batch's other regions are its negatives unless neutral.
Photos are turned by the multiple of 90 degrees that brings north nearest to up (north
lies `orientation` degrees clockwise from up in the photo's name), leaving at most 45
degrees, the range of the regions' rotation augmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import Dataset

from earthloc.astroloc import PhotoLossConfig, PhotoPairLoss, photo_region_masks
from earthloc.data import TrainingRegions
from earthloc.images import load_rgb
from earthloc.objectives.base import IntArray, Objective, ObjectiveOutput, StepBatch
from pipeline.errors import InputError
from pipeline.geo.names import parse_filename
from pipeline.schema import STREAM_PHOTOS


@dataclass(frozen=True)
class PhotoPool:
    """The training photos: those with a positive among the training regions and an image on disk."""

    tiles_root: Path
    query_ids: npt.NDArray[np.str_]  # (Q,)
    paths: npt.NDArray[np.object_]  # (Q,) relative to tiles_root
    turns: npt.NDArray[np.int64]  # (Q,) counter-clockwise quarter turns that bring north nearest to up
    positives: dict[str, set[str]]  # query_id -> positive region ids (training regions only)
    neutrals: dict[str, set[str]]  # query_id -> neutral region ids
    positive_index: list[IntArray]  # per photo, training-region indices of its positives

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
    """Item i = photo i as (3, S, S) uint8, stretched to a square, turned north-up to the nearest 90 degrees."""

    def __init__(self, pool: PhotoPool, size: int) -> None:
        self.pool, self.size = pool, size

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> torch.Tensor:
        rgb = load_rgb(self.pool.tiles_root / str(self.pool.paths[i]), self.size, fit="stretch")
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        k = int(self.pool.turns[i])
        return torch.rot90(x, k, dims=(1, 2)).contiguous() if k else x


def plan_photos(pool: PhotoPool, *, seed: int, iteration: int, n_photos: int) -> tuple[IntArray, IntArray]:
    """(photo indices (P,), one positive training-region index per photo (P,)): pure in (seed, iteration)."""
    if not len(pool):
        raise InputError("astroloc: no training photo (pairs.parquet has none whose image and positive regions exist)")
    rng = np.random.default_rng([seed, STREAM_PHOTOS, iteration])
    photos = rng.choice(len(pool), size=n_photos, replace=len(pool) < n_photos).astype(np.int64)
    extra = np.array([rng.choice(pool.positive_index[p]) for p in photos], dtype=np.int64)
    return photos, extra


class PhotoPairs(Objective):
    """Each photo against every region view of the batch: multi-similarity with the photo as anchor."""

    name = "photo_pairs"
    draws_photos = True

    def __init__(self, pool: PhotoPool, regions: TrainingRegions, cfg: PhotoLossConfig, *, photos_per_batch: int,
                 image_size: int, weight: float = 1.0) -> None:  # fmt: skip
        super().__init__(weight)
        self.pool, self.regions, self.photos_per_batch = pool, regions, photos_per_batch
        self.dataset = PhotoDataset(pool, image_size)
        self.loss_fn = PhotoPairLoss(cfg)

    def draw_photos(self, *, seed: int, iteration: int) -> tuple[IntArray, IntArray]:
        return plan_photos(self.pool, seed=seed, iteration=iteration, n_photos=self.photos_per_batch)

    def photo_images(self, photos: IntArray) -> torch.Tensor:
        return torch.stack([self.dataset[int(p)] for p in photos])

    def loss(self, batch: StepBatch) -> ObjectiveOutput:
        rids = self.regions.region_ids[batch.regions].tolist()
        qids = self.pool.query_ids[batch.photos].tolist()
        pos, neu = photo_region_masks(qids, rids, batch.labels.cpu().numpy(), self.pool.positives, self.pool.neutrals)
        out = self.loss_fn(batch.photo_emb, batch.region_emb, pos, neu)
        return ObjectiveOutput(out.loss, {"photo_pos": float(out.n_pos)})

    def summary(self) -> dict[str, int]:
        return {"n_photos": len(self.pool)}
