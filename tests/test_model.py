"""The model: shapes (docs/upstream.md §10.11), parameter counts (§5), L2 norms, frozen stages,
MixVPR size following image_size, weights file handling, checkpoint round trip."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from earthloc.model import (
    ModelConfig,
    build_model,
    load_checkpoint,
    load_model,
    parameter_counts,
    save_checkpoint,
    standardise_images,
)
from pipeline.errors import ConfigError, ModelError
from pipeline.params import load_params, section

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(backbone="resnet18", image_size=64, descriptor_dim=128)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(), load_weights=False)


def test_paper_parameter_counts(paper_model: nn.Module) -> None:
    # docs/upstream.md §5: ResNet-50 conv1..layer3 + MixVPR(1024 ch, 20x20, 4 mixers, 1024 x 4 out) + Linear(4096, 4096).
    assert parameter_counts(paper_model) == (27_662_212, 26_217_284)
    assert n_params(paper_model.backbone) == 8_543_296
    assert n_params(paper_model.aggregator) == 2_337_604
    assert n_params(paper_model.fc) == 16_781_312


def upstream_state_dict_layout() -> dict[str, tuple[int, ...]]:
    """The original checkpoint's keys and shapes, committed in tests/data (docs/upstream.md §5)."""
    doc = json.loads((ROOT / "tests" / "data" / "upstream_state_dict.json").read_text(encoding="utf-8"))
    return {e["key"]: tuple(e["shape"]) for e in doc["keys"]}


def test_paper_state_dict_has_upstreams_keys_and_shapes(paper_model: nn.Module) -> None:
    ours = {k: tuple(v.shape) for k, v in paper_model.state_dict().items()}
    theirs = upstream_state_dict_layout()
    assert sorted(set(theirs) - set(ours)) == [], "keys of the original checkpoint the model lacks"
    assert sorted(set(ours) - set(theirs)) == [], "keys the original checkpoint does not have"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shapes that differ"


def test_paper_shapes_10_11(paper_model: nn.Module) -> None:
    # One 320-px image through the backbone (the costly part); the head runs on a batch of 2.
    paper_model.eval()
    with torch.inference_mode():
        assert paper_model.backbone(torch.randn(1, 3, 320, 320)).shape == (1, 1024, 20, 20)
        agg = paper_model.aggregator(torch.randn(2, 1024, 20, 20))
        out = torch.nn.functional.normalize(paper_model.fc(agg), dim=1)
    assert agg.shape == (2, 4096) and out.shape == (2, 4096)
    torch.testing.assert_close(agg.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_frozen_stages_and_bn_stats() -> None:
    model = build_model(SMALL, load_weights=False).train()
    bb = model.backbone.model
    for name in ("conv1", "bn1", "layer1", "layer2"):
        assert not any(p.requires_grad for p in getattr(bb, name).parameters())
    assert all(p.requires_grad for p in bb.layer3.parameters())
    # freeze_bn_stats (default): BN inside frozen stages stays in eval mode, running stats fixed.
    assert not bb.bn1.training and not bb.layer2[0].bn1.training and bb.layer3[0].bn1.training
    before = bb.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 64, 64))
    torch.testing.assert_close(bb.layer1[0].bn1.running_mean, before)
    # Upstream behaviour: the frozen BN layers drift with the batches.
    upstream = build_model(replace(SMALL, freeze_bn_stats=False), load_weights=False).train()
    before = upstream.backbone.model.layer1[0].bn1.running_mean.clone()
    upstream(torch.randn(4, 3, 64, 64))
    assert not torch.allclose(upstream.backbone.model.layer1[0].bn1.running_mean, before)


@pytest.mark.parametrize("size,side", [(64, 4), (72, 5), (96, 6), (130, 9)])
def test_mixvpr_size_follows_image_size(size: int, side: int) -> None:
    cfg = replace(SMALL, image_size=size, mix_depth=1)
    model = build_model(cfg, load_weights=False).eval()
    assert cfg.feature_side == side
    assert model.aggregator.row_proj.in_features == side * side
    with torch.inference_mode():
        assert model.backbone(torch.randn(1, 3, size, size)).shape[-2:] == (side, side)
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_wrong_input_size_is_a_model_error() -> None:
    model = build_model(SMALL, load_weights=False).eval()
    with pytest.raises(ModelError, match="4x4"):
        model(torch.randn(1, 3, 128, 128))


def test_descriptor_layout_channel_major() -> None:
    cfg = replace(SMALL, mix_depth=0)
    model = build_model(cfg, load_weights=False).eval()
    feat = torch.randn(2, 256, 4, 4)
    agg = model.aggregator
    with torch.inference_mode():
        rows = agg.row_proj(agg.channel_proj(feat.flatten(2).transpose(1, 2)).transpose(1, 2))  # (B, C_out, R)
        expected = torch.nn.functional.normalize(rows.reshape(2, -1), dim=1)
        torch.testing.assert_close(agg(feat), expected)
    assert rows.shape == (2, 32, 4)  # out_channels = 128 / 4; flat index = 4 * c + r


def test_no_weights_message(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="earthloc.model"):
        build_model(SMALL)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "random init" in msgs[0] and "\n" not in msgs[0]
    caplog.clear()
    missing = tmp_path / "nope.pth"
    with caplog.at_level(logging.WARNING, logger="earthloc.model"):
        build_model(replace(SMALL, weights=str(missing)))
    assert len(caplog.records) == 1 and str(missing) in caplog.records[0].getMessage()


def test_weights_file_is_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="earthloc.model"):
        model = build_model(replace(SMALL, weights=str(path)))
    assert not caplog.records
    torch.testing.assert_close(model.backbone.model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.model.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var)
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ModelError, match="resnet18"):
        build_model(replace(SMALL, weights=str(wrong)))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="readable"):
        build_model(replace(SMALL, weights=str(junk)))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = build_model(SMALL, load_weights=False).eval()
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, SMALL, iteration=7, best_r5=12.5, note="x")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == SMALL.to_dict() and payload["iteration"] == 7
    loaded, cfg = load_model(path)
    assert cfg == SMALL
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    assert load_checkpoint(path).extra == {"iteration": 7, "best_r5": 12.5, "note": "x"}
    wrapped = nn.Sequential()  # stands in for a DDP wrapper: the bare model sits in .module
    wrapped.module = model
    save_checkpoint(path, wrapped, SMALL)
    assert load_model(path)[1] == SMALL
    with pytest.raises(ModelError):
        save_checkpoint(path, model, SMALL, state_dict={})
    with pytest.raises(ModelError, match="no such"):
        load_model(tmp_path / "missing.pt")


def test_bare_upstream_state_dict_loads_strictly(tmp_path: Path) -> None:
    # A checkpoint laid out as the original one, built from the committed list, not from our model.
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (
            torch.zeros(shape, dtype=torch.long)
            if k.endswith("num_batches_tracked")
            else torch.rand(shape, generator=gen)
        )
        for k, shape in upstream_state_dict_layout().items()
    }
    path = tmp_path / "best_model.pt"
    torch.save(state, path)
    loaded, cfg = load_model(path)
    assert cfg == ModelConfig()
    torch.testing.assert_close(loaded.fc.weight, state["fc.weight"])
    torch.testing.assert_close(loaded.aggregator.row_proj.weight, state["aggregator.row_proj.weight"])
    torch.testing.assert_close(
        loaded.backbone.model.layer3[5].bn3.running_var, state["backbone.model.layer3.5.bn3.running_var"]
    )
    del state["aggregator.row_proj.bias"]  # strict: a missing key is an error, not a silent default
    torch.save(state, path)
    with pytest.raises(ModelError):
        load_model(path)


def test_config_from_section_and_params_yaml() -> None:
    cfg = ModelConfig.from_section({"backbone": "resnet18", "frozen_stages": ["conv1", "bn1"], "weights": None})
    assert cfg.frozen_stages == ("conv1", "bn1") and hash(cfg)
    assert ModelConfig.from_section(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_section({"backbone": "resnet18", "depth": 3})
    with pytest.raises(ConfigError):
        ModelConfig(backbone="vgg16")
    with pytest.raises(ConfigError):
        ModelConfig(descriptor_dim=4098)
    with pytest.raises(ConfigError):
        ModelConfig(frozen_stages=("layer4",))
    small = ModelConfig.from_section(section(load_params(ROOT / "params.yaml"), "model"))
    model = build_model(small, load_weights=False)
    assert model.aggregator.row_proj.in_features == small.feature_side**2
    assert model.fc.out_features == small.descriptor_dim


def test_input_norm_removes_per_channel_gains_and_offsets() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 3, 32, 32)
    gain = torch.tensor([0.5, 1.3, 2.0]).view(1, 3, 1, 1)
    offset = torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    out = standardise_images(x, "instance")
    torch.testing.assert_close(standardise_images(x * gain + offset, "instance"), out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), torch.ones(2, 3))
    assert standardise_images(x, "none") is x
    # Luminance: a saturation change (blend with the image's own grey) leaves it unchanged, as
    # does one gain/offset shared by the channels; the 3 output channels are equal.
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (x * luma).sum(dim=1, keepdim=True)
    gray_out = standardise_images(x, "instance_gray")
    assert gray_out.shape == x.shape and torch.equal(gray_out[:, 0], gray_out[:, 2])
    for changed in (0.3 * x + 0.7 * grey, 1.7 * x - 0.2):
        torch.testing.assert_close(standardise_images(changed, "instance_gray"), gray_out, atol=1e-4, rtol=1e-4)
    # A flat image (all cloud) stays flat instead of being amplified to noise.
    flat = torch.full((1, 3, 8, 8), 0.7) + 1e-4 * torch.randn(1, 3, 8, 8)
    assert standardise_images(flat, "instance").abs().max() < 0.05


def test_input_norm_is_part_of_the_model_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input_norm"):
        ModelConfig(input_norm="batch")
    cfg = replace(SMALL, input_norm="instance")
    torch.manual_seed(4)
    model = build_model(cfg, load_weights=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        # The network sees only the standardised image, so a colour cast does not change a descriptor.
        torch.testing.assert_close(model(x * 1.5 + 0.1), model(x), atol=1e-4, rtol=1e-4)
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    assert load_model(tmp_path / "m.pt")[1].input_norm == "instance"
    # A checkpoint written before the option existed (no key) loads as upstream's "none".
    legacy = {k: v for k, v in SMALL.to_dict().items() if k != "input_norm"}
    assert ModelConfig.from_section(legacy).input_norm == "none"
