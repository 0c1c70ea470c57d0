"""Export a trained run: SavedModel and TFLite (float and dynamic-range) with softmax, plus the bundle's
labels, preprocessing and model card, and a parity check of every format against Keras on test images."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from fungilib import __version__
from fungilib.clean import load_manifest
from fungilib.errors import FungilibError
from fungilib.fsutil import write_json

PARITY_MAX_ABS_DIFF = 1e-4


@dataclass
class ExportResult:
    bundle: Path
    files: dict[str, int]  # file → bytes
    parity: dict[str, dict[str, float]]


def _parity_images(run_dir: Path, size: int, count: int) -> np.ndarray:
    """Up to ``count`` test-split images of the run's manifest, preprocessed exactly as evaluation does."""
    import tensorflow as tf

    from fungilib.input_pipeline import eval_transform

    summary = json.loads((run_dir / "train_summary.json").read_text())
    manifest, _ = load_manifest(Path(summary["params"]["dataset"]["manifest"]))
    paths = manifest.loc[manifest["split"] == "test", "path"].head(count).tolist()
    if not paths:
        raise FungilibError(f"{run_dir}: no test images for the parity check")
    return np.stack([eval_transform(tf.io.decode_jpeg(tf.io.read_file(p), 3), size).numpy() for p in paths])


def _litert_probs(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [1, *images.shape[1:]])
    interpreter.allocate_tensors()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(rows)


def _compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"top1_agreement": float(np.mean(reference.argmax(1) == other.argmax(1))),
            "max_abs_diff": float(np.abs(reference - other).max())}


def export_run(run_dir: Path, out: Path | None = None, parity_images: int = 16) -> ExportResult:
    """Write the export bundle for ``run_dir`` (default ``run_dir/export``); fail when unquantized parity fails."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import tensorflow as tf

    from fungilib.train import load_trained

    run_dir = Path(run_dir)
    bundle = Path(out) if out else run_dir / "export"
    bundle.mkdir(parents=True, exist_ok=True)
    model, labels, prep = load_trained(run_dir)
    size = int(prep["input_size"])
    inputs = keras.Input((size, size, 3), name="image")
    with_softmax = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(model(inputs)))
    saved = bundle / "saved_model"
    with_softmax.export(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    tflite_f32 = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite_dynamic = converter.convert()
    (bundle / "model_f32.tflite").write_bytes(tflite_f32)
    (bundle / "model_dynamic.tflite").write_bytes(tflite_dynamic)
    images = _parity_images(run_dir, size, parity_images)
    reference = np.asarray(with_softmax.predict(images, verbose=0))
    reloaded = tf.saved_model.load(str(saved))
    parity = {
        "saved_model": _compare(reference, np.asarray(reloaded.serve(tf.constant(images)))),
        "tflite_f32": _compare(reference, _litert_probs(tflite_f32, images)),
        "tflite_dynamic": _compare(reference, _litert_probs(tflite_dynamic, images)),
    }
    parity["images"] = {"count": float(len(images))}
    write_json(bundle / "parity.json", parity)
    for name in ("saved_model", "tflite_f32"):
        if parity[name]["top1_agreement"] < 1.0 or parity[name]["max_abs_diff"] > PARITY_MAX_ABS_DIFF:
            raise FungilibError(f"export parity failed for {name}: {parity[name]} (limit {PARITY_MAX_ABS_DIFF})")
    labels_out = labels[["label", "class_key", "speciesKey", "species", "genus", "family"]].to_dict(orient="records")
    write_json(bundle / "labels.json", labels_out)
    write_json(bundle / "preprocessing.json", {**prep, "output": "probabilities (softmax included)"})
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    summary = json.loads((run_dir / "train_summary.json").read_text())
    card = [
        f"# Model card — {run_dir.name}", "",
        f"- fungilib {__version__}, exported {date.today()}; base {summary['params']['model']['base']}, "
        f"weights {summary['params']['model']['weights']}, input {size} px RGB in [0, 255]",
        f"- {len(labels)} classes; trained on {summary['train_images']} images, validated on {summary['val_images']}",
        "- test split: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("top1", "top3", "macro_f1") if k in metrics),
        f"- parity vs Keras on {len(images)} test images: " + ", ".join(
            f"{k} agreement {v['top1_agreement']:.0%}, max |Δp| {v['max_abs_diff']:.1e}"
            for k, v in parity.items() if k != "images"),
        "- data: GBIF occurrence media; see the clean stage's manifest for per-image licence and rights holder",
    ]
    (bundle / "MODEL_CARD.md").write_text("\n".join(card) + "\n")
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return ExportResult(bundle, files, parity)
