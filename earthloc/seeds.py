"""Random streams of the training: every random draw is a pure function of (seed, stream, iteration).

Each consumer draws from its own stream, `np.random.default_rng([seed, STREAM_X, iteration])`
or a torch.Generator seeded with `derived_seed(seed, STREAM_X, iteration)`, so no two
consumers share random numbers and none depends on how many numbers another one drew.
That is what makes a resumed run (or a run on more DDP ranks) draw exactly what an
uninterrupted one draws: the data order lives in no iterator. The numbers are part of
the results: changing one changes every run's weights, so they live once, with the rest
of the data schema, in `pipeline.schema`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def derived_seed(seed: int, stream: int, iteration: int) -> int:
    """A 63-bit seed for (seed, stream, iteration), for generators that take one integer."""
    return int(np.random.SeedSequence([seed, stream, iteration]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators and make cuDNN deterministic.

    torch's global generator then fixes the initial weights (`build_model` is its first user)."""
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
    """Restore what `rng_state` recorded."""
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


__all__ = ["derived_seed", "rng_state", "seed_everything", "set_rng_state"]
