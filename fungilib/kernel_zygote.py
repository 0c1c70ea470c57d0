"""A warm zygote: imports the notebooks' heavy modules once, then forks one fresh kernel per launcher request.

Started by ``fungilib.kernel_pool`` as ``python -m fungilib.kernel_zygote SOCKET OWNER_PID NOTEBOOKS``. It imports
the third-party libraries the notebooks and fungilib use (TensorFlow, Keras, NumPy, pandas, matplotlib, seaborn,
Optuna, Dask, papermill, IPython's kernel, and whatever else the stage notebooks import) — ~5 s — and nothing else:
no fungilib module (importing ``fungilib.plotting`` sets the house look; a kernel must do that itself, when and if
its notebook imports it, as a cold one does — fungilib's own modules then take ~0.1 s), and no TensorFlow op, so
TensorFlow's runtime (thread pools, devices) is created in each kernel, after the kernel's own thread settings. Each
kernel is a fork of that state, never of another kernel: a run's numbers do not depend on the runs before it
(``tests/test_kernel_pool.py`` checks a warm and a cold run train to the same bits). It prints ``ready`` once
listening, serves until its owner process ends, and tells each launcher its kernel's pid and, when the kernel ends,
its wait status."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from fungilib.kernel_launcher import WARM_MARK_ENV

# The third-party libraries fungilib imports (the notebooks' own imports are read from them too). None of them
# changes global state a kernel could see on import (matplotlib's rcParams were checked to stay at their defaults).
HEAVY_MODULES = ("numpy", "pandas", "pyarrow", "tables", "h5py", "yaml", "PIL.Image", "scipy", "tensorflow", "keras",
                 "matplotlib", "matplotlib.pyplot", "seaborn", "tqdm", "optuna", "dask", "distributed", "papermill",
                 "IPython", "ipykernel.kernelapp", "matplotlib_inline")
_LAUNCHER_FILE = str(Path(importlib.util.find_spec("ipykernel_launcher").origin or "ipykernel_launcher"))
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"  # what ipykernel sets before a notebook imports pyplot


def notebook_imports(folder: Path) -> list[str]:
    """The modules the code cells of the notebooks in ``folder`` import (top-level names, as written)."""
    found: list[str] = []
    for notebook in sorted(folder.glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
        for cell in cells:
            if cell.get("cell_type") != "code":
                continue
            source = "".join(cell.get("source", []))
            code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            try:
                tree = ast.parse(code)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                found += [n for n in names if n not in found]
    return found


def preload(modules: list[str]) -> list[str]:
    """Import ``modules``; returns those that failed (a kernel then imports them itself, as a cold one would)."""
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 — a module that cannot be imported here is simply not warm
            failed.append(name)
    return failed


def tensorflow_runtime_started() -> bool:
    """Whether TensorFlow's eager context exists already (it must not: forks would share its thread pools)."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    ctx = context.context_safe()
    return ctx is not None and ctx._context_handle is not None  # noqa: SLF001 — no public "initialized" query


def _watch_launcher(launcher: int) -> None:
    """Die with the launcher: jupyter_client kills a kernel by killing the process it started, the launcher."""
    try:
        fd = os.pidfd_open(launcher)
    except OSError:
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def wait() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="launcher-watch", daemon=True).start()


def _become_kernel(request: dict[str, Any], fds: list[int], keep_closed: list[int]) -> None:
    """In the forked child: take the launcher's streams, folder and environment, then run ipykernel. Never returns."""
    code = 1
    try:
        os.setsid()
        for sig, handler in _FRESH_HANDLERS.items():  # as a new Python has them (SIGPIPE ignored: EPIPE raises)
            signal.signal(sig, handler)
        for fd in keep_closed:
            os.close(fd)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request.get("umask", 0o022)))
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[WARM_MARK_ENV] = "warm"
        del sys.path[0]  # the zygote's folder; ipykernel_launcher removes the kernel's own (IPython adds "" back)
        argv = list(request["argv"])
        if os.environ.get("JPY_PARENT_PID"):  # ipykernel read it into a default when the zygote imported it
            argv.append(f"--IPKernelApp.parent_handle={int(os.environ['JPY_PARENT_PID'])}")
        sys.argv = [_LAUNCHER_FILE, *argv]
        if "numpy" in sys.modules:  # a cold kernel's global NumPy state is unseeded: so is each fork's
            sys.modules["numpy"].random.seed()
        _watch_launcher(int(request["launcher"]))
        from ipykernel.kernelapp import IPKernelApp

        app = IPKernelApp.instance()
        app.initialize(argv)
        inline = sys.modules.get("matplotlib_inline.backend_inline")
        if inline is not None:  # loaded before any shell existed: hook it to this kernel's shell, as on first load
            inline._enable_matplotlib_integration()  # noqa: SLF001
        app.start()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 — reported on the launcher's stderr, then the kernel ends
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            break
        data += more
    return json.loads(data), list(fds)


def serve(path: Path, owner: int) -> None:
    """Listen on ``path`` until ``owner`` ends; fork a kernel per request, report its pid and wait status."""
    owner_fd = os.pidfd_open(owner)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the pool read "ready" from our stdout; nothing else goes there
    os.close(devnull)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd → (pid, the launcher's connection)
    try:
        while True:
            ready, _, _ = select.select([listener, owner_fd, *children], [], [])
            if owner_fd in ready:
                return
            for item in ready:
                if item is listener:
                    conn, _ = listener.accept()
                    try:
                        request, fds = _read_request(conn)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        others = [c.fileno() for _, c in children.values()]  # other kernels' launchers
                        _become_kernel(request, fds, [listener.fileno(), owner_fd, conn.fileno(), *children, *others])
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                    except OSError:  # the launcher is gone already: its kernel follows it (launcher-watch)
                        pass
                    children[os.pidfd_open(pid)] = (pid, conn)
                else:
                    pid, conn = children.pop(item)
                    os.close(item)
                    _, status = os.waitpid(pid, 0)
                    if status:  # the zygote's log (in the pool folder) keeps how a kernel ended, if not cleanly
                        print(f"kernel {pid} ended: {_describe(status)}", file=sys.stderr, flush=True)
                    try:
                        conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                    except OSError:
                        pass  # the launcher was killed first
                    conn.close()
    finally:
        listener.close()
        path.unlink(missing_ok=True)


# The handlers of a fresh interpreter for the signals the zygote handles itself; a kernel gets them back.
_FRESH_HANDLERS: dict[int, Any] = {}


def main(argv: list[str]) -> None:
    path, owner, notebooks = Path(argv[0]), int(argv[1]), Path(argv[2])
    _FRESH_HANDLERS.update({sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    preload([*HEAVY_MODULES, *(m for m in notebook_imports(notebooks) if m.split(".")[0] != "fungilib")])
    if tensorflow_runtime_started():
        print("fungilib kernel zygote: importing the notebooks' modules started TensorFlow's runtime; "
              "kernels start cold", file=sys.stderr, flush=True)
        sys.exit(3)
    serve(path, owner)


if __name__ == "__main__":
    main(sys.argv[1:])
