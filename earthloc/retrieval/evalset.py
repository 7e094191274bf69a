"""One evaluation set: its files read, its DB and queries embedded, searched and counted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from earthloc.images import check_images_exist
from earthloc.retrieval.descriptors import DescriptorMemo, embed, embed_memo
from earthloc.retrieval.index import IndexSpec
from earthloc.retrieval.orientation import orientation_summary, photo_up_bearing, queries_orientation
from earthloc.retrieval.protocol import RECALL_NS, ROTATIONS
from earthloc.retrieval.recall import recall_curve, recalls
from earthloc.retrieval.search import SearchResult, collapse_rotations, search
from pipeline.errors import InputError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EvalSetFiles:
    """An evaluation set as read from `data/evalsets/<set>/`."""

    queries: pd.DataFrame  # query_index order
    database: pd.DataFrame  # db_index order
    positives: list[IntArray]  # DB indices overlapping each query
    query_paths: list[Path]
    db_paths: list[Path]


def read_evalset(set_dir: str | os.PathLike[str], tiles_root: str | os.PathLike[str]) -> EvalSetFiles:
    """Read queries.csv, database.csv and positives.parquet; image paths under `tiles_root`."""
    set_dir, tiles_root = Path(set_dir), Path(tiles_root)
    files = {name: set_dir / name for name in ("queries.csv", "database.csv", "positives.parquet")}
    for p in files.values():
        if not p.is_file():
            raise InputError(f"{p}: no such file (run the evalset stage first)")
    try:
        queries = pd.read_csv(files["queries.csv"])
        database = pd.read_csv(files["database.csv"])
        pos = pd.read_parquet(files["positives.parquet"], columns=["query_index", "db_index"])
    except Exception as exc:  # pandas/pyarrow raise many types; report one line
        raise InputError(f"{set_dir}: unreadable evaluation set ({exc})") from exc
    for df, name, cols in (
        (queries, "queries.csv", ["query_index", "query_id", "filename"]),
        (database, "database.csv", ["db_index", "region_id", "zoom", "path"]),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"{set_dir / name}: missing column(s) {', '.join(missing)}")
    queries = queries.sort_values("query_index").reset_index(drop=True)
    database = database.sort_values("db_index").reset_index(drop=True)
    if not np.array_equal(queries["query_index"].to_numpy(), np.arange(len(queries))):
        raise InputError(f"{files['queries.csv']}: query_index must be 0..n-1")
    if not np.array_equal(database["db_index"].to_numpy(), np.arange(len(database))):
        raise InputError(f"{files['database.csv']}: db_index must be 0..n-1")
    qi = pos["query_index"].to_numpy(np.int64)
    di = pos["db_index"].to_numpy(np.int64)
    if len(qi) and (qi.min() < 0 or qi.max() >= len(queries) or di.min() < 0 or di.max() >= len(database)):
        raise InputError(f"{files['positives.parquet']}: indices outside the set's queries or database")
    order = np.lexsort((di, qi))
    qi, di = qi[order], di[order]
    bounds = np.searchsorted(qi, np.arange(len(queries) + 1))
    positives = [di[bounds[i] : bounds[i + 1]] for i in range(len(queries))]
    query_paths = [tiles_root / "queries" / str(f) for f in queries["filename"]]
    db_paths = [tiles_root / str(p) for p in database["path"]]
    return EvalSetFiles(queries, database, positives, query_paths, db_paths)


@dataclass(frozen=True)
class EvalResult:
    """Everything one model's evaluation on one set produced.

    `recalls` is upstream's (uncollapsed) Recall@N in percent, the paper's numbers;
    `recalls_collapsed` ranks DB images with their best rotation only. `search` and
    `search_collapsed` hold the top-k per query; `orientation` the circular error summary
    of the top-1 angle against the photo's up bearing (None when no query has an orientation)."""

    recalls: dict[int, float]
    recalls_collapsed: dict[int, float]
    curve: FloatArray
    curve_collapsed: FloatArray
    search: SearchResult
    search_collapsed: SearchResult
    orientation: dict[str, Any] | None
    num_queries: int
    num_db: int
    extras: dict[str, Any] = field(default_factory=dict)


def evaluate_set(
    model: torch.nn.Module,
    set_dir: str | os.PathLike[str],
    tiles_root: str | os.PathLike[str] = "tiles",
    *,
    image_size: int,
    batch_size: int = 16,
    num_workers: int = 0,
    k: int = 100,
    ns: Sequence[int] = RECALL_NS,
    index_spec: IndexSpec = IndexSpec(),
    rotations: Sequence[int] = ROTATIONS,
    features_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
    evalset: EvalSetFiles | None = None,
    memo: tuple[DescriptorMemo, str] | None = None,
) -> EvalResult:
    """Embed the set's DB (4 rotations) and queries (0°), search, count recalls.

    `features_dir` keeps the descriptors as `.npy` memmaps there (db.npy, queries.npy);
    otherwise they live in RAM. `memo` (a DescriptorMemo and the network's name) reuses
    descriptors this process computed before for the same network. N in `ns` larger than the DB's size are reported for the
    padded list (the -1 guard), as upstream would if it did not crash."""
    ev = evalset if evalset is not None else read_evalset(set_dir, tiles_root)
    check_images_exist(ev.db_paths, f"{set_dir} database")
    check_images_exist(ev.query_paths, f"{set_dir} queries")
    fdir = Path(features_dir) if features_dir is not None else None
    common: dict[str, Any] = dict(
        image_size=image_size, batch_size=batch_size, num_workers=num_workers, device=device, bf16=bf16
    )
    db_out = fdir / "db.npy" if fdir else None
    q_out = fdir / "queries.npy" if fdir else None
    if memo is not None:
        db_desc = embed_memo(model, ev.db_paths, *memo, rotations=rotations, out=db_out, **common)
        q_desc = embed_memo(model, ev.query_paths, *memo, rotations=(0,), out=q_out, **common)
    else:
        db_desc = embed(model, ev.db_paths, rotations=rotations, out=db_out, **common)
        q_desc = embed(model, ev.query_paths, rotations=(0,), out=q_out, **common)
    return score_descriptors(db_desc, q_desc[0], ev, k=k, ns=ns, index_spec=index_spec, rotations=rotations)


def score_descriptors(
    db_desc: npt.ArrayLike,
    query_desc: npt.ArrayLike,
    ev: EvalSetFiles,
    *,
    k: int = 100,
    ns: Sequence[int] = RECALL_NS,
    index_spec: IndexSpec = IndexSpec(),
    rotations: Sequence[int] = ROTATIONS,
) -> EvalResult:
    """The search-and-count half of `evaluate_set`, on descriptors already computed."""
    num_db = len(ev.database)
    if num_db == 0:
        raise InputError("the evaluation set's database is empty")
    kmax = max(k, *ns)
    # R*k raw results contain at least k distinct images, so the collapsed top-k is exact.
    raw = search(db_desc, query_desc, len(rotations) * kmax, index_spec=index_spec, rotations=rotations)
    res = raw.head(kmax)
    res_c = collapse_rotations(raw, kmax)
    orientation = queries_orientation(ev.queries)
    orient = None
    if np.isfinite(orientation).any():
        orient = orientation_summary(res.angle[:, 0], photo_up_bearing(orientation))
    return EvalResult(
        recalls=recalls(res.db_index, ev.positives, ns),
        recalls_collapsed=recalls(res_c.db_index, ev.positives, ns),
        curve=recall_curve(res.db_index, ev.positives),
        curve_collapsed=recall_curve(res_c.db_index, ev.positives),
        search=res,
        search_collapsed=res_c,
        orientation=orient,
        num_queries=len(ev.queries),
        num_db=num_db,
    )
