"""Export a trained run as a self-contained bundle: SavedModel, TFLite (float32, dynamic-range), the page's
LiteRT.js model (float32, float16 or int8), TF.js graph models (float32, float16, uint8 weights), all with softmax
after the fitted temperature; labels, preprocessing, the model card and About view, the place prior, the toxicity
list and the open-set gate; the offline web classifier; and a parity check of every format against Keras on the
run's test photos, recorded in the bundle. A bundle can hold more models (``add_to``: ``models/<id>/``).

Bundle layout (``RUN/export`` unless told otherwise; names in fungilib.artifacts.bundle)::

    index.html *.js style.css sw.js manifest.webmanifest icon.svg tf.min.js litert/
    config.json labels.json preprocessing.json MODEL_CARD.md about.json parity.json
    [place_prior.json] [toxicity.json] [models/<id>/…]
    saved_model/  model_f32.tflite  model_dynamic.tflite  model_web.tflite  tfjs/{float32,float16,uint8}/
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fungilib import __version__
from fungilib.artifacts import bundle as bundle_files
from fungilib.artifacts.trained_run import OPEN_SET_BANK, PREPROCESSING, TrainedRun
from fungilib.errors import FungilibError
from fungilib.export_checks import (
    PARITY_MAX_ABS_DIFF,
    compare,
    int8_check,
    keras_probs,
    litert_probs,
    parity_images,
    web_tflite,
)
from fungilib.feature_scores import KnnBank
from fungilib.fsutil import safe_id, write_json
from fungilib.input_pipeline import RESIZE_RULE
from fungilib.model_card import about_model, base_origin, model_card
from fungilib.models import with_open_set_score
from fungilib.open_set import FROM_MODEL, OpenSetGate
from fungilib.place_prior import PlacePrior
from fungilib.rollup import SPECIES_THRESHOLD
from fungilib.toxicity import class_statuses, load_toxicity

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
    # a CSV name,status the user supplies (fungilib.toxicity): the page marks toxic species
    toxicity: Path | None = None

    def __post_init__(self) -> None:
        if self.web_model not in self.tfjs_quantization:
            raise FungilibError(f"web_model {self.web_model!r} is not among tfjs_quantization "
                                f"{self.tfjs_quantization}; add it or pick one of them")
        if not 0 < self.threshold < 1:
            raise FungilibError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if self.parity_images < 1 or self.top_k < 1 or self.int8_calibration_images < 1 or self.int8_check_images < 1:
            raise FungilibError("parity_images, top_k, int8_calibration_images and int8_check_images must be at "
                                "least 1")
        if not 0 <= self.int8_max_top1_drop < 1:
            raise FungilibError(f"int8_max_top1_drop must lie in [0, 1), got {self.int8_max_top1_drop}")


@dataclass
class ExportResult:
    bundle: Path
    files: dict[str, int]  # file → bytes
    parity: dict[str, dict[str, float]]


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def bundle_folder(params: ExportParams) -> Path:
    """Where the bundle goes; refuses a folder that exists and is not a previous bundle (it would be replaced)."""
    bundle = Path(params.out or Path(params.run) / "export").resolve()
    if bundle == Path(bundle.anchor) or bundle in (Path.cwd().resolve(), Path.home().resolve()):
        raise FungilibError(f"out {params.out}: refusing to replace {bundle}; name a new folder for the bundle")
    if bundle.exists() and (not bundle.is_dir() or (any(bundle.iterdir()) and not bundle_files.is_bundle(bundle))):
        raise FungilibError(f"out {params.out}: {bundle} exists and is not an export bundle (no "
                            f"{', '.join(bundle_files.MARKERS)}); an export replaces its folder, so name a new one")
    return bundle


def _model_entry(bundle: Path, model_id: str, name: str, path: str) -> dict[str, Any]:
    folder = bundle / path if path else bundle
    config = bundle_files.read_json(folder, bundle_files.CONFIG)
    labels = bundle_files.read_json(folder, bundle_files.LABELS)
    spec = bundle_files.read_json(folder, PREPROCESSING)
    return {"id": model_id, "name": name, "path": path, "species": len(labels), "input_size": spec["input_size"],
            "mb": round((folder / config["litert_model"]).stat().st_size / 1e6, 1), "metrics": config.get("metrics",
                                                                                                          "")}


def add_model(params: ExportParams) -> ExportResult:
    """Export ``params.run`` as one more model of the bundle ``params.add_to``: its page files go to
    ``models/<id>/`` (exported and parity-checked like any bundle first), the bundle's ``config.json`` lists every
    model, and its service worker gets a new version. The page offers the choice and keeps a model offline once
    picked."""
    from fungilib.webapp import refresh_worker

    bundle = Path(params.add_to).resolve()  # type: ignore[arg-type]
    if not bundle_files.is_bundle(bundle):
        raise FungilibError(f"add_to {params.add_to}: not an export bundle (no {', '.join(bundle_files.MARKERS)})")
    model_id = safe_id(params.name or Path(params.run).resolve().name)
    if model_id == "main":
        raise FungilibError("name 'main' is the bundle's own model; name the added one otherwise")
    scratch = bundle.parent / f".{bundle.name}.add-{model_id}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        result = export_run(replace(params, add_to=None, out=scratch, tfjs_quantization=["none"], web_model="none"))
        target = bundle / bundle_files.MODELS_DIR / model_id
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in bundle_files.MODEL_FILES:
            if (scratch / name).exists():
                shutil.copyfile(scratch / name, target / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config = bundle_files.read_json(bundle, bundle_files.CONFIG)
    models = [m for m in config.get("models", []) if m["id"] not in ("main", model_id)]
    config["models"] = [_model_entry(bundle, "main", config.get("run", "main"), ""), *models,
                        _model_entry(bundle, model_id, params.name or model_id,
                                     f"{bundle_files.MODELS_DIR}/{model_id}/")]
    write_json(bundle / bundle_files.CONFIG, config)
    refresh_worker(bundle)
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return ExportResult(bundle, files, result.parity)


def open_set_bank(run: TrainedRun, gate: dict[str, Any]) -> KnnBank | None:
    """The k-NN bank of a deployed gate the model computes (None for a gate of the probabilities, or none). A run
    whose bank is missing exports the fallback gate of its probabilities, and says so."""
    if gate.get("threshold") is None or gate.get("score") not in FROM_MODEL:
        return None
    arrays = run.open_set_bank()
    if arrays is None:
        fallback = (gate.get("fallback") or {}).get("score", "none")
        print(f"fungilib export: {run.folder / OPEN_SET_BANK} is missing or unreadable: the page's open-set gate "
              f"falls back to {fallback} (from the probabilities)", file=sys.stderr, flush=True)
        return None
    return KnnBank.from_arrays(arrays)


def _composed_head_parity(run: TrainedRun, model: Any, num_classes: int, size: int) -> dict[str, float] | None:
    """A head trained on stored embeddings, composed with its base at load: its logits on a few validation photos
    against the head's on their stored embeddings (one line and no bundle when they differ); None for other runs."""
    if run.model_file.exists():
        return None
    from fungilib.artifacts.dataset import load_manifest
    from fungilib.model_outputs import composed_parity

    summary = run.summary()
    manifest, _ = load_manifest(summary.manifest)
    return composed_parity(model, Path(summary.params["dataset"]["embeddings"]), manifest, num_classes, size)


def export_run(params: ExportParams) -> ExportResult:
    """Write the export bundle for ``params.run``; fail when an unquantized format disagrees with Keras.

    The bundle is built in a sibling folder and moved into place at the end, so a failed export leaves
    the previous bundle as it was.
    """
    if params.add_to is not None:
        return add_model(params)
    run_dir = Path(params.run)  # requests are checked before TensorFlow starts
    run = TrainedRun(run_dir)
    if not run.has_model:
        raise FungilibError(f"{run_dir} holds no finished training run (no {run.model_file.name}); train it first")
    bundle = bundle_folder(params)
    if params.toxicity is not None:  # a malformed list is one line before anything is exported
        load_toxicity(params.toxicity)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    from fungilib.tfjs_convert import convert_saved_model
    from fungilib.webapp import tfjs_predict_node, write_web_app

    model, labels, prep = run.load()  # checked together (labels against outputs) before anything is written
    composed = _composed_head_parity(run, model, len(labels), int(prep["input_size"]))
    work = bundle.with_name(f".{bundle.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    size = int(prep["input_size"])
    metrics = run.metrics()
    temperature = float(metrics.get("temperature", 1.0))  # fitted on validation at evaluation: calibrated output
    gate = run.open_set_gate()
    bank = open_set_bank(run, gate)  # a gate the model computes: its k-NN bank goes inside the model
    with_softmax = with_open_set_score(model, temperature, bank)
    n = len(labels)
    saved = work / bundle_files.SAVED_MODEL_DIR
    with_softmax.export(str(saved), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    tflite_f32 = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite_dynamic = converter.convert()
    (work / bundle_files.TFLITE_F32).write_bytes(tflite_f32)
    (work / bundle_files.TFLITE_DYNAMIC).write_bytes(tflite_dynamic)
    calibration = (parity_images(run_dir, size, params.int8_calibration_images, split="train")
                   if params.litert_web == "int8" else None)
    tflite_web = web_tflite(saved, size, params.litert_web, calibration)
    (work / bundle_files.WEB_TFLITE).write_bytes(tflite_web)
    convert_saved_model(saved, {q: work / bundle_files.TFJS_DIR / TFJS_FOLDERS[q] for q in params.tfjs_quantization})

    images = parity_images(run_dir, size, params.parity_images)
    reference, keras_ms = keras_probs(with_softmax, images)
    reloaded = tf.saved_model.load(str(saved))
    parity: dict[str, dict[str, float]] = {
        "keras": {"top1_agreement": 1.0, "max_abs_diff": 0.0, "ms_per_image": round(keras_ms, 2)},
        "saved_model": compare(reference, np.asarray(reloaded.serve(tf.constant(images))), classes=n),
        "tflite_f32": compare(reference, *litert_probs(tflite_f32, images), classes=n),
        "tflite_dynamic": compare(reference, *litert_probs(tflite_dynamic, images), classes=n),
        # an int8 model is checked on more photos, against their labels too (its probabilities differ by design)
        "tflite_web": (int8_check(with_softmax, tflite_web, run_dir, labels, size, params.int8_check_images)
                       if params.litert_web == "int8" else compare(reference, *litert_probs(tflite_web, images),
                                                                   classes=n)),
    }
    for quantization in params.tfjs_quantization:
        folder = TFJS_FOLDERS[quantization]
        parity[f"tfjs_{folder}_node"] = compare(reference, *tfjs_predict_node(work / bundle_files.TFJS_DIR / folder,
                                                                              images), classes=n)
    parity["images"] = {"count": float(len(images))}
    if composed is not None:  # a head run: its base + head against the head on the stored embeddings
        parity["composed_head"] = composed
    write_json(work / bundle_files.PARITY, parity)
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
    write_json(work / bundle_files.LABELS, labels_out)
    write_json(work / PREPROCESSING, {**prep, **{k: v for k, v in RESIZE_RULE.items() if k not in prep},
                                            "output": "probabilities (softmax included)" + (
                                                ", then the open-set score" if bank else ""),
                                            **({bundle_files.OPEN_SET_OUTPUT: "appended"} if bank else {}),
                                            "temperature": temperature})
    sizes = {"saved_model": _folder_bytes(saved), "tflite_f32": len(tflite_f32), "tflite_dynamic": len(tflite_dynamic),
             "tflite_web": len(tflite_web)}
    sizes |= {f"tfjs_{TFJS_FOLDERS[q]}": _folder_bytes(work / bundle_files.TFJS_DIR / TFJS_FOLDERS[q])
              for q in params.tfjs_quantization}
    card = model_card(run_dir, labels, size, parity, sizes)
    (work / bundle_files.MODEL_CARD).write_text(card)
    write_json(work / bundle_files.ABOUT, about_model(run_dir, card))

    # the TF.js fallback's model (loaded only if needed)
    web_folder = Path(bundle_files.TFJS_DIR) / TFJS_FOLDERS[params.web_model]
    prior = run.prior_file  # where and when (fungilib.place_prior), with its fitted weight
    if prior.exists():
        write_json(work / bundle_files.PLACE_PRIOR, PlacePrior.from_bytes(prior.read_bytes()).to_json())
    if params.toxicity is not None:
        write_json(work / bundle_files.TOXICITY, {"source": Path(params.toxicity).name,
                                            "status": class_statuses(labels, load_toxicity(params.toxicity))})
    base = run.summary().params["model"]  # the base and where its weights come from, stated in the bundle
    config = {"model": str(web_folder / bundle_files.TFJS_MODEL), "litert_model": bundle_files.WEB_TFLITE,
              "litert_variant": params.litert_web, "about": bundle_files.ABOUT, "threshold": params.threshold,
              "top_k": params.top_k, **({"place_prior": bundle_files.PLACE_PRIOR} if prior.exists() else {}),
              "observation_rule": metrics.get("observation_rule", "mean_log"),  # a find's photos: chosen on validation
              "run": run_dir.name, "created": str(date.today()), "fungilib": __version__,
              "base": {"name": base["base"], "weights": base["weights"],
                       "origin": base_origin(base["base"], base["weights"])},
              "metrics": ", ".join(f"test {k} {metrics[k]:.2f}" for k in ("top1", "macro_f1") if k in metrics)}
    if params.toxicity is not None:
        config["toxicity"] = bundle_files.TOXICITY
    if gate.get("threshold") is not None:  # "not a species this model knows", fitted on held-out species
        deployed = OpenSetGate(gate["score"], gate["threshold"])
        config["open_set"] = ({**deployed.as_config(), "fallback": gate.get("fallback")} if bank is not None
                              else deployed.as_config() if not deployed.from_model
                              else gate.get("fallback"))  # (a run without its bank: the probabilities' gate)
    write_web_app(work, config, [bundle_files.WEB_TFLITE, bundle_files.ABOUT,
                                 *([bundle_files.PLACE_PRIOR] if prior.exists() else []),
                                 *([bundle_files.TOXICITY] if params.toxicity is not None else [])])

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

    where = {"keras": None, "saved_model": bundle_files.SAVED_MODEL_DIR, "tflite_f32": bundle_files.TFLITE_F32,
             "tflite_dynamic": bundle_files.TFLITE_DYNAMIC, "tflite_web": bundle_files.WEB_TFLITE,
             "tfjs_float32_node": "tfjs/float32",
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
