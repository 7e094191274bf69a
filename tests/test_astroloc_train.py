"""AstroLoc's objectives in the training loop, on the tiny store of the training tests
(tests/train_fixtures.py) plus simulated photos: EarthLoc, AstroLoc and each AstroLoc loss
alone train a few iterations from the same loop; photo batches and relevance weights behave."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from earthloc.astroloc import ClusterConfig, ClusterWeights, relevance_weights
from earthloc.data import training_regions
from earthloc.loss import LossConfig
from earthloc.model import load_model
from earthloc.objectives.clusters import WeightedClusters
from earthloc.objectives.photos import PhotoDataset, north_up_turns, photo_pool, plan_photos
from earthloc.trainer import TrainPaths, train
from pipeline.config import training_config
from pipeline.errors import ConfigError, InputError
from train_fixtures import add_photos, astroloc_section, make_store, region_image, tiny_params

N_PHOTOS = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return add_photos(make_store(tmp_path_factory.mktemp("astro")), N_PHOTOS)


def astro_params(store: dict[str, Path], losses: dict[str, bool], **train: Any) -> dict[str, Any]:
    params = tiny_params(store["val"], **{"iterations": 3, "val_every": 3, "recluster_every": 2, **train})
    params["astroloc"] = astroloc_section(store, losses)
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
    s = train(training_config(params), p)
    assert s.iterations_done == 3 and s.final_loss is not None and np.isfinite(s.final_loss)
    assert set(s.final_components) == set(s.objectives) == {k for k, v in CONFIGS[name].items() if v}
    assert s.best_r5 is not None  # validated at iterations 0 and 3
    model, cfg = load_model(p.model_out)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    if CONFIGS[name]["weighted_clusters"]:
        assert sum(s.details["cluster_photo_counts"]) == N_PHOTOS
        assert np.mean(s.details["cluster_weights"]) == pytest.approx(1.0, abs=1e-3)
    if CONFIGS[name]["photo_pairs"]:
        assert s.details["n_photos"] == N_PHOTOS


def test_weighted_sampling_runs(tmp_path: Path, store: dict[str, Path]) -> None:
    """`use: both` trains, and the objective the loop asks for each batch's regions draws the
    batch's cluster with the documented p_k = w_k / sum(w) over the non-empty clusters."""
    params = astro_params(store, CONFIGS["weighted_clusters"], val_every=0)
    params["astroloc"]["clusters"]["use"] = "both"
    s = train(training_config(params), paths_in(tmp_path, store))
    assert s.iterations_done == 3 and s.best_r5 is None

    # Known weights: cluster sizes unlike the weights (a size-proportional or uniform draw
    # differs by many standard errors), and one empty cluster with the largest photo count.
    sizes = np.array([8, 4, 2, 2, 0])
    photo_counts = np.array([0, 2, 6, 24, 40])
    weights = relevance_weights(photo_counts, smoothing=1.0)
    region_cluster = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    cw = ClusterWeights(np.zeros((len(sizes), 4), np.float32), region_cluster, photo_counts, weights)
    regions = training_regions(store["tiles"], store["grid"])
    pool = photo_pool(store["tiles"], store["pairs"], store["neutral"], regions)
    objective = WeightedClusters(pool, LossConfig(), ClusterConfig(use="both"), image_size=32)
    assert objective.draw_regions(seed=0, iteration=0, batch_size=4) is None  # no weights before the first refresh
    objective.weights = cw

    n_draws, batch_size = 4000, 4
    drawn = np.zeros(len(sizes), dtype=np.int64)
    for iteration in range(n_draws):
        batch = objective.draw_regions(seed=7, iteration=iteration, batch_size=batch_size)
        assert batch is not None and len(batch) == batch_size
        clusters = np.unique(region_cluster[batch])
        assert len(clusters) == 1, f"iteration {iteration}: a batch spans clusters {clusters.tolist()}"
        drawn[clusters[0]] += 1
    nonempty = sizes > 0
    expected = np.where(nonempty, weights, 0.0) / weights[nonempty].sum()  # p_k = w_k / sum(w), written out here
    freq = drawn / n_draws
    # Per-cluster binomial standard error; z for a two-sided family-wise false-alarm rate
    # of 1e-6 over the clusters (Bonferroni), so a correct sampler essentially never fails.
    z = NormalDist().inv_cdf(1 - 1e-6 / (2 * len(sizes)))
    tolerance = z * np.sqrt(expected * (1 - expected) / n_draws)
    assert drawn[~nonempty].sum() == 0, "an empty cluster was drawn"
    assert np.all(np.abs(freq - expected) <= tolerance), (
        f"cluster frequencies {np.round(freq, 4).tolist()} vs p_k {np.round(expected, 4).tolist()} "
        f"(tolerance {np.round(tolerance, 4).tolist()})"
    )
    # The weights gate: `use: weight` keeps the loop's own cluster draw.
    objective.cfg = ClusterConfig(use="weight")
    assert objective.draw_regions(seed=7, iteration=0, batch_size=batch_size) is None


def test_no_photos_is_a_clear_error(tmp_path: Path, store: dict[str, Path]) -> None:
    empty = tmp_path / "pairs.parquet"
    pd.read_parquet(store["pairs"]).iloc[:0].to_parquet(empty)
    params = astro_params(store, CONFIGS["astroloc"])
    params["astroloc"]["pairs"] = str(empty)
    with pytest.raises(InputError, match="no training photo"):
        train(training_config(params), paths_in(tmp_path, store))


def test_photos_per_batch_must_split_over_ranks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: dict[str, Path]
) -> None:
    import earthloc.trainer as T
    from earthloc.distributed import Dist

    params = astro_params(store, CONFIGS["astroloc"])  # 4 regions, 3 photos per batch
    with pytest.raises(ConfigError, match="photos_per_batch 3 must be a multiple of WORLD_SIZE 2"):
        T._check_world(training_config(params), Dist(0, 2, 0))


def test_earthloc_train_runs_astroloc(tmp_path: Path, store: dict[str, Path]) -> None:
    """`earthloc train` (the DVC train stage's command) trains AstroLoc's objectives when params switch them on."""
    import json

    import yaml

    from earthloc.cli import main

    params = astro_params(store, CONFIGS["astroloc"], iterations=2, val_every=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = paths_in(tmp_path, store)
    rc = main(["train", "--params", str(tmp_path / "params.yaml"), "--tiles", str(p.tiles_root), "--grid", str(p.regions),
               "--out", str(p.model_out), "--checkpoints", str(p.checkpoints), "--live-dir", str(p.live_dir)])  # fmt: skip
    assert rc == 0 and p.model_out.is_file()
    summary = json.loads((p.checkpoints / "summary.json").read_text())
    assert summary["objectives"] == ["weighted_clusters", "photo_pairs"]


def test_a_checkpoint_of_other_objectives_is_not_resumed(tmp_path: Path, store: dict[str, Path]) -> None:
    """EarthLoc and AstroLoc runs share the persisted checkpoint folder: the fingerprint tells them apart."""
    p = paths_in(tmp_path, store)
    first = train(training_config(astro_params(store, CONFIGS["earthloc"], iterations=2, val_every=0)), p)
    assert first.resumed_from is None
    other = train(training_config(astro_params(store, CONFIGS["astroloc"], iterations=2, val_every=0)), p)
    assert other.resumed_from is None and other.iterations_done == 2
    again = train(training_config(astro_params(store, CONFIGS["astroloc"], iterations=3, val_every=0)), p)
    assert again.resumed_from == 2 and again.iterations_done == 3
