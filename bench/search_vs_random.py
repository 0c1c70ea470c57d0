"""Random search against Optuna TPE with median pruning, on the same budget: the best validation top-1 each
reaches, the test top-1 of the run each would pick (by validation only), and the wall time (pruning should save
some). Runs real sweeps of the training notebook on the demo's manifest.

Usage: .venv/bin/python bench/search_vs_random.py [--trials 12] [--epochs 6] [--seeds 0 1 2] [--image-size 64]
(after `make demo`; each trial is a papermill run of notebooks/04_train.ipynb)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from datetime import date
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
SPACE = {"train.optimizer.learning_rate": {"loguniform": [0.0003, 0.03]},
         "train.regularization.label_smoothing": {"uniform": [0.0, 0.3]},
         "train.model.dropout": {"choice": [0.0, 0.2, 0.4]}}


def best_validation(runs: Path, sweep: str) -> tuple[float, Path]:
    """The best validation top-1 over every epoch of every run, and the run that reached it."""
    best, where = -1.0, Path()
    for history in sorted((runs / sweep).glob("*/output/history.csv")):
        value = float(pd.read_csv(history)["val_accuracy"].max())
        if value > best:
            best, where = value, history.parent
    return best, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("runs/demo/clean"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from fungilib.evaluate import EvaluateParams, evaluate_run
    from fungilib.sweep import run_sweep

    work = HERE / "work" / "search-vs-random"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {"train": {"dataset": {"image_size": args.image_size, "batch_size": 32},
                      "fit": {"epochs": args.epochs, "patience": args.epochs}, "evaluate": False}}
    rows = []
    for seed in args.seeds:
        searches = {
            "random": {"random": {"n": args.trials, "seed": seed, "params": SPACE}},
            "optuna-tpe-median": {"optuna": {"n_trials": args.trials, "seed": seed, "sampler": "tpe",
                                             "pruner": "median", "metric": "val_top1", "params": SPACE}},
        }
        for method, search in searches.items():
            name = f"{method}-{seed}"
            sweep_file = work / f"{name}.yaml"
            sweep_file.write_text(yaml.safe_dump({"name": name, "manifest": str(args.manifest.resolve()),
                                                  "pipeline": ["train"], "base": base, "search": search}))
            start = time.perf_counter()
            run_sweep(sweep_file, work / "runs", workers=args.workers)
            seconds = time.perf_counter() - start
            best, run_dir = best_validation(work / "runs", name)
            test = evaluate_run(EvaluateParams(run=run_dir)).metrics["top1"]  # the pick's test score, after choosing
            epochs = sum(len(pd.read_csv(h)) for h in (work / "runs" / name).glob("*/output/history.csv"))
            rows.append({"method": method, "seed": seed, "best_val_top1": round(best, 4), "test_top1_of_pick": test,
                         "epochs_trained": epochs, "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    summary = []
    for method in ("random", "optuna-tpe-median"):
        mine = [r for r in rows if r["method"] == method]
        summary.append({"method": method, "best_val_top1": statistics.median(r["best_val_top1"] for r in mine),
                        "test_top1_of_pick": statistics.median(r["test_top1_of_pick"] for r in mine),
                        "epochs_trained": statistics.median(r["epochs_trained"] for r in mine),
                        "seconds": statistics.median(r["seconds"] for r in mine)})
    result = {"benchmark": "search_vs_random", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "trials": args.trials, "epochs": args.epochs, "image_size": args.image_size, "seeds": args.seeds,
              "rows": rows, "median": summary}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "search_vs_random.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.trials} trials × ≤ {args.epochs} epochs, {args.image_size} px, seeds {args.seeds} (medians)")
    print("| method | best val top-1 | test top-1 of the pick | epochs trained | wall s |\n|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['method']} | {s['best_val_top1']:.3f} | {s['test_top1_of_pick']:.3f} | {s['epochs_trained']} | "
              f"{s['seconds']} |")


if __name__ == "__main__":
    main()
