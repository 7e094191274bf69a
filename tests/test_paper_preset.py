"""The paper preset (params_paper.yaml): a full params file with EarthLoc's published recipe
that loads through the same strict config path and trains on the tiny store of the training
tests (tests/train_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from earthloc.model import load_checkpoint
from earthloc.trainer import TrainPaths, train
from pipeline.config import training_config
from pipeline.params import load_params
from train_fixtures import make_store

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "params_paper.yaml"


def test_preset_is_a_full_params_file_with_the_paper_recipe() -> None:
    paper, small = load_params(PRESET), load_params(ROOT / "params.yaml")
    # every section and key of params.yaml, so `--params params_paper.yaml` serves any stage
    assert list(paper) == list(small)
    for name, section in small.items():
        if isinstance(section, dict):
            assert set(paper[name]) == set(section), name
        if name not in ("model", "augment", "loss", "train"):  # the data and evaluation are the same
            assert paper[name] == section, f"params_paper.yaml's {name} section differs from params.yaml's"
    c = training_config(paper)
    assert (c.model.backbone, c.model.image_size, c.model.descriptor_dim) == ("resnet50", 320, 4096)
    assert c.model.frozen_stages == ("conv1", "bn1", "layer1", "layer2") and c.model.input_norm == "none"
    assert (c.loss.overlap, c.loss.neutral_order) == ("neutral", "upstream")
    assert (c.train.lr, c.train.load_size, c.train.regions_per_batch) == (1e-4, 800, 96)
    assert (c.train.n_clusters, c.train.recluster_every, c.train.iterations) == (50, 2000, 10_000)
    assert c.augment.out_size == 320 and c.astroloc.losses.earthloc_ms


def test_preset_trains_two_iterations(tmp_path: Path) -> None:
    s = make_store(tmp_path / "store")
    params = yaml.safe_load(PRESET.read_text())
    # What must shrink for 25 tiny 64-px regions on a shared CPU: 96 regions per batch (the
    # store has 25; 2 keeps the 320-px ResNet-50 step to 8 views), the 800-px load (the images
    # are 64 px), loader processes, the run's length, and validation (a ResNet-50 pass over
    # the validation set at every check; the loop's validation is tested in test_train.py).
    # Model (ResNet-50, 320-px views, 4096-D, frozen stages), loss, clusters and lr stay the paper's.
    params["train"].update(regions_per_batch=2, iterations=2, load_size=64, num_workers=0, threads=1, val_every=0,
                           device="cpu")  # fmt: skip
    paths = TrainPaths(s["tiles"], s["grid"], tmp_path / "model.pt", tmp_path / "ckpt", tmp_path / "live")
    summary = train(training_config(params), paths)
    assert summary.iterations_done == 2 and summary.final_loss is not None
    assert torch.load(paths.checkpoints / "last.pt", weights_only=True)["iteration"] == 2
    ckpt = load_checkpoint(paths.model_out)
    assert ckpt.cfg.descriptor_dim == 4096 and ckpt.cfg.image_size == 320
    with torch.no_grad():
        assert ckpt.model.eval()(torch.zeros(1, 3, 320, 320)).shape == (1, 4096)


@pytest.mark.parametrize("section", ["model", "loss", "train"])
def test_preset_differs_from_the_small_recipe(section: str) -> None:
    """The small recipe is a variant: each of these sections departs from the paper's."""
    assert load_params(PRESET)[section] != load_params(ROOT / "params.yaml")[section]
