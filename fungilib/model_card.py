"""The model card (MODEL_CARD.md) and what the page's *About this model* view shows, from a run's folder."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from fungilib import __version__
from fungilib.artifacts.dataset import load_manifest, manifest_file
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.pretrained_bases import CHECKPOINTS, card_lines

HISTORY_COLUMNS = ("loss", "val_loss", "accuracy", "val_accuracy")


def about_model(run_dir: Path, card: str) -> dict[str, Any]:
    """What the page's *About this model* view shows: the model card, the training curves (history.csv) and each
    class's test F1 with its number of test photos (per_class.csv), by label index."""
    import pandas as pd

    run = TrainedRun(run_dir)
    about: dict[str, Any] = {"card": card, "history": [], "per_class": {}}
    if run.history_file.exists():
        history = run.history()
        about["history"] = [{"epoch": int(row["epoch"]) + 1, **{k: round(float(row[k]), 4) for k in HISTORY_COLUMNS
                                                                 if k in row and pd.notna(row[k])}}
                            for _, row in history.iterrows()]
    table = run.per_class()
    if table is not None:
        about["per_class"] = {str(int(r["label"])): {"f1": round(float(r["f1"]), 3), "test_photos": int(r["support"])}
                              for _, r in table.iterrows()}
    return about


def _open_set_lines(metrics: dict) -> list[str]:
    if "open_set_auroc" not in metrics:
        return ["- open set: not fitted (no species were held out of training: clean.holdout_classes); every photo "
                "gets the nearest known species"]
    measured = (f"test AUROC known vs never-seen species {metrics['open_set_auroc']:.3f}; never-seen species named "
                f"{metrics['unknown_named_before']:.0%} → {metrics['unknown_named']:.0%}; known photos turned away "
                f"{metrics['known_turned_away']:.0%}")
    if "obs_open_set_auroc" in metrics:  # the score averaged over each find's photos, as predict and the page do
        measured += (f"; per find ({metrics['unknown_test_observations']} finds of never-seen species): AUROC "
                     f"{metrics['obs_open_set_auroc']:.3f}" + (
                         f", never-seen finds turned away {metrics['obs_unknown_turned_away']:.0%}, known finds "
                         f"{metrics['obs_known_turned_away']:.0%}" if "obs_unknown_turned_away" in metrics else ""))
    if not isinstance(metrics.get("open_set_threshold"), float):
        return [f"- open set: not deployed, the score does not separate known from never-seen species ({measured})"]
    score = metrics["open_set_score"]
    what = {"knn": "cosine similarity to the nearest training photos' features (computed inside the model)",
            "knn+max_logit": "that cosine similarity mixed with the largest logit (computed inside the model)",
            "msp": "top probability", "neg_entropy": "minus the entropy of the probabilities"}.get(score, score)
    others = ", ".join(f"{name} {metrics[f'open_set_auroc_{name}']:.3f}" for name in
                       ("msp", "neg_entropy", "max_logit", "neg_energy", "knn", "knn+max_logit", "mahalanobis")
                       if f"open_set_auroc_{name}" in metrics and name != score)
    return [f"- open set: photos whose {score} ({what}) is under {metrics['open_set_threshold']:.3g} are answered "
            f"\"not a species this model knows\" (score chosen and threshold fitted on validation, validation AUROC "
            f"{metrics.get('open_set_val_auroc', float('nan')):.3f}); {measured}; test AUROC of the other scores: "
            f"{others}"]


def base_origin(base: str, weights: str) -> list[str]:
    """Where a pretrained base's weights come from and under what terms (empty from scratch or for other bases)."""
    return card_lines(base) if base in CHECKPOINTS and weights == "imagenet" else []


def model_card(run_dir: Path, labels: Any, size: int, parity: dict, sizes: dict[str, int]) -> str:
    run = TrainedRun(run_dir)
    metrics, summary = run.metrics(), run.summary()
    params = summary.params
    lines = [
        f"# Model card — {run_dir.name}", "",
        f"- fungilib {__version__}, exported {date.today()}",
        f"- base {params['model']['base']}, weights {params['model']['weights']}, freeze {params['model']['freeze']}, "
        f"input {size} px RGB in [0, 255] (scaling inside the model), {summary.epochs_run} epochs",
        *base_origin(params["model"]["base"], params["model"]["weights"]),
        f"- {len(labels)} classes; {summary.train_images} training and {summary.val_images} validation images",
        f"- output: softmax of logits / {float(metrics.get('temperature', 1.0)):.3g} (temperature fitted on the "
        "validation split, so probabilities are calibrated for the page's threshold)",
        "- test split: " + (", ".join(f"{k} {metrics[k]:.3f}" for k in ("top1", "top3", "macro_f1", "ece")
                                       if k in metrics) or "not evaluated"),
        *([f"- test split with the place-and-season prior (place_prior.npz, {metrics['prior_bytes'] / 1e3:.0f} kB, "
           f"weight {metrics['prior_weight']:.1f} fitted on validation): "
           + ", ".join(f"{k} {metrics[k + '_with_prior']:.3f}" for k in ("top1", "top3", "macro_f1"))]
          if "top1_with_prior" in metrics else []),
        *([f"- per observation ({metrics['observations']} finds of {metrics['images']} test photos; photos of one "
           f"find combined by {metrics['observation_rule']}, the rule chosen on validation): "
           + ", ".join(f"{k} {metrics['obs_' + k]:.3f}" for k in ("top1", "top3", "macro_f1"))
           + ("; with the prior: " + ", ".join(f"{k} {metrics['obs_' + k + '_with_prior']:.3f}"
                                              for k in ("top1", "top3", "macro_f1"))
              if "obs_top1_with_prior" in metrics else "")]
          if "obs_top1" in metrics else []),
        *_open_set_lines(metrics),
        "- formats and sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()),
        f"- parity vs Keras on {int(parity['images']['count'])} test images: " + "; ".join(
            f"{k} agreement {v['top1_agreement']:.0%}, max |Δp| {v['max_abs_diff']:.1e}"
            for k, v in parity.items() if k not in ("images", "composed_head") and "top1" not in v),
        *([f"- a head trained on stored embeddings, composed with its base for export: on {c['photos']:.0f} validation "
           f"photos the same species as the head on their stored embeddings ({c['top1_agreement']:.0%}), max |Δ logit| "
           f"{c['max_abs_logit_diff']:.1e}"] if (c := parity.get("composed_head")) else []),
        *([f"- the page's model is int8 (weights and activations), checked on {web['images']:.0f} test photos: top-1 "
           f"{web['top1']:.3f} (Keras {web['top1_keras']:.3f}), the same species as Keras on "
           f"{web['top1_agreement']:.1%}, "
           f"max |Δp| {web['max_abs_diff']:.2f}"] if "top1" in (web := parity.get("tflite_web", {})) else []),
    ]
    manifest_dir = summary.manifest
    try:
        manifest, _ = load_manifest(manifest_dir)
        if "license" in manifest:
            counts = manifest["license"].astype(str).value_counts()
            lines.append("- image licences (training data, images): "
                         + ", ".join(f"{name or 'unstated'} {n}" for name, n in counts.items()))
        if "rightsHolder" in manifest:
            lines.append(f"- {manifest['rightsHolder'].nunique()} rights holders; per-image attribution in "
                         f"{manifest_file(manifest_dir)}")
    except FungilibError:
        lines.append(f"- data: the manifest {manifest_dir} is no longer readable; attribution not counted")
    lines += ["- data source: GBIF occurrence media (Darwin Core Archive) through fungilib ingest → download → clean",
              "- parameters: " + json.dumps(params, default=str)]
    return "\n".join(lines) + "\n"
