"""Year-wise augmentation: one draw per year shared by all regions, independent draws across
years, region-major layout, ImageNet normalisation, determinism, and upstream's perspective
crop (docs/upstream.md §4.4, §10.8)."""

from __future__ import annotations

import pytest
import torch

from earthloc.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    Box,
    YearwiseAugment,
    apply_year,
    inscribed_box,
    perspective_crop_box,
    perspective_endpoints,
    prepare,
)
from pipeline.errors import ConfigError

R, Y, H, S = 3, 4, 48, 32
IDENTITY = AugmentConfig(
    rotation_deg=0, crop_fraction=1.0, distortion=0.0, out_size=S, brightness=0, contrast=0, saturation=0, hue=0
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def textured(seed: int, n: int = 1, size: int = H) -> torch.Tensor:
    """Smooth random images in [0, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_perspective_crop_box_10_8() -> None:
    endpoints = [(10, 20), (690, 5), (680, 695), (0, 650)]  # TL, TR, BR, BL as (x, y)
    assert inscribed_box(endpoints) == Box(top=20, left=10, height=630, width=670)
    assert perspective_crop_box(endpoints) == Box(top=20, left=30, height=630, width=630)


def test_perspective_endpoints_follow_torchvision_ranges() -> None:
    g = gen(3)
    draws = [perspective_endpoints(700, 0.5, g) for _ in range(400)]
    (tl, tr, br, bl) = zip(*draws)
    assert all(0 <= x <= 175 and 0 <= y <= 175 for x, y in tl)
    assert all(524 <= x <= 699 and 0 <= y <= 175 for x, y in tr)
    assert all(524 <= x <= 699 and 524 <= y <= 699 for x, y in br)
    assert all(0 <= x <= 175 and 524 <= y <= 699 for x, y in bl)
    sides = [perspective_crop_box(d).height for d in draws]
    assert 349 <= min(sides) and max(sides) <= 699  # docs/upstream.md §4.4: the square lies in [349, 699]


def test_shape_and_one_draw_per_year() -> None:
    x = textured(0).expand(R, Y, 3, H, H)  # every region and year holds the same image
    out = YearwiseAugment(AugmentConfig(out_size=S))(x, gen())
    assert out.shape == (R * Y, 3, S, S) and out.dtype == torch.float32
    views = out.reshape(R, Y, 3, S, S)
    for r in range(1, R):  # same parameters for all regions of a year
        torch.testing.assert_close(views[r], views[0], rtol=0, atol=1e-6)
    for a in range(Y):  # independent draws across years
        for b in range(a + 1, Y):
            assert (views[0, a] - views[0, b]).abs().max() > 0.05


def test_batched_equals_per_region_with_the_same_draws() -> None:
    x = textured(1, R * Y).reshape(R, Y, 3, H, H)
    cfg = AugmentConfig(out_size=S, hue=0.1)
    aug = YearwiseAugment(cfg)
    out = aug(x, gen(5)).reshape(R, Y, 3, S, S)
    params = aug.sample(Y, H, H, gen(5))  # the same draws, replayed
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for r in range(R):
        for y in range(Y):
            one = apply_year(x[r, y : y + 1], params[y], S)[0]
            torch.testing.assert_close(out[r, y], (one - mean) / std, rtol=0, atol=1e-5)


def test_region_major_layout_and_normalisation() -> None:
    levels = torch.linspace(0.1, 0.9, R * Y).reshape(R, Y)
    x = levels[:, :, None, None, None].expand(R, Y, 3, H, H).contiguous()
    out = YearwiseAugment(IDENTITY)(x, gen())
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    flat = levels.reshape(-1)  # k = Y * r + y
    expected = (flat.view(-1, 1, 1, 1) - mean) / std
    torch.testing.assert_close(out, expected.expand_as(out), rtol=0, atol=1e-5)


def test_identity_config_is_resize_and_normalise() -> None:
    x = textured(2, R * Y).reshape(R, Y, 3, H, H)
    out = YearwiseAugment(IDENTITY)(x, gen())
    # Upstream's box is bottom - top with inclusive corner coordinates, so even an undistorted
    # crop loses its last row and column (hence the [349, 699] range of §4.4).
    kept = x.reshape(R * Y, 3, H, H)[..., : H - 1, : H - 1]
    torch.testing.assert_close(out, prepare(kept, S), rtol=0, atol=1e-5)


def test_deterministic_with_a_seeded_generator() -> None:
    x = textured(3, R * Y).reshape(R, Y, 3, H, H)
    aug = YearwiseAugment(AugmentConfig(out_size=S))
    torch.testing.assert_close(aug(x, gen(11)), aug(x, gen(11)), rtol=0, atol=0)
    assert (aug(x, gen(11)) - aug(x, gen(12))).abs().max() > 0.05


def test_uint8_input_matches_float() -> None:
    x8 = (textured(4, R * Y).reshape(R, Y, 3, H, H) * 255).round().to(torch.uint8)
    aug = YearwiseAugment(AugmentConfig(out_size=S))
    torch.testing.assert_close(aug(x8, gen(1)), aug(x8.float() / 255, gen(1)), rtol=0, atol=1e-5)


def test_crop_follows_input_size() -> None:
    aug = YearwiseAugment(AugmentConfig())
    small, large = aug.sample(1, 160, 160, gen())[0], aug.sample(1, 800, 800, gen())[0]
    assert small.crop.height == 140 and large.crop.height == 700  # 0.875 of the side
    with pytest.raises(ValueError):
        aug(torch.rand(2, 3, 16, 16), gen())


def test_config() -> None:
    cfg = AugmentConfig.from_section({"rotation_deg": 10, "out_size": 999}, out_size=128)
    assert cfg.out_size == 128 and cfg.rotation_deg == 10 and cfg.distortion == 0.5
    with pytest.raises(ConfigError, match="unknown"):
        AugmentConfig.from_section({"crop_size": 700})
    with pytest.raises(ConfigError):
        AugmentConfig(crop_fraction=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig(hue=0.7)


def test_colour_warmup_ramps_only_the_colour_strengths() -> None:
    cfg = AugmentConfig(out_size=32, brightness=0.9, contrast=0.6, saturation=0.3, hue=0.1, colour_warmup=10)
    first, mid, last = cfg.at_iteration(0), cfg.at_iteration(4), cfg.at_iteration(9)
    assert (first.brightness, first.contrast, first.saturation, first.hue) == pytest.approx((0.09, 0.06, 0.03, 0.01))
    assert (mid.brightness, mid.contrast) == pytest.approx((0.45, 0.3))
    assert last == cfg and cfg.at_iteration(500) == cfg
    for c in (first, mid):  # geometry untouched
        assert (c.rotation_deg, c.crop_fraction, c.distortion, c.out_size) == (45.0, 0.875, 0.5, 32)
    off = AugmentConfig(out_size=32)
    assert off.at_iteration(0) is off  # colour_warmup 0 = upstream: full strength from the start
    with pytest.raises(ConfigError):
        AugmentConfig(colour_warmup=-1)
    aug = YearwiseAugment(cfg)
    assert aug.at_iteration(3).cfg == cfg.at_iteration(3) and aug.at_iteration(9) is aug


def test_blur_is_drawn_last_and_softens_each_view() -> None:
    sharp_cfg = AugmentConfig(out_size=S)
    blur_cfg = AugmentConfig(out_size=S, blur_sigma=2.0)
    sharp = YearwiseAugment(sharp_cfg).sample(Y, H, H, gen(5))
    blurred = YearwiseAugment(blur_cfg).sample(Y, H, H, gen(5))
    # Off (the default) draws nothing, so upstream's random stream is unchanged; on, the sigma is
    # an extra draw after the others, which stay the same for the first year.
    assert all(p.blur_sigma == 0.0 for p in sharp)
    assert blurred[0]._replace(blur_sigma=0.0) == sharp[0]
    assert all(0.0 <= p.blur_sigma <= 2.0 for p in blurred) and len({p.blur_sigma for p in blurred}) == Y
    noise = torch.rand(1, 3, H, H, generator=gen(6))
    params = YearwiseAugment(IDENTITY).sample(1, H, H, gen(7))[0]
    plain = apply_year(noise, params, S)
    soft = apply_year(noise, params._replace(blur_sigma=1.5), S)
    # Blur lowers the pixel-to-pixel variation of a noise image and keeps its mean.
    assert soft.diff(dim=-1).abs().mean() < 0.5 * plain.diff(dim=-1).abs().mean()
    assert soft.mean().item() == pytest.approx(plain.mean().item(), abs=0.01)
    with pytest.raises(ConfigError, match="blur_sigma"):
        AugmentConfig(blur_sigma=-0.5)
