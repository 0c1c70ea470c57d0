"""Stage 4, train: transfer learning on the manifest, resumable, with the exact label table saved beside the model."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.artifacts.trained_run import RUN_PARAMS, TRAIN_CLAIM, TrainedRun
from fungilib.claims import claim, holder
from fungilib.distribution import make_placement
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path
from fungilib.head_fit import train_on_embeddings
from fungilib.input_pipeline import class_weights, make_dataset, plan_cache
from fungilib.keras_parts import (
    apply_freeze,
    classifier,
    configure_threads,
    float32_copy,
    make_optimizer,
    make_schedule,
    preprocessing_spec,
    resolve_weights,
    training_callbacks,
)
from fungilib.multi_worker_fit import fit_multi_worker
from fungilib.params import params_to_dict, write_params
from fungilib.train_params import (
    DatasetParams,
    FitParams,
    ModelParams,
    OptimizerParams,
    RegularizationParams,
    ScheduleParams,
    TrainParams,
    TrainResult,
    TrialParams,
)

__all__ = ["DatasetParams", "FitParams", "ModelParams", "OptimizerParams", "RegularizationParams", "ScheduleParams",
           "TrainParams", "TrainResult", "TrialParams", "train"]


def train(params: TrainParams) -> TrainResult:
    """Train ``params`` into ``params.out``; a rerun with the same folder resumes from the last finished epoch.

    Under ``fit.distribution: multi_worker`` every worker runs this with its own TF_CONFIG; only the chief
    (worker 0) writes the run folder, the others return after the last epoch."""
    out = prepare_output(Path(params.out), "train")
    if params.fit.distribution == "multi_worker":  # every worker runs this on the one (shared) folder
        return _train_placed(params, TrainedRun(out))
    with claim(out, name=TRAIN_CLAIM) as mine:
        if not mine:
            raise FungilibError(f"{out}: another training is writing here ({holder(out, TRAIN_CLAIM)}); wait for it, "
                                "or choose another --out")
        return _train_placed(params, TrainedRun(out))


def _train_placed(params: TrainParams, run: TrainedRun) -> TrainResult:
    if run.finished:
        done = run.summary()
        return TrainResult(run.model_file, done.epochs_run, done.resumed_from_epoch, done.seconds,
                           done.train_images_per_second, done.best_val_loss, skipped=True,
                           pruned_at_epoch=done.pruned_at_epoch)
    configure_threads()
    fit, d = params.fit, params.dataset
    placement = make_placement(fit.distribution, fit.devices, fit.replicas, d.batch_size, fit.worker_timeout_s)
    import keras

    keras.utils.set_random_seed(fit.seed)
    if fit.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(params, run, placement)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _train(params: TrainParams, run: TrainedRun, placement: Any) -> TrainResult:
    import keras

    out = run.folder
    params, weights_note = resolve_weights(params)  # model.weights: auto → imagenet here, or none and why
    if weights_note and placement.chief:
        print(f"fungilib train: {weights_note}", file=sys.stderr, flush=True)
    if params.dataset.embeddings:  # the head alone, on an embed stage's stored features
        return train_on_embeddings(params, run)
    manifest_path = Path(params.dataset.manifest)
    manifest, labels = load_manifest(manifest_path)
    if placement.chief:
        write_params(out / RUN_PARAMS, params)
        run.write_inputs(labels, preprocessing_spec(params))
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
    resumed = run.completed_epochs() if run.backup_dir.exists() else 0
    if not resumed and run.history_file.exists() and placement.chief:
        run.history_file.unlink()  # a fresh start: no stale rows from an unfinished earlier attempt
    phases = [("main", params.model.freeze, params.optimizer.learning_rate, 0, fit.epochs)]
    if params.model.freeze == "two_phase":
        head = params.schedule.head_epochs
        phases = [("head", "head_only", params.optimizer.learning_rate, 0, head),
                  ("finetune", "train_all", params.optimizer.learning_rate * params.schedule.finetune_lr_factor, head,
                   fit.epochs)]
    start = time.perf_counter()
    images = 0
    for phase, freeze, lr, first_epoch, last_epoch in phases:
        if (run.backup_dir / f"{phase}.done").exists():
            continue
        if run.pruned_file.exists():  # an Optuna trial its study pruned: no further phase
            break
        apply_freeze(base, freeze, params.model.top_k, pretrained)
        schedule = make_schedule(params.schedule, lr, steps, last_epoch - first_epoch)
        with placement.scope():
            optimizer = make_optimizer(params.optimizer, schedule)
            if multi_worker:
                if fit.mixed_precision:
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                ran = fit_multi_worker(model, optimizer, loss, train_rows, val_rows, make_ds, placement, out, phase,
                                       first_epoch, last_epoch, d.batch_size, weights,
                                       training_callbacks(run, phase, params, len(val_rows) > 0, placement.chief,
                                                          multi_worker=True),
                                       fit.jit_compile)
                images += ran * len(train_rows)
            else:
                model.compile(optimizer, loss=loss, metrics=metrics, jit_compile=fit.jit_compile)
                before = run.completed_epochs()
                model.fit(train_ds, validation_data=val_ds, epochs=last_epoch, initial_epoch=first_epoch,
                          shuffle=False, class_weight=weights, callbacks=training_callbacks(run, phase, params,
                                                                                            val_ds is not None),
                          verbose=2)
                images += (run.completed_epochs() - before) * len(train_rows)
        if placement.chief:
            run.backup_dir.mkdir(exist_ok=True)
            (run.backup_dir / f"{phase}.done").touch()
    seconds = time.perf_counter() - start
    if not placement.chief:  # a multi-worker run's other workers: the chief writes the model and the summary
        return TrainResult(run.model_file, 0, resumed, round(seconds, 1), round(images / seconds, 1) if seconds
                           else 0.0, None)
    if run.best_weights.exists():
        model.load_weights(str(run.best_weights))
    if fit.mixed_precision:  # the saved model computes in float32: exports and parity as without mixed precision
        model = float32_copy(model, params, n)
    with atomic_path(run.model_file) as tmp:
        tmp_model = tmp.with_suffix(".keras")
        model.save(tmp_model)
        tmp_model.replace(tmp)
    history = run.history()
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    result = TrainResult(run.model_file, len(history), resumed, round(seconds, 1),
                         round(images / seconds, 1) if seconds else 0.0, best, pruned_at_epoch=run.pruned_epoch())
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    run.write_summary({**result.__dict__, "model": str(result.model), "seed": fit.seed,
                              "params": params_to_dict(params), "train_images": len(train_rows),
                              "cache": cache.__dict__, "replicas": placement.replicas, "workers": placement.workers,
                              "val_images": len(val_rows), "classes": n,
                              **({"weights_note": weights_note} if weights_note else {})})
    return result
