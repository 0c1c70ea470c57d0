"""The training stage's parameters, grouped like its params file (dataset, model, optimizer, schedule,
augmentation, regularization, fit, trial), and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fungilib.artifacts.trained_run import TrainResult
from fungilib.errors import FungilibError
from fungilib.input_pipeline import Augmentation


@dataclass
class DatasetParams:
    manifest: Path = Path("")
    image_size: int = 128
    batch_size: int = 32
    # decoded photos kept in memory between epochs: auto = only when they fit cache_budget_mb (see plan_cache)
    cache: Literal["auto", "memory", "none"] = "auto"
    cache_budget_mb: int = 1024
    # smote: new training embeddings between each small class's own (stored embeddings only: dataset.embeddings)
    balance: Literal["none", "class_weights", "sampling", "smote"] = "none"
    smote_per_class: int = 0  # smote fills each class up to this many training embeddings; 0: the largest class's
    embeddings: str = ""  # an embed stage's folder: train the head only, on its stored features (fast sweeps)


@dataclass
class ModelParams:
    # the default: EfficientNet-Lite0 from its packaged ImageNet checkpoint, head first then all of it (the best
    # recipe on real photos in bench/results/real_photos.json at 128 px)
    base: str = "EfficientNetLite0"  # a name of fungilib.models.BASES, a TF Hub handle or a SavedModel folder
    # auto: imagenet when the base's ImageNet weights are on this machine, else none (and freeze train_all), said
    # in one line; imagenet (an error when absent), none, or a weights file
    weights: str = "auto"
    dropout: float = 0.2
    freeze: Literal["train_all", "head_only", "top_k", "two_phase"] = "two_phase"
    top_k: int = 20  # layers of the base unfrozen by freeze=top_k


@dataclass
class OptimizerParams:
    name: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop


@dataclass
class ScheduleParams:
    name: Literal["constant", "cosine", "step", "plateau"] = "cosine"
    warmup_epochs: float = 1.0  # cosine: linear warm-up
    step_epochs: int = 5  # step: decay every N epochs …
    step_gamma: float = 0.1  # … by this factor
    plateau_patience: int = 2  # plateau: epochs without val_loss progress before the rate is cut by 10
    head_epochs: int = 3  # two_phase: epochs of head-only warm-up
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
    # a CSV name,status (fungilib.toxicity) you supply: the evaluation adds how often a deadly or toxic species is
    # named as an edible one, with and without the place prior
    toxicity: Path | None = None
    trial: TrialParams = field(default_factory=TrialParams)  # an Optuna sweep's trial (see fungilib.search)

    def __post_init__(self) -> None:
        if self.dataset.cache_budget_mb < 0:
            raise FungilibError(f"dataset.cache_budget_mb must be >= 0, got {self.dataset.cache_budget_mb}")
        if self.fit.epochs < 1 or self.dataset.batch_size < 1 or self.dataset.image_size < 32:
            raise FungilibError("fit.epochs and dataset.batch_size must be >= 1, dataset.image_size >= 32")
        if not 0 <= self.model.dropout < 1 or not 0 <= self.regularization.label_smoothing < 1:
            raise FungilibError("model.dropout and regularization.label_smoothing must be in [0, 1)")
        if self.model.freeze == "two_phase" and self.schedule.head_epochs >= self.fit.epochs:
            raise FungilibError(f"schedule.head_epochs ({self.schedule.head_epochs}) must be below fit.epochs "
                                f"({self.fit.epochs}) for freeze=two_phase: lower schedule.head_epochs or set "
                                "model.freeze=train_all")
        if self.dataset.balance == "smote" and not self.dataset.embeddings:
            raise FungilibError("dataset.balance=smote works on stored embeddings: set dataset.embeddings (an embed "
                                "stage's folder) or use class_weights / sampling")
        if self.dataset.smote_per_class < 0:
            raise FungilibError("dataset.smote_per_class must be ≥ 0 (0: up to the largest class's count)")
        if self.optimizer.learning_rate <= 0:
            raise FungilibError("optimizer.learning_rate must be > 0")
        if self.fit.replicas < 0 or self.fit.worker_timeout_s <= 0:
            raise FungilibError("fit.replicas must be >= 0 and fit.worker_timeout_s > 0")
        if self.fit.distribution == "multi_worker" and self.trial.storage:
            raise FungilibError("fit.distribution=multi_worker: an Optuna trial trains on one host (use mirrored)")


__all__ = ["DatasetParams", "FitParams", "ModelParams", "OptimizerParams", "RegularizationParams", "ScheduleParams",
           "TrainParams", "TrainResult", "TrialParams"]
