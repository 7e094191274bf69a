"""Simulated astronaut photos: the synthetic world seen over a real NASA footprint.

`render_photo(corners, year, seed, ...)` returns a square RGB photo whose four image corners
fall on the footprint's four corners, showing the synthetic world in the photo's own year
(any integer year; `world.year_look` accepts them all, so a 2016 photo differs from the
2018-2021 database layers as a real one does), then degraded like a photo taken through
the ISS window: haze growing towards the horizon side of an oblique shot, a colour cast,
partial clouds, a slight blur and JPEG compression. Everything is a pure function of the
arguments: the same query renders the same bytes in every process (`photo_seed` derives
the per-photo seed from the query id with a stable hash).

How the corners relate to the photo (measured on all 17,763 rows of the NASA CSV;
`docs/synthetic_photos.md` has the figures):

- The corners are NASA's LL, UL, UR, LR (the CSV's names). Taken literally as the photo's
  bottom-left, top-left, top-right and bottom-right, the photo would be *mirrored*: in
  17,762 of 17,763 rows the sequence LL -> UL -> UR -> LR runs counter-clockwise on a
  north-up map, while bottom-left -> top-left -> top-right -> bottom-right runs clockwise
  on the photo. A camera looking down does not mirror, so the names cannot be literal.
  The unmirrored reading that agrees with ORIENTATION is: LL = the photo's top-left
  pixel, UL = bottom-left, UR = bottom-right, LR = top-right ("lower"/"upper" count image
  rows from the top).
- ORIENTATION is the direction of north in the photo, clockwise from the photo's up
  direction: the photo's up points to the ground bearing -ORIENTATION. With the reading
  above this holds within +-3 degrees (interquartile) for 74 % of the rows (13,207). In
  the other 26 % the corners were evidently relabelled geographically (their LL -> LR
  edge points within +-45 degrees of north in all of them) and ORIENTATION differs from
  them by 90, 180 or 270 degrees, while still agreeing modulo 90 degrees.
- So a photo is rendered with the footprint's shape from the corners and its rotation
  from ORIENTATION: of the four rotations of the unmirrored corner assignment, the one
  whose up direction is closest to bearing -ORIENTATION (for the 74 % that is the one
  above). Without an orientation the reading above is used as is.
- NASA's footprints are parallelograms (opposite edges equal in every row), so the map
  from image to ground is affine in practice; it is solved as a homography anyway (image
  -> local east/north metres around the footprint centre, then lon/lat), which is what a
  real tilted camera produces.

Speed: the world is rendered as Web-Mercator tiles (`render_tile`, ~15 ms per 256-px tile,
zoom chosen so a tile pixel is about one internal photo pixel) and resampled bilinearly;
`render_lonlat` shows the same world but costs ~10x more per pixel. Clouds and haze are
drawn on a coarse grid and upsampled.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from pipeline.errors import ConfigError
from pipeline.synthetic.world import TILE_SIZE, render_tile, value_noise

U8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.floating]

EARTH_RADIUS_M = 6371008.8  # mean radius: local projection around a footprint
WEB_MERCATOR_EQUATOR_PX = 256  # pixels of the zoom-0 tile
MAX_MERCATOR_LAT = 85.05112878
ISS_ALTITUDE_M = 410_000.0  # sets how oblique a shot is from its nadir distance

# Image corners (u right, v down, in [0, 1]) in counter-clockwise screen order, starting
# at the top-left: the order LL, UL, UR, LR takes on the map (see the module docstring).
_IMAGE_CORNERS_CCW = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])


@dataclass(frozen=True)
class PhotoEffects:
    """Ranges of the per-photo degradations; each photo draws its values from its seed.

    A range is (low, high); a photo draws uniformly between them."""

    haze_tau: tuple[float, float] = (0.04, 0.22)  # optical depth of haze at nadir
    haze_colour: tuple[int, int, int] = (200, 210, 226)
    cast: float = 0.08  # per-channel gain drawn from 1 +- cast
    gamma: tuple[float, float] = (0.85, 1.15)
    saturation: tuple[float, float] = (0.75, 1.1)
    cloud_cover: tuple[float, float] = (0.0, 0.35)  # share of the photo under cloud
    cloud_chance: float = 0.7  # probability that a photo has any cloud at all
    blur_px: tuple[float, float] = (0.4, 1.2)  # Gaussian radius at 1024 px
    vignette: tuple[float, float] = (0.0, 0.25)  # darkening at the corners
    jpeg_quality: tuple[int, int] = (70, 92)

    @classmethod
    def from_section(cls, sec: dict[str, Any] | None) -> PhotoEffects:
        """From a params section (lists become tuples); unknown keys are an error."""
        sec = dict(sec or {})
        names = {f.name for f in fields(cls)}
        unknown = set(sec) - names
        if unknown:
            raise ConfigError(f"photo effects: unknown keys {sorted(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in sec.items()}
        return cls(**values)


NO_EFFECTS = PhotoEffects(
    haze_tau=(0.0, 0.0), cast=0.0, gamma=(1.0, 1.0), saturation=(1.0, 1.0), cloud_cover=(0.0, 0.0),
    cloud_chance=0.0, blur_px=(0.0, 0.0), vignette=(0.0, 0.0), jpeg_quality=(0, 0),
)  # fmt: skip
"""The bare geometry: the world resampled over the footprint, nothing else (jpeg 0 = none)."""


def photo_seed(query_id: str, base_seed: int = 0) -> int:
    """Per-photo seed from the query id: a stable hash (Python's hash() changes per process)."""
    digest = hashlib.sha256(f"{base_seed}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------- geometry


class PhotoGeometry:
    """Where every pixel of the photo lies on the ground.

    `image_corners[i]` is the image corner (u, v) of footprint corner i (LL, UL, UR, LR);
    `to_lonlat(u, v)` maps image coordinates to degrees through a homography onto the
    local east/north plane around the footprint centre."""

    def __init__(self, corners: Sequence[float], orientation: float | None = None) -> None:
        c = np.asarray(corners, dtype=np.float64).reshape(4, 2)  # (lat, lon) x LL, UL, UR, LR
        if not np.isfinite(c).all():
            raise ValueError("footprint corners must be finite")
        lat, lon = c[:, 0], c[:, 1].copy()
        lon = lon[0] + (lon - lon[0] + 180.0) % 360.0 - 180.0  # continuous across 180 degrees
        self.lat0 = float(lat.mean())
        self.lon0 = float(lon.mean())
        self._coslat0 = math.cos(math.radians(self.lat0))
        self.ground_xy = np.stack(self._to_local(lon, lat), axis=1)  # (4, 2) metres east, north
        ccw = _signed_area(self.ground_xy) > 0
        order = _IMAGE_CORNERS_CCW if ccw else _IMAGE_CORNERS_CCW[[0, 3, 2, 1]]  # keep it unmirrored
        shift = 0 if orientation is None else self._best_shift(order, orientation)
        self.image_corners = np.roll(order, -shift, axis=0)
        self.orientation = orientation
        self._h = _homography(self.image_corners, self.ground_xy)

    def _to_local(self, lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
        x = np.radians(lon - self.lon0) * EARTH_RADIUS_M * self._coslat0
        y = np.radians(lat - self.lat0) * EARTH_RADIUS_M
        return x, y

    def _best_shift(self, order: FloatArray, orientation: float) -> int:
        """Rotation (0..3 steps) of the corner assignment whose photo-up bearing is closest
        to -orientation (north lies `orientation` degrees clockwise from up)."""
        want = -float(orientation)
        best, best_err = 0, 999.0
        for k in range(4):
            err = abs((up_bearing(np.roll(order, -k, axis=0), self.ground_xy) - want + 180.0) % 360.0 - 180.0)
            if err < best_err - 1e-9:
                best, best_err = k, err
        return best

    @property
    def up_bearing(self) -> float:
        """Ground bearing (degrees clockwise from north) of the photo's up direction."""
        return up_bearing(self.image_corners, self.ground_xy)

    def to_local(self, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        h = self._h
        w = h[2, 0] * u + h[2, 1] * v + h[2, 2]
        return (h[0, 0] * u + h[0, 1] * v + h[0, 2]) / w, (h[1, 0] * u + h[1, 1] * v + h[1, 2]) / w

    def to_lonlat(self, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
        x, y = self.to_local(u, v)
        lon = self.lon0 + np.degrees(x / (EARTH_RADIUS_M * self._coslat0))
        lat = self.lat0 + np.degrees(y / EARTH_RADIUS_M)
        return (lon + 180.0) % 360.0 - 180.0, np.clip(lat, -90.0, 90.0)

    def ground_pixel_m(self, size: int) -> float:
        """Mean ground size of a pixel of a size x size photo."""
        edges = np.linalg.norm(self.ground_xy - np.roll(self.ground_xy, -1, axis=0), axis=1)
        return float(edges.mean()) / size

    def local_of(self, lon: float, lat: float) -> tuple[float, float]:
        """Local east/north metres of a point (e.g. the nadir)."""
        lon_c = self.lon0 + (lon - self.lon0 + 180.0) % 360.0 - 180.0
        x, y = self._to_local(np.asarray(lon_c), np.asarray(lat))
        return float(x), float(y)


def _signed_area(xy: FloatArray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def up_bearing(image_corners: FloatArray, ground_xy: FloatArray) -> float:
    """Bearing of the photo's up direction: from the ground midpoint of its bottom edge to that
    of its top edge (image corners with v = 0 are on top)."""
    top = image_corners[:, 1] < 0.5
    d = ground_xy[top].mean(axis=0) - ground_xy[~top].mean(axis=0)
    return math.degrees(math.atan2(d[0], d[1])) % 360.0


def _homography(src: FloatArray, dst: FloatArray) -> FloatArray:
    """3x3 H with dst ~ H src for four point pairs (direct linear transform, h33 = 1)."""
    a, b = [], []
    for (u, v), (x, y) in zip(src, dst):
        a.append([u, v, 1.0, 0.0, 0.0, 0.0, -u * x, -v * x])
        a.append([0.0, 0.0, 0.0, u, v, 1.0, -u * y, -v * y])
        b += [x, y]
    try:
        h = np.linalg.solve(np.array(a), np.array(b))
    except np.linalg.LinAlgError as exc:
        raise ValueError("degenerate footprint: its corners do not span a quadrilateral") from exc
    return np.append(h, 1.0).reshape(3, 3)


# --------------------------------------------------------------------------- world sampling


def _mercator_px(lon: FloatArray, lat: FloatArray, z: int) -> tuple[FloatArray, FloatArray]:
    """Global Web-Mercator pixel coordinates (x east, y south) at zoom z."""
    scale = WEB_MERCATOR_EQUATOR_PX * (1 << z)
    lat_r = np.radians(np.clip(lat, -MAX_MERCATOR_LAT, MAX_MERCATOR_LAT))
    x = (lon + 180.0) / 360.0 * scale
    y = (0.5 - np.arcsinh(np.tan(lat_r)) / (2.0 * math.pi)) * scale
    return x, y


def choose_zoom(geom: PhotoGeometry, render_px: int, max_zoom: int = 14) -> int:
    """Coarsest zoom whose tile pixel is no larger than a photo pixel at the footprint."""
    pix = geom.ground_pixel_m(render_px)
    equator_px_m = 2.0 * math.pi * 6378137.0 / WEB_MERCATOR_EQUATOR_PX
    z = math.ceil(math.log2(equator_px_m * math.cos(math.radians(geom.lat0)) / max(pix, 1.0)))
    return int(min(max(z, 1), max_zoom))


def sample_world(
    geom: PhotoGeometry, render_px: int, year: int, world_seed: int = 0, zoom: int | None = None
) -> U8Array:
    """The world over the footprint as a render_px x render_px RGB image, bilinear from a
    mosaic of zoom-`zoom` tiles (antimeridian: tile columns wrap)."""
    z = choose_zoom(geom, render_px) if zoom is None else zoom
    u = (np.arange(render_px) + 0.5) / render_px
    uu, vv = np.meshgrid(u, u)
    lon, lat = geom.to_lonlat(uu, vv)
    mx, my = _mercator_px(lon, lat, z)
    # unwrap x around the footprint centre so a footprint across 180 degrees is one block
    cx, _ = _mercator_px(np.asarray(geom.lon0), np.asarray(geom.lat0), z)
    world_px = WEB_MERCATOR_EQUATOR_PX * (1 << z)
    mx = cx + (mx - cx + world_px / 2) % world_px - world_px / 2
    n = 1 << z
    tx0, tx1 = int(math.floor((mx.min() - 1) / TILE_SIZE)), int(math.floor((mx.max() + 1) / TILE_SIZE))
    ty0 = max(int(math.floor((my.min() - 1) / TILE_SIZE)), 0)
    ty1 = min(int(math.floor((my.max() + 1) / TILE_SIZE)), n - 1)
    rows = [
        np.concatenate([render_tile(z, tx % n, ty, year, seed=world_seed) for tx in range(tx0, tx1 + 1)], axis=1)
        for ty in range(ty0, ty1 + 1)
    ]
    mosaic = np.concatenate(rows, axis=0).astype(np.float32)
    return _bilinear(mosaic, mx - tx0 * TILE_SIZE - 0.5, my - ty0 * TILE_SIZE - 0.5)


def _bilinear(img: FloatArray, x: FloatArray, y: FloatArray) -> U8Array:
    """img (H, W, 3) sampled at pixel-centre coordinates (x, y), edges clamped."""
    h, w = img.shape[:2]
    x = np.clip(x, 0.0, w - 1.000001)
    y = np.clip(y, 0.0, h - 1.000001)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = (x - x0)[..., None].astype(np.float32), (y - y0)[..., None].astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    out = top * (1 - fy) + bottom * fy
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class _Draw:
    """One photo's effect values, drawn from its seed."""

    haze_tau: float
    gains: tuple[float, float, float]
    gamma: float
    saturation: float
    cloud_cover: float
    cloud_scale: float
    cloud_seed: int
    blur_px: float
    vignette: float
    jpeg_quality: int
    haze_colour: tuple[int, int, int]


def _draw(fx: PhotoEffects, seed: int) -> _Draw:
    rng = np.random.default_rng(seed)

    def between(r: tuple[float, float]) -> float:
        return float(r[0] + (r[1] - r[0]) * rng.random())

    cloudy = rng.random() < fx.cloud_chance
    return _Draw(
        haze_tau=between(fx.haze_tau),
        gains=tuple(1.0 + fx.cast * (2.0 * rng.random() - 1.0) for _ in range(3)),  # type: ignore[arg-type]
        gamma=between(fx.gamma),
        saturation=between(fx.saturation),
        cloud_cover=between(fx.cloud_cover) if cloudy else 0.0,
        cloud_scale=between((2.5, 6.0)),
        cloud_seed=int(rng.integers(0, 2**32)),
        blur_px=between(fx.blur_px),
        vignette=between(fx.vignette),
        jpeg_quality=int(round(between((float(fx.jpeg_quality[0]), float(fx.jpeg_quality[1]))))),
        haze_colour=fx.haze_colour,
    )


def _airmass(geom: PhotoGeometry, n: int, nadir: tuple[float, float] | None) -> FloatArray:
    """Relative air mass (1 at nadir) on an n x n grid over the photo: the slant path of the
    line of sight grows with the ground distance from the nadir, so haze thickens towards
    the horizon side of an oblique shot. Without a nadir: the footprint centre (vertical)."""
    u = (np.arange(n) + 0.5) / n
    uu, vv = np.meshgrid(u, u)
    x, y = geom.to_local(uu, vv)
    nx, ny = (0.0, 0.0) if nadir is None else geom.local_of(nadir[1], nadir[0])
    d = np.hypot(x - nx, y - ny)
    return np.sqrt(1.0 + (d / ISS_ALTITUDE_M) ** 2)


def _cloud_field(n: int, d: _Draw) -> FloatArray:
    """Cloud opacity (n, n) in [0, 1]: fbm value noise in image space, thresholded so that
    `cloud_cover` of the photo is under cloud, with soft, wispy edges."""
    if d.cloud_cover <= 0.0:
        return np.zeros((n, n), dtype=np.float32)
    u = (np.arange(n) + 0.5) / n
    uu, vv = np.meshgrid(u, u)
    f = np.zeros((n, n), dtype=np.float32)
    amp, total = 1.0, 0.0
    for octave in range(5):
        s = d.cloud_scale * 2.0**octave
        seed = (d.cloud_seed + 0x9E3779B9 * octave) & 0xFFFFFFFF
        f += amp * value_noise(uu * s, vv * s, np.full_like(uu, 0.5 + octave), seed)
        total += amp
        amp *= 0.55
    f /= total
    level = float(np.quantile(f, 1.0 - d.cloud_cover))
    return np.clip((f - level) / 0.12, 0.0, 1.0) ** 0.8


def _apply_effects(rgb: U8Array, geom: PhotoGeometry, d: _Draw, nadir: tuple[float, float] | None) -> U8Array:
    n = rgb.shape[0]
    coarse = 64  # haze, vignette and clouds vary slowly: compute coarse, upsample
    img = rgb.astype(np.float32) / 255.0
    # colour balance first (camera white balance, exposure), then the atmosphere on top
    img = np.clip(img * np.asarray(d.gains, dtype=np.float32), 0.0, 1.0) ** np.float32(d.gamma)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * np.float32(d.saturation)
    haze = 1.0 - np.exp(-d.haze_tau * _airmass(geom, coarse, nadir))
    cloud = _cloud_field(coarse * 2, d)
    alpha = _upsample(haze.astype(np.float32), n)[..., None]
    img = img + alpha * (np.asarray(d.haze_colour, dtype=np.float32) / 255.0 - img)
    if d.cloud_cover > 0.0:
        c = _upsample(cloud, n)
        shadow = np.zeros_like(c)  # clouds cast shadows, offset by the sun's angle
        dy, dx = n // 60, n // 80
        shadow[dy:, dx:] = c[: n - dy, : n - dx]
        img *= (1.0 - 0.35 * shadow * (1.0 - c))[..., None]
        shade = 0.82 + 0.18 * c  # thicker cloud is brighter
        img = img + c[..., None] * (shade[..., None] * np.float32(0.97) - img)
    if d.vignette > 0.0:
        u = (np.arange(coarse) + 0.5) / coarse - 0.5
        r2 = u[None, :] ** 2 + u[:, None] ** 2
        img *= _upsample((1.0 - d.vignette * r2 / 0.5).astype(np.float32), n)[..., None]
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    pil = Image.fromarray(out)
    if d.blur_px > 0.0:
        pil = pil.filter(ImageFilter.GaussianBlur(d.blur_px * n / 1024.0))
    if d.jpeg_quality > 0:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=d.jpeg_quality)
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(pil, dtype=np.uint8).copy()


def _upsample(a: FloatArray, n: int) -> FloatArray:
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((n, n), Image.Resampling.BILINEAR))


# --------------------------------------------------------------------------- API


def render_photo(
    corners: Sequence[float],
    year: int,
    seed: int,
    size: int = 1024,
    *,
    orientation: float | None = None,
    nadir: tuple[float, float] | None = None,
    effects: PhotoEffects = PhotoEffects(),
    world_seed: int = 0,
    render_px: int | None = None,
) -> U8Array:
    """A simulated astronaut photo (size, size, 3) over a NASA footprint.

    corners: ll_lat, ll_lon, ul_lat, ul_lon, ur_lat, ur_lon, lr_lat, lr_lon (the columns
    `pipeline.schema.CORNER_COLUMNS` of queries.parquet); year: the photo's year (any int); seed: the photo's own seed (effects;
    `photo_seed(query_id)`); orientation: NASA's ORIENTATION in degrees (see the module
    docstring), None to take the corners as they are; nadir: (lat, lon) of the ISS, for the
    haze gradient; world_seed: the synthetic world's seed (the database's); render_px: the
    internal resolution the world is sampled at before resizing to `size` (default: size // 2,
    which keeps a 1024-px photo near half a second on one core)."""
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    geom = PhotoGeometry(corners, orientation)
    n = render_px or max(size // 2, 16)
    rgb = sample_world(geom, n, int(year), world_seed)
    if n != size:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
    if effects == NO_EFFECTS:
        return rgb
    return _apply_effects(rgb, geom, _draw(effects, seed), nadir)
