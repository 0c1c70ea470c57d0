"""``fungilib predict``: top-k species and the rank-aware verdict for photos, from a run or an export bundle.

The photo is read as the web page reads it (EXIF orientation applied, alpha composited on white; JPEG decoded
with the accurate IDCT, as training decodes it) and preprocessed by ``eval_transform``, the one definition
the model was evaluated with. A run folder uses its Keras model with the temperature fitted at evaluation;
an export bundle uses its float TFLite model (LiteRT), whose softmax already holds that temperature.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fungilib.artifacts import bundle as bundle_files
from fungilib.artifacts.trained_run import OPEN_SET_BANK, PREPROCESSING, TrainedRun, check_model_files
from fungilib.errors import FungilibError
from fungilib.input_pipeline import eval_transform
from fungilib.litert import litert_outputs, litert_runner
from fungilib.open_set import UNKNOWN_ANSWER, OpenSetGate
from fungilib.photos import upright_rgb
from fungilib.rollup import SPECIES_THRESHOLD, Answer, RankIndex, answer, top_k

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Prediction:
    path: str
    ok: bool
    error: str = ""
    top: list[dict] = field(default_factory=list)
    answer: Answer | None = None
    open_set_score: float | None = None  # the gate's score of the photo (higher: more like a species it knows)
    probabilities: np.ndarray | None = field(default=None, repr=False)  # every species' (for combining a find)


@dataclass
class Predictor:
    """Probabilities (and the open-set score the model appends, when its gate reads one) for preprocessed
    batches, with the label table and preprocessing they belong to."""

    labels: list[dict]
    preprocessing: dict[str, Any]
    threshold: float
    source: str
    _outputs: Any = None  # images → rows of the model's output: probabilities, then the appended score if any
    open_set: OpenSetGate | None = None  # "not a species this model knows" (fitted at evaluation on held-out species)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, the model's open-set scores or None)."""
        rows = np.asarray(self._outputs(images), np.float64)
        n = len(self.labels)
        return rows[:, :n], (rows[:, n] if rows.shape[1] > n else None)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[0]


def _fallback(gate_config: dict, where: Path, why: str) -> OpenSetGate | None:
    """The gate from the model's probabilities that stands in for a model-computed one, said once on stderr."""
    fallback = OpenSetGate.from_config(gate_config.get("fallback"))
    print(f"fungilib predict: {where} {why}: the open-set gate falls back to "
          f"{fallback.score if fallback else 'none'} (from the probabilities)", file=sys.stderr, flush=True)
    return fallback


def _keras_predictor(run_dir: Path) -> Predictor:
    from fungilib.feature_scores import KnnBank
    from fungilib.model_outputs import EMBEDDING_LAYER
    from fungilib.models import with_open_set_score

    trained = TrainedRun(run_dir)
    model, labels, prep = trained.load()
    temperature = float(trained.metrics().get("temperature", 1.0))
    config = trained.open_set_gate()
    gate, bank = OpenSetGate.from_config(config or None), None
    if gate is not None and gate.from_model:
        arrays = trained.open_set_bank()
        bank = KnnBank.from_arrays(arrays) if arrays is not None else None
        dims = int(model.get_layer(EMBEDDING_LAYER).input.shape[-1])
        if bank is None or bank.dims != dims:
            gate, bank = _fallback(config, run_dir / OPEN_SET_BANK, "is missing or unreadable" if bank is None else
                                   f"holds {bank.dims}-dimensional embeddings, the model {dims}"), None
    net = with_open_set_score(model, temperature, bank)

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(net.predict_on_batch(images.astype(np.float32)))

    return Predictor(labels.to_dict(orient="records"), prep, SPECIES_THRESHOLD,
                     f"Keras {trained.model_file} (temperature {temperature:.3g})", run, gate)


def _tflite_predictor(bundle: Path) -> Predictor:
    prep = bundle_files.read_json(bundle, PREPROCESSING)
    model_file = bundle / bundle_files.TFLITE_F32
    labels = bundle_files.read_json(bundle, bundle_files.LABELS)
    config = bundle_files.read_json(bundle, bundle_files.CONFIG, default={})
    gate_config = config.get("open_set") or {}
    gate = OpenSetGate.from_config(gate_config or None)
    outputs = litert_outputs(model_file.read_bytes())
    # the open-set score the exported model appends to its probabilities (preprocessing.json says so)
    appended = prep.get(bundle_files.OPEN_SET_OUTPUT) == "appended"
    check_model_files(bundle, outputs - int(appended), len(labels), prep, None)
    if gate is not None and gate.from_model and not appended:
        gate = _fallback(gate_config, model_file, "answers no open-set score")
    run = litert_runner(model_file.read_bytes(), int(prep["input_size"]), batch_size=16)
    return Predictor(labels, prep, float(config.get("threshold", SPECIES_THRESHOLD)), f"TFLite {model_file}", run,
                     gate)


def load_predictor(model: Path) -> Predictor:
    """A run folder (``model.keras``), an export bundle (``model_f32.tflite``), or a run holding ``export/``."""
    model = Path(model)
    if TrainedRun(model).has_model:
        return _keras_predictor(model)
    for bundle in (model, model / "export"):
        if bundle_files.has_litert_model(bundle):
            return _tflite_predictor(bundle)
    raise FungilibError(f"{model} holds no model: pass a training run folder (model.keras) or an export bundle "
                        "(model_f32.tflite, labels.json)")


def read_photo(path: Path) -> np.ndarray:
    """uint8 RGB as shown: EXIF orientation applied, transparency composited on white."""
    with Image.open(path) as img:
        img.load()
        return np.asarray(upright_rgb(img))


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given (a bad one is reported later), folders searched recursively for image suffixes."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.append(item)
    return found


GROUP_MAX_PIXELS = 512 * 512  # larger photos are prepared one by one as they are decoded: memory stays bounded


def _regular_file(path: Path) -> str:
    """Why ``path`` is not a photo to read ('' when it is a regular file): a FIFO or a device would block."""
    if not path.exists():
        return "no such file"
    return "" if path.is_file() else "not a regular file (a folder, FIFO, socket or device)"


def _decoded(path: Path, size: int, transform: Any) -> tuple[np.ndarray | None, str]:
    """(the photo as shown — or, when it is larger than GROUP_MAX_PIXELS, already the model's input — , error)."""
    refused = _regular_file(Path(path))
    if refused:
        return None, refused
    try:
        pixels = read_photo(path)
    except FileNotFoundError:
        return None, "no such file"
    except Exception as exc:  # Pillow raises many types for what is not a readable picture
        return None, f"not a readable image ({type(exc).__name__})"
    if pixels.shape[0] * pixels.shape[1] > GROUP_MAX_PIXELS:  # a camera photo: never hold hundreds of them whole
        return transform(pixels[None]).numpy()[0], ""
    return pixels, ""


def prepare_batch(pixels: list[np.ndarray], transform: Any, size: int | None = None) -> np.ndarray:
    """The model's inputs for decoded photos, in order: photos of one size go through ``eval_transform`` together
    (a download resized to one max_side holds few distinct sizes), which costs a fraction of one call per photo.
    Photos already prepared (``size`` × ``size`` float inputs) are taken as they are."""
    out: list[np.ndarray | None] = [None] * len(pixels)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(pixels):
        if size is not None and x.dtype == np.float32 and x.shape == (size, size, 3):
            out[i] = x
            continue
        by_shape.setdefault(x.shape, []).append(i)
    for indices in by_shape.values():
        batch = transform(np.stack([pixels[i] for i in indices])).numpy()
        for i, prepared in zip(indices, batch, strict=True):
            out[i] = prepared
    return np.stack(out)  # type: ignore[arg-type]


def iter_predictions(inputs: Iterable[Path], model: Path, top: int = 5, threshold: float | None = None,
                     batch_size: int = 512, workers: int | None = None, progress: bool | None = False,
                     no_open_set: bool = False, predictor: Predictor | None = None) -> Iterator[Prediction]:
    """Predictions for photos and folders of photos, in input order, as they are ready (a stream: nothing is held
    back until the end). Photos are decoded in parallel threads (Pillow releases the GIL) while the previous batch
    is prepared and run through the model; photos of one size are resized and cropped together.
    ``progress=None`` shows a bar on a terminal only. A photo the model's open-set gate turns away is answered
    "unknown" (not a species this model knows; the top list then holds the nearest known species), unless
    ``no_open_set``."""
    import os

    import tensorflow as tf
    from tqdm.auto import tqdm

    predictor = predictor or load_predictor(model)
    size = int(predictor.preprocessing["input_size"])
    cut = predictor.threshold if threshold is None else threshold
    transform = tf.function(lambda pixels: eval_transform(pixels, size),
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    paths = expand_inputs(inputs)
    ranks = RankIndex(predictor.labels)
    gate = None if no_open_set else predictor.open_set
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    chunks = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), unit="photo", desc="predicting",
                                                    disable=progress is False if progress is not None else None,
                                                    file=sys.stderr) as bar:
        ahead = [pool.submit(_decoded, p, size, transform) for p in chunks[0]] if chunks else []
        for n, chunk in enumerate(chunks):
            decoded = [f.result() for f in ahead]
            ahead = ([pool.submit(_decoded, p, size, transform) for p in chunks[n + 1]]  # decoded while this runs
                     if n + 1 < len(chunks) else [])
            good = [i for i, (x, _) in enumerate(decoded) if x is not None]
            probs, model_scores = (predictor.outputs(prepare_batch([decoded[i][0] for i in good], transform, size))  # type: ignore[misc]
                                   if good else ([], None))
            by_index = dict(zip(good, probs, strict=True))
            score_of = dict(zip(good, model_scores, strict=True)) if model_scores is not None else {}
            for i, path in enumerate(chunk):
                if i not in by_index:
                    yield Prediction(str(path), ok=False, error=decoded[i][1])
                    continue
                p, model_score = by_index[i], score_of.get(i)
                yield Prediction(str(path), ok=True, top=top_k(p, predictor.labels, top),
                                 answer=answer(p, ranks, cut, gate, model_score=model_score),
                                 open_set_score=float(gate.score_of(p, model_score)) if gate else None,
                                 probabilities=p)
            bar.update(len(chunk))


def predict_files(inputs: Iterable[Path], model: Path, top: int = 5, threshold: float | None = None,
                  batch_size: int = 512) -> list[Prediction]:
    """All predictions at once (see ``iter_predictions`` for the stream the command prints)."""
    return list(iter_predictions(inputs, model, top, threshold, batch_size))


def format_one(p: Prediction, top: int) -> str:
    """One photo's lines of the table: the verdict, then the top species with genus and family."""
    if not p.ok:
        return f"{p.path}\n  error: {p.error}"
    a = p.answer
    verdict = (f"{a.rank} {a.name} ({a.probability:.1%})" if a and a.rank not in ("none", "unknown")
               else f"{UNKNOWN_ANSWER}; the nearest known species:" if a and a.rank == "unknown"
               else f"not sure (best species {a.probability:.1%})" if a else "")
    lines = [f"{p.path}\n  → {verdict}"]
    for i, row in enumerate(p.top[:top], 1):
        lines.append(f"  {i}. {row.get('species') or row.get('class_key')}  {row['probability']:.1%}"
                     f"   ({row.get('genus') or '?'}, {row.get('family') or '?'})")
    return "\n".join(lines)


def as_json(p: Prediction) -> dict:
    return {"path": p.path, "ok": p.ok, "error": p.error, "answer": p.answer.__dict__ if p.answer else None,
            "top": p.top, **({"open_set_score": p.open_set_score} if p.open_set_score is not None else {})}


def format_table(predictions: list[Prediction], top: int) -> str:
    return "\n".join(format_one(p, top) for p in predictions)
