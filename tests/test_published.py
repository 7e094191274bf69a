"""Published EarthLoc weights: a torchgeo-shaped EarthLoc (timm ResNet-50 without layer4,
MixVPR, fc) saved as a state_dict loads through the project and gives the same descriptors
on the same image files; upstream's layout loads too; other files fail on one line naming
the first key that does not fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from earthloc import published
from earthloc.augment import IMAGENET_MEAN, IMAGENET_STD
from earthloc.images import load_model_input
from earthloc.model import ModelConfig, build_model, save_checkpoint
from pipeline.errors import ModelError


class Mixer(nn.Module):
    def __init__(self, hw: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.LayerNorm(hw), nn.Linear(hw, hw), nn.ReLU(), nn.Linear(hw, hw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class Aggregator(nn.Module):
    """torchgeo's MixVPR as its documentation describes it: 4 mixers over h*w, a channel
    projection 1024 -> D/4, a row projection h*w -> 4, flattened channel-major."""

    def __init__(self, side: int, dim: int) -> None:
        super().__init__()
        hw = side * side
        self.mix = nn.Sequential(*[Mixer(hw) for _ in range(4)])
        self.channel_proj = nn.Linear(1024, dim // 4)
        self.row_proj = nn.Linear(hw, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(x.flatten(2))
        x = self.row_proj(self.channel_proj(x.transpose(1, 2)).transpose(1, 2))
        return F.normalize(x.flatten(1), dim=1)


class TorchgeoEarthLoc(nn.Module):
    """Built as torchgeo builds `EarthLoc(pretrained=False)`: timm's resnet50 without
    classifier or pooling, layer4 replaced by an identity, MixVPR, Linear(D, D), L2 norm."""

    def __init__(self, image_size: int = 320, dim: int = 4096) -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet50", pretrained=False, in_chans=3, num_classes=0, global_pool="")
        self.backbone.layer4 = nn.Identity()
        self.aggregator = Aggregator(math.ceil(image_size / 16), dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.aggregator(self.backbone(x))), dim=-1)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Every weight and BN statistic away from its init (timm zero-inits the last BN of each
    block, which would hide a wrong mapping of the residual branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.05
            t.copy_(t.abs() + 0.5 + noise.abs() if name.endswith("running_var") else t + noise)


@pytest.fixture(scope="module")
def torchgeo_model() -> TorchgeoEarthLoc:
    torch.manual_seed(0)
    m = TorchgeoEarthLoc()
    _randomise(m)
    return m.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        base = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((320, 320), Image.Resampling.BILINEAR))
        paths.append(d / f"im{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _torchgeo_preprocess(path: Path) -> torch.Tensor:
    """pixels / 255, ImageNet mean and std, 320 x 320: the published weights' transforms."""
    x = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 255.0
    x = torchvision.transforms.functional.resize(x, [320, 320], antialias=True)
    return torchvision.transforms.functional.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_torchgeo_state_dict_loads_and_gives_the_same_descriptors(tmp_path, torchgeo_model, images) -> None:
    state = torchgeo_model.state_dict()
    assert "backbone.conv1.weight" in state and not any(".model." in k for k in state)
    path = tmp_path / "earthloc-torchgeo.pth"
    torch.save(state, path)

    model, cfg = published.load_model(path)
    assert cfg == ModelConfig(mlp_ratio=1.0)  # the paper architecture, read off the shapes
    pre = published.preprocessing(cfg)
    assert (pre.scale, pre.mean, pre.std, pre.size) == (1 / 255, IMAGENET_MEAN, IMAGENET_STD, 320)

    with torch.inference_mode():
        want = torchgeo_model(torch.stack([_torchgeo_preprocess(p) for p in images]))
        got = model.eval()(torch.stack([load_model_input(p, cfg.image_size) for p in images]))
    assert got.shape == want.shape == (2, 4096)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(want[0], want[1], atol=1e-3)  # the images are told apart


def test_upstream_layout_and_project_checkpoint_load_to_the_same_model(tmp_path, torchgeo_model) -> None:
    upstream = published.to_project_keys(torchgeo_model.state_dict(), "torchgeo")
    torch.save(upstream, tmp_path / "best_model_90.0.pt")
    ckpt = published.load_checkpoint(tmp_path / "best_model_90.0.pt")
    assert ckpt.extra == {"weights_format": "upstream"}
    save_checkpoint(tmp_path / "earthloc.pt", ckpt.model, ckpt.cfg)
    again = published.load_checkpoint(tmp_path / "earthloc.pt")
    for k, v in published.torchgeo_state_dict(again.model).items():
        assert torch.equal(v, torchgeo_model.state_dict()[k]), k


def test_small_architecture_is_read_off_the_shapes(tmp_path) -> None:
    cfg = ModelConfig(backbone="resnet18", image_size=64, descriptor_dim=128, mix_depth=2, mlp_ratio=2.0)
    torch.manual_seed(1)
    model = build_model(cfg, load_weights=False)
    torch.save(published.torchgeo_state_dict(model), tmp_path / "small.pth")
    ckpt = published.load_checkpoint(tmp_path / "small.pth")
    assert ckpt.cfg == cfg
    assert ckpt.extra["weights_format"] == "torchgeo"


def test_full_resnet_with_layer4_is_refused_naming_the_key(tmp_path) -> None:
    torch.manual_seed(0)
    m = TorchgeoEarthLoc()
    m.backbone = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="")  # layer4 kept
    torch.save(m.state_dict(), tmp_path / "full.pth")
    with pytest.raises(ModelError) as e:
        published.load_checkpoint(tmp_path / "full.pth")
    msg = str(e.value)
    assert "\n" not in msg and "'backbone.layer4.0.conv1.weight'" in msg and "full.pth" in msg


def test_other_architecture_is_one_line_naming_the_first_key(tmp_path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ModelError) as e:
        published.load_checkpoint(tmp_path / "resnet18.pth")
    assert "\n" not in str(e.value) and "'conv1.weight'" in str(e.value)


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path, torchgeo_model) -> None:
    state = dict(torchgeo_model.state_dict())
    state["backbone.conv1.weight"] = torch.zeros(64, 4, 7, 7)  # a 4-band input
    torch.save(state, tmp_path / "fourband.pth")
    with pytest.raises(
        ModelError, match=r"'backbone\.model\.conv1\.weight' has shape \(64, 4, 7, 7\).*\(64, 3, 7, 7\)"
    ):
        published.load_checkpoint(tmp_path / "fourband.pth")


def test_missing_parameter_and_garbage_files(tmp_path, torchgeo_model) -> None:
    state = {k: v for k, v in torchgeo_model.state_dict().items() if k != "backbone.layer3.5.bn3.running_var"}
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ModelError, match=r"'backbone\.model\.layer3\.5\.bn3\.running_var' missing"):
        published.load_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a readable torch file"):
        published.load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="no such checkpoint"):
        published.load_checkpoint(tmp_path / "absent.pth")


def test_evaluate_and_index_take_torchgeo_weights_through_model_flag(tmp_path) -> None:
    """The hooks: `earthloc evaluate --model` and `earthloc index --model` with a torchgeo-layout
    file give the same results as the project checkpoint it was exported from."""
    import json

    import yaml

    from earthloc.cli import main as cli_main
    from earthloc.model import load_model as load_project_model
    from pipeline.tools.localize import load_index
    from retrieval_support import make_tiny_set, tiny_checkpoint

    ts = make_tiny_set(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    tg = tmp_path / "earthloc-torchgeo.pth"
    torch.save(published.torchgeo_state_dict(load_project_model(ckpt)[0]), tg)
    m = ts.regions.assign(year=2021, path=pd.read_csv(ts.set_dir / "database.csv")["path"], status="ok")
    (ts.tiles_root / "manifests").mkdir(parents=True, exist_ok=True)
    m[["region_id", "year", "zoom", "path", "status"]].to_parquet(ts.tiles_root / "manifests" / "2021_09.parquet")
    ev = {
        "sets": ["tiny"],
        "tiles_root": str(ts.tiles_root),
        "evalsets_dir": str(ts.set_dir.parent),
        "out_root": str(tmp_path / "eval"),
        "regions": str(tmp_path / "none.parquet"),
        "num_workers": 0,
        "batch_size": 4,
        "k": 20,
        "recall_ns": [1, 5],
        "baselines": ["random"],
        "audit_page": False,
        "grid_queries": 2,
        "grid_top": 3,
    }
    ix = {"model": str(ckpt), "tiles_root": str(ts.tiles_root), "out_dir": str(tmp_path / "ix"), "num_workers": 0}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": ev, "index": ix}))
    results = {}
    for name, path in (("checkpoint", ckpt), ("torchgeo", tg)):
        out = tmp_path / f"eval_{name}"
        assert cli_main(["evaluate", "tiny", "--params", str(params), "--model", str(path), "--out-dir", str(out)]) == 0
        results[name] = json.loads((out / "metrics.json").read_text())["methods"]["model"]
        assert (
            cli_main(["index", "--params", str(params), "--model", str(path), "--out-dir", str(tmp_path / name)]) == 0
        )
    assert results["torchgeo"] == results["checkpoint"] and results["torchgeo"]["R@1"] == 100.0
    a, b = load_index(tmp_path / "checkpoint"), load_index(tmp_path / "torchgeo")
    assert a.num_db == b.num_db == 9
    np.testing.assert_allclose(
        a.index.reconstruct_n(0, a.index.ntotal), b.index.reconstruct_n(0, b.index.ntotal), atol=1e-6
    )
