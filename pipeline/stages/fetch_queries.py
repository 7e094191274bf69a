"""fetch_queries stage: a photo for every query whose positives all lie in the fetched database.

The photos are simulated over the queries' real footprints by default, or downloaded
(`fetch_queries.source`); `fetch_queries.scope` limits them to the queries of the listed
evaluation sets and of AstroLoc's training areas. The stage reads the fetch stage's
manifests of the intersections' year, so it runs after the fetch, and writes under
`tiles/queries/`, `persist`ed like the shards: a rerun resumes (pipeline/fetch/queries.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import ConfigError, FetchError, InputError
from pipeline.fetch.store import TileStore, shard_name
from pipeline.geo.aoi import Aoi, in_aois
from pipeline.io import write_json
from pipeline.stages.fetch import FetchParams

if TYPE_CHECKING:
    from pipeline.fetch.queries import PhotoScope, QueryPhotoConfig


def photo_metrics(root: Path, selected: pd.DataFrame, source: str) -> dict[str, Any]:
    """What the photo store holds for the selected queries (from its manifest); like the shard
    metrics, the same whether the photos were made by this run or resumed."""
    from pipeline.fetch.queries import load_manifest as load_photo_manifest

    man = load_photo_manifest(root)
    man = man[man["query_id"].isin(set(selected["query_id"]))] if not man.empty else man
    status = man["status"].value_counts() if not man.empty else pd.Series(dtype=int)
    return {
        "source": source,
        "queries_selected": int(len(selected)),
        "photos_ok": int(status.get("ok", 0)),
        "photos_not_found": int(status.get("not_found", 0)),
        "photos_failed": int(status.get("failed", 0)),
        "photo_bytes": int(man.loc[man["status"] == "ok", "bytes"].sum()) if not man.empty else 0,
    }


def fetched_region_ids(root: Path, year: int, zooms: tuple[int, ...]) -> set[str]:
    """Regions of `year` the tile store holds (manifest status ok), over the given zooms."""
    store = TileStore(root)
    ids: set[str] = set()
    for zoom in zooms:
        path = store.manifest_path(year, zoom)
        if not path.exists():
            raise InputError(f"{path}: no manifest (run the fetch stage for {shard_name(year, zoom)} first)")
        man = store.load_manifest(year, zoom)
        ids.update(man.loc[man["status"] == "ok", "region_id"])
    return ids


def prune_photos(root: Path, keep_filenames: set[str]) -> int:
    """Delete photos (and manifest rows) of queries no longer selected, e.g. after the AOI shrank."""
    from pipeline.fetch.queries import QUERY_DIR, load_manifest

    qdir = root / QUERY_DIR
    removed = 0
    if qdir.exists():
        for p in qdir.glob("*.jpg"):
            if p.name not in keep_filenames:
                p.unlink()
                removed += 1
    man = load_manifest(root)
    if not man.empty and not man["filename"].isin(list(keep_filenames)).all():
        from pipeline.io import atomic_path

        with atomic_path(qdir / "manifest.parquet") as tmp:
            man[man["filename"].isin(list(keep_filenames))].reset_index(drop=True).to_parquet(tmp, index=False)
    return removed


def apply_scope(
    queries: pd.DataFrame, photographable: pd.DataFrame, scope: Any, aois: tuple[Aoi, ...] | None
) -> pd.DataFrame:
    """The queries the scope names, in query_id order: every query of its evaluation sets
    (read from their queries.csv), whatever its overlaps at zooms or places the tile store
    lacks, since a photo is rendered from the footprint, not from tiles, and the set has
    already judged the query against its own database; and the photographable queries
    (all positives fetched) whose nadir lies in its areas of fetch.aois (training photos,
    which need their positive regions' images)."""
    from pipeline.fetch.queries import scoped_queries

    by_name = {a.name: a for a in aois or ()}
    unknown = [n for n in scope.aois if n not in by_name]
    if unknown:
        raise ConfigError(f"fetch_queries.scope.aois names {unknown}, not in fetch.aois ({sorted(by_name) or 'none'})")
    evalset_ids: set[str] = set()
    for name in scope.evalsets:
        path = scope.evalset_queries(name)
        if not path.exists():
            raise InputError(f"{path}: no such file (run `earthloc evalset {name}` first)")
        try:
            ids = pd.read_csv(path, usecols=["query_id"], dtype={"query_id": str})["query_id"]
        except (ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"{path}: not a query table with a query_id column ({exc})") from exc
        unknown_ids = ids[~ids.isin(queries["query_id"])]
        if len(unknown_ids):
            raise InputError(
                f"{path}: {len(unknown_ids)} queries not in the query table (e.g. {unknown_ids.iloc[0]}); "
                "was the set built from the same queries?"
            )
        evalset_ids.update(ids)
    areas = tuple(by_name[n] for n in scope.aois)
    in_area = in_aois(photographable["nadir_lat"].to_numpy(), photographable["nadir_lon"].to_numpy(), areas)
    trainable = set(photographable.loc[in_area, "query_id"])
    everything = queries.sort_values("query_id", kind="stable").reset_index(drop=True)
    return scoped_queries(everything, evalset_ids, everything["query_id"].isin(trainable).to_numpy())


@dataclass(frozen=True)
class FetchQueriesParams:
    """The `fetch_queries` params section: how photos are made (`photos`, the section's own
    keys) and which queries get one (`scope`); plus what the stage takes from other sections:
    the built `fetch` section (the shards in the store, the client) and `intersect.year`."""

    photos: QueryPhotoConfig
    scope: PhotoScope | None
    fetch: FetchParams
    year: int  # the year of the intersections: a photo needs all its positives of this year fetched

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None, fetch: FetchParams, year: int) -> FetchQueriesParams:
        """From the `fetch_queries` section: `scope` strictly through PhotoScope, every other
        key strictly through QueryPhotoConfig."""
        from pipeline.fetch.queries import PhotoScope, QueryPhotoConfig

        sec = dict(sec or {})
        scope = PhotoScope.from_section(sec.pop("scope", None))
        return cls(photos=QueryPhotoConfig.from_section(sec), scope=scope, fetch=fetch, year=year)


@dataclass(frozen=True)
class FetchQueriesPaths:
    """What the fetch_queries stage reads and writes."""

    queries: Path  # the queries GeoParquet
    intersections: Path  # the intersections of `year`
    root: Path  # the tile store: its manifests are read, the photos written under queries/
    summary: Path | None  # the DVC metrics JSON; None: none written


def run(config: FetchQueriesParams, paths: FetchQueriesPaths) -> dict[str, Any]:
    """Photos of the queries all of whose 2021 positives are fetched regions (so every one of
    them can be evaluated against the fetched database), simulated or downloaded; with
    `fetch_queries.scope`, exactly the queries of the named evaluation sets and those of the
    named training areas whose positives are fetched (`apply_scope`)."""
    from pipeline.fetch.queries import fetch_query_photos, select_queries

    fp, scope, qcfg, year = config.fetch, config.scope, config.photos, config.year
    queries_path, intersections_path, root, summary_path = paths.queries, paths.intersections, paths.root, paths.summary
    if year not in fp.years:
        raise ConfigError(f"fetch.years lacks {year}, the year of the intersections (intersect.year)")
    for path, stage in ((queries_path, "queries"), (intersections_path, "intersect")):
        if not path.exists():
            raise InputError(f"{path}: no such file (run the {stage} stage first)")
    queries = pd.read_parquet(queries_path)
    queries = queries.drop(columns=[c for c in ("geometry",) if c in queries.columns])
    pairs = pd.read_parquet(intersections_path, columns=["query_id", "region_id"])
    selected = select_queries(queries, pairs, fetched_region_ids(root, year, fp.zooms))
    if scope is not None:
        selected = apply_scope(queries, selected, scope, fp.aois)
    summary = fetch_query_photos(selected, root, qcfg, client_config=fp.client, progress=fp.run.progress)
    summary["pruned_photos"] = prune_photos(root, set(selected["filename"]))
    print(
        f"fetch_queries: {len(selected)} queries "
        + ("in fetch_queries.scope" if scope is not None else f"have all their {year} positives in the tile store")
        + "; photos "
        f"{summary['ok']} made, {summary['reused']} already complete, {summary['not_found']} not found, "
        f"{summary['failed']} failed {summary['failed_by_reason'] or ''}, {summary['pruned_photos']} pruned "
        f"({qcfg.source}, {summary['seconds']:.1f} s)"
    )
    if summary_path is not None:
        write_json(summary_path, photo_metrics(root, selected, qcfg.source))
    if summary.get("failed", 0) > fp.max_failed_fraction * max(1, len(selected)):
        raise FetchError(
            f"{summary['failed']} of {len(selected)} query photos failed (reasons in {root}/queries/manifest.parquet); "
            "rerun to retry them"
        )
    return summary
