"""Accuracy band and wall time of one training run on one device, MirroredStrategy over 2 logical CPU devices, and
two MultiWorkerMirroredStrategy workers on loopback ports — the same parameters and seed, evaluated on the test split.

Usage: .venv/bin/python bench/distributed_band.py [--manifest runs/demo/clean] [--epochs 12] [--size 48]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("runs/demo/clean"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args()
    from fungilib.distribution import free_loopback_ports

    work = HERE / "work" / "distributed_band"
    shutil.rmtree(work, ignore_errors=True)
    common = [sys.executable, "-m", "fungilib.cli", "train", "--manifest", str(args.manifest)]
    sets = [f"dataset.image_size={args.size}", f"fit.epochs={args.epochs}", "fit.patience=50",
            "augmentation.enabled=false", "optimizer.learning_rate=0.004"]
    setups = {"one device": [], "mirrored, 2 CPU devices": ["fit.distribution=mirrored", "fit.devices=cpu",
                                                            "fit.replicas=2"],
              "multi_worker, 2 processes": ["fit.distribution=multi_worker"]}
    rows = []
    for name, extra in setups.items():
        out = work / name.split(",")[0].replace(" ", "_")
        cmd = common + ["--out", str(out)] + [x for s in sets + extra for x in ("--set", s)]
        start = time.perf_counter()
        if name.startswith("multi_worker"):
            ports = free_loopback_ports(2)
            procs = [subprocess.Popen(cmd, env={**os.environ, "TF_CONFIG": json.dumps(
                {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": i}})},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
            codes = [p.wait() for p in procs]
        else:
            codes = [subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode]
        seconds = time.perf_counter() - start
        metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
        rows.append({"setup": name, "exit": max(codes), "seconds": round(seconds, 1),
                     **{k: round(metrics[k], 3) for k in ("top1", "top3", "macro_f1") if k in metrics}})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| setup | test top-1 | top-3 | macro-F1 | wall s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r.get('top1', '-')} | {r.get('top3', '-')} | {r.get('macro_f1', '-')} | "
              f"{r['seconds']} |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "distributed_band.json").write_text(json.dumps(
        {"benchmark": "distributed_band", "date": str(date.today()), "machine": f"{platform.machine()}, "
         f"{os.cpu_count()} cores", "epochs": args.epochs, "image_size": args.size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
