"""One process at a time per work folder: an exclusive ``flock`` on ``FOLDER/.claim``, released by the kernel
when its process ends (a SIGKILL included), so a crashed run never leaves a stale claim behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

CLAIM_FILE = ".claim"


def holder(folder: Path, name: str = CLAIM_FILE) -> str:
    """Who holds (or last held) the claim on ``folder``: 'pid N on HOST', or '' when unknown."""
    try:
        return (Path(folder) / name).read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def claim(folder: Path, wait: bool = False, name: str = CLAIM_FILE) -> Iterator[bool]:
    """Hold ``folder``'s claim ``name`` for the block; yields False (without waiting, unless ``wait``) when another
    process holds it. Different jobs on one folder use different names (a run's notebook vs. the download in it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
