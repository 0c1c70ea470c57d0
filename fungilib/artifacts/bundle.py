"""An export bundle: the page, its model files, labels, preprocessing, the model card and the checks' records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fungilib.artifacts.dataset import LABELS_JSON
from fungilib.artifacts.trained_run import PREPROCESSING as RUN_PREPROCESSING
from fungilib.artifacts.trained_run import PRIOR_SUMMARY

CONFIG = "config.json"
PARITY = "parity.json"
LABELS = LABELS_JSON
PREPROCESSING = RUN_PREPROCESSING  # the run's, with the resize rule and the softmax temperature added
ABOUT = "about.json"
MODEL_CARD = "MODEL_CARD.md"
TOXICITY = "toxicity.json"
PLACE_PRIOR = PRIOR_SUMMARY
WEB_TFLITE = "model_web.tflite"  # what the page runs with LiteRT.js
TFLITE_F32 = "model_f32.tflite"
TFLITE_DYNAMIC = "model_dynamic.tflite"
SAVED_MODEL_DIR = "saved_model"
TFJS_DIR = "tfjs"
TFJS_MODEL = "model.json"
INDEX_PAGE = "index.html"
SERVICE_WORKER = "sw.js"
MODELS_DIR = "models"  # added models, one folder each
# preprocessing.json's key saying the model appends its open-set score to the probabilities (value "appended")
OPEN_SET_OUTPUT = "open_set_output"
MARKERS = (CONFIG, PARITY, LABELS)
# what the page needs of each added model (under models/<id>/)
MODEL_FILES = (CONFIG, LABELS, PREPROCESSING, ABOUT, WEB_TFLITE, PLACE_PRIOR, TOXICITY, MODEL_CARD)


def is_bundle(folder: Path) -> bool:
    """A folder an export wrote (and may replace): it holds the bundle's own files."""
    return all((Path(folder) / name).is_file() for name in MARKERS)


def is_page(folder: Path) -> bool:
    """A folder the page can be served from."""
    return (Path(folder) / INDEX_PAGE).is_file() and (Path(folder) / CONFIG).is_file()


def has_litert_model(folder: Path) -> bool:
    return (Path(folder) / TFLITE_F32).exists() and (Path(folder) / LABELS).exists()


def read_json(folder: Path, name: str, default: Any = None) -> Any:
    """One of the bundle's JSON files (``default`` when it is absent and a default is given)."""
    path = Path(folder) / name
    if default is not None and not path.exists():
        return default
    return json.loads(path.read_text())
