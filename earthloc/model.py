"""The EarthLoc retrieval model: a truncated ResNet, a MixVPR aggregator and a linear head.

Image (B, 3, S, S), ImageNet-normalised -> descriptor (B, D), every row L2-normalised.

- Backbone: a torchvision ResNet cut after layer3 (stride 16; 1024 channels for
  resnet50, 256 for resnet18/34). The stem and the first stages named in
  `frozen_stages` get requires_grad=False.
- MixVPR: flatten the (C, h, w) map to (C, h*w); `mix_depth` residual feature mixers
  (LayerNorm -> Linear -> ReLU -> Linear over the h*w axis); a channel projection
  C -> D/out_rows; a row projection h*w -> out_rows; flatten channel-major; L2 norm.
  h = w = ceil(S/16) follows from `image_size` (upstream hard-codes 20x20).
- Head: Linear(D, D), then L2 norm.

State-dict keys follow upstream's layout (backbone.model.*, aggregator.mix.*,
aggregator.channel_proj.*, aggregator.row_proj.*, fc.*), so an upstream ResNet-50
state_dict loads strictly into the paper config (`load_model` accepts a bare state_dict).

Nothing is downloaded: ImageNet weights come from a local torchvision state_dict file
(`weights`), otherwise the backbone starts from random init and a one-line warning says so.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.errors import ConfigError, ModelError
from pipeline.io import atomic_path
from pipeline.params import build_config

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "earthloc-model/1"
BACKBONE_STRIDE = 16
# The stages of a ResNet kept by the truncation, in forward order (relu and maxpool
# have no parameters and are not freezable units).
RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3")
INPUT_NORMS = ("none", "instance", "instance_gray")
# Luminance weights (ITU-R BT.601, as torchvision's rgb_to_grayscale), and the floor of the
# per-image std in ImageNet-normalised units (~1/255 of a pixel): a flat image (all cloud)
# is then not amplified to noise.
_LUMA = (0.299, 0.587, 0.114)
_STD_FLOOR = 0.02

_RESNETS: dict[str, tuple[Callable[..., torchvision.models.ResNet], int]] = {
    # name -> (constructor, channels after layer3)
    "resnet18": (torchvision.models.resnet18, 256),
    "resnet34": (torchvision.models.resnet34, 256),
    "resnet50": (torchvision.models.resnet50, 1024),
    "resnet101": (torchvision.models.resnet101, 1024),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the model. Defaults are the paper's (docs/upstream.md §5)."""

    backbone: str = "resnet50"
    image_size: int = 320  # square input side, pixels
    descriptor_dim: int = 4096
    mix_depth: int = 4  # number of MixVPR feature mixers
    mlp_ratio: float = 1.0  # mixer hidden width = h*w * mlp_ratio
    out_rows: int = 4  # MixVPR row projection size; out_channels = descriptor_dim // out_rows
    frozen_stages: tuple[str, ...] = ("conv1", "bn1", "layer1", "layer2")
    # Upstream puts the whole model in train(), so BN layers inside frozen stages keep
    # updating their running statistics although their weights are frozen (upstream
    # §9.1). True keeps those BN layers in eval mode: a frozen stage is then really
    # frozen and its output does not drift with the batch statistics.
    freeze_bn_stats: bool = True
    weights: str | None = None  # local torchvision ImageNet state_dict of the full ResNet
    # What the network does to its (ImageNet-normalised) input first. "none" = upstream.
    # "instance": each image's channels standardised to mean 0, std 1, which removes per-channel
    # gains and offsets (brightness, contrast, colour casts, additive haze) before the first conv.
    # "instance_gray": the luminance standardised and repeated on 3 channels, which also removes
    # saturation. A network trained from scratch in CPU minutes cannot learn those invariances
    # itself (docs/training.md); an ImageNet-initialised one can.
    input_norm: str = "none"

    def __post_init__(self) -> None:
        # Accept lists from YAML/JSON; store a tuple so the config stays hashable.
        object.__setattr__(self, "frozen_stages", tuple(self.frozen_stages))
        if self.backbone not in _RESNETS:
            raise ConfigError(f"model.backbone {self.backbone!r}: expected one of {sorted(_RESNETS)}")
        if self.image_size < BACKBONE_STRIDE:
            raise ConfigError(f"model.image_size {self.image_size}: must be at least {BACKBONE_STRIDE}")
        if self.out_rows < 1 or self.descriptor_dim % self.out_rows:
            raise ConfigError(
                f"model.descriptor_dim {self.descriptor_dim} must be a positive multiple of out_rows {self.out_rows}"
            )
        if self.mix_depth < 0 or self.mlp_ratio <= 0:
            raise ConfigError("model.mix_depth must be >= 0 and model.mlp_ratio > 0")
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(f"model.input_norm {self.input_norm!r}: expected one of {list(INPUT_NORMS)}")
        unknown = [s for s in self.frozen_stages if s not in RESNET_STAGES]
        if unknown:
            raise ConfigError(f"model.frozen_stages {unknown}: expected names among {list(RESNET_STAGES)}")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> ModelConfig:
        """Build from the `model` section of params.yaml (or a checkpoint's stored dict)."""
        return build_config(cls, sec, "model")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only, so a checkpoint loads with torch.load(weights_only=True)."""
        d = asdict(self)
        d["frozen_stages"] = list(self.frozen_stages)
        return d

    @property
    def feature_side(self) -> int:
        """Side of the backbone's output map: every strided ResNet layer maps n -> ceil(n/2)."""
        return math.ceil(self.image_size / BACKBONE_STRIDE)

    @property
    def backbone_channels(self) -> int:
        return _RESNETS[self.backbone][1]

    @property
    def mix_out_channels(self) -> int:
        return self.descriptor_dim // self.out_rows


class TruncatedResNet(nn.Module):
    """conv1 .. layer3 of a torchvision ResNet (layer4, avgpool and fc removed)."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        # Deleting the unused children keeps the upstream key names (backbone.model.layer3...)
        # and leaves no dead parameters in the state_dict or the optimiser.
        del resnet.layer4, resnet.avgpool, resnet.fc
        self.model = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer3(m.layer2(m.layer1(x)))


class FeatureMixer(nn.Module):
    """x + MLP(LayerNorm(x)) over the last (spatial) axis."""

    def __init__(self, hw: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(hw * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(hw), nn.Linear(hw, hidden), nn.ReLU(), nn.Linear(hidden, hw))
        for m in self.mix.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """MixVPR aggregation of a (B, C, h, w) map into an L2-normalised (B, out_channels*out_rows)."""

    def __init__(
        self, in_channels: int, side: int, out_channels: int, out_rows: int, mix_depth: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.side = side
        hw = side * side
        self.mix = nn.Sequential(*[FeatureMixer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.side, self.side):
            raise ModelError(
                f"MixVPR expects a {self.side}x{self.side} feature map, got {tuple(x.shape[-2:])}: "
                f"feed images of model.image_size"
            )
        x = self.mix(x.flatten(2))  # (B, C, hw)
        x = self.channel_proj(x.transpose(1, 2))  # (B, hw, C_out)
        x = self.row_proj(x.transpose(1, 2))  # (B, C_out, rows)
        return F.normalize(x.flatten(1), dim=-1)  # channel-major: index = rows*c + r


def standardise_images(x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, 3, H, W) -> the same, each image standardised per `mode` (see ModelConfig.input_norm).
    Affine per-channel changes of an image leave the result unchanged (up to the std floor)."""
    if mode == "none":
        return x
    if mode == "instance_gray":
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(_STD_FLOOR)
    x = (x - mean) / std
    return x.expand(-1, 3, -1, -1) if mode == "instance_gray" else x


class EarthLocModel(nn.Module):
    def __init__(self, cfg: ModelConfig, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = TruncatedResNet(resnet)
        self.aggregator = MixVPR(
            cfg.backbone_channels, cfg.feature_side, cfg.mix_out_channels, cfg.out_rows, cfg.mix_depth, cfg.mlp_ratio
        )
        self.fc = nn.Linear(cfg.descriptor_dim, cfg.descriptor_dim)
        for name in cfg.frozen_stages:
            getattr(self.backbone.model, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.aggregator(self.backbone(standardise_images(x, self.cfg.input_norm)))
        return F.normalize(self.fc(x), dim=-1)

    def train(self, mode: bool = True) -> EarthLocModel:
        super().train(mode)
        if mode and self.cfg.freeze_bn_stats:
            for name in self.cfg.frozen_stages:
                for m in getattr(self.backbone.model, name).modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def _load_imagenet(resnet: nn.Module, cfg: ModelConfig) -> None:
    """Load the full torchvision ResNet state_dict from cfg.weights, or warn and keep random init."""
    if cfg.weights is None:
        log.warning(
            "model: no ImageNet weights file given (model.weights is null); %s starts from random init", cfg.backbone
        )
        return
    path = Path(cfg.weights)
    if not path.is_file():
        log.warning("model: ImageNet weights file %s not found; %s starts from random init", path, cfg.backbone)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; report one line
        raise ModelError(f"{path}: not a readable torch state_dict ({exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    try:
        resnet.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: not a torchvision {cfg.backbone} state_dict ({first})") from exc
    log.info("model: %s ImageNet weights loaded from %s", cfg.backbone, path)


def build_model(cfg: ModelConfig, *, load_weights: bool = True) -> EarthLocModel:
    """The model for `cfg`. `load_weights=False` skips the ImageNet file (and its message),
    for callers that overwrite every parameter from a checkpoint anyway."""
    resnet = _RESNETS[cfg.backbone][0](weights=None)
    if load_weights:
        _load_imagenet(resnet, cfg)
    return EarthLocModel(cfg, resnet)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        # Explicit None tests: some modules (e.g. an empty Sequential) are falsy.
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, cfg: ModelConfig, **extra: Any) -> None:
    """Write {format, config, state_dict, **extra} atomically. `extra` must hold only types
    torch.load(weights_only=True) accepts (tensors, state_dicts, numbers, str, lists, dicts)."""
    clash = {"format", "config", "state_dict"} & set(extra)
    if clash:
        raise ModelError(f"save_checkpoint: extra keys {sorted(clash)} are reserved")
    payload = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "state_dict": unwrap(model).state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class Checkpoint(NamedTuple):
    model: EarthLocModel
    cfg: ModelConfig
    extra: dict[str, Any]  # everything save_checkpoint was given besides the model


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by save_checkpoint, or a bare upstream state_dict (paper config)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; report one line
        raise ModelError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, Mapping):
        raise ModelError(f"{path}: expected a dict, got {type(payload).__name__}")
    if "state_dict" in payload and "config" in payload:
        cfg = ModelConfig.from_section(payload["config"])
        state = payload["state_dict"]
        extra = {k: v for k, v in payload.items() if k not in ("format", "config", "state_dict")}
    else:  # upstream's best_model_*.pt is a bare state_dict of the paper architecture
        cfg, state, extra = ModelConfig(), payload, {}
    model = build_model(cfg, load_weights=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: state_dict does not fit the {cfg.backbone} config ({first})") from exc
    return Checkpoint(model.to(map_location), cfg, extra)


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[EarthLocModel, ModelConfig]:
    ckpt = load_checkpoint(path, map_location)
    return ckpt.model, ckpt.cfg


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
