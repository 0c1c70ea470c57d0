"""A training run's folder: the model, its exact label table and preprocessing, a typed summary, history,
metrics and the evaluation's tables, the open-set gate and the place-and-season prior."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fungilib.artifacts.dataset import LABELS_CSV, write_label_table
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, write_json

MODEL_FILE = "model.keras"
PREPROCESSING = "preprocessing.json"
RUN_PARAMS = "params.yaml"
SUMMARY = "train_summary.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
BEST_WEIGHTS = "best.weights.h5"
PRUNED = "pruned.json"
OPEN_SET = "open_set.json"
OPEN_SET_BANK = "open_set_bank.npz"  # the k-NN score's training embeddings (fungilib.feature_scores)
HEAD_LOGITS = "head_logits.npz"  # a head trained on stored embeddings: its logits layer (kernel, bias)
PRIOR = "place_prior.npz"
PRIOR_SUMMARY = "place_prior.json"
PER_CLASS = "per_class.csv"
CONFUSIONS = "confusions.csv"
PREDICTIONS = "predictions.csv"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
TRAIN_CLAIM = ".train-claim"  # held by the one process training into the folder


@dataclass
class TrainResult:
    """What a training run did (its model, epochs, speed); the start of its summary."""

    model: Path
    epochs_run: int
    resumed_from_epoch: int
    seconds: float
    train_images_per_second: float
    best_val_loss: float | None
    skipped: bool = False
    pruned_at_epoch: int = 0  # an Optuna trial stopped by its pruner after this epoch (0: not pruned)


@dataclass
class TrainSummary(TrainResult):
    """train_summary.json: what a finished run did, with its resolved parameters."""

    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    train_images: int = 0
    val_images: int = 0
    classes: int = 0
    cache: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    workers: int = 1

    @property
    def manifest(self) -> Path:
        """The manifest the run was trained on."""
        return Path(self.params["dataset"]["manifest"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: Path(v) if k == "model" else v for k, v in data.items() if k in names})


class TrainedRun:
    """One training run's folder (``runs/…/output`` or ``fungilib train --out``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def model_file(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def history_file(self) -> Path:
        return self.folder / HISTORY

    @property
    def best_weights(self) -> Path:
        return self.folder / BEST_WEIGHTS

    @property
    def head_logits_file(self) -> Path:
        return self.folder / HEAD_LOGITS

    @property
    def pruned_file(self) -> Path:
        return self.folder / PRUNED

    @property
    def prior_file(self) -> Path:
        return self.folder / PRIOR

    @property
    def backup_dir(self) -> Path:
        return self.folder / BACKUP_DIR

    @property
    def logs_dir(self) -> Path:
        return self.folder / LOGS_DIR

    @property
    def has_model(self) -> bool:
        """model.keras, or a head trained on stored embeddings (composed with its base when loaded)."""
        return self.model_file.exists() or self.head_logits_file.exists()

    @property
    def finished(self) -> bool:
        return (self.folder / SUMMARY).exists() and self.has_model

    def require_model(self) -> Path:
        if not self.has_model:
            raise FungilibError(f"{self.folder}: no {MODEL_FILE}; train first (or the run did not finish)")
        return self.model_file if self.model_file.exists() else self.head_logits_file

    # readers
    def summary(self) -> TrainSummary:
        path = self.folder / SUMMARY
        if not path.exists():
            raise FungilibError(f"{self.folder}: no {SUMMARY}; train first (or the run did not finish)")
        return TrainSummary.from_dict(json.loads(path.read_text()))

    def summary_or_none(self) -> TrainSummary | None:
        return self.summary() if (self.folder / SUMMARY).exists() else None

    def metrics(self) -> dict[str, Any]:
        """metrics.json, or {} before the run is evaluated."""
        path = self.folder / METRICS
        return json.loads(path.read_text()) if path.exists() else {}

    def history(self) -> Any:
        """history.csv as a table (empty before the first epoch, or when the file is cut)."""
        import pandas as pd

        if not self.history_file.exists():
            return pd.DataFrame()
        try:
            return pd.read_csv(self.history_file)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            return pd.DataFrame()

    def completed_epochs(self) -> int:
        return len(self.history())

    def labels(self) -> Any:
        import pandas as pd

        return pd.read_csv(self.folder / LABELS_CSV, dtype={"class_key": str, "speciesKey": str},
                           keep_default_na=False)

    def preprocessing(self) -> dict[str, Any]:
        try:
            spec = json.loads((self.folder / PREPROCESSING).read_text())
        except (OSError, ValueError) as exc:
            raise FungilibError(f"{self.folder / PREPROCESSING}: not readable ({exc})") from None
        return spec

    def open_set_gate(self) -> dict[str, Any]:
        """open_set.json (the gate fitted on held-out species), or {} when the run has none."""
        path = self.folder / OPEN_SET
        return json.loads(path.read_text()) if path.exists() else {}

    def open_set_bank(self) -> dict[str, Any] | None:
        """The arrays of open_set_bank.npz, or None when the run has none or it is not readable."""
        import numpy as np

        path = self.folder / OPEN_SET_BANK
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError):
            return None

    def head_logits(self) -> tuple[Any, Any] | None:
        """(kernel, bias) of a head trained on stored embeddings, or None for another run or an unreadable file
        (the caller then reads the logits layer of model.keras)."""
        import numpy as np

        try:
            with np.load(self.head_logits_file, allow_pickle=False) as data:
                return data["kernel"], data["bias"]
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def pruned_epoch(self) -> int:
        return json.loads(self.pruned_file.read_text())["epoch"] if self.pruned_file.exists() else 0

    def per_class(self) -> Any:
        import pandas as pd

        path = self.folder / PER_CLASS
        return pd.read_csv(path) if path.exists() else None

    def compose_head(self) -> Any:
        """A head trained on stored embeddings (head_logits.npz) on its frozen base: the network ``freeze:
        head_only`` would have trained — the base built from its weights (cached once), the logits layer set."""
        from fungilib.models import build_classifier

        head = self.head_logits()
        if head is None:
            raise FungilibError(f"{self.head_logits_file}: not readable; train the run again")
        params = self.summary().params
        model_params, image_size = params["model"], int(params["dataset"]["image_size"])
        model, _ = build_classifier(model_params["base"], model_params["weights"], image_size, int(head[0].shape[-1]),
                                    float(model_params["dropout"]), bn_inference=model_params["weights"] != "none")
        model.get_layer("logits").set_weights(list(head))
        return model

    def load_model(self) -> Any:
        """The Keras model (fungilib's custom layers registered), or a head run's composed network; a damaged file
        is one line naming it."""
        import keras

        from fungilib.models import colour_jitter_layer_class, hub_layer_class

        self.require_model()
        if not self.model_file.exists():
            return self.compose_head()
        try:
            return keras.models.load_model(self.model_file, safe_mode=False, custom_objects={
                "HubModuleLayer": hub_layer_class(), "ColourJitter": colour_jitter_layer_class()})
        except Exception as exc:  # Keras raises zip, HDF5, JSON and value errors for a damaged file
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise FungilibError(f"{self.model_file}: not a readable Keras model ({detail}); train the run again "
                                "or restore the file") from None

    def load(self) -> tuple[Any, Any, dict[str, Any]]:
        """(Keras model, label table, preprocessing spec) of a finished run, checked against each other: as many
        labels as the model has outputs, an input size the model takes."""
        labels, spec = self.labels(), self.preprocessing()
        model = self.load_model()
        check_model_files(self.folder, int(model.output_shape[-1]), len(labels), spec, model.input_shape[1])
        return model, labels, spec

    # writers
    def write_inputs(self, labels: Any, preprocessing: dict[str, Any]) -> None:
        write_label_table(self.folder, labels)
        write_json(self.folder / PREPROCESSING, preprocessing)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.folder / SUMMARY, summary)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.folder / METRICS, metrics)

    def write_open_set(self, record: dict[str, Any] | None) -> None:
        if record is None:
            (self.folder / OPEN_SET).unlink(missing_ok=True)
        else:
            write_json(self.folder / OPEN_SET, record)

    def write_open_set_bank(self, arrays: dict[str, Any] | None) -> None:
        import numpy as np

        path = self.folder / OPEN_SET_BANK
        if arrays is None:
            path.unlink(missing_ok=True)
            return
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, **arrays)

    def write_prior(self, data: bytes, summary: dict[str, Any]) -> None:
        self.prior_file.write_bytes(data)
        write_json(self.folder / PRIOR_SUMMARY, summary)

    def write_tables(self, per_class: Any, confusions: Any, predictions: Any) -> None:
        per_class.to_csv(self.folder / PER_CLASS, index=False)
        confusions.to_csv(self.folder / CONFUSIONS, index=False)
        predictions.to_csv(self.folder / PREDICTIONS, index=False)


def check_model_files(folder: Path, outputs: int, labels: int, spec: dict[str, Any], model_size: int | None) -> None:
    """A model, its label table and its preprocessing belong together: one line naming what does not fit."""
    if outputs != labels:
        raise FungilibError(f"{folder}: the label table lists {labels} classes but the model answers {outputs}; the "
                            "folder is damaged (export or train the run again)")
    size = spec.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 4096 or (
            model_size is not None and size != model_size):
        raise FungilibError(f"{folder}: preprocessing.json's input_size {size!r} is not one the model takes"
                            + (f" ({model_size} px)" if model_size else "") + "; the folder is damaged")


def load_trained(run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(Keras model, label table, preprocessing spec) of a finished run folder."""
    return TrainedRun(run_dir).load()
