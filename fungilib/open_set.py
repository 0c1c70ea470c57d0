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


MIN_AUROC = 0.6  # a score that separates worse than this on validation is not deployed: it would turn away
# photos at random


def fit_threshold(known: np.ndarray, known_correct: np.ndarray, keep: float) -> float:
    """The highest threshold that still keeps ``keep`` of the known photos the model answers rightly (their
    score at or above it): the cost on photos of species it knows is fixed in advance, whatever the score's
    quality, and the held-out species show what it buys. (Maximising a balanced accuracy instead chose to turn
    almost everything away whenever the score separated poorly — 84 % of known flowers at an AUROC of 0.51.)"""
    right = np.sort(known[known_correct])
    if not len(right):
        return float("-inf")
    return float(right[int(np.floor((1 - keep) * len(right) + 1e-9))])  # (1 - 0.8) * 10 is 1.999…


@dataclass
class OpenSetResult:
    gate: OpenSetGate | None  # None: the score does not separate well enough to be used
    metrics: dict[str, float | str]
    record: dict  # open_set.json: how the gate was chosen and fitted, on validation only
    test_scores: tuple[np.ndarray, np.ndarray]  # the deployed score on known and unknown test photos


def evaluate_open_set(val_logits: np.ndarray, val_labels: np.ndarray, val_unknown_logits: np.ndarray,
                      test_logits: np.ndarray, test_labels: np.ndarray, test_unknown_logits: np.ndarray,
                      temperature: float, species_threshold: float, keep: float = 0.95,
                      min_auroc: float = MIN_AUROC) -> OpenSetResult:
    """Choose the score (among those the exported model allows, by validation AUROC against the held-out species)
    and its threshold (keeping ``keep`` of the right answers on known validation photos), and report on the test
    photos: AUROC of every score, how often an unknown species gets a species answer before and after the gate,
    how many known photos it turns away. A score whose validation AUROC is under ``min_auroc`` is not deployed
    (``gate`` None): the report says so and the answers stay as they were."""
    val_known, val_unknown = scores(val_logits, temperature), scores(val_unknown_logits, temperature)
    val_auroc = {name: auroc(val_known[name], val_unknown[name]) for name in SCORES}
    chosen = max(FROM_PROBABILITIES, key=lambda name: val_auroc[name] or 0.0)
    threshold = fit_threshold(val_known[chosen], val_logits.argmax(axis=1) == val_labels, keep)
    deployed = (val_auroc[chosen] or 0.0) >= min_auroc
    gate = OpenSetGate(chosen, threshold) if deployed else None
    known, unknown = scores(test_logits, temperature), scores(test_unknown_logits, temperature)
    named_before = unknown["msp"] >= species_threshold
    named_after = named_before & (unknown[chosen] >= threshold) if deployed else named_before
    turned_away = known[chosen] < threshold if deployed else np.zeros(len(known["msp"]), bool)

    def rate(mask: np.ndarray) -> float:
        return float(mask.mean()) if len(mask) else 0.0

    metrics: dict[str, float | str] = {
        "open_set_score": chosen, "open_set_threshold": threshold if deployed else "not deployed",
        "open_set_auroc": auroc(known[chosen], unknown[chosen]) or 0.0,
        **{f"open_set_auroc_{name}": auroc(known[name], unknown[name]) or 0.0 for name in SCORES},
        "unknown_test_images": int(len(test_unknown_logits)),
        "unknown_named_before": rate(named_before), "unknown_over_0.9_before": rate(unknown["msp"] >= 0.9),
        "unknown_named": rate(named_after), "known_turned_away": rate(turned_away),
        "known_right_turned_away": rate(turned_away[test_logits.argmax(axis=1) == test_labels]),
    }
    record = {**(gate.as_config() if gate else {"score": chosen, "threshold": None}), "keep": keep,
              "deployed": deployed, "species_threshold": species_threshold, "temperature": temperature,
              "fitted_on": {"val_known_images": int(len(val_logits)),
                            "val_unknown_images": int(len(val_unknown_logits))},
              "val_auroc": val_auroc,
              "rule": f"score with the best validation AUROC against held-out species among those computable from "
                      f"probabilities (deployed only at AUROC >= {min_auroc}); threshold keeping {keep:.0%} of the "
                      f"right answers on known validation photos"}
    return OpenSetResult(gate, metrics, record, (known[chosen], unknown[chosen]))
