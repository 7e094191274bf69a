"""The one dask client factory: a local cluster for the block, or a clear error."""

from __future__ import annotations

import socket

import pytest

from pipeline.dask_cluster import dask_client
from pipeline.errors import ConfigError


def _square(x: int) -> int:
    return x * x


def test_local_cluster_runs_tasks_and_closes() -> None:
    with dask_client(None, n_workers=1, threads_per_worker=2, processes=False) as client:
        assert client.gather(client.map(_square, [1, 2, 3])) == [1, 4, 9]
        assert sum(client.nthreads().values()) == 2
    assert client.status == "closed"


def test_unreachable_scheduler_is_a_config_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach dask scheduler tcp://127.0.0.1:{port}"):
        with dask_client(f"tcp://127.0.0.1:{port}", connect_timeout="1s"):
            pass
