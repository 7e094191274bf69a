"""Does the synthetic world's year-to-year change need learning? Cross-year retrieval of regions.

    python benchmarks/year_change_probe.py [--regions N] [--seeds S ...] [--train-minutes M]

EarthLoc trains on one signal: a region's 2018, 2019 and 2020 mosaics must find its 2021
mosaic among other regions. If a descriptor with no learning already does that, training
has nothing to learn and cannot be told apart from its initialisation. The probe measures
it straight from the world renderer (no tile server, no fetch, no JPEG):

1. N regions of the demo area (zoom 10 and 11, 4x4 tiles, non-overlapping within a zoom, at
   least half land, centres within --radius-km of lat 30, lon -95) rendered for every year, each tile at
   --tile-px pixels (a 4x4 region then has 4 * tile-px pixels and is resized to the
   model's image size, as the train stage resizes its mosaics).
2. Each 2018/2019/2020 image is a query against the 2021 images of all N regions; a hit is
   the query's own region. Top-1 and top-10 per query year and over all three, for
   - thumbnail: the image's 16x16 grey thumbnail, standardised, L2-normalised;
   - untrained: earthloc.model with params.yaml's model section, one row per init seed;
   - trained (with --train-minutes M > 0): the first seed's network trained for M minutes
     of CPU on a *different* area (--train-lat/--train-lon, > 1000 km away) with the train
     stage's own step (`earthloc.trainer.train_step`: year-wise augmentation, multi-similarity
     loss), then probed like the others.
3. With --photos K: K simulated astronaut photos (pipeline/synthetic/photos.py, every
   effect, the photo's own year) whose footprint centre lies on a probe region, square,
   north-up, the footprint about one zoom-10 region wide; a hit is a 2021 region that
   contains the footprint centre. The same descriptors, top-1/top-10.

Runs single-threaded. Rendering 200 regions x 4 years takes 80 s on a free core (2-5 min
on a busy one); --cache DIR keeps the images, so reruns on an unchanged world skip it.
The embeddings take a minute or two; training takes what --train-minutes says.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mercantile  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

from earthloc.augment import AugmentConfig, YearwiseAugment, prepare  # noqa: E402
from earthloc.loss import LossConfig, NeutralAwareMSLoss  # noqa: E402
from earthloc.model import ModelConfig, build_model  # noqa: E402
from earthloc.trainer import train_step  # noqa: E402
from pipeline.geo.distance import haversine_km  # noqa: E402
from pipeline.synthetic import landfield  # noqa: E402
from pipeline.synthetic.photos import PhotoEffects, render_photo  # noqa: E402
from pipeline.synthetic.world import YEARS, render_tile  # noqa: E402

REGION_TILES = 4
QUERY_YEARS = (2018, 2019, 2020)
DB_YEAR = 2021
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Region:
    zoom: int
    x: int  # top-left tile
    y: int

    def bounds(self) -> tuple[float, float, float, float]:
        """west, south, east, north in degrees."""
        nw = mercantile.bounds(self.x, self.y, self.zoom)
        se = mercantile.bounds(self.x + REGION_TILES - 1, self.y + REGION_TILES - 1, self.zoom)
        return nw.west, se.south, se.east, nw.north

    def centre(self) -> tuple[float, float]:
        """(lat, lon) of the centre."""
        w, s, e, n = self.bounds()
        return 0.5 * (s + n), 0.5 * (w + e)


def pick_regions(lat: float, lon: float, radius_km: float, zooms: tuple[int, ...], n: int, seed: int) -> list[Region]:
    """n regions (equal shares per zoom) whose centre lies within radius_km of (lat, lon);
    top-left tiles on multiples of REGION_TILES so regions of one zoom do not overlap."""
    rng = np.random.default_rng(seed)
    out: list[Region] = []
    for k, z in enumerate(zooms):
        want = n // len(zooms) + (1 if k < n % len(zooms) else 0)
        dlat = math.degrees(radius_km / 6371.0)
        dlon = dlat / math.cos(math.radians(lat))
        nw = mercantile.tile(lon - dlon, min(lat + dlat, 85.0), z)
        se = mercantile.tile(lon + dlon, max(lat - dlat, -85.0), z)
        cands = [
            Region(z, x, y)
            for x in range(nw.x - nw.x % REGION_TILES, se.x + 1, REGION_TILES)
            for y in range(nw.y - nw.y % REGION_TILES, se.y + 1, REGION_TILES)
        ]
        cands = [r for r in cands if haversine_km(lat, lon, *r.centre()) <= radius_km and _mostly_land(r)]
        if len(cands) < want:
            raise SystemExit(f"only {len(cands)} zoom-{z} regions within {radius_km} km; ask for fewer")
        out += [cands[i] for i in sorted(rng.choice(len(cands), want, replace=False))]
    return out


def _mostly_land(r: Region) -> bool:
    """At least half of a 5x5 grid of points in the region on land (the real land field
    the world follows): open sea looks the same in every region and year."""
    w, s, e, n = r.bounds()
    lon, lat = np.meshgrid(np.linspace(w, e, 5), np.linspace(s, n, 5))
    return float((landfield.sample_points(lon, lat) > 0).mean()) >= 0.5


def render_region(r: Region, year: int, tile_px: int, world_seed: int) -> np.ndarray:
    """(S, S, 3) uint8 mosaic of the region's 4x4 tiles, each rendered at tile_px."""
    rows = [
        np.concatenate([render_tile(r.zoom, r.x + i, r.y + j, year, size=tile_px, seed=world_seed)
                        for i in range(REGION_TILES)], axis=1)
        for j in range(REGION_TILES)
    ]  # fmt: skip
    return np.concatenate(rows, axis=0)


def render_all(regions: list[Region], tile_px: int, world_seed: int, cache: Path | None = None) -> torch.Tensor:
    """(R, Y, 3, S, S) uint8 for every region and every year of YEARS.

    With `cache`, the images are kept in an .npy named by a hash of the world's source and
    the arguments, so a rerun on an unchanged world (another seed, a longer training)
    skips the rendering; any edit of the renderer renders anew."""
    path = None
    if cache is not None:
        h = hashlib.sha256()
        for src in sorted((ROOT / "pipeline" / "synthetic").glob("*.py")):
            h.update(src.read_bytes())
        h.update(repr((regions, tile_px, world_seed, YEARS)).encode())
        path = cache / f"regions_{h.hexdigest()[:16]}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path))
    out = np.stack([np.stack([render_region(r, y, tile_px, world_seed) for y in YEARS]) for r in regions])
    images = torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, images.numpy())
        tmp.replace(path)
    return images


def thumbnail(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 256): 16x16 grey thumbnail, standardised, L2-normalised."""
    grey = (images.float() * torch.from_numpy(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    t = F.adaptive_avg_pool2d(grey, 16).flatten(1)
    t = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True).clamp_min(1e-6)
    return F.normalize(t, dim=1).numpy()


@torch.no_grad()
def network(model: torch.nn.Module, images: torch.Tensor, size: int) -> np.ndarray:
    model.eval()
    return torch.cat([model(prepare(images[i : i + 64], size)) for i in range(0, len(images), 64)]).numpy()


def recall(query: np.ndarray, db: np.ndarray, hits: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-10 (%) of queries whose ranking of db puts a hit (bool (Q, D)) first / in the first 10."""
    order = np.argsort(-(query @ db.T), axis=1)[:, :10]
    found = np.take_along_axis(hits, order, axis=1)
    return 100.0 * float(found[:, 0].mean()), 100.0 * float(found.any(axis=1).mean())


def cross_year(describe, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per query year (and 'all'): top-1/top-10 of year-y images against the DB_YEAR images."""
    r = images.shape[0]
    desc = {y: describe(images[:, k]) for k, y in enumerate(YEARS)}
    eye = np.eye(r, dtype=bool)
    out = {str(y): recall(desc[y], desc[DB_YEAR], eye) for y in QUERY_YEARS}
    out["all"] = recall(np.concatenate([desc[y] for y in QUERY_YEARS]), desc[DB_YEAR], np.tile(eye, (3, 1)))
    return out


def model_config() -> ModelConfig:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return ModelConfig.from_section(params["model"])


def untrained(cfg: ModelConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, load_weights=False)


def train(model: torch.nn.Module, images: torch.Tensor, cfg: ModelConfig, minutes: float, seed: int, log) -> int:
    """Train `model` in place on (R, Y, 3, S, S) images with the train stage's step for
    `minutes` of wall time; regions do not overlap, so no pair is neutral. Returns iterations."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    augment = YearwiseAugment(AugmentConfig.from_section(params["augment"], cfg.image_size))
    loss_fn = NeutralAwareMSLoss.from_config(LossConfig.from_section(params["loss"]))
    tcfg = params["train"]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(tcfg["lr"]))
    per_batch = int(tcfg["regions_per_batch"])
    g = torch.Generator().manual_seed(seed)
    neutral = torch.zeros(per_batch, per_batch, dtype=torch.bool)
    labels = torch.arange(per_batch).repeat_interleave(len(YEARS))
    model.train()
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < 60.0 * minutes:
        batch = torch.randperm(images.shape[0], generator=g)[:per_batch]
        out = train_step(model, augment, loss_fn, optimizer, images[batch], labels, neutral, g)
        it += 1
        if it % 20 == 0:
            log(f"  iteration {it}: loss {float(out.loss.detach()):.3f}, {time.perf_counter() - t0:.0f} s")
    return it


def photo_probe(
    regions: list[Region], k: int, size: int, world_seed: int, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """k photos centred on random probe regions: (k, 3, size, size) uint8 and hits (k, R):
    the regions whose bounds contain the footprint centre."""
    rng = np.random.default_rng(seed)
    fx = PhotoEffects()
    bounds = np.array([r.bounds() for r in regions])
    photos, hits = [], []
    for i in rng.choice(len(regions), k, replace=k > len(regions)):
        w, s, e, n = regions[i].bounds()
        lat, lon = rng.uniform(s, n), rng.uniform(w, e)
        half_km = rng.uniform(60.0, 120.0)
        dlat = half_km / 111.2
        dlon = dlat / math.cos(math.radians(lat))
        corners = [lat + dlat, lon - dlon, lat - dlat, lon - dlon, lat - dlat, lon + dlon, lat + dlat, lon + dlon]
        year = int(rng.integers(2001, 2024))
        rgb = render_photo(corners, year, int(rng.integers(1 << 31)), size, orientation=0.0,
                           effects=fx, world_seed=world_seed, render_px=size)  # fmt: skip
        photos.append(rgb)
        hits.append((bounds[:, 0] <= lon) & (lon <= bounds[:, 2]) & (bounds[:, 1] <= lat) & (lat <= bounds[:, 3]))
    return torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous(), np.stack(hits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regions", type=int, default=200)
    ap.add_argument("--lat", type=float, default=30.0)
    ap.add_argument("--lon", type=float, default=-95.0)
    ap.add_argument("--radius-km", type=float, default=1000.0)
    ap.add_argument("--zooms", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--tile-px", type=int, default=32, help="render size of each 256-px tile")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="init seeds of the untrained network")
    ap.add_argument("--photos", type=int, default=0, help="simulated photos to probe (0 = none)")
    ap.add_argument("--cache", type=Path, default=None, help="keep rendered images here for reruns")
    ap.add_argument("--train-minutes", type=float, default=0.0)
    ap.add_argument("--train-regions", type=int, default=400)
    ap.add_argument("--train-lat", type=float, default=36.0)
    ap.add_argument("--train-lon", type=float, default=-84.0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    def log(msg: str) -> None:
        print(msg, flush=True)

    cfg = model_config()
    t0 = time.perf_counter()
    regions = pick_regions(args.lat, args.lon, args.radius_km, tuple(args.zooms), args.regions, 0)
    images = render_all(regions, args.tile_px, args.world_seed, args.cache)
    log(
        f"rendered {len(regions)} regions x {len(YEARS)} years at {images.shape[-1]} px in {time.perf_counter() - t0:.0f} s"
    )

    rows: list[tuple[str, dict[str, tuple[float, float]]]] = [("thumbnail", cross_year(thumbnail, images))]
    nets = {}
    for s in args.seeds:
        nets[s] = untrained(cfg, s)
        rows.append((f"untrained seed {s}", cross_year(lambda x, m=nets[s]: network(m, x, cfg.image_size), images)))
    if args.train_minutes > 0:
        t1 = time.perf_counter()
        train_regions = pick_regions(args.train_lat, args.train_lon, args.radius_km, tuple(args.zooms),
                                     args.train_regions, 1)  # fmt: skip
        train_images = render_all(train_regions, args.tile_px, args.world_seed, args.cache)
        log(f"rendered {len(train_regions)} training regions in {time.perf_counter() - t1:.0f} s")
        trained = untrained(cfg, args.seeds[0])
        its = train(trained, train_images, cfg, args.train_minutes, args.seeds[0], log)
        rows.append(
            (
                f"trained seed {args.seeds[0]}, {its} it",
                cross_year(lambda x: network(trained, x, cfg.image_size), images),
            )
        )

    log(
        f"\ncross-year retrieval, {len(regions)} regions (zooms {args.zooms}), query year -> {DB_YEAR}: top-1 / top-10 %"
    )
    head = "| descriptor | " + " | ".join(f"{y}" for y in QUERY_YEARS) + " | all |"
    log(head)
    log("|" + "---|" * (len(QUERY_YEARS) + 2))
    for name, res in rows:
        log(
            f"| {name} | "
            + " | ".join(f"{res[k][0]:.1f} / {res[k][1]:.1f}" for k in (*map(str, QUERY_YEARS), "all"))
            + " |"
        )

    if args.photos > 0:
        photos, hits = photo_probe(regions, args.photos, 128, args.world_seed, 2)
        db = images[:, YEARS.index(DB_YEAR)]
        log(f"\nphotos -> {DB_YEAR} regions, {args.photos} photos: top-1 / top-10 % (random top-10 "
            f"{100.0 * min(1.0, 10 * hits.sum(1).mean() / len(regions)):.1f})")  # fmt: skip
        log(f"| thumbnail | {'{:.1f} / {:.1f}'.format(*recall(thumbnail(photos), thumbnail(db), hits))} |")
        for s, m in nets.items():
            log(
                f"| untrained seed {s} | {'{:.1f} / {:.1f}'.format(*recall(network(m, photos, cfg.image_size), network(m, db, cfg.image_size), hits))} |"
            )
        if args.train_minutes > 0:
            log(
                f"| trained | {'{:.1f} / {:.1f}'.format(*recall(network(trained, photos, cfg.image_size), network(trained, db, cfg.image_size), hits))} |"
            )
    log(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
