"""The Keras parts of a training run: threads, freezing, optimizer, schedule, the callbacks both training loops
use, the Optuna trial's reporter and the network itself."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.fsutil import write_json
from fungilib.input_pipeline import EVAL_CROP, RESIZE_RULE
from fungilib.models import build_classifier, imagenet_unavailable, spec_for
from fungilib.optuna_storage import make_pruner, open_storage
from fungilib.train_params import OptimizerParams, ScheduleParams, TrainParams, TrialParams


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
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds,
                                                                 [lr * p.step_gamma**i for i in range(len(bounds) + 1)])
    return lr  # constant, and plateau (cut by a callback)


def training_callbacks(run: TrainedRun, phase: str, params: TrainParams, has_val: bool, chief: bool = True,
                       multi_worker: bool = False) -> list[Any]:
    """The Keras callbacks of one training phase, for both loops. Every worker of a multi-worker run stops early
    and cuts the rate alike (they share the validation loss); only the chief writes the best weights. The
    one-host loop also logs the rate, backs each epoch up, reports to an Optuna trial and writes history.csv and
    TensorBoard (the multi-worker loop does those itself)."""
    import keras

    monitor = "val_loss" if has_val else "loss"
    callbacks: list[Any] = [best_weights_checkpoint(run.best_weights, monitor)] if chief else []
    callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=params.fit.patience))
    if params.schedule.name == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.1,
                                                           patience=params.schedule.plateau_patience))
    if multi_worker:
        return callbacks

    class LearningRateLog(keras.callbacks.Callback):
        """The rate the epoch ended at, into the logs (history.csv, TensorBoard): schedules do not log it."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None and "learning_rate" not in logs:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return [
        LearningRateLog(),
        *([trial_reporter(params.trial, run)] if params.trial.storage else []),
        # a kill while the epoch's backup is written leaves the previous one (.bkp), which Keras restores from
        keras.callbacks.BackupAndRestore(str(run.backup_dir / phase), save_freq="epoch", delete_checkpoint=True,
                                         double_checkpoint=True),
        *callbacks,
        keras.callbacks.TensorBoard(str(run.logs_dir), histogram_freq=0, write_graph=False),
        keras.callbacks.CSVLogger(str(run.history_file), append=True),
    ]


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


def trial_reporter(trial: TrialParams, run: TrainedRun) -> Any:
    """A Keras callback that reports ``trial.metric`` after each epoch to the Optuna study and stops training when
    the study's pruner prunes the trial (recorded in ``pruned.json``; the run then ends as a pruned trial)."""
    import keras
    import optuna

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
                write_json(run.pruned_file, {"epoch": epoch + 1, "value": float(value), "trial": trial.number})
                # (epochs counted from 1 here and in status.json; the study's steps count from 0)
                self.model.stop_training = True

    return TrialReport()


def preprocessing_spec(params: TrainParams) -> dict[str, Any]:
    """What the exported model expects: the one preprocessing definition that travels with the model."""
    spec = spec_for(params.model.base)
    return {
        "input_size": params.dataset.image_size, "channels": "RGB", "input_range": [0, 255], "dtype": "float32",
        "resize": "shorter side to input_size / crop_fraction, bilinear, antialiased", "crop": "central square",
        "crop_fraction": EVAL_CROP, **RESIZE_RULE, "inside_model": f"scaling '{spec.scaling}' for base {spec.name}",
        "output": "logits (the exported model adds softmax)",
    }


def resolve_weights(params: TrainParams) -> tuple[TrainParams, str | None]:
    """``model.weights: auto`` made concrete: ``imagenet`` when the base's ImageNet weights are on this machine;
    otherwise ``none`` with ``freeze: train_all`` (a head on random features learns nothing) and the one line
    that says so and how to get the weights."""
    m = params.model
    if m.weights != "auto":
        return params, None
    missing = imagenet_unavailable(m.base)
    if missing is None:
        return replace(params, model=replace(m, weights="imagenet")), None
    return (replace(params, model=replace(m, weights="none", freeze="train_all")),
            f"training {m.base} from scratch (freeze train_all): {missing}")


def classifier(params: TrainParams, num_classes: int, weights: str) -> tuple[Any, Any]:
    """The run's network (``models.build_classifier``), colour jitter and flip inside it when
    ``augmentation.jitter_in`` is ``model`` (they are then training-only layers, off the input pipeline)."""
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
