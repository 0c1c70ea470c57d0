"""The embed stage and head runs on stored embeddings: the features of every photo under a frozen pretrained base
once (resumable after a kill), head runs that train on them and compose into one exportable network, SMOTE in
feature space, and a sweep that shares one embed stage among its runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.embeddings import load_embeddings
from fungilib.errors import FungilibError
from fungilib.head_fit import smote
from fungilib.sweep_file import load_sweep
from fungilib.sweep_plan import plan

pytest.importorskip("tensorflow")

EMBED = ["--set", "image_size=40", "--set", "part_rows=64", "--set", "batch_size=32"]
HEAD = ["--set", "model.freeze=head_only", "--set", "dataset.image_size=40", "--set", "fit.epochs=4"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def embedded(pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The session manifest embedded by `fungilib embed` (EfficientNet-Lite0 from its packaged weights, 40 px, one
    augmented view per training photo), SIGKILLed once after its first part and rerun: it resumes."""
    out = tmp_path_factory.mktemp("embed") / "emb"
    cmd = [sys.executable, "-m", "fungilib.cli", "embed", "--manifest", str(pipeline.root / "clean"), "--out", str(out),
           *EMBED, "--set", "views=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "parts" / "00000.npy"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_photo_is_embedded_once_and_a_killed_run_resumes(embedded: Path, pipeline) -> None:  # noqa: ANN001
    manifest, _ = load_manifest(pipeline.root / "clean")
    emb = load_embeddings(embedded)
    train = int((manifest["split"] == "train").sum())
    assert len(emb.index) == len(manifest) + train and emb.array.shape == (len(manifest) + train, 1280)
    assert emb.info["resumed_parts"] >= 1 and not (embedded / "parts").exists()  # resumed, parts joined and removed
    assert emb.info["manifest_version"] and emb.info["base"] == "EfficientNetLite0"
    centre = emb.index[emb.index["view"] == 0]
    assert centre["media_id"].astype(str).tolist() == manifest["media_id"].astype(str).tolist()  # manifest order
    x, _ = emb.rows("train", views=True)
    assert len(x) == 2 * train and not np.allclose(x[:train], x[train:])  # the views differ from the centre crops
    again = _cli("embed", "--manifest", str(pipeline.root / "clean"), "--out", str(embedded), *EMBED,
                 "--set", "views=1")
    assert again.returncode == 0 and '"skipped": true' in again.stdout  # finished with the same inputs: kept
    other = _cli("embed", "--manifest", str(pipeline.root / "clean"), "--out", str(embedded), *EMBED)
    assert other.returncode == 2 and "holds embeddings of other inputs (views 1, asked 0)" in other.stderr


def test_a_head_run_on_embeddings_trains_composes_and_is_evaluated_like_any_run(embedded: Path, pipeline,  # noqa: ANN001
                                                                                tmp_path: Path) -> None:
    from fungilib.artifacts.trained_run import TrainedRun
    from fungilib.model_outputs import photo_outputs, stored_outputs

    out = tmp_path / "head"
    done = _cli("train", "--manifest", str(pipeline.root / "clean"), "--out", str(out), *HEAD,
                "--set", f"dataset.embeddings={embedded}", "--set", "dataset.balance=smote")
    assert done.returncode == 0, done.stderr[-3000:]
    run = TrainedRun(out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["embeddings"] == str(embedded)
    # the run keeps its head (kilobytes), not a copy of the base: composed when loaded
    assert not run.model_file.exists() and run.head_logits_file.stat().st_size < 100_000 and run.finished
    metrics = run.metrics()
    assert metrics["val_top1"] > 0.5 and metrics["top1"] > 0.5  # a real head on real features of the sample
    # the stored path and the whole network answer alike for test photos (what evaluation relied on)
    model, labels, prep = run.load()
    manifest, _ = load_manifest(pipeline.root / "clean")
    test = manifest[manifest["split"] == "test"].head(12)
    whole = photo_outputs(model, len(labels), int(prep["input_size"]))
    assert np.abs(stored_outputs(run.head_logits(), embedded, whole)(test)[0] - whole(test)[0]).max() < 1e-3
    # exported as one model: base + head composed, checked against the head on the stored embeddings
    from fungilib.export import ExportParams, export_run

    exported = export_run(ExportParams(run=out, out=tmp_path / "bundle", tfjs_quantization=["none"], parity_images=4))
    composed = exported.parity["composed_head"]
    assert composed["top1_agreement"] == 1.0 and composed["max_abs_logit_diff"] < 1e-3 and composed["photos"] > 0
    assert exported.parity["tflite_f32"]["top1_agreement"] == 1.0
    assert "composed with its base for export" in (exported.bundle / "MODEL_CARD.md").read_text()
    assert np.array_equal(run.head_logits()[0], model.get_layer("logits").get_weights()[0])  # evaluation's head


@pytest.mark.parametrize(("setting", "message"), [
    ("dataset.image_size=64", "embeddings of image_size 40, the run asks 64"),
    ("model.base=MobileNetV2Torchvision",
     "embeddings of base 'EfficientNetLite0', the run asks 'MobileNetV2Torchvision'"),
    ("model.freeze=two_phase", "dataset.embeddings trains the head only: set model.freeze=head_only"),
])
def test_embeddings_that_do_not_match_the_run_are_refused_in_one_line(embedded: Path, pipeline, tmp_path: Path,  # noqa: ANN001
                                                                        setting: str, message: str) -> None:
    done = _cli("train", "--manifest", str(pipeline.root / "clean"), "--out", str(tmp_path / "run"), *HEAD,
                "--set", f"dataset.embeddings={embedded}", "--set", setting)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_smote_fills_small_classes_with_points_between_their_own() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(10, 1, (6, 8)), rng.normal(-10, 1, (1, 8))])
    y = np.array([0] * 40 + [1] * 6 + [2])
    new_x, new_y = smote(x, y, 3, seed=0)
    assert np.bincount(new_y).tolist() == [40, 40, 40]
    made = new_x[len(x):][new_y[len(x):] == 1]
    own = x[y == 1]
    assert (made.min(axis=0) >= own.min(axis=0) - 1e-9).all() and (made.max(axis=0) <= own.max(axis=0) + 1e-9).all()
    capped_x, capped_y = smote(x, y, 3, seed=0, per_class=10)  # a long tail's cap: the big class stays as it is
    assert np.bincount(capped_y).tolist() == [40, 10, 10] and np.allclose(capped_x[: len(x)], x, rtol=1e-6)
    with pytest.raises(FungilibError, match="dataset.balance=smote works on stored embeddings"):
        from fungilib.params import build_params
        from fungilib.train import TrainParams

        build_params(TrainParams, {"out": "x", "dataset": {"balance": "smote"}})


def test_a_sweep_shares_one_embed_stage_among_its_head_runs(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    from fungilib.sweep import run_sweep

    path = tmp_path / "heads.yaml"
    path.write_text(yaml.safe_dump({
        "name": "heads", "manifest": str(pipeline.root / "clean"), "pipeline": ["embed", "train"],
        "base": {"embed": {"image_size": 40, "batch_size": 32},
                 "train": {"dataset": {"image_size": 40}, "model": {"freeze": "head_only"}, "fit": {"epochs": 2}}},
        "search": {"grid": {"train.optimizer.learning_rate": [0.001, 0.01]}}}))
    result = run_sweep(path, tmp_path / "runs", workers=2)
    assert [s["state"] for s in result.statuses] == ["done"] * 2
    assert sorted(s["stage"] for s in result.executed) == ["embed"] + ["train"] * 2  # one embed for both head runs
    shared, runs = plan(load_sweep(path), tmp_path / "runs")
    assert [r.stage for r in shared] == ["embed"]
    for run in runs:
        assert Path(run.parameters["dataset"]["embeddings"]) == Path(shared[0].parameters["out"])
        assert json.loads((run.folder / "output" / "metrics.json").read_text())["val_top1"] > 0
    again = run_sweep(path, tmp_path / "runs", workers=1)
    assert again.executed == [] and again.skipped == 3  # a rerun: unchanged


def test_an_optuna_study_of_heads_shares_the_embed_stage_too(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """`search: optuna` over head parameters on `[embed, train]`: one embed stage, every trial a head run on it (the
    trial's run folder keeps the head alone), a second study over another parameter reuses the stored embeddings."""
    from fungilib.sweep import run_sweep

    def study(name: str, space: dict) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "manifest": str(pipeline.root / "clean"), "pipeline": ["embed", "train"],
            "base": {"embed": {"image_size": 40, "batch_size": 32},
                     "train": {"dataset": {"image_size": 40}, "model": {"freeze": "head_only"},
                               "fit": {"epochs": 2}, "evaluate": False}},
            "search": {"optuna": {"params": space, "n_trials": 2, "metric": "val_top1", "seed": 0}}}))
        return path

    runs = tmp_path / "runs"
    first = run_sweep(study("lr", {"train.optimizer.learning_rate": {"loguniform": [0.001, 0.03]}}), runs, workers=1)
    assert [s["stage"] for s in first.executed if s.get("stage") == "embed"] == ["embed"]
    assert sorted(s["trial"] for s in first.statuses) == [0, 1]
    for status in first.statuses:
        folder = runs / "lr" / f"trial-{status['trial']:04d}" / "output"
        params = yaml.safe_load((folder / "params.yaml").read_text())
        assert params["dataset"]["embeddings"] and (folder / "head_logits.npz").exists()
        assert not (folder / "model.keras").exists()
    embeddings = Path(params["dataset"]["embeddings"])
    stamp = (embeddings / "embeddings.npy").stat().st_mtime_ns
    second = run_sweep(study("drop", {"train.model.dropout": {"uniform": [0.0, 0.5]}}), runs, workers=1)
    assert [s for s in second.executed if s.get("stage") == "embed"] == []  # the first study's, reused
    assert sorted(s["trial"] for s in second.statuses) == [0, 1]
    for status in second.statuses:
        folder = runs / "drop" / f"trial-{status['trial']:04d}" / "output"
        assert Path(yaml.safe_load((folder / "params.yaml").read_text())["dataset"]["embeddings"]) == embeddings
    assert (embeddings / "embeddings.npy").stat().st_mtime_ns == stamp and not (runs / "drop" / "stages").exists()
