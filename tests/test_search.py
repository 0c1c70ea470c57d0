"""Optuna search: the sweep file's `search: optuna` is validated before anything runs; trials are ordinary run
folders whose training run reports its validation metric after each epoch and stops when pruned; a killed study
goes on where it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fungilib.errors import FungilibError
from fungilib.sweep import run_sweep
from fungilib.sweep_file import load_sweep

from .conftest import SCRATCH_MODEL


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


SPACE = {"train.optimizer.learning_rate": {"loguniform": [0.0005, 0.01]}}


def _optuna_sweep(pipeline, path: Path, name: str, epochs: int, **optuna: object) -> Path:  # noqa: ANN001
    """A sweep file: Optuna trials of 32 px training runs on the session's manifest, without test evaluation."""
    return _write(path, {
        "name": name, "manifest": str(pipeline.root / "clean"), "pipeline": ["train"],
        "base": {"train": {"dataset": {"image_size": 32, "batch_size": 64}, "fit": {"epochs": epochs},
                           "model": SCRATCH_MODEL,
                           "evaluate": False}},
        "search": {"optuna": {"params": SPACE, **optuna}}})


@pytest.mark.parametrize(("optuna", "message"), [
    ({"n_trials": 3, "params": SPACE, "sampler": "grid"}, r"sampler: 'grid' is not one of 'tpe', 'random', 'cmaes'"),
    ({"n_trials": 3, "params": SPACE, "pruner": "asha"}, r"pruner: 'asha' is not one of 'median', 'hyperband'"),
    ({"n_trials": 3, "params": SPACE, "metric": "top1"}, r"metric: 'top1' is measured on the test split"),
    ({"n_trials": 3, "params": SPACE, "metric": "val_macro_f2"}, r"metric: 'val_macro_f2' is not a metric the"),
    ({"n_trials": 0, "params": SPACE}, r"n_trials: expected an integer >= 1"),
    ({"n_trials": 3, "params": {"train.optimizer.learning_rate": {"loguniform": [0, 1]}}}, r"bounds must be > 0"),
    ({"n_trials": 3, "params": {"train.model.bsae": {"choice": ["x"]}}}, r"unknown parameter 'model.bsae'"),
    ({"n_trials": 3, "params": {"train.dataset.image_size": {"uniform": [32, 64]}}}, r"expected an integer, got 32.0"),
    ({"n_trials": 3, "params": SPACE, "colour": 1}, r"unknown key 'colour'"),
    ({"n_trials": 3, "params": SPACE, "storage": "nowhere"}, r"storage: expected a URL"),
    ({"n_trials": 3, "params": {"train.model.base": {"choice": ["A", "B"]}}, "sampler": "cmaes"},
     r"cmaes searches continuous spaces"),
])
def test_an_optuna_search_is_validated_before_anything_runs(tmp_path: Path, optuna: dict, message: str) -> None:
    path = _write(tmp_path / "bad.yaml", {"name": "bad", "manifest": "m", "pipeline": ["train"],
                                          "search": {"optuna": optuna}})
    with pytest.raises(FungilibError, match=message) as info:
        load_sweep(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_storage_is_one_line_within_its_timeout(tmp_path: Path, free_port: int) -> None:
    import time

    from fungilib.optuna_storage import open_storage

    t0 = time.monotonic()
    with pytest.raises(FungilibError, match=rf"storage postgresql\+psycopg://127.0.0.1:{free_port}: not reachable"):
        open_storage(f"postgresql://fungilib@127.0.0.1:{free_port}/studies")
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_a_trial_is_pruned_inside_its_training_run(pipeline, tmp_path: Path, backend: str,
                                                   request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    """The training run reports val_accuracy after each epoch to the study — in a journal file, and on a real
    PostgreSQL server — and with better trials already recorded the median pruner stops it: pruned.json,
    train_summary.json and no evaluation."""
    import optuna

    from fungilib.composed import train_and_evaluate
    from fungilib.optuna_storage import open_storage
    from fungilib.params import build_params
    from fungilib.train import TrainParams

    storage = (f"journal:{tmp_path / 'study.journal'}" if backend == "journal"
               else request.getfixturevalue("postgres_url"))
    study = optuna.create_study(study_name="prune-me", storage=open_storage(storage), direction="maximize")
    for value in (0.9, 0.95, 0.97):  # earlier trials that did far better at every epoch
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={0: value, 1: value, 2: value}))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    out = tmp_path / "run"
    params = build_params(TrainParams, {"out": out, "dataset": {"manifest": str(pipeline.root / "clean"),
                                                                "image_size": 32, "batch_size": 64},
                                        "model": SCRATCH_MODEL,
                                        "fit": {"epochs": 3}, "optimizer": {"learning_rate": 1e-6},
                                        "trial": {"storage": storage, "study": "prune-me", "number": trial.number,
                                                  "metric": "val_accuracy", "pruner": "median"}})
    result = train_and_evaluate(params)
    # the median pruner never stops a run in its first epoch; after its second, this one is far below the median
    assert result.train.pruned_at_epoch == 2 and result.evaluation is None and result.train.epochs_run == 2
    assert json.loads((out / "pruned.json").read_text())["epoch"] == 2
    assert json.loads((out / "train_summary.json").read_text())["pruned_at_epoch"] == 2
    assert not (out / "metrics.json").exists()
    reloaded = optuna.load_study(study_name="prune-me", storage=open_storage(storage))
    assert list(reloaded.trials[trial.number].intermediate_values) == [0, 1]


@pytest.mark.slow
def test_an_optuna_sweep_runs_trials_as_run_folders_and_a_rerun_only_reports(pipeline, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    from fungilib.cli import main

    path = _optuna_sweep(pipeline, tmp_path / "opt.yaml", "opt", 2, n_trials=2, metric="val_top1", seed=1)
    runs = tmp_path / "runs"
    result = run_sweep(path, runs, workers=2)
    assert len(result.statuses) == 2
    assert {s["trial_state"] for s in result.statuses} <= {"complete", "pruned"}
    assert sorted(s["trial"] for s in result.statuses) == [0, 1]
    for status in result.statuses:
        folder = runs / "opt" / f"trial-{status['trial']:04d}"
        notebook = json.loads((folder / "04_train.ipynb").read_text())
        injected = next(c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        assert f'"number": {status["trial"]}' in "".join(injected["source"])  # the run knows its trial
        assert json.loads((folder / "status.json").read_text())["state"] in ("done", "pruned")
    import optuna

    from fungilib.optuna_storage import open_storage

    study = optuna.load_study(study_name="opt", storage=open_storage(f"journal:{runs / 'opt' / 'optuna.journal'}"))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2 and all(len(t.intermediate_values) >= 1 for t in finished)
    from fungilib.search import study_plots

    plots = study_plots(runs, "opt", tmp_path / "plots")
    assert set(plots) == {"optimization_history", "param_importances", "slice", "parallel_coordinate"}
    assert Path(plots["optimization_history"]).stat().st_size > 10_000  # the others may need more trials
    assert study_plots(runs, "not-a-study", tmp_path / "plots") == {}
    assert main(["sweep", str(path), "--runs-root", str(runs)]) == 0  # the study is complete: nothing more runs
    out = capsys.readouterr().out
    assert "0 executed" in out
    table_lines = [line for line in out.splitlines() if line.startswith("trial-")]
    assert len(table_lines) == 2  # best trial first (sorted by the objective)


@pytest.mark.slow
def test_a_study_killed_mid_trial_goes_on_where_it_was(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """SIGKILL the sweep (and its workers and kernels) while a trial trains; the rerun marks that trial failed,
    keeps the finished ones, and runs trials until n_trials are finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    from fungilib.optuna_storage import open_storage

    path = _optuna_sweep(pipeline, tmp_path / "killed.yaml", "killed", 2, n_trials=1, pruner="none", seed=3)
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "sweep", str(path), "--runs-root", str(runs),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = runs / "killed" / "trial-0000" / "output" / "history.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not first.exists():  # killed after its first epoch, mid-trial
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the trial never reached its first epoch"
    result = run_sweep(path, runs, workers=1)
    study = optuna.load_study(study_name="killed",
                              storage=open_storage(f"journal:{runs / 'killed' / 'optuna.journal'}"))
    states = [t.state.name for t in study.trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 1, states  # the killed one, then one to finish
    assert all(s["trial_state"] == "complete" for s in result.statuses)


@pytest.mark.slow
def test_optuna_trials_run_on_a_dask_local_cluster(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """The same flags as grid and random sweeps: trials asked from the shared study, run on Dask workers (two
    processes), told back; the journal file is shared through the file system as `runs/` is."""
    path = _optuna_sweep(pipeline, tmp_path / "dask.yaml", "dask-optuna", 1, n_trials=2, pruner="none",
                         sampler="random", seed=2)
    result = run_sweep(path, tmp_path / "runs", workers=2, local_cluster=2)
    assert sorted(s["trial"] for s in result.statuses) == [0, 1]
    assert all(s["trial_state"] == "complete" for s in result.statuses)
    assert len({s["pid"] for s in result.statuses}) == 2  # two Dask worker processes
