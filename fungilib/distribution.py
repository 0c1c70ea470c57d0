"""Where training runs: one device, MirroredStrategy over local GPUs (or logical CPU devices), or
MultiWorkerMirroredStrategy across hosts from ``TF_CONFIG`` — with one clear line when it cannot start.

The rule for batch size and learning rate: ``dataset.batch_size`` is the **global** batch, split evenly across all
replicas (it must divide by their number), and ``optimizer.learning_rate`` belongs to that global batch. Adding
devices therefore changes speed, not the optimisation; to use more devices for a bigger batch, raise batch_size
and scale the learning rate linearly with it (Goyal et al., 2017), with the cosine warm-up the defaults already have.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from fungilib.errors import FungilibError


@dataclass
class DevicePlacement:
    """The strategy a run trains under and this process's part in it."""

    strategy: Any = None  # None: TensorFlow's default (one device)
    replicas: int = 1  # replicas in sync, all workers together
    worker_index: int = 0
    workers: int = 1
    distribution: str = "none"

    @property
    def chief(self) -> bool:
        """The worker that writes the run folder (worker 0; the only one without a strategy)."""
        return self.worker_index == 0

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def read_tf_config(environ: dict[str, str] | None = None) -> tuple[list[str], int]:
    """(worker addresses, this worker's index) from ``TF_CONFIG``, or one line naming what is wrong with it."""
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "")
    where = "fit.distribution=multi_worker needs TF_CONFIG"
    if not raw.strip():
        raise FungilibError(f'{where} (unset): e.g. {{"cluster": {{"worker": ["host1:12345", "host2:12345"]}}, '
                            '"task": {"type": "worker", "index": 0}}, one index per host')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FungilibError(f"{where} as JSON: {exc.msg} at character {exc.pos}") from None
    workers = config.get("cluster", {}).get("worker") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and _address(w) for w in workers):
        raise FungilibError(f"{where} with cluster.worker a list of 'host:port' addresses, got {workers!r}")
    if not isinstance(task, dict) or task.get("type") != "worker" or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(workers):
        raise FungilibError(f"{where} with task {{'type': 'worker', 'index': 0..{len(workers) - 1}}}, got {task!r}")
    if set(config["cluster"]) - {"worker"}:
        raise FungilibError(f"{where} with worker tasks only (the chief is worker 0), got "
                            f"{sorted(config['cluster'])}")
    return workers, task["index"]


def _address(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def _answers(worker: str) -> bool:
    host, port = _address(worker) or ("", 0)
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def silent_workers(workers: list[str], me: int) -> list[str]:
    """The other workers whose address does not accept connections now."""
    return [f"{w} (TF_CONFIG cluster.worker[{i}])" for i, w in enumerate(workers) if i != me and not _answers(w)]


def rendezvous(workers: list[str], me: int, timeout_s: float) -> None:
    """Return once every other worker is up, or after ``timeout_s`` one line naming those that never answered.

    TensorFlow's own wait for the cluster (inside MultiWorkerMirroredStrategy) lasts an hour in a call that holds
    the interpreter, so nothing can cut it short. Before it, each worker listens on its own TF_CONFIG port and
    waits until every other worker's port answers; then it closes that port for TensorFlow's server to take."""
    host, port = _address(workers[me]) or ("", 0)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(16)
    except OSError as exc:
        listener.close()
        raise FungilibError(f"fit.distribution=multi_worker: cannot listen on {workers[me]} (TF_CONFIG "
                            f"cluster.worker[{me}], this worker): {exc.strerror}") from None
    deadline = time.monotonic() + timeout_s
    try:
        waiting = silent_workers(workers, me)
        while waiting and time.monotonic() < deadline:
            time.sleep(0.3)
            waiting = silent_workers(workers, me)
    finally:
        listener.close()
    if waiting:
        raise FungilibError(f"fit.distribution=multi_worker: {', '.join(waiting)} did not answer within "
                            f"{timeout_s:.0f} s (fit.worker_timeout_s); start fungilib train there with its "
                            "TF_CONFIG, or correct the address")


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, for trying several workers on one machine (``TF_CONFIG``)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _cpu_devices(count: int) -> list[str]:
    import tensorflow as tf

    try:
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                   [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # TensorFlow already started in this process: its devices are fixed
        pass
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < count:
        raise FungilibError(f"fit.devices=cpu with fit.replicas={count}: TensorFlow had started in this process with "
                            f"{len(devices)} CPU device(s); run training in a fresh process "
                            "(fungilib train, a notebook)")
    return [d.name for d in devices[:count]]


def make_placement(distribution: str, devices: str, replicas: int, batch_size: int,
                   worker_timeout_s: float) -> DevicePlacement:
    """The strategy for ``fit.distribution`` (call before any other TensorFlow work in the process)."""
    if distribution == "none":
        return DevicePlacement()
    import tensorflow as tf

    if distribution == "mirrored":
        if devices == "cpu":
            names = _cpu_devices(replicas or 2)
        else:
            gpus = tf.config.list_logical_devices("GPU")
            if not gpus:
                raise FungilibError("fit.distribution=mirrored with fit.devices=gpu: TensorFlow sees no GPU here "
                                    "(see README, GPU set-up); set fit.devices: cpu to replicate over CPU devices, or "
                                    "fit.distribution: none")
            if replicas > len(gpus):
                raise FungilibError(f"fit.replicas={replicas}: only {len(gpus)} GPU(s) visible to TensorFlow")
            names = [g.name for g in gpus[: replicas or len(gpus)]]
        placement = DevicePlacement(tf.distribute.MirroredStrategy(names), len(names), distribution=distribution)
    else:
        workers, me = read_tf_config()
        rendezvous(workers, me, worker_timeout_s)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        placement = DevicePlacement(strategy, strategy.num_replicas_in_sync, me, len(workers), distribution)
    if batch_size % placement.replicas:
        raise FungilibError(f"dataset.batch_size={batch_size} is the global batch: it must divide evenly across the "
                            f"{placement.replicas} replicas of fit.distribution={distribution}")
    return placement


__all__ = ["DevicePlacement", "free_loopback_ports", "rendezvous", "make_placement", "read_tf_config", "silent_workers"]
