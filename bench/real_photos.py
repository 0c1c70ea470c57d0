"""Real photos from real pretrained bases: from scratch against each packaged ImageNet base, head only against
fine-tuning (two_phase), at two input sizes, on the real four-species mushrooms (two look-alike pairs) and the real
flowers of ../shared/data/images. Each run is the real `fungilib` command in its own process (import-folder once
per set, then train + evaluate), timed, with its peak RSS; the split is import-folder's, seeded (seed 0): model
choice and early stopping see the validation split only, the table reports the test split.

Usage: .venv/bin/python bench/real_photos.py [--sets mushrooms,flowers] [--only SUBSTRING] [--epochs-scale 1.0]
Writes bench/results/real_photos.json (runs already measured are kept and skipped: rerun to add the missing ones).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "images"
SETS = {"mushrooms": SHARED / "mushrooms_4species_256px", "flowers": SHARED / "flowers_128px"}
PAIRS = {"mushrooms": [("Amanita muscaria", "Amanita vaginata"), ("Boletus edulis", "Boletus erythropus")]}
RESULTS = HERE / "results" / "real_photos.json"
WORK = HERE / "work" / "real_photos"

COMMON = {"augmentation.enabled": True, "fit.patience": 4, "dataset.batch_size": 32}
RECIPES = {  # name → train parameters (the recipe params/recipes/real-photos.yaml is the best of these)
    "scratch MobileNetV3Small 128": {"model.base": "MobileNetV3Small", "model.weights": "none",
                                     "dataset.image_size": 128, "fit.epochs": 15, "optimizer.learning_rate": 0.002},
    **{f"{base} {mode} {size}": {
        "model.base": base, "model.weights": "imagenet", "dataset.image_size": size,
        **({"model.freeze": "head_only", "fit.epochs": 8, "optimizer.learning_rate": 0.003} if mode == "head"
           else {"model.freeze": "two_phase", "fit.epochs": 10, "schedule.head_epochs": 3,
                 "optimizer.learning_rate": 0.003, "schedule.finetune_lr_factor": 0.1})}
       for base in ("EfficientNetLite0", "MobileNetV2Torchvision") for mode in ("head", "two_phase")
       for size in (128, 224)},
    # longer fine-tuning at a higher rate: for photos far from ImageNet's look (the flowers upscaled from ~40 px)
    "EfficientNetLite0 two_phase long 128": {
        "model.base": "EfficientNetLite0", "model.weights": "imagenet", "dataset.image_size": 128,
        "model.freeze": "two_phase", "fit.epochs": 24, "fit.patience": 6, "schedule.head_epochs": 3,
        "optimizer.learning_rate": 0.003, "schedule.finetune_lr_factor": 0.3},
    # gentler crops: a 40 px flower cropped to 35 % of its area keeps little of it
    "EfficientNetLite0 two_phase gentle-crop 128": {
        "model.base": "EfficientNetLite0", "model.weights": "imagenet", "dataset.image_size": 128,
        "model.freeze": "two_phase", "fit.epochs": 12, "schedule.head_epochs": 3, "optimizer.learning_rate": 0.003,
        "schedule.finetune_lr_factor": 0.1, "augmentation.min_crop": 0.7, "augmentation.color_jitter": 0.1},
}


def _label(text: str) -> str:
    return text.replace("_", " ").capitalize()


def timed(args: list[str]) -> tuple[float, float, str]:
    """Run ``fungilib ARGS``: (wall seconds, peak RSS in MB, stderr's tail); exit on failure."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "fungilib.cli", *args],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"fungilib {' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    rss_kb = int(done.stderr.strip().splitlines()[-1])
    return seconds, rss_kb / 1024, done.stderr


def pair_confusion(run: Path, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """The share of each look-alike pair's test photos answered as the other species of the pair."""
    import pandas as pd

    predictions = pd.read_csv(run / "predictions.csv")
    labels = pd.read_csv(run / "labels.csv")
    name = dict(zip(labels["label"], labels["species"].map(_label), strict=True))
    truth, guess = predictions["label"].map(name), predictions["predicted"].map(name)
    out = {}
    for a, b in pairs:
        rows = truth.isin([a, b])
        out[f"{a} / {b}"] = round(float(((truth == a) & (guess == b) | (truth == b) & (guess == a))[rows].mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="mushrooms,flowers")
    parser.add_argument("--only", default="", help="run only the recipes whose name contains this")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="scale every recipe's epochs (a quick look)")
    args = parser.parse_args()
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "real_photos", "runs": {}}
    result.update(date=str(date.today()), machine=f"{platform.machine()}, 2 cores, CPU TensorFlow")
    for set_name in args.sets.split(","):
        source = SETS[set_name]
        if not source.is_dir():
            print(f"{source} is absent: skipped")
            continue
        manifest = WORK / set_name / "import"
        if not (manifest / "manifest.h5").exists():
            timed(["import-folder", str(source), "--out", str(manifest), "--set", "seed=0"])
        report = json.loads((manifest / "import_report.json").read_text())
        result.setdefault("sets", {})[set_name] = {"source": str(source.relative_to(SHARED.parent.parent)),
                                                   "splits": report.get("splits"), "dropped": report.get("dropped")}
        for recipe, values in RECIPES.items():
            key = f"{set_name}: {recipe}"
            if args.only not in recipe or key in result["runs"]:
                continue
            values = {**COMMON, **values}
            if args.epochs_scale != 1.0:
                values["fit.epochs"] = max(2, round(values["fit.epochs"] * args.epochs_scale))
                if "schedule.head_epochs" in values:
                    head = min(values["schedule.head_epochs"], values["fit.epochs"] - 1)
                    values["schedule.head_epochs"] = max(1, head)
            out = WORK / set_name / recipe.replace(" ", "-")
            sets = [x for k, v in values.items() for x in ("--set", f"{k}={json.dumps(v)}")]
            seconds, rss, _ = timed(["train", "--manifest", str(manifest), "--out", str(out), *sets])
            metrics = json.loads((out / "metrics.json").read_text())
            summary = json.loads((out / "train_summary.json").read_text())
            row = {"set": set_name, "recipe": recipe, "params": values, "seconds": round(seconds, 1),
                   "peak_rss_mb": round(rss), "epochs_run": summary["epochs_run"],
                   **{k: round(metrics[k], 4) for k in ("val_top1", "val_macro_f1", "top1", "top3", "macro_f1",
                                                        "ece", "ece_after_temperature") if k in metrics},
                   "test_images": metrics["images"]}
            if set_name in PAIRS:
                row["pair_confusion"] = pair_confusion(out, PAIRS[set_name])
            result["runs"][key] = row
            RESULTS.parent.mkdir(exist_ok=True)
            RESULTS.write_text(json.dumps(result, indent=2) + "\n")
            print(f"{key}: val top-1 {row['val_top1']:.3f}, test top-1 {row['top1']:.3f}, {seconds:.0f} s", flush=True)
    print("\n| set | recipe | val top-1 | test top-1 | top-3 | macro-F1 | ECE (T) | look-alike confusion | s "
          "| RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in result["runs"].values():
        pairs = "; ".join(f"{k} {v:.0%}" for k, v in row.get("pair_confusion", {}).items()) or "—"
        print(f"| {row['set']} | {row['recipe']} | {row['val_top1']:.3f} | {row['top1']:.3f} | {row['top3']:.3f} | "
              f"{row['macro_f1']:.3f} | {row.get('ece_after_temperature', float('nan')):.3f} | {pairs} | "
              f"{row['seconds']:.0f} | {row['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
