"""Shared helpers of the retrieval/evaluate tests: a tiny model with the model contract
and tiny evaluation sets written to disk."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """(B, 3, S, S) -> (B, 32) L2-normalised, rotation-sensitive (keeps a 4x4 spatial
    layout before the head), deterministic (seeded init)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1)
        return F.normalize(self.fc(y), dim=1)


# -- a tiny evaluation set on disk -------------------------------------------------------------
import math  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.geo.names import db_relpath, query_filename  # noqa: E402
from pipeline.geo.regions import describe_regions  # noqa: E402
from pipeline.synthetic.world import render_tile  # noqa: E402

CORNERS = ["ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon"]


@dataclass(frozen=True)
class TinySet:
    set_dir: Path
    tiles_root: Path
    regions: pd.DataFrame  # described regions, db_index order
    query_region: list[int]  # db_index each query was cut from
    query_angle: list[int]  # CCW turn applied to make the query (its ORIENTATION is -angle mod 360)


def render_region(zoom: int, row: int, col: int, tile_px: int = 32, year: int = 2021) -> np.ndarray:
    """A region's 4x4-tile mosaic from the synthetic world, tile_px per tile."""
    rows = [
        np.concatenate([render_tile(zoom, col + j, row + i, year, size=tile_px) for j in range(4)], axis=1)
        for i in range(4)
    ]
    return np.concatenate(rows, axis=0)


def make_tiny_set(
    root: Path,
    n_side: int = 3,
    zoom: int = 9,
    row0: int = 196,
    col0: int = 112,
    queries: tuple[tuple[int, int], ...] = ((0, 90), (4, 0), (7, 270), (8, 180)),
    name: str = "tiny",
) -> TinySet:
    """n_side x n_side regions at stride 4 (no overlap) near Texas; each query is one
    region's mosaic turned counter-clockwise by its angle, so its positive is that region."""
    tiles_root = root / "tiles"
    set_dir = root / "data" / "evalsets" / name
    set_dir.mkdir(parents=True, exist_ok=True)
    grid = pd.DataFrame(
        [(zoom, row0 + 4 * i, col0 + 4 * j) for i in range(n_side) for j in range(n_side)],
        columns=["zoom", "row", "col"],
    )
    regions, _ = describe_regions(grid)
    paths, images = [], []
    for r in regions.itertuples(index=False):
        rel = db_relpath(
            [getattr(r, c) for c in CORNERS], r.region_id, r.zoom, 2021, r.center_lat, r.center_lon, r.area_km2
        )
        img = render_region(r.zoom, r.row, r.col)
        (tiles_root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tiles_root / rel, quality=95)
        paths.append(rel)
        images.append(img)
    database = pd.DataFrame(
        {
            "db_index": np.arange(len(regions)),
            "region_id": regions["region_id"],
            "zoom": regions["zoom"],
            "path": paths,
            "center_lat": regions["center_lat"],
            "center_lon": regions["center_lon"],
        }
    )
    qrows = []
    (tiles_root / "queries").mkdir(parents=True, exist_ok=True)
    for qi, (db_i, angle) in enumerate(queries):
        qid = f"ISS001-E-{1000 + qi}"
        reg = regions.iloc[db_i]
        # nadir: a little off the footprint centre, as an oblique photo's would be
        nadir = (round(reg["center_lat"] + 0.3, 1), round(reg["center_lon"] - 0.2, 1))
        # The query is the north-up mosaic turned CCW by `angle`: its top faces bearing `angle`,
        # so north lies at -angle clockwise from its up: NASA's ORIENTATION = -angle mod 360.
        orientation = float((-angle) % 360)
        fname = query_filename(
            [reg[c] for c in CORNERS], qid, "20210701", nadir[0], nadir[1], reg["area_km2"], f"{orientation:.1f}"
        )
        Image.fromarray(np.rot90(images[db_i], k=angle // 90)).save(tiles_root / "queries" / fname, quality=95)
        qrows.append(
            {
                "query_index": qi,
                "query_id": qid,
                "filename": fname,
                "nadir_lat": nadir[0],
                "nadir_lon": nadir[1],
                "num_positives": 1,
                "orientation": orientation,
            }
        )
    pd.DataFrame(qrows).to_csv(set_dir / "queries.csv", index=False)
    database.to_csv(set_dir / "database.csv", index=False)
    pd.DataFrame(
        {
            "query_index": np.arange(len(queries), dtype=np.int64),
            "db_index": np.array([q[0] for q in queries], dtype=np.int64),
            "iou": np.ones(len(queries)),
        }
    ).to_parquet(set_dir / "positives.parquet", index=False)
    return TinySet(set_dir, tiles_root, regions, [q[0] for q in queries], [q[1] for q in queries])


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A small real EarthLoc model (resnet18, 64 px, 64-D) saved as a checkpoint."""
    import torch

    from earthloc.model import ModelConfig, build_model, save_checkpoint

    cfg = ModelConfig(
        backbone="resnet18", image_size=64, descriptor_dim=64, mix_depth=1, out_rows=4, frozen_stages=(), weights=None
    )
    torch.manual_seed(seed)
    save_checkpoint(path, build_model(cfg), cfg)
    return path


_ = math  # keep the import list stable for readers
