"""Descriptors of an image set at every test-time rotation (earthloc.retrieval.protocol).

Each image is decoded once and all its rotations are embedded from the same batch; a
database too large for RAM is written to a `.npy` memmap as it is embedded."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset

from earthloc.images import ImageFiles
from earthloc.retrieval.protocol import ROTATIONS

FloatArray = npt.NDArray[np.float32]


def rotate_batch(x: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotate (B, C, S, S) counter-clockwise by a multiple of 90° (exact, no resampling)."""
    if angle % 90:
        raise ValueError(f"rotation {angle} is not a multiple of 90°")
    k = (angle // 90) % 4
    return x if k == 0 else torch.rot90(x, k, dims=(2, 3))


class DescriptorMemo:
    """Descriptors one process has already computed, per network, image file and rotation.

    The evaluate stage scores several sets whose databases and queries overlap (the demo
    set's 1,906 regions lie inside the lost-in-space set's database, and both sets share
    their queries), with the model and several untrained networks. Embedding dominates its
    time, and an image's descriptor under one network does not depend on the set it is in,
    so each (network, file, rotation) is embedded once. `network` must name the weights
    exactly (a checkpoint path, an init seed): two networks under one name would mix."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int, str], npt.NDArray[np.float32]] = {}

    def get(self, network: str, angle: int, path: str) -> npt.NDArray[np.float32] | None:
        return self._rows.get((network, angle, path))

    def put(self, network: str, angle: int, path: str, desc: npt.NDArray[np.float32]) -> None:
        self._rows[(network, angle, path)] = desc

    def __len__(self) -> int:
        return len(self._rows)


def embed_memo(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    memo: DescriptorMemo,
    network: str,
    *,
    rotations: Sequence[int] = ROTATIONS,
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> FloatArray:
    """`embed` of image files through `memo`: only images without a remembered descriptor at
    every rotation are decoded and embedded; the result is the same (R, N, D) layout."""
    rotations = tuple(int(r) for r in rotations)
    keys = [os.fspath(p) for p in paths]
    todo = [i for i, key in enumerate(keys) if any(memo.get(network, a, key) is None for a in rotations)]
    fresh = embed(model, [paths[i] for i in todo], rotations=rotations, **kwargs) if todo else None
    if fresh is not None:
        for j, i in enumerate(todo):
            for ri, angle in enumerate(rotations):
                memo.put(network, angle, keys[i], fresh[ri, j].copy())
    if not keys:
        return embed(model, [], rotations=rotations, out=out, **kwargs)
    dim = len(cast(npt.NDArray[np.float32], memo.get(network, rotations[0], keys[0])))
    result = _allocate((len(rotations), len(keys), dim), out)
    for ri, angle in enumerate(rotations):
        result[ri] = np.stack([cast(npt.NDArray[np.float32], memo.get(network, angle, k)) for k in keys])
    if isinstance(result, np.memmap):
        result.flush()
    return result


def embed(
    model: torch.nn.Module,
    images: Dataset[torch.Tensor] | Sequence[str | os.PathLike[str]],
    *,
    image_size: int,
    batch_size: int,
    num_workers: int,
    rotations: Sequence[int] = ROTATIONS,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FloatArray:
    """Descriptors of every image at every rotation: (len(rotations), N, D) float32.

    Each image is decoded once and its rotations embedded from the same batch. With `out`
    the array is a numpy memmap at that path (`.npy` format), so a world-size database
    does not have to fit in RAM while embedding. `progress(n)` is called after each batch
    with the number of images done."""
    dataset = images if isinstance(images, Dataset) else ImageFiles(list(images), image_size)
    n = len(dataset)  # type: ignore[arg-type]
    rotations = tuple(int(r) for r in rotations)
    if not rotations:
        raise ValueError("no rotations given")
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=False, pin_memory=False,
    )  # fmt: skip
    model = model.eval().to(device)
    result: FloatArray | None = None
    done = 0
    amp = torch.autocast("cpu" if str(device) == "cpu" else "cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), amp:
        for batch in loader:
            batch = batch.to(device)
            if batch.shape[-1] != batch.shape[-2] and any(r % 180 for r in rotations):
                raise ValueError("rotations by 90° need square images")
            for ri, angle in enumerate(rotations):
                desc = model(rotate_batch(batch, angle)).float().cpu().numpy()
                if result is None:
                    result = _allocate((len(rotations), n, desc.shape[1]), out)
                result[ri, done : done + len(batch)] = desc
            done += len(batch)
            if progress is not None:
                progress(done)
    if result is None:  # empty dataset: the dimension is unknown, ask the model
        dim = _output_dim(model, image_size, device)
        result = _allocate((len(rotations), 0, dim), out)
    if isinstance(result, np.memmap):
        result.flush()
    return result


def _allocate(shape: tuple[int, int, int], out: str | os.PathLike[str] | None) -> FloatArray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)


def _output_dim(model: torch.nn.Module, image_size: int, device: str | torch.device) -> int:
    with torch.inference_mode():
        return int(model(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
