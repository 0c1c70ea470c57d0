"""GPU check: training images/s and peak device memory of MobileNetV3Large and EfficientNetB0 at 224 px, batch 128,
in float32, mixed precision and mixed precision + XLA, on whatever devices exist.

Each configuration runs in its own process, so peak device memory is that configuration's alone. It runs on any
Keras 3 backend (``--backend``): fungilib trains with TensorFlow, but a GPU image without TensorFlow can still be
checked on JAX (which always compiles through XLA: its rows say so) or torch. With TensorFlow and a GPU present it
then trains the seed-scale rehearsal for one epoch (``bench/scale_rehearsal.py``) unless ``--no-rehearsal``.

Usage: python bench/gpu_check.py [--backend tensorflow|jax|torch] [--batch 128] [--size 224] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = {  # name: (Keras dtype policy, XLA)
    "float32": ("float32", False),
    "mixed": ("mixed_float16", False),
    "mixed + XLA": ("mixed_float16", True),
    "bfloat16 + XLA": ("mixed_bfloat16", True),
}
CLASSES = 2451  # the seed's species: the head is part of the cost


def _device_name(backend: str) -> str:
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "gpu: " + tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
    return "cpu"


def _peak_bytes(backend: str) -> int | None:
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def measure_one(model_name: str, mode: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """One configuration in this process: build, compile, warm up, then time ``steps`` training steps."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    policy, xla = MODES[mode]
    if backend == "jax" and mode == "mixed + XLA":
        return {"skipped": "JAX always compiles through XLA: the same as its 'mixed' row"}
    keras.mixed_precision.set_global_policy(policy)
    base = getattr(keras.applications, model_name)(include_top=False, weights=None, input_shape=(size, size, 3),
                                                    pooling="avg")
    logits = keras.layers.Dense(CLASSES, dtype="float32", name="logits")(base.output)  # the head in float32
    model = keras.Model(base.input, logits)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=xla)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, CLASSES, batch).astype("int32"))
    start = time.perf_counter()
    for _ in range(warmup):
        loss = model.train_on_batch(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)  # returns a host float: each step has finished when it returns
    seconds = time.perf_counter() - start
    peak = _peak_bytes(backend)
    return {"images_per_second": round(batch * steps / seconds, 1), "ms_per_step": round(1000 * seconds / steps, 1),
            "warmup_seconds": round(first, 1), "peak_device_memory_gb": round(peak / 1e9, 2) if peak else None,
            "loss_finite": bool(np.isfinite(float(loss))), "device": _device_name(backend), "backend": backend,
            "xla": True if backend == "jax" else xla, "policy": policy}


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(measure_one(args.one_model, args.one_mode, args.size, args.batch, args.steps, args.warmup)))


def _run_child(backend: str, model_name: str, mode: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # JAX: allocate as needed, so its peak is the model's own
    command = [sys.executable, __file__, "--one-model", model_name, "--one-mode", mode, "--size", str(args.size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {args.timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1][:200]}
    return json.loads(lines[-1])


def _rehearsal(args: argparse.Namespace) -> dict:
    try:
        import tensorflow as tf
    except ImportError:
        return {"skipped": "TensorFlow is not installed here (fungilib's training needs it)"}
    if not tf.config.list_physical_devices("GPU"):
        return {"skipped": "no GPU visible to TensorFlow"}
    command = [sys.executable, str(HERE / "scale_rehearsal.py"), "--epochs", "1", "--image-size", "96"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "tail": done.stdout.strip().splitlines()[-12:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--models", default="MobileNetV3Large,EfficientNetB0")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per configuration")
    parser.add_argument("--no-rehearsal", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    parser.add_argument("--one-model", help=argparse.SUPPRESS)
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_model:
        _child(args)
        return
    rows = []
    print(f"{'model':18} {'mode':15} {'backend':10} {'images/s':>9} {'ms/step':>8} {'peak GB':>8}  device / note")
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            row = {"model": model_name, "mode": mode, **_run_child(args.backend, model_name, mode, args)}
            rows.append(row)
            note = row.get("device") or row.get("skipped") or row.get("error")
            print(f"{model_name:18} {mode:15} {args.backend:10} {row.get('images_per_second', '-')!s:>9} "
                  f"{row.get('ms_per_step', '-')!s:>8} {row.get('peak_device_memory_gb', '-')!s:>8}  {note}",
                  flush=True)
    rehearsal = {"skipped": "--no-rehearsal"} if args.no_rehearsal else _rehearsal(args)
    print("seed-scale rehearsal, 1 epoch:", json.dumps(rehearsal))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": str(date.today()), "machine": platform.machine(), "cpus": os.cpu_count(),
                                    "size": args.size, "batch": args.batch, "steps": args.steps, "rows": rows,
                                    "rehearsal": rehearsal}, indent=2) + "\n")


if __name__ == "__main__":
    main()
