"""Reading the content of the PNG figures the stages draw: how many pixels carry a given
colour, so a test can tell that a layer (footprint, radius circle, markers) was drawn
and not only that a PNG file exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG", path
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def colour_pixels(rgb: np.ndarray, colour: str, tol: int = 12) -> int:
    """Pixels within `tol` (per channel, 0-255) of a matplotlib colour."""
    target = np.round(np.array(to_rgb(colour)) * 255).astype(np.int16)
    return int(np.all(np.abs(rgb - target) <= tol, axis=-1).sum())
