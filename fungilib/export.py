"""Export a trained run as a self-contained bundle: SavedModel, TFLite (float, dynamic-range), TF.js graph
models (float32, float16, uint8 weights), all with softmax; labels, preprocessing, a model card, the offline
web classifier, and a parity check of every format against Keras on test images, recorded in the bundle.

Bundle layout (``RUN/export`` unless told otherwise)::

    index.html app.js preprocess.js rollup.js style.css sw.js manifest.webmanifest icon.svg tf.min.js
    config.json labels.json preprocessing.json MODEL_CARD.md parity.json
    saved_model/  model_f32.tflite  model_dynamic.tflite  tfjs/{float32,float16,uint8}/model.json + shards
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fungilib import __version__
from fungilib.clean import load_manifest
from fungilib.errors import FungilibError
from fungilib.fsutil import safe_id, write_json
from fungilib.input_pipeline import RESIZE_RULE
from fungilib.litert import litert_runner
from fungilib.rollup import SPECIES_THRESHOLD

PARITY_MAX_ABS_DIFF = 1e-4
TFJS_FOLDERS = {"none": "float32", "float16": "float16", "uint8": "uint8"}


@dataclass(kw_only=True)
class ExportParams:
    run: Path  # a finished training run (RUN/model.keras)
    out: Path | None = None  # the bundle folder; default RUN/export
    parity_images: int = 16  # test images each format is checked on
    tfjs_quantization: list[Literal["none", "float16", "uint8"]] = field(
        default_factory=lambda: ["none", "float16", "uint8"])
    web_model: Literal["none", "float16", "uint8"] = "none"  # which TF.js model the page loads
    # the page's LiteRT.js model: float32 (parity with Keras to 1e-4), or float16 weights — half the download at the
    # same speed in LiteRT.js (bench/web_variants.py), probabilities within a few 1e-3 (checked: same top-1) — or
    # int8: weights and activations in 8 bits (calibrated on training photos), a quarter of the download and, for
    # EfficientNet, 3× faster in LiteRT.js (1.4–1.6× native float32); MobileNetV3 runs slower in int8 (its int8
    # graph falls into 20 XNNPACK partitions around its hard-swish ops). Checked on up to ``int8_check_images`` test
    # photos: its top-1 there may fall at most ``int8_max_top1_drop`` below Keras', else the export stops and says so
    # (agreement with Keras is recorded too: an EfficientNetB0 on the sample agreed on 96.6 %, top-1 0.921 vs 0.916).
    litert_web: Literal["float32", "float16", "int8"] = "float32"
    int8_calibration_images: int = 200
    int8_check_images: int = 200
    int8_max_top1_drop: float = 0.02
    # add this run as one more model of an existing bundle (the page then offers a choice: a fast 96 px model and an
    # accurate 224 px one, or models of different regions); ``name`` is what the page calls it (default: the run)
    add_to: Path | None = None
    name: str = ""
    threshold: float = SPECIES_THRESHOLD  # the page names a species (else genus, else family) at or above this
    top_k: int = 5
    toxicity: Path | None = None  # a CSV name,status the user supplies (fungilib.toxicity): the page marks toxic species

    def __post_init__(self) -> None:
        if self.web_model not in self.tfjs_quantization:
            raise FungilibError(f"web_model {self.web_model!r} is not among tfjs_quantization "
                                f"{self.tfjs_quantization}; add it or pick one of them")
        if not 0 < self.threshold < 1:
            raise FungilibError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if self.parity_images < 1 or self.top_k < 1 or self.int8_calibration_images < 1 or self.int8_check_images < 1:
            raise FungilibError("parity_images, top_k, int8_calibration_images and int8_check_images must be at least 1")
        if not 0 <= self.int8_max_top1_drop < 1:
            raise FungilibError(f"int8_max_top1_drop must lie in [0, 1), got {self.int8_max_top1_drop}")


@dataclass
class ExportResult:
    bundle: Path
    files: dict[str, int]  # file → bytes
    parity: dict[str, dict[str, float]]


def split_rows(run_dir: Path, count: int, split: str = "test") -> Any:
    """Up to ``count`` manifest rows of ``split`` of the run's data: the first ones of the test split (the parity
    checks), rows spread over the train split (the int8 model's calibration)."""
    summary = json.loads((run_dir / "train_summary.json").read_text())
    manifest, _ = load_manifest(Path(summary["params"]["dataset"]["manifest"]))
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise FungilibError(f"{run_dir}: no {split} images for the {'parity check' if split == 'test' else 'calibration'}")
    if split == "test":
        return rows.head(count)
    return rows.iloc[np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))]


def _preprocessed(paths: Any, size: int) -> np.ndarray:
    """Photos preprocessed exactly as evaluation does, stacked."""
    from fungilib.input_pipeline import decode_file, eval_transform

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


def _litert_probs(model_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, float]:
    run = litert_runner(model_bytes, images.shape[1])
    start = time.perf_counter()
    probs = run(images)
    return probs, 1000 * (time.perf_counter() - start) / len(images)


def _keras_probs(model: Any, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Batch probabilities (the reference), and the per-image latency of one-image calls."""
    reference = np.asarray(model.predict(images, verbose=0))
    model.predict_on_batch(images[:1])  # warm-up: the compiled predict function
    start = time.perf_counter()
    for image in images:
        model.predict_on_batch(image[None])
    return reference, 1000 * (time.perf_counter() - start) / len(images)


def _compare(reference: np.ndarray, other: np.ndarray, ms: float | None = None) -> dict[str, float]:
    row = {"top1_agreement": float(np.mean(reference.argmax(1) == other.argmax(1))),
           "max_abs_diff": float(np.abs(reference - other).max())}
    if ms is not None:
        row["ms_per_image"] = round(ms, 2)
    return row


def _int8_check(model: Any, tflite: bytes, run_dir: Path, labels: Any, size: int, count: int) -> dict[str, float]:
    """The int8 model against Keras on up to ``count`` test photos: agreement, largest probability difference,
    and each one's top-1 against the photos' labels."""
    images, truth = labelled_test_images(run_dir, size, count, labels)
    reference = np.asarray(model.predict(images, verbose=0))
    probs, ms = _litert_probs(tflite, images)
    return _compare(reference, probs, ms) | {"images": float(len(images)),
                                             "top1": float(np.mean(probs.argmax(1) == truth)),
                                             "top1_keras": float(np.mean(reference.argmax(1) == truth))}


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


HISTORY_COLUMNS = ("loss", "val_loss", "accuracy", "val_accuracy")


def about_model(run_dir: Path, card: str) -> dict[str, Any]:
    """What the page's *About this model* view shows: the model card, the training curves (history.csv) and each
    class's test F1 with its number of test photos (per_class.csv), by label index."""
    import pandas as pd

    about: dict[str, Any] = {"card": card, "history": [], "per_class": {}}
    if (run_dir / "history.csv").exists():
        history = pd.read_csv(run_dir / "history.csv")
        about["history"] = [{"epoch": int(row["epoch"]) + 1, **{k: round(float(row[k]), 4) for k in HISTORY_COLUMNS
                                                                 if k in row and pd.notna(row[k])}}
                            for _, row in history.iterrows()]
    if (run_dir / "per_class.csv").exists():
        table = pd.read_csv(run_dir / "per_class.csv")
        about["per_class"] = {str(int(r["label"])): {"f1": round(float(r["f1"]), 3), "test_photos": int(r["support"])}
                              for _, r in table.iterrows()}
    return about


def _open_set_lines(metrics: dict) -> list[str]:
    if "open_set_auroc" not in metrics:
        return ["- open set: not fitted (no species were held out of training: clean.holdout_classes); every photo "
                "gets the nearest known species"]
    measured = (f"test AUROC known vs never-seen species {metrics['open_set_auroc']:.3f}; never-seen species named "
                f"{metrics['unknown_named_before']:.0%} → {metrics['unknown_named']:.0%}; known photos turned away "
                f"{metrics['known_turned_away']:.0%}")
    if not isinstance(metrics.get("open_set_threshold"), float):
        return [f"- open set: not deployed, the score does not separate known from never-seen species ({measured})"]
    return [f"- open set: photos whose {metrics['open_set_score']} is under {metrics['open_set_threshold']:.3g} are "
            f"answered \"not a species this model knows\" (threshold fitted on validation); {measured}"]


def _model_card(run_dir: Path, labels: Any, size: int, parity: dict, sizes: dict[str, int]) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    summary = json.loads((run_dir / "train_summary.json").read_text())
    params = summary["params"]
    lines = [
        f"# Model card — {run_dir.name}", "",
        f"- fungilib {__version__}, exported {date.today()}",
        f"- base {params['model']['base']}, weights {params['model']['weights']}, freeze {params['model']['freeze']}, "
        f"input {size} px RGB in [0, 255] (scaling inside the model), {summary['epochs_run']} epochs",
        f"- {len(labels)} classes; {summary['train_images']} training and {summary['val_images']} validation images",
        f"- output: softmax of logits / {float(metrics.get('temperature', 1.0)):.3g} (temperature fitted on the "
        "validation split, so probabilities are calibrated for the page's threshold)",
        "- test split: " + (", ".join(f"{k} {metrics[k]:.3f}" for k in ("top1", "top3", "macro_f1", "ece")
                                       if k in metrics) or "not evaluated"),
        *([f"- test split with the place-and-season prior (place_prior.npz, {metrics['prior_bytes'] / 1e3:.0f} kB, "
           f"weight {metrics['prior_weight']:.1f} fitted on validation): "
           + ", ".join(f"{k} {metrics[k + '_with_prior']:.3f}" for k in ("top1", "top3", "macro_f1"))]
          if "top1_with_prior" in metrics else []),
        *_open_set_lines(metrics),
        "- formats and sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()),
        f"- parity vs Keras on {int(parity['images']['count'])} test images: " + "; ".join(
            f"{k} agreement {v['top1_agreement']:.0%}, max |Δp| {v['max_abs_diff']:.1e}"
            for k, v in parity.items() if k != "images" and "top1" not in v),
        *([f"- the page's model is int8 (weights and activations), checked on {web['images']:.0f} test photos: top-1 "
           f"{web['top1']:.3f} (Keras {web['top1_keras']:.3f}), the same species as Keras on {web['top1_agreement']:.1%}, "
           f"max |Δp| {web['max_abs_diff']:.2f}"] if "top1" in (web := parity.get("tflite_web", {})) else []),
    ]
    manifest_dir = Path(params["dataset"]["manifest"])
    try:
        manifest, _ = load_manifest(manifest_dir)
        if "license" in manifest:
            counts = manifest["license"].astype(str).value_counts()
            lines.append("- image licences (training data, images): "
                         + ", ".join(f"{name or 'unstated'} {n}" for name, n in counts.items()))
        if "rightsHolder" in manifest:
            lines.append(f"- {manifest['rightsHolder'].nunique()} rights holders; per-image attribution in "
                         f"{manifest_dir}/manifest.h5")
    except FungilibError:
        lines.append(f"- data: the manifest {manifest_dir} is no longer readable; attribution not counted")
    lines += ["- data source: GBIF occurrence media (Darwin Core Archive) through fungilib ingest → download → clean",
              "- parameters: " + json.dumps(params, default=str)]
    return "\n".join(lines) + "\n"


BUNDLE_MARKERS = ("config.json", "parity.json", "labels.json")


def is_bundle(folder: Path) -> bool:
    """A folder an export wrote (and may replace): it holds the bundle's own files."""
    return all((Path(folder) / name).is_file() for name in BUNDLE_MARKERS)


WEB_TFLITE = "model_web.tflite"  # what the page runs with LiteRT.js


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


def bundle_folder(params: ExportParams) -> Path:
    """Where the bundle goes; refuses a folder that exists and is not a previous bundle (it would be replaced)."""
    bundle = Path(params.out or Path(params.run) / "export").resolve()
    if bundle == Path(bundle.anchor) or bundle in (Path.cwd().resolve(), Path.home().resolve()):
        raise FungilibError(f"out {params.out}: refusing to replace {bundle}; name a new folder for the bundle")
    if bundle.exists() and (not bundle.is_dir() or (any(bundle.iterdir()) and not is_bundle(bundle))):
        raise FungilibError(f"out {params.out}: {bundle} exists and is not an export bundle (no "
                            f"{', '.join(BUNDLE_MARKERS)}); an export replaces its folder, so name a new one")
    return bundle


# what the page needs of each added model (under models/<id>/)
MODEL_FILES = ("config.json", "labels.json", "preprocessing.json", "about.json", WEB_TFLITE, "place_prior.json",
               "toxicity.json", "MODEL_CARD.md")


def _model_entry(bundle: Path, model_id: str, name: str, path: str) -> dict[str, Any]:
    folder = bundle / path if path else bundle
    config = json.loads((folder / "config.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    spec = json.loads((folder / "preprocessing.json").read_text())
    return {"id": model_id, "name": name, "path": path, "species": len(labels), "input_size": spec["input_size"],
            "mb": round((folder / config["litert_model"]).stat().st_size / 1e6, 1), "metrics": config.get("metrics", "")}


def add_model(params: ExportParams) -> ExportResult:
    """Export ``params.run`` as one more model of the bundle ``params.add_to``: its page files go to
    ``models/<id>/`` (exported and parity-checked like any bundle first), the bundle's ``config.json`` lists every
    model, and its service worker gets a new version. The page offers the choice and keeps a model offline once
    picked."""
    from fungilib.webapp import refresh_worker

    bundle = Path(params.add_to).resolve()  # type: ignore[arg-type]
    if not is_bundle(bundle):
        raise FungilibError(f"add_to {params.add_to}: not an export bundle (no {', '.join(BUNDLE_MARKERS)})")
    model_id = safe_id(params.name or Path(params.run).resolve().name)
    if model_id == "main":
        raise FungilibError("name 'main' is the bundle's own model; name the added one otherwise")
    scratch = bundle.parent / f".{bundle.name}.add-{model_id}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        result = export_run(replace(params, add_to=None, out=scratch, tfjs_quantization=["none"], web_model="none"))
        target = bundle / "models" / model_id
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in MODEL_FILES:
            if (scratch / name).exists():
                shutil.copyfile(scratch / name, target / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config = json.loads((bundle / "config.json").read_text())
    models = [m for m in config.get("models", []) if m["id"] not in ("main", model_id)]
    config["models"] = [_model_entry(bundle, "main", config.get("run", "main"), ""), *models,
                        _model_entry(bundle, model_id, params.name or model_id, f"models/{model_id}/")]
    write_json(bundle / "config.json", config)
    refresh_worker(bundle)
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return ExportResult(bundle, files, result.parity)


def export_run(params: ExportParams) -> ExportResult:
    """Write the export bundle for ``params.run``; fail when an unquantized format disagrees with Keras.

    The bundle is built in a sibling folder and moved into place at the end, so a failed export leaves
    the previous bundle as it was.
    """
    if params.add_to is not None:
        return add_model(params)
    run_dir = Path(params.run)  # requests are checked before TensorFlow starts
    if not (run_dir / "model.keras").exists():
        raise FungilibError(f"{run_dir} holds no finished training run (no model.keras); train it first")
    bundle = bundle_folder(params)
    if params.toxicity is not None:  # a malformed list is one line before anything is exported
        from fungilib.toxicity import load_toxicity

        load_toxicity(params.toxicity)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras
    import tensorflow as tf

    from fungilib.tfjs_convert import convert_saved_model
    from fungilib.train import load_trained
    from fungilib.webapp import tfjs_predict_node, write_web_app

    work = bundle.with_name(f".{bundle.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    model, labels, prep = load_trained(run_dir)
    size = int(prep["input_size"])
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    temperature = float(metrics.get("temperature", 1.0))  # fitted on validation at evaluation: calibrated output
    inputs = keras.Input((size, size, 3), name="image")
    logits = keras.layers.Rescaling(1.0 / temperature, name="temperature")(model(inputs))
    with_softmax = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))
    saved = work / "saved_model"
    with_softmax.export(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    tflite_f32 = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite_dynamic = converter.convert()
    (work / "model_f32.tflite").write_bytes(tflite_f32)
    (work / "model_dynamic.tflite").write_bytes(tflite_dynamic)
    calibration = (parity_images(run_dir, size, params.int8_calibration_images, split="train")
                   if params.litert_web == "int8" else None)
    tflite_web = web_tflite(saved, size, params.litert_web, calibration)
    (work / WEB_TFLITE).write_bytes(tflite_web)
    convert_saved_model(saved, {q: work / "tfjs" / TFJS_FOLDERS[q] for q in params.tfjs_quantization})

    images = parity_images(run_dir, size, params.parity_images)
    reference, keras_ms = _keras_probs(with_softmax, images)
    reloaded = tf.saved_model.load(str(saved))
    parity: dict[str, dict[str, float]] = {
        "keras": {"top1_agreement": 1.0, "max_abs_diff": 0.0, "ms_per_image": round(keras_ms, 2)},
        "saved_model": _compare(reference, np.asarray(reloaded.serve(tf.constant(images)))),
        "tflite_f32": _compare(reference, *_litert_probs(tflite_f32, images)),
        "tflite_dynamic": _compare(reference, *_litert_probs(tflite_dynamic, images)),
        # an int8 model is checked on more photos, against their labels too (its probabilities differ by design)
        "tflite_web": (_int8_check(with_softmax, tflite_web, run_dir, labels, size, params.int8_check_images)
                       if params.litert_web == "int8" else _compare(reference, *_litert_probs(tflite_web, images))),
    }
    for quantization in params.tfjs_quantization:
        folder = TFJS_FOLDERS[quantization]
        parity[f"tfjs_{folder}_node"] = _compare(reference, *tfjs_predict_node(work / "tfjs" / folder, images))
    parity["images"] = {"count": float(len(images))}
    write_json(work / "parity.json", parity)
    exact = ["saved_model", "tflite_f32"] + (["tflite_web"] if params.litert_web == "float32" else []) + (
        ["tfjs_float32_node"] if "none" in params.tfjs_quantization else [])
    if params.litert_web == "int8":
        drop = parity["tflite_web"]["top1_keras"] - parity["tflite_web"]["top1"]
        if not drop <= params.int8_max_top1_drop:
            raise FungilibError(
                f"export: the page's int8 model scores top-1 {parity['tflite_web']['top1']:.3f} on "
                f"{parity['tflite_web']['images']:.0f} test photos, Keras {parity['tflite_web']['top1_keras']:.3f} "
                f"(int8_max_top1_drop {params.int8_max_top1_drop}); export with litert_web: float16 or float32")
    elif params.litert_web != "float32" and parity["tflite_web"]["top1_agreement"] < 1.0:
        raise FungilibError(f"export parity failed for the page's {params.litert_web} model: {parity['tflite_web']} "
                            f"(it must name the same species as Keras); export with litert_web: float32")
    for name in exact:
        if parity[name]["top1_agreement"] < 1.0 or not parity[name]["max_abs_diff"] <= PARITY_MAX_ABS_DIFF:  # NaN too
            raise FungilibError(f"export parity failed for {name}: {parity[name]} (limit {PARITY_MAX_ABS_DIFF}); "
                                f"the partial bundle is in {work}")

    labels_out = labels[["label", "class_key", "speciesKey", "species", "genus", "family"]].to_dict(orient="records")
    write_json(work / "labels.json", labels_out)
    write_json(work / "preprocessing.json", {**prep, **{k: v for k, v in RESIZE_RULE.items() if k not in prep},
                                            "output": "probabilities (softmax included)",
                                            "temperature": temperature})
    sizes = {"saved_model": _folder_bytes(saved), "tflite_f32": len(tflite_f32), "tflite_dynamic": len(tflite_dynamic),
             "tflite_web": len(tflite_web)}
    sizes |= {f"tfjs_{TFJS_FOLDERS[q]}": _folder_bytes(work / "tfjs" / TFJS_FOLDERS[q]) for q in params.tfjs_quantization}
    (work / "MODEL_CARD.md").write_text(_model_card(run_dir, labels, size, parity, sizes))
    write_json(work / "about.json", about_model(run_dir, (work / "MODEL_CARD.md").read_text()))

    web_folder = Path("tfjs") / TFJS_FOLDERS[params.web_model]  # the TF.js fallback's model (loaded only if needed)
    prior = run_dir / "place_prior.npz"  # where and when (fungilib.place_prior), with its fitted weight
    if prior.exists():
        from fungilib.place_prior import PlacePrior

        write_json(work / "place_prior.json", PlacePrior.from_bytes(prior.read_bytes()).to_json())
    if params.toxicity is not None:
        from fungilib.toxicity import class_statuses, load_toxicity

        write_json(work / "toxicity.json", {"source": Path(params.toxicity).name,
                                            "status": class_statuses(labels, load_toxicity(params.toxicity))})
    config = {"model": str(web_folder / "model.json"), "litert_model": WEB_TFLITE, "litert_variant": params.litert_web,
              "about": "about.json",
              "threshold": params.threshold,
              "top_k": params.top_k, **({"place_prior": "place_prior.json"} if prior.exists() else {}),
              "run": run_dir.name, "created": str(date.today()), "fungilib": __version__,
              "metrics": ", ".join(f"test {k} {metrics[k]:.2f}" for k in ("top1", "macro_f1") if k in metrics)}
    if params.toxicity is not None:
        config["toxicity"] = "toxicity.json"
    gate = json.loads((run_dir / "open_set.json").read_text()) if (run_dir / "open_set.json").exists() else {}
    if gate.get("threshold") is not None:  # "not a species this model knows", fitted on held-out species
        config["open_set"] = {"score": gate["score"], "threshold": gate["threshold"]}
    write_web_app(work, config, [WEB_TFLITE, "about.json", *(["place_prior.json"] if prior.exists() else []),
                                 *(["toxicity.json"] if params.toxicity is not None else [])])

    old = bundle.with_name(f".{bundle.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if bundle.exists():
        bundle.rename(old)
    work.rename(bundle)
    shutil.rmtree(old, ignore_errors=True)
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return ExportResult(bundle, files, parity)


def formats_table(result: ExportResult) -> Any:
    """One row per format: size, top-1 agreement and max |Δp| against Keras, and per-image latency."""
    import pandas as pd

    def size_of(prefix: str) -> int:
        return sum(v for k, v in result.files.items() if k == prefix or k.startswith(prefix + "/"))

    where = {"keras": None, "saved_model": "saved_model", "tflite_f32": "model_f32.tflite",
             "tflite_dynamic": "model_dynamic.tflite", "tflite_web": WEB_TFLITE, "tfjs_float32_node": "tfjs/float32",
             "tfjs_float16_node": "tfjs/float16", "tfjs_uint8_node": "tfjs/uint8"}
    rows = []
    for name, row in result.parity.items():
        if name == "images":
            continue
        path = where.get(name)
        rows.append({"format": name, "size_mb": round(size_of(path) / 1e6, 3) if path else None,
                     "top1_agreement": row["top1_agreement"], "max_abs_diff": row["max_abs_diff"],
                     "ms_per_image": row.get("ms_per_image")})
    return pd.DataFrame(rows).set_index("format")


def plot_formats(table: Any, path: Path) -> Path:
    """Size against max |Δp| per exported format (log scale), saved as ``path``."""
    import matplotlib.pyplot as plt

    from fungilib.plotting import save_figure

    rows = table.dropna(subset=["size_mb"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.scatter(rows["size_mb"], rows["max_abs_diff"].clip(lower=1e-9), s=40, color="#b5452b")
    for name, row in rows.iterrows():
        ax.annotate(name, (row["size_mb"], max(row["max_abs_diff"], 1e-9)), fontsize=8, xytext=(4, 3),
                    textcoords="offset points")
    ax.axhline(PARITY_MAX_ABS_DIFF, ls="--", lw=1, color="grey")
    ax.set(yscale="log", xlabel="size (MB)", ylabel="max |p − p_keras| on test images",
           title="Exported formats: size against agreement with Keras")
    return save_figure(fig, path)
