"""Bayesian search with pruning: an Optuna study drives ordinary sweep runs. Each trial is a run folder with its
executed notebook; the training run reports its validation metric after every epoch to the study's storage and
stops early when the pruner says so."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fungilib.errors import FungilibError

OPTUNA_KEYS = {"n_trials", "sampler", "seed", "metric", "direction", "pruner", "params", "storage", "study"}
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")
# what the training run logs after every epoch (history.csv): the objective must be one of them, on validation
EPOCH_METRICS = {"val_top1": "val_accuracy", "val_accuracy": "val_accuracy", "val_top3": "val_top3",
                 "val_loss": "val_loss"}
TEST_METRICS = {"top1", "top3", "top5", "macro_f1", "genus_top1", "family_top1", "ece", "nll", "test_top1"}
JOURNAL_FILE = "optuna.journal"
STORAGE_TIMEOUT_S = 10


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
        distribution(dist, f"{where}.params.{key}")
    if sampler == "cmaes" and any(next(iter(d)) == "choice" for d in params.values()):
        raise FungilibError(f"{where}.sampler: cmaes searches continuous spaces; {', '.join(params)} include a choice")
    return OptunaSearch(n_trials, dict(params), metric, direction, sampler, seed, pruner, storage, study)


def distribution(spec: Any, where: str) -> Any:
    """The Optuna distribution for the sweep vocabulary (choice, uniform, loguniform, int)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("choice", "uniform", "loguniform",
                                                                               "int"):
        raise FungilibError(f"{where}: expected one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                            f"{{loguniform: [lo, hi]}}, {{int: [lo, hi]}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise FungilibError(f"{where}: choice needs a non-empty list")
        return CategoricalDistribution(args)
    if (not isinstance(args, list) or len(args) != 2 or not all(isinstance(a, int | float) for a in args)
            or args[0] >= args[1]):
        raise FungilibError(f"{where}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "int":
        if not all(isinstance(a, int) for a in args):
            raise FungilibError(f"{where}: int needs integer bounds, got {args!r}")
        return IntDistribution(args[0], args[1])
    if kind == "loguniform" and args[0] <= 0:
        raise FungilibError(f"{where}: loguniform bounds must be > 0")
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")


def first_point(search: OptunaSearch) -> dict[str, Any]:
    """A point of the space (each distribution's low end or first choice), to validate names and types up front."""
    point = {}
    for key, spec in search.params.items():
        kind, args = next(iter(spec.items()))
        point[key] = float(args[0]) if kind in ("uniform", "loguniform") else args[0]  # as the sampler gives it
    return point


def _check_reachable(url: str) -> None:
    """A database URL's host must answer within STORAGE_TIMEOUT_S: one line naming it, never a hang."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite") or not parts.hostname:
        return
    port = parts.port or {"postgresql": 5432, "mysql": 3306}.get(parts.scheme.split("+")[0], 0)
    try:
        socket.create_connection((parts.hostname, port), timeout=STORAGE_TIMEOUT_S).close()
    except OSError as exc:
        raise FungilibError(f"storage {parts.scheme}://{parts.hostname}:{port}: not reachable within "
                            f"{STORAGE_TIMEOUT_S} s ({exc.strerror or exc}); check the server and the URL") from None


def storage_url(search: OptunaSearch, root: Path) -> str:
    """The study's storage: the sweep's own, or a journal file under ``runs/<sweep>/`` (several processes append
    to it through file locks; no database server needed)."""
    return search.storage or f"journal:{Path(root) / JOURNAL_FILE}"


def open_storage(url: str) -> Any:
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(url[len("journal:"):]).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver fungilib installs
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    _check_reachable(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                          heartbeat_interval=None)
    except ModuleNotFoundError as exc:
        raise FungilibError(f"storage {url.split('://')[0]}://…: its database driver is not installed "
                            f"({exc.name}); pip install it (PostgreSQL: psycopg)") from None
    except Exception as exc:  # SQLAlchemy's connection errors: one line naming the server
        raise FungilibError(f"storage {url.split('@')[-1]}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def make_sampler(search: OptunaSearch) -> Any:
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(5, max(1, search.n_trials // 3)))


def make_pruner(name: str) -> Any:
    """The pruner a study uses; the training run builds the same one to decide (Optuna does not store it).
    Steps are epochs counted from 0: the median pruner never stops a run in its first epoch."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def open_study(search: OptunaSearch, name: str, root: Path) -> Any:
    """Create or load the study; a study of the same name with another search space is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url(search, root))
    study = optuna.create_study(study_name=search.study or name, storage=storage, load_if_exists=True,
                                direction=search.direction, sampler=make_sampler(search),
                                pruner=make_pruner(search.pruner))
    space = {key: distribution(spec, key) for key, spec in search.params.items()}
    recorded = study.user_attrs.get("fungilib_space")
    mine = {key: repr(d) for key, d in space.items()}
    if recorded is None:
        study.set_user_attr("fungilib_space", mine)
        study.set_user_attr("fungilib_metric", search.metric)
    elif recorded != mine or study.user_attrs.get("fungilib_metric") != search.metric:
        raise FungilibError(f"study {study.study_name!r} in {storage_url(search, root)} was created with another "
                            "search space or metric; name a new `study:` (or remove the old one)")
    return study


def history_value(history: Any, search: OptunaSearch) -> float | None:
    """The run's objective: its best validation value over the epochs it trained."""
    column = search.history_metric
    if history is None or column not in history or history[column].dropna().empty:
        return None
    values = history[column].dropna()
    value = float(values.min() if search.direction == "minimize" else values.max())
    return value if math.isfinite(value) else None


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in states)


def _fail_stale(study: Any, root: Path) -> int:
    """Trials left RUNNING by a killed sweep (their run folder claimed by no live process) are marked failed, so
    the study goes on to ``n_trials`` finished ones. Returns how many."""
    import optuna

    from fungilib.claims import claim

    stale = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        folder = Path(root) / trial_run_id(trial.number)
        with claim(folder) as free:
            if free:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                stale += 1
    return stale


def trial_run_id(number: int) -> str:
    return f"trial-{number:04d}"


def tell_result(study: Any, search: OptunaSearch, number: int, folder: Path, status: dict[str, Any]) -> dict[str, Any]:
    """Report a finished trial run to the study (complete with its value, pruned, or failed) and record it in the
    run's status.json."""
    import json

    import optuna
    import pandas as pd

    from fungilib.fsutil import write_json

    output = Path(folder) / "output"
    summary_file = output / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    history = pd.read_csv(output / "history.csv") if (output / "history.csv").exists() else None
    value = history_value(history, search)
    update: dict[str, Any] = {"trial": number, "metric": search.metric, "direction": search.direction}
    if status.get("state") != "done" or summary == {}:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        update["trial_state"] = "failed"
    elif summary.get("pruned_at_epoch"):
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
        update.update(state="pruned", pruned_at_epoch=summary["pruned_at_epoch"], trial_state="pruned",
                      value=value)
    elif value is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        update.update(trial_state="failed", error=f"the run logged no {search.history_metric}")
    else:
        study.tell(number, value)
        update.update(trial_state="complete", value=value)
    status = {**status, **update}
    write_json(Path(folder) / "status.json", status)
    return status


def run_optuna(sweep: Any, runs_root: Path, base_values: dict[str, Any], input_outs: dict[str, str], data: str,
               place: Any, report: Any) -> list[dict[str, Any]]:
    """Trials until the study holds ``n_trials`` finished (complete or pruned) ones: ask a trial per free worker,
    run each as an ordinary run folder (``runs/<sweep>/trial-NNNN/``), tell the study how it ended."""
    from fungilib.data_version import content_key
    from fungilib.params import deep_merge, set_dotted
    from fungilib.sweep import StageRun, _submit_all, stage_parameters

    search: OptunaSearch = sweep.optuna
    root = Path(runs_root).resolve() / sweep.name
    study = open_study(search, sweep.name, root)
    _fail_stale(study, root)
    space = {key: distribution(spec, key) for key, spec in search.params.items()}
    last = sweep.pipeline[-1]
    statuses: list[dict[str, Any]] = []
    while _finished(study) < search.n_trials:
        batch = []
        for _ in range(min(place.workers, search.n_trials - _finished(study))):
            trial = study.ask(space)
            values: dict[str, Any] = {}
            for key, value in trial.params.items():
                set_dotted(values, key.partition(".")[2], value, f"{sweep.source}: search.optuna")
            values = deep_merge(base_values, values)
            values["trial"] = {"storage": storage_url(search, root), "study": study.study_name,
                               "number": trial.number, "metric": search.history_metric, "pruner": search.pruner}
            folder = root / trial_run_id(trial.number)
            run = StageRun(last, content_key(last, values, data), folder,
                           stage_parameters(last, values, folder / "output", input_outs), trial_run_id(trial.number),
                           data)
            batch.append((trial.number, run))
        results = _submit_all([run for _, run in batch], place, report)
        by_folder = {str(r.get("run_id")): r for r in results}
        for number, run in batch:
            statuses.append(tell_result(study, search, number, run.folder, by_folder.get(run.run_id, {})))
    return statuses


STUDY_PLOTS = ("optimization_history", "param_importances", "slice", "parallel_coordinate")


def study_plots(runs_root: Path, sweep: str, out: Path, storage: str | None = None) -> dict[str, Path | str]:
    """Optuna's plots of a sweep's study, saved as PNGs in ``out``: optimisation history, parameter importances,
    slice and parallel coordinates. A plot Optuna cannot draw yet (too few finished trials) maps to the reason.
    An empty dict when the sweep is not an Optuna study."""
    import warnings

    import optuna

    from fungilib.plotting import plt, save_figure

    journal = Path(runs_root) / sweep / JOURNAL_FILE
    if storage is None and not journal.exists():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweep, storage=open_storage(storage or f"journal:{journal}"))
    plots: dict[str, Path | str] = {}
    for name in STUDY_PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = getattr(optuna.visualization.matplotlib, f"plot_{name}")(study)
            axes = ax if hasattr(ax, "flat") else [ax]
            fig = next(iter(getattr(axes, "flat", axes))).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4.5))
            plots[name] = save_figure(fig, Path(out) / f"optuna_{name}.png")
            plt.close(fig)
        except Exception as exc:  # e.g. importances need two finished trials
            plots[name] = f"not drawn: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return plots
