"""Sample pictures of the synthetic world (docs/synthetic_world_z9_z10_z11.png) and of
simulated astronaut photos beside their database regions (docs/synthetic_photos.png).

    python benchmarks/make_synthetic_samples.py [--lon L --lat B --seed S --out PATH]
    python benchmarks/make_synthetic_samples.py --photos [--query-ids ID ID ID --out PATH]

Three nested database regions (4x4 tiles, 1024x1024 px, as the fetch stage mosaics
them) at zooms 9, 10 and 11 around one place, for the 2018 and 2021 layers. Each zoom's
region covers the middle half of the previous one (dashed box), so the picture shows
that the same ground looks the same at every zoom, and that the years differ (season,
snow line, lake level, crops, haze, colour balance) over the same geography.

With --photos: for each query (default: three near the Texas POI, one whose best region is
at each zoom, with different orientations), the simulated photo (`render_photo`, its own
year, ORIENTATION, nadir and effects, seeded by its id) beside the two 2021 database regions
it overlaps most (from data/intersections/intersections_2021.parquet), rendered with
`render_tile`, with the footprint drawn on them and the photo's top edge in yellow.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mercantile  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.schema import CORNER_COLUMNS  # noqa: E402
from pipeline.synthetic.photos import PhotoGeometry, photo_seed, render_photo  # noqa: E402
from pipeline.synthetic.world import render_tile  # noqa: E402

PHOTO_QUERIES = ("ISS050-E-14232", "ISS055-E-64628", "ISS040-E-11848")  # best region at z9, z10, z11

ZOOMS = (9, 10, 11)
YEARS = (2018, 2021)
PANEL_PX = 600  # each 1024-px region is shown at this size: 3 panels ~ 1800 px wide


def nested_regions(lon: float, lat: float) -> dict[int, tuple[int, int]]:
    """North-west tile (x, y) of a 4x4-tile region per zoom, each centred on the one above.

    The zoom-11 region starts at a tile index = 2 (mod 4), about two tiles west and north
    of the place; halving and stepping back one tile per zoom then centres every region
    exactly in the previous one."""
    t = mercantile.tile(lon, lat, ZOOMS[-1])
    x, y = 4 * round((t.x - 4) / 4) + 2, 4 * round((t.y - 4) / 4) + 2
    regions = {ZOOMS[-1]: (x, y)}
    for z in reversed(ZOOMS[:-1]):
        x, y = x // 2 - 1, y // 2 - 1
        regions[z] = (x, y)
    return regions


def region_mosaic(z: int, x0: int, y0: int, year: int, seed: int) -> np.ndarray:
    """The 1024x1024 mosaic of tiles x0..x0+3, y0..y0+3."""
    n = 1 << z
    rows = [[render_tile(z, (x0 + i) % n, y0 + j, year, seed=seed) for i in range(4)] for j in range(4)]
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


def save_png(fig: plt.Figure, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    # a dithered 256-colour palette keeps the file small enough for a repository
    rgb = Image.open(buf).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(out)


def photos_figure(query_ids: list[str], seed: int, out: Path) -> None:
    import pandas as pd

    queries = pd.read_parquet(ROOT / "data" / "queries" / "queries.parquet").set_index("query_id")
    inter = pd.read_parquet(ROOT / "data" / "intersections" / "intersections_2021.parquet")
    fig, axes = plt.subplots(len(query_ids), 3, figsize=(15.0, 5.2 * len(query_ids)), dpi=100)
    for row, qid in enumerate(query_ids):
        q = queries.loc[qid]
        corners = [float(q[c]) for c in CORNER_COLUMNS]
        orientation = float(q["orientation"])
        photo = render_photo(
            corners, int(q["year"]), photo_seed(qid), 1024, orientation=orientation,
            nadir=(float(q["nadir_lat"]), float(q["nadir_lon"])), world_seed=seed,
        )  # fmt: skip
        ax = axes[row, 0]
        ax.imshow(np.asarray(Image.fromarray(photo).resize((500, 500), Image.LANCZOS)), extent=(0, 1024, 1024, 0))
        ax.set_title(f"simulated {qid}  ·  {q['date']}  ·  ORIENTATION {orientation:g}°", fontsize=11)
        geom = PhotoGeometry(corners, orientation)
        top = [i for i in range(4) if geom.image_corners[i, 1] < 0.5]  # footprint corners on the photo's top edge
        best = inter[inter["query_id"] == qid].sort_values("iou", ascending=False).head(2)
        for col, (_, reg) in enumerate(best.iterrows(), start=1):
            z, r0, c0 = (int(v) for v in reg["region_id"].split("_"))
            ax = axes[row, col]
            ax.imshow(np.asarray(Image.fromarray(region_mosaic(z, c0, r0, 2021, seed)).resize((500, 500), Image.LANCZOS)),
                      extent=(0, 1024, 1024, 0))  # fmt: skip
            lat, lon = np.array(corners[0::2]), np.array(corners[1::2])
            scale = 256 * (1 << z)
            px = (lon + 180.0) / 360.0 * scale - 256 * c0
            py = (0.5 - np.arcsinh(np.tan(np.radians(lat))) / (2 * np.pi)) * scale - 256 * r0
            ax.add_patch(Polygon(np.c_[px, py], closed=True, fill=False, ec="white", lw=1.5, ls="--"))
            ax.plot(px[top], py[top], color="yellow", lw=3)
            ax.set_xlim(0, 1024)
            ax.set_ylim(1024, 0)
            ax.set_title(f"2021 region {reg['region_id']}  ·  IoU {reg['iou']:.2f}", fontsize=11)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "Simulated astronaut photos (left; their own year, orientation, haze, clouds, blur, JPEG) and the 2021 "
        "synthetic database regions they overlap most\n(footprint dashed, the photo's top edge yellow)",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=1.5)
    save_png(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lon", type=float, default=-95.0)
    parser.add_argument("--lat", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", action="store_true", help="make the simulated-photo figure instead")
    parser.add_argument("--query-ids", nargs="+", default=list(PHOTO_QUERIES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.photos:
        photos_figure(args.query_ids, args.seed, args.out or ROOT / "docs" / "synthetic_photos.png")
        return
    args.out = args.out or ROOT / "docs" / "synthetic_world_z9_z10_z11.png"

    regions = nested_regions(args.lon, args.lat)
    fig, axes = plt.subplots(len(YEARS), len(ZOOMS), figsize=(18.0, 13.2), dpi=100)
    for row, year in enumerate(YEARS):
        for col, z in enumerate(ZOOMS):
            x0, y0 = regions[z]
            img = Image.fromarray(region_mosaic(z, x0, y0, year, args.seed)).resize((PANEL_PX, PANEL_PX), Image.LANCZOS)
            ax = axes[row, col]
            ax.imshow(np.asarray(img), extent=(0, 1024, 1024, 0), interpolation="none")
            if z != ZOOMS[-1]:  # the next zoom's region: the middle half
                ax.add_patch(Rectangle((256, 256), 512, 512, fill=False, ec="white", lw=1.2, ls="--"))
            nw = mercantile.bounds(x0, y0, z)
            km = 4 * 40075.016 / (1 << z) * np.cos(np.radians(nw.north))
            ax.set_title(f"{year}  ·  zoom {z}  ·  region {z}/{y0}/{x0}  ·  ~{km:.0f} km across", fontsize=12)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"Synthetic Earth (seed {args.seed}) around {args.lat:.1f}°, {args.lon:.1f}°: 4x4-tile regions at zooms "
        "9, 10, 11 (dashed box = next zoom's region); top 2018, bottom 2021",
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=2.0)
    save_png(fig, args.out)


if __name__ == "__main__":
    main()
