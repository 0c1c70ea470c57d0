"""Warm kernels for papermill: a pool of zygotes, one per import environment, shared by a process and its children.

Every executed notebook used to pay ~5 s before its first line of work (a new Python, then TensorFlow, Keras,
pandas and matplotlib imported again); for a head run on stored embeddings that is more than its whole fit.
``start_pool`` (a sweep, the demo, the test session: whoever runs many notebooks) makes a pool for its process
tree; ``ensure_zygote`` (called by ``run_notebook`` in that tree) starts, once per import environment, a zygote
(``fungilib.kernel_zygote``) that does those imports once; the project's kernel spec (``fungilib.kernel_launcher``)
then forks each kernel from it. Child processes (a CLI run by a test, Dask workers on this machine) inherit the
pool through ``FUNGILIB_KERNEL_POOL`` and use the same zygotes. Zygotes end with the process that made the pool.
Without a pool (one notebook run from the shell) kernels start cold: a zygote would not pay for itself.

``FUNGILIB_WARM_KERNELS=0`` turns it off: every kernel starts cold, exactly as before.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fungilib.kernel_launcher import POOL_ENV, import_signature, warm_kernels_enabled, zygote_socket

OWNER_FILE = "owner"
POOL_PREFIX = "fungilib-kernels-"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"  # the stage notebooks whose imports are preloaded

_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(pool: Path) -> int:
    try:
        return int((pool / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return 0


def _remove_stale_pools() -> None:
    """Pools whose owner died without cleaning up (killed): their sockets are dead; remove the folders."""
    for folder in Path(tempfile.gettempdir()).glob(f"{POOL_PREFIX}*"):
        owner = _owner(folder)
        if owner and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)


def active_pool() -> Path | None:
    """The pool this process tree keeps (made here or inherited), while the process that made it lives."""
    inherited = os.environ.get(POOL_ENV)
    if inherited and _alive(_owner(Path(inherited))):
        return Path(inherited)
    return None


def start_pool() -> Path | None:
    """Keep warm kernels for this process and its children (a sweep, a search, the demo, a test session call it
    once); returns the zygote's socket for the current environment, as ``ensure_zygote``."""
    if not warm_kernels_enabled():
        return None
    with _lock:
        if active_pool() is None:
            _new_pool()
    return ensure_zygote()


def _new_pool() -> Path:
    _remove_stale_pools()
    pool = Path(tempfile.mkdtemp(prefix=POOL_PREFIX))
    (pool / OWNER_FILE).write_text(str(os.getpid()))
    os.environ[POOL_ENV] = str(pool)
    atexit.register(shutil.rmtree, pool, True)
    return pool


def ensure_zygote() -> Path | None:
    """In a process tree that keeps warm kernels: the socket of the zygote serving this process's import
    environment, started if needed. None when there is no pool (a single notebook run from the shell: its kernel
    starts cold, as starting a zygote would not pay), warm kernels are off, or the zygote could not start."""
    if not warm_kernels_enabled():
        return None
    with _lock:
        pool = active_pool()
        if pool is None:
            return None
        signature = import_signature(os.environ)
        path = zygote_socket(pool, signature)
        with open(pool / f"{signature}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process of the tree may be starting this zygote
            if path.exists() and _listening(path):
                return path
            path.unlink(missing_ok=True)  # a zygote that was killed leaves its socket behind
            return _start_zygote(path, _owner(pool))


def _listening(path: Path) -> bool:
    """Whether a zygote answers on ``path`` (it reads the empty request of this probe and drops it)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _start_zygote(path: Path, owner: int) -> Path | None:
    # The zygote outlives whoever started it (a CLI run inside a sweep, say): it must hold none of its pipes, or a
    # caller reading that command's output to its end would wait for the zygote. Its stderr goes to a log file.
    log = path.with_suffix(".log")
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fungilib.kernel_zygote", str(path), str(owner),
                                 str(NOTEBOOKS)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=err,
                                cwd=path.parent, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready" once it listens; nothing if it failed
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.wait()
        reason = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
        print(f"[kernels] the warm kernel zygote did not start (exit {proc.returncode}: {reason[0]}); kernels "
              f"start cold", file=sys.stderr, flush=True)
        return None
    return path
