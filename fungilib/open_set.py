""""Not a species this model knows": an open-set score from the model's output, its threshold fitted on
validation photos of species held out of training (``clean.holdout_classes``), and how well it separates.

Scores (higher = more like a species the model knows), all from one forward pass:

- ``msp``: the largest softmax probability after the temperature (Hendrycks & Gimpel 2017)
- ``neg_entropy``: minus the entropy of those probabilities
- ``max_logit``: the largest logit (Vaze et al. 2022: a good closed-set classifier's logit is a strong baseline)
- ``neg_energy``: T · logsumexp(logits / T) (Liu et al. 2020)

and from the model's features (``fungilib.feature_scores``): ``knn``, the cosine similarity to the k-th nearest
training embedding, and ``mahalanobis``.

Deployable are the scores the exported model lets the page and ``predict`` compute: ``msp`` and ``neg_entropy`` from
its probabilities, and ``knn``, which the exported model computes itself and appends to its probabilities
(``fungilib.models.with_open_set_score``: one output, so every format and the page's runtime stay as they are).
The logit scores and Mahalanobis are measured and reported beside them. An int8 page model could not carry an
unbounded logit score in the same output as the probabilities without coarsening them; the cosine lies in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoreName = Literal["msp", "neg_entropy", "max_logit", "neg_energy"]
SCORES: tuple[ScoreName, ...] = ("msp", "neg_entropy", "max_logit", "neg_energy")
FROM_PROBABILITIES: tuple[str, ...] = ("msp", "neg_entropy")  # computable from an exported model's probabilities
FROM_MODEL: tuple[str, ...] = ("knn", "knn+max_logit")  # computed inside the exported model, appended
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
    """Answer "not a species this model knows" when the photo's score is under ``threshold``: a score of its
    probabilities, or (``from_model``) the score the model appends to them."""

    score: str
    threshold: float

    @property
    def from_model(self) -> bool:
        return self.score in FROM_MODEL

    def score_of(self, probabilities: np.ndarray, model_score: float | np.ndarray | None = None) -> np.ndarray:
        if self.from_model:
            if model_score is None:
                raise ValueError(f"the {self.score!r} gate reads the score the model appends to its probabilities")
            return np.asarray(model_score, np.float64)
        return probability_score(probabilities, self.score)

    def knows(self, probabilities: np.ndarray, model_score: float | np.ndarray | None = None) -> np.ndarray:
        return self.score_of(probabilities, model_score) >= self.threshold

    def as_config(self) -> dict[str, float | str]:
        return {"score": self.score, "threshold": self.threshold, **({"output": "appended"} if self.from_model else {})}

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


FeatureScores = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # name → val known, val unknown,
# test known, test unknown


def evaluate_open_set(val_logits: np.ndarray, val_labels: np.ndarray, val_unknown_logits: np.ndarray,
                      test_logits: np.ndarray, test_labels: np.ndarray, test_unknown_logits: np.ndarray,
                      temperature: float, species_threshold: float, keep: float = 0.95,
                      min_auroc: float = MIN_AUROC, features: FeatureScores | None = None,
                      feature_settings: dict | None = None) -> OpenSetResult:
    """Choose the score (among the deployable ones, by validation AUROC against the held-out species) and its
    threshold (keeping ``keep`` of the right answers on known validation photos), and report on the test photos:
    AUROC of every score, how often an unknown species gets a species answer before and after the gate, how many
    known photos it turns away. ``features``: the feature scores of the same photos (``fungilib.feature_scores``).
    A score whose validation AUROC is under ``min_auroc`` is not deployed (``gate`` None): the report says so and
    the answers stay as they were. A gate the model computes records a fallback from its probabilities, for a
    bundle whose model does not answer the score."""
    val_known, val_unknown = scores(val_logits, temperature), scores(val_unknown_logits, temperature)
    known, unknown = scores(test_logits, temperature), scores(test_unknown_logits, temperature)
    for name, (vk, vu, tk, tu) in (features or {}).items():
        val_known[name], val_unknown[name], known[name], unknown[name] = vk, vu, tk, tu
    names = list(val_known)
    val_auroc = {name: auroc(val_known[name], val_unknown[name]) for name in names}
    val_right = val_logits.argmax(axis=1) == val_labels

    def fitted(candidates: list[str]) -> tuple[str, float, bool]:
        best = max(candidates, key=lambda name: val_auroc[name] or 0.0)
        return best, fit_threshold(val_known[best], val_right, keep), (val_auroc[best] or 0.0) >= min_auroc

    chosen, threshold, deployed = fitted([n for n in (*FROM_PROBABILITIES, *FROM_MODEL) if n in val_known])
    gate = OpenSetGate(chosen, threshold) if deployed else None
    fallback_score, fallback_threshold, fallback_deployed = fitted(list(FROM_PROBABILITIES))
    named_before = unknown["msp"] >= species_threshold
    named_after = named_before & (unknown[chosen] >= threshold) if deployed else named_before
    turned_away = known[chosen] < threshold if deployed else np.zeros(len(known["msp"]), bool)

    def rate(mask: np.ndarray) -> float:
        return float(mask.mean()) if len(mask) else 0.0

    metrics: dict[str, float | str] = {
        "open_set_score": chosen, "open_set_threshold": threshold if deployed else "not deployed",
        "open_set_auroc": auroc(known[chosen], unknown[chosen]) or 0.0,
        "open_set_val_auroc": val_auroc[chosen] or 0.0,
        **{f"open_set_auroc_{name}": auroc(known[name], unknown[name]) or 0.0 for name in names},
        "unknown_test_images": int(len(test_unknown_logits)),
        "unknown_named_before": rate(named_before), "unknown_over_0.9_before": rate(unknown["msp"] >= 0.9),
        "unknown_named": rate(named_after), "known_turned_away": rate(turned_away),
        "known_right_turned_away": rate(turned_away[test_logits.argmax(axis=1) == test_labels]),
    }
    record = {**(gate.as_config() if gate else {"score": chosen, "threshold": None}), "keep": keep,
              "deployed": deployed, "species_threshold": species_threshold, "temperature": temperature,
              "fitted_on": {"val_known_images": int(len(val_logits)),
                            "val_unknown_images": int(len(val_unknown_logits))},
              "val_auroc": val_auroc, **({"features": feature_settings} if feature_settings else {}),
              "rule": f"score with the best validation AUROC against held-out species among those the exported model "
                      f"lets the page compute ({', '.join((*FROM_PROBABILITIES, *FROM_MODEL))}; deployed only at "
                      f"AUROC >= {min_auroc}); threshold keeping {keep:.0%} of the right answers on known validation "
                      f"photos"}
    if gate is not None and gate.from_model:
        record["fallback"] = ({"score": fallback_score, "threshold": fallback_threshold} if fallback_deployed
                              else None)
    return OpenSetResult(gate, metrics, record, (known[chosen], unknown[chosen]))
