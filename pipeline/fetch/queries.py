"""Query photos: simulated from the synthetic world, or downloaded from NASA, into `queries/`.

Layout under `root` (normally `tiles/`, upstream's data root):
- `queries/<upstream query filename>.jpg`: `size` x `size` RGB JPEGs named by the `filename`
  column of queries.parquet (`pipeline.geo.names.query_filename`), so upstream code finds
  them unchanged;
- `queries/manifest.parquet`: one row per query (query_id, filename, path relative to
  `root`, sha256, bytes, status ok/not_found/failed, reason, source, url, attempts,
  config_id, fetched_at); every failure is a row with its reason, never silently lost;
- `queries/ATTRIBUTION.txt`: NASA JSC's credit line for downloaded photos, or a SYNTHETIC
  notice for simulated ones.

Sources:
- `synthetic` (the offline default): `pipeline.synthetic.photos.render_photo` over the
  query's footprint, in the photo's own year, with its ORIENTATION and nadir, seeded by
  the query id. Rendering is numpy: with `workers > 1` (or a scheduler address) it runs
  on dask.distributed processes (or threads), otherwise in this process.
- `nasa` (production): the `url` column, downloaded with the tile client's HTTP machinery
  (`WmtsClient.get_url`: one session, User-Agent with contact, rate limit, concurrency cap,
  retries with backoff, 429 Retry-After, 404 recorded, body validated as a decodable
  image, refusal breaker), on dask threads, then converted to RGB and resized.

Resize policy for NASA photos (`resize`): upstream stretched every photo to 1024 x 1024
ignoring its aspect ratio (docs/upstream.md §2.2). `stretch` (the default) does the
same, for compatibility, and because it keeps the four photo corners on the four
footprint corners, as the simulated photos are made; `crop` takes the centred square
(the footprint corners then fall outside the image), `pad` fits the photo inside the
square on black (aspect kept, footprint corners at the padded image's content corners).
EXIF orientation tags are ignored, as upstream did: pixels are kept as stored.

Resume: a query whose manifest row is ok, made with the same config (`config_id`), and
whose file still has the recorded sha256 is skipped; everything else is (re)done. The
manifest is checkpointed while running and always written at the end, also on errors.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.dask_cluster import dask_client
from pipeline.errors import ConfigError, FetchError, InputError
from pipeline.fetch.client import IMAGE_TYPES, ClientConfig, release_shared, shared_client
from pipeline.fetch.store import atomic_write_bytes, encode_jpeg, read_manifest, sha256_bytes, sha256_file
from pipeline.io import atomic_path, exclusive_lock, write_text
from pipeline.params import check_keys
from pipeline.schema import CORNER_COLUMNS, NADIR_COLUMNS
from pipeline.synthetic.photos import PhotoEffects, photo_seed, render_photo

SOURCES = ("synthetic", "nasa")
RESIZE_POLICIES = ("stretch", "crop", "pad")
MANIFEST_COLUMNS = [
    "query_id", "filename", "path", "sha256", "bytes", "status", "reason", "source", "url",
    "attempts", "config_id", "fetched_at",
]  # fmt: skip
QUERY_DIR = "queries"
MIN_PHOTO_PX = 64  # smaller "photos" are thumbnails or error images, not astronaut photos

NASA_ATTRIBUTION = """\
Image courtesy of the Earth Science and Image Analysis Laboratory, NASA Johnson Space Center.
Source: Gateway to Astronaut Photography of Earth, https://eol.jsc.nasa.gov/

The photos in this folder were downloaded from the URLs in the query metadata and MODIFIED by
earthloc-pipeline: converted to RGB and resized to {size}x{size} (policy "{resize}", see
docs/synthetic_photos.md), re-encoded as JPEG (quality {quality}).
"""

SYNTHETIC_ATTRIBUTION = """\
SYNTHETIC DATA - not astronaut photographs.

The images in this folder are simulated astronaut photos rendered by earthloc-pipeline from its
procedural synthetic Earth over the real footprints of the NASA query metadata (perspective from the
four footprint corners, the photo's orientation and year, haze, colour cast, clouds, blur, JPEG).
{size}x{size} JPEG (quality {quality}). They contain no NASA imagery and carry no third-party licence.
"""


@dataclass(frozen=True)
class QueryPhotoConfig:
    """How query photos are made; built from a params section (`from_section`)."""

    source: str = "synthetic"  # "synthetic" (offline default) or "nasa"
    size: int = 1024  # upstream's query size
    jpeg_quality: int = 75  # upstream saved with quality 75
    resize: str = "stretch"  # NASA photos: stretch (upstream), crop or pad (module docstring)
    seed: int = 0  # base of the per-photo seeds (photo_seed(query_id, seed))
    world_seed: int = 0  # the synthetic world's seed: the database's
    render_px: int | None = None  # synthetic: internal resolution (default size // 2)
    effects: PhotoEffects = field(default_factory=PhotoEffects)
    workers: int = 1  # synthetic: >1 renders on a dask LocalCluster; nasa: download threads
    processes: bool = True  # synthetic LocalCluster: processes (numpy holds the GIL often)
    scheduler_address: str | None = None  # an existing dask scheduler instead of a LocalCluster
    max_in_flight: int | None = None  # tasks at once (default 4 x workers)
    checkpoint_s: float = 30.0  # manifest write interval

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"query photos: source must be one of {SOURCES}, got {self.source!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"query photos: resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("query photos: jpeg_quality must be in 1..100")
        if self.size < MIN_PHOTO_PX:
            raise ConfigError(f"query photos: size must be at least {MIN_PHOTO_PX}")
        if self.workers < 1:
            raise ConfigError("query photos: workers must be >= 1")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any]) -> QueryPhotoConfig:
        """From the `fetch_queries` section (less its `scope`); `effects` is a nested
        section; an unknown key is an error naming it."""
        sec = dict(sec)
        check_keys(sec, {f.name for f in fields(cls)}, "fetch_queries")
        if "effects" in sec:
            sec["effects"] = PhotoEffects.from_section(sec["effects"])
        try:
            return cls(**sec)
        except TypeError as exc:
            raise ConfigError(f"query photos: {exc}") from exc

    @property
    def config_id(self) -> str:
        """Hash of what shapes the bytes of a photo (not how fast they are made)."""
        keys = ("source", "size", "jpeg_quality") + (
            ("seed", "world_seed", "render_px", "effects") if self.source == "synthetic" else ("resize",)
        )
        blob = json.dumps({k: _plain(getattr(self, k)) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(v: Any) -> Any:
    return asdict(v) if isinstance(v, PhotoEffects) else v


# --------------------------------------------------------------------------- selection


def select_queries(queries: pd.DataFrame, intersections: pd.DataFrame, region_ids: Collection[str]) -> pd.DataFrame:
    """The queries with at least one positive (a row of intersections_2021) all of whose
    positives are in `region_ids`, ordered by query_id."""
    wanted = set(region_ids)
    pos = intersections[["query_id", "region_id"]]
    inside = pos["region_id"].isin(wanted)
    all_inside = inside.groupby(pos["query_id"], sort=False).all()
    keep = all_inside.index[all_inside.to_numpy()]
    out = queries[queries["query_id"].isin(keep)]
    return out.sort_values("query_id", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class PhotoScope:
    """Which queries get a photo (params `fetch_queries.scope`).

    Photos cost ~0.4 s each and a wide evaluation database makes thousands of queries
    photographable, while the pipeline uses only two kinds: the queries of the evaluation
    sets it evaluates or validates on, and AstroLoc's training photos, whose nadir lies in a
    training area of `fetch.aois`. A query outside both is never read downstream."""

    evalsets: tuple[str, ...]  # names: data/evalsets/<name>/queries.csv
    aois: tuple[str, ...]  # names of fetch.aois whose disc holds the photo's nadir
    evalsets_dir: str = "data/evalsets"

    @classmethod
    def from_section(cls, sec: Any) -> PhotoScope | None:
        """None (no key): every query all of whose positives are fetched."""
        if sec is None:
            return None
        if not isinstance(sec, dict):
            raise ConfigError(f"fetch_queries.scope must be a mapping, got {sec!r}")
        check_keys(sec, {f.name for f in fields(cls)}, "fetch_queries.scope")
        names = {}
        for key in ("evalsets", "aois"):
            raw = sec.get(key) or []
            if isinstance(raw, (str, bytes)) or not isinstance(raw, list):
                raise ConfigError(f"fetch_queries.scope.{key} must be a list of names, got {raw!r}")
            names[key] = tuple(str(n) for n in raw)
            for n in names[key]:
                if not n or "/" in n or "\\" in n or n.startswith("."):
                    raise ConfigError(f"fetch_queries.scope.{key}: bad name {n!r}")
        if "evalsets_dir" in sec:
            return cls(names["evalsets"], names["aois"], str(sec["evalsets_dir"]))
        return cls(names["evalsets"], names["aois"])

    def evalset_queries(self, name: str) -> Path:
        return Path(self.evalsets_dir) / name / "queries.csv"


def scoped_queries(photographable: pd.DataFrame, evalset_ids: Collection[str], aoi_mask: Any) -> pd.DataFrame:
    """The rows of `photographable` (select_queries' result) that are in an evaluation set
    or whose nadir lies in a named area (`aoi_mask`, aligned with its rows); same order."""
    keep = photographable["query_id"].isin(set(evalset_ids)).to_numpy() | np.asarray(aoi_mask, dtype=bool)
    return photographable[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- one photo


@dataclass
class _Outcome:
    """What happened to one query; `data` is the final JPEG when ok."""

    query_id: str
    status: str
    reason: str
    url: str
    attempts: int = 1
    data: bytes | None = field(default=None, repr=False)


def validate_photo(data: bytes, content_type: str) -> str | None:
    """None if `data` is a fully decodable image of an image content type, at least
    MIN_PHOTO_PX on each side; else the reason (an HTML page with status 200 is bad_content_type)."""
    if content_type.split(";")[0].strip().lower() not in IMAGE_TYPES:
        return "bad_content_type"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            w, h = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "undecodable"
    return "too_small" if min(w, h) < MIN_PHOTO_PX else None


def resize_photo(img: Image.Image, size: int, policy: str) -> Image.Image:
    """RGB `size` x `size` image from any photo by `policy` (stretch, crop or pad)."""
    img = img.convert("RGB")
    bicubic = Image.Resampling.BICUBIC  # upstream's Pillow default; antialiased when shrinking
    if policy == "stretch":
        return img.resize((size, size), bicubic)
    w, h = img.size
    if policy == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side)).resize((size, size), bicubic)
    if policy == "pad":
        scale = size / max(w, h)
        inner = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), bicubic)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(inner, ((size - inner.width) // 2, (size - inner.height) // 2))
        return canvas
    raise ConfigError(f"unknown resize policy {policy!r}")


def render_query(row: dict[str, Any], cfg: QueryPhotoConfig) -> _Outcome:
    """One simulated photo, encoded; a task (picklable arguments, no I/O)."""
    qid = str(row["query_id"])
    try:
        rgb = render_photo(
            [float(row[c]) for c in CORNER_COLUMNS],
            int(row["year"]),
            photo_seed(qid, cfg.seed),
            cfg.size,
            orientation=float(row["orientation"]),
            nadir=(float(row["nadir_lat"]), float(row["nadir_lon"])),
            effects=cfg.effects,
            world_seed=cfg.world_seed,
            render_px=cfg.render_px,
        )
    except ValueError as exc:  # a degenerate footprint: recorded, not fatal
        return _Outcome(qid, "failed", f"render_error: {exc}", "")
    return _Outcome(qid, "ok", "ok", "", 1, encode_jpeg(Image.fromarray(rgb), cfg.jpeg_quality))


def download_query(row: dict[str, Any], cfg: QueryPhotoConfig, client_cfg: ClientConfig, token: str) -> _Outcome:
    """One NASA photo: fetched with the shared client of run `token`, resized, encoded."""
    qid, url = str(row["query_id"]), str(row["url"])
    r = shared_client(token, client_cfg).get_url(url, validate_photo)
    if r.status != "ok" or r.data is None:
        return _Outcome(qid, r.status, r.reason, url, r.attempts)
    with Image.open(io.BytesIO(r.data)) as im:
        out = resize_photo(im, cfg.size, cfg.resize)
    return _Outcome(qid, "ok", "ok", url, r.attempts, encode_jpeg(out, cfg.jpeg_quality))


# --------------------------------------------------------------------------- the run


def _photo_path(root: Path, filename: str) -> Path:
    if "/" in filename or "\\" in filename or filename.startswith(".") or not filename.endswith(".jpg"):
        raise InputError(f"unsafe query file name {filename!r}")
    return root / QUERY_DIR / filename


def load_manifest(root: Path) -> pd.DataFrame:
    return read_manifest(root / QUERY_DIR / "manifest.parquet", MANIFEST_COLUMNS)


def _save_manifest(root: Path, old: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Merge `rows` into the manifest (the newest row per query wins), written atomically."""
    new = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    merged = new if old.empty else pd.concat([old, new], ignore_index=True) if not new.empty else old
    merged = merged.drop_duplicates("query_id", keep="last").sort_values("query_id").reset_index(drop=True)
    merged["bytes"] = merged["bytes"].astype("int64")
    merged["attempts"] = merged["attempts"].astype("int64")
    with atomic_path(root / QUERY_DIR / "manifest.parquet") as tmp:
        merged.to_parquet(tmp, index=False, compression="zstd")
    return merged


def _run_lock(root: Path) -> AbstractContextManager[None]:
    path = root / QUERY_DIR / ".lock"
    return exclusive_lock(path, FetchError(f"{path.parent} is being written by another run"))


def _is_complete(root: Path, row: pd.Series, config_id: str) -> bool:
    path = root / str(row["path"])
    return (
        row["status"] == "ok"
        and row["config_id"] == config_id
        and path.is_file()
        and sha256_file(path) == row["sha256"]
    )


def fetch_query_photos(
    queries: pd.DataFrame,
    root: Path,
    cfg: QueryPhotoConfig,
    client_config: ClientConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Make the photos of `queries` (rows of queries.parquet) under `root/queries/`.

    Returns a summary: requested, reused, ok (written this run), not_found, failed,
    failed_by_reason, bytes (written), seconds, photos_per_s, source, config_id."""
    root = Path(root)
    missing = {"query_id", "filename", "year", "orientation", *NADIR_COLUMNS, "url", *CORNER_COLUMNS}
    missing -= set(queries.columns)
    if missing:
        raise InputError(f"queries table lacks columns {sorted(missing)}")
    qdir = root / QUERY_DIR
    qdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    config_id = cfg.config_id
    with _run_lock(root):
        for tmp in qdir.glob(".*.tmp"):  # what a killed run left behind
            tmp.unlink(missing_ok=True)
        _write_attribution(qdir, cfg)
        manifest = load_manifest(root)
        done = {r["query_id"]: r for _, r in manifest.iterrows()} if not manifest.empty else {}
        todo: list[dict[str, Any]] = []
        reused = 0
        for row in queries.to_dict("records"):
            prev = done.get(row["query_id"])
            if (
                prev is not None
                and prev["path"] == f"{QUERY_DIR}/{row['filename']}"
                and _is_complete(root, prev, config_id)
            ):
                reused += 1
            else:
                _photo_path(root, str(row["filename"]))  # refuse unsafe names before any work
                todo.append(row)
        by_id = {r["query_id"]: r for r in todo}
        counts: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        written = 0
        pending: list[dict[str, Any]] = []
        last_save = time.monotonic()

        def record(out: _Outcome) -> None:
            nonlocal written, last_save, manifest
            row = by_id[out.query_id]
            rel = f"{QUERY_DIR}/{row['filename']}"
            sha, size = "", 0
            if out.status == "ok" and out.data is not None:
                atomic_write_bytes(root / rel, out.data)
                sha, size = sha256_bytes(out.data), len(out.data)
                written += size
            else:
                reasons[out.reason] += 1
            counts[out.status] += 1
            pending.append(
                {
                    "query_id": out.query_id, "filename": row["filename"], "path": rel, "sha256": sha,
                    "bytes": size, "status": out.status, "reason": out.reason, "source": cfg.source,
                    "url": out.url or (row["url"] if cfg.source == "nasa" else ""), "attempts": out.attempts,
                    "config_id": config_id, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )  # fmt: skip
            if time.monotonic() - last_save > cfg.checkpoint_s:
                manifest = _save_manifest(root, manifest, pending)
                pending.clear()
                last_save = time.monotonic()

        try:
            bar = tqdm(total=len(todo), desc=f"query photos ({cfg.source})", unit="photo", disable=not progress)
            with bar:
                for out in _run(todo, cfg, client_config or ClientConfig()):
                    record(out)
                    bar.update(1)
        finally:
            manifest = _save_manifest(root, manifest, pending)
    seconds = time.monotonic() - t0
    return {
        "requested": int(len(queries)),
        "reused": reused,
        "ok": int(counts["ok"]),
        "not_found": int(counts["not_found"]),
        "failed": int(counts["failed"]),
        "failed_by_reason": dict(sorted(reasons.items())),
        "bytes": written,
        "seconds": round(seconds, 3),
        "photos_per_s": round((len(todo)) / seconds, 3) if seconds > 0 else 0.0,
        "source": cfg.source,
        "config_id": config_id,
    }


def _write_attribution(qdir: Path, cfg: QueryPhotoConfig) -> None:
    template = NASA_ATTRIBUTION if cfg.source == "nasa" else SYNTHETIC_ATTRIBUTION
    write_text(qdir / "ATTRIBUTION.txt", template.format(size=cfg.size, resize=cfg.resize, quality=cfg.jpeg_quality))


def _run(todo: list[dict[str, Any]], cfg: QueryPhotoConfig, client_cfg: ClientConfig) -> Iterator[_Outcome]:
    """Outcomes of `todo` in completion order: in this process, or on dask.distributed."""
    if not todo:
        return
    token = uuid.uuid4().hex
    task: Callable[[dict[str, Any]], _Outcome]
    if cfg.source == "synthetic":
        task = _SyntheticTask(cfg)
    else:
        task = _NasaTask(cfg, client_cfg, token)
    try:
        if cfg.workers <= 1 and cfg.scheduler_address is None:
            for row in todo:
                yield task(row)
        else:
            yield from _run_dask(todo, cfg, task)
    finally:
        if cfg.source == "nasa":
            release_shared(token)


@dataclass(frozen=True)
class _SyntheticTask:
    cfg: QueryPhotoConfig

    def __call__(self, row: dict[str, Any]) -> _Outcome:
        return render_query(row, self.cfg)


@dataclass(frozen=True)
class _NasaTask:
    cfg: QueryPhotoConfig
    client_cfg: ClientConfig
    token: str

    def __call__(self, row: dict[str, Any]) -> _Outcome:
        return download_query(row, self.cfg, self.client_cfg, self.token)


def _run_dask(
    todo: list[dict[str, Any]], cfg: QueryPhotoConfig, task: Callable[[dict[str, Any]], _Outcome]
) -> Iterator[_Outcome]:
    """Tasks on an existing scheduler or a LocalCluster (processes for rendering, threads for
    downloads), at most `max_in_flight` at once so a big list does not flood the scheduler."""
    from dask.distributed import as_completed

    processes = cfg.processes and cfg.source == "synthetic"
    with dask_client(
        cfg.scheduler_address,
        n_workers=cfg.workers if processes else 1,
        threads_per_worker=1 if processes else cfg.workers,
        processes=processes,
    ) as client:
        limit = cfg.max_in_flight or 4 * cfg.workers
        rows = iter(todo)
        futures = as_completed()
        for row in rows:
            futures.add(client.submit(task, row, pure=False))
            if futures.count() >= limit:
                break
        for fut in futures:
            yield fut.result()
            fut.release()
            nxt = next(rows, None)
            if nxt is not None:
                futures.add(client.submit(task, nxt, pure=False))
