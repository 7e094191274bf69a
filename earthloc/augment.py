"""Year-wise augmentation (paper Sec. 4.3; docs/upstream.md §4.4) on batched tensors.

Input x (R, Y, 3, H, W): R regions, Y years (views), float in [0, 1] (uint8 is accepted and
scaled), on any device. For each year y one set of random parameters is drawn and applied
to the whole (R, 3, H, W) slice at once, so all regions of a year get the same geometry and
colour change and the years get independent ones. Output (R*Y, 3, S, S), ImageNet-
normalised, region-major: flat index k = Y*r + y, label k // Y.

Steps per year, as upstream (§4.4), with sizes relative to the input instead of upstream's
fixed 800-px pre-resize so that smaller inputs (the small CPU config) keep the same geometry:
1. rotation by U(-rotation_deg, +rotation_deg), bilinear, same size, black corners;
2. random crop of side round(crop_fraction * min(H, W)) (upstream 700/800 = 0.875);
3. random perspective (distortion as torchvision's RandomPerspective: each corner moves
   inward by an integer in [0, int(distortion * side/2)] per axis), bilinear, then the
   largest axis-aligned box inside the warped quad and its centred square;
4. resize to out_size, bilinear with antialias;
5. colour jitter: brightness, contrast and saturation factors U(1-b, 1+b) (clipped at 0),
   hue U(-h, h) when h > 0, applied in a random order;
6. ImageNet normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipeline.errors import ConfigError
from pipeline.params import check_keys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR = InterpolationMode.BILINEAR
COLOUR_OPS = ("brightness", "contrast", "saturation", "hue")

Point = tuple[int, int]  # (x, y) pixels


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 45.0
    crop_fraction: float = 0.875  # crop side / min(H, W); upstream: 700 px of an 800-px image
    distortion: float = 0.5  # perspective distortion scale in [0, 1]
    out_size: int = 320  # output side; the model's image_size
    brightness: float = 0.9
    contrast: float = 0.9
    saturation: float = 0.9
    hue: float = 0.0  # in [0, 0.5]; 0 disables the hue op (upstream)
    # Iterations over which the colour jitter strengths ramp linearly from 0 to the values
    # above (0 = full strength from the start, upstream). From random init the network cannot
    # learn the matching under U[0.1, 1.9] factors at once (docs/training.md); a ramp lets it
    # learn the patterns first and the colour invariance after.
    colour_warmup: int = 0
    # Gaussian blur of each year's view, sigma ~ U[0, blur_sigma] output pixels (0 = off,
    # upstream). Astronaut photos are softer than the mosaics (optics, haze, motion, JPEG);
    # without it a network can key on fine texture the photos do not show.
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.crop_fraction <= 1:
            raise ConfigError(f"augment.crop_fraction {self.crop_fraction}: must be in (0, 1]")
        if not 0 <= self.distortion <= 1:
            raise ConfigError(f"augment.distortion {self.distortion}: must be in [0, 1]")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue {self.hue}: must be in [0, 0.5]")
        if min(self.rotation_deg, self.brightness, self.contrast, self.saturation) < 0 or self.out_size < 1:
            raise ConfigError("augment: rotation_deg and jitter strengths must be >= 0, out_size >= 1")
        if self.blur_sigma < 0:
            raise ConfigError(f"augment.blur_sigma {self.blur_sigma}: must be >= 0")
        if not isinstance(self.colour_warmup, int) or self.colour_warmup < 0:
            raise ConfigError(f"augment.colour_warmup {self.colour_warmup!r}: must be a non-negative integer")

    def at_iteration(self, iteration: int) -> AugmentConfig:
        """The config used at 0-based `iteration`: colour strengths x min(1, (iteration + 1) / colour_warmup)."""
        if self.colour_warmup <= 0 or iteration + 1 >= self.colour_warmup:
            return self
        f = (iteration + 1) / self.colour_warmup
        return replace(self, brightness=self.brightness * f, contrast=self.contrast * f,
                       saturation=self.saturation * f, hue=self.hue * f)  # fmt: skip

    @classmethod
    def from_section(cls, sec: Mapping[str, Any], out_size: int | None = None) -> AugmentConfig:
        """From the `augment` section; `out_size` (the model's image_size) overrides the section
        so the output size has one source."""
        check_keys(sec, {f.name for f in fields(cls)}, "augment")
        values = dict(sec)
        if out_size is not None:
            values["out_size"] = out_size
        return cls(**values)


class Box(NamedTuple):
    top: int
    left: int
    height: int
    width: int


class YearParams(NamedTuple):
    """One random draw: everything needed to transform one year's slice."""

    angle: float  # degrees, counter-clockwise
    crop: Box  # in the rotated input
    endpoints: tuple[Point, Point, Point, Point]  # perspective targets of TL, TR, BR, BL in the crop
    box: Box  # final square inside the warped crop
    colour_factors: tuple[float | None, float | None, float | None, float | None]  # b, c, s, h; None = off
    colour_order: tuple[int, ...]  # permutation of range(4) over COLOUR_OPS
    blur_sigma: float = 0.0  # output pixels; 0 = no blur


def inscribed_box(endpoints: Sequence[Point]) -> Box:
    """Largest axis-aligned box inside a quad whose corners, in order TL, TR, BR, BL, each
    stay in their own quadrant (as perspective endpoints do)."""
    (tlx, tly), (trx, try_), (brx, bry), (blx, bly) = endpoints
    top, left = max(tly, try_), max(tlx, blx)
    bottom, right = min(bry, bly), min(trx, brx)
    return Box(top, left, bottom - top, right - left)


def centre_square(box: Box) -> Box:
    """The centred square of side min(h, w) in `box` (offsets rounded as torchvision's center_crop)."""
    side = min(box.height, box.width)
    return Box(
        box.top + int(round((box.height - side) / 2.0)), box.left + int(round((box.width - side) / 2.0)), side, side
    )


def perspective_crop_box(endpoints: Sequence[Point]) -> Box:
    """The square kept after the perspective warp: centre square of the inscribed box."""
    return centre_square(inscribed_box(endpoints))


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """Uniform integer in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=g, device=g.device).item())


def _uniform(low: float, high: float, g: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand(1, generator=g, device=g.device).item())


def perspective_endpoints(side: int, distortion: float, g: torch.Generator) -> tuple[Point, Point, Point, Point]:
    """Random inward corner moves on a side x side image, TL, TR, BR, BL (torchvision's rule)."""
    d = int(distortion * (side // 2))
    lo, hi = (0, d + 1), (side - d - 1, side)
    tl = (_randint(*lo, g), _randint(*lo, g))
    tr = (_randint(*hi, g), _randint(*lo, g))
    br = (_randint(*hi, g), _randint(*hi, g))
    bl = (_randint(*lo, g), _randint(*hi, g))
    return tl, tr, br, bl


def sample_year_params(cfg: AugmentConfig, height: int, width: int, g: torch.Generator) -> YearParams:
    """One random draw for an input of height x width."""
    angle = _uniform(-cfg.rotation_deg, cfg.rotation_deg, g)
    side = max(1, round(cfg.crop_fraction * min(height, width)))
    crop = Box(_randint(0, height - side + 1, g), _randint(0, width - side + 1, g), side, side)
    endpoints = perspective_endpoints(side, cfg.distortion, g)
    factors: list[float | None] = []
    for strength in (cfg.brightness, cfg.contrast, cfg.saturation):
        factors.append(_uniform(max(0.0, 1.0 - strength), 1.0 + strength, g) if strength > 0 else None)
    factors.append(_uniform(-cfg.hue, cfg.hue, g) if cfg.hue > 0 else None)
    order = tuple(int(i) for i in torch.randperm(4, generator=g, device=g.device).tolist())
    # Drawn last and only when on, so the draws above stay upstream's stream.
    sigma = _uniform(0.0, cfg.blur_sigma, g) if cfg.blur_sigma > 0 else 0.0
    return YearParams(
        angle,
        crop,
        endpoints,
        perspective_crop_box(endpoints),
        (factors[0], factors[1], factors[2], factors[3]),
        order,
        sigma,
    )


_COLOUR_FNS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def apply_year(x: torch.Tensor, p: YearParams, out_size: int) -> torch.Tensor:
    """Transform a (R, 3, H, W) float slice in [0, 1] with one draw; returns (R, 3, S, S) in [0, 1]."""
    x = TF.rotate(x, p.angle, interpolation=BILINEAR, expand=False)
    x = TF.crop(x, *p.crop)
    side = p.crop.height
    start = [[0, 0], [side - 1, 0], [side - 1, side - 1], [0, side - 1]]
    x = TF.perspective(x, start, [list(e) for e in p.endpoints], interpolation=BILINEAR)
    x = TF.crop(x, *p.box)
    x = TF.resize(x, [out_size, out_size], interpolation=BILINEAR, antialias=True)
    for i in p.colour_order:
        factor = p.colour_factors[i]
        if factor is not None:
            x = _COLOUR_FNS[i](x, factor)
    if p.blur_sigma > 0:
        radius = max(1, math.ceil(3 * p.blur_sigma))
        x = TF.gaussian_blur(x, [2 * radius + 1] * 2, [p.blur_sigma] * 2)
    return x


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; floats pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def normalize(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def prepare(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """No augmentation: (..., 3, H, W) in [0, 1] or uint8 -> resized to out_size and normalised
    (for embedding images outside training, e.g. for the clustering)."""
    x = TF.resize(to_float(x), [out_size, out_size], interpolation=BILINEAR, antialias=True)
    return normalize(x)


class YearwiseAugment:
    """x (R, Y, 3, H, W) + torch.Generator -> (R*Y, 3, S, S), index k = Y*r + y."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def at_iteration(self, iteration: int) -> YearwiseAugment:
        """The augmentation of 0-based training `iteration` (`AugmentConfig.at_iteration`)."""
        cfg = self.cfg.at_iteration(iteration)
        return self if cfg is self.cfg else YearwiseAugment(cfg)

    def sample(self, years: int, height: int, width: int, g: torch.Generator) -> list[YearParams]:
        return [sample_year_params(self.cfg, height, width, g) for _ in range(years)]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != 3:
            raise ValueError(f"expected (R, Y, 3, H, W), got {tuple(x.shape)}")
        r, y, _, h, w = x.shape
        params = self.sample(y, h, w, generator)
        out = torch.stack([apply_year(to_float(x[:, i]), params[i], self.cfg.out_size) for i in range(y)], dim=1)
        return normalize(out.reshape(r * y, 3, self.cfg.out_size, self.cfg.out_size))
