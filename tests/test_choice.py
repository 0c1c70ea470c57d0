"""A run is chosen on validation only: best_run, the runs table's order, the demo's export and Optuna's objective
read validation metrics; the test split is reported for the chosen run and never used to choose."""

from __future__ import annotations

from pathlib import Path

import pytest

from fungilib.artifacts.run_record import OUTPUT_DIR, RunState, write_status
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.runs_index import TEST, VALIDATION, best_run, collect_runs, ranked
from fungilib.sweep_file import parse_optuna

# run "a" is best on the test split, "b" on validation: only b may be chosen
RUNS = {
    "a": {"val_top1": 0.80, "val_macro_f1": 0.70, "val_nll": 0.9, "val_ece": 0.05, "top1": 0.99, "macro_f1": 0.99},
    "b": {"val_top1": 0.85, "val_macro_f1": 0.60, "val_nll": 0.7, "val_ece": 0.04, "top1": 0.50, "macro_f1": 0.50},
    "c": {"val_top1": 0.85, "val_macro_f1": 0.65, "val_nll": 0.8, "val_ece": 0.06, "top1": 0.40, "macro_f1": 0.40},
}


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    for run_id, metrics in RUNS.items():
        folder = tmp_path / "sweep" / run_id
        (folder / OUTPUT_DIR).mkdir(parents=True)
        write_status(folder, {"state": RunState.DONE, "run_id": run_id})
        TrainedRun(folder / OUTPUT_DIR).write_metrics(metrics)
    return tmp_path


def test_best_run_chooses_on_validation_and_breaks_ties_on_validation_macro_f1(runs_root: Path) -> None:
    assert best_run(runs_root, "sweep").name == "c"  # b and c tie on val_top1; c's validation macro-F1 is higher
    assert best_run(runs_root, "sweep", "val_nll").name == "b"  # lower is better
    assert best_run(runs_root, "sweep", "val_macro_f1").name == "a"
    assert best_run(runs_root, "sweep", among={"a", "b"}).name == "b"


@pytest.mark.parametrize("metric", TEST)
def test_no_chooser_reads_a_test_metric(runs_root: Path, metric: str) -> None:
    with pytest.raises(FungilibError, match=rf"metric '{metric}': runs are chosen on a validation metric "
                                            r"\(val_top1, .*\); the test split is reported .* never used to choose"):
        best_run(runs_root, "sweep", metric)
    with pytest.raises(FungilibError, match="runs are chosen on a validation metric"):
        ranked(collect_runs(runs_root, "sweep"), metric)
    with pytest.raises(FungilibError, match="is measured on the test split, which must never choose a model"):
        parse_optuna({"n_trials": 2, "metric": metric, "params": {"train.fit.epochs": {"int": [1, 2]}}}, "s.yaml")


def test_the_runs_table_lists_validation_first_and_ranks_on_it(runs_root: Path) -> None:
    table = collect_runs(runs_root, "sweep")
    assert ranked(table, "val_top1")["run_id"].tolist() == ["c", "b", "a"]
    assert set(VALIDATION) <= set(table.columns)


def test_the_cli_runs_table_is_sorted_on_validation_top1(runs_root: Path, capsys: pytest.CaptureFixture) -> None:
    from fungilib.cli import main

    assert main(["runs", "--runs-root", str(runs_root), "sweep"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert rows == ["c", "b", "a"]
