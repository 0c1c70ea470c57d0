"""One Dask set-up for every distributed path (sweeps, Optuna trials, download shards): a client on a LocalCluster
of N worker processes, or connected to an existing scheduler."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from fungilib.errors import FungilibError


def check_scheduler(address: str, timeout: float = 3.0) -> None:
    """One line, in seconds, when nothing answers at a scheduler address (Dask's own client takes its whole
    connection timeout, and ends in a traceback for an address it cannot parse)."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise FungilibError(f"scheduler {address!r}: expected tcp://HOST:PORT (a running `dask scheduler`)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FungilibError(f"scheduler {address}: nothing answers there ({exc.strerror or exc}); start `dask "
                            "scheduler` and `dask worker` on the hosts, or use local_cluster") from None


@contextlib.contextmanager
def dask_client(scheduler: str | None, local_cluster: int, threads_per_worker: int = 1,
                resources: dict[str, int] | None = None, timeout: float = 30) -> Iterator[Any]:
    """A Dask client: on a LocalCluster of ``local_cluster`` worker processes, or connected to ``scheduler``
    (one line naming it when no scheduler answers)."""
    from dask.distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if local_cluster:
            cluster = stack.enter_context(LocalCluster(n_workers=local_cluster, threads_per_worker=threads_per_worker,
                                                       processes=True, dashboard_address=":0", resources=resources))
            client = stack.enter_context(Client(cluster))
        else:
            check_scheduler(str(scheduler))
            try:
                client = stack.enter_context(Client(scheduler, timeout=timeout))
            except OSError as exc:
                raise FungilibError(f"scheduler {scheduler}: no Dask scheduler answers there ({exc}); start "
                                    "`dask scheduler` and `dask worker` on the hosts, or use local_cluster") from None
        yield client
