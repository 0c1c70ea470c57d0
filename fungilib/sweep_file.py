"""A sweep file: its schema (checked completely before anything runs), the grid or random search expanded into
runs, or an Optuna search block."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.errors import FungilibError
from fungilib.fsutil import safe_id
from fungilib.params import build_params, deep_merge, read_yaml, set_dotted
from fungilib.search_space import parse_distribution
from fungilib.stages import SWEEP_PIPELINE, check_notebook_parameters, stage

OPTUNA_KEYS = {"n_trials", "sampler", "seed", "metric", "direction", "pruner", "params", "storage", "study"}
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
# what the training run logs after every epoch (history.csv): the objective must be one of them, on validation
EPOCH_METRICS = {"val_top1": "val_accuracy", "val_accuracy": "val_accuracy", "val_top3": "val_top3",
                 "val_loss": "val_loss"}
TEST_METRICS = {"top1", "top3", "top5", "macro_f1", "genus_top1", "family_top1", "ece", "nll", "test_top1"}


@dataclass
class OptunaSearch:
    """A validated ``search: optuna`` block."""

    n_trials: int
    params: dict[str, Any]  # dotted key → {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [...]} | {int: [...]}
    metric: str = "val_top1"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    storage: str | None = None  # default: a journal file beside the runs (runs/<sweep>/optuna.journal)
    study: str | None = None  # default: the sweep's name
    history_metric: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.history_metric = EPOCH_METRICS[self.metric]


def parse_optuna(spec: Any, source: str) -> OptunaSearch:
    """Check a ``search: {optuna: ...}`` block completely; every problem is one line naming key and choices."""
    where = f"{source}: search.optuna"
    if not isinstance(spec, dict):
        raise FungilibError(f"{where}: expected a mapping (n_trials, params, metric, sampler, pruner, ...)")
    unknown = sorted(set(spec) - OPTUNA_KEYS)
    if unknown:
        raise FungilibError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(OPTUNA_KEYS))}")
    n_trials, params = spec.get("n_trials"), spec.get("params") or {}
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise FungilibError(f"{where}.n_trials: expected an integer >= 1, got {n_trials!r}")
    if not isinstance(params, dict) or not params:
        raise FungilibError(f"{where}.params: expected at least one dotted key with a distribution")
    metric = spec.get("metric", "val_top1")
    if metric in TEST_METRICS:
        raise FungilibError(f"{where}.metric: {metric!r} is measured on the test split, which must never choose "
                            f"a model; use a validation metric: {', '.join(EPOCH_METRICS)}")
    if metric not in EPOCH_METRICS:
        raise FungilibError(f"{where}.metric: {metric!r} is not a metric the training run reports after each "
                            f"epoch; allowed: {', '.join(EPOCH_METRICS)}")
    direction = spec.get("direction", "minimize" if metric == "val_loss" else "maximize")
    if direction not in ("maximize", "minimize"):
        raise FungilibError(f"{where}.direction: {direction!r} is not one of 'maximize', 'minimize'")
    sampler, pruner = spec.get("sampler", "tpe"), spec.get("pruner", "median")
    if sampler not in SAMPLERS:
        raise FungilibError(f"{where}.sampler: {sampler!r} is not one of {', '.join(map(repr, SAMPLERS))}")
    if pruner not in PRUNERS:
        raise FungilibError(f"{where}.pruner: {pruner!r} is not one of {', '.join(map(repr, PRUNERS))}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FungilibError(f"{where}.seed: expected an integer >= 0, got {seed!r}")
    storage, study = spec.get("storage"), spec.get("study")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise FungilibError(f"{where}.storage: expected a URL (postgresql://user@host/db, sqlite:///file.db) or "
                            "nothing (a journal file beside the runs)")
    for key, dist in params.items():
        parse_distribution(dist, f"{where}.params.{key}")
    if sampler == "cmaes" and any(next(iter(d)) == "choice" for d in params.values()):
        raise FungilibError(f"{where}.sampler: cmaes searches continuous spaces; {', '.join(params)} include a choice")
    return OptunaSearch(n_trials, dict(params), metric, direction, sampler, seed, pruner, storage, study)


def first_point(search: OptunaSearch) -> dict[str, Any]:
    """A point of the space (each distribution's low end or first choice), to validate names and types up front."""
    point = {}
    for key, spec in search.params.items():
        point[key] = parse_distribution(spec, key).first()  # as the sampler gives it
    return point


MAX_RUNS = 10_000  # a sweep of more runs is a typo or a hostile file, not a study (Optuna samples large spaces)


def _check_count(count: int, where: str) -> None:
    if count > MAX_RUNS:
        raise FungilibError(f"{where}: {count:,} runs; a sweep runs at most {MAX_RUNS:,} (narrow the grid, or use "
                            "search: optuna for a large space)")


def expand_search(search: dict[str, Any] | None, source: str) -> list[dict[str, Any]]:
    """The runs of a search as lists of dotted-key values: a cartesian grid, or n seeded random draws."""
    if not search:
        return [{}]
    if set(search) - {"grid", "random", "optuna"} or len(search) != 1:
        raise FungilibError(f"{source}: search: expected exactly one of 'grid', 'random' or 'optuna', "
                            f"got {sorted(search)}")
    if "optuna" in search:
        return [{}]  # trials come from the study (fungilib.search); the base run validates the stages
    if "grid" in search:
        grid = search["grid"] or {}
        if not isinstance(grid, dict):
            raise FungilibError(f"{source}: search.grid: expected a mapping of dotted keys to lists of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise FungilibError(f"{source}: search.grid.{key}: expected a non-empty list of values")
        keys = sorted(grid)
        _check_count(math.prod(len(grid[k]) for k in keys), f"{source}: search.grid")  # before anything is expanded
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    random = search["random"] or {}
    unknown = set(random) - {"n", "seed", "params"}
    if unknown:
        raise FungilibError(f"{source}: search.random: unknown key {sorted(unknown)[0]!r}; allowed: n, seed, params")
    n, params = random.get("n"), random.get("params") or {}
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or not params:
        raise FungilibError(f"{source}: search.random needs n >= 1 and at least one entry under params")
    _check_count(n, f"{source}: search.random.n")
    rng = np.random.default_rng(random.get("seed", 0))
    keys = sorted(params)
    space = {k: parse_distribution(params[k], f"{source}: search.random.params.{k}") for k in keys}
    return [{k: space[k].draw(rng) for k in keys} for _ in range(n)]


SWEEP_KEYS = {"name", "archive", "manifest", "folder", "import", "sample_dir", "sample_port", "pipeline", "base",
              "search"}


@dataclass
class Sweep:
    """A validated sweep file: which stages, the values over the defaults, and the expanded runs."""

    name: str
    source: Path
    pipeline: list[str]
    archive: str  # the input of the first stage: a DwC archive, or a manifest folder for a train-only sweep
    sample_dir: str | None
    base: dict[str, dict[str, Any]]
    runs: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per run: stage → overrides
    optuna: Any = None  # an OptunaSearch: trials asked from a study instead of expanded runs
    sample_port: int = 8765
    folder_import: dict[str, Any] | None = None  # `folder:` source: import-folder parameters, run before the plan



def load_sweep(path: Path) -> Sweep:
    """Read and validate a sweep file completely before anything runs (keys, stages, types, every run)."""
    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise FungilibError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    pipeline = data.get("pipeline") or []
    bad = [s for s in pipeline if s not in SWEEP_PIPELINE]
    if not pipeline or bad:
        raise FungilibError(f"{path}: pipeline: unknown stage {bad[0]!r}" if bad else f"{path}: pipeline is empty"
                            f"; stages: {', '.join(SWEEP_PIPELINE)}")
    if pipeline != [s for s in SWEEP_PIPELINE if s in pipeline] or pipeline[0] not in ("ingest_eda", "embed", "train"):
        raise FungilibError(f"{path}: pipeline must start at ingest_eda (or be [train] or [embed, train] on a "
                            f"manifest) and keep the order {' → '.join(SWEEP_PIPELINE)}")
    source_key = "archive" if pipeline[0] == "ingest_eda" else "folder" if "folder" in data else "manifest"
    if source_key not in data:
        hint = (": a manifest folder, or `folder:` for a labelled image folder" if pipeline[0] in ("embed", "train")
                else "")
        raise FungilibError(f"{path}: missing {source_key!r} (the input of stage {pipeline[0]}{hint})")
    folder_import = None
    if source_key == "folder":
        folder_import = {**(data.get("import") or {}), "source": str(data["folder"])}
        # validated now, run later (by the registry's import_folder stage)
        build_params(stage("import_folder").params_class, {**folder_import, "out": "."}, f"{path}: import")
    elif "import" in data:
        raise FungilibError(f"{path}: `import` applies only to a `folder:` source")
    base = data.get("base") or {}
    for name in base:
        if name not in pipeline:
            raise FungilibError(f"{path}: base.{name}: not a stage of this pipeline ({', '.join(pipeline)})")
    optuna_search = None
    if isinstance(data.get("search"), dict) and "optuna" in data["search"]:
        optuna_search = parse_optuna(data["search"]["optuna"], str(path))
        for key in optuna_search.params:
            if key.partition(".")[0] != pipeline[-1]:
                raise FungilibError(f"{path}: search.optuna.params.{key}: an Optuna search varies the last stage "
                                    f"only; keys start with {pipeline[-1]}.")
    runs = []
    for values in expand_search(data.get("search"), str(path)):
        overrides: dict[str, dict[str, Any]] = {}
        for dotted, value in values.items():
            name, _, rest = dotted.partition(".")
            if name not in pipeline or not rest:
                raise FungilibError(f"{path}: search key {dotted!r} must start with a stage of the pipeline "
                                    f"({', '.join(pipeline)}), e.g. train.optimizer.learning_rate")
            set_dotted(overrides.setdefault(name, {}), rest, value, f"{path}: search")
        runs.append(overrides)
    name = str(data.get("name") or path.stem)
    try:
        safe_id(name)
    except FungilibError:
        raise FungilibError(f"{path}: name {name!r}: a sweep's name is one folder name under the runs root "
                            "(letters, digits, '_', '.', '-'); set `name:` in the file") from None
    sweep = Sweep(name, path, pipeline, str(data[source_key]), data.get("sample_dir"), base, runs,
                  sample_port=int(data.get("sample_port", 8765)), folder_import=folder_import, optuna=optuna_search)
    if optuna_search is not None:  # a point of the space, checked against the notebook and the params class
        point: dict[str, dict[str, Any]] = {}
        for dotted, value in first_point(optuna_search).items():
            stage_name, _, rest = dotted.partition(".")
            set_dotted(point.setdefault(stage_name, {}), rest, value, f"{path}: search.optuna")
        check_notebook_parameters(pipeline[-1], stage_values(sweep, pipeline[-1], point), str(path))
    for overrides in runs:
        for name in pipeline:
            check_notebook_parameters(name, stage_values(sweep, name, overrides), str(path))
    return sweep


def stage_values(sweep: Sweep, name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """defaults (params/<stage>.yaml) ← the sweep's base ← this run's values."""
    return deep_merge(deep_merge(stage(name).defaults(), sweep.base.get(name, {})), overrides.get(name, {}))
