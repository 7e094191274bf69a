"""One way to get a dask.distributed client: an existing scheduler, or a local cluster.

Stages that spread work over dask differ only in what the local cluster looks like
(processes for CPU-bound geometry, threads in one process for I/O-bound fetching), so
they share this factory and its one error for an unreachable scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import ConfigError

# Seconds to wait for a remote scheduler before giving up with a clear error.
CONNECT_TIMEOUT = "20s"


@contextmanager
def dask_client(
    address: str | None,
    *,
    n_workers: int = 1,
    threads_per_worker: int = 1,
    processes: bool = False,
    connect_timeout: str = CONNECT_TIMEOUT,
) -> Iterator[Any]:
    """A `dask.distributed.Client` for the block, closed (with its cluster) on exit.

    `address` given: connect to that scheduler (a clear `ConfigError` when unreachable).
    Otherwise a LocalCluster of `n_workers` x `threads_per_worker`, without a dashboard
    (no port to collide with other runs) and with dask's logs kept to errors."""
    from dask.distributed import Client, LocalCluster

    if address:
        try:
            client = Client(address, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach dask scheduler {address}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=None,
        silence_logs=40,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
