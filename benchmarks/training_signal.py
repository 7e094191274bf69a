"""What the default training learns on the synthetic demo, and what the photos need.

Three measurements on the `demo` evaluation set, each for the untrained network (the
trained model's own initial weights, as the evaluate stage's baseline) and for every
checkpoint given with --model (default: the train stage's best model and its last
checkpoint):

1. **Training objective at init**: each 2018 database image as a query against the 2021
   images of the same 459 regions; R@1 of finding its own region (best rotation not
   needed: the years are north-up). This is what EarthLoc's year-positives ask for.
2. **Photo effects**: the demo photos rendered again at 256 px over the same footprints,
   years, orientations and seeds (pipeline/synthetic/photos.py) with every effect (the
   stage's photos), with every effect but clouds, and with none (geometry and the photo's
   own year only); R@1/5/10 with 4x90° database TTA, as the evaluate stage counts them.
3. **Zoom of the top-1 prediction**: share of the top-1 regions at zooms 9/10/11 and how
   often each is a positive (a photo spans 100-300 km, a zoom-11 region 68 km).

Usage (after `make repro`, from the repository root, `.venv` active):
    python benchmarks/training_signal.py [--model PATH ...] [--set NAME] [--work DIR]

Rendering 3 x 336 photos takes about 2.5 min on one core; they are cached in --work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from earthloc.data import training_regions  # noqa: E402
from earthloc.images import load_model_input  # noqa: E402
from earthloc.model import ModelConfig, load_checkpoint  # noqa: E402
from earthloc.retrieval.descriptors import rotate_batch  # noqa: E402
from earthloc.retrieval.evalset import EvalSetFiles, read_evalset, score_descriptors  # noqa: E402
from pipeline.schema import CORNER_COLUMNS  # noqa: E402
from pipeline.stages.evaluate import untrained_model  # noqa: E402
from pipeline.synthetic.photos import NO_EFFECTS, PhotoEffects, photo_seed, render_photo  # noqa: E402

VARIANTS = {"all effects": PhotoEffects(), "no clouds": PhotoEffects(cloud_chance=0.0), "no effects": NO_EFFECTS}
ROTATIONS = (0, 90, 180, 270)


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, rotations: tuple[int, ...]) -> np.ndarray:
    model.eval()
    return np.stack([
        torch.cat([model(rotate_batch(images[i : i + 64], r)) for i in range(0, len(images), 64)]).numpy()
        for r in rotations
    ])  # fmt: skip


def render_variants(
    ev: EvalSetFiles, queries: pd.DataFrame, work: Path, seed: int, world_seed: int
) -> dict[str, list[Path]]:
    rows = queries.set_index("query_id").loc[ev.queries["query_id"]]
    out: dict[str, list[Path]] = {}
    for name, fx in VARIANTS.items():
        d = work / name.replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for qid, row in rows.iterrows():
            p = d / f"{qid}.png"
            if not p.is_file():
                rgb = render_photo(
                    [float(row[c]) for c in CORNER_COLUMNS], int(row["year"]), photo_seed(str(qid), seed), 256,
                    orientation=float(row["orientation"]), nadir=(float(row["nadir_lat"]), float(row["nadir_lon"])),
                    effects=fx, world_seed=world_seed, render_px=256,
                )  # fmt: skip
                tmp = p.with_suffix(".tmp.png")
                Image.fromarray(rgb).save(tmp)
                tmp.replace(p)
            paths.append(p)
        out[name] = paths
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, nargs="+",
                    default=[Path("models/earthloc.pt"), Path("models/train/checkpoints/last.pt")])  # fmt: skip
    ap.add_argument("--set", default="demo")
    ap.add_argument("--work", type=Path, default=None, help="cache of the re-rendered photos (default: a temp dir)")
    ap.add_argument("--photo-seed", type=int, default=0, help="fetch_queries.seed")
    ap.add_argument("--world-seed", type=int, default=0, help="fetch_queries.world_seed")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    ev = read_evalset(Path("data/evalsets") / args.set, "tiles")
    nets: dict[str, torch.nn.Module] = {}
    cfg: ModelConfig | None = None
    for path in args.model:
        ck = load_checkpoint(path)  # the stage's model file or a train checkpoint (last.pt)
        model, cfg, extra = ck.model.eval(), ck.cfg, ck.extra
        if "untrained" not in nets:
            nets["untrained"] = untrained_model(cfg, int(extra.get("init_seed", 0))).eval()
        # a train-stage checkpoint (last.pt, with its optimiser) is at `iteration`; the model
        # file the stage writes is the best validation's weights
        it = extra.get("iteration") if "optimizer" in extra else extra.get("best_iteration", extra.get("iteration"))
        nets[f"{path.name} (iteration {it})" if it is not None else path.name] = model
    assert cfg is not None
    size = cfg.image_size
    zoom = ev.database["zoom"].to_numpy()
    db = torch.stack([load_model_input(p, size) for p in ev.db_paths])
    # the same regions' 2018 images, from the tile store's manifests (as training finds them)
    years = training_regions(Path("tiles"), Path("data/grid/regions.parquet"), (2018, 2021))
    path_2018 = dict(zip(years.region_ids.tolist(), (years.abs_path(i, 0) for i in range(len(years)))))
    db18 = torch.stack([load_model_input(path_2018[r], size) for r in ev.database["region_id"]])

    print(f"1. 2018 image -> 2021 images of the same {len(db)} regions, R@1 of its own region (the training positives)")
    for name, net in nets.items():
        d21, d18 = embed(net, db, (0,))[0], embed(net, db18, (0,))[0]
        hit = np.argmax(d18 @ d21.T, axis=1) == np.arange(len(d21))
        by_zoom = ", ".join(f"z{z} {100 * hit[zoom == z].mean():.1f}" for z in np.unique(zoom))
        print(f"   {name}: {100 * hit.mean():.1f} ({by_zoom})")

    work = args.work or Path(tempfile.mkdtemp(prefix="training_signal_"))
    queries = pd.read_parquet("data/queries/queries.parquet")
    variants = render_variants(ev, queries, work, args.photo_seed, args.world_seed)
    db_desc = {name: embed(net, db, ROTATIONS) for name, net in nets.items()}
    print(
        f"\n2. demo photos ({len(ev.queries)}) re-rendered at 256 px; R@1 / R@5 / R@10 (uncollapsed), photos in {work}"
    )
    print("| photos | " + " | ".join(nets) + " |\n|---|" + "---|" * len(nets))
    top1: dict[str, np.ndarray] = {}
    for vname, paths in variants.items():
        q = torch.stack([load_model_input(p, size) for p in paths])
        cells = []
        for name, net in nets.items():
            res = score_descriptors(db_desc[name], embed(net, q, (0,))[0], ev, k=100)
            cells.append(" / ".join(f"{res.recalls[n]:.1f}" for n in (1, 5, 10)))
            if vname == "all effects":
                top1[name] = res.search.db_index[:, 0]
        print(f"| {vname} | " + " | ".join(cells) + " |")

    print("\n3. top-1 prediction on the photos with all effects: share by zoom (share of those that are positives)")
    for name, t in top1.items():
        z1 = zoom[t]
        ok = np.array([t[i] in set(ev.positives[i].tolist()) for i in range(len(t))])
        cells = ", ".join(f"z{z} {100 * (z1 == z).mean():.0f} % ({100 * ok[z1 == z].mean():.0f} %)" if (z1 == z).any()
                          else f"z{z} 0 %" for z in np.unique(zoom))  # fmt: skip
        print(f"   {name}: {cells}")
    print("   database: " + ", ".join(f"z{z} {100 * (zoom == z).mean():.0f} %" for z in np.unique(zoom)))


if __name__ == "__main__":
    main()
