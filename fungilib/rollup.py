"""Rank-aware answers from species probabilities, as iNaturalist's Seek answers: the species when it is
confident, else the genus, else the family (probabilities summed over their classes), else "not sure".
The same rule as ``web/rollup.js``; tests hold the two together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Rank = Literal["species", "genus", "family", "none"]


@dataclass(frozen=True)
class Answer:
    rank: Rank
    name: str | None
    probability: float


def top_k(probabilities: np.ndarray, labels: Sequence[dict], k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "probability": float(probabilities[i]), **labels[i]} for i in order]


def _best_group(probabilities: np.ndarray, labels: Sequence[dict], rank: str) -> Answer | None:
    sums: dict[str, float] = {}
    for p, label in zip(probabilities, labels, strict=True):
        name = label.get(rank)
        if name:
            sums[name] = sums.get(name, 0.0) + float(p)
    if not sums:
        return None
    name = max(sums, key=sums.__getitem__)
    return Answer(rank, name, sums[name])  # type: ignore[arg-type]


def answer(probabilities: np.ndarray, labels: Sequence[dict], threshold: float) -> Answer:
    """The finest rank whose probability reaches ``threshold``."""
    best = int(np.argmax(probabilities))
    if probabilities[best] >= threshold:
        return Answer("species", labels[best].get("species"), float(probabilities[best]))
    for rank in ("genus", "family"):
        group = _best_group(probabilities, labels, rank)
        if group is not None and group.probability >= threshold:
            return group
    return Answer("none", None, float(probabilities[best]))
