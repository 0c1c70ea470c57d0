"""Where work runs: a local process pool (optionally one GPU per worker process) or a Dask distributed cluster;
one Dask set-up for sweeps, Optuna trials and download shards."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fungilib.dask_cluster import dask_client
from fungilib.errors import FungilibError
from fungilib.gpus import bind_worker_gpu
from fungilib.run_execution import StageRun, execute


@dataclass
class RunPlacement:
    """Where a sweep's runs execute: a local process pool (optionally one GPU per worker process), or a Dask
    cluster (optionally each run holding the workers' ``GPU`` resource)."""

    workers: int = 0  # local pool size (0: cores / 2); with gpus: len(gpus) x runs_per_gpu
    scheduler: str | None = None
    local_cluster: int = 0
    gpus: list[str] = field(default_factory=list)  # local pool: ids checked by fungilib.gpus.parse_gpus
    runs_per_gpu: int = 1
    gpu_resource: bool = False  # Dask: submit each run with resources={"GPU": 1}

    def __post_init__(self) -> None:
        if self.gpus and (self.scheduler or self.local_cluster):
            raise FungilibError("--gpus places runs in the local pool; on Dask each worker owns its GPU: start one "
                                "`CUDA_VISIBLE_DEVICES=<id> dask worker <scheduler> --resources GPU=1` per GPU and "
                                "pass --gpu-resource")
        if self.gpu_resource and not (self.scheduler or self.local_cluster):
            raise FungilibError("--gpu-resource is for Dask (--scheduler or --local-cluster); locally use --gpus")
        if self.gpus:
            self.workers = len(self.gpus) * self.runs_per_gpu


def _collect(finished: Any, on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Statuses of futures (local or Dask) in the order they finish, reporting each as it lands."""
    results = []
    for future in finished:
        status = future.result()
        on_done(status)
        results.append(status)
    return results


def submit_all(runs: list[StageRun], place: RunPlacement,
                on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run ``runs`` in parallel: a local process pool, or tasks on a Dask distributed cluster."""
    if not runs:
        return []
    cores = os.cpu_count() or 2
    if place.scheduler or place.local_cluster:
        from dask.distributed import as_completed

        gpu = {"GPU": 1} if place.gpu_resource else None
        threads = max(1, cores // max(1, place.local_cluster)) if place.local_cluster else 0
        with dask_client(place.scheduler, place.local_cluster, threads_per_worker=2 if gpu else 1,
                         resources=gpu) as client:
            futures = [client.submit(execute, run, threads, pure=False, key=f"fungilib-{run.run_id or run.key}",
                                     resources=gpu) for run in runs]
            return _collect(as_completed(futures), on_done)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import as_completed as done_in_order
    from multiprocessing import get_context

    context = get_context("spawn")
    workers = place.workers or max(1, cores // 2)
    threads = max(1, cores // workers)
    pool_args: dict[str, Any] = {}
    if place.gpus:  # one GPU slot per worker process: a run waits in the pool's queue until a GPU is free
        slots = context.Queue()
        for gpu in place.gpus:
            for _ in range(place.runs_per_gpu):
                slots.put(gpu)
        pool_args = {"initializer": bind_worker_gpu, "initargs": (slots,)}
    with ProcessPoolExecutor(workers, mp_context=context, **pool_args) as pool:
        futures = [pool.submit(execute, run, threads) for run in runs]
        return _collect(done_in_order(futures), on_done)
