"""earthloc.images: one decoder for training and evaluation, so a region image is one tensor in both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from earthloc.augment import normalize, to_float
from earthloc.data import RegionYearsDataset, TrainingRegions
from earthloc.images import load_model_input, load_rgb
from earthloc.retrieval.descriptors import embed
from pipeline.errors import InputError


def _mosaic(path: Path, side: int = 256, seed: int = 0) -> None:
    """A square JPEG with structure at several scales, like a region mosaic."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(0, 256, (side // 32, side // 32, 3)), np.ones((32, 32, 1)))
    noise = rng.integers(-20, 21, (side, side, 3))
    Image.fromarray(np.clip(blocks + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def _one_region(tiles: Path, rel: str) -> TrainingRegions:
    return TrainingRegions(
        tiles_root=tiles,
        years=(2021,),
        region_ids=np.array(["09_0001_0001"]),
        zooms=np.array([9], dtype=np.int64),
        paths=np.array([[rel]], dtype=object),
        footprints=np.array([None], dtype=object),
    )


@pytest.mark.parametrize("size", [16, 96, 128])
def test_training_and_evaluation_see_one_tensor(tmp_path: Path, size: int) -> None:
    _mosaic(tmp_path / "r.jpg")
    # training: the dataset's uint8 item, made float and normalised as the loop does (no augmentation)
    item = RegionYearsDataset(_one_region(tmp_path, "r.jpg"), size)[0]
    train_x = normalize(to_float(item.images[0]))
    # evaluation: what `embed` feeds the model, read back through a model that returns its input
    desc = embed(nn.Flatten(), [tmp_path / "r.jpg"], image_size=size, batch_size=1, num_workers=0, rotations=(0,))
    eval_x = torch.from_numpy(desc[0, 0]).reshape(3, size, size)
    assert train_x.shape == (3, size, size) and train_x.dtype == eval_x.dtype == torch.float32
    assert torch.equal(train_x, eval_x)
    assert torch.equal(load_model_input(tmp_path / "r.jpg", size), eval_x)


def test_non_square_photo_is_centre_cropped(tmp_path: Path) -> None:
    bands = np.zeros((30, 90, 3), np.uint8)
    bands[:, :30, 0], bands[:, 30:60, 1], bands[:, 60:, 2] = 255, 255, 255  # red | green | blue
    Image.fromarray(bands).save(tmp_path / "wide.png")
    Image.fromarray(bands.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    for name in ("wide.png", "tall.png"):
        rgb = load_rgb(tmp_path / name, 30)
        assert rgb.shape == (30, 30, 3) and rgb.dtype == np.uint8
        assert np.array_equal(rgb, np.broadcast_to(np.array([0, 255, 0], np.uint8), (30, 30, 3)))  # the middle band
    half = load_rgb(tmp_path / "wide.png", 10)  # resized first, then cropped: still the middle third
    assert half.shape == (10, 10, 3) and (half[:, 2:-2, 1] == 255).all() and (half[:, 2:-2, [0, 2]] == 0).all()
    stretched = load_rgb(tmp_path / "wide.png", 30, fit="stretch")
    assert stretched[:, 0, 0].min() > 200 and stretched[:, -1, 2].min() > 200  # all three bands kept


def test_square_image_crop_equals_stretch(tmp_path: Path) -> None:
    _mosaic(tmp_path / "r.jpg", side=512)
    for size in (16, 96, 128, 320):
        assert np.array_equal(load_rgb(tmp_path / "r.jpg", size), load_rgb(tmp_path / "r.jpg", size, fit="stretch"))


def test_unusable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.jpg: image not found"):
        load_rgb(tmp_path / "missing.jpg", 16)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(InputError, match="bad.jpg: not a readable image"):
        load_model_input(tmp_path / "bad.jpg", 16)
