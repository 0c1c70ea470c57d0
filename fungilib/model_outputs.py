"""What a trained network answers for a manifest's photos: its logits, and with them its embedding (the pooled
features the logits are computed from, before dropout) for the feature-space open-set scores."""

from __future__ import annotations

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
