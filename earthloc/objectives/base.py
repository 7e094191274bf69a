"""The interface between the training loop and what it optimises.

The loop (earthloc/trainer.py) owns everything every objective needs the same way: data,
segments, DDP, checkpoints, validation, the best model and dvclive. An objective owns only
what makes it different:

- `loss(batch)`: its term of the total loss on the global batch's descriptors;
- optionally, which regions a batch holds (`draw_regions`), extra photos with one positive
  region each (`draw_photos`, `photo_images`), a periodic `refresh` under the current
  weights (every `refresh_every` iterations, from iteration 0), and the `state_dict` a
  resumed run needs to continue bit-identically.

Every draw an objective makes is a pure function of (seed, iteration) (earthloc/seeds.py),
so segments, resume and DDP need nothing more from it. A new training signal is a new
subclass, not a new loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from earthloc.data import TrainingRegions
from earthloc.embedding import EmbedContext

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StepBatch:
    """The global batch of one iteration, as every objective's loss sees it.

    `regions` (R,) are training-region indices: the B regions drawn for the iteration, then
    one positive region per photo; `region_emb` (R*Y, D) holds their Y year views region by
    region (`labels` (R*Y,) = the view's position in `regions`); `photo_emb` (P, D) the photos'."""

    iteration: int
    regions: IntArray
    photos: IntArray
    region_emb: torch.Tensor
    photo_emb: torch.Tensor
    labels: torch.Tensor
    neutral: torch.Tensor  # (R, R) bool: pairs of batch regions whose footprints overlap


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # logged as train/<key>


class Objective(ABC):
    """One term of the training loss, `weight * loss(batch)`."""

    name: ClassVar[str]
    draws_photos: ClassVar[bool] = False  # True: `draw_photos` and `photo_images` are implemented

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    @property
    def refresh_every(self) -> int:
        """Iterations between `refresh` calls (0: never). A segment never spans a refresh."""
        return 0

    def refresh(
        self, model: torch.nn.Module, regions: TrainingRegions, ctx: EmbedContext, iteration: int
    ) -> str | None:
        """Recompute what the objective derives from the current weights; a line to print, or None."""
        return None

    def draw_regions(self, *, seed: int, iteration: int, batch_size: int) -> IntArray | None:
        """The B regions of `iteration`, or None to leave the draw to the loop's clustered batches."""
        return None

    def draw_photos(self, *, seed: int, iteration: int) -> tuple[IntArray, IntArray] | None:
        """(photo indices (P,), one positive training-region index per photo (P,)), or None."""
        return None

    def photo_images(self, photos: IntArray) -> torch.Tensor:
        """(P, 3, S, S) uint8 images of the given photos (objectives that draw photos)."""
        raise NotImplementedError(f"{self.name} draws no photos")

    @abstractmethod
    def loss(self, batch: StepBatch) -> ObjectiveOutput: ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (tensors and plain values: torch.load(weights_only=True))."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        """Facts for the run's summary (JSON-serialisable)."""
        return {}
