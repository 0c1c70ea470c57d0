"""Bayesian search with pruning: an Optuna study drives ordinary sweep runs. Each trial is a run folder with its
executed notebook; the training run reports its validation metric after every epoch to the study's storage and
stops early when the pruner says so."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fungilib.artifacts.run_record import OUTPUT_DIR, RunState, write_status
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.claims import claim
from fungilib.data_version import content_key
from fungilib.errors import FungilibError
from fungilib.executors import submit_all
from fungilib.optuna_storage import JOURNAL_FILE, make_pruner, open_storage
from fungilib.params import deep_merge, set_dotted
from fungilib.run_execution import StageRun
from fungilib.search_space import parse_distribution
from fungilib.sweep_file import OptunaSearch
from fungilib.sweep_plan import stage_parameters


def storage_url(search: OptunaSearch, root: Path) -> str:
    """The study's storage: the sweep's own, or a journal file under ``runs/<sweep>/`` (several processes append
    to it through file locks; no database server needed)."""
    return search.storage or f"journal:{Path(root) / JOURNAL_FILE}"


def make_sampler(search: OptunaSearch) -> Any:
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(5, max(1, search.n_trials // 3)))


def optuna_space(search: OptunaSearch) -> dict[str, Any]:
    return {key: parse_distribution(spec, key).to_optuna() for key, spec in search.params.items()}


def open_study(search: OptunaSearch, name: str, root: Path) -> Any:
    """Create or load the study; a study of the same name with another search space is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url(search, root))
    study = optuna.create_study(study_name=search.study or name, storage=storage, load_if_exists=True,
                                direction=search.direction, sampler=make_sampler(search),
                                pruner=make_pruner(search.pruner))
    space = optuna_space(search)
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
    import optuna

    run = TrainedRun(Path(folder) / OUTPUT_DIR)
    summary = run.summary_or_none()
    history = run.history() if run.history_file.exists() else None
    value = history_value(history, search)
    update: dict[str, Any] = {"trial": number, "metric": search.metric, "direction": search.direction}
    if status.get("state") != RunState.DONE or summary is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        update["trial_state"] = "failed"
    elif summary.pruned_at_epoch:
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
        update.update(state=RunState.PRUNED, pruned_at_epoch=summary.pruned_at_epoch, trial_state="pruned",
                      value=value)
    elif value is None:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        update.update(trial_state="failed", error=f"the run logged no {search.history_metric}")
    else:
        study.tell(number, value)
        update.update(trial_state="complete", value=value)
    status = {**status, **update}
    write_status(folder, status)
    return status


def run_optuna(sweep: Any, runs_root: Path, base_values: dict[str, Any], input_outs: dict[str, str], data: str,
               place: Any, report: Any) -> list[dict[str, Any]]:
    """Trials until the study holds ``n_trials`` finished (complete or pruned) ones: ask a trial per free worker,
    run each as an ordinary run folder (``runs/<sweep>/trial-NNNN/``), tell the study how it ended."""
    search: OptunaSearch = sweep.optuna
    root = Path(runs_root).resolve() / sweep.name
    study = open_study(search, sweep.name, root)
    _fail_stale(study, root)
    space = optuna_space(search)
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
                           stage_parameters(last, values, folder / OUTPUT_DIR, input_outs), trial_run_id(trial.number),
                           data)
            batch.append((trial.number, run))
        results = submit_all([run for _, run in batch], place, report)
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

    from fungilib.plotting import plt, save_figure  # matplotlib only where a plot is drawn

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
