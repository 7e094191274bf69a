"""File I/O shared by the stages: atomic writes and GeoParquet round trips.

Every output is written to a temporary file in its destination directory, flushed
and fsynced, then renamed over the destination: a killed run leaves either the old
file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd

from pipeline.errors import EarthLocError, InputError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success fsync it and rename it to `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], busy: EarthLocError) -> Iterator[None]:
    """Hold a non-blocking exclusive flock on `path` (created if missing) for the block;
    raise `busy` at once if another process holds it (two runs must not write one output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise busy from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_geoparquet(gdf: gpd.GeoDataFrame, dest: str | os.PathLike[str]) -> None:
    """GeoParquet 1.x with CRS metadata, written atomically."""
    with atomic_path(dest) as tmp:
        gdf.to_parquet(tmp, index=False, compression="zstd")


def read_geoparquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> gpd.GeoDataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (run the stage that makes it first)")
    try:
        return gpd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow/geopandas raise many types; report one line
        raise InputError(f"{path}: not a readable GeoParquet file ({exc})") from exc
