"""Optuna's storage and pruner, opened the same way by a study (fungilib.search) and by a training run that
reports to it (fungilib.train)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from fungilib.errors import FungilibError

JOURNAL_FILE = "optuna.journal"
STORAGE_TIMEOUT_S = 10


def _check_reachable(url: str) -> None:
    """A database URL's host must answer within STORAGE_TIMEOUT_S: one line naming it, never a hang."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite") or not parts.hostname:
        return
    port = parts.port or {"postgresql": 5432, "mysql": 3306}.get(parts.scheme.split("+")[0], 0)
    try:
        socket.create_connection((parts.hostname, port), timeout=STORAGE_TIMEOUT_S).close()
    except OSError as exc:
        raise FungilibError(f"storage {parts.scheme}://{parts.hostname}:{port}: not reachable within "
                            f"{STORAGE_TIMEOUT_S} s ({exc.strerror or exc}); check the server and the URL") from None


def open_storage(url: str) -> Any:
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(url[len("journal:"):]).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver fungilib installs
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    _check_reachable(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                          heartbeat_interval=None)
    except ModuleNotFoundError as exc:
        raise FungilibError(f"storage {url.split('://')[0]}://…: its database driver is not installed "
                            f"({exc.name}); pip install it (PostgreSQL: psycopg)") from None
    except Exception as exc:  # SQLAlchemy's connection errors: one line naming the server
        raise FungilibError(f"storage {url.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def make_pruner(name: str) -> Any:
    """The pruner a study uses; the training run builds the same one to decide (Optuna does not store it).
    Steps are epochs counted from 0: the median pruner never stops a run in its first epoch."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
