"""The project kernel's entry point: a fresh fork of a warm zygote when one serves this environment, else ipykernel.

The kernel spec ``fungilib`` runs ``python -m fungilib.kernel_launcher -f CONNECTION_FILE …``. When the process
that asked for the kernel keeps a pool of warm zygotes (``fungilib.kernel_pool``: TensorFlow, Keras, pandas,
plotting and the other third-party libraries imported once), this launcher hands its connection file, working folder,
environment and standard streams to the zygote serving this *import environment*, which forks a kernel for it; the
launcher then stands in for that kernel towards jupyter_client: it forwards signals (interrupt, terminate) and exits
as the kernel does. Without a pool, or with ``FUNGILIB_WARM_KERNELS=0``, it becomes ``python -m ipykernel_launcher``
with the same arguments (``exec``: same process, nothing in between) — JupyterLab and nbval always see that.

Imports nothing heavy: every kernel start pays for this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

POOL_ENV = "FUNGILIB_KERNEL_POOL"  # the folder of the zygotes serving this process tree (fungilib.kernel_pool)
SWITCH_ENV = "FUNGILIB_WARM_KERNELS"  # "0": every kernel starts cold, as ipykernel_launcher
WARM_MARK_ENV = "FUNGILIB_KERNEL"  # set to "warm" inside a kernel forked from a zygote (runs record it)

# Variables read while TensorFlow, Keras, NumPy's BLAS or matplotlib are imported (or that change what is imported):
# a zygote only serves kernels whose values of these equal its own; any other environment gets its own zygote.
IMPORT_ENV_PREFIXES = ("TF_", "CUDA", "NVIDIA_", "XLA_", "KERAS", "OMP_", "MKL", "OPENBLAS_", "GOTO", "LD_",
                       "PYTHON", "MPL", "JAX", "TORCH")
RUNTIME_ONLY_ENV = frozenset({"TF_CONFIG"})  # read when a strategy is made, in the kernel: no zygote of its own
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def warm_kernels_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def import_signature(environ: Mapping[str, str]) -> str:
    """A short key of everything in ``environ`` that decides what importing the heavy modules does."""
    relevant = sorted((k, v) for k, v in environ.items()
                      if k.startswith(IMPORT_ENV_PREFIXES) and k not in RUNTIME_ONLY_ENV)
    text = json.dumps([sys.executable, relevant])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def zygote_socket(pool: Path, signature: str) -> Path:
    return pool / f"{signature}.sock"


def _cold(argv: list[str]) -> None:
    xoptions = [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]  # e.g. frozen_modules
    os.execv(sys.executable, [sys.executable, *xoptions, "-m", "ipykernel_launcher", *argv])


def _exit_as(status: int) -> None:
    """Leave as the kernel left: its exit code, or killed by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled, so need no reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


class _Lines:
    """Lines read from a socket without buffering past what ``select`` can see."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buffer = conn, b""

    def pending(self) -> bool:
        return b"\n" in self.buffer

    def readline(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.conn.recv(4096)
            if not chunk:
                return b""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"


def main(argv: list[str]) -> None:
    pool = os.environ.get(POOL_ENV)
    if not pool or not warm_kernels_enabled():
        _cold(argv)
    path = zygote_socket(Path(pool), import_signature(os.environ))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:  # no zygote for this environment (or it has gone): a cold kernel, as without a pool
        conn.close()
        _cold(argv)
    umask = os.umask(0o022)
    os.umask(umask)
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask, "launcher": os.getpid()}
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    replies = _Lines(conn)
    answer = replies.readline()
    if not answer:  # the zygote went away before forking
        conn.close()
        _cold(argv)
    pid = int(json.loads(answer)["pid"])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    # A cold kernel ends when the process that started it dies (ipykernel's parent poller); so does a warm one.
    watched = [conn]
    parent = os.environ.get("JPY_PARENT_PID", "0")
    if parent.isdigit() and int(parent) > 1:
        try:
            watched.append(os.pidfd_open(int(parent)))
        except OSError:
            pass
    ready, _, _ = select.select(watched, [], []) if not replies.pending() else ([conn], [], [])
    if conn not in ready:
        forward(signal.SIGKILL, None)
    ended = replies.readline()  # the zygote reaps its child and tells its wait status
    _exit_as(int(json.loads(ended)["status"]) if ended else 1 << 8)


if __name__ == "__main__":
    main(sys.argv[1:])
