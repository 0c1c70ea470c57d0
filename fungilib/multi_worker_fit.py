"""The training loop under MultiWorkerMirroredStrategy: Keras 3's ``model.fit`` fails there (keras-team/keras#20585,
'unsupported type PerReplica'), so each step runs through ``strategy.run`` with the same Keras model, optimizer, loss
and callbacks the one-host path uses.

What it keeps from ``model.fit``: the history.csv columns (CSVLogger), the best weights (ModelCheckpoint), early
stopping and the plateau schedule (the Keras callbacks themselves), TensorBoard scalars, and resume after any
worker dies: every finished epoch is a ``tf.train.Checkpoint`` of model, optimizer and epoch in the chief's
backup folder, which every worker restores from when restarted (the run folder is on a shared file system, as
sweeps already require). Only the chief (worker 0) writes the run folder; the others save their part of each
checkpoint to a scratch folder, deleted after each save, as TensorFlow's multi-worker checkpointing needs.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fungilib.artifacts.trained_run import BACKUP_DIR, HISTORY, LOGS_DIR
from fungilib.distribution import DevicePlacement
from fungilib.errors import FungilibError


def _write_history(out: Path, rows: list[dict[str, float]]) -> None:
    frame = pd.DataFrame(rows)
    frame = frame[["epoch", *sorted(c for c in frame.columns if c != "epoch")]]  # CSVLogger's column order
    tmp = out / f"{HISTORY}.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(out / HISTORY)


def _read_history(out: Path, before_epoch: int) -> list[dict[str, float]]:
    path = out / HISTORY
    if not path.exists():
        return []
    frame = pd.read_csv(path)
    return frame[frame["epoch"] < before_epoch].to_dict(orient="records")  # rows past the checkpoint were redone


def fit_multi_worker(model: Any, optimizer: Any, loss: Any, train_rows: pd.DataFrame, val_rows: pd.DataFrame,
                     make_ds: Any, placement: DevicePlacement, out: Path, phase: str, first_epoch: int, last_epoch: int,
                     global_batch: int, class_weight: dict[int, float] | None, callbacks: list[Any],
                     jit_compile: bool) -> int:
    """Train epochs ``first_epoch``..``last_epoch`` (resuming from the phase's checkpoint); returns epochs run now.

    ``make_ds(frame, batch_size, training)`` builds the tf.data pipeline; each worker reads its own share of the
    training photos (every n-th, by worker index) and the full validation split (all workers then hold the same
    validation loss, so early stopping stops them together)."""
    import keras
    import tensorflow as tf

    strategy = placement.strategy
    backup = out / BACKUP_DIR / phase
    scratch = out / BACKUP_DIR / f"{phase}.worker{placement.worker_index}"

    def replica_dataset(context: Any) -> Any:  # one input pipeline per worker, batched per replica
        shard = train_rows.iloc[context.input_pipeline_id::context.num_input_pipelines]
        ds = make_ds(shard, context.get_per_replica_batch_size(global_batch), True).repeat()
        options = tf.data.Options()  # sharded by file above: each worker decodes only its own photos
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    dist_train = iter(strategy.distribute_datasets_from_function(replica_dataset))
    val_ds = make_ds(val_rows, global_batch, False) if len(val_rows) else None
    steps = math.ceil(len(train_rows) / global_batch)
    num_classes = int(model.output.shape[-1])
    weights = tf.constant([(class_weight or {}).get(i, 1.0) for i in range(num_classes)], tf.float32)
    mixed = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    with strategy.scope():
        epoch_var = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    latest = tf.train.latest_checkpoint(str(backup)) if backup.exists() else None
    if latest:
        checkpoint.restore(latest).expect_partial()
    manager = tf.train.CheckpointManager(checkpoint, str(backup if placement.chief else scratch), max_to_keep=1)

    def hits(y: Any, logits: Any) -> tuple[Any, Any, Any]:
        """(top-1 right, top-3 right, photos) of a batch, summed: the epoch's accuracy and top3 add them up."""
        truth = tf.argmax(y, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), truth), tf.float32))
        top3 = tf.reduce_sum(tf.cast(tf.math.in_top_k(truth, logits, 3), tf.float32))
        return correct, top3, tf.cast(tf.shape(y)[0], tf.float32)

    def replica_step(x: Any, y: Any) -> tuple[Any, ...]:
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = loss(y, logits) * tf.gather(weights, tf.argmax(y, axis=-1))
            value = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                value += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(value) if mixed else value
        optimizer.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)
        return (value, *hits(y, logits))

    step_fn = tf.function(jit_compile=True)(replica_step) if jit_compile else replica_step

    @tf.function
    def train_step(iterator: Any) -> list[Any]:
        x, y = next(iterator)
        per_replica = strategy.run(step_fn, args=(x, y))
        return [strategy.reduce("SUM", v, axis=None) for v in per_replica]

    eval_loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def eval_batch(x: Any, y: Any) -> list[Any]:
        logits = tf.cast(model(x, training=False), tf.float32)
        return [eval_loss(y, logits), *hits(y, logits)]

    start_epoch = int(epoch_var.numpy())
    rows = _read_history(out, start_epoch) if placement.chief else []
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    callback_list.on_train_begin()
    writers = {name: tf.summary.create_file_writer(str(out / LOGS_DIR / name)) for name in ("train", "validation")} \
        if placement.chief else {}
    model.stop_training = False
    ran = 0
    for epoch in range(start_epoch, last_epoch):
        callback_list.on_epoch_begin(epoch)
        totals = np.zeros(4)
        try:
            for _ in range(steps):
                totals += np.array([float(v) for v in train_step(dist_train)])
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.InternalError,
                tf.errors.CancelledError, tf.errors.AbortedError) as exc:
            raise FungilibError(
                f"fit.distribution=multi_worker: lost a worker in epoch {epoch + 1} "
                f"({type(exc).__name__}: a peer stopped answering); restart every worker "
                f"with the same command: training resumes from epoch {epoch + 1}") from None
        logs = {"loss": totals[0] / steps, "accuracy": totals[1] / totals[3], "top3": totals[2] / totals[3],
                "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}
        if val_ds is not None:
            v = np.zeros(4)
            for x, y in val_ds:
                v += np.array([float(t) for t in eval_batch(x, y)])
            logs.update(val_loss=v[0] / v[3], val_accuracy=v[1] / v[3], val_top3=v[2] / v[3])
        epoch_var.assign(epoch + 1)
        manager.save()  # every worker saves (collectives may be involved); only the chief's copy is kept
        if not placement.chief:
            shutil.rmtree(scratch, ignore_errors=True)
        ran += 1
        if placement.chief:
            rows.append({"epoch": epoch, **logs})
            _write_history(out, rows)
            for name, writer in writers.items():
                with writer.as_default(step=epoch):
                    for key, value in logs.items():
                        is_val = key.startswith("val_")
                        if (name == "validation") == is_val:
                            tf.summary.scalar(f"epoch_{key.removeprefix('val_')}", value)
        callback_list.on_epoch_end(epoch, logs)  # early stopping, best weights (chief), plateau
        if model.stop_training:
            break
    callback_list.on_train_end()
    return ran


__all__ = ["fit_multi_worker"]
