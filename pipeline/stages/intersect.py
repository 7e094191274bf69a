"""intersect stage: every query footprint against every 2021 database region.

Outputs, in `--out-dir`:
- `intersections_<year>.parquet`: one row per overlapping pair (query_id, region_id,
  zoom, intersection_km2, iou, query_fraction, region_fraction), sorted by query_id
  then region_id, so the file is identical whatever ran it.
- `queries_intersections_with_db_<year>.pt`: upstream's structure (a dict keyed by the
  query's upstream file name; every query is a key, with an empty list when it overlaps
  nothing). Each value is a list of tuples
  `(db_relpath, region_id, intersection_km2, iou, query_fraction, region_fraction)`:
  element 0 is the database path relative to the data root, as upstream's code
  expects; element 3 is the IoU, where a derived project looks for it. Only str and
  float are stored, so `torch.load(path, weights_only=True)` reads it.
- `intersections_summary.json`: counts (DVC metrics).

The work is split into query partitions run on dask.distributed: an existing
scheduler when an address is given (CLI, params or DASK_SCHEDULER_ADDRESS), else a
LocalCluster of processes. Each worker builds the region STRtree once and keeps it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import shapely

from pipeline.dask_cluster import dask_client
from pipeline.errors import ConfigError, InputError
from pipeline.geo.area import DEFAULT_DENSIFY_DEG, M2_PER_KM2, to_equal_area
from pipeline.geo.names import db_relpath
from pipeline.geo.overlap import overlap_pairs
from pipeline.io import atomic_path, read_geoparquet, write_json
from pipeline.params import build_config, check_keys
from pipeline.schema import CORNER_COLUMNS, DATABASE_YEAR

TABLE_COLUMNS = ["query_id", "region_id", "zoom", "intersection_km2", "iou", "query_fraction", "region_fraction"]


@dataclass(frozen=True)
class IntersectParams:
    """The `intersect` params section, plus the footprint densification step of the
    `queries` section (footprints are compared as they were ingested)."""

    year: int = DATABASE_YEAR
    min_intersection_km2: float = 0.0
    partitions: int = 8
    scheduler_address: str | None = None  # else DASK_SCHEDULER_ADDRESS, else a LocalCluster
    n_workers: int = 2
    threads_per_worker: int = 1
    densify_deg: float = DEFAULT_DENSIFY_DEG

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.n_workers < 1 or self.threads_per_worker < 1:
            raise ConfigError("params intersect: partitions, n_workers and threads_per_worker must be >= 1")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None, densify_deg: float = DEFAULT_DENSIFY_DEG) -> IntersectParams:
        """From the `intersect` section and the queries' `densify_deg` (which is not a key
        of this section: a `densify_deg` here is an unknown key)."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)} - {"densify_deg"}, "intersect")
        return build_config(cls, {**sec, "densify_deg": densify_deg}, "intersect")


@dataclass(frozen=True)
class IntersectPaths:
    """What the intersect stage reads and where it writes."""

    queries: Path  # query footprints GeoParquet (queries stage)
    grid: Path  # regions GeoParquet (grid stage)
    out_dir: Path


# Bounds of the equal-area plane (EPSG:6933), for Hilbert ordering of footprints.
_EA_WORLD = (-17367530.45, -7342230.14, 17367530.45, 7342230.14)

# Worker-side cache: the region tree is built once per worker process and reused by
# every partition that worker runs.
_TREE_CACHE: dict[str, shapely.STRtree] = {}


def _partition_overlaps(
    query_wkb: npt.NDArray[np.object_],
    query_area: npt.NDArray[np.float64],
    query_index: npt.NDArray[np.int64],
    region_wkb: npt.NDArray[np.object_],
    region_area: npt.NDArray[np.float64],
    token: str,
    min_intersection_km2: float,
) -> pd.DataFrame:
    """One partition of queries against all regions, run on a worker.

    Geometries travel as WKB arrays: pickling shapely objects one by one is ten times
    slower than `to_wkb`/`from_wkb` on the whole array."""
    tree = _TREE_CACHE.get(token)
    if tree is None:
        _TREE_CACHE.clear()
        tree = shapely.STRtree(shapely.from_wkb(region_wkb))
        _TREE_CACHE[token] = tree
    queries = shapely.from_wkb(query_wkb)
    pairs = overlap_pairs(queries, tree.geometries, query_area, region_area, min_intersection_km2, tree=tree)
    pairs["query_index"] = query_index[pairs["query_index"].to_numpy()]
    return pairs


def intersect_queries(queries: Any, regions: Any, params: IntersectParams) -> pd.DataFrame:
    """Overlap table (query_index, region_index, areas...) computed on dask workers."""
    q_ea = to_equal_area(queries.geometry.values, params.densify_deg)
    r_ea = to_equal_area(regions.geometry.values)
    q_area = shapely.area(q_ea) / M2_PER_KM2
    r_area = shapely.area(r_ea) / M2_PER_KM2
    region_wkb = shapely.to_wkb(r_ea)
    query_wkb = shapely.to_wkb(q_ea)
    # Identifies this region set in the workers' tree cache.
    token = hashlib.sha256(b"".join(region_wkb.tolist())).hexdigest()
    n_parts = max(1, min(params.partitions, len(q_ea)))
    # Partitions of nearby queries (Hilbert order of their bounding boxes): each
    # partition then meets few distinct regions, which is what the clipping loop costs.
    if len(q_ea):
        order = np.asarray(gpd.GeoSeries(q_ea).hilbert_distance(total_bounds=_EA_WORLD), dtype=np.int64).argsort(
            kind="stable"
        )
    else:
        order = np.arange(0, dtype=np.int64)
    bounds = np.linspace(0, len(q_ea), n_parts + 1).astype(int)
    address = params.scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    with dask_client(
        address, n_workers=params.n_workers, threads_per_worker=params.threads_per_worker, processes=True
    ) as client:
        # One scattered object each (a list would scatter every element separately).
        region_future = client.scatter(region_wkb, broadcast=True, hash=False)
        area_future = client.scatter(r_area, broadcast=True, hash=False)
        futures = [
            client.submit(
                _partition_overlaps,
                query_wkb[order[a:b]],
                q_area[order[a:b]],
                order[a:b],
                region_future,
                area_future,
                token,
                params.min_intersection_km2,
                pure=False,
            )
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]
        parts = client.gather(futures)
    if not parts:
        return overlap_pairs(q_ea[:0], r_ea, q_area[:0], r_area)
    return pd.concat(parts, ignore_index=True)


def pairs_table(pairs: pd.DataFrame, queries: Any, regions: Any) -> pd.DataFrame:
    """Replace positions by ids and sort by (query_id, region_id)."""
    table = pd.DataFrame(
        {
            "query_id": queries["query_id"].to_numpy()[pairs["query_index"].to_numpy()],
            "region_id": regions["region_id"].to_numpy()[pairs["region_index"].to_numpy()],
            "zoom": regions["zoom"].to_numpy()[pairs["region_index"].to_numpy()].astype(np.int8),
            "intersection_km2": pairs["intersection_km2"].to_numpy(),
            "iou": pairs["iou"].to_numpy(),
            "query_fraction": pairs["query_fraction"].to_numpy(),
            "region_fraction": pairs["region_fraction"].to_numpy(),
        }
    )
    return table.sort_values(["query_id", "region_id"], kind="stable").reset_index(drop=True)


def region_relpaths(regions: Any, year: int) -> dict[str, str]:
    """Upstream database path of every region for `year`."""
    corners = regions[list(CORNER_COLUMNS)].to_numpy()
    return {
        rid: db_relpath(c.tolist(), rid, int(z), year, float(la), float(lo), float(a))
        for rid, z, c, la, lo, a in zip(
            regions["region_id"],
            regions["zoom"],
            corners,
            regions["center_lat"],
            regions["center_lon"],
            regions["area_km2"],
        )
    }


def upstream_dict(table: pd.DataFrame, queries: Any, regions: Any, year: int) -> dict[str, list[tuple[Any, ...]]]:
    """Upstream's intersection dict (see the module docstring for the tuple).

    `table` must be sorted by query_id. Every region's path and id is one shared str
    object, so pickle stores each once and the file stays small."""
    regions_used = regions[regions["region_id"].isin(pd.unique(table["region_id"]))]
    paths = region_relpaths(regions_used, year)
    cat = pd.Categorical(table["region_id"])
    rid_objs = np.asarray(cat.categories, dtype=object)
    path_objs = np.array([paths[r] for r in rid_objs], dtype=object)
    codes = cat.codes
    rows = list(
        zip(
            path_objs[codes].tolist(),
            rid_objs[codes].tolist(),
            table["intersection_km2"].tolist(),
            table["iou"].tolist(),
            table["query_fraction"].tolist(),
            table["region_fraction"].tolist(),
        )
    )
    qids = table["query_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]]) if len(qids) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(qids)]
    by_query = {qids[s]: rows[s:e] for s, e in zip(starts.tolist(), ends.tolist())}
    return {name: by_query.get(qid, []) for qid, name in zip(queries["query_id"], queries["filename"])}


def run(config: IntersectParams, paths: IntersectPaths) -> dict[str, Any]:
    """Overlaps of every query with every region, written as Parquet, upstream's .pt dict
    and a summary JSON under `paths.out_dir`; returns the summary."""
    import torch  # only this stage needs it, for upstream's .pt format

    params, queries_path, grid_path, out_dir = config, paths.queries, paths.grid, paths.out_dir

    t0 = time.perf_counter()
    queries = read_geoparquet(queries_path, columns=["query_id", "filename", "geometry"])
    regions = read_geoparquet(grid_path)
    for name, df, col in (("queries", queries, "query_id"), ("grid", regions, "region_id")):
        if df[col].duplicated().any():
            raise InputError(f"{name}: duplicated {col} values")
    t_read = time.perf_counter()
    pairs = intersect_queries(queries, regions, params)
    t_pairs = time.perf_counter()
    table = pairs_table(pairs, queries, regions)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"intersections_{params.year}.parquet") as tmp:
        table.to_parquet(tmp, index=False, compression="zstd")
    with atomic_path(out_dir / f"queries_intersections_with_db_{params.year}.pt") as tmp, open(tmp, "wb") as fh:
        # A file object, not the temp path: torch names the archive's inner folder after
        # the path, which would make every run's bytes differ.
        torch.save(upstream_dict(table, queries, regions, params.year), fh)
    per_query = table.groupby("query_id").size()
    summary = {
        "num_queries": int(len(queries)),
        "num_regions": int(len(regions)),
        "num_pairs": int(len(table)),
        "num_queries_with_overlap": int(per_query.size),
        "num_queries_without_overlap": int(len(queries) - per_query.size),
        "mean_regions_per_query": float(per_query.reindex(queries["query_id"], fill_value=0).mean()),
        "pairs_per_zoom": {str(k): int(v) for k, v in table.groupby("zoom").size().items()},
    }
    write_json(out_dir / "intersections_summary.json", summary)
    print(
        f"intersect: {len(table):,} pairs for {per_query.size:,}/{len(queries):,} queries against "
        f"{len(regions):,} regions; overlaps {t_pairs - t_read:.1f} s, total {time.perf_counter() - t0:.1f} s -> {out_dir}"
    )
    return summary
