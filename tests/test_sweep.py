"""Sweeps: expansion, validation, cached shared stages, failures, resume after SIGKILL, Dask, the runs index."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fungilib.artifacts.run_record import read_status
from fungilib.cli import main
from fungilib.errors import FungilibError
from fungilib.runs_index import collect_runs, write_index
from fungilib.sweep import run_sweep
from fungilib.sweep_file import expand_search, load_sweep
from fungilib.sweep_plan import plan

from .conftest import SCRATCH_MODEL


def test_grid_is_a_sorted_cartesian_product_with_nested_keys() -> None:
    runs = expand_search({"grid": {"train.optimizer.learning_rate": [0.1, 0.2, 0.3],
                                   "train.augmentation.enabled": [True, False]}}, "s.yaml")
    assert len(runs) == 6
    assert runs[0] == {"train.augmentation.enabled": True, "train.optimizer.learning_rate": 0.1}
    assert len({json.dumps(r, sort_keys=True) for r in runs}) == 6


def test_random_search_is_seeded_and_draws_within_bounds() -> None:
    spec = {"random": {"n": 20, "seed": 3, "params": {
        "a.lr": {"loguniform": [1e-4, 1e-2]}, "a.p": {"uniform": [0.0, 0.5]}, "a.n": {"int": [2, 4]},
        "a.c": {"choice": ["x", "y"]}}}}
    first, again = expand_search(spec, "s"), expand_search(spec, "s")
    assert first == again and len(first) == 20
    assert all(1e-4 <= r["a.lr"] <= 1e-2 and 0 <= r["a.p"] <= 0.5 and r["a.n"] in {2, 3, 4} for r in first)
    assert {r["a.c"] for r in first} == {"x", "y"}
    assert expand_search({**spec, "random": {**spec["random"], "seed": 4}}, "s") != first


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("data", "message"), [
    ({"pipeline": ["train"], "manifest": "m", "colour": 1}, r"unknown key 'colour'; allowed: archive, base"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"grid": {"train.model.bsae": ["x"]}}},
     r"train: unknown parameter 'model.bsae' for ModelParams; allowed: base, weights"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"grid": {"train.fit.epochs": ["many"]}}},
     r"train: fit.epochs: expected an integer, got 'many'"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"grid": {"train.fit.epochs": []}}},
     r"search.grid.train.fit.epochs: expected a non-empty list"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"grid": {"clean.seed": [1]}}},
     r"search key 'clean.seed' must start with a stage of the pipeline"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"grid": {"train.learning_rat": [1]}}},
     r"train: unknown parameter 'learning_rat' for 04_train.ipynb; allowed: out, dataset, model"),
    ({"pipeline": ["clean", "train"], "manifest": "m"}, r"pipeline must start at ingest_eda"),
    ({"pipeline": ["ingest_eda"]}, r"missing 'archive'"),
    ({"pipeline": ["train"], "manifest": "m", "search": {"random": {"n": 2, "params": {"train.fit.epochs": [1, 2]}}}},
     r"expected one of \{choice"),
])
def test_the_whole_sweep_is_validated_before_anything_runs(tmp_path: Path, data: dict, message: str) -> None:
    path = _write(tmp_path / "bad.yaml", data)
    with pytest.raises(FungilibError, match=message) as info:
        load_sweep(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _data_sweep(pipeline, folder: Path, name: str, grid: dict) -> Path:  # noqa: ANN001
    return _write(folder / f"{name}.yaml", {
        "name": name, "archive": str(pipeline.sample.archive), "pipeline": ["ingest_eda", "download", "clean"],
        "base": {"download": {"timeout": 1.0, "retries": 1, "max_side": 128, "allow_hosts": ["127.0.0.1"]},
                 "clean": {"min_per_class": 5}},
        "search": {"grid": grid}})


@pytest.mark.slow
def test_sweep_runs_data_stages_once_then_a_rerun_does_nothing(pipeline, sweep_root: Path, tmp_path: Path) -> None:
    path = _data_sweep(pipeline, tmp_path, "cache", {"clean.seed": [0, 1]})
    result = run_sweep(path, sweep_root, workers=2)
    stages = sorted(s["stage"] for s in result.executed)
    assert stages == ["clean", "clean", "download", "ingest_eda"]  # the data stages ran once, shared by both runs
    assert [s["state"] for s in result.statuses] == ["done", "done"]
    shared, runs = plan(load_sweep(path), sweep_root)
    assert len(shared) == 2 and len(runs) == 2 and len({r.run_id for r in runs}) == 2
    for run in runs:
        assert (run.folder / "03_clean.ipynb").exists() and (run.folder / "params.yaml").exists()
        executed = json.loads((run.folder / "03_clean.ipynb").read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    before = {str(r.folder): read_status(r.folder)["start"] for r in shared + runs}
    again = run_sweep(path, sweep_root, workers=2)
    assert again.executed == [] and again.skipped == 4
    assert {str(r.folder): read_status(r.folder)["start"] for r in shared + runs} == before
    table = write_index(sweep_root, "cache")
    assert sorted(table["run_id"]) == sorted(r.run_id for r in runs) and set(table["status"]) == {"done"}
    stored = pd.read_hdf(sweep_root / "index.h5", "runs")
    assert len(stored) == len(table) and (sweep_root / "index.csv").exists()
    assert "param.seed" in table.columns and sorted(table["param.seed"]) == [0, 1]


@pytest.mark.slow
def test_a_failing_run_is_kept_and_the_sweep_goes_on(pipeline, sweep_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    path = _data_sweep(pipeline, tmp_path, "failing", {"clean.min_per_class": [5, 100000]})
    code = main(["sweep", str(path), "--runs-root", str(sweep_root), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "1 failed" in out and "no images left after cleaning" in out
    table = collect_runs(sweep_root, "failing")
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and len(table[table["status"] == "done"]) == 1
    notebook = sweep_root / "failing" / failed.iloc[0]["run_id"] / "03_clean.ipynb"
    assert "FungilibError" in notebook.read_text()  # the executed notebook is the log
    assert main(["report", str(notebook.parent)]) == 0
    html = notebook.with_suffix(".html").read_text()
    assert "<html" in html and "no images left after cleaning" in html


@pytest.mark.slow
def test_training_sweep_on_a_dask_local_cluster_then_the_comparison_notebook(pipeline, sweep_root: Path,
                                                                            tmp_path: Path) -> None:
    path = _write(tmp_path / "dask.yaml", {
        "name": "dask", "manifest": str(pipeline.root / "clean"), "pipeline": ["train"],
        "base": {"train": {"dataset": {"image_size": 32, "batch_size": 64}, "fit": {"epochs": 1},
                           "model": SCRATCH_MODEL}},
        "search": {"grid": {"train.optimizer.learning_rate": [0.001, 0.01]}}})
    result = run_sweep(path, sweep_root, local_cluster=2)
    assert [s["state"] for s in result.statuses] == ["done", "done"]
    assert len({s["pid"] for s in result.statuses}) == 2  # two Dask worker processes
    assert [s.get("kernel") for s in result.statuses] == ["warm", "warm"]  # the workers share the sweep's pool
    table = collect_runs(sweep_root, "dask")
    assert table["top1"].notna().all() and sorted(table["param.optimizer.learning_rate"]) == [0.001, 0.01]
    from fungilib.notebooks import run_notebook
    from fungilib.stages import NOTEBOOKS_DIR

    # each run's executed notebook reads as its report: the project kernel, learning curves, no widget warning
    for row in table.itertuples():
        folder = sweep_root / "dask" / row.run_id
        executed = json.loads((folder / "04_train.ipynb").read_text())
        assert executed["metadata"]["kernelspec"]["name"] == "fungilib"
        text = json.dumps(executed)
        assert "IProgress not found" not in text and "TqdmWarning" not in text
        assert "InitializeLog" not in text and "cuInit" not in text  # C libraries' chatter stays out of the report
        images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) >= 5  # learning curves, confusion, reliability, per-class F1, confidently wrong
        history = pd.read_csv(folder / "output" / "history.csv")
        assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(history.columns)
        assert (folder / "output" / "learning_curves.png").stat().st_size > 10_000
        assert "<td>" in text  # result tables rendered as HTML tables, not dataclass reprs
        assert "TrainResult(" not in text
        assert row.data and row.data == read_status(folder)["data"]  # the data version each run used
    out = tmp_path / "compare"
    run = run_notebook(NOTEBOOKS_DIR / "06_compare_runs.ipynb", out / "06.ipynb",
                       {"runs_root": str(sweep_root), "sweep": "dask", "out": str(out)})
    assert run.ok
    assert (out / "val_top1_vs_params.png").stat().st_size > 5000  # the metric runs are chosen on
    assert (out / "learning_curves_val_accuracy.png").exists()


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume(pipeline, sweep_root: Path, tmp_path: Path) -> None:
    path = _data_sweep(pipeline, tmp_path, "killed", {"clean.seed": [10, 11, 12]})
    _, runs = plan(load_sweep(path), sweep_root)
    cmd = [sys.executable, "-m", "fungilib.cli", "sweep", str(path), "--runs-root", str(sweep_root), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(read_status(r.folder).get("state") == "done" for r in runs):
        time.sleep(0.2)
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers and kernels, at once
    proc.wait()
    done = {r.run_id: read_status(r.folder)["start"] for r in runs if read_status(r.folder).get("state") == "done"}
    assert 1 <= len(done) < 3
    result = run_sweep(path, sweep_root, workers=1)
    assert [s["state"] for s in result.statuses] == ["done"] * 3
    assert {r.run_id: read_status(r.folder)["start"] for r in runs if r.run_id in done} == done  # not redone
    assert len(result.executed) == 3 - len(done)


def test_run_keys_follow_what_the_data_contains_not_when_it_was_written(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """Rewriting a manifest folder with the same rows (as a rerun of the clean stage does: a new HDF5 file, a new
    executed notebook beside it) keeps every run's key; changing its rows changes them."""
    import shutil

    from fungilib.fsutil import read_hdf, write_hdf

    manifest = tmp_path / "clean"
    shutil.copytree(pipeline.root / "clean", manifest)
    path = _write(tmp_path / "keys.yaml", {"name": "keys", "manifest": str(manifest), "pipeline": ["train"],
                                           "search": {"grid": {"train.fit.seed": [1, 2]}}})
    _, first = plan(load_sweep(path), tmp_path / "runs")
    tables = {key: read_hdf(manifest / "manifest.h5", key) for key in ("manifest", "labels", "dropped")}
    time.sleep(0.05)
    write_hdf(manifest / "manifest.h5", tables)
    (manifest / "03_clean.ipynb").write_text("{}")  # another execution's record beside the data
    _, again = plan(load_sweep(path), tmp_path / "runs")
    assert [(r.run_id, r.key, r.data) for r in again] == [(r.run_id, r.key, r.data) for r in first]
    write_hdf(manifest / "manifest.h5", {**tables, "manifest": tables["manifest"].iloc[1:]})
    _, changed = plan(load_sweep(path), tmp_path / "runs")
    assert not {r.run_id for r in changed} & {r.run_id for r in first}
    assert len({r.data for r in changed}) == 1 and changed[0].data != first[0].data


def _spans_never_overlap(statuses: list[dict], holder: str) -> None:
    by_holder: dict[str, list[tuple[str, str]]] = {}
    for status in statuses:
        by_holder.setdefault(str(status[holder]), []).append((status["start"], status["end"]))
    for spans in by_holder.values():
        spans.sort()
        assert all(before[1] <= after[0] for before, after in zip(spans, spans[1:], strict=False)), spans


@pytest.mark.slow
def test_gpu_sweep_gives_each_run_one_gpu_and_never_two_runs_one_gpu(pipeline, sweep_root: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNGILIB_GPU_IDS", "0,1")  # fake ids: this machine has no GPU, the placement is the same
    path = _data_sweep(pipeline, tmp_path, "gpus", {"clean.seed": [20, 21, 22, 23]})
    _, runs = plan(load_sweep(path), sweep_root)
    assert main(["sweep", str(path), "--runs-root", str(sweep_root), "--gpus", "0,7"]) == 2  # no GPU 7: nothing runs
    assert not any(r.folder.exists() for r in runs)
    assert main(["sweep", str(path), "--runs-root", str(sweep_root), "--gpus", "0,1", "--local-cluster", "2"]) == 2
    assert main(["sweep", str(path), "--runs-root", str(sweep_root), "--gpus", "0,1"]) == 0
    statuses = [read_status(r.folder) for r in runs]
    assert [s["state"] for s in statuses] == ["done"] * 4
    assert sorted({s["gpu"] for s in statuses}) == ["0", "1"]  # both GPUs used, each run on one
    for gpu in ("0", "1"):  # one worker process owns each GPU for the whole sweep
        assert len({s["pid"] for s in statuses if s["gpu"] == gpu}) == 1
    _spans_never_overlap(statuses, "gpu")


@pytest.mark.slow
def test_dask_runs_hold_the_gpu_resource_one_at_a_time_per_worker(pipeline, sweep_root: Path, tmp_path: Path) -> None:
    path = _data_sweep(pipeline, tmp_path, "gpu-resource", {"clean.seed": [30, 31, 32, 33]})
    # two workers, two threads each, one GPU each: the resource, not the threads, allows one run at a time
    result = run_sweep(path, sweep_root, local_cluster=2, gpu_resource=True)
    assert [s["state"] for s in result.statuses] == ["done"] * 4
    assert len({s["pid"] for s in result.statuses}) == 2
    _spans_never_overlap(result.statuses, "pid")


def test_a_training_folder_last_run_on_other_data_starts_afresh(tmp_path: Path) -> None:
    """Training resumes (or skips) from what its folder holds, so a folder whose last run had other inputs or
    parameters is emptied before the stage runs again — never a stale model reported as the new one — while a
    folder of the same key keeps what it holds (resume after a kill). Stages that do not resume are left as they are."""
    from fungilib.claims import CLAIM_FILE
    from fungilib.run_execution import _clear_stale
    from fungilib.sweep_plan import StageRun

    def folder(name: str, key: str) -> Path:
        path = tmp_path / name
        (path / "backup").mkdir(parents=True)
        (path / "model.keras").write_bytes(b"stale weights")
        (path / "train_summary.json").write_text("{}")
        (path / CLAIM_FILE).write_text("pid 1 on here\n")
        (path / "status.json").write_text(json.dumps({"stage": "train", "key": key, "state": "done"}))
        return path

    stale = folder("stale", "old-key")
    _clear_stale(StageRun("train", "new-key", stale, {}))
    assert sorted(p.name for p in stale.iterdir()) == [CLAIM_FILE]
    same = folder("same", "the-key")
    _clear_stale(StageRun("train", "the-key", same, {}))
    assert (same / "model.keras").exists() and (same / "backup").is_dir()
    data_stage = folder("download", "old-key")
    _clear_stale(StageRun("download", "new-key", data_stage, {}))  # photos already fetched are kept for reuse
    assert (data_stage / "model.keras").exists()
