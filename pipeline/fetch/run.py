"""Fetch database regions: unique tiles on dask.distributed threads, mosaics in the driver.

Why this shape:
- tile downloads are I/O bound, so they run as tasks on threads (a LocalCluster with
  processes=False, or an existing scheduler); every task in a process shares one
  `WmtsClient`, hence one session, rate limit, concurrency cap and refusal breaker;
- tasks return the validated bytes; the driver alone writes the cache, mosaics and
  manifests, so remote workers need no shared file system;
- at most `max_in_flight` futures exist at once, so a million-tile plan does not flood
  the scheduler, and tiles are submitted in region order so regions finish (and are
  checkpointed) continuously;
- resume: a region whose manifest row is ok, whose path is unchanged and whose file
  still has the recorded sha256 is skipped; any other region is rebuilt, from cached
  tiles where they exist, so nothing fetched before is fetched again.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.dask_cluster import dask_client as open_dask_client
from pipeline.errors import ConfigError, InputError, SourceRefusedError
from pipeline.fetch.client import ClientConfig, TileKey, TileResult, release_shared, shared_client
from pipeline.fetch.plan import region_tile_keys
from pipeline.fetch.store import TileStore, shard_name
from pipeline.geo.names import db_relpath
from pipeline.geo.regions import GridSpec, describe_regions
from pipeline.params import build_config
from pipeline.schema import CORNER_COLUMNS, GRID_COLUMNS


@dataclass(frozen=True)
class RunConfig:
    """Runner knobs (the `fetch` params section minus the client's keys)."""

    jpeg_quality: int = 75  # upstream saved with Pillow's default, 75
    source: str = "eox"  # "eox" or "synthetic": which attribution text goes beside the images
    scheduler_address: str | None = None
    threads: int | None = None  # LocalCluster threads; default 2 x max_concurrency
    max_in_flight: int | None = None  # tasks at once; default 4 x threads
    checkpoint_s: float = 30.0  # manifest write interval
    tiles_per_task: int = 4  # tiles fetched one after another by one dask task (amortises task overhead)
    writers: int = 2  # threads that decode tiles and encode mosaics in the driver
    source_id: str = ""  # what produced the images (recorded per region; see stages/fetch.py)
    progress: bool = True
    region_tiles: int = GridSpec.region_tiles
    # The local synthetic server's tile renderers (0: its HTTP threads). How fast it renders,
    # not what: dvc.yaml does not list `fetch.run` (except jpeg_quality), so a change reruns nothing.
    render_processes: int = 0

    def __post_init__(self) -> None:
        if self.render_processes < 0:
            raise ConfigError(f"fetch.run.render_processes must be >= 0, got {self.render_processes}")
        if self.source not in ("eox", "synthetic"):
            raise ConfigError(f"fetch.source must be eox or synthetic, got {self.source!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("fetch.jpeg_quality must be in 1..100")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> RunConfig:
        """From the `fetch.run` section (with `fetch.source` merged in); an unknown key is
        an error naming it, never silently dropped."""
        return build_config(cls, sec, "fetch.run")


@dataclass
class _Job:
    """One region in one year: its 16 tiles and what happened to them this run."""

    region_id: str
    year: int
    zoom: int
    relpath: str
    keys: list[TileKey]
    pending: int = 0
    attempts: int = 0
    problems: list[str] = field(default_factory=list)  # "reason@z/y/x" of non-ok attempts
    missing: list[str] = field(default_factory=list)  # tiles that ended not_found / failed


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(regions_df: pd.DataFrame, zooms: Sequence[int], size: int) -> pd.DataFrame:
    """Regions of `zooms` with ids, corners, centre and area (computed if absent)."""
    missing = {"zoom", "row", "col"} - set(regions_df.columns)
    if missing:
        raise InputError(f"regions table lacks columns {sorted(missing)}")
    df = regions_df[regions_df["zoom"].isin(list(zooms))]
    if not set(GRID_COLUMNS) <= set(df.columns):
        df, _ = describe_regions(df[["zoom", "row", "col"]].reset_index(drop=True), size)
    df = pd.DataFrame(df[list(GRID_COLUMNS)]).drop_duplicates("region_id")
    return df.sort_values(["zoom", "row", "col"]).reset_index(drop=True)


def _jobs_for_shard(df: pd.DataFrame, year: int, size: int) -> list[_Job]:
    jobs = []
    for r in df.itertuples(index=False):
        corners = [getattr(r, c) for c in CORNER_COLUMNS]
        rel = db_relpath(corners, r.region_id, int(r.zoom), year, r.center_lat, r.center_lon, r.area_km2)
        try:
            keys = region_tile_keys(year, int(r.zoom), int(r.row), int(r.col), size)
        except ValueError as exc:
            raise InputError(f"region {r.region_id}: {exc}") from exc
        jobs.append(_Job(r.region_id, year, int(r.zoom), rel, keys))
    return jobs


def planned_paths(regions_df: pd.DataFrame, year: int, zoom: int, size: int = 4) -> set[str]:
    """Store-relative image paths of the regions of `zoom` in `regions_df` for `year`."""
    return {j.relpath for j in _jobs_for_shard(_describe(regions_df, [zoom], size), year, size)}


def _complete_ids(store: TileStore, year: int, zoom: int, jobs: list[_Job]) -> set[str]:
    """Regions already done: manifest says ok, same path, file hash unchanged."""
    man = store.load_manifest(year, zoom)
    if man.empty:
        return set()
    want = {j.region_id: j.relpath for j in jobs}
    ok = man[(man["status"] == "ok") & man["region_id"].isin(list(want))]
    return {
        rid for rid, path, sha in zip(ok["region_id"], ok["path"], ok["sha256"])
        if want[rid] == path and store.is_complete(path, sha)
    }  # fmt: skip


class _Run:
    """Mutable state of one fetch_regions call (driver side)."""

    def __init__(self, store: TileStore, cfg: ClientConfig, rc: RunConfig) -> None:
        self.store, self.cfg, self.rc = store, cfg, rc
        self.jobs: list[_Job] = []
        self.by_tile: dict[TileKey, list[_Job]] = {}
        self.tile_status: dict[TileKey, str] = {}
        self.region_rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.tile_rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.counts: Counter[str] = Counter()
        self.failed_by_reason: Counter[str] = Counter()
        self.last_checkpoint = time.monotonic()
        self.bar: tqdm | None = None
        self.writer = ThreadPoolExecutor(max(1, rc.writers), thread_name_prefix="mosaic")
        self.writes: deque[tuple[_Job, Future[tuple[str, str | None, int | None, str]]]] = deque()
        self.max_pending_writes = 8 * max(1, rc.writers)

    def add_jobs(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self.jobs.append(job)
            for key in job.keys:
                self.by_tile.setdefault(key, []).append(job)

    def split_tiles(self) -> list[TileKey]:
        """Mark cached tiles ok; return the others (to fetch) in first-use order."""
        to_fetch = []
        for key in self.by_tile:
            if self.store.cache_path(self.cfg.layer(key.year), key.z, key.y, key.x).is_file():
                self.tile_status[key] = "ok"
                self.counts["tiles_reused"] += 1
            else:
                to_fetch.append(key)
        for job in self.jobs:
            job.pending = sum(1 for k in job.keys if k not in self.tile_status)
        return to_fetch

    def on_tile(self, res: TileResult) -> None:
        key = res.key
        layer = self.cfg.layer(key.year)
        if res.status == "ok" and res.data is not None:
            self.store.put_tile(layer, key.z, key.y, key.x, res.data)
        else:
            self.failed_by_reason[res.reason] += 1
        self.counts[f"tiles_{res.status}"] += 1
        self.tile_status[key] = res.status
        self.tile_rows.setdefault((key.year, key.z), []).append(
            {
                "year": key.year, "z": key.z, "y": key.y, "x": key.x, "url": res.url, "status": res.status,
                "attempts": res.attempts, "reason": res.reason, "history": ";".join(res.history),
                "bytes": len(res.data or b""), "fetched_at": _now(),
            }
        )  # fmt: skip
        tile = f"{key.z}/{key.y}/{key.x}"
        for job in self.by_tile[key]:
            job.attempts += res.attempts
            job.problems.extend(f"{r}@{tile}" for r in res.history if r != "ok")
            if res.status != "ok":
                job.missing.append(f"{res.status}@{tile}")
            job.pending -= 1
            if job.pending == 0:
                self.finish(job)

    def finish(self, job: _Job) -> None:
        """All of a job's tiles are resolved: write its mosaic (on the writer pool) or record why not."""
        if job.missing:
            status = "not_found" if all(m.startswith("not_found") for m in job.missing) else "failed"
            problems = ";".join(dict.fromkeys(job.problems))
            self.record(job, status, None, None, ";".join(job.missing + ([problems] if problems else [])))
            return
        # Decoding 16 tiles and encoding a 1024-px JPEG costs tens of ms; Pillow releases
        # the GIL while it does so, so a few writer threads keep up with the downloads.
        self.writes.append((job, self.writer.submit(self.write_mosaic, job)))
        self.drain(block=len(self.writes) > self.max_pending_writes)

    def write_mosaic(self, job: _Job) -> tuple[str, str | None, int | None, str]:
        """(status, sha256, bytes, reason) of writing one region image (runs on a writer thread)."""
        layer = self.cfg.layer(job.year)
        reason = ";".join(dict.fromkeys(job.problems))
        try:
            data = [self.store.read_tile(layer, k.z, k.y, k.x) for k in job.keys]
            sha, nbytes = self.store.write_mosaic(job.relpath, data, self.rc.jpeg_quality)
        except OSError as exc:  # a corrupt cached tile: drop the job's tiles so a rerun refetches
            for k in job.keys:
                self.store.drop_tile(layer, k.z, k.y, k.x)
            return "failed", None, None, f"cache_corrupt: {exc}"
        return "ok", sha, nbytes, reason

    def drain(self, block: bool = False) -> None:
        """Record finished mosaic writes; with `block`, wait until at most half the window is pending.

        A region's manifest row is added only after its file is in place, so a checkpoint
        never claims an image that a kill could still lose."""
        target = self.max_pending_writes // 2 if block else None
        while self.writes and (self.writes[0][1].done() or (target is not None and len(self.writes) > target)):
            job, fut = self.writes.popleft()
            self.record(job, *fut.result())

    def record(self, job: _Job, status: str, sha: str | None, nbytes: int | None, reason: str) -> None:
        self.counts[f"regions_{'written' if status == 'ok' else status}"] += 1
        self.region_rows.setdefault((job.year, job.zoom), []).append(
            {
                "region_id": job.region_id, "year": job.year, "zoom": job.zoom, "path": job.relpath,
                "sha256": sha, "bytes": nbytes, "url_template": self.cfg.url_template,
                "layer": self.cfg.layer(job.year), "tiles": [f"{k.z}/{k.y}/{k.x}" for k in job.keys],
                "status": status, "attempts": job.attempts, "reason": reason, "fetched_at": _now(),
                "source_id": self.rc.source_id,
            }
        )  # fmt: skip
        if self.bar is not None:
            self.bar.update(1)
        if time.monotonic() - self.last_checkpoint >= self.rc.checkpoint_s:
            self.checkpoint(wait=False)

    def checkpoint(self, wait: bool = True) -> None:
        """Merge finished rows into the manifests (atomic), so a kill loses at most this interval.

        With `wait`, pending mosaic writes are finished and recorded first."""
        if wait:
            while self.writes:
                job, fut = self.writes.popleft()
                self.record(job, *fut.result())
        for (year, zoom), rows in self.region_rows.items():
            if rows:
                self.store.save_manifest(year, zoom, pd.DataFrame(rows))
                rows.clear()
        for (year, zoom), rows in self.tile_rows.items():
            if rows:
                self.store.save_manifest(year, zoom, pd.DataFrame(rows), kind="tiles")
                rows.clear()
        self.last_checkpoint = time.monotonic()


def _fetch_task(
    token: str, cfg: ClientConfig, keys: list[TileKey]
) -> tuple[list[TileResult], SourceRefusedError | None]:
    """Runs on a worker thread; all tasks of a run in one process share one client.

    A refusal comes back as a value with the tiles fetched before it (so they are
    cached, not lost), not as a task error; the driver raises it."""
    client = shared_client(token, cfg)
    done: list[TileResult] = []
    try:
        for key in keys:
            done.append(client.get_tile(key))
    except SourceRefusedError as exc:
        return done, exc
    return done, None


def _download(run: _Run, to_fetch: list[TileKey], cfg: ClientConfig, rc: RunConfig, dask_client: Any) -> dict[str, Any]:
    """Submit tiles through a bounded window and feed results to the run; return HTTP stats."""
    from dask.distributed import as_completed

    token = uuid.uuid4().hex
    window = rc.max_in_flight or 4 * (rc.threads or 2 * cfg.max_concurrency)
    step = max(1, rc.tiles_per_task)
    todo = iter([to_fetch[i : i + step] for i in range(0, len(to_fetch), step)])
    ac = as_completed()

    def submit_next() -> None:
        keys = next(todo, None)
        if keys is not None:
            k = keys[0]
            name = f"tiles-{token}-{k.year}-{k.z}-{k.y}-{k.x}"
            ac.add(dask_client.submit(_fetch_task, token, cfg, keys, key=name, pure=False))

    for _ in range(window):
        submit_next()
    try:
        for fut in ac:
            batch, refused = fut.result()
            fut.release()
            for res in batch:
                run.counts["tiles_requested"] += 1
                run.on_tile(res)
            if refused is not None:
                raise refused
            submit_next()
    finally:
        for fut in list(ac.futures):
            fut.cancel()
        stats: dict[str, Any] = {"requests": 0, "bytes": 0, "attempt_reasons": Counter()}
        for s in dask_client.run(release_shared, token).values():
            stats["requests"] += s["requests"]
            stats["bytes"] += s["bytes"]
            stats["attempt_reasons"].update(s["attempt_reasons"])
        stats["attempt_reasons"] = dict(stats["attempt_reasons"])
    return stats


def fetch_regions(
    regions_df: pd.DataFrame,
    years: Sequence[int],
    zooms: Sequence[int],
    root: str | Path,
    client_config: ClientConfig,
    run_config: RunConfig | None = None,
    *,
    dask_client: Any = None,
    shard_locks_held: bool = False,
) -> dict[str, Any]:
    """Write every (region, year) image of `zooms` x `years` under `root`; return a summary.

    Regions already complete are skipped; failures are recorded in the manifests and the
    summary, not raised. `SourceRefusedError` stops the run after a last checkpoint.
    Each shard's lock is taken before anything in it is touched, unless the caller holds
    them already (`shard_locks_held`: the stage does, so that its own destructive steps
    around the fetch happen under the same lock)."""
    rc = run_config or RunConfig()
    cfg = client_config
    store = TileStore(root)
    t0 = time.monotonic()
    df = _describe(regions_df, zooms, rc.region_tiles)
    run = _Run(store, cfg, rc)
    with ExitStack() as stack:
        for year in years:
            for zoom in zooms:
                if not shard_locks_held:
                    stack.enter_context(store.shard_lock(year, zoom))
                run.counts["temp_files_swept"] += store.sweep_temp(year, zoom, cfg.layer(year))
                jobs = _jobs_for_shard(df[df["zoom"] == zoom], year, rc.region_tiles)
                done = _complete_ids(store, year, zoom, jobs)
                run.counts["regions_skipped"] += len(done)
                run.add_jobs([j for j in jobs if j.region_id not in done])
        to_fetch = run.split_tiles()
        run.bar = tqdm(total=len(run.jobs), desc="regions", unit="img", disable=not rc.progress)
        stats: dict[str, Any] = {"requests": 0, "bytes": 0, "attempt_reasons": {}}
        try:
            for job in [j for j in run.jobs if j.pending == 0]:
                run.finish(job)  # everything cached already
            if to_fetch:
                with ExitStack() as cluster_scope:
                    if dask_client is None:
                        # Threads in this process: the tasks wait on the network, not the CPU.
                        threads = rc.threads or 2 * cfg.max_concurrency
                        dask_client = cluster_scope.enter_context(
                            open_dask_client(rc.scheduler_address, threads_per_worker=threads)
                        )
                    stats = _download(run, to_fetch, cfg, rc, dask_client)
        finally:
            run.checkpoint()  # waits for the pending mosaic writes
            run.writer.shutdown()
            run.bar.close()
            for year in years:
                for zoom in zooms:
                    store.write_attribution(year, zoom, cfg.layer(year), rc.jpeg_quality, rc.source)
    return _summary(run, stats, len(to_fetch), time.monotonic() - t0)


def _summary(run: _Run, stats: dict[str, Any], n_fetch: int, elapsed: float) -> dict[str, Any]:
    """The run's counts, also printed as one closing line (with or without a progress bar:
    a run whose regions were not found must say so even when it exits 0)."""
    c = run.counts
    s = {
        "region_years": len(run.jobs) + c["regions_skipped"],
        "regions_skipped": c["regions_skipped"],
        "regions_written": c["regions_written"],
        "regions_not_found": c["regions_not_found"],
        "regions_failed": c["regions_failed"],
        "tiles_needed": len(run.by_tile),
        "tiles_reused": c["tiles_reused"],
        "tiles_planned": n_fetch,
        "tiles_requested": c["tiles_requested"],
        "tiles_ok": c["tiles_ok"],
        "tiles_not_found": c["tiles_not_found"],
        "tiles_failed_by_reason": dict(run.failed_by_reason),
        "naive_requests": run.rc.region_tiles**2 * len(run.jobs),
        "http_requests": stats["requests"],
        "attempt_reasons": stats["attempt_reasons"],
        "bytes": stats["bytes"],
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(stats["requests"] / elapsed, 2) if elapsed > 0 else 0.0,
        "temp_files_swept": c["temp_files_swept"],
        "shards": sorted({shard_name(j.year, j.zoom) for j in run.jobs}),
    }
    print(
        f"fetch: {s['regions_written']} regions written, {s['regions_skipped']} already complete, "
        f"{s['regions_not_found']} not found, {s['regions_failed']} failed; tiles: {s['tiles_requested']} "
        f"requested, {s['tiles_reused']} reused from cache, failed {s['tiles_failed_by_reason'] or 'none'}; "
        f"{s['http_requests']} HTTP requests, {s['bytes'] / 1e6:.1f} MB, {s['requests_per_s']} req/s "
        f"in {s['elapsed_s']:.1f} s"
    )
    return s
