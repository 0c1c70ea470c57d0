"""Rank-aware answers from species probabilities, as iNaturalist's Seek answers: the species when it is
confident, else the genus, else the family (probabilities summed over their classes), else "not sure".
The same rule as ``web/rollup.js``; tests hold the two together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fungilib.open_set import OpenSetGate

Rank = Literal["species", "genus", "family", "none", "unknown"]
SPECIES_THRESHOLD = 0.6  # the default probability at which a species (else genus, else family) is named


@dataclass(frozen=True)
class Answer:
    rank: Rank
    name: str | None
    probability: float


def top_k(probabilities: np.ndarray, labels: Sequence[dict], k: int) -> list[dict]:
    k = min(k, len(probabilities))
    head = np.argpartition(-probabilities, k - 1)[:k] if k < len(probabilities) else np.arange(len(probabilities))
    order = head[np.lexsort((head, -probabilities[head]))]  # by probability, ties by index (a stable sort's order)
    return [{"index": int(i), "probability": float(probabilities[i]), **labels[i]} for i in order]


class RankIndex:
    """The label table's genus and family as integer codes, built once: summing 2,451 species probabilities into
    genera is then one ``bincount`` per photo instead of a Python loop over every label."""

    def __init__(self, labels: Sequence[dict]) -> None:
        self.labels = labels
        self.groups: dict[str, tuple[list[str], np.ndarray]] = {}
        for rank in ("genus", "family"):
            names: dict[str, int] = {}
            codes = np.array([names.setdefault(label[rank], len(names)) if label.get(rank) else -1 for label in labels])
            self.groups[rank] = (list(names), codes)

    def best_group(self, probabilities: np.ndarray, rank: str) -> Answer | None:
        names, codes = self.groups[rank]
        if not names:
            return None
        known = codes >= 0
        sums = np.bincount(codes[known], weights=probabilities[known], minlength=len(names))
        best = int(np.argmax(sums))  # ties: the first name in label order, as the page does
        return Answer(rank, names[best], float(sums[best]))  # type: ignore[arg-type]


def answer(probabilities: np.ndarray, labels: Sequence[dict] | RankIndex, threshold: float,
           open_set: OpenSetGate | None = None, image_probabilities: np.ndarray | None = None,
           model_score: float | None = None) -> Answer:
    """The finest rank whose probability reaches ``threshold`` (pass a RankIndex when answering many photos);
    "unknown" — not a species this model knows — first, when ``open_set`` turns the photo's own probabilities
    (``image_probabilities``, before any place prior; default ``probabilities``) away — or, for a gate the model
    computes, the ``model_score`` it appended to them."""
    index = labels if isinstance(labels, RankIndex) else RankIndex(labels)
    best = int(np.argmax(probabilities))
    own = probabilities if image_probabilities is None else image_probabilities
    if open_set is not None and not open_set.knows(own, model_score):
        return Answer("unknown", None, float(probabilities[best]))
    if probabilities[best] >= threshold:
        return Answer("species", index.labels[best].get("species"), float(probabilities[best]))
    for rank in ("genus", "family"):
        group = index.best_group(probabilities, rank)
        if group is not None and group.probability >= threshold:
            return group
    return Answer("none", None, float(probabilities[best]))
