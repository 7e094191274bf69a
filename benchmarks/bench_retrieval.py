"""Retrieval benchmarks: prints figures, asserts nothing.

    python benchmarks/bench_retrieval.py [--threads 2] [--texas 36000] [--dim 4096] [--kinds ...]

All index options are measured on ONE Texas-size database (36k regions x 4 rotations =
144k vectors of 4096-D) of clustered synthetic descriptors: a mixture of 2,000
anisotropic clusters (random centres, a random rank-16 spread per cluster); each image is
a point of its cluster and its 4 rotations are nearby points (rotated copies are similar,
not equal); a query is a noisy copy of one rotation of one image. Random data would do
for the latency of exact search, but IVF and PQ need structured data to be meaningful.
Per option (flat fp32, fp16 scalar quantizer, IVF-Flat, IVF-PQ, PQ):
  - build time (training on 20k vectors + adding all), on `--threads` threads;
  - latency of one query (k=100, 4x90 TTA already in the database) and per query in a
    batch of 64;
  - memory: the serialized size (faiss.serialize_index) after adding half and all of the
    vectors, fitted as fixed + per-vector x n, extrapolated to the world (181,781 regions
    of our grid x 4 = 727,124 vectors) and to the paper's ~175k regions (700k vectors);
  - recall cost against exact search (500 queries): the share of queries whose exact top-1
    image is still top-1 (collapsed), whose exact top-1 is in the top 10, the overlap of
    the collapsed top-100 lists, and R@1/R@10 of each query's source image.
Then the query-side cost on CPU: decoding one 1024x1024 JPEG to 320 px, and one forward
pass of the paper model (ResNet-50 + MixVPR, 4096-D, 320 px; random weights, the cost
does not depend on them) and of the project's small default config.

On a shared machine the timings are upper bounds; OMP_WAIT_POLICY=PASSIVE is set so
faiss's OpenMP threads do not spin against other processes.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from earthloc.images import load_model_input  # noqa: E402
from earthloc.retrieval.index import IndexSpec, build_index, index_bytes  # noqa: E402
from earthloc.retrieval.recall import recalls  # noqa: E402
from earthloc.retrieval.search import SearchResult, collapse_rotations, map_raw_ids, search  # noqa: E402

WORLD_REGIONS = 181_781  # our grid (README); the paper says roughly 175k
PAPER_REGIONS = 175_000
# IVF: 256 cells, 16 probed (1/16 of the database scanned); IVF and PQ train on 20k
# vectors (k-means over 4096-D on 2 cores is the slow part of building; a world index
# would use ~1-4k cells and more training data, at the same per-vector size).
_TRAIN = 20_000
OPTIONS = {
    "flat": IndexSpec(kind="flat"),
    "sq_fp16": IndexSpec(kind="sq_fp16"),
    "ivf_flat": IndexSpec(kind="ivf_flat", nlist=256, nprobe=16, train_size=_TRAIN),
    "ivf_pq m=512": IndexSpec(kind="ivf_pq", nlist=256, nprobe=16, pq_m=512, pq_nbits=8, train_size=_TRAIN),
    "ivf_pq m=256": IndexSpec(kind="ivf_pq", nlist=256, nprobe=16, pq_m=256, pq_nbits=8, train_size=_TRAIN),
    "pq m=512": IndexSpec(kind="pq", pq_m=512, pq_nbits=8, train_size=_TRAIN),
}


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------------


def bench_query_side(threads: int) -> None:
    import torch
    from PIL import Image

    from earthloc.model import ModelConfig, build_model

    torch.set_num_threads(threads)
    print(f"\n   query side on CPU ({threads} torch threads):")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        img = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).resize((1024, 1024), Image.Resampling.BILINEAR).save(Path(tmp) / "q.jpg", quality=75)
        t = timed(lambda: load_model_input(Path(tmp) / "q.jpg", 320), 5)
        print(f"   - decode + resize one 1024x1024 JPEG to 320 px (draft mode): {t * 1000:.1f} ms")
    for name, cfg in (
        ("paper model (ResNet-50 + MixVPR, 4096-D, 320 px)", ModelConfig()),
        (
            "project default (ResNet-18 + MixVPR, 512-D, 128 px)",
            ModelConfig(backbone="resnet18", image_size=128, descriptor_dim=512),
        ),
    ):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
        with torch.inference_mode():
            model(x)
            t = timed(lambda: model(x), 5)  # noqa: B023
            tb = timed(lambda: model(x.repeat(16, 1, 1, 1)), 2) / 16  # noqa: B023
        print(
            f"   - {name}: one query {t:.3f} s, per image in a batch of 16 {tb:.3f} s "
            f"(a DB image costs 4 of these with 4x90 TTA)"
        )


# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------


def clustered_proxy(
    n_regions: int, dim: int, n_queries: int, seed: int = 2, query_noise: float = 1.6, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(4, N, D) database, (M, D) queries, (M,) source image of each query.

    Cluster centres are random; each cluster has its own low-rank spread (so distances
    are not isotropic); an image is a point of its cluster; its 4 rotations are nearby
    points (rotated copies of one image are similar, not equal); a query is a noisy copy
    of one rotation of one image."""
    rng = np.random.default_rng(seed)
    n_clusters, rank = 2000, 16
    centres = unit_rows(rng, n_clusters, dim)
    basis = rng.standard_normal((n_clusters, rank, dim), dtype=np.float32) / np.sqrt(dim)
    label = rng.integers(0, n_clusters, n_regions)
    db = np.empty((4, n_regions, dim), np.float32)
    for s in range(0, n_regions, 1024):  # in chunks: the per-image spread is (chunk, rank, dim)
        e = min(n_regions, s + 1024)
        coef = rng.standard_normal((e - s, rank), dtype=np.float32) * spread
        image = centres[label[s:e]] + np.einsum("nr,nrd->nd", coef, basis[label[s:e]])
        for r in range(4):
            v = image + 1.2 * rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim)
            db[r, s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    src = rng.choice(n_regions, n_queries, replace=False)
    rot = rng.integers(0, 4, n_queries)
    q = db[rot, src] + query_noise * rng.standard_normal((n_queries, dim), dtype=np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, q.astype(np.float32), src


def bench_options(n_regions: int, dim: int, kinds: list[str], n_queries: int = 500) -> None:
    world, paper = 4 * WORLD_REGIONS, 4 * PAPER_REGIONS
    t0 = time.perf_counter()
    db, q, src = clustered_proxy(n_regions, dim, n_queries)
    total = db.shape[0] * db.shape[1]
    print(
        f"\n1. index options on a clustered proxy of {n_regions:,} regions x 4 rotations = {total:,} vectors of "
        f"{dim}-D ({time.perf_counter() - t0:.0f} s to generate), k=100, {n_queries} queries"
    )
    exact = collapse_rotations(search(db, q, 400), 100)
    pos = [np.array([s]) for s in src]
    half = db.shape[1] // 2
    rows = []
    for kind in kinds:
        spec = OPTIONS[kind]
        t0 = time.perf_counter()
        index = build_index(db[:, :half], spec)  # trains on <= train_size of the first half
        b1, n1 = index_bytes(index), index.ntotal
        for r in range(db.shape[0]):
            index.add(np.ascontiguousarray(db[r, half:]))
        build = time.perf_counter() - t0
        b2, n2 = index_bytes(index), index.ntotal
        per = (b2 - b1) / (n2 - n1)
        fixed = b1 - per * n1
        # The adds above broke rotation-major order; map ids back through the add order.
        order = np.concatenate(
            [np.arange(half) + r * db.shape[1] for r in range(db.shape[0])]
            + [np.arange(half, db.shape[1]) + r * db.shape[1] for r in range(db.shape[0])]
        )
        one = timed(lambda ix=index: ix.search(q[:1], 100), 5)
        batch = timed(lambda ix=index: ix.search(q[:64], 100), 2) / 64
        s, i = index.search(q, 400)
        raw = np.where(i >= 0, order[np.maximum(i, 0)], -1)
        dbi, ang = map_raw_ids(raw, db.shape[1])
        col = collapse_rotations(SearchResult(dbi, ang, s, raw), 100)
        keep1 = np.mean(col.db_index[:, 0] == exact.db_index[:, 0])
        in10 = np.mean([exact.db_index[j, 0] in col.db_index[j, :10] for j in range(len(q))])
        overlap = np.mean([len(set(col.db_index[j]) & set(exact.db_index[j])) / 100 for j in range(len(q))])
        rc = recalls(col.db_index, pos, (1, 10))
        rows.append(
            f"| {kind} | {build:.0f} | {one:.3f} | {batch:.4f} | {per:,.0f} | {fixed / 1e6:,.1f} | "
            f"{b2 / 1e9:.2f} | {(fixed + per * world) / 1e9:,.2f} | {(fixed + per * paper) / 1e9:,.2f} | "
            f"{100 * keep1:.1f} | {100 * in10:.1f} | {100 * overlap:.1f} | {rc[1]:.1f} / {rc[10]:.1f} |"
        )
        print(rows[-1], flush=True)
        del index
    rc = recalls(exact.db_index, pos, (1, 10))
    print(
        "\n| index | build s | 1 query s | per query, batch of 64, s | bytes/vector | fixed MB | this DB GB | "
        "world GB (727k vectors) | paper-size GB (700k) | exact top-1 kept % | exact top-1 in top-10 % | "
        "top-100 overlap % | source R@1 / R@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        f"(exact search: source image R@1 / R@10 = {rc[1]:.1f} / {rc[10]:.1f}; a 1-query search is what one "
        f"`earthloc localize` call pays, the batch figure what the evaluate stage pays per query)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texas", type=int, default=36_000, help="regions in the latency database")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--kinds", nargs="*", default=list(OPTIONS))
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--skip-options", action="store_true")
    ap.add_argument("--skip-query", action="store_true")
    args = ap.parse_args()

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"bench_retrieval: {os.cpu_count()} CPUs visible, {args.threads} threads used")
    if not args.skip_options:
        bench_options(args.texas, args.dim, args.kinds, args.queries)
    if not args.skip_query:
        bench_query_side(args.threads)


if __name__ == "__main__":
    main()
