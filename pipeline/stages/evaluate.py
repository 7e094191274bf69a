"""evaluate stage: one evaluation set, the trained model against its baselines.

Reads `data/evalsets/<set>/{queries.csv, database.csv, positives.parquet}`, the images
under `tiles/`, and the model checkpoint; writes to `data/eval/<set>/` (atomically):
  metrics.json        DVC metrics: R@N uncollapsed (upstream's and the paper's count) and
                      collapsed, per method (model, untrained at several seeds, thumbnail,
                      random, nadir), pass-bootstrap intervals, margins of the model over
                      each baseline, orientation accuracy (and the always-0° prior)
  per_query.parquet   every query's hits at each N for every method, its pass, and the
                      orientation error of the model and of the always-0° prior
  curves/<method>.csv DVC plots: N, recall (percent) for N = 1..k, one file per series
  predictions.parquet the model's top-k per query (uncollapsed, the list R@N counts):
                      query_index, query_id, rank, db_index, region_id, score, angle_deg,
                      is_positive, repeat (the image already appeared at a better rank)
  grid.png            ~10 queries with their top-5 predictions framed green/red
  audit.html          the interactive audit page (earthloc.audit_page)
Protocol: earthloc.retrieval.protocol (paper Sec. 5.1.2, docs/upstream.md §7)."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from earthloc.audit_page import AuditPageConfig, audit_page_from_files
from earthloc.baselines import ThumbnailDescriptor, nadir_ranking, region_bounds_table
from earthloc.retrieval.bootstrap import cluster_interval, cluster_margin
from earthloc.retrieval.descriptors import DescriptorMemo
from earthloc.retrieval.evalset import EvalResult, EvalSetFiles, evaluate_set, read_evalset
from earthloc.retrieval.index import IndexSpec
from earthloc.retrieval.orientation import (
    circular_error_deg,
    orientation_summary,
    photo_up_bearing,
    queries_orientation,
)
from earthloc.retrieval.protocol import RECALL_NS, ROTATIONS
from earthloc.retrieval.recall import first_hit_rank, hits_at, random_hit_probability, random_recall_curve, recall_curve
from pipeline.errors import ConfigError, InputError
from pipeline.io import atomic_path, write_json, write_text
from pipeline.params import build_config, check_keys
from pipeline.schema import CENTER_COLUMNS, NADIR_COLUMNS

BASELINES = ("random", "nadir", "untrained", "thumbnail", "always_0deg")
COUNTING_NOTE = (
    "R@N (uncollapsed) counts the raw 4x90-TTA result list as upstream's test.py does, so one DB image "
    "seen at several rotations takes several ranks: this is what the paper's tables report. "
    "'collapsed' keeps each DB image once, at its best rotation, then ranks images."
)
MARGINS_NOTE = (
    "model-X: the model's uncollapsed R@N minus method X's, in points, with a 95 % paired percentile bootstrap "
    "interval that resamples whole ISS passes (queries.csv's pass_id; photos of one pass are near-duplicates, "
    "not independent draws); random enters with each query's exact hit probability; untrained_mean averages the "
    "untrained seeds per query. model-always_0deg compares the share of queries within 45 deg. "
    "The interval covers the choice of passes only, not the training run's seed."
)
ORIENTATION_NOTE = (
    "Predicted = the counter-clockwise angle a (0/90/180/270) by which the best-matching north-up DB copy was "
    "turned; its top then faces compass bearing a. Truth = the bearing the photo's top faces, -ORIENTATION mod 360 "
    "(NASA's ORIENTATION is the direction of north in the photo, clockwise from the photo's up; as measured on the "
    "NASA CSV and rendered by the photo simulator). Error = the smallest angle between the two; within 45 deg = the "
    "right quadrant, the best a 90-degree TTA can do."
)


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` section of params.yaml (image_size comes from the checkpoint)."""

    sets: tuple[str, ...] = ("demo",)
    model: str = "models/earthloc.pt"
    tiles_root: str = "tiles"
    evalsets_dir: str = "data/evalsets"
    out_root: str = "data/eval"
    regions: str = "data/grid/regions.parquet"  # for the audit page's footprints
    batch_size: int = 16
    num_workers: int = 2
    k: int = 100
    recall_ns: tuple[int, ...] = RECALL_NS
    rotations: tuple[int, ...] = ROTATIONS
    index: IndexSpec = field(default_factory=IndexSpec)
    baselines: tuple[str, ...] = BASELINES
    # None: the seed the trained model started from (its checkpoint's init_seed, else 0), so
    # "model - untrained" is what training did to that very network.
    untrained_seed: int | None = None
    # How many untrained initialisations: seeds untrained_seed (or init_seed), +1, +2, ...
    untrained_seeds: int = 3
    thumbnail_size: int = 16
    bootstrap_resamples: int = 2000
    bf16: bool = False
    features_dir: str | None = None  # keep descriptors as .npy memmaps here (null: in RAM)
    grid_queries: int = 10
    grid_top: int = 5
    orientation_thresholds: tuple[float, ...] = (45.0, 90.0)
    audit_page: bool = True
    # The `audit_page` section: how the page is drawn. Not a key of this section, so that the
    # page is configured in one place for every set.
    page: AuditPageConfig = field(default_factory=AuditPageConfig)

    def __post_init__(self) -> None:
        for name in ("sets", "recall_ns", "rotations", "baselines", "orientation_thresholds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"params evaluate.baselines: unknown {unknown}; valid: {list(BASELINES)}")
        if self.k < 1 or any(n < 1 or n > self.k for n in self.recall_ns):
            raise ConfigError(f"params evaluate: recall_ns {list(self.recall_ns)} must lie in 1..k={self.k}")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("params evaluate: batch_size must be >= 1 and num_workers >= 0")
        if self.untrained_seeds < 1 or self.thumbnail_size < 2 or self.bootstrap_resamples < 100:
            raise ConfigError("params evaluate: untrained_seeds >= 1, thumbnail_size >= 2, bootstrap_resamples >= 100")
        if not self.rotations or any(r % 90 for r in self.rotations) or self.rotations[0] != 0:
            raise ConfigError("params evaluate.rotations: multiples of 90 starting with 0")

    @classmethod
    def from_section(cls, sec: dict[str, Any], page: AuditPageConfig | None = None) -> EvaluateParams:
        """From the `evaluate` section and the built `audit_page` section (which is not a key
        of this section: a `page` here is an unknown key); None takes the page's defaults."""
        kw = dict(sec)
        check_keys(kw, {f.name for f in fields(cls)} - {"page"}, "evaluate")
        if "index" in kw:
            kw["index"] = IndexSpec.from_section(kw["index"])
        return build_config(cls, {**kw, "page": page or AuditPageConfig()}, "evaluate")


@dataclass(frozen=True)
class EvaluatePaths:
    """The files the command line names for the evaluate stage; None takes the `evaluate` section's."""

    model: Path | None = None  # a project checkpoint or published EarthLoc weights (earthloc.published)
    out_dir: Path | None = None  # a single set's output folder (default <out_root>/<set>)


@dataclass(frozen=True)
class MethodScores:
    """One row of the results table."""

    recalls: dict[int, float]
    recalls_collapsed: dict[int, float]
    curve: np.ndarray
    curve_collapsed: np.ndarray
    orientation: dict[str, Any] | None = None
    note: str = ""
    # (Q, len(recall_ns)) per-query hits (0/1) or, for random, hit probabilities; uncollapsed
    hits: np.ndarray | None = None
    hits_collapsed: np.ndarray | None = None

    def metrics(self, clusters: np.ndarray | None = None, ns: Sequence[int] = (), n_boot: int = 2000) -> dict[str, Any]:
        out: dict[str, Any] = {f"R@{n}": _r(v) for n, v in self.recalls.items()}
        out["collapsed"] = {f"R@{n}": _r(v) for n, v in self.recalls_collapsed.items()}
        if self.hits is not None and len(self.hits) and ns:
            ci = cluster_interval(self.hits, clusters, ns, n_boot=n_boot)
            out["interval"] = {f"R@{n}": [_r(v["lo"]), _r(v["hi"])] for n, v in ci.items()}
        if self.hits_collapsed is not None and len(self.hits_collapsed) and ns:
            ci = cluster_interval(self.hits_collapsed, clusters, ns, n_boot=n_boot)
            out["collapsed"]["interval"] = {f"R@{n}": [_r(v["lo"]), _r(v["hi"])] for n, v in ci.items()}
        if self.orientation is not None:
            out["orientation"] = self.orientation
        if self.note:
            out["note"] = self.note
        return out


def _r(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 4)


def _at(curve: np.ndarray, ns: Sequence[int]) -> dict[int, float]:
    return {int(n): float(curve[n - 1]) for n in ns}


def _from_result(res: EvalResult, ev: EvalSetFiles, ns: Sequence[int], note: str = "") -> MethodScores:
    hits = hits_at(first_hit_rank(res.search.db_index, ev.positives), ns)
    hits_c = hits_at(first_hit_rank(res.search_collapsed.db_index, ev.positives), ns)
    return MethodScores(res.recalls, res.recalls_collapsed, res.curve, res.curve_collapsed, res.orientation, note,
                        hits, hits_c)  # fmt: skip


def query_clusters(queries: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """The bootstrap's resampling unit: the ISS pass of each query (queries.csv's pass_id),
    or each query alone when the set has no pass ids (older sets)."""
    if "pass_id" in queries.columns and queries["pass_id"].notna().all():
        return queries["pass_id"].astype(str).to_numpy(dtype=object), "pass"
    return None, "query (queries.csv has no pass_id)"


def margins(
    scores: Mapping[str, MethodScores],
    ns: Sequence[int],
    *,
    seed: int = 0,
    clusters: np.ndarray | None = None,
    extra_hits: Mapping[str, tuple[np.ndarray, np.ndarray | None]] | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """The model's Recall@N minus each baseline's, uncollapsed (`R@N`) and collapsed
    (`collapsed.R@N`), with a 95 % paired bootstrap interval over passes (`clusters`; None:
    over queries): a margin is clear when the interval stays above zero. `extra_hits`: more
    baselines by name, as (uncollapsed, collapsed or None) (Q, len(ns)) arrays."""
    model = scores.get("model")
    out: dict[str, Any] = {}
    if model is None or model.hits is None:
        return out
    others = {
        name: (sc.hits, sc.hits_collapsed) for name, sc in scores.items() if name != "model" and sc.hits is not None
    }
    others.update(extra_hits or {})

    def table(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        m = cluster_margin(a, b, ns, clusters, seed=seed, n_boot=n_boot)
        return {f"R@{n}": {k: round(v, 2) for k, v in m[n].items()} for n in ns}

    for name, (hits, hits_c) in others.items():
        out[f"model-{name}"] = table(model.hits, hits)
        if hits_c is not None and model.hits_collapsed is not None:
            out[f"model-{name}"]["collapsed"] = table(model.hits_collapsed, hits_c)
    return out


def seed_spread(scores: Sequence[MethodScores], seeds: Sequence[int], ns: Sequence[int]) -> dict[str, Any]:
    """Mean, standard deviation (n-1) and range of R@N over the untrained initialisations."""

    def stats(values: list[float]) -> dict[str, float | None]:
        v = np.asarray(values, dtype=np.float64)
        return {
            "mean": _r(v.mean()),
            "sd": _r(v.std(ddof=1)) if len(v) > 1 else None,
            "min": _r(v.min()),
            "max": _r(v.max()),
        }

    return {
        "seeds": [int(x) for x in seeds],
        **{f"R@{n}": stats([s.recalls[n] for s in scores]) for n in ns},
        "collapsed": {f"R@{n}": stats([s.recalls_collapsed[n] for s in scores]) for n in ns},
    }


def always_zero_orientation(ev: EvalSetFiles, thresholds: Sequence[float]) -> tuple[dict[str, Any], np.ndarray]:
    """The orientation prior that ignores the image: every photo's top faces north (the
    TTA angle 0). Returns its summary and each query's error (NaN where unknown)."""
    bearing = photo_up_bearing(queries_orientation(ev.queries))
    zero = np.zeros(len(bearing))
    summary = orientation_summary(zero, bearing, thresholds)
    return summary, circular_error_deg(zero, bearing)


# ---------------------------------------------------------------------------


def evaluate_model(
    model: torch.nn.Module,
    image_size: int,
    ev: EvalSetFiles,
    p: EvaluateParams,
    set_dir: Path,
    features: Path | None,
    memo: tuple[DescriptorMemo, str] | None = None,
) -> EvalResult:
    res = evaluate_set(
        model, set_dir, p.tiles_root, image_size=image_size, batch_size=p.batch_size, num_workers=p.num_workers,
        k=p.k, ns=p.recall_ns, index_spec=p.index, rotations=p.rotations, features_dir=features, bf16=p.bf16,
        evalset=ev, memo=memo,
    )  # fmt: skip
    if res.orientation is not None:
        bearing = photo_up_bearing(queries_orientation(ev.queries))
        res.orientation.update(orientation_summary(res.search.angle[:, 0], bearing, p.orientation_thresholds))
    return res


def random_scores(ev: EvalSetFiles, p: EvaluateParams) -> MethodScores:
    npos = [len(x) for x in ev.positives]
    num_db = len(ev.database)
    col = random_recall_curve(num_db, npos, p.k, copies=1)
    if not npos:
        up, hits = random_recall_curve(num_db, npos, p.k, copies=len(p.rotations)), None
    else:  # the per-query probabilities once: the curve is their mean, the margins use them as they are
        prob = random_hit_probability(num_db, npos, p.k, copies=len(p.rotations))
        up = (100.0 * prob.mean(axis=0)).astype(np.float32)
        hits = prob[:, [n - 1 for n in p.recall_ns]]
    hits_c = None
    if npos:
        hits_c = random_hit_probability(num_db, npos, p.k, copies=1)[:, [n - 1 for n in p.recall_ns]]
    return MethodScores(_at(up, p.recall_ns), _at(col, p.recall_ns), up, col,
                        note="expected recall of a uniformly random ranking, computed exactly (hypergeometric)",
                        hits=hits, hits_collapsed=hits_c)  # fmt: skip


def nadir_scores(ev: EvalSetFiles, p: EvaluateParams) -> MethodScores:
    for col in NADIR_COLUMNS:
        if col not in ev.queries.columns:
            raise InputError(f"queries.csv: missing column {col} (needed by the nadir baseline)")
    db = ev.database
    if set(CENTER_COLUMNS) <= set(db.columns):
        clat, clon = (db[c].to_numpy(np.float64) for c in CENTER_COLUMNS)
    else:
        b = region_bounds_table(db["region_id"])
        clat, clon = (b["south"] + b["north"]).to_numpy() / 2, (b["west"] + b["east"]).to_numpy() / 2
    pred = nadir_ranking(
        ev.queries["nadir_lat"], ev.queries["nadir_lon"], clat, clon, region_bounds_table(db["region_id"]), p.k
    )
    curve = recall_curve(pred, ev.positives)
    rec = _at(curve, p.recall_ns)
    hits = hits_at(first_hit_rank(pred, ev.positives), p.recall_ns)
    return MethodScores(
        rec,
        dict(rec),
        curve,
        curve.copy(),
        hits=hits,
        hits_collapsed=hits,
        note="regions containing the nadir point (coarsest zoom first, then nearest centre), "
        "then all others by centre distance to the nadir",
    )


def untrained_seed_for(p: EvaluateParams, checkpoint_extra: Mapping[str, Any]) -> int:
    """The untrained baseline's torch seed: `untrained_seed` when set, else the checkpoint's
    `init_seed` (written by the train stages), else 0."""
    if p.untrained_seed is not None:
        return p.untrained_seed
    seed = checkpoint_extra.get("init_seed")
    return int(seed) if seed is not None else 0


def untrained_model(cfg: Any, seed: int) -> torch.nn.Module:
    """The same architecture with a fixed-seed random init (ImageNet backbone weights when
    the config names a local weights file, as upstream's eval.py without a checkpoint)."""
    from earthloc.model import build_model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build_model(cfg)
    finally:
        torch.random.set_rng_state(state)


# ---------------------------------------------------------------------------
# Outputs


def predictions_table(res: EvalResult, ev: EvalSetFiles) -> pd.DataFrame:
    s = res.search.head(max(res.search.k, 1))
    m, k = s.db_index.shape
    qidx = np.repeat(np.arange(m), k)
    db = s.db_index.ravel()
    valid = db >= 0
    region = np.where(valid, ev.database["region_id"].to_numpy(dtype=object)[np.where(valid, db, 0)], None)
    is_pos = np.zeros(m * k, dtype=bool)
    repeat = np.zeros(m * k, dtype=bool)
    for qi in range(m):
        row = s.db_index[qi]
        is_pos[qi * k : (qi + 1) * k] = np.isin(row, ev.positives[qi]) & (row >= 0)
        seen: set[int] = set()
        for r, d in enumerate(row.tolist()):
            repeat[qi * k + r] = d in seen and d >= 0
            seen.add(d)
    table = pd.DataFrame({
        "query_index": qidx.astype(np.int64),
        "query_id": ev.queries["query_id"].to_numpy(dtype=object)[qidx],
        "rank": np.tile(np.arange(1, k + 1), m).astype(np.int64),
        "db_index": db.astype(np.int64),
        "region_id": region,
        "score": s.score.ravel().astype(np.float32),
        "angle_deg": s.angle.ravel().astype(np.int64),
        "is_positive": is_pos,
        "repeat": repeat,
    })  # fmt: skip
    return table[valid].reset_index(drop=True)


def orientation_errors(res: EvalResult, ev: EvalSetFiles) -> np.ndarray:
    """Each query's orientation error of the model's top-1 angle (NaN where unknown)."""
    bearing = photo_up_bearing(queries_orientation(ev.queries))
    angle = res.search.angle[:, 0].astype(np.float64) if len(ev.queries) else np.zeros(0)
    err = circular_error_deg(angle, bearing)
    return np.where(np.isfinite(bearing) & (angle >= 0), err, np.nan)


def per_query_table(
    ev: EvalSetFiles,
    scores: Mapping[str, MethodScores],
    ns: Sequence[int],
    model_err: np.ndarray,
    zero_err: np.ndarray | None,
    extra_hits: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
) -> pd.DataFrame:
    """One row per query: id, pass, and for every method its hit (0/1, or the probability for
    random) at each N, uncollapsed and collapsed; the orientation errors. The tables' numbers
    are means of these columns, so any other summary can be recomputed from them."""
    q = ev.queries
    cols: dict[str, Any] = {"query_index": q["query_index"].to_numpy(np.int64), "query_id": q["query_id"].astype(str)}
    cols["pass_id"] = q["pass_id"].astype(str) if "pass_id" in q.columns else pd.Series([None] * len(q), dtype=object)
    for name, sc in scores.items():
        for hits, suffix in ((sc.hits, ""), (sc.hits_collapsed, "_collapsed")):
            if hits is None:
                continue
            for j, n in enumerate(ns):
                cols[f"{name}{suffix}_hit@{n}"] = hits[:, j].astype(np.float32)
    for name, pair in extra_hits.items():
        for hits, suffix in zip(pair, ("", "_collapsed"), strict=True):
            if hits is None:
                continue
            for j, n in enumerate(ns):
                cols[f"{name}{suffix}_hit@{n}"] = hits[:, j].astype(np.float32)
    cols["model_orientation_error_deg"] = model_err.astype(np.float32)
    if zero_err is not None:
        cols["always_0deg_orientation_error_deg"] = zero_err.astype(np.float32)
    return pd.DataFrame(cols)


def write_curves(dest: Path, scores: dict[str, MethodScores]) -> None:
    """One CSV per series (DVC draws each file of a plots directory as one line)."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted: set[str] = set()
    for name, s in scores.items():
        series = {name: s.curve}
        if name != "nadir":  # nadir ranks images, no rotations: its collapsed curve is the same
            series[f"{name}_collapsed"] = s.curve_collapsed
        for sname, curve in series.items():
            df = pd.DataFrame({"N": np.arange(1, len(curve) + 1), "recall": np.round(curve.astype(np.float64), 4)})
            write_text(dest / f"{sname}.csv", df.to_csv(index=False, lineterminator="\n"))
            wanted.add(f"{sname}.csv")
    for stale in dest.glob("*.csv"):
        if stale.name not in wanted:
            stale.unlink()


def write_grid(dest: Path, res: EvalResult, ev: EvalSetFiles, p: EvaluateParams, set_name: str) -> None:
    from earthloc.evalviz import GridRow, pick_queries, render_grid

    rows = []
    for qi in pick_queries(len(ev.queries), p.grid_queries):
        idx = res.search.db_index[qi, : p.grid_top]
        keep = idx >= 0
        idx = idx[keep]
        angles = res.search.angle[qi, : p.grid_top][keep]
        scores = res.search.score[qi, : p.grid_top][keep]
        rids = ev.database["region_id"].to_numpy()[idx]
        pos = np.isin(idx, ev.positives[qi])
        q = ev.queries.iloc[qi]
        rows.append(GridRow(
            query_path=ev.query_paths[qi],
            query_label=f"q{qi} {q['query_id']}\n{len(ev.positives[qi])} positives",
            pred_paths=[ev.db_paths[i] for i in idx],
            pred_angles=[int(a) for a in angles],
            pred_labels=[f"#{r + 1} {rid}\n{s:.3f} rot {a}°"
                         for r, (rid, s, a) in enumerate(zip(rids, scores, angles, strict=True))],
            pred_positive=[bool(x) for x in pos],
        ))  # fmt: skip
    title = (
        f"EarthLoc evaluation '{set_name}': queries (blue) and their top-{p.grid_top} predictions\n"
        f"green = overlaps the query, red = does not; each prediction turned by its TTA angle (CCW)"
    )
    render_grid(dest, rows, title)


def write_audit_placeholder(dest: Path, reason: str) -> None:
    """A one-paragraph audit.html saying why there is no audit page: the stage declares the
    file, and an old page from other predictions must not stay behind looking current."""
    text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>EarthLoc audit page not built</title></head>\n"
        f"<body><p>No audit page was built for these predictions: {html.escape(reason)}.</p></body></html>\n"
    )
    write_text(dest, text)


def write_audit(out_dir: Path, set_dir: Path, p: EvaluateParams) -> str:
    """Build audit.html with the audit-page helper (or, when it is turned off, a page that
    says so); returns what happened (for the log)."""
    dest = out_dir / "audit.html"
    if not p.audit_page:
        write_audit_placeholder(dest, "evaluate.audit_page is false in params.yaml")
        return f"audit page turned off (evaluate.audit_page: false); a note -> {dest}"
    # Without the grid file the page computes the corners from the region ids.
    regions = Path(p.regions) if Path(p.regions).is_file() else None
    audit_page_from_files(
        set_dir, out_dir / "predictions.parquet", regions, Path(p.tiles_root) / "queries", dest, cfg=p.page
    )
    return f"audit page -> {out_dir / 'audit.html'}"


# ---------------------------------------------------------------------------
# Stage


def run_set(
    name: str,
    p: EvaluateParams,
    model_path: Path | None = None,
    out_dir: Path | None = None,
    memo: DescriptorMemo | None = None,
) -> dict[str, Any]:
    """Evaluate one set. With `memo`, descriptors computed for an earlier set of the same
    run (same networks, overlapping database or queries) are reused, not recomputed."""
    from earthloc.published import load_checkpoint  # also upstream's and torchgeo's weights

    set_dir = Path(p.evalsets_dir) / name
    out_dir = Path(out_dir) if out_dir is not None else Path(p.out_root) / name
    model_path = Path(model_path) if model_path is not None else Path(p.model)
    ev = read_evalset(set_dir, p.tiles_root)
    model, cfg, extra = load_checkpoint(model_path)
    features = Path(p.features_dir) / name if p.features_dir else None

    clusters, unit = query_clusters(ev.queries)

    def keyed(network: str) -> tuple[DescriptorMemo, str] | None:
        return (memo, network) if memo is not None else None

    t0 = time.monotonic()
    # The checkpoint's weights: its file, and its modification time in case it is replaced mid-run.
    net_id = f"{model_path.resolve()}@{model_path.stat().st_mtime_ns if model_path.is_file() else 0}"
    res = evaluate_model(
        model, cfg.image_size, ev, p, set_dir, features / "model" if features else None, keyed(f"model {net_id}")
    )
    timings = {"model_s": round(time.monotonic() - t0, 1)}
    scores: dict[str, MethodScores] = {"model": _from_result(res, ev, p.recall_ns)}
    extra_hits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    spread: dict[str, Any] | None = None
    if "untrained" in p.baselines:
        t0 = time.monotonic()
        seed0 = untrained_seed_for(p, extra)
        seeds = [seed0 + i for i in range(p.untrained_seeds)]
        runs = []
        for seed in seeds:
            name_u = "untrained" if seed == seed0 else f"untrained_seed{seed}"
            sub = features / name_u if features else None
            net_u = untrained_model(cfg, seed)
            res_u = evaluate_model(net_u, cfg.image_size, ev, p, set_dir, sub, keyed(f"untrained {seed} {net_id}"))
            own = " (the trained model's own initial weights)" if seed == seed0 and p.untrained_seed is None else ""
            scores[name_u] = _from_result(
                res_u, ev, p.recall_ns, f"same architecture, torch seed {seed}, not trained" + own
            )
            runs.append(scores[name_u])
        spread = seed_spread(runs, seeds, p.recall_ns)
        if len(runs) > 1:
            # Scores from _from_result always carry both hit tables.
            extra_hits["untrained_mean"] = (
                np.mean([cast(np.ndarray, r.hits) for r in runs], axis=0),
                np.mean([cast(np.ndarray, r.hits_collapsed) for r in runs], axis=0),
            )
        timings["untrained_s"] = round(time.monotonic() - t0, 1)
    if "thumbnail" in p.baselines:
        t0 = time.monotonic()
        res_t = evaluate_model(
            ThumbnailDescriptor(p.thumbnail_size),
            cfg.image_size,
            ev,
            p,
            set_dir,
            features / "thumbnail" if features else None,
            keyed(f"thumbnail {p.thumbnail_size} {cfg.image_size}"),
        )
        scores["thumbnail"] = _from_result(
            res_t,
            ev,
            p.recall_ns,
            f"grey {p.thumbnail_size}x{p.thumbnail_size} thumbnail, standardised, L2-normalised; no learning",
        )
        timings["thumbnail_s"] = round(time.monotonic() - t0, 1)
    if "random" in p.baselines:
        scores["random"] = random_scores(ev, p)
    if "nadir" in p.baselines:
        scores["nadir"] = nadir_scores(ev, p)

    methods = {k: v.metrics(clusters, p.recall_ns, p.bootstrap_resamples) for k, v in scores.items()}
    margin_table = margins(scores, p.recall_ns, clusters=clusters, extra_hits=extra_hits, n_boot=p.bootstrap_resamples)
    model_err = orientation_errors(res, ev)
    zero_err = None
    if "always_0deg" in p.baselines and res.orientation is not None:
        summary, zero_err = always_zero_orientation(ev, p.orientation_thresholds)
        methods["always_0deg"] = {
            "orientation": summary,
            "note": "orientation prior: every photo's top faces north (TTA angle 0)",
        }
        ok = np.isfinite(model_err) & np.isfinite(zero_err)
        if ok.any():
            a = (model_err[ok] <= 45.0).astype(np.float64)[:, None]
            b = (zero_err[ok] <= 45.0).astype(np.float64)[:, None]
            m = cluster_margin(
                a, b, [45], clusters[ok] if clusters is not None else None, n_boot=p.bootstrap_resamples
            )[45]
            margin_table["model-always_0deg"] = {"within_45deg": {k: round(v, 2) for k, v in m.items()}}

    metrics: dict[str, Any] = {
        "set": name,
        "num_queries": len(ev.queries),
        "num_passes": int(len(set(clusters))) if clusters is not None else None,
        "bootstrap_unit": unit,
        "num_db": len(ev.database),
        "num_db_vectors": len(ev.database) * len(p.rotations),
        "k": p.k,
        "rotations": list(p.rotations),
        "index": p.index.kind,
        "image_size": cfg.image_size,
        "model": str(model_path),
        "counting": COUNTING_NOTE,
        "orientation_convention": ORIENTATION_NOTE,
        "methods": methods,
        "margins": margin_table,
        "margins_note": MARGINS_NOTE,
        "timings_s": timings,
    }
    if spread is not None:
        metrics["untrained_seeds"] = spread
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "predictions.parquet") as tmp:
        predictions_table(res, ev).to_parquet(tmp, index=False)
    with atomic_path(out_dir / "per_query.parquet") as tmp:
        per_query_table(ev, scores, p.recall_ns, model_err, zero_err, extra_hits).to_parquet(tmp, index=False)
    write_curves(out_dir / "curves", scores)
    write_grid(out_dir / "grid.png", res, ev, p, name)
    print(write_audit(out_dir, set_dir, p))
    write_json(out_dir / "metrics.json", metrics)
    print(summary_table(name, metrics, p.recall_ns))
    print(f"timings: {timings}")
    return metrics


def summary_table(name: str, metrics: dict[str, Any], ns: Sequence[int]) -> str:
    head = ["method"] + [f"R@{n}" for n in ns] + [f"R@{n} coll." for n in ns] + ["orient. ≤45°"]
    lines = [
        f"evaluate {name}: {metrics['num_queries']} queries, {metrics['num_db']} DB images x "
        f"{len(metrics['rotations'])} rotations, index {metrics['index']}",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for method, m in metrics["methods"].items():
        o = (m.get("orientation") or {}).get("within_45deg")
        coll = m.get("collapsed") or {}
        cells = [method] + [_fmt(m.get(f"R@{n}")) for n in ns] + [_fmt(coll.get(f"R@{n}")) for n in ns]
        cells.append(_fmt(o))
        lines.append("| " + " | ".join(cells) + " |")
    if metrics.get("untrained_seeds"):
        u = metrics["untrained_seeds"]
        lines.append(f"untrained over seeds {u['seeds']}: " + ", ".join(
            f"R@{n} {u[f'R@{n}']['mean']:.1f} ± {u[f'R@{n}']['sd'] or 0:.1f}" for n in ns))  # fmt: skip
    lines.append(
        f"margins (95 % bootstrap over {metrics.get('num_passes') or metrics['num_queries']} "
        f"{'passes' if metrics.get('num_passes') else 'queries'}):"
    )
    for pair, by_n in (metrics.get("margins") or {}).items():
        keys = [f"R@{n}" for n in ns] + ["within_45deg"]
        lines.append(f"{pair}: " + ", ".join(
            f"{key} {v['diff']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}]" for key in keys if (v := by_n.get(key))
        ))  # fmt: skip
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def run(config: EvaluateParams, paths: EvaluatePaths = EvaluatePaths()) -> dict[str, dict[str, Any]]:
    """Entry point of `earthloc evaluate`: every set of `config.sets`; each set's metrics by name."""
    names = list(config.sets)
    # One output folder can hold one set's results only; several sets go to <out_root>/<set>.
    out_dir = paths.out_dir if len(names) == 1 else None
    # The sets' databases and queries overlap: with several sets each image is embedded once per network.
    memo = DescriptorMemo() if len(names) > 1 else None
    return {name: run_set(name, config, model_path=paths.model, out_dir=out_dir, memo=memo) for name in names}
