"""Stage 5, evaluate: a trained run on the test split (never used for model selection) → metrics.json and plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.confusion_order import lookalike_order
from fungilib.contact_sheets import confidently_wrong_sheet
from fungilib.errors import FungilibError
from fungilib.feature_scores import FEATURE_SCORES, banks_within_budget, fit_feature_scoring
from fungilib.find_metrics import choose_rule, observation_metrics
from fungilib.find_metrics import combine as combine_photos
from fungilib.metrics import (
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    per_class_table,
    rollup_accuracy,
    softmax,
    top_confusions,
    top_k_accuracy,
)
from fungilib.model_outputs import Outputs, photo_outputs, stored_outputs
from fungilib.open_set import MIN_AUROC, auroc, evaluate_open_set
from fungilib.place_prior import PlacePrior, combine, fit_weight, knows_place, place_and_season
from fungilib.plotting import plt, save_figure
from fungilib.rollup import SPECIES_THRESHOLD
from fungilib.toxicity import class_statuses, load_toxicity, poisonous_as_edible

FULL_MATRIX_MAX_CLASSES = 60


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    confusions: pd.DataFrame
    plots: dict[str, Path]


def classification_metrics(logits: np.ndarray, labels: np.ndarray, label_table: pd.DataFrame,
                           temperature: float = 1.0) -> dict[str, float]:
    probs = softmax(logits, temperature)
    predicted = probs.argmax(axis=1)
    n = len(label_table)
    ece, _ = expected_calibration_error(probs, labels)
    ranks = {f"{rank}_top1": rollup_accuracy(probs, labels, label_table[rank].fillna("").to_numpy())
             for rank in ("genus", "family") if rank in label_table}
    return {
        "top1": top_k_accuracy(probs, labels, 1), "top3": top_k_accuracy(probs, labels, 3),
        "top5": top_k_accuracy(probs, labels, 5), "macro_f1": macro_f1(predicted, labels, n),
        **{name: value for name, value in ranks.items() if value is not None},  # only ranks the labels know
        "ece": ece,
        "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels],
                                                1e-12)))) if len(labels) else 0.0,
    }


VALIDATION_METRICS = ("top1", "top3", "macro_f1", "nll", "ece")


def validation_metrics(logits: np.ndarray, labels: np.ndarray, label_table: pd.DataFrame,
                       temperature: float) -> dict[str, float]:
    """``val_top1``, ``val_top3``, ``val_macro_f1``, ``val_nll``, ``val_ece`` (after the temperature) and the count."""
    scores = classification_metrics(logits, labels, label_table, temperature)
    return {**{f"val_{k}": scores[k] for k in VALIDATION_METRICS}, "val_images": len(labels)}


def _plots(cm: np.ndarray, names: list[str], confusions: pd.DataFrame, reliability: pd.DataFrame,
           per_class: pd.DataFrame, out: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    if len(names) <= FULL_MATRIX_MAX_CLASSES:
        order = lookalike_order(cm)  # species confused with each other side by side
        cm, names = cm[order][:, order], [names[i] for i in order]
        size = max(5, 0.35 * len(names) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(normalised, cmap="Greens", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if normalised[i, j] > 0.5 else "black")
        ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test split, row-normalised colour;\n"
               "species confused with each other side by side)")
        ax.grid(False)
    else:  # thousands of classes: the most frequent confusions as a chart instead of an unreadable matrix
        top = confusions.head(30).iloc[::-1]
        fig, ax = plt.subplots(figsize=(8, max(3, 0.3 * len(top))))
        ax.barh([f"{t} → {p}" for t, p in zip(top["true"], top["predicted"], strict=True)], top["count"])
        ax.set(xlabel="test images", title="Most frequent confusions (true → predicted)")
    plots["confusion"] = save_figure(fig, out / "confusion.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    if len(reliability):
        ax.bar(reliability["confidence"], reliability["accuracy"], width=1 / 15, alpha=0.6, edgecolor="k")
        ax.plot(reliability["confidence"], reliability["accuracy"], marker="o")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability (test split)")
    plots["reliability"] = save_figure(fig, out / "reliability.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(per_class["train_images"], per_class["recall"], s=22, label="accuracy (recall)")
    ax.scatter(per_class["train_images"], per_class["f1"], s=12, marker="x", label="F1")
    ax.set(xscale="log", xlabel="training images of the class (log)", ylabel="test score",
           title="Per-class accuracy against class size (the long tail)", ylim=(-0.05, 1.05))
    ax.legend(loc="lower right")
    plots["per_class_f1"] = save_figure(fig, out / "per_class_f1.png")
    plt.close(fig)
    return plots


@dataclass(kw_only=True)
class EvaluateParams:
    """Which run to evaluate, on which manifest and split."""

    run: Path
    manifest: Path | None = None  # default: the manifest the run was trained on
    split: Literal["train", "val", "test"] = "test"
    temperature_scaling: bool = True  # fit a softmax temperature on the validation split
    batch_size: int = 64
    toxicity: Path | None = None  # a CSV name,status (see fungilib.toxicity): adds the poisonous-confusion rate
    # "not a species this model knows" (with species held out at clean): keep this share of the right answers
    open_set_keep: float = 0.95
    open_set_min_auroc: float = MIN_AUROC  # a score separating worse than this on validation is not deployed

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FungilibError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.5 <= self.open_set_keep < 1:
            raise FungilibError(f"open_set_keep must lie in [0.5, 1), got {self.open_set_keep}")
        if not 0 <= self.open_set_min_auroc <= 1:
            raise FungilibError(f"open_set_min_auroc must lie in [0, 1], got {self.open_set_min_auroc}")


def _with_place_prior(frame: pd.DataFrame, rows: pd.DataFrame, probs: np.ndarray, val_probs: np.ndarray,
                      labels: pd.DataFrame, run_dir: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics of the evaluated ``rows`` with the place-and-season prior (built from training photos only, its
    weight fitted on the validation split), and those probabilities; ``place_prior.npz`` and ``.json`` into the
    run. Nothing (and None) when the manifest does not know where and when, or has no validation photos."""

    if not knows_place(frame) or not len(val_probs):
        return {}, None
    prior = PlacePrior.build(frame[frame["split"] == "train"], len(labels))
    val = frame[frame["split"] == "val"]
    weight, curve = fit_weight(np.log(val_probs), prior.log_prior(place_and_season(val)), val["label"].to_numpy())
    prior.weight = weight
    where = place_and_season(rows)
    combined = combine(np.log(probs), prior.log_prior(where), weight)
    with_prior = classification_metrics(np.log(np.maximum(combined, 1e-30)), rows["label"].to_numpy(), labels)
    data = prior.to_bytes()
    TrainedRun(run_dir).write_prior(data, {"weight": weight, "bytes": len(data), "cell_deg": prior.cell_deg,
                                       "region_deg": prior.region_deg, "validation_nll_by_weight": curve,
                                       "training_photos_dropped": prior.dropped, "test_photos_dropped": where.dropped})
    metrics = {"prior_weight": weight, "prior_bytes": len(data),
               **{f"{k}_with_prior": with_prior[k] for k in ("top1", "top3", "macro_f1") if k in with_prior}}
    return metrics, combined


STATS_PER_CLASS = 100  # training photos per class whose embeddings the feature scores are fitted on


def _open_set(outputs: Outputs, frame: pd.DataFrame, val_outputs: tuple[np.ndarray, np.ndarray],
              test_outputs: tuple[np.ndarray, np.ndarray], y: np.ndarray, temperature: float, run_dir: Path,
              keep: float, min_auroc: float) -> tuple[dict[str, Any], dict[str, Path]]:
    """Open-set metrics when the manifest holds photos of species kept out of training (``clean.holdout_*``):
    the feature scores fitted on training embeddings, the gate chosen and fitted on validation (known + held-out),
    reported on test; ``open_set.json``, the k-NN bank when the gate uses it, and a plot into the run.
    ``outputs``: a frame's (logits, embeddings), from its photos or stored embeddings."""

    val, val_unknown = frame[frame["split"] == "val"], frame[frame["split"] == "val_unknown"]
    test_unknown = frame[frame["split"] == "test_unknown"]
    run = TrainedRun(run_dir)
    if val_unknown.empty or test_unknown.empty or val.empty:
        run.write_open_set(None)
        run.write_open_set_bank(None)
        return {}, {}
    (val_logits, val_emb), (logits, test_emb) = val_outputs, test_outputs
    n = logits.shape[1]
    train = frame[frame["split"] == "train"].groupby("label", group_keys=False).head(STATS_PER_CLASS)
    _, train_emb = outputs(train)
    vu_logits, vu_emb = outputs(val_unknown)
    tu_logits, tu_emb = outputs(test_unknown)
    scoring = fit_feature_scoring(train_emb, train["label"].to_numpy(), n, val_emb, vu_emb, val_logits)
    val_known_f, val_unknown_f = scoring.scores(val_emb, val_logits), scoring.scores(vu_emb, vu_logits)
    known_f, unknown_f = scoring.scores(test_emb, logits), scoring.scores(tu_emb, tu_logits)
    features = {name: (val_known_f[name], val_unknown_f[name], known_f[name], unknown_f[name])
                for name in FEATURE_SCORES}
    settings = {**scoring.settings, "knn_banks_within_budget_at_2451_classes": banks_within_budget(
                    2451, int(train_emb.shape[1])),
                "training_photos": len(train), "embedding_dims": int(train_emb.shape[1])}
    result = evaluate_open_set(val_logits, val["label"].to_numpy(), vu_logits, logits, y, tu_logits, temperature,
                               SPECIES_THRESHOLD, keep, min_auroc, features, settings)
    run.write_open_set_bank(scoring.bank_for(result.gate.score).to_arrays()
                            if result.gate is not None and result.gate.from_model else None)
    run.write_open_set({**result.record, "held_out": sorted(
        frame.loc[frame["split"].isin(["val_unknown", "test_unknown"]), "species"].astype(str).unique().tolist())})
    known, unknown = result.test_scores
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(known.min(), unknown.min()), max(known.max(), unknown.max()), 30)
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"species it knows ({len(known)})")
    ax.hist(unknown, bins=bins, alpha=0.6, density=True, label=f"species held out of training ({len(unknown)})")
    if result.gate is not None:
        ax.axvline(result.gate.threshold, color="k", ls="--", lw=1, label=f"threshold (keeps {keep:.0%} of the right "
                                                                         "answers on validation)")
    ax.set(xlabel=f"open-set score ({result.record['score']})", ylabel="density",
           title=f"Known vs never-seen species (test), AUROC {result.metrics['open_set_auroc']:.3f}")
    ax.legend(fontsize=7)
    path = save_figure(fig, run_dir / "open_set.png")
    plt.close(fig)
    threshold = result.gate.threshold if result.gate else None
    return {**result.metrics, **_open_set_per_find(frame, result.test_scores, threshold)}, {"open_set": path}


def _open_set_per_find(frame: pd.DataFrame, scores: tuple[np.ndarray, np.ndarray],
                       threshold: float | None) -> dict[str, Any]:
    """The deployed score averaged over each find's photos (test), as `predict --group-by` and the page gate a
    find: how well whole finds of never-seen species are told from finds of known ones (``obs_open_set_auroc``)
    and, with a deployed gate, the share of each turned away at its threshold; empty without observation ids."""
    if "gbifID" not in frame:
        return {}
    known, unknown = scores
    finds = {split: frame.loc[frame["split"] == split, "gbifID"].astype(str).to_numpy()
             for split in ("test", "test_unknown")}
    per_known = pd.Series(known).groupby(finds["test"]).mean().to_numpy()
    per_unknown = pd.Series(unknown).groupby(finds["test_unknown"]).mean().to_numpy()
    out: dict[str, Any] = {"obs_open_set_auroc": auroc(per_known, per_unknown) or 0.0,
                           "unknown_test_observations": len(per_unknown)}
    if threshold is not None:
        out |= {"obs_unknown_turned_away": float(np.mean(per_unknown < threshold)),
                "obs_known_turned_away": float(np.mean(per_known < threshold))}
    return out


OBSERVATION_KEYS = ("top1", "top3", "macro_f1", "nll", "ece")


def _per_observation(test: pd.DataFrame, probs: np.ndarray, y: np.ndarray, val: pd.DataFrame, val_probs: np.ndarray,
                     labels: pd.DataFrame, prior_probs: np.ndarray | None) -> dict[str, Any]:
    """One answer per observation (its photos combined by the rule validation prefers), with the prior too."""
    if "gbifID" not in test:
        return {}
    groups = test["gbifID"].astype(str).to_numpy()
    rule, by_rule = "mean_log", {}
    if len(val):
        rule, by_rule = choose_rule(val_probs, val["label"].to_numpy(), val["gbifID"].astype(str).to_numpy(), labels,
                                    classification_metrics)
    found = observation_metrics(probs, y, groups, rule, labels, classification_metrics)
    out: dict[str, Any] = {"observations": int(len(set(groups))), "observation_rule": rule,
                           "observation_rule_val_top1": by_rule,
                           **{f"obs_{k}": found[k] for k in OBSERVATION_KEYS}}
    if prior_probs is not None:
        with_prior = observation_metrics(prior_probs, y, groups, rule, labels, classification_metrics)
        out.update({f"obs_{k}_with_prior": with_prior[k] for k in ("top1", "top3", "macro_f1")})
    return out


def _poisonous_confusion(toxicity: Path, labels: pd.DataFrame, probs: np.ndarray, y: np.ndarray,
                         with_prior: np.ndarray | None, groups: np.ndarray | None = None,
                         rule: str = "mean_log") -> dict[str, Any]:
    """How often a deadly or toxic species is predicted as an edible one, with and without the place prior; per
    photo, and (``groups``: each photo's observation) per find, its photos combined by ``rule``."""

    statuses = class_statuses(labels, load_toxicity(toxicity))
    rate = poisonous_as_edible(probs.argmax(axis=1), y, statuses)
    if rate is None:
        return {}
    out: dict[str, Any] = {"poisonous_as_edible": rate}
    if with_prior is not None:
        out["poisonous_as_edible_with_prior"] = poisonous_as_edible(with_prior.argmax(axis=1), y, statuses)
    if groups is not None:
        for suffix, p in (("", probs), ("_with_prior", with_prior)):
            if p is not None:
                first, combined = combine_photos(p, groups, rule)
                out[f"obs_poisonous_as_edible{suffix}"] = poisonous_as_edible(combined.argmax(axis=1), y[first],
                                                                              statuses)
    return out


def evaluate_run(params: EvaluateParams) -> EvalResult:
    """Evaluate a finished training run; writes metrics.json, per_class.csv, confusions.csv and plots into it."""
    run_dir, manifest, split = Path(params.run), params.manifest, params.split
    temperature_scaling, batch_size = params.temperature_scaling, params.batch_size
    run = TrainedRun(run_dir)
    embedded = run.summary().params.get("dataset", {}).get("embeddings")
    head = run.head_logits() if embedded else None
    if head is not None:  # a head on stored embeddings: the whole network loads only if a photo was not embedded
        run.require_model()
        labels, prep = run.labels(), run.preprocessing()
        if head[0].shape[-1] != len(labels):
            raise FungilibError(f"{run.head_logits_file}: {head[0].shape[-1]} outputs, labels.json lists "
                                f"{len(labels)}; train the run again")

        def model() -> Any:
            return run.load()[0]
    else:
        model, labels, prep = run.load()
    if manifest is None:
        manifest = run.summary().manifest
    frame, manifest_labels = load_manifest(manifest)
    if manifest_labels["class_key"].astype(str).tolist() != labels["class_key"].astype(str).tolist():
        raise FungilibError(f"{manifest}: its label table differs from the one {run_dir} was trained with")
    test = frame[frame["split"] == split]
    if test.empty:
        raise FungilibError(f"{manifest}: no images in split {split!r}")
    size, n = int(prep["input_size"]), len(labels)
    outputs = photo_outputs(model, n, size, batch_size)
    if embedded:  # a head trained on stored embeddings is evaluated on them (its whole network gives the same)
        outputs = stored_outputs(head if head is not None else tuple(model.get_layer("logits").get_weights()),
                                 Path(embedded), outputs)
    logits, test_emb = outputs(test)
    y = test["label"].to_numpy()
    temperature = 1.0
    val = frame[frame["split"] == "val"]
    # the validation split, with the weights the run keeps: the temperature, the prior's weight and the open-set
    # gate are fitted on it, and every choice of a run (best_run, the demo's export, Optuna) reads its metrics
    val_logits, val_emb = outputs(val)
    if temperature_scaling and len(val):
        temperature = float(fit_temperature(val_logits, val["label"].to_numpy()))
    metrics = classification_metrics(logits, y, labels)
    if len(val):
        metrics.update(validation_metrics(val_logits, val["label"].to_numpy(), labels, temperature))
    calibrated = classification_metrics(logits, y, labels, temperature)
    metrics.update(split=split, images=len(test), classes=n, temperature=temperature,
                   ece_after_temperature=calibrated["ece"], nll_after_temperature=calibrated["nll"])
    probs = softmax(logits, temperature)
    with_prior, prior_probs = _with_place_prior(frame, test, probs, softmax(val_logits, temperature), labels, run_dir)
    metrics.update(with_prior)
    metrics.update(_per_observation(test, probs, y, val, softmax(val_logits, temperature), labels, prior_probs))
    if params.toxicity is not None:
        groups = test["gbifID"].astype(str).to_numpy() if "gbifID" in test else None
        metrics.update(_poisonous_confusion(params.toxicity, labels, probs, y, prior_probs, groups,
                                            metrics.get("observation_rule", "mean_log")))
    open_set_metrics, open_set_plots = (_open_set(outputs, frame, (val_logits, val_emb), (logits, test_emb), y,
                                                  temperature, run_dir, params.open_set_keep,
                                                  params.open_set_min_auroc)
                                        if split == "test" else ({}, {}))
    metrics.update(open_set_metrics)
    predicted = probs.argmax(axis=1)
    names = labels["species"].astype(str).tolist()
    cm = confusion_matrix(predicted, y, n)
    per_class = per_class_table(predicted, y, n).merge(labels, on="label")
    confusions = top_confusions(cm, names)
    _, reliability = expected_calibration_error(probs, y)
    plots = {**_plots(cm, names, confusions, reliability, per_class, run_dir), **open_set_plots}
    run.write_metrics({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
    run.write_tables(per_class, confusions, pd.DataFrame({
        "media_id": test["media_id"].to_numpy(), "label": y, "predicted": predicted, "confidence": probs.max(axis=1)}))
    plots["confidently_wrong"] = confidently_wrong_sheet(pd.DataFrame({
        "path": test["path"].to_numpy(), "true": [names[i] for i in y], "predicted": [names[i] for i in predicted],
        "confidence": probs.max(axis=1)}), run_dir)
    return EvalResult(metrics, per_class, confusions, plots)
