"""fetch stage: one shard (year, zoom) of database images into the tile store.

DVC runs one instance per (year, zoom) (`matrix` in dvc.yaml), each writing its own
folder `tiles/database/<YEAR>_<ZZ>/` and manifests, all `persist`ed: a killed or failed
run keeps what it wrote and the next run resumes (pipeline/fetch/run.py).

Sources (params `fetch.source`):
- `synthetic` (the offline default): the stage starts the procedural-Earth WMTS on
  127.0.0.1 at an ephemeral port, points the EOX URL template at it (same path and query
  layout) and stops it at the end; the same HTTP client code runs as against EOX.
- `eox`: EOX's production WMTS, with the polite limits of params.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, FetchError, InputError
from pipeline.fetch.client import EOX_KVP, EOX_LAYER, EOX_RESTFUL, ClientConfig
from pipeline.fetch.estimate import (
    EOX_SIZES,
    SYNTHETIC_SIZES,
    MeanSizes,
    ShardEstimate,
    estimate_shard,
    format_table,
    human_bytes,
)  # fmt: skip
from pipeline.fetch.run import RunConfig, fetch_regions, planned_paths
from pipeline.fetch.store import REGION_COLUMNS, TILE_COLUMNS, TileStore, read_manifest, shard_name
from pipeline.geo.aoi import Aoi, aois_for, in_aois
from pipeline.io import write_json
from pipeline.schema import GRID_COLUMNS

SOURCES = ("synthetic", "eox")
URL_FORMS = {"rest": EOX_RESTFUL, "kvp": EOX_KVP}


@dataclass(frozen=True)
class FetchParams:
    """The `fetch` section of params.yaml."""

    source: str
    url_form: str
    years: tuple[int, ...]
    zooms: tuple[int, ...]
    aois: tuple[Aoi, ...] | None  # None: the whole world
    client: ClientConfig
    run: RunConfig
    synthetic_seed: int
    synthetic_client: dict[str, Any]  # client overrides for the local server (no politeness needed)
    keep_tile_cache: bool
    max_failed_fraction: float

    @classmethod
    def from_section(cls, sec: dict[str, Any]) -> FetchParams:
        source = sec.get("source", "synthetic")
        if source not in SOURCES:
            raise ConfigError(f"fetch.source must be one of {SOURCES}, got {source!r}")
        url_form = sec.get("url_form", "rest")
        if url_form not in URL_FORMS:
            raise ConfigError(f"fetch.url_form must be one of {sorted(URL_FORMS)}, got {url_form!r}")
        try:
            years = tuple(int(y) for y in sec["years"])
            # Zooms are written as upstream's two-digit folder names ("09") so that dvc.yaml's
            # matrix can name the shard folders; they are numbers to the code.
            zooms = tuple(int(str(z), 10) for z in sec["zooms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"params fetch: years and zooms must be lists of integers ({exc})") from exc
        raw_aois = sec.get("aois")
        try:
            aois = None if raw_aois is None else tuple(Aoi.from_dict(a, f"aoi{i}") for i, a in enumerate(raw_aois))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params fetch.aois: {exc}") from exc
        for a in aois or ():
            extra = sorted(set(a.years or ()) - set(years))
            if extra:
                raise ConfigError(f"params fetch.aois: {a.name} names year(s) {extra} that fetch.years lacks")
            extra = sorted(set(a.zooms or ()) - set(zooms))
            if extra:
                raise ConfigError(f"params fetch.aois: {a.name} names zoom(s) {extra} that fetch.zooms lacks")
        client_keys = dict(sec.get("client") or {})
        client_keys.setdefault("url_template", sec.get("url_template") or URL_FORMS[url_form])
        client_keys.setdefault("layer_template", sec.get("layer_template", EOX_LAYER))
        if "contact" in sec:
            client_keys.setdefault("contact", sec["contact"])
        synthetic = dict(sec.get("synthetic") or {})
        seed = int(synthetic.pop("seed", 0))
        return cls(
            source=source,
            url_form=url_form,
            years=years,
            zooms=zooms,
            aois=aois,
            client=ClientConfig.from_section(client_keys),
            run=RunConfig.from_section({**(sec.get("run") or {}), "source": source}),
            synthetic_seed=seed,
            synthetic_client=synthetic,
            keep_tile_cache=bool(sec.get("keep_tile_cache", False)),
            max_failed_fraction=float(sec.get("max_failed_fraction", 0.0)),
        )


def local_template(template: str, base_url: str) -> str:
    """The same URL template with EOX's scheme and host replaced by the local server's."""
    parts, base = urlsplit(template), urlsplit(base_url)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))


@contextmanager
def tile_source(params: FetchParams) -> Iterator[ClientConfig]:
    """The client config to use; for the synthetic source, a local server lives as long as the block."""
    if params.source != "synthetic":
        yield params.client
        return
    from pipeline.synthetic.server import SyntheticTileServer

    with SyntheticTileServer(seed=params.synthetic_seed, render_processes=params.run.render_processes) as server:
        cfg = replace(
            params.client,
            url_template=local_template(params.client.url_template, server.base_url),
            **params.synthetic_client,
        )
        yield cfg


def select_regions(grid: Path, zoom: int, aois: tuple[Aoi, ...] | None, year: int | None = None) -> pd.DataFrame:
    """Regions of `zoom` inside the areas of interest fetched at that zoom (and for `year`
    when it is given), with what fetch_regions needs."""
    return regions_in(read_grid(grid), zoom, aois, year)


def read_grid(grid: Path) -> pd.DataFrame:
    """The grid's region columns; one-line InputError when it is missing or unreadable."""
    if not grid.exists():
        raise InputError(f"{grid}: no such file (run the grid stage first)")
    try:
        return pd.read_parquet(grid, columns=list(GRID_COLUMNS))
    except Exception as exc:  # pyarrow raises many types; report one line
        raise InputError(f"{grid}: cannot read the region columns {list(GRID_COLUMNS)} ({exc})") from exc


def regions_in(df: pd.DataFrame, zoom: int, aois: tuple[Aoi, ...] | None, year: int | None = None) -> pd.DataFrame:
    """`select_regions` on a grid already read (the plan selects every shard from one read)."""
    df = df[df["zoom"] == zoom]
    aois = aois_for(aois, year=year, zoom=zoom)
    return df[in_aois(df["center_lat"].to_numpy(), df["center_lon"].to_numpy(), aois)].reset_index(drop=True)


def prune_shard(store: TileStore, year: int, zoom: int, keep_paths: set[str]) -> int:
    """Delete images (and manifest rows) of regions no longer planned, e.g. after the AOI shrank,
    so the persisted shard holds exactly the planned regions."""
    shard = store.shard_dir(year, zoom)
    removed = 0
    if shard.exists():
        for p in shard.rglob("*.jpg"):
            if p.relative_to(store.root).as_posix() not in keep_paths:
                p.unlink()
                removed += 1
        for d in sorted((d for d in shard.rglob("*") if d.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    man = store.load_manifest(year, zoom)
    if not man.empty and not man["path"].isin(list(keep_paths)).all():
        store.replace_manifest(year, zoom, man[man["path"].isin(list(keep_paths))])
    return removed


def source_id(params: FetchParams) -> str:
    """What determines the pixels: the URL template and layer for a real source; for the
    synthetic one, its seed and the world's code (the local server's port changes every run)."""
    if params.source != "synthetic":
        return f"{params.client.url_template}|{params.client.layer_template}"
    import hashlib

    from pipeline.synthetic import landfield, world

    h = hashlib.sha256()
    for path in (Path(world.__file__), Path(landfield.__file__), *sorted(Path(world.__file__).parent.glob("*.npz"))):
        h.update(path.read_bytes())
    code = h.hexdigest()[:16]
    return f"synthetic|seed={params.synthetic_seed}|world={code}"


def reset_if_source_changed(store: TileStore, year: int, zoom: int, layer: str, sid: str) -> bool:
    """Images of a shard made by another source (or another version of the synthetic world)
    must not be resumed into: delete the shard, its manifests and its raw tiles."""
    man = store.load_manifest(year, zoom)
    if man.empty or ("source_id" in man and set(man["source_id"].dropna()) <= {sid}):
        return False
    print(f"fetch {shard_name(year, zoom)}: the stored images come from another source; fetching the shard anew")
    shutil.rmtree(store.shard_dir(year, zoom), ignore_errors=True)
    shutil.rmtree(store.root / ".tilecache" / layer / str(zoom), ignore_errors=True)
    for kind in ("regions", "tiles"):
        store.manifest_path(year, zoom, kind).unlink(missing_ok=True)
    return True


def trim_tile_cache(store: TileStore, year: int, zoom: int, layer: str) -> int:
    """Drop the shard's raw tiles that no rerun needs; return how many were removed.

    Mosaics are what the pipeline uses and raw tiles would double the disk use of a world
    build, so a shard whose regions are all ok loses its whole cache. Regions that ended
    not found or failed are retried by the next run: their cached tiles stay, so the rerun
    asks only for the tiles it lacks."""
    cache = store.root / ".tilecache" / layer / str(zoom)
    if not cache.is_dir():
        return 0
    man = store.load_manifest(year, zoom)
    pending = man[man["status"] != "ok"] if not man.empty else man
    keep = {store.cache_path(layer, *map(int, t.split("/"))) for tiles in pending.get("tiles", []) for t in tiles}
    removed = 0
    for p in cache.rglob("*.jpg"):
        if p not in keep:
            p.unlink()
            removed += 1
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    else:
        for d in sorted((d for d in cache.rglob("*") if d.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    return removed


def _same_source(sid: str, source: str) -> bool:
    """A stored source id of the same kind of source (its images have the same statistics)."""
    return sid.startswith("synthetic|") == (source == "synthetic")


def mean_sizes(store: TileStore, source: str) -> MeanSizes:
    """Mean image and tile bytes of the store's shards of this kind of source, else constants."""
    images: list[float] = []
    tiles: list[float] = []
    mdir = store.root / "manifests"
    for path in sorted(mdir.glob("*.parquet")) if mdir.is_dir() else []:
        if path.name.endswith(".tiles.parquet"):
            continue
        man = read_manifest(path, REGION_COLUMNS)
        if not {"status", "bytes", "source_id"} <= set(man.columns):
            continue  # written before the manifests named their source
        ok = man[(man["status"] == "ok") & man["source_id"].fillna("").map(lambda v: _same_source(v, source))]
        if ok.empty:
            continue
        images.extend(ok["bytes"].astype(float))
        tpath = path.with_name(path.name.replace(".parquet", ".tiles.parquet"))
        if tpath.exists():
            tman = read_manifest(tpath, TILE_COLUMNS)
            tiles.extend(tman.loc[tman["status"] == "ok", "bytes"].astype(float))
    default = SYNTHETIC_SIZES if source == "synthetic" else EOX_SIZES
    if not images or not tiles:
        return default
    return MeanSizes(
        sum(images) / len(images), sum(tiles) / len(tiles),
        f"means of the tile store's manifests ({len(images)} images, {len(tiles)} tiles)",
    )  # fmt: skip


def estimate_shard_fetch(
    store: TileStore, params: FetchParams, year: int, zoom: int, regions: pd.DataFrame, sid: str, sizes: MeanSizes
) -> ShardEstimate:
    """What fetching `regions` into the shard still costs, from its manifest and tile cache
    (no hashing, no request: the fetch itself re-checks every finished image)."""
    zrc = regions[["zoom", "row", "col"]].to_numpy(dtype=np.int64).tolist()
    keys = dict(zip(regions["region_id"].astype(str).tolist(), map(tuple, zrc)))
    man = store.load_manifest(year, zoom)
    # what reset_if_source_changed will find: images of another source are fetched anew
    fresh = man.empty or not ("source_id" in man and set(man["source_id"].dropna()) <= {sid})
    done = [] if fresh else [keys[r] for r in man.loc[man["status"] == "ok", "region_id"] if r in keys]
    cache = store.root / ".tilecache" / params.client.layer(year) / str(zoom)
    cached = (
        [] if fresh or not cache.is_dir()
        else [(zoom, int(p.parent.name), int(p.stem)) for p in cache.glob("*/*.jpg") if p.stem.isdigit()]
    )  # fmt: skip
    return estimate_shard(
        shard_name(year, zoom), list(keys.values()), done, cached, sizes, params.client.min_interval_s,
        params.run.region_tiles,
    )  # fmt: skip


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would, once created)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(estimate: ShardEstimate, root: Path) -> None:
    """Stop before the first request when the shard's images and raw tiles would not fit."""
    free = free_bytes(root)
    if estimate.disk_bytes > free:
        raise FetchError(
            f"shard {estimate.shard} needs about {human_bytes(estimate.disk_bytes)} on {root} "
            f"({estimate.regions - estimate.regions_done} region images and {estimate.requests} raw tiles), "
            f"{human_bytes(free)} free: free space or narrow fetch.aois; nothing was fetched"
        )


def plan(params: FetchParams, grid: Path, root: Path, shards: list[tuple[int, int]]) -> list[str]:
    """The lines of `earthloc fetch --plan`: per shard and in total, for the configured areas
    of interest and for the whole grid (aois null). Reads the grid, manifests and tile cache;
    sends nothing."""
    store = TileStore(root)
    sid = source_id(params)
    sizes = mean_sizes(store, params.source)
    c = params.client
    out = [
        f"fetch plan ({params.source} source): mean image {human_bytes(sizes.image_bytes)}, mean tile "
        f"{human_bytes(sizes.tile_bytes)} ({sizes.origin}); time at {c.min_interval_s} s between request starts "
        f"(fetch.client), at most {c.max_concurrency} in flight; "
        "disk = images + raw tiles cached until a shard completes",
    ]
    scopes: list[tuple[str, tuple[Aoi, ...] | None]] = [("areas of interest (fetch.aois)", params.aois)]
    if params.aois is not None:
        scopes.append((f"world (aois null: every region of {grid})", None))
    regions = read_grid(grid)
    for title, aois in scopes:
        # The same selection as the shard itself (the years and zooms of each area).
        rows = [
            estimate_shard_fetch(store, params, y, z, regions_in(regions, z, aois, y), sid, sizes) for y, z in shards
        ]
        out += ["", *format_table(title, rows)]
    return out


def run_shard(
    params: FetchParams, year: int, zoom: int, grid: Path, root: Path, summary_path: Path | None,
    scheduler: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    if year not in params.years or zoom not in params.zooms:
        raise ConfigError(f"shard {shard_name(year, zoom)} is not in fetch.years x fetch.zooms of params")
    regions = select_regions(grid, zoom, params.aois, year)
    rc = replace(params.run, source_id=source_id(params))
    if scheduler is not None:
        rc = replace(rc, scheduler_address=scheduler)
    store = TileStore(root)
    layer = params.client.layer(year)
    # Everything that deletes (reset, prune, cache trim) happens under the shard lock, taken
    # before the first of them: a second run on a busy shard stops here having touched nothing.
    with store.shard_lock(year, zoom):
        reset_if_source_changed(store, year, zoom, layer, rc.source_id)
        sizes = mean_sizes(store, params.source)
        check_disk(estimate_shard_fetch(store, params, year, zoom, regions, rc.source_id, sizes), root)
        with tile_source(params) as cfg:
            summary = fetch_regions(regions, [year], [zoom], root, cfg, rc, shard_locks_held=True)
        summary["pruned_images"] = prune_shard(store, year, zoom, planned_paths(regions, year, zoom, rc.region_tiles))
        if not params.keep_tile_cache:
            summary["tiles_dropped"] = trim_tile_cache(store, year, zoom, layer)
        if summary_path is not None:
            write_json(summary_path, metrics(store, year, zoom, params, regions))
    failed = summary["regions_failed"]
    if summary["region_years"] and failed > params.max_failed_fraction * summary["region_years"]:
        raise FetchError(
            f"{failed} of {summary['region_years']} region images of {shard_name(year, zoom)} failed "
            f"(reasons in {store.manifest_path(year, zoom)}); rerun to retry them, nothing complete is fetched again"
        )
    return summary


def metrics(store: TileStore, year: int, zoom: int, params: FetchParams, regions: pd.DataFrame) -> dict[str, Any]:
    """What the shard holds (from its manifest) and what the plan costs; no timings, so an
    unchanged shard gives the same metrics whether it was fetched or resumed."""
    from pipeline.fetch.plan import request_counts

    man = store.load_manifest(year, zoom)
    status = man["status"].value_counts() if not man.empty else pd.Series(dtype=int)
    plan = request_counts([(zoom, int(r), int(c)) for r, c in zip(regions["row"], regions["col"])], [year],
                          params.run.region_tiles)  # fmt: skip
    return {
        "shard": shard_name(year, zoom),
        "source": params.source,
        "regions_planned": int(len(regions)),
        "regions_ok": int(status.get("ok", 0)),
        "regions_not_found": int(status.get("not_found", 0)),
        "regions_failed": int(status.get("failed", 0)),
        "image_bytes": int(man.loc[man["status"] == "ok", "bytes"].sum()) if not man.empty else 0,
        "unique_tiles": plan.unique,
        "naive_requests": plan.naive,
        "requests_per_region": round(plan.per_region_year, 3),
    }
