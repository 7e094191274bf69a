"""A tiny tile store, grid and validation set for the training tests (imported as `train_fixtures`).

Images are small JPEGs written straight at the store's paths (no HTTP): each region gets a
pattern of coloured blocks drawn from its own seed, and each year adds its own noise and
colour shift, so the four years of a region look alike and different regions do not."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.geo.names import db_relpath
from pipeline.geo.regions import describe_regions
from pipeline.io import write_geoparquet

YEARS = (2018, 2019, 2020, 2021)
CORNERS = ["ll_lat", "ll_lon", "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon"]


def texas_block() -> list[tuple[int, int, int]]:
    """3x3 stride-2 zoom-9 regions near (30, -95) and 4x4 zoom-10 regions inside/around them: 25 regions."""
    z9 = [(9, 210 + 2 * i, 120 + 2 * j) for i in range(3) for j in range(3)]
    z10 = [(10, 422 + 2 * i, 242 + 2 * j) for i in range(4) for j in range(4)]
    return z9 + z10


def region_image(index: int, year_index: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + index)
    blocks = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
    img = np.kron(blocks, np.ones((size // 4, size // 4, 1)))
    yr = np.random.default_rng(10_000 * (year_index + 1) + index)
    img = img * (0.85 + 0.3 * yr.random()) + yr.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_store(root: Path, regions: list[tuple[int, int, int]] | None = None, *, size: int = 64,
               years: tuple[int, ...] = YEARS, missing: set[tuple[int, int]] | None = None) -> dict[str, Path]:  # fmt: skip
    """Write grid, tiles (JPEGs + manifests) and a validation set under `root`.

    `missing`: (region position, year) pairs whose manifest row says failed and whose file is absent."""
    regions = regions if regions is not None else texas_block()
    df, fps = describe_regions(pd.DataFrame(regions, columns=["zoom", "row", "col"]))
    from pipeline.geo.area import area_km2

    df["area_km2"] = area_km2(fps) if "area_km2" not in df else df["area_km2"]
    gdf = gpd.GeoDataFrame(df, geometry=list(fps), crs="EPSG:4326")
    grid_path = root / "grid" / "regions.parquet"
    write_geoparquet(gdf, grid_path)
    tiles = root / "tiles"
    rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    missing = missing or set()
    for i, r in enumerate(df.itertuples(index=False)):
        for y, year in enumerate(years):
            rel = db_relpath(
                [getattr(r, c) for c in CORNERS], r.region_id, int(r.zoom), year, r.center_lat, r.center_lon, r.area_km2
            )
            status, sha = "failed", None
            if (i, year) not in missing:
                data = jpeg_bytes(region_image(i, y, size))
                (tiles / rel).parent.mkdir(parents=True, exist_ok=True)
                (tiles / rel).write_bytes(data)
                status, sha = "ok", hashlib.sha256(data).hexdigest()
            rows.setdefault((year, int(r.zoom)), []).append(
                {
                    "region_id": r.region_id,
                    "year": year,
                    "zoom": int(r.zoom),
                    "path": rel,
                    "status": status,
                    "sha256": sha,
                }
            )
    (tiles / "manifests").mkdir(parents=True, exist_ok=True)
    for (year, zoom), rr in rows.items():
        pd.DataFrame(rr).to_parquet(tiles / "manifests" / f"{year}_{zoom:02d}.parquet", index=False)
    # Validation set: the 2021 images of every region as the database; as queries, the
    # 2020 images of the first 8 regions (their positive: the same region's 2021 image).
    val = root / "val"
    val.mkdir(parents=True, exist_ok=True)
    man21 = pd.concat([pd.DataFrame(v) for (yr, _), v in rows.items() if yr == 2021], ignore_index=True)
    man21 = man21.set_index("region_id").loc[df["region_id"]].reset_index()
    db = pd.DataFrame(
        {"db_index": range(len(df)), "region_id": df["region_id"], "zoom": df["zoom"], "path": man21["path"]}
    )
    db.to_csv(val / "database.csv", index=False)
    q_rows, pos = [], []
    (tiles / "queries").mkdir(parents=True, exist_ok=True)
    for qi in range(min(8, len(df))):
        name = f"query_{qi}.jpg"
        (tiles / "queries" / name).write_bytes(jpeg_bytes(region_image(qi, 2, size)))
        q_rows.append({"query_index": qi, "query_id": f"Q-{qi}", "filename": name})
        pos.append({"query_index": qi, "db_index": qi, "iou": 1.0})
    pd.DataFrame(q_rows).to_csv(val / "queries.csv", index=False)
    pd.DataFrame(pos).to_parquet(val / "positives.parquet", index=False)
    return {"tiles": tiles, "grid": grid_path, "val": val}


def tiny_params(val_set: Path | None, **train: Any) -> dict[str, Any]:
    """params.yaml sections for a model and batch small enough for tests on 2 loaded cores."""
    t = dict(
        regions_per_batch=4, iterations=6, lr=1e-3, load_size=40, seed=0, recluster_every=3, n_clusters=3,
        kmeans_niter=5, num_workers=0, embed_batch_size=16, threads=1, checkpoint_every=2,
        val_every=3 if val_set is not None else 0, val_set=str(val_set) if val_set is not None else "none",
        val_batch_size=16, val_num_workers=0, device="cpu",
    )  # fmt: skip
    t.update(train)
    return {
        "model": {
            "backbone": "resnet18",
            "image_size": 32,
            "descriptor_dim": 32,
            "mix_depth": 1,
            "mlp_ratio": 1.0,
            "out_rows": 4,
            "weights": None,
        },  # fmt: skip
        "augment": {},
        "loss": {},
        "train": t,
    }


def add_photos(store: dict[str, Path], n_photos: int = 10) -> dict[str, Path]:
    """Simulated astronaut photos and their pairs tables beside a `make_store` store.

    Photo k looks like region k's 2019 image turned clockwise by k quarter turns (its name
    says so); its positive is region k, its neutral region k + 1."""
    from earthloc.data import training_regions

    root = store["grid"].parent.parent
    regions = training_regions(store["tiles"], store["grid"])
    rows, neutral = [], []
    for k in range(n_photos):
        name = f"@0@0@0@0@0@0@0@0@P-{k}@20200101@0.0@0.0@100@{90.0 * k:.1f}@.jpg"
        img = np.rot90(region_image(k, 1, 64), -k, axes=(0, 1))
        Image.fromarray(np.ascontiguousarray(img)).save(store["tiles"] / "queries" / name, quality=90)
        rid = str(regions.region_ids[k])
        rows.append({"query_id": f"P-{k}", "filename": name, "region_id": rid, "zoom": int(regions.zooms[k]),
                     "iou": 0.5, "intersection_km2": 1.0, "path": "unused"})  # fmt: skip
        neutral.append({"query_id": f"P-{k}", "region_id": str(regions.region_ids[k + 1]), "zoom": 9, "iou": 0.05})
    pairs_dir = root / "pairs"
    pairs_dir.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(pairs_dir / "pairs.parquet", index=False)
    pd.DataFrame(neutral).to_parquet(pairs_dir / "neutral.parquet", index=False)
    return {**store, "pairs": pairs_dir / "pairs.parquet", "neutral": pairs_dir / "neutral.parquet"}


def astroloc_section(store: dict[str, Path], losses: dict[str, bool], **clusters: Any) -> dict[str, Any]:
    """A params `astroloc` section for the tiny store: 3 photos per batch, 3 clusters refreshed every 2 iterations."""
    return {
        "losses": losses, "photos_per_batch": 3, "pairs": str(store["pairs"]), "neutral": str(store["neutral"]),
        "clusters": {"n_clusters": 3, "niter": 5, "refresh_every": 2, "smoothing": 1.0, **clusters},
    }  # fmt: skip
