"""Stage 4, train: transfer learning on the manifest, resumable, with the exact label table saved beside the model."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungilib.clean import load_manifest
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, write_json
from fungilib.input_pipeline import (
    EVAL_CROP,
    RESIZE_RULE,
    Augmentation,
    class_weights,
    make_dataset,
    plan_cache,
)
from fungilib.models import spec_for
from fungilib.params import params_to_dict, write_params

MODEL_FILE = "model.keras"


@dataclass
class DatasetParams:
    manifest: Path = Path("")
    image_size: int = 96
    batch_size: int = 32
    # decoded photos kept in memory between epochs: auto = only when they fit cache_budget_mb (see plan_cache)
    cache: Literal["auto", "memory", "none"] = "auto"
    cache_budget_mb: int = 1024
    balance: Literal["none", "class_weights", "sampling"] = "none"


@dataclass
class ModelParams:
    base: str = "MobileNetV3Small"  # a name of fungilib.models.BASES, a TF Hub handle or a SavedModel folder
    weights: str = "none"  # imagenet, none, or a weights file
    dropout: float = 0.2
    freeze: Literal["train_all", "head_only", "top_k", "two_phase"] = "train_all"
    top_k: int = 20  # layers of the base unfrozen by freeze=top_k


@dataclass
class OptimizerParams:
    name: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: float = 0.002
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop


@dataclass
class ScheduleParams:
    name: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: float = 1.0  # cosine: linear warm-up
    step_epochs: int = 5  # step: decay every N epochs …
    step_gamma: float = 0.1  # … by this factor
    plateau_patience: int = 2  # plateau: epochs without val_loss progress before the rate is cut by 10
    head_epochs: int = 2  # two_phase: epochs of head-only warm-up
    finetune_lr_factor: float = 0.1  # two_phase: fine-tuning rate = learning_rate x this


@dataclass
class RegularizationParams:
    label_smoothing: float = 0.1


@dataclass
class FitParams:
    epochs: int = 10
    patience: int = 5  # early stopping on validation loss
    seed: int = 0
    temperature_scaling: bool = True  # fit a softmax temperature on the validation split
    mixed_precision: bool = False  # Keras mixed_float16 (the logits and softmax in float32); the saved model is float32
    jit_compile: bool = False  # XLA; explicit, since Keras' "auto" turns it off under any distribution strategy
    # one device; MirroredStrategy over local devices; MultiWorkerMirroredStrategy across hosts from TF_CONFIG
    # (dataset.batch_size is the global batch: see fungilib.distribution for the batch-size and learning-rate rule)
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    devices: Literal["gpu", "cpu"] = "gpu"  # mirrored: the local GPUs, or logical CPU devices (tests, CPU hosts)
    replicas: int = 0  # mirrored: how many devices (0: every GPU; with devices: cpu, 2)
    worker_timeout_s: float = 120.0  # multi_worker: how long to wait for the other workers (and for each collective)


@dataclass
class TrialParams:
    """Set by an Optuna sweep (never by hand): the study this run is a trial of, where it reports each epoch."""

    storage: str = ""  # empty: not a trial
    study: str = ""
    number: int = -1
    metric: str = "val_accuracy"  # the history column reported after each epoch
    pruner: Literal["median", "hyperband", "none"] = "median"


@dataclass
class TrainParams:
    """One training run: grouped like the params file (dataset, model, optimizer, schedule, augmentation, …)."""

    out: Path
    dataset: DatasetParams = field(default_factory=DatasetParams)
    model: ModelParams = field(default_factory=ModelParams)
    optimizer: OptimizerParams = field(default_factory=OptimizerParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    augmentation: Augmentation = field(default_factory=Augmentation)
    regularization: RegularizationParams = field(default_factory=RegularizationParams)
    fit: FitParams = field(default_factory=FitParams)
    evaluate: bool = True  # evaluate on the test split after training (metrics.json, plots)
    trial: TrialParams = field(default_factory=TrialParams)  # an Optuna sweep's trial (see fungilib.search)

    def __post_init__(self) -> None:
        if self.dataset.cache_budget_mb < 0:
            raise FungilibError(f"dataset.cache_budget_mb must be >= 0, got {self.dataset.cache_budget_mb}")
        if self.fit.epochs < 1 or self.dataset.batch_size < 1 or self.dataset.image_size < 32:
            raise FungilibError("fit.epochs and dataset.batch_size must be >= 1, dataset.image_size >= 32")
        if not 0 <= self.model.dropout < 1 or not 0 <= self.regularization.label_smoothing < 1:
            raise FungilibError("model.dropout and regularization.label_smoothing must be in [0, 1)")
        if self.model.freeze == "two_phase" and self.schedule.head_epochs >= self.fit.epochs:
            raise FungilibError("schedule.head_epochs must be below fit.epochs for freeze=two_phase")
        if self.optimizer.learning_rate <= 0:
            raise FungilibError("optimizer.learning_rate must be > 0")
        if self.fit.replicas < 0 or self.fit.worker_timeout_s <= 0:
            raise FungilibError("fit.replicas must be >= 0 and fit.worker_timeout_s > 0")
        if self.fit.distribution == "multi_worker" and self.trial.storage:
            raise FungilibError("fit.distribution=multi_worker: an Optuna trial trains on one host (use mirrored)")


@dataclass
class TrainResult:
    model: Path
    epochs_run: int
    resumed_from_epoch: int
    seconds: float
    train_images_per_second: float
    best_val_loss: float | None
    skipped: bool = False
    pruned_at_epoch: int = 0  # an Optuna trial stopped by its pruner after this epoch (0: not pruned)


def configure_threads() -> None:
    """Respect FUNGILIB_THREADS (set by sweeps so parallel runs do not oversubscribe the cores)."""
    import tensorflow as tf

    threads = int(os.environ.get("FUNGILIB_THREADS", "0"))
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
        except RuntimeError:
            pass  # already initialised in this process


def apply_freeze(base: Any, freeze: str, top_k: int, pretrained: bool) -> None:
    """Set which base weights train: all, none (head only), or the top ``top_k`` layers.

    BatchNorm layers of a pretrained base stay frozen (and run in inference mode, see build_classifier)."""
    import keras

    if freeze == "head_only":
        base.trainable = False
        return
    base.trainable = True
    layers = getattr(base, "layers", None)
    if freeze == "top_k":
        if layers is None:
            raise FungilibError("freeze=top_k needs a keras.applications base; a TF Hub module is one block")
        for layer in layers[: max(0, len(layers) - top_k)]:
            layer.trainable = False
    if pretrained and layers is not None:
        for layer in layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def make_optimizer(p: OptimizerParams, learning_rate: Any) -> Any:
    import keras

    kwargs: dict[str, Any] = {"learning_rate": learning_rate}
    if p.weight_decay:
        kwargs["weight_decay"] = p.weight_decay
    if p.name == "adam":
        return keras.optimizers.Adam(**kwargs)
    if p.name == "sgd":
        return keras.optimizers.SGD(momentum=p.momentum, **kwargs)
    return keras.optimizers.RMSprop(momentum=p.momentum, **kwargs)


def make_schedule(p: ScheduleParams, lr: float, steps_per_epoch: int, epochs: int) -> Any:
    import keras

    total = max(1, steps_per_epoch * epochs)
    if p.name == "cosine":
        warmup = min(int(p.warmup_epochs * steps_per_epoch), total - 1)
        return keras.optimizers.schedules.CosineDecay(
            lr if warmup == 0 else lr * 0.01, decay_steps=max(1, total - warmup), warmup_target=lr if warmup else None,
            warmup_steps=warmup)
    if p.name == "step":
        bounds = [steps_per_epoch * p.step_epochs * i for i in range(1, max(1, epochs // p.step_epochs) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr * p.step_gamma**i for i in range(len(bounds) + 1)])
    return lr  # constant, and plateau (cut by a callback)


def _callbacks(out: Path, phase: str, params: TrainParams, has_val: bool) -> list[Any]:
    import keras

    monitor = "val_loss" if has_val else "loss"

    class LearningRateLog(keras.callbacks.Callback):
        """The rate the epoch ended at, into the logs (history.csv, TensorBoard): schedules do not log it."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None and "learning_rate" not in logs:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    callbacks = [
        LearningRateLog(),
        *([trial_reporter(params.trial, out)] if params.trial.storage else []),
        # a kill while the epoch's backup is written leaves the previous one (.bkp), which Keras restores from
        keras.callbacks.BackupAndRestore(str(out / "backup" / phase), save_freq="epoch", delete_checkpoint=True,
                                         double_checkpoint=True),
        best_weights_checkpoint(out / "best.weights.h5", monitor),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=params.fit.patience),
        keras.callbacks.TensorBoard(str(out / "logs"), histogram_freq=0, write_graph=False),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
    ]
    if params.schedule.name == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.1,
                                                           patience=params.schedule.plateau_patience))
    return callbacks


PRUNED_FILE = "pruned.json"


def trial_reporter(trial: TrialParams, out: Path) -> Any:
    """A Keras callback that reports ``trial.metric`` after each epoch to the Optuna study and stops training when
    the study's pruner prunes the trial (recorded in ``pruned.json``; the run then ends as a pruned trial)."""
    import keras
    import optuna

    from fungilib.search import make_pruner, open_storage

    study = optuna.load_study(study_name=trial.study, storage=open_storage(trial.storage),
                              pruner=make_pruner(trial.pruner))
    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    live = optuna.trial.Trial(study, trial_id)

    class TrialReport(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(trial.metric)
            if value is None:
                return
            live.report(float(value), epoch)
            if live.should_prune():
                write_json(out / PRUNED_FILE, {"epoch": epoch + 1, "value": float(value), "trial": trial.number})
                # (epochs counted from 1 here and in status.json; the study's steps count from 0)
                self.model.stop_training = True

    return TrialReport()


def _completed_epochs(out: Path) -> int:
    history = out / "history.csv"
    if not history.exists():
        return 0
    try:
        return len(pd.read_csv(history))
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return 0


def preprocessing_spec(params: TrainParams) -> dict[str, Any]:
    """What the exported model expects: the one preprocessing definition that travels with the model."""
    spec = spec_for(params.model.base)
    return {
        "input_size": params.dataset.image_size, "channels": "RGB", "input_range": [0, 255], "dtype": "float32",
        "resize": "shorter side to input_size / crop_fraction, bilinear, antialiased", "crop": "central square",
        "crop_fraction": EVAL_CROP, **RESIZE_RULE, "inside_model": f"scaling '{spec.scaling}' for base {spec.name}",
        "output": "logits (the exported model adds softmax)",
    }


def train(params: TrainParams) -> TrainResult:
    """Train ``params`` into ``params.out``; a rerun with the same folder resumes from the last finished epoch.

    Under ``fit.distribution: multi_worker`` every worker runs this with its own TF_CONFIG; only the chief
    (worker 0) writes the run folder, the others return after the last epoch."""
    out = Path(params.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "train_summary.json"
    if summary_path.exists() and (out / MODEL_FILE).exists():
        done = json.loads(summary_path.read_text())
        return TrainResult(out / MODEL_FILE, done["epochs_run"], done["resumed_from_epoch"], done["seconds"],
                           done["train_images_per_second"], done["best_val_loss"], skipped=True,
                           pruned_at_epoch=done.get("pruned_at_epoch", 0))
    configure_threads()
    from fungilib.distribution import make_placement

    fit, d = params.fit, params.dataset
    placement = make_placement(fit.distribution, fit.devices, fit.replicas, d.batch_size, fit.worker_timeout_s)
    import keras

    keras.utils.set_random_seed(fit.seed)
    if fit.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(params, out, placement)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(params: TrainParams, out: Path, placement: Any) -> TrainResult:
    import keras

    manifest_path = Path(params.dataset.manifest)
    manifest, labels = load_manifest(manifest_path)
    if placement.chief:
        write_params(out / "params.yaml", params)
        labels.to_csv(out / "labels.csv", index=False)
        write_json(out / "labels.json", labels.to_dict(orient="records"))
        write_json(out / "preprocessing.json", preprocessing_spec(params))
    train_rows, val_rows = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    if train_rows.empty:
        raise FungilibError(f"{manifest_path}: no training images")
    n, d, fit = len(labels), params.dataset, params.fit
    multi_worker = placement.distribution == "multi_worker"
    cache = plan_cache([train_rows, val_rows], d.cache, d.cache_budget_mb)

    def make_ds(frame: pd.DataFrame, batch_size: int, training: bool) -> Any:
        if training:
            return make_dataset(frame, n, d.image_size, batch_size, True, params.augmentation, fit.seed,
                                cache.in_memory, d.balance)
        return make_dataset(frame, n, d.image_size, batch_size, False, cache=cache.in_memory)

    if not multi_worker:
        train_ds = make_ds(train_rows, d.batch_size, True)
        val_ds = make_ds(val_rows, d.batch_size, False) if len(val_rows) else None
    weights = class_weights(train_rows["label"].to_numpy(), n) if d.balance == "class_weights" else None
    pretrained = params.model.weights != "none"
    with placement.scope():
        model, base = classifier(params, n, params.model.weights)
    steps = int(np.ceil(len(train_rows) / d.batch_size))
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=params.regularization.label_smoothing,
                                               reduction=None if multi_worker else "sum_over_batch_size")
    metrics = ["accuracy", keras.metrics.TopKCategoricalAccuracy(3, name="top3")]
    resumed = _completed_epochs(out) if (out / "backup").exists() else 0
    if not resumed and (out / "history.csv").exists() and placement.chief:
        (out / "history.csv").unlink()  # a fresh start: no stale rows from an unfinished earlier attempt
    phases = [("main", params.model.freeze, params.optimizer.learning_rate, 0, fit.epochs)]
    if params.model.freeze == "two_phase":
        head = params.schedule.head_epochs
        phases = [("head", "head_only", params.optimizer.learning_rate, 0, head),
                  ("finetune", "train_all", params.optimizer.learning_rate * params.schedule.finetune_lr_factor, head,
                   fit.epochs)]
    start = time.perf_counter()
    images = 0
    for phase, freeze, lr, first_epoch, last_epoch in phases:
        if (out / "backup" / f"{phase}.done").exists():
            continue
        if (out / PRUNED_FILE).exists():  # an Optuna trial its study pruned: no further phase
            break
        apply_freeze(base, freeze, params.model.top_k, pretrained)
        schedule = make_schedule(params.schedule, lr, steps, last_epoch - first_epoch)
        with placement.scope():
            optimizer = make_optimizer(params.optimizer, schedule)
            if multi_worker:
                if fit.mixed_precision:
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                from fungilib.multi_worker_fit import fit_multi_worker

                ran = fit_multi_worker(model, optimizer, loss, train_rows, val_rows, make_ds, placement, out, phase,
                                       first_epoch, last_epoch, d.batch_size, weights,
                                       _multi_worker_callbacks(out, params, len(val_rows) > 0, placement.chief),
                                       fit.jit_compile)
                images += ran * len(train_rows)
            else:
                model.compile(optimizer, loss=loss, metrics=metrics, jit_compile=fit.jit_compile)
                before = _completed_epochs(out)
                model.fit(train_ds, validation_data=val_ds, epochs=last_epoch, initial_epoch=first_epoch,
                          shuffle=False, class_weight=weights, callbacks=_callbacks(out, phase, params, val_ds is not None),
                          verbose=2)
                images += (_completed_epochs(out) - before) * len(train_rows)
        if placement.chief:
            (out / "backup").mkdir(exist_ok=True)
            (out / "backup" / f"{phase}.done").touch()
    seconds = time.perf_counter() - start
    if not placement.chief:  # a multi-worker run's other workers: the chief writes the model and the summary
        return TrainResult(out / MODEL_FILE, 0, resumed, round(seconds, 1), round(images / seconds, 1) if seconds
                           else 0.0, None)
    if (out / "best.weights.h5").exists():
        model.load_weights(str(out / "best.weights.h5"))
    if fit.mixed_precision:  # the saved model computes in float32: exports and parity as without mixed precision
        model = float32_copy(model, params, n)
    with atomic_path(out / MODEL_FILE) as tmp:
        tmp_model = tmp.with_suffix(".keras")
        model.save(tmp_model)
        tmp_model.replace(tmp)
    history = pd.read_csv(out / "history.csv") if (out / "history.csv").exists() else pd.DataFrame()
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    pruned = json.loads((out / PRUNED_FILE).read_text())["epoch"] if (out / PRUNED_FILE).exists() else 0
    result = TrainResult(out / MODEL_FILE, len(history), resumed, round(seconds, 1),
                         round(images / seconds, 1) if seconds else 0.0, best, pruned_at_epoch=pruned)
    shutil.rmtree(out / "backup", ignore_errors=True)
    write_json(out / "train_summary.json", {**result.__dict__, "model": str(result.model), "seed": fit.seed,
                              "params": params_to_dict(params), "train_images": len(train_rows),
                              "cache": cache.__dict__, "replicas": placement.replicas, "workers": placement.workers,
                              "val_images": len(val_rows), "classes": n})
    return result


def classifier(params: TrainParams, num_classes: int, weights: str) -> tuple[Any, Any]:
    """The run's network (``models.build_classifier``), colour jitter and flip inside it when
    ``augmentation.jitter_in`` is ``model`` (they are then training-only layers, off the input pipeline)."""
    from fungilib.models import build_classifier

    aug, m = params.augmentation, params.model
    in_model = aug.enabled and aug.jitter_in == "model"
    return build_classifier(m.base, weights, params.dataset.image_size, num_classes, m.dropout,
                            bn_inference=m.weights != "none", colour_jitter=aug.color_jitter if in_model else 0.0,
                            flip=in_model and aug.flip)


def float32_copy(model: Any, params: TrainParams, num_classes: int) -> Any:
    """The same network built under the float32 policy, holding ``model``'s weights (mixed precision keeps its
    variables in float32, so nothing is rounded)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy, _ = classifier(params, num_classes, "none")
    copy.set_weights(model.get_weights())
    return copy


def best_weights_checkpoint(path: Path, monitor: str) -> Any:
    """Keras' ModelCheckpoint (best only, weights) whose file is replaced whole: it writes a partial file beside
    it and renames it into place, so a run killed mid-write keeps the previous best, never a torn HDF5 file that
    the resumed run cannot open."""
    import keras

    class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
        def _save_model(self, epoch: int, batch: Any, logs: Any) -> None:
            partial = Path(self.filepath)
            partial.unlink(missing_ok=True)
            super()._save_model(epoch, batch, logs)
            if partial.exists():
                os.replace(partial, path)

    return AtomicCheckpoint(str(path.with_name(f".partial-{path.name}")), monitor=monitor, save_best_only=True,
                            save_weights_only=True)


def _multi_worker_callbacks(out: Path, params: TrainParams, has_val: bool, chief: bool) -> list[Any]:
    """The Keras callbacks the multi-worker loop drives: every worker stops early and cuts the rate alike (they
    share the validation loss); only the chief writes the best weights."""
    import keras

    monitor = "val_loss" if has_val else "loss"
    callbacks: list[Any] = [keras.callbacks.EarlyStopping(monitor=monitor, patience=params.fit.patience)]
    if chief:
        callbacks.append(best_weights_checkpoint(out / "best.weights.h5", monitor))
    if params.schedule.name == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.1,
                                                           patience=params.schedule.plateau_patience))
    return callbacks


def load_trained(run_dir: Path) -> tuple[Any, pd.DataFrame, dict[str, Any]]:
    """(Keras model, label table, preprocessing spec) of a finished run folder."""
    import keras

    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).exists():
        raise FungilibError(f"{run_dir}: no {MODEL_FILE}; train first (or the run did not finish)")
    from fungilib.models import colour_jitter_layer_class, hub_layer_class

    model = keras.models.load_model(run_dir / MODEL_FILE, custom_objects={"HubModuleLayer": hub_layer_class(),
                                                                          "ColourJitter": colour_jitter_layer_class()},
                                    safe_mode=False)
    labels = pd.read_csv(run_dir / "labels.csv", dtype={"class_key": str, "speciesKey": str}, keep_default_na=False)
    return model, labels, json.loads((run_dir / "preprocessing.json").read_text())


@dataclass
class TrainRunResult:
    train: TrainResult
    evaluation: Any = None  # fungilib.evaluate.EvalResult, or None with evaluate: false


def train_and_evaluate(params: TrainParams) -> TrainRunResult:
    """Stage train: train into ``params.out``, then (``params.evaluate``) evaluate on the test split."""
    result = train(params)
    # a pruned trial is not worth a test-split evaluation; a multi-worker run's other workers (no summary) leave it
    # to the chief
    if not params.evaluate or result.pruned_at_epoch or not (Path(params.out) / "train_summary.json").exists():
        return TrainRunResult(result)
    from fungilib.evaluate import EvaluateParams, evaluate_run

    return TrainRunResult(result, evaluate_run(EvaluateParams(
        run=params.out, temperature_scaling=params.fit.temperature_scaling)))
