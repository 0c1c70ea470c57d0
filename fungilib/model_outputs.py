"""What a trained network answers for a manifest's photos: its logits, and with them its embedding (the pooled
features the logits are computed from, before dropout) for the feature-space open-set scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungilib.input_pipeline import make_dataset

EMBEDDING_LAYER = "dropout"  # fungilib.models.build_classifier: pool → dropout → logits; the embedding is its input


def with_embeddings(model: Any) -> Any:
    """``model`` answering (logits, embedding)."""
    import keras

    return keras.Model(model.inputs, [model.output, model.get_layer(EMBEDDING_LAYER).input])


def logits_and_embeddings(model: Any, frame: pd.DataFrame, num_classes: int, size: int,
                          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of ``frame``'s photos in manifest order, with the evaluation transform (central crop);
    ``model`` as ``with_embeddings`` returns it."""
    if frame.empty:
        dim = int(model.outputs[1].shape[-1])
        return np.zeros((0, num_classes), np.float32), np.zeros((0, dim), np.float32)
    ds = make_dataset(frame, num_classes, size, batch_size, training=False).map(lambda x, y: x)
    logits, embeddings = model.predict(ds, verbose=0)
    return np.asarray(logits), np.asarray(embeddings)


Outputs = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]  # a frame's photos → (logits, embeddings)


def photo_outputs(model: Any, num_classes: int, size: int, batch_size: int = 64) -> Outputs:
    """(logits, embeddings) of a frame's photos, through the whole network (``model``, or a function returning it:
    then loaded on the first frame that needs it)."""
    nets: list[Any] = []

    def outputs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if not nets:
            nets.append(with_embeddings(model() if callable(model) and not hasattr(model, "predict") else model))
        return logits_and_embeddings(nets[0], frame, num_classes, size, batch_size)

    return outputs


def stored_outputs(logits_layer: tuple[np.ndarray, np.ndarray], folder: Path, fallback: Outputs) -> Outputs:
    """(logits, embeddings) from an embed stage's stored centre-crop embeddings — the model's own logits layer
    (``logits_layer``: its kernel and bias) applied to them, which is what the whole network computes from those
    photos (``composed_parity``, checked at export) — and through ``fallback`` for a frame holding a photo the
    folder lacks."""
    from fungilib.artifacts.embeddings import load_embeddings

    stored = load_embeddings(folder)
    centre = stored.index[stored.index["view"] == 0]
    row_of = dict(zip(centre["media_id"].astype(str), centre["row"], strict=True))
    kernel, bias = logits_layer

    def outputs(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        ids = frame["media_id"].astype(str)
        if frame.empty or not ids.isin(row_of.keys()).all():
            return fallback(frame)
        x = np.asarray(stored.array[[row_of[i] for i in ids]], np.float32).reshape(len(frame), -1)
        return x @ kernel + bias, x

    return outputs


PARITY_PHOTOS = 16  # validation photos a composed network is checked on against its head on their embeddings
PARITY_MAX_LOGIT_DIFF = 1e-3


def composed_parity(model: Any, embeddings: Path, manifest: pd.DataFrame, num_classes: int,
                    size: int) -> dict[str, float]:
    """A head run's composed network (base + head) on a few validation (else training) photos against the head on
    their stored embeddings: the same logits, or one line saying they differ."""
    from fungilib.errors import FungilibError

    split = "val" if (manifest["split"] == "val").any() else "train"
    rows = manifest[manifest["split"] == split].head(PARITY_PHOTOS)
    whole, _ = logits_and_embeddings(with_embeddings(model), rows, num_classes, size)
    stored, _ = stored_outputs(tuple(model.get_layer("logits").get_weights()), embeddings,
                               lambda frame: (np.zeros((0, num_classes)), np.zeros((0, 0))))(rows)
    result = {"photos": float(len(rows)), "max_abs_logit_diff": float(np.abs(whole - stored).max()),
              "top1_agreement": float(np.mean(whole.argmax(1) == stored.argmax(1)))}
    if result["top1_agreement"] < 1 or not result["max_abs_logit_diff"] <= PARITY_MAX_LOGIT_DIFF:
        raise FungilibError(f"{embeddings}: the composed network disagrees with the head on its stored embeddings "
                            f"({result}); embed again (the photos or the base changed since)")
    return result
