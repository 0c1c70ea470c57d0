"""Classification metrics from probabilities: top-k, macro-F1, per-class table, confusions, calibration, rollups."""

from __future__ import annotations

import numpy as np
import pandas as pd


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose true label is among the ``k`` highest probabilities."""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else 0.0


def per_class_table(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn's zero_division=0)."""
    cm = confusion_matrix(predicted, labels, num_classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted_n = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted_n, out=np.zeros_like(tp), where=predicted_n > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame({"label": np.arange(num_classes), "precision": precision, "recall": recall, "f1": f1,
                         "support": support.astype(int)})


def macro_f1(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in the labels (as DF20 reports it)."""
    table = per_class_table(predicted, labels, num_classes)
    present = table["support"] > 0
    return float(table.loc[present, "f1"].mean()) if present.any() else 0.0


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def top_confusions(cm: np.ndarray, names: list[str], n: int = 20) -> pd.DataFrame:
    """The most frequent (true, predicted) mistakes: readable where a full matrix of 2,000 classes is not."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    order = np.argsort(-off[rows, cols], kind="stable")[:n]
    support = cm.sum(axis=1)
    return pd.DataFrame({
        "true": [names[r] for r in rows[order]], "predicted": [names[c] for c in cols[order]],
        "count": off[rows, cols][order], "share_of_true": off[rows, cols][order] / np.maximum(support[rows[order]], 1),
    })


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, pd.DataFrame]:
    """ECE over equal-width confidence bins, and the reliability table (confidence vs accuracy per bin)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap = abs(correct[mask].mean() - confidence[mask].mean())
            ece += mask.mean() * gap
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "count": int(mask.sum()),
                         "confidence": confidence[mask].mean(), "accuracy": correct[mask].mean()})
    return float(ece), pd.DataFrame(rows)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood on (validation) logits. The NLL is
    convex in 1/T (a log-sum-exp minus a linear term), so a golden-section search on log T finds its minimum in
    42 evaluations, each one float32 pass of exp over the logits (was 280 full softmaxes: minutes at 2,451 classes
    × 20 k photos)."""
    if not len(labels):
        return 1.0
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=1, keepdims=True)  # shifting a row leaves its softmax, at every temperature, unchanged
    true = z[np.arange(len(labels)), labels].astype(np.float64)

    def nll(log_t: float) -> float:  # row max 0: each row's sum is ≥ 1, no overflow, no log of 0
        sums = np.exp(z * np.float32(np.exp(-log_t))).sum(axis=1, dtype=np.float64)
        return float(np.mean(np.log(sums) - np.exp(-log_t) * true))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(40):  # the bracket shrinks to 1e-8 of its width
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def rollup_accuracy(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float | None:
    """Top-1 at a coarser rank: sum the species probabilities per group (genus, family) and compare groups.

    Only photos whose true class has a known group ("" is unknown) count, and a prediction of the unknown group is
    wrong; None when no test photo's class has one (a folder import knows no genus or family: a score there
    would be a perfect score for a rank it does not know)."""
    groups = np.asarray(groups).astype(str)
    keep = (groups != "")[labels] if len(labels) else np.zeros(0, bool)
    if not keep.any():
        return None
    codes, index = np.unique(groups, return_inverse=True)
    summed = np.zeros((probs.shape[0], len(codes)))
    for j in range(len(codes)):
        summed[:, j] = probs[:, index == j].sum(axis=1)
    return float(np.mean(summed.argmax(axis=1)[keep] == index[labels][keep]))
