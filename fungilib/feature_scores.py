"""Open-set scores from the model's features: how far a photo's embedding (the pooled features its logits are
computed from) lies from those of the training photos.

On real photos far from the training species the softmax cannot tell (a flower shown to a mushroom model is often
confidently a mushroom); distances in feature space can. Two are measured:

- ``knn`` (Sun et al. 2022): the cosine similarity to the k-th nearest of a bank of training embeddings, at most
  ``per_class`` of each class, optionally projected on their ``rank`` principal directions first. Bank, projection
  and k are chosen on validation among the settings whose int8 bytes fit the budget at the run's class count (the
  page carries them inside its model, see ``fungilib.models.with_open_set_score``).
- ``mahalanobis`` (Lee et al. 2018): minus the squared distance to the nearest class mean under the shared
  within-class covariance, shrunk towards its mean variance (shrinkage chosen on validation). Measured beside the
  others; on real photos it separated less well than ``knn`` (bench/results/open_set_real.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fungilib.open_set import auroc

SHRINKAGES = (0.01, 0.1, 0.5)
NEIGHBOURS = (1, 5)
RANKS = (0, 256, 128, 64)  # 0: the embedding's own dimensions
PER_CLASS = (64, 16, 4)
BUDGET_BYTES = 2_000_000  # int8 bytes of the bank and its projection, at the run's class count
MIN_PER_CLASS = 2  # fewer training photos: the class keeps its mean but adds nothing to the shared covariance


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@dataclass
class KnnBank:
    """The k-NN score's training embeddings: unit rows, projected by ``projection`` (None: as they are)."""

    bank: np.ndarray  # (N, r)
    bank_labels: np.ndarray  # (N,)
    projection: np.ndarray | None  # (d, r) principal directions of the unit training embeddings
    k: int
    # with the largest logit (score "knn+max_logit"): (knn mean, knn std, max-logit mean, max-logit std) on known
    # validation photos; the score is then sigmoid(z(knn) + z(max logit)), in (0, 1) like the cosine
    logit_mix: np.ndarray | None = None

    @property
    def dims(self) -> int:
        """The embedding dimensions the bank takes."""
        return int(self.projection.shape[0] if self.projection is not None else self.bank.shape[1])

    def embed(self, embeddings: np.ndarray) -> np.ndarray:
        x = unit(embeddings)
        return unit(x @ self.projection) if self.projection is not None else x

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """The cosine similarity to the k-th nearest bank row (higher: more like a known species)."""
        similarity = self.embed(embeddings) @ self.bank.T
        k = min(self.k, similarity.shape[1])
        return -np.partition(-similarity, k - 1, axis=1)[:, k - 1]

    def int8_bytes(self) -> int:
        """Bytes of the bank and projection as int8 weights (the page's model)."""
        return bank_bytes(len(self.bank), self.bank.shape[1], self.projection.shape[0] if self.projection is not None
                          else 0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank.astype(np.float32), "bank_labels": self.bank_labels.astype(np.int32),
                "projection": (self.projection if self.projection is not None else np.zeros((0, 0))).astype(
                    np.float32), "k": np.array(self.k),
                "logit_mix": (self.logit_mix if self.logit_mix is not None else np.zeros(0)).astype(np.float64)}

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> KnnBank:
        projection = np.asarray(arrays["projection"], np.float64)
        mix = np.asarray(arrays.get("logit_mix", np.zeros(0)), np.float64)
        return KnnBank(np.asarray(arrays["bank"], np.float64), np.asarray(arrays["bank_labels"]),
                       projection if projection.size else None, int(arrays["k"]), mix if mix.size == 4 else None)

    def gate_score(self, embeddings: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The score the exported model appends: the k-NN cosine, or with ``logit_mix`` its mix with the largest
        logit."""
        knn = self.score(embeddings)
        if self.logit_mix is None:
            return knn
        return mix_with_max_logit(knn, np.asarray(logits, np.float64).max(axis=1), self.logit_mix)


def mix_with_max_logit(knn: np.ndarray, max_logit: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """sigmoid(z(knn) + z(max logit)), each standardised by ``mix`` (fitted on known validation photos)."""
    z = (knn - mix[0]) / mix[1] + (max_logit - mix[2]) / mix[3]
    return 1 / (1 + np.exp(-z))


def fit_logit_mix(knn: np.ndarray, max_logit: np.ndarray) -> np.ndarray:
    return np.array([knn.mean(), knn.std() + 1e-9, max_logit.mean(), max_logit.std() + 1e-9])


def bank_bytes(rows: int, rank: int, dims: int) -> int:
    return int(rows * rank + dims * rank)


def bank_settings(counts: np.ndarray, dims: int, budget_bytes: int = BUDGET_BYTES) -> list[dict[str, int]]:
    """The bank settings of the grid (``rank``: the bank's dimensions, ``projected`` or not; ``per_class``) whose
    int8 bytes fit ``budget_bytes`` for classes of these training ``counts``, largest first."""
    fits = []
    for rank in RANKS:
        if rank and rank >= dims:
            continue
        for per_class in PER_CLASS:
            size = bank_bytes(int(np.minimum(counts, per_class).sum()), rank or dims, dims if rank else 0)
            if size <= budget_bytes:
                fits.append({"rank": rank or dims, "projected": int(rank > 0), "per_class": per_class,
                             "int8_bytes": size})
    return sorted(fits, key=lambda f: -f["int8_bytes"])


def banks_within_budget(classes: int, dims: int, budget_bytes: int = BUDGET_BYTES) -> list[dict[str, int]]:
    """The bank settings that fit ``budget_bytes`` at ``classes`` species with enough photos each: what validation
    would choose among for a run of that many species."""
    return bank_settings(np.full(classes, max(PER_CLASS)), dims, budget_bytes)


def principal_directions(embeddings: np.ndarray) -> np.ndarray:
    """The principal directions (rows) of the unit training embeddings, strongest first."""
    x = unit(embeddings)
    return np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2]


def fit_knn_bank(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int, rank: int, k: int,
                 seed: int = 0, directions: np.ndarray | None = None) -> KnnBank:
    """A bank of at most ``per_class`` training embeddings of each class (drawn with ``seed``), projected on the
    ``rank`` principal directions of all of them (0: not projected; ``directions``: computed already)."""
    x = unit(embeddings)
    labels = np.asarray(labels)
    projection = None
    if 0 < rank < x.shape[1]:
        vt = principal_directions(embeddings) if directions is None else directions
        projection = vt[: min(rank, len(vt))].T
    rng = np.random.default_rng(seed)
    picked = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                     for c in range(num_classes)]).astype(int))
    bank = unit(x[picked] @ projection) if projection is not None else x[picked]
    return KnnBank(bank, labels[picked], projection, k)


@dataclass
class Mahalanobis:
    means: np.ndarray  # (C, d)
    precision: np.ndarray  # (d, d)
    shrinkage: float
    pooled_classes: int  # classes with fewer than MIN_PER_CLASS training photos

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Minus the squared Mahalanobis distance to the nearest class mean."""
        x = np.asarray(embeddings, np.float64)
        projected = x @ self.precision
        distances = ((projected * x).sum(axis=1)[:, None] - 2 * projected @ self.means.T
                     + ((self.means @ self.precision) * self.means).sum(axis=1))
        return -distances.min(axis=1)


def fit_mahalanobis(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float) -> Mahalanobis:
    x, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    means = np.stack([x[labels == c].mean(axis=0) if counts[c] else np.zeros(x.shape[1]) for c in range(num_classes)])
    pooled = counts >= MIN_PER_CLASS
    deviations = np.concatenate([x[labels == c] - means[c] for c in range(num_classes) if pooled[c]]
                                or [np.zeros((1, x.shape[1]))])
    covariance = deviations.T @ deviations / max(1, len(deviations) - int(pooled.sum()))
    target = np.trace(covariance) / len(covariance) or 1.0
    shrunk = (1 - shrinkage) * covariance + shrinkage * target * np.eye(len(covariance))
    return Mahalanobis(means, np.linalg.pinv(shrunk, hermitian=True), shrinkage,
                       int(((counts > 0) & ~pooled).sum()))


@dataclass
class FeatureScoring:
    """The feature scores fitted on training embeddings and chosen on validation."""

    knn: KnnBank
    mahalanobis: Mahalanobis
    val_auroc: dict[str, float]
    settings: dict[str, float | int]  # what validation chose

    logit_mix: np.ndarray  # fitted on known validation photos (see KnnBank.logit_mix)

    def scores(self, embeddings: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        knn = self.knn.score(embeddings)
        return {"knn": knn, "mahalanobis": self.mahalanobis.score(embeddings),
                "knn+max_logit": mix_with_max_logit(knn, np.asarray(logits, np.float64).max(axis=1), self.logit_mix)}

    def bank_for(self, score: str) -> KnnBank:
        """The bank the exported model needs for ``score``."""
        bank = self.knn
        return KnnBank(bank.bank, bank.bank_labels, bank.projection, bank.k,
                       self.logit_mix if score == "knn+max_logit" else None)


FEATURE_SCORES = ("knn", "mahalanobis", "knn+max_logit")


def fit_feature_scoring(train: np.ndarray, train_labels: np.ndarray, num_classes: int, val_known: np.ndarray,
                        val_unknown: np.ndarray, val_known_logits: np.ndarray, budget_bytes: int = BUDGET_BYTES,
                        seed: int = 0) -> FeatureScoring:
    """Choose on the held-out species' validation photos: the k-NN bank (rank, per class, k) among those within
    ``budget_bytes``, and the Mahalanobis shrinkage. Ties go to the smaller bank."""
    dims = np.asarray(train).shape[1]
    directions = principal_directions(train)
    best: tuple[float, int, KnnBank] | None = None
    counts = np.bincount(np.asarray(train_labels), minlength=num_classes)
    for setting in bank_settings(counts, dims, budget_bytes):
        bank = fit_knn_bank(train, train_labels, num_classes, setting["per_class"],
                            setting["rank"] if setting["projected"] else 0, NEIGHBOURS[0], seed, directions)
        for k in NEIGHBOURS:
            bank.k = k
            value = auroc(bank.score(val_known), bank.score(val_unknown)) or 0.0
            if best is None or (value, -setting["int8_bytes"]) > (best[0], -best[1]):
                best = (value, setting["int8_bytes"], KnnBank(bank.bank, bank.bank_labels, bank.projection, k))
    if best is None:
        raise ValueError(f"no k-NN bank fits {budget_bytes} bytes at {num_classes} classes")
    by_shrinkage = {s: fit_mahalanobis(train, train_labels, num_classes, s) for s in SHRINKAGES}
    maha_auroc = {s: auroc(m.score(val_known), m.score(val_unknown)) or 0.0 for s, m in by_shrinkage.items()}
    shrinkage = max(maha_auroc, key=lambda s: maha_auroc[s])
    knn = best[2]
    mix = fit_logit_mix(knn.score(val_known), np.asarray(val_known_logits, np.float64).max(axis=1))
    return FeatureScoring(knn, by_shrinkage[shrinkage], {"knn": best[0], "mahalanobis": maha_auroc[shrinkage]},
                          {"knn_k": knn.k, "knn_rank": knn.bank.shape[1], "knn_bank_rows": len(knn.bank),
                           "knn_projected": knn.projection is not None, "knn_int8_bytes": knn.int8_bytes(),
                           "mahalanobis_shrinkage": shrinkage,
                           "mahalanobis_pooled_classes": by_shrinkage[shrinkage].pooled_classes}, mix)
