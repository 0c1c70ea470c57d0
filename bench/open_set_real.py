""""Not a species this model knows" on real photos: every open-set score — from the softmax (msp, neg_entropy),
from the logits (max_logit, neg_energy) and from the model's features (knn, mahalanobis, and knn+max_logit)
— fitted and chosen on validation photos only, reported on test photos.

Settings (real photos of ../shared/data/images; models trained by `fungilib train`, EfficientNet-Lite0 from its
packaged ImageNet weights, 128 px):

- far: the four-species mushroom model shown real flowers, and the five-class flower model shown real mushrooms
  (the runs of bench/real_photos.py: two_phase, 128 px; run it first);
- near: the four mushrooms with one species of a look-alike pair held out of training (`import-folder --set
  holdout_species=[…]`), each of the four in turn, head-only and (with --finetune) two_phase.

For each score: the validation AUROC (what chooses), the test AUROC, and at the threshold that keeps 95 % of the
right answers on known validation photos: the share of unknown test photos still named as a species (passing the
gate with a top probability at or above the species threshold), and the share of known test photos turned away.

Usage: .venv/bin/python bench/open_set_real.py [--near] [--far] [--finetune] [--cap 300]
Writes bench/results/open_set_real.json (settings already measured are kept: rerun to add the missing ones).
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

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fungilib.artifacts.dataset import load_manifest  # noqa: E402
from fungilib.artifacts.trained_run import TrainedRun  # noqa: E402
from fungilib.feature_scores import FEATURE_SCORES, banks_within_budget, fit_feature_scoring  # noqa: E402
from fungilib.metrics import softmax  # noqa: E402
from fungilib.model_outputs import logits_and_embeddings, with_embeddings  # noqa: E402
from fungilib.open_set import SCORES, auroc, fit_threshold, scores  # noqa: E402
from fungilib.rollup import SPECIES_THRESHOLD  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data" / "images"
MUSHROOMS, FLOWERS = SHARED / "mushrooms_4species_256px", SHARED / "flowers_128px"
REAL = HERE / "work" / "real_photos"
WORK = HERE / "work" / "open_set_real"
RESULTS = HERE / "results" / "open_set_real.json"
KEEP = 0.95
ALL_SCORES = (*SCORES, *FEATURE_SCORES)
RECIPES = {
    "head": ["model.base=EfficientNetLite0", "model.weights=imagenet", "model.freeze=head_only",
             "dataset.image_size=128", "fit.epochs=8", "fit.patience=4", "optimizer.learning_rate=0.003"],
    "two_phase": ["model.base=EfficientNetLite0", "model.weights=imagenet", "model.freeze=two_phase",
                  "dataset.image_size=128", "fit.epochs=10", "fit.patience=4", "schedule.head_epochs=3",
                  "optimizer.learning_rate=0.003", "schedule.finetune_lr_factor=0.1"],
}


def _cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fungilib {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")


def _sample(frame: pd.DataFrame, cap: int, seed: int = 0) -> pd.DataFrame:
    return frame.sample(n=min(cap, len(frame)), random_state=seed).sort_index() if cap else frame


def _outputs(model, frame: pd.DataFrame, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    return logits_and_embeddings(model, frame, n, size, batch_size=64)


def measure(run: Path, manifest: Path, val_unknown: pd.DataFrame, test_unknown: pd.DataFrame,
            train_cap: int = 200) -> dict:
    """Every score of ``run`` against the unknown photos: chosen and thresholded on validation, reported on test."""
    model, labels, prep = TrainedRun(run).load()
    model = with_embeddings(model)
    temperature = float(TrainedRun(run).metrics().get("temperature", 1.0))
    frame, _ = load_manifest(manifest)
    n, size = len(labels), int(prep["input_size"])
    train = pd.concat([g.head(train_cap) for _, g in frame[frame["split"] == "train"].groupby("label")])
    val, test = frame[frame["split"] == "val"], frame[frame["split"] == "test"]
    started = time.perf_counter()
    _, train_emb = _outputs(model, train, n, size)
    val_logits, val_emb = _outputs(model, val, n, size)
    test_logits, test_emb = _outputs(model, test, n, size)
    vu_logits, vu_emb = _outputs(model, val_unknown, n, size)
    tu_logits, tu_emb = _outputs(model, test_unknown, n, size)
    forward_s = time.perf_counter() - started
    features = fit_feature_scoring(train_emb, train["label"].to_numpy(), n, val_emb, vu_emb, val_logits)

    def all_scores(logits: np.ndarray, emb: np.ndarray) -> dict[str, np.ndarray]:
        return {**scores(logits, temperature), **features.scores(emb, logits)}

    val_known, val_unknown_s = all_scores(val_logits, val_emb), all_scores(vu_logits, vu_emb)
    test_known, test_unknown_s = all_scores(test_logits, test_emb), all_scores(tu_logits, tu_emb)
    val_right = val_logits.argmax(axis=1) == val["label"].to_numpy()
    test_named_ok = softmax(tu_logits, temperature).max(axis=1) >= SPECIES_THRESHOLD
    rows = {}
    for name in ALL_SCORES:
        threshold = fit_threshold(val_known[name], val_right, KEEP)
        rows[name] = {"val_auroc": round(auroc(val_known[name], val_unknown_s[name]) or 0.0, 4),
                      "test_auroc": round(auroc(test_known[name], test_unknown_s[name]) or 0.0, 4),
                      "unknown_named": round(float(((test_unknown_s[name] >= threshold) & test_named_ok).mean()), 4),
                      "unknown_passing_gate": round(float((test_unknown_s[name] >= threshold).mean()), 4),
                      "known_turned_away": round(float((test_known[name] < threshold).mean()), 4)}
    chosen = max(ALL_SCORES, key=lambda s: rows[s]["val_auroc"])
    return {"run": str(run.relative_to(HERE.parent)), "test_top1": round(float(
                (test_logits.argmax(axis=1) == test["label"].to_numpy()).mean()), 4),
            "known": {"val": len(val), "test": len(test), "train_for_stats": len(train)},
            "unknown": {"val": len(val_unknown), "test": len(test_unknown)},
            "unknown_named_without_gate": round(float(test_named_ok.mean()), 4),
            "chosen_on_validation": chosen, "feature_settings": features.settings, "scores": rows,
            "embedding_dim": int(train_emb.shape[1]),
            "knn_banks_within_budget_at_2451_classes": banks_within_budget(2451, int(train_emb.shape[1])),
            "forward_seconds": round(forward_s, 1)}


def _split_photos(manifest: Path, cap: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame, _ = load_manifest(manifest)
    return (_sample(frame[frame["split"] == "val"], cap).assign(label=0),
            _sample(frame[frame["split"] == "test"], cap).assign(label=0))


def far(result: dict, cap: int) -> None:
    pairs = {"mushroom model shown flowers": ("mushrooms", "flowers"),
             "flower model shown mushrooms": ("flowers", "mushrooms")}
    for key, (known, unknown) in pairs.items():
        run = REAL / known / "EfficientNetLite0-two_phase-128"
        if key in result["far"] or not (run / "metrics.json").exists():
            print(f"{key}: {'measured' if key in result['far'] else f'no run {run} (bench/real_photos.py first)'}")
            continue
        val_u, test_u = _split_photos(REAL / unknown / "import", cap)
        result["far"][key] = measure(run, REAL / known / "import", val_u, test_u)
        _save(result)
        _print(key, result["far"][key])


def near(result: dict, recipes: list[str]) -> None:
    for species in sorted(p.name for p in MUSHROOMS.iterdir() if p.is_dir()):
        manifest = WORK / f"without-{species}" / "import"
        if not (manifest / "manifest.h5").exists():
            _cli("import-folder", str(MUSHROOMS), "--out", str(manifest), "--set", "seed=0",
                 "--set", f"holdout_species=[{species}]")
        frame, _ = load_manifest(manifest)
        for recipe in recipes:
            key = f"{species} held out, {recipe}"
            if key in result["near"]:
                continue
            run = WORK / f"without-{species}" / recipe
            sets = [x for s in RECIPES[recipe] for x in ("--set", s)]
            started = time.perf_counter()
            _cli("train", "--manifest", str(manifest), "--out", str(run), *sets)
            seconds = time.perf_counter() - started
            row = measure(run, manifest, frame[frame["split"] == "val_unknown"].assign(label=0),
                          frame[frame["split"] == "test_unknown"].assign(label=0))
            result["near"][key] = {**row, "train_seconds": round(seconds, 1)}
            _save(result)
            _print(key, result["near"][key])


def _save(result: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


def _print(key: str, row: dict) -> None:
    print(f"\n{key} (test top-1 {row['test_top1']:.3f}; chosen on validation: {row['chosen_on_validation']}; "
          f"unknown named without a gate {row['unknown_named_without_gate']:.0%})")
    print("| score | val AUROC | test AUROC | unknown named | known turned away |")
    print("|---|---|---|---|---|")
    for name, s in row["scores"].items():
        print(f"| {name} | {s['val_auroc']:.3f} | {s['test_auroc']:.3f} | {s['unknown_named']:.1%} | "
              f"{s['known_turned_away']:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--far", action="store_true")
    parser.add_argument("--near", action="store_true")
    parser.add_argument("--finetune", action="store_true", help="near: also two_phase (4 × ~7 min on 2 cores)")
    parser.add_argument("--cap", type=int, default=300, help="far: unknown photos per split")
    args = parser.parse_args()
    if not (MUSHROOMS.is_dir() and FLOWERS.is_dir()):
        sys.exit(f"{SHARED} is absent: nothing to measure")
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "open_set_real", "far": {},
                                                                       "near": {}}
    result.update(date=str(date.today()), machine=f"{platform.machine()}, 2 cores, CPU TensorFlow", keep=KEEP,
                  species_threshold=SPECIES_THRESHOLD)
    if args.far or not args.near:
        far(result, args.cap)
    if args.near or not args.far:
        near(result, ["head", *(["two_phase"] if args.finetune else [])])


if __name__ == "__main__":
    main()
