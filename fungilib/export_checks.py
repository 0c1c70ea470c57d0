"""The export's checks: every format against Keras on the run's own test photos (parity), the int8 page model
against the photos' labels, and the TFLite model the page runs with LiteRT.js."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.input_pipeline import decode_file, eval_transform
from fungilib.litert import litert_runner

PARITY_MAX_ABS_DIFF = 1e-4


def split_rows(run_dir: Path, count: int, split: str = "test") -> Any:
    """Up to ``count`` manifest rows of ``split`` of the run's data: the first ones of the test split (the parity
    checks), rows spread over the train split (the int8 model's calibration)."""
    manifest, _ = load_manifest(TrainedRun(run_dir).summary().manifest)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        check = "parity check" if split == "test" else "calibration"
        raise FungilibError(f"{run_dir}: no {split} images for the {check}")
    if split == "test":
        return rows.head(count)
    return rows.iloc[np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))]


def _preprocessed(paths: Any, size: int) -> np.ndarray:
    """Photos preprocessed exactly as evaluation does, stacked."""
    return np.stack([eval_transform(decode_file(p), size).numpy() for p in paths])


def parity_images(run_dir: Path, size: int, count: int, split: str = "test") -> np.ndarray:
    """The images of :func:`split_rows`, preprocessed exactly as evaluation does."""
    return _preprocessed(split_rows(run_dir, count, split)["path"], size)


def labelled_test_images(run_dir: Path, size: int, count: int, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` test photos of the run, preprocessed, and their label indices (``labels``: the run's label
    table, ``class_key`` → ``label``)."""
    rows = split_rows(run_dir, count)
    truth = rows["class_key"].map(dict(zip(labels["class_key"], labels["label"], strict=True))).to_numpy()
    return _preprocessed(rows["path"], size), truth


def litert_probs(model_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, float]:
    run = litert_runner(model_bytes, images.shape[1])
    start = time.perf_counter()
    probs = run(images)
    return probs, 1000 * (time.perf_counter() - start) / len(images)


def keras_probs(model: Any, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Batch probabilities (the reference), and the per-image latency of one-image calls."""
    reference = np.asarray(model.predict(images, verbose=0))
    model.predict_on_batch(images[:1])  # warm-up: the compiled predict function
    start = time.perf_counter()
    for image in images:
        model.predict_on_batch(image[None])
    return reference, 1000 * (time.perf_counter() - start) / len(images)


def compare(reference: np.ndarray, other: np.ndarray, ms: float | None = None,
            classes: int | None = None) -> dict[str, float]:
    """Top-1 agreement (over the first ``classes`` outputs: the probabilities, not an appended open-set score) and
    the largest difference of any output. A photo whose two answers the reference itself scores within
    ``2 × PARITY_MAX_ABS_DIFF`` of each other is a tie, not a disagreement: float noise within the parity limit
    may pick either of two near-equal classes."""
    ref, oth = reference[:, :classes], other[:, :classes]
    ref_top, oth_top = ref.argmax(1), oth.argmax(1)
    rows = np.arange(len(ref))
    tie = ref[rows, ref_top] - ref[rows, oth_top] <= 2 * PARITY_MAX_ABS_DIFF
    row = {"top1_agreement": float(np.mean((ref_top == oth_top) | tie)),
           "max_abs_diff": float(np.abs(reference - other).max())}
    if ms is not None:
        row["ms_per_image"] = round(ms, 2)
    return row


def int8_check(model: Any, tflite: bytes, run_dir: Path, labels: Any, size: int, count: int) -> dict[str, float]:
    """The int8 model against Keras on up to ``count`` test photos: agreement, largest probability difference,
    and each one's top-1 against the photos' labels."""
    images, truth = labelled_test_images(run_dir, size, count, labels)
    reference = np.asarray(model.predict(images, verbose=0))
    probs, ms = litert_probs(tflite, images)
    n = len(labels)
    return compare(reference, probs, ms, classes=n) | {
        "images": float(len(images)), "top1": float(np.mean(probs[:, :n].argmax(1) == truth)),
        "top1_keras": float(np.mean(reference[:, :n].argmax(1) == truth))}


def web_tflite(saved_model: Path, size: int, variant: str = "float32", calibration: np.ndarray | None = None) -> bytes:
    """A TFLite model with a fixed batch of one, for LiteRT.js (which refuses a dynamic batch dimension): the
    exported SavedModel's serving function traced with input [1, size, size, 3]. (Tracing the Keras model itself
    converts, but its variables are not frozen into the file: every output is NaN.) ``variant``: ``float32``;
    ``float16`` weights (half the bytes, computed in float32); ``dynamic`` (int8 weights, activations quantized
    on the fly); ``int8`` (weights and activations, scales calibrated on ``calibration`` images; float input and
    output, so the page feeds it as any other)."""
    import tensorflow as tf

    if variant == "int8" and (calibration is None or not len(calibration)):
        raise FungilibError("an int8 web model needs calibration images (training photos of the run)")

    loaded = tf.saved_model.load(str(saved_model))

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
    def serve(image: Any) -> Any:
        return loaded.serve(image)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], loaded)
    if variant in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        images = np.asarray(calibration, np.float32)
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
