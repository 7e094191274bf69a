"""AstroLoc training pairs: (astronaut photo, database region) with enough overlap, and
never a photo of an evaluation area (pure, no I/O).

Why every photo of every evaluation set is excluded, kept *and dropped*: an evaluation set
is "the queries whose nadir lies within the query radius of the POI". A query that the set
dropped (no positive, or a positive outside the set's database) was still photographed
over the test area, so training on it would teach the model the test area's appearance
from an astronaut camera: leakage of test-area imagery. The same holds for queries of the
folds a set does not take (the demo sets split one area into validation and test folds).
So a photo is excluded when

1. it is listed in some set's queries.csv (reason `evalset_query`), else
2. it is listed in some set's dropped.csv (reason `evalset_dropped`), else
3. its nadir lies within a set's query radius (+ `margin_km`) of that set's POI, recomputed
   here from the set definitions (reason `near_poi`). This catches evaluation outputs that
   are stale or missing, and the other folds of a folded set, whatever the files say, else
4. it belongs to the same ISS pass (`pipeline.geo.passes`) as a photo excluded by 1-3
   (reason `evalset_pass`): consecutive frames of a pass show nearly the same ground, so a
   frame just outside a set's disc would still teach the model that set's photos.

Positives are pairs with IoU >= `min_iou`. Overlapping pairs below it are *neutral* for the
photo-to-region loss (neither pulled nor pushed), so they are returned too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.geo.distance import haversine_km

EXCLUDE_QUERY = "evalset_query"
EXCLUDE_DROPPED = "evalset_dropped"
EXCLUDE_NEAR_POI = "near_poi"
EXCLUDE_PASS = "evalset_pass"
EXCLUSION_REASONS = (EXCLUDE_QUERY, EXCLUDE_DROPPED, EXCLUDE_NEAR_POI, EXCLUDE_PASS)

PAIR_COLUMNS = ["query_id", "filename", "region_id", "zoom", "iou", "intersection_km2", "path"]
NEUTRAL_COLUMNS = ["query_id", "region_id", "zoom", "iou"]


@dataclass(frozen=True)
class SetArea:
    """Where an evaluation set takes its queries: nadir within `query_radius_km` of (lat, lon)."""

    name: str
    lat: float
    lon: float
    query_radius_km: float


@dataclass(frozen=True)
class SetMembers:
    """The query ids an evaluation set lists: kept (queries.csv) and dropped (dropped.csv)."""

    name: str
    kept: frozenset[str]
    dropped: frozenset[str]


@dataclass(frozen=True)
class PairsResult:
    pairs: pd.DataFrame  # PAIR_COLUMNS minus `path` (added by the stage), one row per positive pair
    neutral: pd.DataFrame  # NEUTRAL_COLUMNS: overlapping pairs of kept photos/regions below min_iou
    counts: dict[str, int]  # photos lost at each filter after the exclusions


def excluded_photos(
    nadirs: pd.DataFrame,
    members: Sequence[SetMembers],
    areas: Sequence[SetArea],
    margin_km: float = 0.0,
) -> pd.DataFrame:
    """Every photo that must not be trained on, with its first reason (see module doc).

    `nadirs`: query_id, nadir_lat, nadir_lon for all photos, and `pass_id` (computed on the
    whole photo table) for the pass rule; without `pass_id` the rule is not applied.
    Returns query_id, reason, sets, sorted by query_id. Ids listed by a set but unknown to
    `nadirs` are still excluded."""
    claims: dict[str, tuple[int, set[str]]] = {}  # query_id -> (rank of best reason, sets)

    def claim(ids: Iterable[str], rank: int, set_name: str) -> None:
        for qid in ids:
            best, names = claims.get(qid, (rank, set()))
            names.add(set_name)
            claims[qid] = (min(best, rank), names)

    for m in members:
        claim(m.kept, 0, m.name)
        claim(m.dropped, 1, m.name)
    ids = nadirs["query_id"].to_numpy()
    lat = nadirs["nadir_lat"].to_numpy(dtype=np.float64)
    lon = nadirs["nadir_lon"].to_numpy(dtype=np.float64)
    for a in areas:
        near = haversine_km(a.lat, a.lon, lat, lon) < a.query_radius_km + margin_km
        claim(ids[near].tolist(), 2, a.name)
    if "pass_id" in nadirs.columns:
        passes = pd.Series(nadirs["pass_id"].to_numpy(), index=ids)
        hit = passes.reindex([q for q in claims if q in passes.index])
        sets_of_pass: dict[str, set[str]] = {}
        for qid, pid in hit.items():
            sets_of_pass.setdefault(pid, set()).update(claims[qid][1])
        same_pass = passes.isin(list(sets_of_pass)).to_numpy()
        for qid, pid in zip(ids[same_pass], passes.to_numpy()[same_pass], strict=True):
            for set_name in sets_of_pass[pid]:
                claim([qid], 3, set_name)
    rows = sorted((qid, EXCLUSION_REASONS[rank], ";".join(sorted(names))) for qid, (rank, names) in claims.items())
    out = pd.DataFrame(rows, columns=["query_id", "reason", "sets"])
    return out.astype({"query_id": str, "reason": str, "sets": str})


def select_pairs(
    intersections: pd.DataFrame,
    excluded_ids: Iterable[str],
    min_iou: float,
    regions_ok: set[str] | None = None,
    photos_ok: set[str] | None = None,
) -> PairsResult:
    """Positive and neutral (photo, region) pairs of the photos that may be trained on.

    `intersections`: query_id, region_id, zoom, iou, intersection_km2 (one row per overlap).
    `regions_ok`/`photos_ok`: the regions/photos whose images exist (None: no restriction).
    A photo is kept only if it has at least one positive pair among the usable regions."""
    excluded = set(excluded_ids)
    inter = intersections
    counts: dict[str, int] = {}
    photos = pd.Index(inter["query_id"].unique())
    counts["photos_with_overlap"] = int(len(photos))

    allowed = ~inter["query_id"].isin(excluded)
    counts["photos_excluded_evalset"] = int(photos.isin(list(excluded)).sum())
    inter = inter.loc[allowed]
    if photos_ok is not None:
        have = inter["query_id"].isin(photos_ok)
        counts["photos_without_image"] = int(inter.loc[~have, "query_id"].nunique())
        inter = inter.loc[have]
    if regions_ok is not None:
        before = inter["query_id"].nunique()
        inter = inter.loc[inter["region_id"].isin(regions_ok)]
        counts["photos_without_fetched_region"] = int(before - inter["query_id"].nunique())
    positive = inter["iou"].to_numpy() >= min_iou
    pos = inter.loc[positive]
    kept = pd.Index(pos["query_id"].unique())
    counts["photos_below_min_iou"] = int(inter["query_id"].nunique() - len(kept))
    neutral = inter.loc[~positive & inter["query_id"].isin(kept)]

    pos = pos.sort_values(["query_id", "region_id"], kind="stable").reset_index(drop=True)
    neutral = neutral.sort_values(["query_id", "region_id"], kind="stable").reset_index(drop=True)
    return PairsResult(
        pairs=pos[["query_id", "region_id", "zoom", "iou", "intersection_km2"]],
        neutral=neutral[NEUTRAL_COLUMNS],
        counts=counts,
    )


def leaked_ids(
    pairs: pd.DataFrame, members: Sequence[SetMembers], pass_of: Mapping[str, str] | None = None
) -> set[str]:
    """Photos of `pairs` that some evaluation set lists (kept or dropped), or, with
    `pass_of` (query_id -> pass_id), that share a pass with such a photo: must be empty."""
    listed: set[str] = set()
    for m in members:
        listed |= m.kept | m.dropped
    trained = set(pairs["query_id"].unique())
    leaks = trained & listed
    if pass_of is not None:
        listed_passes = {pass_of[q] for q in listed if q in pass_of}
        leaks |= {q for q in trained if pass_of.get(q) in listed_passes}
    return leaks


def summarize(
    pairs: pd.DataFrame, excluded: pd.DataFrame, counts: Mapping[str, int], min_iou: float
) -> dict[str, object]:
    """DVC metrics: pairs and photos per zoom, regions, excluded photos by reason."""
    per_zoom = pairs.groupby("zoom").agg(
        pairs=("query_id", "size"), photos=("query_id", "nunique"), regions=("region_id", "nunique")
    )
    return {
        "min_iou": float(min_iou),
        "num_pairs": int(len(pairs)),
        "num_photos": int(pairs["query_id"].nunique()),
        "num_regions": int(pairs["region_id"].nunique()),
        "pairs_per_zoom": {str(int(z)): int(v) for z, v in per_zoom["pairs"].items()},
        "photos_per_zoom": {str(int(z)): int(v) for z, v in per_zoom["photos"].items()},
        "regions_per_zoom": {str(int(z)): int(v) for z, v in per_zoom["regions"].items()},
        "mean_positives_per_photo": (float(len(pairs) / pairs["query_id"].nunique()) if len(pairs) else None),
        "excluded_photos": {r: int((excluded["reason"] == r).sum()) for r in EXCLUSION_REASONS},
        "num_excluded_photos": int(len(excluded)),
        "filtered_photos": {k: int(v) for k, v in counts.items()},
    }
