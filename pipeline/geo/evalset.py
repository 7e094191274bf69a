"""Point-of-interest evaluation sets (docs/upstream.md §3.2), as pure table logic.

Given the queries, the database regions and the query x region intersections, pick
the queries whose nadir lies within T_q of the POI and the regions whose centre lies
within T_db, then keep a query only if it has positives and all of them are in the
database. Unlike upstream, every dropped query is returned with its reason.
A set may keep only some zooms of the grid (`zooms`): its database and its positives are
then the regions of those zooms, and a query is judged by its positives at those zooms
only (a query whose only overlaps are at other zooms is dropped as having no positive).
Folds (a validation set beside a test set around one POI) take whole ISS passes
(`pipeline.geo.passes`), so near-duplicate frames never sit on both sides.
No I/O here; the `evalset` stage reads the inputs and writes the outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline.geo.distance import EARTH_RADIUS_KM, haversine_km
from pipeline.geo.passes import stable_fold

DROP_NO_POSITIVE = "no_positive"
DROP_POSITIVE_OUTSIDE_DB = "positive_outside_db"


@dataclass(frozen=True)
class EvalSetSpec:
    """One set: its POI and the two radii (km, strict "<", haversine R = 6371 km)."""

    name: str
    lat: float
    lon: float
    query_radius_km: float
    db_radius_km: float
    # Disjoint query splits around one POI (e.g. a validation set beside a test set): a
    # query belongs to fold stable_fold(pass_id, folds), so a whole ISS pass shares one
    # fold; the set keeps the folds in `take_folds`.
    folds: int = 1
    take_folds: tuple[int, ...] = (0,)
    # The zooms of the database and of the positives; None: every zoom of the grid.
    zooms: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("lat", "lon", "query_radius_km", "db_radius_km"):
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"{field} must be a finite number")
        if not -90.0 <= self.lat <= 90.0:
            raise ValueError(f"lat {self.lat} outside [-90, 90]")
        if not -180.0 <= self.lon <= 180.0:
            raise ValueError(f"lon {self.lon} outside [-180, 180]")
        if self.query_radius_km <= 0 or self.db_radius_km <= 0:
            raise ValueError("radii must be positive")
        if self.folds < 1 or not self.take_folds or not all(0 <= f < self.folds for f in self.take_folds):
            raise ValueError(f"take_folds {list(self.take_folds)} must be a non-empty subset of 0..{self.folds - 1}")
        if self.zooms is not None and (not self.zooms or any(not 0 <= z <= 30 for z in self.zooms)):
            raise ValueError(
                f"zooms {list(self.zooms)} must be a non-empty list of zooms 0..30 (or absent for every zoom)"
            )


@dataclass(frozen=True)
class EvalSet:
    """The selection result.

    - `queries`: kept queries ordered by query_id, with `query_index` (0..n-1),
      `num_positives` and `nadir_dist_km`, plus every input column.
    - `database`: regions within T_db ordered by (zoom, row, col), with `db_index`
      (0..m-1) and `center_dist_km`, plus every input column.
    - `positives`: one row per (kept query, positive region): query_index, query_id,
      db_index, region_id, and iou / intersection_km2 when the input has them;
      ordered by (query_index, db_index).
    - `dropped`: query_id, reason, num_positives, num_outside_db, nadir_dist_km;
      ordered by query_id.
    - `num_within_radius`: queries within T_q before the drops (and in the taken folds).
    - `num_other_folds`: queries within T_q that belong to folds this set does not take."""

    queries: pd.DataFrame
    database: pd.DataFrame
    positives: pd.DataFrame
    dropped: pd.DataFrame
    num_within_radius: int
    num_other_folds: int = 0


def within_radius(
    lat0: float, lon0: float, lat: npt.ArrayLike, lon: npt.ArrayLike, radius_km: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """(mask, distance): points strictly closer than `radius_km` to (lat0, lon0)."""
    dist = haversine_km(lat0, lon0, lat, lon)
    return dist < radius_km, dist


def select_evalset(
    spec: EvalSetSpec, queries: pd.DataFrame, regions: pd.DataFrame, intersections: pd.DataFrame
) -> EvalSet:
    """Build one evaluation set.

    queries: query_id, nadir_lat, nadir_lon (+ anything, carried along); `pass_id` is
    required when the spec has more than one fold (a fold is a set of whole passes).
    regions: region_id, zoom, row, col, center_lat, center_lon (+ anything).
    intersections: query_id, region_id (+ iou, intersection_km2 if present); one row
    per overlapping pair. A pair whose region is not in the database (including one
    not in `regions` at all) counts as a positive outside the database; with `spec.zooms`,
    a pair whose region is of another zoom is not a positive of this set at all."""
    # 1. Queries by nadir distance, in query_id order.
    q_mask, q_dist = within_radius(spec.lat, spec.lon, queries["nadir_lat"], queries["nadir_lon"], spec.query_radius_km)
    within = queries.loc[q_mask].assign(nadir_dist_km=q_dist[q_mask])
    if spec.folds > 1 and "pass_id" not in within.columns:
        raise ValueError(f"set {spec.name!r} has {spec.folds} folds: the queries need a pass_id column")
    keys = within["pass_id"].to_numpy() if spec.folds > 1 else within["query_id"].to_numpy()
    in_fold = np.isin(stable_fold(keys, spec.folds), list(spec.take_folds))
    num_other_folds = int((~in_fold).sum())
    within = within.loc[in_fold]
    within = within.sort_values("query_id", kind="stable").reset_index(drop=True)

    # 2. Database by centre distance (of the set's zooms), in (zoom, row, col) order.
    if spec.zooms is not None:
        other_zoom = ~regions["zoom"].isin(spec.zooms).to_numpy()
        intersections = intersections.loc[
            ~intersections["region_id"].isin(regions["region_id"].to_numpy()[other_zoom]).to_numpy()
        ]
        regions = regions.loc[~other_zoom]
    r_mask, r_dist = within_radius(spec.lat, spec.lon, regions["center_lat"], regions["center_lon"], spec.db_radius_km)
    database = regions.loc[r_mask].assign(center_dist_km=r_dist[r_mask])
    database = database.sort_values(["zoom", "row", "col"], kind="stable").reset_index(drop=True)
    database.insert(0, "db_index", np.arange(len(database), dtype=np.int64))

    # 3. Positives of the selected queries, mapped to database indices (-1 = outside).
    value_cols = [c for c in ("iou", "intersection_km2") if c in intersections.columns]
    selected = intersections["query_id"].isin(within["query_id"])
    pairs = intersections.loc[selected, ["query_id", "region_id", *value_cols]]
    db_of_region = pd.Series(database["db_index"].to_numpy(), index=database["region_id"].to_numpy())
    db_idx = pairs["region_id"].map(db_of_region)
    pairs = pairs.assign(db_index=db_idx.fillna(-1).astype(np.int64).to_numpy(), outside=db_idx.isna().to_numpy())
    per_query = pairs.groupby("query_id", sort=False).agg(
        num_positives=("region_id", "size"), num_outside_db=("outside", "sum")
    )
    counts = per_query.reindex(within["query_id"]).fillna(0).astype(np.int64)
    num_pos = counts["num_positives"].to_numpy()
    num_out = counts["num_outside_db"].to_numpy()

    reason = np.where(num_pos == 0, DROP_NO_POSITIVE, np.where(num_out > 0, DROP_POSITIVE_OUTSIDE_DB, ""))
    keep = reason == ""

    kept = within.loc[keep].reset_index(drop=True)
    kept.insert(0, "query_index", np.arange(len(kept), dtype=np.int64))
    kept["num_positives"] = num_pos[keep]

    dropped = pd.DataFrame(
        {
            "query_id": within["query_id"].to_numpy()[~keep],
            "reason": reason[~keep],
            "num_positives": num_pos[~keep],
            "num_outside_db": num_out[~keep],
            "nadir_dist_km": within["nadir_dist_km"].to_numpy()[~keep],
        }
    )

    q_index = pd.Series(kept["query_index"].to_numpy(), index=kept["query_id"].to_numpy())
    pos = pairs.loc[pairs["query_id"].isin(q_index.index)]
    positives = pd.DataFrame(
        {
            "query_index": pos["query_id"].map(q_index).astype(np.int64).to_numpy(),
            "query_id": pos["query_id"].to_numpy(),
            "db_index": pos["db_index"].to_numpy(),
            "region_id": pos["region_id"].to_numpy(),
            **{c: pos[c].to_numpy() for c in value_cols},
        }
    )
    positives = positives.sort_values(["query_index", "db_index"], kind="stable").reset_index(drop=True)
    return EvalSet(
        queries=kept,
        database=database,
        positives=positives,
        dropped=dropped,
        num_within_radius=len(within),
        num_other_folds=num_other_folds,
    )


def summarize(spec: EvalSetSpec, ev: EvalSet) -> dict[str, object]:
    """The counts of a set, JSON-ready (plain ints, floats, strings)."""
    npos = ev.queries["num_positives"].to_numpy()
    reasons = ev.dropped["reason"].value_counts()
    db_zoom = ev.database["zoom"].value_counts().sort_index()
    pos_zoom = (
        ev.database["zoom"].to_numpy()[ev.positives["db_index"].to_numpy()] if len(ev.positives) else np.array([], int)
    )
    pos_zoom_counts = pd.Series(pos_zoom).value_counts().sort_index()
    return {
        "name": spec.name,
        "poi_lat": float(spec.lat),
        "poi_lon": float(spec.lon),
        "query_radius_km": float(spec.query_radius_km),
        "db_radius_km": float(spec.db_radius_km),
        "zooms": None if spec.zooms is None else [int(z) for z in spec.zooms],
        "earth_radius_km": EARTH_RADIUS_KM,
        "num_within_radius": int(ev.num_within_radius),
        "folds": int(spec.folds),
        "take_folds": [int(f) for f in spec.take_folds],
        "num_other_folds": int(ev.num_other_folds),
        "num_queries": int(len(ev.queries)),
        "num_passes": int(ev.queries["pass_id"].nunique()) if "pass_id" in ev.queries else None,
        "num_db": int(len(ev.database)),
        "num_dropped": int(len(ev.dropped)),
        "num_dropped_no_positive": int(reasons.get(DROP_NO_POSITIVE, 0)),
        "num_dropped_positive_outside_db": int(reasons.get(DROP_POSITIVE_OUTSIDE_DB, 0)),
        "num_positives": int(len(ev.positives)),
        "mean_positives_per_query": float(npos.mean()) if len(npos) else None,
        "median_positives_per_query": float(np.median(npos)) if len(npos) else None,
        "min_positives_per_query": int(npos.min()) if len(npos) else None,
        "max_positives_per_query": int(npos.max()) if len(npos) else None,
        "num_db_per_zoom": {str(int(z)): int(n) for z, n in db_zoom.items()},
        "num_positives_per_zoom": {str(int(z)): int(n) for z, n in pos_zoom_counts.items()},
    }


def geodesic_circle(
    lat: float, lon: float, radius_km: float, n: int = 360, earth_radius_km: float = EARTH_RADIUS_KM
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(lats, lons) of the closed circle of points `radius_km` from (lat, lon) on the
    sphere the selection uses, `n` azimuths plus the first point again. Longitudes are
    unwrapped (continuous, may leave [-180, 180]) so the line does not jump at ±180."""
    from pyproj import Geod

    geod = Geod(a=earth_radius_km * 1000.0, f=0.0)
    az = np.linspace(0.0, 360.0, n, endpoint=False)
    lons, lats, _ = geod.fwd(np.full(n, lon), np.full(n, lat), az, np.full(n, radius_km * 1000.0))
    lons = np.append(np.asarray(lons), lons[0])
    lats = np.append(np.asarray(lats), lats[0])
    # Unwrapped on the closed ring: a circle around a pole ends 360° from where it began.
    return lats, np.degrees(np.unwrap(np.radians(lons)))
