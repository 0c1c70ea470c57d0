"""Stages the registry composes from two stage functions: ingest then EDA, train then evaluate. Orchestration:
the stage modules themselves never import each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fungilib.artifacts.trained_run import TrainedRun
from fungilib.eda import EdaParams, EdaResult, IngestEdaParams, run_eda
from fungilib.evaluate import EvaluateParams, evaluate_run
from fungilib.ingest import IngestParams, IngestResult, ingest
from fungilib.train import TrainParams, TrainResult, train


@dataclass
class IngestEdaResult:
    ingest: IngestResult
    eda: EdaResult


def ingest_and_describe(params: IngestEdaParams) -> IngestEdaResult:
    """Stage ingest_eda: the archive into ``observations.h5`` under ``out``, then the EDA of it in the same folder."""
    ingested = ingest(IngestParams(archive=params.archive, out=params.out))
    eda = run_eda(EdaParams(observations=params.out, out=params.out, min_images=params.min_images,
                            species_only=params.species_only, max_side=params.max_side))
    return IngestEdaResult(ingested, eda)


@dataclass
class TrainRunResult:
    train: TrainResult
    evaluation: Any = None  # fungilib.evaluate.EvalResult, or None with evaluate: false


def train_and_evaluate(params: TrainParams) -> TrainRunResult:
    """Stage train: train into ``params.out``, then (``params.evaluate``) evaluate on the test split."""
    result = train(params)
    # a pruned trial is not worth a test-split evaluation; a multi-worker run's other workers (no summary) leave it
    # to the chief
    if not params.evaluate or result.pruned_at_epoch or TrainedRun(Path(params.out)).summary_or_none() is None:
        return TrainRunResult(result)
    return TrainRunResult(result, evaluate_run(EvaluateParams(
        run=params.out, temperature_scaling=params.fit.temperature_scaling, toxicity=params.toxicity)))
