"""Published EarthLoc weights -> the project's model, with the preprocessing they expect.

Three files hold an EarthLoc model, and `load_checkpoint` reads all of them:

- `earthloc`: a checkpoint written by `earthloc.model.save_checkpoint` ({format, config,
  state_dict, ...}); its config says the architecture.
- `upstream`: the original training code's `best_model_*.pt`, a bare state_dict whose
  backbone keys sit under `backbone.model.` (a torchvision ResNet kept inside a wrapper),
  i.e. already the project's layout.
- `torchgeo`: torchgeo's `EarthLoc` weights, a bare state_dict whose backbone is a timm
  ResNet with layer4 replaced by an identity and no classifier, so its keys are
  `backbone.conv1.weight`, `backbone.layer3.5.bn3.running_var`, ... (no `.model.` level).
  timm and torchvision name a ResNet's parameters alike, so the one difference is that
  level: the mapping inserts it, and refuses every key it does not know.

A bare state_dict carries no config, so the architecture is read off its shapes (descriptor
size from `fc`, feature-map side and rows from `aggregator.row_proj`, mixer count and width
from `aggregator.mix.*`, ResNet depth from the channels and layer3's block count). Then
every key must fit the model so built, by name and shape, and every parameter of the model
must be given: the first key that does not fit is named in a one-line `ModelError`.

The published models were trained on pixels / 255 normalised with ImageNet's mean and std
at 320 x 320, which is what `earthloc.images.load_model_input` does at `cfg.image_size` (no
extra `input_norm`): `preprocessing(cfg)` states it for catalogs and users.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from earthloc.augment import IMAGENET_MEAN, IMAGENET_STD
from earthloc.model import (
    RESNET_STAGES,
    Checkpoint,
    EarthLocModel,
    ModelConfig,
    build_model,
    unwrap,
)
from earthloc.model import load_checkpoint as load_project_checkpoint
from pipeline.errors import ModelError

FORMATS = ("earthloc", "upstream", "torchgeo")
# The paper model's file is ~110 MB; a file far beyond any ResNet-101 EarthLoc is refused
# before torch unpickles it.
MAX_WEIGHTS_BYTES = 2 * 2**30
_UPSTREAM_BACKBONE = "backbone.model."
_TORCHGEO_BACKBONE = "backbone."
_HEAD_PREFIXES = ("aggregator.", "fc.")
# (channels after layer3, blocks in layer3) -> torchvision constructor name
_BACKBONE_BY_SHAPE = {(256, 2): "resnet18", (256, 6): "resnet34", (1024, 6): "resnet50", (1024, 23): "resnet101"}


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the model: RGB pixels * scale, minus mean, over
    std (per channel), resized to size x size."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    input_norm: str  # the model's own per-image standardisation (ModelConfig.input_norm)


def preprocessing(cfg: ModelConfig) -> Preprocessing:
    """The preprocessing `earthloc.images.load_model_input` applies for `cfg`; for the published
    weights (paper config) that is pixels / 255, ImageNet mean and std, 320 x 320."""
    return Preprocessing(1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD, cfg.image_size, cfg.input_norm)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ModelError(
            f"{path}: {size / 2**30:.1f} GiB, larger than any EarthLoc model "
            f"({MAX_WEIGHTS_BYTES / 2**30:.0f} GiB at most)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a readable torch file ({first})") from exc


def _bare_state(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a bare state_dict, without a {"state_dict": ...} wrapper or the
    `module.` prefix DataParallel adds."""
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise ModelError(f"{path}: expected a state_dict (a dict of tensors), got {type(payload).__name__}")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"{path}: entry {key!r} is not a named tensor, so this is not a state_dict")
    state = dict(payload)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """'upstream' or 'torchgeo' from the backbone keys; ModelError naming the first key
    that belongs to neither layout."""
    for key in state:
        if key.startswith(_UPSTREAM_BACKBONE):
            return "upstream"
    for key in state:
        if key.startswith(_HEAD_PREFIXES):
            continue
        stage = key.removeprefix(_TORCHGEO_BACKBONE).split(".", 1)[0]
        if key.startswith(_TORCHGEO_BACKBONE) and stage in RESNET_STAGES:
            return "torchgeo"
        raise ModelError(
            f"key {key!r} does not fit an EarthLoc model "
            f"(expected backbone.model.*, backbone.{{conv1,bn1,layer1..3}}.*, aggregator.* or fc.*)"
        )
    raise ModelError("no backbone keys: not an EarthLoc state_dict")


def to_project_keys(state: Mapping[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The state_dict under the project's key names. Strict: a torchgeo backbone key outside
    conv1..layer3 (e.g. a layer4 or fc of a full ResNet) is refused by name."""
    if fmt == "upstream":
        return dict(state)
    if fmt != "torchgeo":
        raise ModelError(f"weights format {fmt!r}: expected one of {list(FORMATS)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIXES):
            out[key] = value
            continue
        rest = key.removeprefix(_TORCHGEO_BACKBONE)
        if rest == key or rest.split(".", 1)[0] not in RESNET_STAGES:
            raise ModelError(f"key {key!r} does not fit torchgeo's EarthLoc (backbone conv1..layer3, aggregator, fc)")
        out[_UPSTREAM_BACKBONE + rest] = value
    return out


def from_project_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the torchgeo mapping: the project's state_dict as torchgeo's
    `EarthLoc` loads it (to publish a model trained here)."""
    return {
        (_TORCHGEO_BACKBONE + k.removeprefix(_UPSTREAM_BACKBONE)) if k.startswith(_UPSTREAM_BACKBONE) else k: v
        for k, v in state.items()
    }


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    t = state.get(key)
    if t is None:
        raise ModelError(f"key {key!r} missing: not an EarthLoc state_dict")
    if t.ndim != ndim:
        raise ModelError(f"key {key!r} has shape {tuple(t.shape)}: expected {ndim} dimensions")
    return tuple(t.shape)


def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The architecture a bare state_dict (project key names) was saved from."""
    dim, dim_in = _shape(state, "fc.weight", 2)
    rows, hw = _shape(state, "aggregator.row_proj.weight", 2)
    _, channels = _shape(state, "aggregator.channel_proj.weight", 2)
    side = math.isqrt(hw)
    if side * side != hw or dim != dim_in:
        raise ModelError(
            f"key 'aggregator.row_proj.weight' has shape {(rows, hw)} with fc {(dim, dim_in)}: "
            "not a square MixVPR feature map feeding a square head"
        )
    mixers = sorted({int(m.group(1)) for k in state if (m := re.match(r"aggregator\.mix\.(\d+)\.", k))})
    if mixers != list(range(len(mixers))):
        raise ModelError(f"aggregator.mix indices {mixers}: expected 0..{len(mixers) - 1}")
    hidden = _shape(state, "aggregator.mix.0.mix.1.weight", 2)[0] if mixers else hw
    blocks = len({m.group(1) for k in state if (m := re.match(r"backbone\.model\.layer3\.(\d+)\.", k))})
    backbone = _BACKBONE_BY_SHAPE.get((channels, blocks))
    if backbone is None:
        raise ModelError(
            f"key 'aggregator.channel_proj.weight' takes {channels} channels after {blocks} "
            f"layer3 blocks: no ResNet among {sorted(set(_BACKBONE_BY_SHAPE.values()))} has that"
        )
    return ModelConfig(
        backbone=backbone,
        image_size=side * 16,
        descriptor_dim=dim,
        mix_depth=len(mixers),
        mlp_ratio=hidden / hw,
        out_rows=rows,
    )


def load_strict(model: EarthLocModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`; ModelError naming the first key that does not fit by name
    or shape, or the first parameter the file lacks."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ModelError(f"key {key!r} does not fit the {model.cfg.backbone} EarthLoc model (no such parameter)")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ModelError(
                f"key {key!r} has shape {tuple(value.shape)}; "
                f"the {model.cfg.backbone} EarthLoc model expects {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelError(f"key {missing[0]!r} missing ({len(missing)} parameters of the model are not in the file)")
    model.load_state_dict(state, strict=True)


def load_state_dict_file(path: str | os.PathLike[str], fmt: str = "auto") -> Checkpoint:
    """A bare upstream or torchgeo state_dict file -> Checkpoint (extra holds its format)."""
    path = Path(path)
    state = _bare_state(_read(path), path)
    try:
        fmt = detect_format(state) if fmt == "auto" else fmt
        state = to_project_keys(state, fmt)
        cfg = infer_config(state)
        model = build_model(cfg, load_weights=False)
        load_strict(model, state)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    return Checkpoint(model, cfg, {"weights_format": fmt})


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Any EarthLoc model file: a project checkpoint, upstream's or torchgeo's state_dict.
    The drop-in for `earthloc.model.load_checkpoint` in evaluate, index and localize."""
    path = Path(path)
    payload = _read(path)
    if isinstance(payload, Mapping) and "config" in payload and "state_dict" in payload:
        return load_project_checkpoint(path, map_location)
    del payload
    ckpt = load_state_dict_file(path)
    return Checkpoint(ckpt.model.to(map_location), ckpt.cfg, ckpt.extra)


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[EarthLocModel, ModelConfig]:
    ckpt = load_checkpoint(path, map_location)
    return ckpt.model, ckpt.cfg


def torchgeo_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under torchgeo's `EarthLoc` key names."""
    return from_project_keys(unwrap(model).state_dict())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a model file: what ties an index to the model whose descriptors it holds."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
