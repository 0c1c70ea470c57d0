""""Not a species this model knows": an open-set score from the model's output, its threshold fitted on
validation photos of species held out of training (``clean.holdout_classes``), and how well it separates.

Scores (higher = more like a species the model knows), all from one forward pass:

- ``msp``: the largest softmax probability after the temperature (Hendrycks & Gimpel 2017)
- ``neg_entropy``: minus the entropy of those probabilities
- ``max_logit``: the largest logit (Vaze et al. 2022: a good closed-set classifier's logit is a strong baseline)
- ``neg_energy``: T · logsumexp(logits / T) (Liu et al. 2020)

The exported models output probabilities, so the page and ``predict`` can compute only ``msp`` and
``neg_entropy``; evaluation measures all four and deploys the better of those two (the logit scores' AUROC is
reported beside it, so a gap would show).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoreName = Literal["msp", "neg_entropy", "max_logit", "neg_energy"]
SCORES: tuple[ScoreName, ...] = ("msp", "neg_entropy", "max_logit", "neg_energy")
FROM_PROBABILITIES: tuple[ScoreName, ...] = ("msp", "neg_entropy")  # what an exported model's output allows
UNKNOWN_ANSWER = "not a species this model knows"


def probability_score(probabilities: np.ndarray, name: str) -> np.ndarray:
    """``msp`` or ``neg_entropy`` of rows of probabilities (one row: a scalar array)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if name == "msp":
        return p.max(axis=-1)
    if name == "neg_entropy":
        return np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1)
    raise ValueError(f"{name!r} is not computable from probabilities; use one of {FROM_PROBABILITIES}")


def scores(logits: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Every open-set score of rows of logits."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    probabilities = np.exp(z - log_sum[:, None])
    return {"msp": probabilities.max(axis=1), "neg_entropy": probability_score(probabilities, "neg_entropy"),
            "max_logit": np.asarray(logits, dtype=np.float64).max(axis=1), "neg_energy": temperature * log_sum}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """P(score of a known photo > score of an unknown one), ties counting half (the Mann–Whitney statistic)."""
    if not len(known) or not len(unknown):
        return None
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    sorted_scores = both[order]  # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2
    u = ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unknown)))


@dataclass(frozen=True)
class OpenSetGate:
    """Answer "not a species this model knows" when the score of the photo's probabilities is under ``threshold``."""

    score: str
    threshold: float

    def knows(self, probabilities: np.ndarray) -> np.ndarray:
        return probability_score(probabilities, self.score) >= self.threshold

    def as_config(self) -> dict[str, float | str]:
        return {"score": self.score, "threshold": self.threshold}

    @staticmethod
    def from_config(config: dict | None) -> OpenSetGate | None:
        if not config or config.get("threshold") is None:
            return None
        return OpenSetGate(str(config["score"]), float(config["threshold"]))


def fit_threshold(known: np.ndarray, known_correct: np.ndarray, unknown: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced open-set accuracy on these photos): the threshold maximising the mean of
    (known photos answered with the right species) and (unknown photos turned away). Candidates are midpoints
    between the observed scores; ties go to the lower threshold (fewer good answers lost)."""
    values = np.unique(np.concatenate([known, unknown]))
    candidates = np.r_[values[0] - 1e-9, (values[1:] + values[:-1]) / 2, values[-1] + 1e-9]
    right = np.sort(known[known_correct])
    known_kept = (len(right) - np.searchsorted(right, candidates, side="left")) / max(len(known), 1)
    unknown_rejected = np.searchsorted(np.sort(unknown), candidates, side="left") / max(len(unknown), 1)
    balanced = (known_kept + unknown_rejected) / 2
    best = int(np.argmax(balanced))
    return float(candidates[best]), float(balanced[best])


@dataclass
class OpenSetResult:
    gate: OpenSetGate
    metrics: dict[str, float | str]
    record: dict  # open_set.json: how the gate was chosen and fitted, on validation only
    test_scores: tuple[np.ndarray, np.ndarray]  # the deployed score on known and unknown test photos


def evaluate_open_set(val_logits: np.ndarray, val_labels: np.ndarray, val_unknown_logits: np.ndarray,
                      test_logits: np.ndarray, test_labels: np.ndarray, test_unknown_logits: np.ndarray,
                      temperature: float, species_threshold: float) -> OpenSetResult:
    """Choose the score (among those the exported model allows) and its threshold on validation photos — known
    species and held-out ones — and report on the test photos: AUROC of every score, how often an unknown
    species gets a species answer before and after the gate, and how many known photos the gate turns away."""
    val_known, val_unknown = scores(val_logits, temperature), scores(val_unknown_logits, temperature)
    val_auroc = {name: auroc(val_known[name], val_unknown[name]) for name in SCORES}
    chosen = max(FROM_PROBABILITIES, key=lambda name: val_auroc[name] or 0.0)
    correct = val_known["msp"].size and (val_logits.argmax(axis=1) == val_labels)
    threshold, val_balanced = fit_threshold(val_known[chosen], np.asarray(correct, dtype=bool), val_unknown[chosen])
    gate = OpenSetGate(chosen, threshold)
    known, unknown = scores(test_logits, temperature), scores(test_unknown_logits, temperature)
    named_before = unknown["msp"] >= species_threshold
    named_after = named_before & (unknown[chosen] >= threshold)
    turned_away = known[chosen] < threshold
    right = test_logits.argmax(axis=1) == test_labels
    metrics: dict[str, float | str] = {
        "open_set_score": chosen, "open_set_threshold": threshold,
        "open_set_auroc": auroc(known[chosen], unknown[chosen]) or 0.0,
        **{f"open_set_auroc_{name}": auroc(known[name], unknown[name]) or 0.0 for name in SCORES},
        "unknown_test_images": int(len(test_unknown_logits)),
        "unknown_named_before": float(named_before.mean()) if len(named_before) else 0.0,
        "unknown_named": float(named_after.mean()) if len(named_after) else 0.0,
        "unknown_over_0.9_before": float((unknown["msp"] >= 0.9).mean()) if len(named_before) else 0.0,
        "known_turned_away": float(turned_away.mean()) if len(turned_away) else 0.0,
        "open_set_balanced_accuracy": float(((right & ~turned_away).mean() + (~named_after).mean()) / 2)
        if len(right) and len(named_after) else 0.0,
    }
    record = {**gate.as_config(), "species_threshold": species_threshold, "temperature": temperature,
              "fitted_on": {"val_known_images": int(len(val_logits)), "val_unknown_images": int(len(val_unknown_logits))},
              "val_auroc": val_auroc, "val_balanced_accuracy": val_balanced,
              "rule": "score with the best validation AUROC among those computable from probabilities; threshold "
                      "maximising the mean of (known photos answered with the right species) and (held-out "
                      "species' photos turned away) on validation"}
    return OpenSetResult(gate, metrics, record, (known[chosen], unknown[chosen]))
