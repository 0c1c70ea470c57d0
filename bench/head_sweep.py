"""A 20-point head sweep on a frozen pretrained base, two ways, through the real `fungilib sweep`:

(a) as before: every run a full training run with `freeze: head_only` — each epoch decodes every photo and runs the
    whole network;
(b) on stored embeddings: one shared `embed` stage, then every run trains the head alone on its features
    (`pipeline: [embed, train]`).

Same grid (learning rate × dropout × label smoothing), same epochs, same base (EfficientNet-Lite0 from its packaged
ImageNet weights), same 128 px, one run at a time. Reports wall time end to end (embedding included), per run
(after the embedding), the fit's own seconds, the best validation top-1 of each way and the test top-1 of each
pick. Data: the real four-species mushrooms of ../shared/data/images (import-folder, seed 0; the manifest
bench/real_photos.py made, or made here).

Usage: .venv/bin/python bench/head_sweep.py [--set mushrooms] [--only a|b] [--points 20] [--workers 1] [--cold]
``--workers 2`` runs two sweep runs at a time (`fungilib sweep --workers`); its results go under the way's name
with ``_workers2`` appended, beside the one-worker figures. Every run's kernel is a fork of the sweep's warm
zygote (fungilib.kernel_pool); ``--cold`` starts each kernel afresh (``FUNGILIB_WARM_KERNELS=0``, as before
2026-12-05's third session): results under the way's name with ``_cold`` appended. Each sweep starts from nothing
(its runs folder is removed first).
Writes bench/results/head_sweep.json.
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

import yaml

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "images"
SETS = {"mushrooms": SHARED / "mushrooms_4species_256px", "flowers": SHARED / "flowers_128px"}
WORK = HERE / "work" / "head_sweep"
RESULTS = HERE / "results" / "head_sweep.json"
GRID = {"train.optimizer.learning_rate": [0.001, 0.003, 0.01, 0.03],
        "train.model.dropout": [0.0, 0.2, 0.5, 0.7, 0.8]}  # 20 points
COMMON = {"dataset": {"image_size": 128, "batch_size": 32},
          "model": {"base": "EfficientNetLite0", "weights": "imagenet", "freeze": "head_only"},
          "fit": {"epochs": 8, "patience": 8}, "evaluate": True}


def _manifest(name: str) -> Path:
    made = HERE / "work" / "real_photos" / name / "import"
    if (made / "manifest.h5").exists():
        return made
    out = WORK / name / "import"
    if not (out / "manifest.h5").exists():
        subprocess.run([sys.executable, "-m", "fungilib.cli", "import-folder", str(SETS[name]), "--out", str(out),
                        "--set", "seed=0"], check=True, capture_output=True)
    return out


def _sweep(way: str, name: str, manifest: Path, points: int, workers: int, cold: bool,
           views: int = 0) -> tuple[dict, float]:
    grid = dict(GRID)
    if points < 20:
        grid["train.model.dropout"] = GRID["train.model.dropout"][: max(1, points // 4)]
    sweep = {"name": f"head-{way}-{name}" + (f"-w{workers}" if workers > 1 else "") + (f"-v{views}" if views else ""),
             "manifest": str(manifest),
             "pipeline": ["train"] if way == "a" else ["embed", "train"],
             "base": {"train": COMMON, **({"embed": {"image_size": 128, "base": "EfficientNetLite0", "views": views}}
                                          if way == "b" else {})},
             "search": {"grid": grid}}
    path = WORK / f"{sweep['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep))
    shutil.rmtree(WORK / "runs" / sweep["name"], ignore_errors=True)  # from nothing: the embedding is timed too
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", "sweep", str(path), "--runs-root",
                           str(WORK / "runs"), "--workers", str(workers)], capture_output=True, text=True,
                          env={**os.environ, "FUNGILIB_WARM_KERNELS": "0" if cold else "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep {way} failed:\n{done.stderr[-3000:]}")
    return sweep, seconds


def _runs(sweep: dict) -> list[dict]:
    rows = []
    root = WORK / "runs" / sweep["name"]
    for folder in sorted(p for p in root.iterdir() if (p / "output" / "metrics.json").exists()):
        metrics = json.loads((folder / "output" / "metrics.json").read_text())
        summary = json.loads((folder / "output" / "train_summary.json").read_text())
        status = json.loads((folder / "status.json").read_text())
        params = yaml.safe_load((folder / "output" / "params.yaml").read_text())
        rows.append({"run": folder.name, "learning_rate": params["optimizer"]["learning_rate"],
                     "dropout": params["model"]["dropout"], "val_top1": metrics["val_top1"], "top1": metrics["top1"],
                     "fit_seconds": summary["seconds"], "run_seconds": status.get("duration_s"),
                     "kernel": status.get("kernel", "cold")})
    return rows


def _embed_seconds(sweep: dict) -> float:
    stages = WORK / "runs" / sweep["name"] / "stages"
    return sum(json.loads((s / "status.json").read_text()).get("duration_s", 0) for s in stages.glob("embed-*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="mushrooms", choices=sorted(SETS))
    parser.add_argument("--only", default="", choices=["", "a", "b"])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="every kernel started afresh (no warm zygote)")
    parser.add_argument("--views", type=int, default=0, help="(b) augmented views per training photo, as (a)'s "
                        "augmentation sees them; results under b_views<K>")
    args = parser.parse_args()
    if not SETS[args.set].is_dir():
        sys.exit(f"{SETS[args.set]} is absent: nothing to measure")
    manifest = _manifest(args.set)
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "head_sweep", "sets": {}}
    result.update(date=str(date.today()), machine=f"{platform.machine()}, 2 cores, CPU TensorFlow", grid=GRID,
                  common=COMMON)
    entry = result["sets"].setdefault(args.set, {})
    for way in ("a", "b"):
        if args.only and way != args.only:
            continue
        sweep, seconds = _sweep(way, args.set, manifest, args.points, args.workers, args.cold,
                                args.views if way == "b" else 0)
        runs = _runs(sweep)
        best = max(runs, key=lambda r: r["val_top1"])
        key = (way + (f"_workers{args.workers}" if args.workers > 1 else "") + ("_cold" if args.cold else "")
               + (f"_views{args.views}" if way == "b" and args.views else ""))
        entry[key] = {"workers": args.workers, "kernels": sorted({r["kernel"] for r in runs}),
                      "how": "full training runs, frozen base" if way == "a" else "head runs on stored embeddings",
                      "points": len(runs), "wall_seconds": round(seconds, 1),
                      "embed_seconds": round(_embed_seconds(sweep), 1) if way == "b" else 0.0,
                      "mean_run_seconds": round(sum(r["run_seconds"] or 0 for r in runs) / len(runs), 1),
                      "mean_fit_seconds": round(sum(r["fit_seconds"] for r in runs) / len(runs), 2),
                      "best_val_top1": best["val_top1"], "test_top1_of_pick": best["top1"],
                      "pick": {k: best[k] for k in ("learning_rate", "dropout")}, "runs": runs}
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{args.set} ({key}) {entry[key]['how']}: {len(runs)} runs in {seconds:.0f} s; best val top-1 "
              f"{best['val_top1']:.3f} (test {best['top1']:.3f}) at {entry[key]['pick']}", flush=True)
    if "a" in entry and "b" in entry:
        a, b = entry["a"], entry["b"]
        if "b_workers2" in entry:  # each way at the worker count that suits it: the full runs use both cores alone
            entry["speed_up_end_to_end_b_workers2"] = round(a["wall_seconds"] / entry["b_workers2"]["wall_seconds"], 1)
        entry["speed_up_end_to_end"] = round(a["wall_seconds"] / b["wall_seconds"], 1)
        entry["speed_up_per_run"] = round(a["mean_run_seconds"] / b["mean_run_seconds"], 1)
        entry["speed_up_per_fit"] = round(a["mean_fit_seconds"] / b["mean_fit_seconds"], 1)
        entry["best_val_top1_gap"] = round(abs(a["best_val_top1"] - b["best_val_top1"]), 4)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k.startswith(("speed", "best"))}, indent=2))


if __name__ == "__main__":
    main()
