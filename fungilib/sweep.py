"""Sweeps: validate the sweep file, run the shared data stages once, then every run (or Optuna trial) in parallel
in a local pool or on Dask; each run is a folder with its executed notebook, parameters, status and output."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fungilib.artifacts.run_record import ACTIVE, FINISHED, RunState, read_status, write_status
from fungilib.dask_cluster import check_scheduler
from fungilib.errors import FungilibError
from fungilib.executors import RunPlacement, submit_all
from fungilib.kernel_pool import start_pool
from fungilib.run_execution import execute, now
from fungilib.sample_server import serving
from fungilib.search import run_optuna
from fungilib.stages import SOURCE, stage
from fungilib.sweep_file import Sweep, load_sweep, stage_values
from fungilib.sweep_plan import plan, prepare_source


@dataclass
class SweepResult:
    sweep: Sweep
    executed: list[dict[str, Any]]
    skipped: int
    statuses: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.statuses
                if s.get("state") not in (*FINISHED, *ACTIVE, RunState.QUEUED)]

    @property
    def elsewhere(self) -> list[dict[str, Any]]:
        """Runs another live process (a second sweep of the same file) is executing."""
        return [s for s in self.statuses if s.get("state") in ACTIVE]


def run_sweep(path: Path, runs_root: Path = Path("runs"), workers: int = 0, scheduler: str | None = None,
              local_cluster: int = 0, gpus: list[str] | None = None, runs_per_gpu: int = 1,
              gpu_resource: bool = False) -> SweepResult:
    """Validate the sweep, run the shared data stages once (cached by key), then every run in parallel.

    Finished stages and runs (status.json 'done') are skipped, so a rerun of a finished sweep only reports,
    and a killed sweep resumes: unfinished runs are executed again in the same folder (training continues
    from its last epoch)."""
    if scheduler:  # before any run is marked queued
        check_scheduler(scheduler)
    place = RunPlacement(workers, scheduler, local_cluster, list(gpus or []), runs_per_gpu, gpu_resource)
    sweep = load_sweep(path)
    start_pool()  # every run's kernel a fork of one warm zygote (before any Dask worker starts: they inherit it)
    prepare_source(sweep, runs_root)
    shared, per_run = plan(sweep, runs_root)
    executed: list[dict[str, Any]] = []
    skipped = 0
    cores = os.cpu_count() or 2
    place.workers = place.workers or max(1, min(len(per_run), cores // 2 or 1))
    trials = sweep.optuna.n_trials if sweep.optuna is not None else len(per_run)
    bar = tqdm(total=len(shared) + trials, desc=f"sweep {sweep.name}", unit="stage")

    def report(status: dict[str, Any]) -> None:
        bar.update(1)
        label = status.get("run_id") or status.get("stage")
        if status.get("skipped"):
            tqdm.write(f"[sweep] {label}: done meanwhile by another process")
        elif status.get("state") == RunState.CLAIMED:
            tqdm.write(f"[sweep] {label}: {status['error']}")
        else:
            tqdm.write(f"[sweep] {label}: {status['state']} in {status.get('duration_s') or 0:.0f} s"
                       + (f" — {status['error']}" if status.get("error") else ""))

    def sample_server() -> contextlib.AbstractContextManager:
        """The sample on loopback while a download stage of this sweep runs (only once that stage is claimed:
        a second sweep of the same file waits for the first's download instead of fighting for the port)."""
        return serving(Path(sweep.sample_dir) if sweep.sample_dir else None, port=sweep.sample_port)

    per_run_downloads = sweep.sample_dir and any(r.stage == "download" for r in per_run if not r.done)
    with serving(Path(sweep.sample_dir) if per_run_downloads else None, port=sweep.sample_port):
        for run in shared:  # data stages in order, once each, in this process
            if run.done:
                skipped += 1
                bar.update(1)
                continue
            status = execute(run, threads=0, wait=True,  # another sweep making the same data: wait for it
                             context=sample_server if run.stage == "download" else None)
            report(status)
            if status.get("skipped"):  # finished by another process while this one waited
                skipped += 1
                continue
            executed.append(status)
            if status["state"] != RunState.DONE:
                bar.close()
                raise FungilibError(f"stage {run.stage} failed ({status['error']}); its notebook is "
                                    f"{run.folder / stage(run.stage).notebook_path.name}")
        if sweep.optuna is not None:  # trials asked from the study, run as ordinary run folders
            outs = {SOURCE: str(Path(sweep.archive).resolve()), **{r.stage: r.parameters["out"] for r in shared}}
            last = sweep.pipeline[-1]
            trials = run_optuna(sweep, runs_root, stage_values(sweep, last, {}), outs, per_run[0].data, place,
                                report)
            bar.close()
            return SweepResult(sweep, [*executed, *trials], skipped, trials)  # the data stages it ran, then trials
        todo = [r for r in per_run if not r.done]
        skipped += len(per_run) - len(todo)
        bar.update(len(per_run) - len(todo))
        for run in todo:
            if not read_status(run.folder):
                write_status(run.folder, {"stage": run.stage, "run_id": run.run_id, "state": RunState.QUEUED,
                                          "queued": now()})
        for status in submit_all(todo, place, report):
            if status.get("skipped") or status.get("state") == RunState.CLAIMED:  # another process ran (or runs) it
                skipped += bool(status.get("skipped"))
            else:
                executed.append(status)
    bar.close()
    statuses = [read_status(r.folder) for r in per_run]
    return SweepResult(sweep, executed, skipped, statuses)


__all__ = ["SweepResult", "run_sweep"]
