"""An order of the classes in which the ones a model confuses with each other sit together (look-alikes side by
side in the confusion matrix): average-linkage clustering of the symmetrised, row-normalised confusions, leaves
put in their optimal order."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform


def lookalike_order(cm: np.ndarray) -> np.ndarray:
    """The permutation of ``cm``'s classes (rows: true, columns: predicted) that puts mutual confusions next to
    each other; classes confused with none keep their relative order at the end of their cluster."""
    n = len(cm)
    if n <= 2:
        return np.arange(n)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0.0)
    # distance 1 for classes never confused; a tiny index term keeps ties in their given order, deterministic
    distance = 1.0 - similarity / max(float(similarity.max()), 1e-12)
    distance += np.abs(np.subtract.outer(np.arange(n), np.arange(n))) * 1e-6
    np.fill_diagonal(distance, 0.0)
    condensed = squareform(np.clip(distance, 0.0, None), checks=False)
    tree = linkage(condensed, method="average")
    return leaves_list(optimal_leaf_ordering(tree, condensed))


__all__ = ["lookalike_order"]
