"""Sample picture of the synthetic world: docs/synthetic_world_z9_z10_z11.png.

    python benchmarks/make_synthetic_samples.py [--lon L --lat B --seed S --out PATH]

Three nested database regions (4x4 tiles, 1024x1024 px, as the fetch stage mosaics
them) at zooms 9, 10 and 11 around one place, for the 2018 and 2021 layers. Each zoom's
region covers the middle half of the previous one (dashed box), so the picture shows
that the same ground looks the same at every zoom, and that the years differ (season,
snow line, lake level, crops, haze, colour balance) over the same geography.
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
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.synthetic.world import render_tile  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lon", type=float, default=-95.0)
    parser.add_argument("--lat", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "synthetic_world_z9_z10_z11.png")
    args = parser.parse_args()

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    # a dithered 256-colour palette keeps the file small enough for a repository
    rgb = Image.open(buf).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
