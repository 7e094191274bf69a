"""A deterministic procedural Earth: f(lon, lat, year) -> RGB, pure numpy, no I/O.

Why it exists: no machine here reaches EOX, yet the fetch, train and evaluate stages need
satellite-like tiles with the properties retrieval depends on: the same ground point
looks the same in every tile and zoom that covers it, and the four yearly layers show the
same geography under different season, snow, water level and colour balance.

How it is built:
- Every field is a sum of octaves of 3-D value noise evaluated on the unit sphere (scaled
  to metres), so there is no seam at the antimeridian and no pinch at the poles. Octave
  `j` has a lattice cell of `EQUATOR_M / 2**j` metres: exactly 2**(j-8-z) Web-Mercator
  pixels at the equator at zoom z.
- A tile does not evaluate every octave at every pixel. Each octave is evaluated on a
  node grid aligned to the tile pyramid (two nodes per cell, nodes at least 2 px apart),
  the grids are summed coarse to fine with Catmull-Rom subdivision and interpolated to
  pixels once. Because cell sizes are powers of two in pixels, an octave's nodes fall on
  the same ground points at every zoom, and the nodes of a shared tile edge are the same
  for both tiles: zooms agree and tiles join without seams. Octaves whose cells span
  fewer than ~3 pixels are faded out (they would only alias). About 15 ms per land tile.
- The continents are the real ones: the continent field E is the noise plus a smooth
  signed land field of the real Earth (`landfield`: GLOBE land fraction on a 0.25-degree
  grid, blurred over ~50 km, Catmull-Rom interpolated from lon/lat, so it is the same at
  every zoom, across tile edges and across the antimeridian). E's own octaves (600 km
  cells and finer) move the coast by a few tens of km and draw its detail, so database
  regions chosen with the real land mask and real query footprints show land where the
  Earth has land. Climate (deserts, forests, snow) is still procedural.
- Colour comes from elevation (continents, coasts, relief shading, snow, rock), a
  wetness/temperature biome table (desert .. rainforest, tundra), thin rivers along
  zero lines of noise fields, lakes above a noise threshold, agricultural patchwork and
  blocky cities.
- The year changes what a mosaic of real imagery changes and keeps the geography (relief,
  coasts, rivers, lakes' basins, cities, where woods and fields lie). Besides a global
  season shift (greenness, snow line, lake level, colour balance) every year has its own
  noise fields that vary over 5-150 km, inside one database region: a vegetation anomaly,
  the seasonal albedo of woods and of open land as two independent fields (so their
  contrast changes sign from place to place), a regional crop calendar, burn scars, haze
  patches, the brightness of the scenes behind the mosaic, and regional snow and lake
  levels. A region's years then differ in which parts are bright and which dark, so a
  grey thumbnail or an untrained network no longer matches them; the shapes that stay are
  what a trained model can learn (docs/synthetic_world.md has the probe's figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.schema import DATABASE_YEARS
from pipeline.synthetic import landfield

FloatArray = npt.NDArray[np.floating]
U8Array = npt.NDArray[np.uint8]

EARTH_RADIUS_M = 6378137.0  # the Web-Mercator sphere; noise lives on the same sphere
EQUATOR_M = 2.0 * math.pi * EARTH_RADIUS_M
TILE_SIZE = 256
YEARS = DATABASE_YEARS  # the layers the synthetic server renders

# Nodes per octave cell on the node grids: 2 keeps the node count (and time) low while
# Catmull-Rom still reproduces the smooth value noise closely.
_NODES_PER_CELL = 2
_MAX_NODE_SPACING = 64  # pixels; coarser octaves are simply oversampled
_BORDER = 2  # extra pixels around a tile for the finite differences (relief, edges)
# The real Earth's land (a blurred GLOBE land-fraction grid, `landfield`) biases the
# continent field by up to +-_LAND_WEIGHT; the noise octaves of E then move the coast by a
# few tens of km and draw its detail. The coast sits where noise + bias crosses the
# noise's median, so on average it follows the real one and the sea share stays Earth's.
_LAND_WEIGHT = np.float32(0.6)
_COAST_QUANTILE = 0.5
# Inland, the bias would lift whole continents into plateaus; elevation only keeps this
# much of it (a coastal rise), the rest of the relief comes from the noise.
_INLAND_BIAS_CAP = np.float32(0.15)

# --------------------------------------------------------------------------- noise

_PX, _PY, _PZ = np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F)
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_U24 = np.float32(2.0 / 16777216.0)


def _mix32(*values: int) -> int:
    """Scalar 32-bit hash of a few integers (seeds, years, octave numbers)."""
    h = 0x9E3779B9
    for v in values:
        h ^= (int(v) & 0xFFFFFFFF) + 0x7F4A7C15 + ((h << 6) & 0xFFFFFFFF) + (h >> 2)
        h &= 0xFFFFFFFF
        h ^= h >> 16
        h = (h * 0x7FEB352D) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x846CA68B) & 0xFFFFFFFF
        h ^= h >> 16
    return h


def _unit(*values: int) -> float:
    """Deterministic float in [0, 1) from integers: per-year looks, rotations."""
    return _mix32(*values) / 4294967296.0


def _lerp_(a: FloatArray, b: FloatArray, s: FloatArray) -> FloatArray:
    """a + s (b - a), computed in b's buffer (b is consumed)."""
    b -= a
    b *= s
    b += a
    return b


def _corner(axy: npt.NDArray[np.uint32], hz: npt.NDArray[np.uint32]) -> FloatArray:
    """Lattice value of one cell corner as float32 in [0, 2**24): multiply-xorshift hash."""
    h = axy ^ hz
    h *= _M1
    h ^= h >> 15
    h *= _M2
    h >>= 8
    return h.astype(np.float32)


def value_noise(x: FloatArray, y: FloatArray, z: FloatArray, seed: npt.ArrayLike) -> FloatArray:
    """3-D value noise in [-1, 1], smoothstep-interpolated, lattice spacing 1.

    Lattice values come from an integer hash of the corner coordinates and `seed`
    (uint32, broadcast against x), so nothing is stored and any point of space is
    reproducible. Value noise costs about half as much as gradient noise; the axis
    alignment it is known for is hidden by rotating each octave differently."""
    fx, fy, fz = np.floor(x), np.floor(y), np.floor(z)
    sx = (x - fx).astype(np.float32)
    sy = (y - fy).astype(np.float32)
    sz = (z - fz).astype(np.float32)
    sx = sx * sx * (3.0 - 2.0 * sx)
    sy = sy * sy * (3.0 - 2.0 * sy)
    sz = sz * sz * (3.0 - 2.0 * sz)
    hx0 = fx.astype(np.int64).astype(np.uint32)
    hx0 *= _PX
    hx1 = hx0 + _PX
    hy0 = fy.astype(np.int64).astype(np.uint32)
    hy0 *= _PY
    hy1 = hy0 + _PY
    hz0 = fz.astype(np.int64).astype(np.uint32)
    hz0 *= _PZ
    hz1 = hz0 + _PZ
    s = np.asarray(seed, dtype=np.uint32)
    hz0 ^= s
    hz1 ^= s
    a00, a10, a01, a11 = hx0 ^ hy0, hx1 ^ hy0, hx0 ^ hy1, hx1 ^ hy1
    planes = []
    for hz in (hz0, hz1):
        lo = _lerp_(_corner(a00, hz), _corner(a10, hz), sx)
        hi = _lerp_(_corner(a01, hz), _corner(a11, hz), sx)
        planes.append(_lerp_(lo, hi, sy))
    out = _lerp_(planes[0], planes[1], sz)
    out *= _U24
    out -= 1.0
    return out


def cell_m(j: int) -> float:
    """Lattice cell of octave j in metres: one Web-Mercator pixel of zoom j-8 at the equator."""
    return EQUATOR_M / float(1 << j)


def _rotation(*key: int) -> npt.NDArray[np.float64]:
    """A uniformly random rotation of the sphere, determined by integers `key` (Shoemake)."""
    u1, u2, u3 = _unit(*key, 1), _unit(*key, 2), _unit(*key, 3)
    a, b = math.sqrt(1 - u1), math.sqrt(u1)
    qw, qx = a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2)
    qy, qz = b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3)
    return np.array(
        [
            [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
            [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
            [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)],
        ]
    )


@lru_cache(maxsize=4096)
def _octave_matrix(seed: int, tag: int, j: int) -> tuple[npt.NDArray[np.float64], int]:
    """Random rotation of the sphere scaled to lattice units, and the uint32 seed, of one octave.

    Rotating every octave differently breaks up the lattice axes of value noise and
    decorrelates octaves of different fields."""
    return _rotation(seed, tag, j) * (EARTH_RADIUS_M / cell_m(j)), _mix32(seed, tag, j, 4)


def _fade(cell_pixels: FloatArray | float) -> FloatArray:
    """Weight of an octave whose cell spans `cell_pixels` pixels: 0 below 2.5 px, 1 above 4 px.

    Point-sampling noise finer than a pixel aliases into speckle that differs between
    zooms; fading it keeps a zoom-z tile close to its downsampled zoom-z+1 children."""
    t = np.clip((np.asarray(cell_pixels, dtype=np.float32) - 2.5) / 1.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class _Source:
    """One seeded noise stack; each output channel is a weighted sum of its octaves.

    `ridged` outputs use 1 - 2|n| per octave (sharp crests for mountain ridges) and share
    the noise evaluation with the plain outputs, so extra channels cost almost nothing."""

    tag: int
    js: tuple[int, ...]
    outputs: tuple[tuple[str, bool, tuple[float, ...]], ...]
    yearly: bool = False


_TERRAIN_JS = range(3, 19)
_SOURCES: tuple[_Source, ...] = (
    # One stack of 16 octaves (5000 km to 150 m cells) feeds four channels: E, plain fbm
    # with gain 0.5 from 600 km cells down, the coast detail and lowland relief on top of
    # the real continents (`landfield`); R, ridged, mountain relief; H, hills everywhere;
    # T, fine texture of vegetation and soil.
    _Source(
        1,
        tuple(_TERRAIN_JS),
        (
            ("E", False, tuple(0.65 ** (j - 6) if j >= 6 else 0.0 for j in _TERRAIN_JS)),
            # ridges and valleys 5-100 km across: a band, peaking at 40 km cells
            ("R", True, tuple(0.0 if j < 7 else 0.55 ** (10 - j) if j < 10 else 0.5 ** (j - 10) for j in _TERRAIN_JS)),
            ("H", False, tuple(0.6 ** (j - 9) if j >= 9 else 0.0 for j in _TERRAIN_JS)),
            ("T", False, tuple(0.85 ** (j - 12) if j >= 12 else 0.0 for j in _TERRAIN_JS)),
        ),
    ),
    # mountain ranges follow the crest lines of a ridged field, so they form chains
    _Source(2, (5, 6, 7, 8), (("MTN", True, (1.0, 0.5, 0.3, 0.15)),)),
    _Source(3, (4, 5, 6, 7, 8, 9, 10), (("WET", False, (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1)),)),
    _Source(4, (5, 6, 7), (("TMP", False, (1.0, 0.5, 0.25)),)),
    _Source(5, (7, 9, 11), (("RA", False, (1.0, 0.3, 0.1)),)),
    _Source(6, (9, 11, 13), (("RB", False, (1.0, 0.3, 0.1)),)),
    _Source(7, (11, 13, 15), (("RC", False, (1.0, 0.3, 0.1)),)),
    _Source(8, (10, 12, 14), (("LK", False, (1.0, 0.45, 0.2)),)),
    _Source(9, (8, 10, 12), (("CITY", False, (1.0, 0.5, 0.3)),)),
    _Source(10, (7, 8, 9), (("AG", False, (1.0, 0.6, 0.3)),)),
    # The year's own fields (docs/synthetic_world.md): they vary over 5-150 km, inside a
    # database region, so a year changes which parts of a region are bright and which dark.
    # VA: vegetation anomaly (greener or browner than usual, drought, late spring)
    _Source(11, (7, 8, 9, 10, 11, 12), (("VA", False, (0.8, 1.0, 0.8, 0.6, 0.45, 0.3)),), yearly=True),
    # HZ: residual haze of the scenes the mosaic was made of, which also sets their
    # brightness (hazier scenes are brighter)
    _Source(12, (7, 8, 9, 10, 11), (("HZ", False, (0.8, 1.0, 0.7, 0.5, 0.35)),), yearly=True),
    # AW, AO: seasonal albedo of woods and of open land (leaf-off, dry grass, ploughed or
    # ripe fields); independent fields, so the woods/open contrast flips sign in places
    _Source(14, (9, 10, 11, 12), (("AW", False, (1.0, 0.7, 0.5, 0.35)),), yearly=True),
    _Source(15, (9, 10, 11, 12), (("AO", False, (1.0, 0.7, 0.5, 0.35)),), yearly=True),
    # BN: the year's burn scars (where it peaks on vegetated land)
    _Source(16, (11, 12, 13, 14), (("BN", False, (1.0, 0.6, 0.45, 0.3)),), yearly=True),
)
_CHANNELS: tuple[str, ...] = tuple(dict.fromkeys(name for s in _SOURCES for name, _, _ in s.outputs))
# coarsest octave feeding each channel: a channel vanishes where that octave is faded out
_BASE_OCTAVE = {c: min(s.js[0] for s in _SOURCES for name, _, _ in s.outputs if name == c) for c in _CHANNELS}
_CH = {name: i for i, name in enumerate(_CHANNELS)}
# Channels with octaves finer than 5 km (or differentiated for relief shading) are
# interpolated to pixels with Catmull-Rom, the others linearly (cheaper, and invisible
# for fields that vary over tens of kilometres).
_SOFT = [_CH[c] for c in _CHANNELS if c not in ("E", "R", "H", "T", "MTN", "RA", "RB", "RC", "LK")]
_SHARP = [i for i in range(len(_CHANNELS)) if i not in _SOFT]
# Channels whose spatial derivatives are needed (relief shading, line and edge widths).
_RELIEF_SOURCES = frozenset({1, 2, 5, 6, 7, 8})


@dataclass(frozen=True)
class _Task:
    """One octave of one source: where its noise goes and with which weights."""

    source: _Source
    j: int
    matrix: npt.NDArray[np.float64]
    seed: int
    weights: tuple[tuple[int, bool, float], ...]  # (channel index, ridged, weight)


def _tasks(seed: int, year: int, sources: tuple[_Source, ...] = _SOURCES) -> list[_Task]:
    """Every octave to evaluate, with channel weights normalised to a unit sum per channel."""
    out = []
    for src in sources:
        totals = {name: sum(w) for name, _, w in src.outputs}
        src_seed = _mix32(seed, src.tag, year if src.yearly else 0)
        for k, j in enumerate(src.js):
            weights = tuple((_CH[name], ridged, w[k] / totals[name]) for name, ridged, w in src.outputs if w[k] != 0.0)
            matrix, useed = _octave_matrix(src_seed, src.tag, j)
            out.append(_Task(src, j, matrix, useed, weights))
    return out


def _evaluate(
    xyz: npt.NDArray[np.float64], tasks: list[_Task], fade: FloatArray | None
) -> tuple[list[int], FloatArray]:
    """Sum the tasks' octaves at points `xyz` (3, N) into the channels they feed.

    `fade` (T, N) or (T, 1) optionally weights each task per point. Returns the touched
    channel indices and their values (C, N); one noise call serves all tasks. einsum,
    not matmul: tiny matrix products on a threaded BLAS stall on a busy machine."""
    mats = np.stack([t.matrix for t in tasks])  # (T, 3, 3)
    pts = np.einsum("tik,kn->tin", mats, xyz)  # (T, 3, N)
    seeds = np.array([t.seed for t in tasks], dtype=np.uint32)[:, None]
    noise = value_noise(pts[:, 0], pts[:, 1], pts[:, 2], seeds)  # (T, N)
    ridge = 1.0 - 2.0 * np.abs(noise)
    if fade is not None:
        noise *= fade
        ridge *= fade
    channels = sorted({c for t in tasks for c, _, _ in t.weights})
    row = {c: i for i, c in enumerate(channels)}
    a = np.zeros((len(channels), 2 * len(tasks)), dtype=np.float32)
    for ti, t in enumerate(tasks):
        for c, ridged, w in t.weights:
            a[row[c], ti + (len(tasks) if ridged else 0)] += w
    return channels, np.einsum("ct,tn->cn", a, np.concatenate([noise, ridge]))


def _sphere_xyz(lat_rad: FloatArray, lon_rad: FloatArray) -> npt.NDArray[np.float64]:
    """Unit-sphere coordinates (3, ...) of broadcast lat/lon arrays."""
    cl = np.cos(lat_rad)
    return np.stack(np.broadcast_arrays(cl * np.cos(lon_rad), cl * np.sin(lon_rad), np.sin(lat_rad)))


# --------------------------------------------------------------------------- samplers


def _along(ndim: int, axis: int, sl: slice) -> tuple[slice, ...]:
    """Index selecting `sl` along `axis` and everything along the other axes."""
    index = [slice(None)] * ndim
    index[axis] = sl
    return tuple(index)


def _refine(g: FloatArray, axis: int) -> FloatArray:
    """Halve the node spacing of grids along `axis` (4-point interpolating subdivision).

    Nodes at (k-2)s for k in 0..n-1 become nodes at (m-2)s/2 for m in 0..2n-6: old
    nodes are kept, midpoints get Catmull-Rom's (-1, 9, 9, -1)/16. Every new value
    depends only on the four nearest old nodes, so two tiles sharing an edge, or two
    zooms sharing ground nodes, compute identical values."""
    n, d = g.shape[axis], g.ndim
    shape = list(g.shape)
    shape[axis] = 2 * n - 5
    out = np.empty(shape, dtype=g.dtype)
    out[_along(d, axis, slice(0, None, 2))] = g[_along(d, axis, slice(1, n - 1))]
    mid = g[_along(d, axis, slice(1, n - 2))] + g[_along(d, axis, slice(2, n - 1))]
    mid *= 9.0
    mid -= g[_along(d, axis, slice(0, n - 3))]
    mid -= g[_along(d, axis, slice(3, n))]
    mid *= 1.0 / 16.0
    out[_along(d, axis, slice(1, None, 2))] = mid
    return out


# Catmull-Rom weights a quarter and three quarters of the way between two nodes.
_Q1 = tuple(np.float32(v) for v in (-0.0703125, 0.8671875, 0.2265625, -0.0234375))
_Q3 = _Q1[::-1]


def _to_pixels(g: FloatArray, axis: int) -> FloatArray:
    """Nodes 2 px apart (2 beyond each edge) -> pixel centres (a 2-px border) along `axis`.

    Pixel centres fall a quarter and three quarters of the way between nodes, so the
    interpolation is a fixed 4-tap filter per parity: slices, no gathers, no BLAS."""
    n, d = g.shape[axis], g.ndim
    m = n - 3  # pixel pairs: P = size + 4 = 2 (n - 3)
    shape = list(g.shape)
    shape[axis] = 2 * m
    out = np.empty(shape, dtype=g.dtype)
    for parity, w in ((0, _Q1), (1, _Q3)):
        acc = g[_along(d, axis, slice(0, m))] * w[0]
        for tap in (1, 2, 3):
            acc += g[_along(d, axis, slice(tap, tap + m))] * w[tap]
        out[_along(d, axis, slice(parity, None, 2))] = acc
    return out


def _to_pixels_linear(g: FloatArray, axis: int) -> FloatArray:
    """Like `_to_pixels` with linear weights (2 taps instead of 4), for channels that
    only vary over tens of kilometres and are never differentiated."""
    n, d = g.shape[axis], g.ndim
    m = n - 3
    shape = list(g.shape)
    shape[axis] = 2 * m
    out = np.empty(shape, dtype=g.dtype)
    near, far = g[_along(d, axis, slice(1, m + 1))], g[_along(d, axis, slice(2, m + 2))]
    out[_along(d, axis, slice(0, None, 2))] = near * np.float32(0.75) + far * np.float32(0.25)
    out[_along(d, axis, slice(1, None, 2))] = near * np.float32(0.25) + far * np.float32(0.75)
    return out


def _per_channel(grids: FloatArray, step: Callable[[FloatArray, int], FloatArray]) -> FloatArray:
    """Apply a separable 2-D `step` (along columns, then rows) to each grid of (C, n, n).

    Channel by channel, the temporaries stay in the CPU cache: three times faster than
    one pass over the whole stack."""
    if grids.shape[-1] < 40:
        return step(step(grids, 2), 1)
    first = step(step(grids[0], 1), 0)
    out = np.empty((grids.shape[0], *first.shape), dtype=grids.dtype)
    out[0] = first
    for c in range(1, grids.shape[0]):
        out[c] = step(step(grids[c], 1), 0)
    return out


class _TileSampler:
    """Evaluates channels for one Web-Mercator tile, with a border for finite differences."""

    def __init__(self, z: int, x: int, y: int, size: int, border: int = _BORDER) -> None:
        self.z, self.x, self.y, self.size, self.b = z, x, y, size, border
        self.n_tiles = 1 << z
        self.pix_eq = EQUATOR_M / (self.n_tiles * size)
        frac = (np.arange(size + 2 * border) - border + 0.5) / size
        self._frac = frac
        lat = self._lat(frac)
        self.lat_full = np.degrees(lat)[:, None].astype(np.float32)
        self.pix_full = (self.pix_eq * np.cos(lat))[:, None].astype(np.float32)
        self._lat_rad, self._lon_rad = lat, self._lon(frac)

    def _lat(self, frac: FloatArray) -> FloatArray:
        return np.arctan(np.sinh(np.pi * (1.0 - 2.0 * (self.y + frac) / self.n_tiles)))

    def _lon(self, frac: FloatArray) -> FloatArray:
        return np.radians((self.x + frac) / self.n_tiles * 360.0 - 180.0)

    def _spacing(self, j: int) -> int:
        """Node spacing (px) of octave j's grid: two nodes per cell, at least 2 px, at most
        `max_spacing`; 0 for octaves finer than 2 px at the equator (skipped: they would
        only alias)."""
        cell_px = cell_m(j) / self.pix_eq
        if cell_px < 2.0:
            return 0
        s = max(cell_px / _NODES_PER_CELL, 2.0)
        return min(1 << int(math.floor(math.log2(s))), self.max_spacing)

    @property
    def max_spacing(self) -> int:
        sp = _MAX_NODE_SPACING
        while self.size % sp:
            sp //= 2
        return sp

    def channels(self, tasks: list[_Task]) -> FloatArray:
        """All channels (C, P, P) of the bordered tile.

        Octaves are summed on node grids from the coarsest spacing down to 2 px,
        refining the running sum at each step, then interpolated to pixels once. An
        octave whose cell spans only 2-4 pixels gets one node per cell and is faded by
        latitude (its cell spans more pixels away from the equator)."""
        by_level: dict[int, list[_Task]] = {}
        for t in tasks:
            by_level.setdefault(self._spacing(t.j), []).append(t)
        acc: FloatArray | None = None
        sp = self.max_spacing
        while sp >= 2:
            if acc is not None:
                acc = _per_channel(acc, _refine)
            frac = (np.arange(self.size // sp + 5) - 2) * sp / self.size
            n = frac.size
            if acc is None:
                acc = np.zeros((len(_CHANNELS), n, n), dtype=np.float32)
            if sp in by_level:
                lat = self._lat(frac)
                level = by_level[sp]
                pix = self.pix_eq * np.cos(lat)
                fades = np.stack([_fade(cell_m(t.j) / pix) for t in level])  # (T, n rows)
                keep = fades.max(axis=1) > 0.0  # octaves too fine everywhere in the tile
                if keep.any():
                    level = [t for t, k in zip(level, keep) if k]
                    fades = fades[keep]
                    fade = None if fades.min() >= 1.0 else np.repeat(fades, n, axis=1)
                    xyz = _sphere_xyz(lat[:, None], self._lon(frac)[None, :])
                    chans, vals = _evaluate(xyz.reshape(3, -1), level, fade)
                    acc[chans] += vals.reshape(len(chans), n, n)
            sp //= 2
        assert acc is not None
        out = np.empty((len(_CHANNELS), *([self.size + 2 * self.b] * 2)), dtype=np.float32)
        for index, step in ((_SHARP, _to_pixels), (_SOFT, _to_pixels_linear)):
            if index:
                out[index] = _per_channel(acc[index], step)
        return out

    def land_bias(self) -> FloatArray:
        """The real-land signed field (P, P) on the bordered pixel grid (a function of
        lon/lat only, so every zoom and neighbouring tile sees the same values)."""
        return landfield.sample_grid(np.degrees(self._lon_rad), np.degrees(self._lat_rad))

    # derivatives ------------------------------------------------------------------
    def gradmag(self, a: FloatArray) -> FloatArray:
        """|grad a| per metre on the full bordered grid (one-sided at the outer ring)."""
        gx = np.empty_like(a)
        gy = np.empty_like(a)
        gx[:, 1:-1] = a[:, 2:] - a[:, :-2]
        gx[:, 0], gx[:, -1] = gx[:, 1], gx[:, -2]
        gy[1:-1] = a[2:] - a[:-2]
        gy[0], gy[-1] = gy[1], gy[-2]
        g = np.hypot(gx, gy)
        g /= 2.0 * self.pix_full
        return g

    def slope(self, a: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(d/d east, d/d north) of `a` per metre at the output pixels (central differences)."""
        b = self.b
        c = slice(b, -b)
        inv = 1.0 / (2.0 * self.pix_full[c])
        gx = (a[c, b + 1 : a.shape[1] - b + 1] - a[c, b - 1 : -b - 1]) * inv
        gy = (a[b - 1 : -b - 1, c] - a[b + 1 : a.shape[0] - b + 1, c]) * inv
        return gx, gy

    def crop(self, a: FloatArray) -> FloatArray:
        b = self.b
        return a[..., b:-b, b:-b]

    @property
    def lat(self) -> FloatArray:
        return self.lat_full[self.b : -self.b]

    @property
    def pix(self) -> FloatArray:
        return self.pix_full[self.b : -self.b]

    def mercator(self, where: Where) -> tuple[FloatArray, FloatArray]:
        """Global Web-Mercator coordinates (u east, v south, both in [0, 1)) of the output
        pixels `where`, flattened like `_pick`."""
        c = slice(self.b, -self.b)
        u = (self.x + self._frac[c]) / self.n_tiles
        v = (self.y + self._frac[c]) / self.n_tiles
        if isinstance(where, slice):
            uu, vv = np.broadcast_arrays(u[None, :], v[:, None])
            return uu.reshape(-1), vv.reshape(-1)
        rows, cols = where
        return u[cols], v[rows]


class _PointSampler:
    """Evaluates channels at arbitrary points (a flat array), plus their east, west,
    north and south neighbours one pixel away for central-difference slopes, as a tile
    does."""

    _K = 5  # centre, east, west, north, south

    def __init__(self, lon: FloatArray, lat: FloatArray, pixel_m: FloatArray) -> None:
        lon_r, lat_r = np.radians(lon), np.radians(lat)
        self.n = lon_r.size
        pix = np.broadcast_to(np.asarray(pixel_m, dtype=np.float64), lon_r.shape)
        dlat = pix / EARTH_RADIUS_M
        dlon = dlat / np.maximum(np.cos(lat_r), 1e-6)
        north = np.clip(lat_r + dlat, -np.pi / 2, np.pi / 2)
        south = np.clip(lat_r - dlat, -np.pi / 2, np.pi / 2)
        lats = np.stack([lat_r, lat_r, lat_r, north, south])
        lons = np.stack([lon_r, lon_r + dlon, lon_r - dlon, lon_r, lon_r])
        self._xyz = _sphere_xyz(lats, lons).reshape(3, -1)
        self._lats_deg, self._lons_deg = np.degrees(lats), np.degrees(lons)
        self._lat_r, self._lon_r = lat_r, lon_r
        self.pix = pix.astype(np.float32)
        self.lat = np.degrees(lat_r).astype(np.float32)

    def channels(self, tasks: list[_Task]) -> FloatArray:
        """All channels (C, 5, N): at the points and their four neighbours (the
        neighbours only for the channels that are differentiated; others are copied)."""
        n, k = self.n, self._K
        out = np.zeros((len(_CHANNELS), k * n), dtype=np.float32)
        for relief in (True, False):
            group = [t for t in tasks if (t.source.tag in _RELIEF_SOURCES) == relief]
            if not group:
                continue
            fades = np.stack([_fade(cell_m(t.j) / self.pix) for t in group])
            keep = fades.max(axis=1) > 0.0
            if not keep.any():
                continue
            group = [t for t, kept in zip(group, keep) if kept]
            stop = k * n if relief else n
            fade = np.tile(fades[keep], (1, stop // n))
            chans, vals = _evaluate(self._xyz[:, :stop], group, fade)
            out[chans, :stop] += vals
            if not relief:
                out[chans, n:] = np.tile(vals, (1, k - 1))
        return out.reshape(len(_CHANNELS), k, n)

    def land_bias(self) -> FloatArray:
        """The real-land signed field (5, N) at the points and their four neighbours."""
        return landfield.sample_points(self._lons_deg, self._lats_deg)

    def gradmag(self, a: FloatArray) -> FloatArray:
        gx, gy = self.slope(a)
        return np.broadcast_to(np.hypot(gx, gy), a.shape)

    def slope(self, a: FloatArray) -> tuple[FloatArray, FloatArray]:
        step = 2.0 * self.pix
        return (a[1] - a[2]) / step, (a[3] - a[4]) / step

    def crop(self, a: FloatArray) -> FloatArray:
        return a[:, 0] if a.ndim == 3 else a[0]

    def mercator(self, where: Where) -> tuple[FloatArray, FloatArray]:
        """Global Web-Mercator coordinates (u east, v south, in [0, 1)) of the points `where`."""
        lon, lat = _pick(self._lon_r, where), _pick(self._lat_r, where)
        u = ((lon + np.pi) / (2.0 * np.pi)) % 1.0
        lat = np.clip(lat, -1.4844, 1.4844)  # the Mercator square ends at 85.05 degrees
        v = 0.5 - np.arcsinh(np.tan(lat)) / (2.0 * np.pi)
        return u, v


# --------------------------------------------------------------------------- looks


@dataclass(frozen=True)
class YearLook:
    """What changes from one yearly mosaic to the next (the geography does not)."""

    green: float  # added to wetness: season / drought
    snow_m: float  # snow-line shift in metres
    water: float  # lake threshold shift (positive: lower water)
    gain: tuple[float, float, float]  # colour balance of the mosaic
    haze: float  # strength of the faint residual haze
    crop_salt: int  # which crop each field carries this year


_YEAR_STEPS = (0.0, 0.618, 0.382, 0.291, 0.709, 0.427, 0.573, 0.236, 0.764)


def year_look(year: int, seed: int = 0) -> YearLook:
    """Deterministic per-year changes; any integer year works, 2018-2021 are the layers."""

    def u(k: int) -> float:
        # a low-discrepancy walk over the years (own step and offset per quantity): any
        # two consecutive years land far apart in [-1, 1), so every layer looks different
        return 2.0 * ((year * _YEAR_STEPS[k] + _unit(seed, 0xA11CE, k)) % 1.0) - 1.0

    bright = 1.0 + 0.06 * u(4)
    return YearLook(
        green=0.12 * u(1),
        snow_m=450.0 * u(2),
        water=0.05 * u(3),
        gain=(bright * (1 + 0.06 * u(5)), bright * (1 + 0.04 * u(6)), bright * (1 + 0.06 * u(7))),
        haze=0.06 + 0.04 * u(8),
        crop_salt=_mix32(seed, year, 0xC409),
    )


def _table(points: list[tuple[float, tuple[int, int, int]]], n: int) -> FloatArray:
    """(n, 3) colours interpolated between anchor colours at positions in [0, 1]."""
    pos = np.array([p for p, _ in points])
    rgb = np.array([c for _, c in points], dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, pos, rgb[:, k]) for k in range(3)], axis=1)


_NV, _NC = 64, 16


@lru_cache(maxsize=1)
def _biome_lut() -> npt.NDArray[np.float32]:
    """Ground colour by (wetness, cold): Sentinel-2-cloudless-like tones, (3, NV*NC)."""
    warm = _table(
        [
            (0.00, (224, 198, 152)),  # erg sand
            (0.12, (206, 170, 122)),  # ochre desert
            (0.25, (178, 152, 112)),  # rocky / dry steppe
            (0.38, (152, 144, 100)),  # steppe
            (0.50, (122, 128, 80)),  # grassland
            (0.62, (88, 106, 58)),  # savanna, mixed farmland
            (0.75, (56, 84, 42)),  # forest
            (0.88, (38, 66, 34)),  # dense forest
            (1.00, (27, 55, 29)),  # rainforest
        ],
        _NV,
    )
    cold = _table([(0.0, (150, 144, 128)), (0.5, (118, 116, 96)), (1.0, (62, 76, 58))], _NV)
    c = np.linspace(0.0, 1.0, _NC)[None, :, None]
    lut = warm[:, None, :] * (1 - c) + cold[:, None, :] * c
    return np.ascontiguousarray(lut.reshape(-1, 3).T, dtype=np.float32)


def _rgb(*values: int) -> FloatArray:
    return np.array(values, dtype=np.float32)


def _biome(wet: FloatArray, cold_index: npt.NDArray[np.intp]) -> FloatArray:
    """Ground colour (3, ...) for wetness in [0, 1] and a cold-table index."""
    vi = np.clip(wet * (_NV - 1), 0, _NV - 1).astype(np.intp)
    vi *= _NC
    vi += cold_index
    return np.take(_biome_lut(), vi, axis=1)


_ROCK = _rgb(122, 112, 102)
_SNOW = _rgb(236, 240, 246)
_DESERT_ROCK = _rgb(128, 100, 78)
_LAKE = _rgb(20, 46, 66)
_LAKE_SHORE = _rgb(32, 64, 78)
_RIVER = _rgb(36, 60, 70)
_SEA_SHALLOW = _rgb(26, 70, 96)
_SEA_DEEP = _rgb(11, 27, 56)
_HAZE = _rgb(196, 206, 222)
_CITY = _rgb(158, 150, 140)
_CROP_ROTATION = 0.8  # share of fields whose crop is drawn anew every year
# dark to bright: wet bare soil, young green, mature green, dry soil, stubble, ripe
_CROPS = np.array(
    [[84, 70, 58], [96, 132, 54], [120, 128, 70], [150, 158, 78], [168, 140, 102], [190, 174, 112], [214, 198, 150]],
    np.float32,
)
_BURN = _rgb(46, 40, 38)
_BURN_RIM = _rgb(104, 84, 62)
_BURN_LEVEL = 0.4  # burn-field value where scars begin: a few per cent of the land burns a year
# Strength of the year's fields (each has a standard deviation of about 0.2): the
# vegetation anomaly in wetness units, and the relative albedo change of woods and open land
_VEGETATION_ANOMALY = np.float32(0.9)
_WOODS_ALBEDO = np.float32(2.2)
_OPEN_ALBEDO = np.float32(2.2)
_MOSAIC_GAIN = np.float32(0.5)  # relative brightness of the scenes behind the mosaic
_HAZE_PATCHES = np.float32(0.35)  # haze opacity where the year's haze field peaks
_SNOW_REGIONAL_M = np.float32(1500.0)  # snow-line shift per unit of the woods-albedo field
_LAKE_REGIONAL = np.float32(0.3)  # lake-threshold shift per unit of the vegetation anomaly

# rivers: (channel, half width m, valley depth m, valley half width m, dry-land survival)
_RIVERS = (("RA", 420.0, 80.0, 3000.0, 0.6), ("RB", 140.0, 0.0, 1.0, 0.25), ("RC", 45.0, 0.0, 1.0, 0.0))


def _smooth(e0: float, e1: float, x: FloatArray) -> FloatArray:
    """Smoothstep from e0 to e1 (e1 < e0 gives a falling step)."""
    t = (x - np.float32(e0)) * np.float32(1.0 / (e1 - e0))
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (3.0 - 2.0 * t)


def _expand(colour: FloatArray, ndim: int) -> FloatArray:
    """A (3,) colour shaped (3, 1, ...) to broadcast against (3, ...) images of `ndim` axes."""
    return colour.reshape(3, *([1] * ndim))


def _blend(rgb: FloatArray, alpha: FloatArray, colour: FloatArray) -> None:
    """rgb (3, ...) <- rgb + alpha (colour - rgb), in place; `colour` is (3,) or (3, ...)."""
    col = _expand(colour, rgb.ndim - 1) if colour.ndim == 1 else colour
    rgb += alpha * (col - rgb)


Where = tuple[npt.NDArray[np.intp], ...] | slice


def _where(mask: npt.NDArray[np.bool_]) -> Where | None:
    """Pixels to visit for a sparse feature: None if none, everything if most pixels."""
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None
    return slice(None) if count > mask.size // 4 else np.nonzero(mask)


def _pick(a: FloatArray, where: Where) -> FloatArray:
    """Values of a per-pixel array at `where` (flattened when `where` is everything)."""
    return a.reshape(-1) if isinstance(where, slice) else a[where]


def _blend_at(rgb: FloatArray, where: Where, alpha: FloatArray, colour: FloatArray, alpha_picked: bool = False) -> None:
    """_blend restricted to the pixels `where`; `colour` is (3, K) for those pixels."""
    a = alpha if alpha_picked else _pick(alpha, where)
    if isinstance(where, slice):
        flat = rgb.reshape(3, -1)
        _blend(flat, a, colour)
    else:
        index: tuple[Any, ...] = (slice(None), *where)  # every channel at the picked pixels
        sub = rgb[index]
        _blend(sub, a, colour)
        rgb[index] = sub


_BELT_LAT = np.array([0.0, 10.0, 22.0, 30.0, 45.0, 55.0, 70.0, 90.0])
_BELT_WET = np.array([0.85, 0.78, 0.3, 0.32, 0.56, 0.58, 0.45, 0.35])


def _wetness(wet: FloatArray, lat: FloatArray) -> FloatArray:
    """Moisture from latitude belts (wet tropics, dry subtropics, moist mid-latitudes,
    drier polar lands) plus noise that moves deserts and forests far off their belts."""
    belt = np.interp(np.abs(lat), _BELT_LAT, _BELT_WET).astype(np.float32)
    return belt + 1.6 * wet


@lru_cache(maxsize=32)
def _sea_level(seed: int) -> float:
    """Continent-field level below which ground is sea: the median of the noise part of E
    (over an even spread of points, a Fibonacci lattice, coarse octaves only), so the
    coast lies on the real one (signed land field 0) on average, for every seed."""
    n = 20000
    k = np.arange(n) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * k / n))
    lon = (k * (180.0 * (3.0 - math.sqrt(5.0)))) % 360.0 - 180.0
    terrain = tuple(src for src in _SOURCES if src.tag == 1)
    tasks = [t for t in _tasks(seed, 0, terrain) if cell_m(t.j) > 5000.0]
    xyz = _sphere_xyz(np.radians(lat), np.radians(lon))
    chans, vals = _evaluate(xyz, tasks, None)
    return float(np.quantile(vals[chans.index(_CH["E"])], _COAST_QUANTILE))


def _signed_distance(
    s: _TileSampler | _PointSampler, field: FloatArray, level: FloatArray | float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Metres from each output pixel to the line where `field` (a full, bordered channel)
    equals `level` (on output pixels), positive above: (f - level) / |grad f|; and
    |grad f| per metre. It turns thresholds into edges with a width in metres:
    anti-aliased coasts and shores, rivers whose width is the same on every zoom."""
    g = np.maximum(np.hypot(*s.slope(field)), 1e-12)
    return (s.crop(field) - level) / g, g


def _relief(ch: FloatArray, s: _TileSampler | _PointSampler, sea_level: float, bias: FloatArray) -> FloatArray:
    """Elevation in metres (0 at sea) on the full (bordered) grid.

    Land is where the continent field (noise + real-land `bias`) exceeds the sea level;
    elevation combines a gentle rise inland (the bias counts only up to
    `_INLAND_BIAS_CAP`), ridged mountains where the mountain mask is high and hills
    elsewhere, and carves valleys along the rivers so the relief shading shows them."""
    hl = ch[_CH["E"]] - sea_level
    land = _smooth(0.0, 0.03, hl)
    mtn = _smooth(0.45, 0.85, ch[_CH["MTN"]])
    ridged = ch[_CH["R"]] - 0.1
    rise = hl - np.maximum(bias - _INLAND_BIAS_CAP, 0.0)
    np.maximum(rise, 0.0, out=rise)
    elev = 2200.0 * rise + (6500.0 * mtn + 100.0) * ridged + 400.0 * ch[_CH["H"]]
    np.maximum(elev, 5.0, out=elev)
    elev *= land
    for name, _, depth, vwidth, _ in _RIVERS:
        r = ch[_CH[name]]
        if depth == 0.0 or float(np.abs(r).min()) > 0.08:  # no valley within ~8 km
            continue
        v = np.abs(r) / np.maximum(s.gradmag(r), 1e-9)
        v *= np.float32(1.0 / vwidth)
        v *= v
        elev -= depth * land * np.exp(-v)
    return elev


def _line_cover(d: FloatArray, half_width: FloatArray | float, pix: FloatArray) -> FloatArray:
    """Fraction of a pixel (side `pix`) covered by a line of `half_width` whose centre is
    `d` metres from the pixel centre: 1 inside wide lines, 2 half_width / pix for lines
    thinner than a pixel, so a river keeps its mean tone at every zoom."""
    half = 0.5 * pix
    cover = np.minimum(d + half, half_width) - np.maximum(d - half, -half_width)
    cover /= pix
    np.clip(cover, 0.0, 1.0, out=cover)
    return cover


def _rivers(
    s: _TileSampler | _PointSampler, ch: FloatArray, wet: FloatArray, pix: FloatArray, green: float
) -> FloatArray:
    """Coverage (0..1) of the output pixels by rivers of the three orders.

    A river is a line of constant width in metres along the zero line of its field;
    tributaries live on one side of their parent's line and end at it (a confluence),
    and rivers thin out or vanish in dry country. Only the pixels near a zero line are
    worked on, so rivers cost little."""
    shape = wet.shape
    out = np.zeros(shape, dtype=np.float32)
    pix_b = np.broadcast_to(pix, shape)
    parent: FloatArray | None = None
    for name, half_w, _, _, survive in _RIVERS:
        field = ch[_CH[name]]
        grad = np.hypot(*s.slope(field))
        value = s.crop(field)
        w_max = half_w * (1.0 + 0.4 * abs(green))
        where = _where(np.abs(value) < (w_max + pix_b) * grad)
        if where is not None:
            g = np.maximum(_pick(grad, where), 1e-12)
            p = _pick(pix_b, where)
            width = w_max * (survive + (1.0 - survive) * _smooth(0.15, 0.5, _pick(wet, where)))
            if parent is not None:
                width *= _smooth(0.0, 0.06, _pick(parent, where))
            # a zero line crossed steeply is a valley; one circling a shallow bump of the
            # field would draw a small closed loop, so it fades out
            base = np.float32(cell_m(_BASE_OCTAVE[name]))
            width *= _smooth(0.12, 0.3, g * base)
            cover = _line_cover(np.abs(_pick(value, where)) / g, width, p)
            cover *= _fade(base / p)  # no river order where its field is faded out
            _put_max(out, where, cover)
        parent = value
    return out


def _put_max(out: FloatArray, where: Where, values: FloatArray) -> None:
    """out[where] = max(out[where], values), `values` picked like `_pick`."""
    if isinstance(where, slice):
        flat = out.reshape(-1)
        np.maximum(flat, values, out=flat)
    else:
        out[where] = np.maximum(out[where], values)


def _hillshade(gx: FloatArray, gy: FloatArray) -> FloatArray:
    """Relative brightness of a slope lit from the north-west at 40 degrees (1 on flat ground)."""
    ex = np.float32(1.6)  # vertical exaggeration: sun-lit relief as in mid-morning imagery
    lx, ly, lz = np.float32(-0.5417), np.float32(0.5417), np.float32(0.6428)
    nx, ny = gx * -ex, gy * -ex
    dot = (nx * lx + ny * ly + lz) / np.sqrt(nx * nx + ny * ny + 1.0)
    return np.clip(dot * (1.0 / lz), 0.3, 1.5)


def _hash2(a: npt.NDArray[np.uint32], b: npt.NDArray[np.uint32], salt: int) -> npt.NDArray[np.uint32]:
    """32-bit hash of two integer arrays and a salt."""
    h = a * _PX
    h ^= b * _PY
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h *= _M1
    h ^= h >> 15
    h *= _M2
    h ^= h >> 13
    return h


def _rehash(h: npt.NDArray[np.uint32], salt: int) -> FloatArray:
    """A float in [0, 1) from a cell hash and a salt (one cell, several independent draws)."""
    g = h ^ np.uint32(_mix32(salt))
    g *= _M1
    g ^= g >> 15
    g *= _M2
    g >>= 8
    return g.astype(np.float32) * np.float32(1.0 / 16777216.0)


def _grid_cells(u: FloatArray, v: FloatArray, nu: int, nv: int, salt: int) -> npt.NDArray[np.uint32]:
    """Hash of the cell of a brick pattern in global Web-Mercator coordinates (u, v in [0, 1)):
    rows of height 1/nv, cells of width 1/nu, each row shifted by a random fraction.

    Global Mercator coordinates make cells identical in every tile and zoom; counting
    columns modulo nu closes the pattern across the antimeridian. Brick rows look like
    real field strips and street blocks rather than a checkerboard. nu and nv are not
    powers of two, so cell edges do not line up with tile edges."""
    row = np.floor(v * nv + 0.5).astype(np.int64).astype(np.uint32)
    shift = (_hash2(row, row, salt) >> 8).astype(np.float64) * (1.0 / 16777216.0)
    col = (np.floor(u * nu + shift).astype(np.int64) % nu).astype(np.uint32)
    return _hash2(col, row, salt)


def _field_cells(u: FloatArray, v: FloatArray, seed: int) -> npt.NDArray[np.uint32]:
    """Field identity: east-west strips ~1.2 x 0.6 km at the equator, staggered row by row."""
    return _grid_cells(u, v, 34_351, 68_863, seed ^ 0xF1E1D)


@dataclass
class _Scene:
    """Per-pixel quantities shared by the layers of `_compose` (output pixels unless
    noted). `wet` is the climate (it places woods, fields and lakes); `green` adds the
    year's season and regional anomaly, which only change colours."""

    s: _TileSampler | _PointSampler
    ch: FloatArray  # all channels on the sampler's full (bordered) grid
    c: FloatArray  # all channels on the output pixels
    look: YearLook
    seed: int
    lat: FloatArray
    pix: FloatArray
    hl: FloatArray  # continent field above sea level
    elev: FloatArray  # metres
    gx: FloatArray  # elevation slope east
    gy: FloatArray  # elevation slope north
    land: FloatArray  # land coverage of the pixel, 0..1
    wet: FloatArray
    green: FloatArray
    temp: FloatArray
    snowline: FloatArray  # metres

    @property
    def alat(self) -> FloatArray:
        return np.abs(self.lat)


def _scene(s: _TileSampler | _PointSampler, year: int, seed: int) -> _Scene:
    """Evaluate the channels and derive elevation, slopes, coast, climate and snow line."""
    look = year_look(year, seed)
    ch = s.channels(_tasks(seed, year))
    bias = s.land_bias()
    bias *= _LAND_WEIGHT
    ch[_CH["E"]] += bias
    sea_level = _sea_level(seed)
    elev_full = _relief(ch, s, sea_level, bias)
    gx, gy = s.slope(elev_full)
    elev = s.crop(elev_full)
    c = s.crop(ch)
    lat, pix = s.lat, s.pix
    # coverage of land in the pixel, from the signed distance to the coast
    land = _signed_distance(s, ch[_CH["E"]], sea_level)[0] / pix
    land += 0.5
    np.clip(land, 0.0, 1.0, out=land)
    wet = _wetness(c[_CH["WET"]], lat) - elev * np.float32(1 / 9000)
    wet += 0.3 * c[_CH["H"]]  # greener hollows, drier rises
    # the anomaly is weaker in deserts: without rain there is little to turn green or brown
    anomaly = _smooth(0.1, 0.45, wet)
    anomaly *= np.float32(0.7)
    anomaly += np.float32(0.3)
    anomaly *= c[_CH["VA"]]
    green = wet + look.green * (0.6 + 0.4 * np.clip(wet, 0, 1)) + _VEGETATION_ANOMALY * anomaly
    tmp = c[_CH["TMP"]]
    temp = 1.0 - np.abs(lat) * np.float32(1 / 75) - elev * np.float32(1 / 4500) + 0.1 * tmp
    snowline = 4900.0 - 3900.0 * _smooth(15.0, 66.0, np.abs(lat)) + 300.0 * tmp + look.snow_m
    snowline -= _SNOW_REGIONAL_M * c[_CH["AW"]]  # a late or early season: woods leaf-off, snow low
    hl = c[_CH["E"]] - sea_level
    return _Scene(s, ch, c, look, seed, lat, pix, hl, elev, gx, gy, land, wet, green, temp, snowline)


def _ground(sc: _Scene) -> FloatArray:
    """Base colour (3, ...): biome by wetness and cold, with crisp fractal patches of
    woods (the wetter, the more woods) and canopy/soil texture."""
    tex = sc.c[_CH["T"]]
    ci = (_smooth(0.25, -0.05, sc.temp) * (_NC - 1) + 0.5).astype(np.intp)
    woods = _smooth(-0.05, 0.05, tex + (sc.wet - 0.58))
    rgb = _biome(sc.green - 0.06 + 0.2 * tex, ci)
    _blend(rgb, woods, _biome(np.maximum(sc.green + 0.28, 0.62) + 0.35 * tex, ci))
    rgb *= 1.0 + 0.12 * tex
    # the season's albedo, separately for woods and open land (see _Source 14, 15)
    open_albedo = _OPEN_ALBEDO * sc.c[_CH["AO"]]
    albedo = _WOODS_ALBEDO * sc.c[_CH["AW"]] - open_albedo
    albedo *= woods
    albedo += open_albedo
    albedo += 1.0
    np.clip(albedo, 0.45, 1.9, out=albedo)
    rgb *= albedo
    _add_fields(rgb, sc, woods)
    _add_burns(rgb, sc)
    return rgb


def _add_burns(rgb: FloatArray, sc: _Scene) -> None:
    """The year's burn scars on vegetated land that is neither desert nor swamp: charcoal
    where the burn field peaks, a browner rim around it."""
    where = _where((sc.c[_CH["BN"]] > _BURN_LEVEL - 0.04) & (sc.wet > 0.2) & (sc.wet < 1.1))
    if where is None:
        return  # a few per cent of the land: work on those pixels only
    bn, wet = _pick(sc.c[_CH["BN"]], where), _pick(sc.wet, where)
    a = _smooth(_BURN_LEVEL - 0.04, _BURN_LEVEL + 0.04, bn)
    a *= _smooth(0.2, 0.35, wet) * _smooth(1.1, 0.9, wet) * _pick(np.broadcast_to(sc.land, sc.wet.shape), where)
    _blend_at(rgb, where, a * 0.9, _BURN_RIM[:, None], alpha_picked=True)
    _blend_at(rgb, where, _smooth(_BURN_LEVEL, _BURN_LEVEL + 0.1, bn) * a, _BURN[:, None], alpha_picked=True)


def _add_fields(rgb: FloatArray, sc: _Scene, woods: FloatArray) -> None:
    """A patchwork of crops on flat, cleared, temperate and moderately wet lowland; a
    share of the fields changes crop from one year to the next."""
    ag = _smooth(-0.1, 0.05, sc.c[_CH["AG"]])
    ag *= _smooth(0.3, 0.42, sc.wet) * _smooth(0.85, 0.7, sc.wet) * _smooth(0.2, 0.35, sc.temp)
    ag *= _smooth(1500.0, 800.0, sc.elev) * _smooth(0.2, 0.06, np.hypot(sc.gx, sc.gy))
    ag *= (1.0 - 0.85 * woods) * 0.8
    where = _where(ag > 0.01)
    if where is None:
        return
    cells = _field_cells(*sc.s.mercator(where), sc.seed)
    fid = _rehash(cells, 0xF1E1D)
    # rotated fields follow the year's regional crop calendar (the open-land albedo field):
    # across tens of km most fields are bare, green or ripe together; crops run dark to bright
    calendar = 0.5 + 2.0 * _pick(sc.c[_CH["AO"]], where) + 0.6 * (_rehash(cells, sc.look.crop_salt) - 0.5)
    kind = np.where(fid < _CROP_ROTATION, np.clip(calendar, 0.0, 0.999), fid)
    crop = np.take(_CROPS.T, np.minimum((kind * len(_CROPS)).astype(np.intp), len(_CROPS) - 1), axis=1)
    _blend_at(rgb, where, _pick(ag, where) * (0.4 + 0.6 * fid), crop, alpha_picked=True)


def _add_rock_and_snow(rgb: FloatArray, sc: _Scene) -> FloatArray:
    """Bare rock above the tree line, dark rock on dry ridges, and the snow cover
    (returned, 0..1: it is drawn after the cities and keeps rivers off glaciers)."""
    above = sc.elev + 250.0 * sc.c[_CH["H"]] - sc.snowline
    top = float(above.max())
    if top > -900.0:
        _blend(rgb, _smooth(-900.0, -300.0, above) * sc.land, _ROCK)
    ridged = sc.c[_CH["R"]]
    if float(ridged.max()) > 0.35 and float(sc.wet.min()) < 0.35:  # desert plateaus, hamadas
        _blend(rgb, _smooth(0.35, 0.6, ridged) * _smooth(0.35, 0.15, sc.wet) * 0.6, _DESERT_ROCK)
    polar = sc.alat + 4.0 * sc.c[_CH["TMP"]]
    if top <= -300.0 and float(polar.max()) <= 68.0:
        return np.zeros_like(sc.elev)
    snow = np.maximum(_smooth(-300.0, 300.0, above), _smooth(68.0, 74.0, polar))
    snow *= _smooth(1.1, 0.5, np.hypot(sc.gx, sc.gy))  # steep faces shed their snow
    snow *= sc.land
    return snow


def _add_cities(rgb: FloatArray, sc: _Scene) -> None:
    """Grey-beige blocks (~600 m, with ~300 m roofs) where the city field peaks on low land."""
    city_f = sc.c[_CH["CITY"]] - 0.5
    where = _where((city_f > -0.05) & (sc.elev < 1500.0) & (sc.land > 0.5))
    if where is None:
        return
    u, v = sc.s.mercator(where)
    blk = _rehash(_grid_cells(u, v, 66_431, 71_713, sc.seed ^ 0x5EED), 1)
    fine = _rehash(_grid_cells(u, v, 132_863, 143_419, sc.seed ^ 0xB10C), 2)
    # 300 m roofs alias at zoom 9: show their mean tone as they near a pixel
    contrast = _fade(cell_m(17) / _pick(np.broadcast_to(sc.pix, city_f.shape), where))
    # ragged edges, a park or a field here and there, blocks of varied roofs
    a = np.clip((_pick(city_f, where) + 0.06 * (blk - 0.5)) / 0.04, 0.0, 1.0) * np.where(blk < 0.12, 0.3, 0.9)
    _blend_at(rgb, where, a, _CITY[:, None] * (0.78 + 0.3 * blk + 0.3 * contrast * (fine - 0.5)), alpha_picked=True)


def _add_water(rgb: FloatArray, sc: _Scene, snow: FloatArray) -> None:
    """Lakes (a lighter shore darkening to deep water) and rivers: flat, unshaded water."""
    lk_level = 0.46 + 0.2 * np.clip(1.0 - sc.wet, 0.0, 1.0) + sc.look.water
    lk_level -= _LAKE_REGIONAL * sc.c[_CH["VA"]]  # a wet year fills the lakes of its region
    # skip the lake edge maths when no pixel comes near the lake threshold
    margin = 0.05 + 3.0 * float(np.max(sc.pix)) / cell_m(_BASE_OCTAVE["LK"])
    if float((sc.c[_CH["LK"]] - lk_level).max()) > -margin:
        lake_m = _signed_distance(sc.s, sc.ch[_CH["LK"]], lk_level)[0]
        water = lake_m / sc.pix
        water += 0.5
        np.clip(water, 0.0, 1.0, out=water)
        water *= _smooth(0.01, 0.03, sc.hl) * (sc.elev < sc.snowline)
        deep = _smooth(0.0, 400.0, lake_m)[None]
        nd = deep.ndim - 1
        _blend(rgb, water, _expand(_LAKE_SHORE, nd) + deep * _expand(_LAKE - _LAKE_SHORE, nd))
    river = _rivers(sc.s, sc.ch, sc.wet, sc.pix, sc.look.green)
    river *= sc.land * (1.0 - snow)
    _blend(rgb, river, _RIVER)


def _sea(sc: _Scene) -> FloatArray:
    """Sea colour (3, ...): deep blue, lighter over the shelf along the coasts."""
    sea = _expand(_SEA_DEEP, sc.hl.ndim) * np.ones_like(sc.hl)
    _blend(sea, _smooth(-0.008, 0.0, sc.hl) * 0.6, _SEA_SHALLOW)
    return sea


def _compose(s: _TileSampler | _PointSampler, year: int, seed: int) -> U8Array:
    """The colour (..., 3) of every output pixel of sampler `s`: ground, fields, rock,
    cities, snow, relief shading, lakes and rivers on land; sea elsewhere; then the
    year's haze and colour balance."""
    sc = _scene(s, year, seed)
    if float(sc.land.max()) > 0.0:
        rgb = _ground(sc)
        snow = _add_rock_and_snow(rgb, sc)
        _add_cities(rgb, sc)
        _blend(rgb, snow, _SNOW)
        rgb *= _hillshade(sc.gx, sc.gy)
        _add_water(rgb, sc, snow)
        if float(sc.land.min()) < 1.0:
            _blend(rgb, 1.0 - sc.land, _sea(sc))
    else:
        rgb = _sea(sc)
    _blend(rgb, sc.look.haze + _HAZE_PATCHES * _smooth(0.0, 0.45, sc.c[_CH["HZ"]]), _HAZE)
    # the brightness of the scenes behind the mosaic, and the layer's colour balance
    gain = sc.c[_CH["HZ"]] * _MOSAIC_GAIN
    gain += 1.0
    rgb *= gain[None] * _expand(np.asarray(sc.look.gain, dtype=np.float32), sc.hl.ndim)
    rgb += 0.5
    np.clip(rgb, 0, 255, out=rgb)
    return np.moveaxis(rgb.astype(np.uint8), 0, -1).copy()


# --------------------------------------------------------------------------- API


def render_tile(z: int, x: int, y: int, year: int, size: int = TILE_SIZE, seed: int = 0) -> U8Array:
    """RGB (size, size, 3) of Web-Mercator tile z/x/y (row y grows south), as EOX serves it.

    Pixel centres follow mercantile's maths (lon = X/2^z*360-180, lat =
    atan(sinh(pi(1-2Y/2^z)))), so a 2x2 block of zoom z+1 tiles downsampled by two
    matches the zoom-z tile and neighbouring tiles continue each other."""
    if not 0 <= z <= 24:
        raise ValueError(f"zoom must be in 0..24, got {z}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise ValueError(f"tile {z}/{x}/{y} outside the zoom-{z} grid")
    if size < 8 or size % 2:
        raise ValueError("size must be an even number of pixels, at least 8")
    return _compose(_TileSampler(z, x, y, size), year, seed)


def render_lonlat(
    lon: npt.ArrayLike, lat: npt.ArrayLike, year: int, seed: int = 0, *, pixel_m: npt.ArrayLike = 76.0
) -> U8Array:
    """RGB (..., 3) of ground points (degrees), each seen as a pixel of `pixel_m` metres.

    `pixel_m` sets which octaves are fine enough to alias (they are faded out) and the
    step of the slope estimate; the default is a zoom-11 pixel at the equator. Every
    octave is evaluated at every point, so this costs far more per point than
    `render_tile`; use tiles for bulk rendering."""
    lon_a, lat_a, pix_a = np.broadcast_arrays(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64), np.asarray(pixel_m, dtype=np.float64)
    )
    shape = lon_a.shape
    if lon_a.size == 0:
        return np.zeros((*shape, 3), dtype=np.uint8)
    flat = _PointSampler(lon_a.reshape(-1), np.clip(lat_a, -90.0, 90.0).reshape(-1), pix_a.reshape(-1))
    return _compose(flat, year, seed).reshape(*shape, 3)
