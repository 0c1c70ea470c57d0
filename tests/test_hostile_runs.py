"""Hostile sweep files, parameters and concurrent runs: nothing written outside the runs root, one line for every
bad request (exit 2, no traceback), a clean input cleans, and two processes never execute the same run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fungilib.artifacts.downloads import DOWNLOAD_CLAIM
from fungilib.claims import claim

from .conftest import SCRATCH_MODEL, SCRATCH_SETS


def _cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr


# -- 2. a sweep never writes outside its runs root ---------------------------------------------------------------
@pytest.mark.parametrize(("file_name", "name"), [("s.yaml", "../../escaped"), ("s.yaml", "/tmp/fungilib-escaped"),
                                                 ("...yaml", None), ("s.yaml", "a/b")])
def test_a_sweep_name_cannot_leave_the_runs_root(pipeline, tmp_path: Path, file_name: str, name: str | None) -> None:  # noqa: ANN001
    base = tmp_path / "a" / "b" / "c"
    runs = base / "runs"
    runs.mkdir(parents=True)
    data = {"manifest": str(pipeline.root / "clean"), "pipeline": ["train"], **({"name": name} if name else {}),
            "base": {"train": {"model": SCRATCH_MODEL}}}
    sweep_file = base / file_name
    sweep_file.write_text(yaml.safe_dump(data))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = _cli("sweep", str(sweep_file), "--runs-root", str(runs))
    _one_line(proc, "a sweep's name is one folder name under the runs root")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/tmp/fungilib-escaped").exists()
    _one_line(_cli("runs", "../..", "--runs-root", str(runs)), "unsafe id '../..'")


# -- 12. a perfectly clean input cleans (an empty `dropped` table is written and read back) ------------------------
def test_clean_with_nothing_to_drop_runs_its_notebook(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    from fungilib.artifacts.dataset import load_dropped, load_manifest
    from fungilib.artifacts.downloads import load_downloads
    from fungilib.artifacts.observations import load_observations
    from fungilib.fsutil import write_hdf
    from fungilib.notebooks import run_notebook
    from fungilib.stages import stage

    obs = load_observations(pipeline.root / "ingest")
    dl = load_downloads(pipeline.root / "download")
    manifest, _ = load_manifest(pipeline.root / "clean")
    keep = obs[obs["media_id"].isin(manifest["media_id"])]  # species rank, downloaded, decodable, deduplicated
    (tmp_path / "ingest").mkdir()
    (tmp_path / "download").mkdir()
    write_hdf(tmp_path / "ingest" / "observations.h5", {"observations": keep})
    dl = dl[dl["media_id"].isin(keep["media_id"])].copy()
    dl["path"] = [str(pipeline.root / "download" / p) for p in dl["path"]]
    write_hdf(tmp_path / "download" / "downloads.h5", {"downloads": dl})
    clean = stage("clean")
    out = tmp_path / "clean"
    run = run_notebook(clean.notebook_path, tmp_path / "03_clean.ipynb",
                       {**clean.defaults(), "observations": str(tmp_path / "ingest"),
                        "downloads": str(tmp_path / "download"), "out": str(out), "min_per_class": 1},
                       raise_on_error=False)
    assert run.ok, run.error
    dropped = load_dropped(out)
    assert dropped.empty and {"media_id", "reason"} <= set(dropped.columns)
    assert len(load_manifest(out)[0]) == len(keep)


# -- 13. two sweeps of one file: every run executed once; the index keeps every sweep -----------------------------
@pytest.mark.slow
def test_two_concurrent_sweeps_never_run_the_same_run_twice(tmp_path: Path, free_port: int) -> None:
    from fungilib.sample import SampleSpec, generate_sample

    sample = generate_sample(SampleSpec(out=tmp_path / "sample", observations=60, seed=5, image_size=96, flora="twelve",
                                        base_url=f"http://127.0.0.1:{free_port}"))  # its own server: the sweep's
    sweep_file = tmp_path / "twice.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "twice", "archive": str(sample.archive), "sample_dir": str(sample.root), "sample_port": free_port,
        "pipeline": ["ingest_eda", "download", "clean"],
        "base": {"download": {"timeout": 1.0, "retries": 1, "max_side": 96}, "clean": {"min_per_class": 3}},
        "search": {"grid": {"clean.seed": [0, 1, 2]}}}))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "fungilib.cli", "sweep", str(sweep_file), "--runs-root", str(runs), "--workers", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outputs]
    executed = [int(re.search(r"(\d+) executed", out).group(1)) for out, _ in outputs]
    assert sum(executed) == 5, outputs  # ingest, download and three cleans, each executed by one process only
    for folder in (runs / "twice").iterdir():
        if folder.name != "stages":
            assert len(list(folder.glob("*.ipynb"))) == 1
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(sweep_file.read_text()), "name": "other",
                                     "search": {"grid": {"clean.seed": [5]}}}))
    assert _cli("sweep", str(other), "--runs-root", str(runs)).returncode == 0
    import pandas as pd

    index = pd.read_hdf(runs / "index.h5", "runs")
    assert sorted(index["sweep"].value_counts().items()) == [("other", 1), ("twice", 3)]


def test_a_second_download_into_the_same_folder_is_refused(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "download"
    with claim(out, name=DOWNLOAD_CLAIM) as mine:  # as a running download holds it
        assert mine
        proc = _cli("download", str(pipeline.root / "ingest"), "--out", str(out), "--set", "limit=3")
    _one_line(proc, "another download is writing here (pid ")
    assert not (out / "downloads.h5").exists()


# -- 14. requests that used to end in a traceback ------------------------------------------------------------------
def test_bad_requests_are_one_line(pipeline, trained_run: Path, tmp_path: Path) -> None:  # noqa: ANN001
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "observations.h5").write_text("not an HDF5 file")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (pipeline.root / "ingest" / "observations.h5").read_bytes()
    (truncated / "observations.h5").write_bytes(data[: len(data) // 3])
    cases = [
        (("sample", "--out", str(tmp_path / "s"), "--observations", "10"),
         "observations: 10 is too few; the sample needs at least 24"),
        (("sample", "serve", "--out", str(tmp_path / "s"), "--port", "70000"), "--port 70000: a port is"),
        (("serve", str(tmp_path), "--port", "70000"), "--port 70000: a port is"),
        (("serve", str(tmp_path), "--port", "-1"), "--port -1: a port is"),
        (("clean", "--observations", "o", "--downloads", "d", "--out", "c", "--seed", "-1"), "seed must be >= 0"),
        (("download", str(junk), "--out", str(tmp_path / "d1"), "--set", "timeout=.nan"),
         "timeout: expected a finite number"),
        (("download", str(junk), "--out", str(tmp_path / "d2")), "not a readable fungilib table"),
        (("eda", str(junk), "--out", str(tmp_path / "e1")), "not a readable fungilib table"),
        (("download", str(truncated), "--out", str(tmp_path / "d3")), "not a readable fungilib table"),
        (("eda", str(truncated), "--out", str(tmp_path / "e2")), "not a readable fungilib table"),
    ]
    for args, fragment in cases:
        _one_line(_cli(*args), fragment)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("mine")
    _one_line(_cli("export", str(trained_run), "--out", "."  , timeout=120) if False else
              _cli("export", str(trained_run), "--out", ".", cwd=site), "refusing to replace")
    _one_line(_cli("export", str(trained_run), "--out", str(site)), "is not an export bundle")
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]


# -- second round, 0: a stage never writes over a folder it did not make ---------------------------------------------
def test_data_stages_refuse_a_folder_that_holds_the_users_files(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.csv").write_text("my own labels\n")
    (mine / "params.yaml").write_text("mine: true\n")
    cases = [
        ("clean", "--observations", str(pipeline.root / "ingest"), "--downloads", str(pipeline.root / "download"),
         "--out", str(mine)),
        ("ingest", str(pipeline.sample.archive), "--out", str(mine)),
        ("import-folder", str(pipeline.root / "download" / "images"), "--out", str(mine)),
        ("download", str(pipeline.root / "ingest"), "--out", str(mine), "--set", "limit=2"),
    ]
    for args in cases:
        proc = _cli(*args)
        _one_line(proc, f"out {mine}: holds files fungilib did not write for the ")
        assert "nothing there is written over" in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["labels.csv", "params.yaml"]
    assert (mine / "labels.csv").read_text() == "my own labels\n"
    assert (mine / "params.yaml").read_text() == "mine: true\n"
    system = tmp_path / "etc"  # as `--set out=/etc` would be: a folder of someone else's files
    system.mkdir()
    (system / "passwd").write_text("root:x:0:0\n")
    _one_line(_cli("ingest", str(pipeline.sample.archive), "--set", f"out={system}"), "(e.g. 'passwd')")
    assert [p.name for p in system.iterdir()] == ["passwd"]


def test_a_stage_reruns_into_its_own_folder(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "ingest"
    assert _cli("ingest", str(pipeline.sample.archive), "--out", str(out)).returncode == 0
    assert _cli("ingest", str(pipeline.sample.archive), "--out", str(out)).returncode == 0  # its own output


def test_two_trainings_into_one_folder_the_second_is_refused(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "train", "--manifest", str(pipeline.root / "clean"),
                              "--out", str(out), *SCRATCH_SETS,
                              "--set", "fit.epochs=30", "--set", "dataset.image_size=32",
                              "--no-evaluate"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        claim_file = out / ".train-claim"
        deadline = time.monotonic() + 120
        while not (claim_file.exists() and claim_file.read_text().startswith("pid")) and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.1)
        second = _cli("train", "--manifest", str(pipeline.root / "clean"), "--out", str(out), *SCRATCH_SETS,
                      "--set", "fit.epochs=1")
        _one_line(second, f"{out}: another training is writing here (pid {first.pid} ")
    finally:
        first.kill()
        first.wait()


# -- second round, 8 and 13: a run or bundle whose files do not belong together answers nothing -------------------
def _one_error_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """fungilib's own answer is one line (TensorFlow's C++ start-up lines, which no Python setting silences, aside)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    ours = [line for line in proc.stderr.splitlines() if line.startswith("fungilib")]
    assert len(ours) == 1 and "Traceback" not in proc.stderr and fragment in ours[0], proc.stderr[-2000:]


def _copy_run(trained_run: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("model.keras", "labels.csv", "labels.json", "preprocessing.json", "metrics.json",
                 "train_summary.json"):
        (target / name).write_bytes((trained_run / name).read_bytes())
    return target


def test_a_run_whose_labels_model_or_preprocessing_do_not_fit_is_one_error_line(pipeline, trained_run: Path,  # noqa: ANN001
                                                                          tmp_path: Path) -> None:
    photo = sorted((pipeline.root / "download" / "images").rglob("*.jpg"))[0]
    cut = _copy_run(trained_run, tmp_path / "cut")
    lines = (cut / "labels.csv").read_text().splitlines()
    (cut / "labels.csv").write_text("\n".join(lines[:4]) + "\n")  # 3 classes for a 10-output model
    for args in (("predict", str(photo), "--model", str(cut)), ("export", str(cut), "--out", str(tmp_path / "b")),
                 ("evaluate", str(cut))):
        _one_error_line(_cli(*args), f"{cut}: the label table lists 3 classes but the model answers 10")
    assert not (tmp_path / "b").exists()
    damaged = _copy_run(trained_run, tmp_path / "damaged")
    (damaged / "model.keras").write_bytes((damaged / "model.keras").read_bytes()[:5000])
    _one_error_line(_cli("predict", str(photo), "--model", str(damaged)), "model.keras: not a readable Keras model (")
    odd = _copy_run(trained_run, tmp_path / "odd")
    spec = json.loads((odd / "preprocessing.json").read_text())
    (odd / "preprocessing.json").write_text(json.dumps({**spec, "input_size": "abc"}))
    _one_error_line(_cli("predict", str(photo), "--model", str(odd)),
                    "preprocessing.json's input_size 'abc' is not one the")


def test_a_bundle_whose_labels_do_not_fit_its_model_answers_nothing(pipeline, bundle, tmp_path: Path) -> None:  # noqa: ANN001
    photo = sorted((pipeline.root / "download" / "images").rglob("*.jpg"))[0]
    site = tmp_path / "bundle"
    site.mkdir()
    for name in ("model_f32.tflite", "preprocessing.json", "config.json"):
        (site / name).write_bytes((bundle.bundle / name).read_bytes())
    (site / "labels.json").write_text(json.dumps(json.loads((bundle.bundle / "labels.json").read_text())[:3]))
    _one_error_line(_cli("predict", str(photo), "--model", str(site)), "the label table lists 3 classes but the model")


# -- second round, 15: only regular files are photos; a scheduler that is not there fails at once -----------------
def test_a_fifo_is_never_read_as_a_photo(pipeline, trained_run: Path, tmp_path: Path) -> None:  # noqa: ANN001
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    proc = _cli("predict", str(fifo), "--model", str(trained_run), "--json", timeout=120)
    assert proc.returncode == 1 and '"not a regular file' in proc.stdout, proc.stdout + proc.stderr
    tree = tmp_path / "tree"
    (tree / "amanita").mkdir(parents=True)
    (tree / "boletus").mkdir()
    photos = sorted((pipeline.root / "download" / "images").rglob("*.jpg"))
    for i, photo in enumerate(photos[:12]):
        (tree / ("amanita" if i % 2 else "boletus") / photo.name).write_bytes(photo.read_bytes())
    os.mkfifo(tree / "amanita" / "pipe.jpg")
    proc = _cli("import-folder", str(tree), "--out", str(tmp_path / "import"), "--set", "min_per_class=2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "import" / "import_report.json").read_text())
    assert report["dropped"].get("not a regular file") == 1, report


def test_a_sweep_on_a_scheduler_that_is_not_there_fails_at_once_and_marks_nothing(pipeline, tmp_path: Path,  # noqa: ANN001
                                                                                  free_port: int) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "nowhere", "pipeline": ["train"], "manifest": str(pipeline.root / "clean"),
                                     "base": {"train": {"fit": {"epochs": 1}, "model": SCRATCH_MODEL}}}))
    started = time.monotonic()
    proc = _cli("sweep", str(sweep), "--runs-root", str(tmp_path / "runs"), "--scheduler",
                f"tcp://127.0.0.1:{free_port}")
    _one_line(proc, f"scheduler tcp://127.0.0.1:{free_port}: nothing answers there")
    assert time.monotonic() - started < 30
    assert not list((tmp_path / "runs").rglob("status.json"))  # no run marked queued
    _one_line(_cli("sweep", str(sweep), "--runs-root", str(tmp_path / "runs"), "--scheduler", "not an address"),
              "scheduler 'not an address': expected tcp://HOST:PORT")
