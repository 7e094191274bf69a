"""Image files as the model sees them, decoded one way for training and evaluation.

`load_rgb` is the one decoder: the shorter side is resized to the target side (bilinear,
antialiased when shrinking), the centre square is cropped, and the result is (S, S, 3)
uint8 RGB. Region images are square mosaics, for which the crop is a no-op, so training
and evaluation see the same pixels of a region. JPEG draft mode lets libjpeg decode at
1/2, 1/4 or 1/8 scale while staying at least as large as needed (a 1024² mosaic for
S = 320 decodes at 512²), which skips most of the IDCT work (benchmarks/bench_input.py);
the final resize then starts from a smaller but still larger image.

Normalisation lives in `earthloc.augment` (`to_float`, `normalize`): training applies it
on the device after augmentation, `load_model_input` applies it here to one image, so an
image of the evaluation set and the same image in a training batch become one tensor.

A missing file or one that does not decode raises an `InputError` naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import Dataset

from earthloc.augment import normalize, to_float
from pipeline.errors import InputError

Fit = Literal["crop", "stretch"]


def load_rgb(
    path: str | os.PathLike[str], size: int, *, draft: bool = True, fit: Fit = "crop"
) -> npt.NDArray[np.uint8]:
    """(size, size, 3) uint8 RGB of an image file, always RGB (grey and alpha dropped).

    fit="crop": shorter side resized to `size`, centre square cropped (what retrieval uses,
    so a photo keeps its aspect ratio). fit="stretch": both sides resized to `size` (what
    AstroLoc's photo objective is trained with). The two agree on square images.
    With `draft`, a JPEG is decoded at the smallest 1/1, 1/2, 1/4 or 1/8 scale that is
    still at least the resized size on both sides, so the resize only downsamples."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            target = _resized_size(w, h, size, fit, rounding=math.ceil)
            if draft:  # a no-op for formats without DCT scaling
                im.draft("RGB", target)
            rgb = im.convert("RGB")
        w, h = rgb.size
        nw, nh = _resized_size(w, h, size, fit, rounding=round)
        if (nw, nh) != (w, h):
            rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)  # filters over the source footprint
        if (nw, nh) != (size, size):
            left, top = (nw - size) // 2, (nh - size) // 2
            rgb = rgb.crop((left, top, left + size, top + size))
        return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data...
        raise InputError(f"{path}: not a readable image ({exc})") from exc


def _resized_size(w: int, h: int, size: int, fit: Fit, *, rounding: Callable[[float], int]) -> tuple[int, int]:
    """The size a w x h image is resized to before the centre crop. `rounding` is math.ceil
    for the draft request (never smaller than needed) and round for the resize itself."""
    if fit == "stretch":
        return size, size
    scale = size / min(w, h)
    return max(size, rounding(w * scale)), max(size, rounding(h * scale))


def to_chw(rgb: npt.NDArray[np.uint8]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def load_model_input(path: str | os.PathLike[str], image_size: int) -> torch.Tensor:
    """(3, S, S) float, ImageNet-normalised: the model's input for one image file."""
    return normalize(to_float(to_chw(load_rgb(path, image_size))))


class ImageFiles(Dataset[torch.Tensor]):
    """Images from a list of paths, each as `load_model_input` returns it."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], image_size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_model_input(self.paths[i], self.image_size)


def check_images_exist(paths: Sequence[str | os.PathLike[str]], what: str) -> None:
    """One clear error naming the first missing file (and how many are missing), before
    any DataLoader worker trips over it with a traceback."""
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{what}: image not found: {missing[0]}{more}; run the fetch stage first")
