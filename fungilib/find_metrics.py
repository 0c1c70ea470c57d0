"""Evaluation per find: the photos of one observation (its cap, gills, stem, base) answered together, as Danish
Fungi 2020 and the FungiCLEF challenges score — the rule that combines them chosen on the validation split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

RULES = ("mean_log", "max")  # the mean of the photos' log-probabilities; each species' highest probability


def combine(probabilities: np.ndarray, groups: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each observation, one probability row per observation), in order of first appearance."""
    codes = pd.factorize(pd.Series(groups).astype(str))[0]  # numbered in order of first appearance
    order, first = np.unique(codes, return_index=True)
    out = np.empty((len(order), probabilities.shape[1]), np.float64)
    for code in order:
        rows = probabilities[codes == code]
        if rule == "mean_log":
            scores = np.log(np.maximum(rows, 1e-30)).mean(axis=0)
            scores = np.exp(scores - scores.max())
        elif rule == "max":
            scores = rows.max(axis=0)
        else:
            raise ValueError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")
        out[code] = scores / scores.sum()
    return first, out


def observation_metrics(probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray, rule: str,
                        label_table: pd.DataFrame, metrics: Any) -> dict[str, float]:
    """``metrics`` (evaluate's classification_metrics) of one answer per observation, under ``rule``."""
    first, combined = combine(probabilities, groups, rule)
    return metrics(np.log(np.maximum(combined, 1e-30)), labels[first], label_table)


def choose_rule(probabilities: np.ndarray, labels: np.ndarray, groups: np.ndarray, label_table: pd.DataFrame,
                metrics: Any) -> tuple[str, dict[str, float]]:
    """The rule with the best validation top-1 (then the lower NLL); its figures for every rule."""
    scores = {rule: observation_metrics(probabilities, labels, groups, rule, label_table, metrics) for rule in RULES}
    best = max(RULES, key=lambda r: (scores[r]["top1"], -scores[r]["nll"], -RULES.index(r)))
    return best, {rule: round(s["top1"], 4) for rule, s in scores.items()}
