"""Which GPUs a sweep may place runs on: the ids this host has, checked before any run starts, and one GPU per
worker process of the local pool (``CUDA_VISIBLE_DEVICES``), so runs queue for a free GPU in the pool itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from fungilib.errors import FungilibError

GPU_IDS_ENV = "FUNGILIB_GPU_IDS"  # declares the host's GPU ids where nvidia-smi cannot list them (containers, tests)


def host_gpu_ids() -> list[str]:
    """The GPU ids of this host: ``FUNGILIB_GPU_IDS`` when set, else what ``nvidia-smi`` lists, else none."""
    declared = os.environ.get(GPU_IDS_ENV)
    if declared is not None:
        return [part.strip() for part in declared.split(",") if part.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def parse_gpus(text: str, runs_per_gpu: int = 1) -> list[str]:
    """``--gpus 0,1,3`` as ids this host has, or one line naming the id that does not exist."""
    if runs_per_gpu < 1:
        raise FungilibError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted or len(set(wanted)) != len(wanted):
        raise FungilibError(f"--gpus {text!r}: give distinct GPU ids separated by commas, e.g. --gpus 0,1")
    here = host_gpu_ids()
    missing = [gpu for gpu in wanted if gpu not in here]
    if missing:
        listed = ", ".join(here) if here else "none (nvidia-smi lists none)"
        raise FungilibError(f"--gpus {text}: no GPU {', '.join(missing)} on this host (GPUs here: {listed}); "
                            f"set {GPU_IDS_ENV} where nvidia-smi cannot see them")
    return wanted


def bind_worker_gpu(slots: Any) -> None:
    """Pool initializer: this worker process takes one GPU slot for its lifetime; each run it executes (and the
    notebook kernel it starts) sees only that GPU."""
    gpu = slots.get(timeout=60)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["FUNGILIB_GPU"] = gpu


__all__ = ["GPU_IDS_ENV", "bind_worker_gpu", "host_gpu_ids", "parse_gpus"]
