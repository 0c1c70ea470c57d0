"""The training stage on stored embeddings (``dataset.embeddings``: an embed stage's folder): only the head trains —
dropout and the logits layer, with the run's optimizer, schedule, label smoothing and class balance — in seconds,
since the frozen base never runs again. The run folder is the usual one, with the head's logits layer
(``head_logits.npz``, kilobytes) where a full run has ``model.keras``: evaluation reads the same stored embeddings,
and export and predict compose the head with its base when they load the run (``TrainedRun.compose_head``: the
network ``freeze: head_only`` would have trained; export checks it against the head on the stored embeddings)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.embeddings import Embeddings, load_embeddings
from fungilib.artifacts.trained_run import RUN_PARAMS, TrainedRun, TrainResult
from fungilib.data_version import source_version
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path
from fungilib.input_pipeline import class_weights
from fungilib.keras_parts import make_optimizer, make_schedule, preprocessing_spec, training_callbacks
from fungilib.params import params_to_dict, write_params
from fungilib.train_params import TrainParams

SMOTE_NEIGHBOURS = 5


def check_embeddings(emb: Embeddings, params: TrainParams) -> None:
    """The stored embeddings belong to this run's manifest, base, weights and input size: one line naming the
    first that differs, never a silent reuse."""
    want = {"base": params.model.base, "weights": params.model.weights, "image_size": params.dataset.image_size,
            "manifest_version": source_version(params.dataset.manifest)}
    for key, value in want.items():
        if emb.info.get(key) != value:
            raise FungilibError(f"{emb.folder}: embeddings of {key} {emb.info.get(key)!r}, the run asks {value!r}; "
                                f"embed again with those settings (or train with the embeddings' {key})")
    if params.model.freeze != "head_only":
        raise FungilibError(f"dataset.embeddings trains the head only: set model.freeze=head_only (not "
                            f"{params.model.freeze})")


def smote(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int, k: int = SMOTE_NEIGHBOURS,
          per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE in feature space (Chawla et al. 2002): each class under ``per_class`` training embeddings (0: the
    largest class's count) is filled up to it with points on the segments between its embeddings and their ``k``
    nearest same-class neighbours. On a long tail of thousands of classes, filling every class up to the largest
    would multiply the set by hundreds: cap it with ``per_class``."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=num_classes)
    target = int(per_class or counts.max())
    new_x, new_y = [x], [y]
    for c in np.flatnonzero((counts > 0) & (counts < target)):
        own = x[y == c].astype(np.float64)
        need = target - len(own)
        if len(own) == 1:
            new_x.append(np.repeat(own, need, axis=0))
        else:
            squares = (own ** 2).sum(axis=1)  # |a - b|² = |a|² + |b|² - 2 a·b: no (n, n, d) array
            distances = squares[:, None] + squares[None, :] - 2 * own @ own.T
            np.fill_diagonal(distances, np.inf)
            neighbours = np.argsort(distances, axis=1)[:, : min(k, len(own) - 1)]
            start = rng.integers(0, len(own), need)
            other = neighbours[start, rng.integers(0, neighbours.shape[1], need)]
            gap = rng.random((need, 1))
            new_x.append(own[start] + gap * (own[other] - own[start]))
        new_y.append(np.full(need, c))
    return np.concatenate(new_x).astype(np.float32), np.concatenate(new_y)


def _dataset(x: np.ndarray, y: np.ndarray, n: int, batch: int, training: bool, seed: int, balance: str) -> Any:
    import tensorflow as tf

    if training and balance == "sampling":
        streams = [tf.data.Dataset.from_tensor_slices((x[y == c], y[y == c])).shuffle(int((y == c).sum()), seed=seed)
                   .repeat() for c in range(n) if (y == c).any()]
        ds = tf.data.Dataset.sample_from_datasets(streams, seed=seed).take(len(y))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if training:
            ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda a, b: (a, tf.one_hot(b, n))).batch(batch).prefetch(2)


def train_on_embeddings(params: TrainParams, run: TrainedRun) -> TrainResult:
    import keras

    emb = load_embeddings(Path(params.dataset.embeddings))
    check_embeddings(emb, params)
    _, labels = load_manifest(params.dataset.manifest)
    n, d, fit = len(labels), params.dataset, params.fit
    write_params(run.folder / RUN_PARAMS, params)
    run.write_inputs(labels, preprocessing_spec(params))
    x_train, y_train = emb.rows("train", views=True)
    x_val, y_val = emb.rows("val")
    if not len(y_train):
        raise FungilibError(f"{emb.folder}: no training embeddings")
    if d.balance == "smote":
        x_train, y_train = smote(x_train, y_train, n, fit.seed, per_class=d.smote_per_class)
    weights = class_weights(y_train, n) if d.balance == "class_weights" else None
    keras.utils.set_random_seed(fit.seed)
    head = keras.Sequential([keras.Input((x_train.shape[1],), name="embedding"),
                             keras.layers.Dropout(params.model.dropout, name="dropout"),
                             keras.layers.Dense(n, name="logits", dtype="float32")], name="head")
    steps = int(np.ceil(len(y_train) / d.batch_size))
    optimizer = make_optimizer(params.optimizer, make_schedule(params.schedule, params.optimizer.learning_rate, steps,
                                                               fit.epochs))
    head.compile(optimizer, loss=keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=params.regularization.label_smoothing),
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(3, name="top3")],
        steps_per_execution=steps)  # a whole epoch per call: a head step is too small to pay Python's round trip
    resumed = run.completed_epochs() if run.backup_dir.exists() else 0
    if not resumed and run.history_file.exists():
        run.history_file.unlink()
    start = time.perf_counter()
    val = _dataset(x_val, y_val, n, d.batch_size, False, fit.seed, "none") if len(y_val) else None
    head.fit(_dataset(x_train, y_train, n, d.batch_size, True, fit.seed, d.balance), validation_data=val,
             epochs=fit.epochs, class_weight=weights, verbose=2,
             callbacks=training_callbacks(run, "main", params, val is not None))
    seconds = time.perf_counter() - start
    if run.best_weights.exists():
        head.load_weights(str(run.best_weights))
    kernel, bias = head.get_layer("logits").get_weights()
    run.model_file.unlink(missing_ok=True)  # (a composed network of an earlier run in this folder: stale now)
    with atomic_path(run.head_logits_file) as tmp:  # the run's model: its base is the embeddings' own
        with tmp.open("wb") as handle:
            np.savez(handle, kernel=kernel, bias=bias)
    history = run.history()
    result = TrainResult(run.head_logits_file, len(history), resumed, round(seconds, 1),
                         round(len(history) * len(y_train) / seconds, 1) if seconds else 0.0,
                         float(history["val_loss"].min()) if "val_loss" in history else None)
    run.write_summary({**result.__dict__, "model": str(result.model), "seed": fit.seed,
                       "params": params_to_dict(params), "train_images": int(len(y_train)),
                       "val_images": int(len(y_val)), "classes": n, "embeddings": str(emb.folder)})
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    return result
