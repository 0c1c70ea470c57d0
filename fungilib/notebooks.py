"""Running the stage notebooks with papermill: parameters checked first, every executed notebook kept."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill as pm

from fungilib.errors import FungilibError
from fungilib.kernel_pool import ensure_zygote

KERNEL_NAME = "fungilib"  # the project's kernel: executed notebooks name it, JupyterLab opens them with it
KERNEL_DISPLAY_NAME = "Python (fungilib)"


@dataclass
class NotebookRun:
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    seconds: float
    ok: bool
    error: str = ""
    kernel: str = "cold"  # "warm": forked from the pool's zygote (fungilib.kernel_pool), else started afresh


def notebook_parameters(notebook: Path) -> dict[str, Any]:
    """The names and defaults of a notebook's ``parameters`` cell, as papermill reads them."""
    found = pm.inspect_notebook(str(notebook))
    return {name: spec["default"] for name, spec in found.items()}


def check_parameters(notebook: Path, parameters: dict[str, Any], source: str = "parameters") -> None:
    """Refuse a parameter the notebook does not declare (papermill itself would only warn)."""
    allowed = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise FungilibError(
            f"{source}: unknown parameter {unknown[0]!r} for {notebook.name}; allowed: {', '.join(allowed)}"
        )


# C libraries (TensorFlow's absl logging, CUDA probing) write to the process's stderr before Python can filter
# them; captured, they became red boxes in every executed notebook (the report of a run). The kernel leaves
# file-descriptor output to its own stderr (the terminal or log of whoever runs it); Python's stderr (warnings,
# progress bars) still appears in the notebook.
KERNEL_ARGS = ["--IPKernelApp.capture_fd_output=False"]
# The spec runs the project's launcher: a fork of a warm zygote when the runner keeps one (fungilib.kernel_pool),
# else exactly ``python -m ipykernel_launcher`` (JupyterLab, nbval).
KERNEL_LAUNCHER = ["-m", "fungilib.kernel_launcher"]


def ensure_kernel(force: bool = False) -> str:
    """Install the project's kernel spec into this environment (``make setup`` does it too); returns its name."""
    import json
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if not force and spec.argv[-len(KERNEL_ARGS):] == KERNEL_ARGS and KERNEL_LAUNCHER[1] in spec.argv:
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    folder = Path(install(kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix))
    spec_file = folder / "kernel.json"
    data = json.loads(spec_file.read_text())
    argv = [a for a in data["argv"] if a not in KERNEL_ARGS]
    at = argv.index("ipykernel_launcher") - 1  # ipykernel writes [python, (-X…,) -m, ipykernel_launcher, -f, …]
    data["argv"] = [*argv[:at], *KERNEL_LAUNCHER, *argv[at + 2:], *KERNEL_ARGS]
    spec_file.write_text(json.dumps(data, indent=1))
    return KERNEL_NAME


KERNEL_START_TRIES = 3  # a kernel that dies before answering is started again, this many times in all


def _kernel_died_starting(exc: BaseException) -> bool:
    """jupyter_client's error for a kernel that exited before its first reply — before any cell ran. Seen when
    several sweep runs start kernels at once on a loaded machine (their TCP ports are picked, released and then
    bound, so two kernels can race for one)."""
    return isinstance(exc, RuntimeError) and "before replying to kernel_info" in str(exc)


def run_notebook(notebook: Path, output: Path, parameters: dict[str, Any], source: str = "parameters",
                 raise_on_error: bool = True, kernel_name: str | None = None) -> NotebookRun:
    """Execute ``notebook`` into ``output`` with ``parameters`` (checked against its parameters cell).

    The executed notebook is written even when a cell fails: papermill keeps the traceback in it, so the
    notebook is the log of the failed run. With ``raise_on_error`` the failure is then re-raised as one line.
    A kernel that dies while starting (no cell has run) is started again, up to ``KERNEL_START_TRIES`` times.
    """
    notebook, output = Path(notebook), Path(output)
    check_parameters(notebook, parameters, source)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the kernel inherits it: no TensorFlow start-up chatter
    start = time.perf_counter()
    kernel_name = kernel_name or ensure_kernel()
    # In a process tree that keeps warm kernels (a sweep, the demo, the tests), the heavy imports are done once
    # and each kernel is a fresh fork of them; else the kernel starts cold.
    kernel = "warm" if kernel_name == KERNEL_NAME and ensure_zygote() is not None else "cold"
    try:
        for attempt in range(1, KERNEL_START_TRIES + 1):
            try:
                pm.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(notebook.parent),
                                    progress_bar=False, kernel_name=kernel_name, log_output=False)
                break
            except RuntimeError as exc:
                if not _kernel_died_starting(exc) or attempt == KERNEL_START_TRIES:
                    raise
                print(f"[notebook] {notebook.name}: the kernel died while starting ({attempt} of "
                      f"{KERNEL_START_TRIES}); starting another", file=sys.stderr, flush=True)
    except pm.PapermillExecutionError as exc:
        run = NotebookRun(notebook, output, parameters, time.perf_counter() - start, False,
                          f"{exc.ename}: {exc.evalue}".splitlines()[0], kernel)
        if raise_on_error:
            raise FungilibError(f"{notebook.name} failed ({run.error}); the executed notebook is {output}") from None
        return run
    return NotebookRun(notebook, output, parameters, round(time.perf_counter() - start, 1), True, kernel=kernel)
