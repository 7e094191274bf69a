"""Cost of embedding database images as evaluate, index and train's validation do: CPU per image.

Decodes and embeds `--n` region mosaics of a tile-store shard with the model config of
params.yaml (random init: the cost does not depend on the weights) at every rotation of
`evaluate.rotations`, on one thread, and prints wall and CPU milliseconds per database
image. Multiply by the database size (docs/evaluation.md, "Demo protocol") and by the
number of embedding passes (networks x sets, plus one per validation) for a stage's cost.

    .venv/bin/python benchmarks/bench_embed_database.py [--shard tiles/database/2021_11] [--n 96]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard", type=Path, default=ROOT / "tiles/database/2021_11")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = ap.parse_args()

    import torch

    from earthloc.model import ModelConfig, build_model
    from earthloc.retrieval.descriptors import embed
    from pipeline.params import load_params

    torch.set_num_threads(1)
    params = load_params(args.params)
    cfg = ModelConfig.from_section(params["model"])
    rotations = tuple(int(r) for r in params["evaluate"]["rotations"])
    model = build_model(cfg).eval()
    paths = sorted(str(p) for p in args.shard.rglob("*.jpg"))[: args.n]
    if len(paths) < 8:
        sys.exit(f"{args.shard}: fewer than 8 images (run the fetch stage for this shard first)")
    embed(model, paths[:8], image_size=cfg.image_size, batch_size=16, num_workers=0, rotations=rotations)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    embed(model, paths, image_size=cfg.image_size, batch_size=16, num_workers=0, rotations=rotations)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{len(paths)} images of {args.shard.name} x {len(rotations)} rotations, {cfg.backbone} at {cfg.image_size} px: "
        f"{1e3 * wall / len(paths):.0f} ms wall, {1e3 * cpu / len(paths):.0f} ms CPU per database image (1 thread)"
    )


if __name__ == "__main__":
    main()
