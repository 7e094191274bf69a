"""The evaluation's picture: a grid of queries with their top predictions framed green
(overlaps the query) or red, each prediction turned by its predicted angle so it should
look like the query (as upstream's preds_* images do, in one PNG per set).

Fonts: DejaVu Sans from matplotlib's bundled fonts (no system font path)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pipeline.io import atomic_path

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageFont as PILImageFont

GREEN = (46, 160, 67)
RED = (207, 34, 46)
GREY = (120, 120, 120)


@dataclass(frozen=True)
class GridRow:
    """One query and its predictions (already limited to the ones to draw)."""

    query_path: Path
    query_label: str
    pred_paths: Sequence[Path]
    pred_angles: Sequence[int]  # counter-clockwise degrees applied to the DB image
    pred_labels: Sequence[str]
    pred_positive: Sequence[bool]


def pick_queries(num_queries: int, count: int) -> list[int]:
    """`count` query indices spread evenly over the set (all of them if fewer)."""
    if num_queries <= 0 or count <= 0:
        return []
    if num_queries <= count:
        return list(range(num_queries))
    return sorted({int(i) for i in np.linspace(0, num_queries - 1, count).round()})


def _font(size: int) -> PILImageFont.FreeTypeFont:
    import matplotlib
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        path = str(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True))
    except Exception:  # findfont can raise on a broken font cache; the bundled file is always there
        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return ImageFont.truetype(path, size)


def _thumb(path: Path, cell: int, angle: int = 0) -> PILImage.Image:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (cell, cell))
        img = im.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((cell, cell), Image.Resampling.BILINEAR)
    if angle % 360:
        # PIL's rotate is counter-clockwise, like torch.rot90 over (H, W): the same turn
        # the embedding applied to the DB image.
        img = img.transpose(
            {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}[
                angle % 360
            ]
        )
    return img


def render_grid(dest: str | os.PathLike[str], rows: Sequence[GridRow], title: str, cell: int = 180) -> None:
    """Write the PNG atomically: one row per query, query first (blue frame), then its
    predictions, each with a caption under it."""
    from PIL import Image, ImageDraw

    ncols = 1 + max((len(r.pred_paths) for r in rows), default=0)
    titles = title.split("\n")
    pad, frame, caption, head = 8, 6, 34, 14 + 20 * len(titles)
    w = pad + ncols * (cell + pad)
    h = head + max(1, len(rows)) * (cell + caption + pad) + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    f_title, f_cap = _font(16), _font(11)
    for li, line in enumerate(titles):
        draw.text((pad, 8 + 20 * li), line, fill=(0, 0, 0), font=f_title)
    inner = cell - 2 * frame
    for ri, row in enumerate(rows):
        y = head + ri * (cell + caption + pad)
        cells = [(row.query_path, 0, row.query_label, (40, 90, 200))]
        cells += [
            (p, a, lab, GREEN if ok else RED)
            for p, a, lab, ok in zip(row.pred_paths, row.pred_angles, row.pred_labels, row.pred_positive, strict=True)
        ]
        for ci, (path, angle, label, color) in enumerate(cells):
            x = pad + ci * (cell + pad)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=color)
            canvas.paste(_thumb(Path(path), inner, max(0, int(angle))), (x + frame, y + frame))
            for li, line in enumerate(label.split("\n")[:2]):
                draw.text((x, y + cell + 2 + 13 * li), line, fill=(0, 0, 0), font=f_cap)
    with atomic_path(dest) as tmp:
        canvas.save(tmp, format="PNG", optimize=True)


def as_bool_list(a: npt.ArrayLike) -> list[bool]:
    return [bool(v) for v in np.asarray(a).ravel()]
