"""The class balances on real photos: one head run per `dataset.balance` (none, class_weights, sampling, smote) on the
stored embeddings of the four real mushroom species (../shared/data/images/mushrooms_4species_256px: 554 / 485 /
331 / 330 photos, 1.7 : 1 — a mild imbalance, not a long tail), with the head sweep's best point; each run's
validation and test top-1, macro-F1 and the recall of the smallest class. Reuses bench/head_sweep.py's embed stage
and manifest (run it first).

Usage: .venv/bin/python bench/balance_real.py
Writes bench/results/balance_real.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "work" / "head_sweep" / "runs" / "head-b-mushrooms"
MANIFEST = HERE / "work" / "real_photos" / "mushrooms" / "import"
WORK = HERE / "work" / "balance_real"
BALANCES = ("none", "class_weights", "sampling", "smote")
POINT = {"optimizer.learning_rate": 0.003, "model.dropout": 0.2}  # the head sweep's pick on validation


def main() -> None:
    stages = sorted(SWEEP.glob("stages/embed-*/output"))
    fallback = HERE / "work" / "head_sweep" / "mushrooms" / "import"
    manifest = MANIFEST if (MANIFEST / "manifest.h5").exists() else fallback
    if not stages or not (manifest / "manifest.h5").exists():
        sys.exit("run bench/head_sweep.py --only b first: its embed stage and manifest are reused here")
    rows = []
    for balance in BALANCES:
        out = WORK / balance
        settings = {"dataset.embeddings": stages[0], "dataset.image_size": 128, "dataset.balance": balance,
                    "model.base": "EfficientNetLite0", "model.weights": "imagenet", "model.freeze": "head_only",
                    "fit.epochs": 8, "fit.patience": 8, **POINT}
        args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        done = subprocess.run([sys.executable, "-m", "fungilib.cli", "train", "--manifest", str(manifest), "--out",
                               str(out), *args], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{balance}: {done.stderr[-2000:]}")
        metrics = json.loads((out / "metrics.json").read_text())
        per_class = pd.read_csv(out / "per_class.csv")
        smallest = per_class.sort_values("train_images").iloc[0]
        rows.append({"balance": balance, "val_top1": metrics["val_top1"], "val_macro_f1": metrics["val_macro_f1"],
                     "top1": metrics["top1"], "macro_f1": metrics["macro_f1"], "smallest_class": smallest["species"],
                     "smallest_train_photos": int(smallest["train_images"]),
                     "smallest_recall": float(smallest["recall"])})
    result = {"benchmark": "balance_real", "date": str(date.today()),
              "data": "real photos: four mushroom species (../shared/data/images/mushrooms_4species_256px)",
              "embeddings": str(stages[0]), "point": POINT, "rows": rows}
    (HERE / "results" / "balance_real.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| balance | val top-1 | val macro-F1 | test top-1 | test macro-F1 | recall of the smallest class |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['balance']} | {r['val_top1']:.3f} | {r['val_macro_f1']:.3f} | {r['top1']:.3f} | "
              f"{r['macro_f1']:.3f} | {r['smallest_recall']:.3f} ({r['smallest_class']}, "
              f"{r['smallest_train_photos']} training photos) |")


if __name__ == "__main__":
    main()
