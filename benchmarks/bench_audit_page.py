"""Audit page at full evaluation-set size: build time and file size.

Uses a real evaluation set folder (default data/evalsets/texas: ~6k queries, ~37k
database regions) with made-up predictions (random database regions, the first
positive planted at a random rank for half the queries), since only the page's
size and build time are measured here. Prints the figures.

    python benchmarks/bench_audit_page.py [SET_DIR] [--thumbs N]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from earthloc.audit_page import AuditPageConfig, audit_page_from_files


def fake_predictions(set_dir: Path, k: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    q = pd.read_csv(set_dir / "queries.csv")
    db = pd.read_csv(set_dir / "database.csv")
    pos = pd.read_parquet(set_dir / "positives.parquet", columns=["query_index", "db_index"])
    first_pos = pos.groupby("query_index")["db_index"].first()
    rows = []
    for qi in q["query_index"]:
        idx = rng.choice(len(db), size=k, replace=False)
        if rng.random() < 0.5 and qi in first_pos.index:
            idx[rng.integers(k)] = first_pos[qi]
        rows.append(pd.DataFrame({"query_index": qi, "rank": np.arange(1, k + 1), "db_index": idx}))
    df = pd.concat(rows, ignore_index=True)
    df["region_id"] = db["region_id"].to_numpy()[df["db_index"]]
    df["score"] = np.sort(rng.random(len(df)))[::-1]
    df["angle_deg"] = rng.choice([0.0, 90.0, 180.0, 270.0], len(df))
    pairs = set(zip(pos["query_index"], pos["db_index"]))
    df["is_positive"] = [(a, b) in pairs for a, b in zip(df["query_index"], df["db_index"])]
    return df


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set_dir", nargs="?", type=Path, default=Path("data/evalsets/texas"))
    ap.add_argument("--thumbs", type=int, default=1000, help="fake 1024-px query photos to thumbnail")
    args = ap.parse_args()
    cfg = AuditPageConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        preds = fake_predictions(args.set_dir, cfg.top_k)
        preds.to_parquet(tmp_path / "predictions.parquet")
        photos = tmp_path / "queries"
        photos.mkdir()
        rng = np.random.default_rng(1)
        q = pd.read_csv(args.set_dir / "queries.csv")
        for name in q["filename"][: args.thumbs]:
            small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((1024, 1024))
            buf = io.BytesIO()
            small.save(buf, format="JPEG", quality=85)
            (photos / name).write_bytes(buf.getvalue())
        t0 = time.perf_counter()
        page = audit_page_from_files(args.set_dir, tmp_path / "predictions.parquet", Path("data/grid/regions.parquet"),
                                     photos, tmp_path / "audit.html", cfg)  # fmt: skip
        dt = time.perf_counter() - t0
        size = page.stat().st_size
    print(
        f"set {args.set_dir.name}: {len(q)} queries, {len(pd.read_csv(args.set_dir / 'database.csv'))} database "
        f"regions, top-{cfg.top_k}, {min(args.thumbs, len(q))} thumbnails ({cfg.thumb_px} px)"
    )
    print(f"audit page built in {dt:.1f} s, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
