"""One notebook execution in its claimed run folder, with status.json recording running → done | failed around
it: the unit that sweeps, Optuna trials and the demo run, in a local pool or on Dask."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fungilib.artifacts.run_record import FINISHED, PARAMS_FILE, RunState, read_status, write_status
from fungilib.claims import CLAIM_FILE, claim, holder
from fungilib.fsutil import atomic_open
from fungilib.notebooks import run_notebook
from fungilib.stages import stage


@dataclass
class StageRun:
    """One notebook execution: its folder, parameters (paths included) and cache key."""

    stage: str
    key: str
    folder: Path
    parameters: dict[str, Any]
    run_id: str = ""  # set for the per-run (last) stage
    data: str = ""  # the version of the pipeline's source (see fungilib.data_version)

    @property
    def done(self) -> bool:
        """Finished with these very inputs and parameters (a folder reused with other inputs is not done); a
        pruned Optuna trial is finished too."""
        status = read_status(self.folder)
        return status.get("state") in FINISHED and status.get("key") == self.key


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def execute(run: StageRun, threads: int = 0, wait: bool = False,
            context: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, Any]:
    """Execute one notebook into its folder, recording status.json (running → done | failed) around it.

    The folder is claimed first (see fungilib.claims): a run another live process is executing is left to it
    (or, with ``wait``, waited for), and one finished meanwhile is not redone. Runs in a worker process (local
    pool or Dask); a failure is recorded, never raised, so the sweep goes on."""
    with claim(run.folder, wait=wait) as mine:
        if not mine:
            return {**read_status(run.folder), "run_id": run.run_id, "stage": run.stage,
                    "state": RunState.CLAIMED, "error": f"being executed by another process ({holder(run.folder)})"}
        if run.done:
            return {**read_status(run.folder), "skipped": True, "duration_s": 0.0}
        with context() if context else contextlib.nullcontext():  # e.g. serve the sample, once claimed
            return _execute_claimed(run, threads)


def _clear_stale(run: StageRun) -> None:
    """A resuming stage's folder last run with other inputs or parameters: its outputs are stale, and the stage
    would resume (or skip) from them. They are removed first; the claim file stays."""
    previous = read_status(run.folder).get("key")
    if not stage(run.stage).resumes or not previous or previous == run.key:
        return
    print(f"[{run.stage}] {run.folder}: last run with other inputs or parameters; starting afresh", flush=True)
    for item in run.folder.iterdir():
        if item.name == CLAIM_FILE:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _execute_claimed(run: StageRun, threads: int) -> dict[str, Any]:
    folder = run.folder
    folder.mkdir(parents=True, exist_ok=True)
    _clear_stale(run)
    if threads:
        os.environ["FUNGILIB_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    notebook = stage(run.stage).notebook_path
    status = {"stage": run.stage, "run_id": run.run_id, "key": run.key, "data": run.data, "state": RunState.RUNNING,
              "start": now(), "host": socket.gethostname(), "pid": os.getpid(), "notebook": notebook.name,
              **({"gpu": os.environ["FUNGILIB_GPU"]} if os.environ.get("FUNGILIB_GPU") else {})}
    write_status(folder, status)
    with atomic_open(folder / PARAMS_FILE, "w", encoding="utf-8") as handle:
        yaml.safe_dump(run.parameters, handle, sort_keys=False)
    t0 = time.perf_counter()
    try:
        result = run_notebook(notebook, folder / notebook.name, run.parameters, raise_on_error=False)
        ok, error = result.ok, result.error
        status["kernel"] = result.kernel
    except Exception as exc:  # a kernel that died, a notebook that cannot start: recorded, not raised
        ok, error = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        traceback.print_exc()
    status.update(state=RunState.DONE if ok else RunState.FAILED, end=now(), duration_s=round(time.perf_counter() - t0,
                                                                                              1),
                  error=error)
    write_status(folder, status)
    return status
