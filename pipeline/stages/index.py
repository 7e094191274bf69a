"""index stage: the fetched database embedded once, for `earthloc localize`.

Why a dedicated index stage rather than the evaluate stage's features: the evaluate stage
embeds one evaluation set's database (a POI's 5000 km disc), while localisation wants the
whole fetched database (the default AOI, or the world), embedded once and reused by
every call. The index directory holds:
  descriptors.npy  (R, N, D) float32 memmap, rotation-major like the evaluation
  index.faiss      the faiss index of `index.index` (kind flat / sq_fp16 / ivf_* / pq)
  regions.parquet  db_index, region_id, zoom, path, centre and the four corners
  meta.json        model file sha256 and config, rotations, index spec, counts
The search over it is the `earthloc localize` tool (pipeline/tools/localize.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from earthloc.images import check_images_exist
from earthloc.published import file_sha256
from earthloc.retrieval.descriptors import embed
from earthloc.retrieval.index import INDEX_FORMAT, IndexSpec, build_index, index_bytes
from earthloc.retrieval.protocol import ROTATIONS
from pipeline.errors import ConfigError, InputError
from pipeline.geo.regions import describe_regions, parse_region_id
from pipeline.io import atomic_path, write_json
from pipeline.params import build_config
from pipeline.schema import CENTER_COLUMNS, CORNER_COLUMNS, DATABASE_YEAR


@dataclass(frozen=True)
class IndexParams:
    """The `index` section of params.yaml."""

    model: str = "models/earthloc.pt"
    tiles_root: str = "tiles"
    year: int = DATABASE_YEAR
    out_dir: str = "data/index"
    batch_size: int = 16
    num_workers: int = 2
    rotations: tuple[int, ...] = ROTATIONS
    index: IndexSpec = field(default_factory=IndexSpec)
    bf16: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotations", tuple(self.rotations))
        if not self.rotations or self.rotations[0] != 0 or any(r % 90 for r in self.rotations):
            raise ConfigError("params index.rotations: multiples of 90 starting with 0")

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> IndexParams:
        kw = dict(sec)
        if "index" in kw:
            kw["index"] = IndexSpec.from_section(kw["index"])
        return build_config(cls, kw, "index")


@dataclass(frozen=True)
class IndexPaths:
    """The files the command line names for the index stage; None takes the `index` section's."""

    model: Path | None = None  # a project checkpoint or published EarthLoc weights (earthloc.published)
    out_dir: Path | None = None


def region_table(region_ids: Any, paths: Any) -> pd.DataFrame:
    """db_index, region_id, zoom, path, centre and corners of each region id."""
    ids = [str(r) for r in region_ids]
    zrc = pd.DataFrame([parse_region_id(r) for r in ids], columns=["zoom", "row", "col"])
    described, _ = describe_regions(zrc)
    out = described[["region_id", "zoom", *CENTER_COLUMNS, *CORNER_COLUMNS]].copy()
    out.insert(0, "db_index", np.arange(len(out), dtype=np.int64))
    out.insert(3, "path", [str(p) for p in paths])
    return out


def fetched_regions(tiles_root: str | os.PathLike[str], year: int) -> pd.DataFrame:
    """The regions of `year` whose images the fetch stage wrote (manifest status ok), in
    (zoom, region_id) order."""
    mdir = Path(tiles_root) / "manifests"
    files = sorted(p for p in mdir.glob(f"{year}_*.parquet") if not p.name.endswith(".tiles.parquet"))
    if not files:
        raise InputError(f"{mdir}: no {year} manifests (run the fetch stage first)")
    try:
        df = pd.concat([pd.read_parquet(f, columns=["region_id", "zoom", "path", "status"]) for f in files])
    except Exception as exc:
        raise InputError(f"{mdir}: unreadable manifest ({exc})") from exc
    df = df[df["status"] == "ok"].sort_values(["zoom", "region_id"]).drop_duplicates("region_id")
    if df.empty:
        raise InputError(f"{mdir}: no fetched {year} region images")
    return region_table(df["region_id"], df["path"])


def build_index_dir(
    model: torch.nn.Module,
    image_size: int,
    regions: pd.DataFrame,
    p: IndexParams,
    out_dir: str | os.PathLike[str],
    model_meta: dict[str, Any],
) -> dict[str, Any]:
    """Embed every region at every rotation and write the index directory."""
    import faiss

    out_dir = Path(out_dir)
    paths = [Path(p.tiles_root) / rel for rel in regions["path"]]
    check_images_exist(paths, "index database")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_desc = out_dir / ".descriptors.npy.tmp"
    desc = embed(
        model,
        paths,
        image_size=image_size,
        batch_size=p.batch_size,
        num_workers=p.num_workers,
        rotations=p.rotations,
        out=tmp_desc,
        bf16=p.bf16,
    )
    index = build_index(desc, p.index)
    del desc
    os.replace(tmp_desc, out_dir / "descriptors.npy")
    with atomic_path(out_dir / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(out_dir / "regions.parquet") as tmp:
        regions.to_parquet(tmp, index=False)
    meta = {
        "format": INDEX_FORMAT,
        "num_db": len(regions),
        "rotations": list(p.rotations),
        "index": p.index.__dict__,
        "index_bytes": index_bytes(index),
        "image_size": image_size,
        **model_meta,
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def run(config: IndexParams, paths: IndexPaths = IndexPaths()) -> dict[str, Any]:
    """Entry point of `earthloc index`: embed the fetched regions of `config.year`; the index's meta."""
    from earthloc.published import load_model  # also upstream's and torchgeo's weights

    model_path = Path(paths.model or config.model)
    out_dir = Path(paths.out_dir or config.out_dir)
    model, cfg = load_model(model_path)
    regions = fetched_regions(config.tiles_root, config.year)
    meta = build_index_dir(
        model,
        cfg.image_size,
        regions,
        config,
        out_dir,
        {"model_path": str(model_path), "model_sha256": file_sha256(model_path), "model_config": cfg.to_dict()},
    )
    print(
        f"index: {meta['num_db']} regions x {len(meta['rotations'])} rotations, {config.index.kind}, "
        f"{meta['index_bytes'] / 2**20:.1f} MiB -> {out_dir}"
    )
    return meta
