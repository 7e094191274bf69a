"""AstroLoc training on the tiny store of the training tests (tests/train_fixtures.py) plus
simulated photos: both configurations (EarthLoc and AstroLoc) and each AstroLoc loss alone
train a few iterations from the same code; photo batches and relevance weights behave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from train_fixtures import make_store, region_image, tiny_params

from earthloc.astroloc import AstroLocConfig
from earthloc.astroloc_train import north_up_turns, photo_pool, plan_photos, train_astroloc, uses_astroloc_loop
from earthloc.data import training_regions
from earthloc.model import load_model
from earthloc.train import Configs, TrainPaths
from pipeline.errors import InputError

N_PHOTOS = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training store, plus photos: photo k looks like region k's 2019 image (turned by
    k quarter turns, and its name says so), positive = region k, neutral = region k + 1."""
    root = tmp_path_factory.mktemp("astro")
    s = make_store(root)
    regions = training_regions(s["tiles"], s["grid"])
    rows, neutral = [], []
    for k in range(N_PHOTOS):
        name = f"@0@0@0@0@0@0@0@0@P-{k}@20200101@0.0@0.0@100@{90.0 * k:.1f}@.jpg"
        # Region k's image, turned clockwise by k quarter turns (north = 90k degrees clockwise from up).
        img = np.rot90(region_image(k, 1, 64), -k, axes=(0, 1))
        Image.fromarray(np.ascontiguousarray(img)).save(s["tiles"] / "queries" / name, quality=90)
        rid = str(regions.region_ids[k])
        rows.append({"query_id": f"P-{k}", "filename": name, "region_id": rid, "zoom": int(regions.zooms[k]),
                     "iou": 0.5, "intersection_km2": 1.0, "path": "unused"})
        neutral.append({"query_id": f"P-{k}", "region_id": str(regions.region_ids[k + 1]), "zoom": 9, "iou": 0.05})
    pairs_dir = root / "pairs"
    pairs_dir.mkdir()
    pd.DataFrame(rows).to_parquet(pairs_dir / "pairs.parquet", index=False)
    pd.DataFrame(neutral).to_parquet(pairs_dir / "neutral.parquet", index=False)
    s["pairs"], s["neutral"] = pairs_dir / "pairs.parquet", pairs_dir / "neutral.parquet"
    return s


def astro_params(store: dict[str, Path], losses: dict[str, bool], **train: Any) -> dict[str, Any]:
    params = tiny_params(store["val"], **{"iterations": 3, "val_every": 3, "recluster_every": 2, **train})
    params["astroloc"] = {
        "losses": losses, "photos_per_batch": 3, "pairs": str(store["pairs"]), "neutral": str(store["neutral"]),
        "clusters": {"n_clusters": 3, "niter": 5, "refresh_every": 2, "smoothing": 1.0},
    }
    return params


def paths_in(base: Path, store: dict[str, Path]) -> TrainPaths:
    return TrainPaths(store["tiles"], store["grid"], base / "models" / "model.pt", base / "ckpt", base / "live")


def test_north_up_turns() -> None:
    assert [north_up_turns(o) for o in ("0", "44.9", "45.1", "-90.0", "180", "269.4", "bad")] == [0, 0, 1, 3, 2, 3, 0]


def test_photo_pool_and_plan(store: dict[str, Path]) -> None:
    regions = training_regions(store["tiles"], store["grid"])
    pool = photo_pool(store["tiles"], store["pairs"], store["neutral"], regions)
    assert len(pool) == N_PHOTOS and pool.turns.tolist() == [k % 4 for k in range(N_PHOTOS)]
    k = int(np.flatnonzero(pool.query_ids == "P-3")[0])
    assert pool.positive_index[k].tolist() == [3] and pool.neutrals["P-3"] == {str(regions.region_ids[4])}
    photos, extra = plan_photos(pool, seed=0, iteration=5, n_photos=4)
    again = plan_photos(pool, seed=0, iteration=5, n_photos=4)
    assert np.array_equal(photos, again[0]) and np.array_equal(extra, again[1])  # pure in (seed, iteration)
    for p, r in zip(photos, extra, strict=True):  # the appended region is a positive of its photo
        assert r in pool.positive_index[p]
    # The dataset turns each photo back north-up: photo k equals region k's 2019 image again.
    from earthloc.astroloc_train import PhotoDataset

    x = PhotoDataset(pool, 64)[k].numpy().transpose(1, 2, 0).astype(float)
    assert np.abs(x - region_image(3, 1, 64)).mean() < 12  # JPEG noise only
    # Missing pairs file: a one-line error naming the stage.
    with pytest.raises(InputError, match="pairs stage"):
        photo_pool(store["tiles"], store["pairs"].parent / "none.parquet", store["neutral"], regions)


CONFIGS = {
    "earthloc": {"earthloc_ms": True, "photo_pairs": False, "weighted_clusters": False},
    "astroloc": {"earthloc_ms": False, "photo_pairs": True, "weighted_clusters": True},
    "photo_pairs": {"earthloc_ms": False, "photo_pairs": True, "weighted_clusters": False},
    "weighted_clusters": {"earthloc_ms": False, "photo_pairs": False, "weighted_clusters": True},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_configs_train_a_few_iterations(tmp_path: Path, store: dict[str, Path], name: str) -> None:
    params = astro_params(store, CONFIGS[name])
    p = paths_in(tmp_path, store)
    s = train_astroloc(Configs.from_params(params), AstroLocConfig.from_section(params["astroloc"]), p)
    assert s.iterations_done == 3 and s.final_loss is not None and np.isfinite(s.final_loss)
    assert set(s.final_components) == {k for k, v in CONFIGS[name].items() if v}
    assert s.best_r5 is not None  # validated at iteration 3
    model, cfg = load_model(p.model_out)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    if CONFIGS[name]["weighted_clusters"]:
        assert s.cluster_weights is not None and sum(s.cluster_photo_counts) == N_PHOTOS
        assert np.mean(s.cluster_weights) == pytest.approx(1.0, abs=1e-3)
    assert uses_astroloc_loop(params) == (name != "earthloc")


def test_weighted_sampling_runs(tmp_path: Path, store: dict[str, Path]) -> None:
    params = astro_params(store, CONFIGS["weighted_clusters"], val_every=0)
    params["astroloc"]["clusters"]["use"] = "both"
    s = train_astroloc(Configs.from_params(params), AstroLocConfig.from_section(params["astroloc"]), paths_in(tmp_path, store))
    assert s.iterations_done == 3 and s.best_r5 is None


def test_no_photos_is_a_clear_error(tmp_path: Path, store: dict[str, Path]) -> None:
    empty = tmp_path / "pairs.parquet"
    pd.read_parquet(store["pairs"]).iloc[:0].to_parquet(empty)
    params = astro_params(store, CONFIGS["astroloc"])
    params["astroloc"]["pairs"] = str(empty)
    with pytest.raises(InputError, match="no training photo"):
        train_astroloc(Configs.from_params(params), AstroLocConfig.from_section(params["astroloc"]), paths_in(tmp_path, store))


def test_earthloc_train_dispatches_astroloc(tmp_path: Path, store: dict[str, Path]) -> None:
    """`earthloc train` runs the AstroLoc loop when a photo loss is on (the DVC train stage's command)."""
    import yaml

    from earthloc.cli import main

    params = astro_params(store, CONFIGS["astroloc"], iterations=2, val_every=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = paths_in(tmp_path, store)
    rc = main(["train", "--params", str(tmp_path / "params.yaml"), "--tiles", str(p.tiles_root), "--grid", str(p.regions),
               "--out", str(p.model_out), "--checkpoints", str(p.checkpoints), "--live-dir", str(p.live_dir)])  # fmt: skip
    assert rc == 0 and p.model_out.is_file()
    summary = (p.checkpoints / "astroloc_summary.json").read_text()
    assert '"photo_pairs": true' in summary


def test_astroloc_run_leaves_the_earthloc_checkpoints_alone(tmp_path: Path, store: dict[str, Path]) -> None:
    """The EarthLoc loop resumes from best.pt/last.pt in the same (persisted) folder: an
    AstroLoc run in between must not replace them."""
    p = paths_in(tmp_path, store)
    p.checkpoints.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (p.checkpoints / name).write_bytes(b"earthloc")
    params = astro_params(store, CONFIGS["astroloc"], iterations=1, val_every=1)
    train_astroloc(Configs.from_params(params), AstroLocConfig.from_section(params["astroloc"]), p)
    assert (p.checkpoints / "best.pt").read_bytes() == b"earthloc" == (p.checkpoints / "last.pt").read_bytes()
    assert (p.checkpoints / "astroloc_best.pt").is_file()
