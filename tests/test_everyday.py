"""Everyday use: predictions from the command line, pictures of the data and the model, TensorBoard over a
sweep, and JupyterLab in one command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fungilib.artifacts.dataset import load_dropped, load_manifest
from fungilib.contact_sheets import class_sheets, dropped_sheet

ROOT = Path(__file__).resolve().parents[1]



def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fungilib.cli", "predict", *args], capture_output=True, text=True,
                          timeout=300)


def test_predict_agrees_with_evaluation_and_reports_bad_files(trained_run: Path, pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    manifest, labels = load_manifest(pipeline.root / "clean")
    test = manifest[manifest["split"] == "test"].head(8)
    evaluated = pd.read_csv(trained_run / "predictions.csv", dtype={"media_id": str}).set_index("media_id")
    # the first test photo again, stored rotated with an EXIF orientation tag, as PNG: the same photo when shown
    first = Image.open(test["path"].iloc[0])
    exif = Image.Exif()
    exif[0x0112] = 6
    first.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.png", exif=exif.tobytes())
    (tmp_path / "notes.txt").write_text("not a photo")
    done = _predict(*test["path"], str(tmp_path / "rotated.png"), str(tmp_path / "notes.txt"),
                    str(tmp_path / "missing.jpg"), "--model", str(trained_run), "--json", "--top", "3")
    assert done.returncode == 1 and "2 of 11 files could not be read" in done.stderr  # reported, the rest went on
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # JSON Lines, one per photo, in input order
    assert [r["ok"] for r in rows] == [True] * 9 + [False, False]
    assert rows[9]["error"].startswith("not a readable image") and rows[10]["error"] == "no such file"
    species = labels.set_index("label")["species"]
    gate = json.loads((trained_run / "open_set.json").read_text())  # species held out: the run's open-set gate
    for row, media_id in zip(rows, test["media_id"], strict=False):
        want = evaluated.loc[media_id]
        assert len(row["top"]) == 3 and row["top"][0]["species"] == species[want["predicted"]]
        assert row["top"][0]["probability"] == pytest.approx(want["confidence"], abs=1e-4)
        if row["answer"]["rank"] == "unknown":  # "not a species this model knows": turned away by the gate
            assert gate["deployed"] and row["open_set_score"] < gate["threshold"]
        elif want["confidence"] >= 0.6:  # the run's threshold (no bundle config): the species is named …
            assert row["answer"] == {"rank": "species", "name": row["top"][0]["species"],
                                     "probability": pytest.approx(want["confidence"], abs=1e-4)}
        else:  # … else a coarser rank whose summed probability reaches it, or none
            assert row["answer"]["rank"] != "species"
            assert (row["answer"]["probability"] >= 0.6) == (row["answer"]["rank"] != "none")
    assert rows[8]["top"][0]["index"] == rows[0]["top"][0]["index"]  # EXIF rotation applied
    assert rows[8]["top"][0]["probability"] == pytest.approx(rows[0]["top"][0]["probability"], abs=1e-5)
    from fungilib.predict import format_table, predict_files

    table = format_table(predict_files([Path(test["path"].iloc[0])], trained_run), 5)
    assert rows[0]["top"][0]["species"] in table and "→" in table and table.count("\n") == 6


def test_predict_from_an_export_bundle_matches_the_run(trained_run: Path, bundle, pipeline) -> None:  # noqa: ANN001
    manifest, _ = load_manifest(pipeline.root / "clean")
    folder = Path(manifest.loc[manifest["split"] == "test", "path"].iloc[0]).parent
    from fungilib.predict import predict_files

    from_run = predict_files([folder], trained_run)
    from_bundle = predict_files([folder], bundle.bundle)  # the bundle's TFLite model, temperature included
    assert len(from_run) == len(list(folder.glob("*.jpg"))) > 0  # a folder is searched for photos
    gate = json.loads((trained_run / "open_set.json").read_text()) if (trained_run / "open_set.json").exists() else {}
    _same_decisions(from_run, from_bundle, gate.get("threshold"))


BORDER = 1e-3  # Keras and TFLite probabilities differ by up to 1e-4: a score this close to a threshold may flip


def _same_decisions(from_run: list, from_bundle: list, threshold: float | None = None) -> int:
    """The run and its bundle name the same species and decide alike (one decision function, ``rollup.answer``),
    except for a photo whose gate score lies within float noise of the gate's threshold. Returns how many were
    compared."""
    compared = 0
    for a, b in zip(from_run, from_bundle, strict=True):
        assert a.ok and b.ok and a.top[0]["index"] == b.top[0]["index"]
        assert abs(a.top[0]["probability"] - b.top[0]["probability"]) < 1e-4
        assert abs(a.answer.probability - b.answer.probability) < 1e-4
        assert (a.open_set_score is None) == (b.open_set_score is None) == (threshold is None)
        if threshold is not None and abs(a.open_set_score - threshold) < BORDER:
            continue
        assert (a.answer.rank, a.answer.name) == (b.answer.rank, b.answer.name)
        compared += 1
    return compared


def _copy_files(source: Path, target: Path, names: tuple[str, ...]) -> Path:
    target.mkdir(parents=True)
    for name in names:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    return target


@pytest.mark.parametrize("deployed", [True, False], ids=["gate deployed", "gate not deployed"])
def test_the_run_and_its_bundle_decide_alike_with_and_without_a_deployed_gate(
        trained_run: Path, bundle, pipeline, tmp_path: Path, deployed: bool) -> None:  # noqa: ANN001
    """Both states of the open-set gate on purpose (not as one training happens to fit it): a gate at the median
    score of the photos turns some away and keeps the others, in the run and in its bundle alike."""
    from fungilib.predict import predict_files

    manifest, _ = load_manifest(pipeline.root / "clean")
    photos = [Path(p) for p in manifest.loc[manifest["split"] == "test", "path"].head(24)]
    run = _copy_files(trained_run, tmp_path / "run", ("model.keras", "labels.csv", "preprocessing.json",
                                                      "metrics.json"))
    site = _copy_files(bundle.bundle, tmp_path / "bundle", ("model_f32.tflite", "labels.json", "preprocessing.json",
                                                            "config.json"))
    scores = [p.top[0]["probability"] for p in predict_files(photos, run)]  # no gate yet: msp is the top probability
    threshold = float(np.median(scores))
    gate = {"score": "msp", "threshold": threshold if deployed else None}
    (run / "open_set.json").write_text(json.dumps(gate))
    config = json.loads((site / "config.json").read_text())
    config.pop("open_set", None)
    if deployed:
        config["open_set"] = gate
    (site / "config.json").write_text(json.dumps(config))
    from_run, from_bundle = predict_files(photos, run), predict_files(photos, site)
    assert _same_decisions(from_run, from_bundle, threshold if deployed else None) >= len(photos) - 2
    unknown = [p.answer.rank == "unknown" for p in from_run]
    if deployed:
        assert 0 < sum(unknown) < len(photos)  # the gate acted on some photos and not on others
    else:
        assert not any(unknown) and all(p.open_set_score is None for p in from_run + from_bundle)


def test_a_gate_of_the_models_features_decides_alike_in_the_run_and_its_bundle_and_falls_back_aloud(
        trained_run: Path, pipeline, tmp_path: Path, capfd) -> None:  # noqa: ANN001
    """A k-NN gate on purpose (its threshold at the median score of the photos): the exported model computes the
    score itself and appends it to its probabilities; the run (Keras) and the bundle (TFLite) decide alike, the score
    is the bank's own; without its bank the run falls back to the probabilities' gate and says so once."""
    from fungilib.artifacts.trained_run import TrainedRun
    from fungilib.export import ExportParams, export_run
    from fungilib.feature_scores import fit_knn_bank
    from fungilib.litert import litert_outputs
    from fungilib.model_outputs import logits_and_embeddings, with_embeddings
    from fungilib.predict import predict_files

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "logs"))
    manifest, _ = load_manifest(pipeline.root / "clean")
    trained = TrainedRun(run)
    model, labels, prep = trained.load()
    net, size, n = with_embeddings(model), int(prep["input_size"]), len(labels)
    train = manifest[manifest["split"] == "train"]
    bank = fit_knn_bank(logits_and_embeddings(net, train, n, size)[1], train["label"].to_numpy(), n, per_class=8,
                        rank=0, k=1)
    shown = pd.concat([manifest[manifest["split"] == "test"].head(20),
                       manifest[manifest["split"].isin(["val_unknown", "test_unknown"])].head(8)])
    expected = bank.score(logits_and_embeddings(net, shown.assign(label=0), n, size)[1])
    threshold = float(np.median(expected))
    trained.write_open_set_bank(bank.to_arrays())
    (run / "open_set.json").write_text(json.dumps({"score": "knn", "threshold": threshold, "output": "appended",
                                                   "fallback": {"score": "msp", "threshold": 0.5}}))
    site = export_run(ExportParams(run=run, out=tmp_path / "bundle", tfjs_quantization=["none"],
                                   parity_images=4)).bundle
    assert json.loads((site / "config.json").read_text())["open_set"]["output"] == "appended"
    assert litert_outputs((site / "model_f32.tflite").read_bytes()) == n + 1  # probabilities, then the score
    photos = [Path(p) for p in shown["path"]]
    from_run, from_bundle = predict_files(photos, run), predict_files(photos, site)
    assert np.allclose([p.open_set_score for p in from_run], expected, atol=1e-4)  # the bank's own score
    # a k=1 bank can give several photos one score, the median's: those within float noise of it are not compared
    at_border = int(np.sum(np.abs(np.asarray(expected) - threshold) < BORDER))
    assert _same_decisions(from_run, from_bundle, threshold) >= max(len(photos) - at_border, len(photos) // 2)
    assert 0 < sum(p.answer.rank == "unknown" for p in from_run) < len(photos)
    (run / "open_set_bank.npz").unlink()
    capfd.readouterr()
    fallback = predict_files(photos, run)
    said = [line for line in capfd.readouterr().err.splitlines() if line.startswith("fungilib")]
    assert said == [f"fungilib predict: {run / 'open_set_bank.npz'} is missing or unreadable: the open-set gate "
                    "falls back to msp (from the probabilities)"]
    assert all(p.open_set_score == pytest.approx(p.top[0]["probability"]) for p in fallback)  # msp now
    other = bank.to_arrays()  # a bank of another model's embeddings: never a wrong distance
    trained.write_open_set_bank({**other, "bank": other["bank"][:, :7]})
    predict_files(photos[:2], run)
    said = [line for line in capfd.readouterr().err.splitlines() if line.startswith("fungilib")]
    assert said == [f"fungilib predict: {run / 'open_set_bank.npz'} holds 7-dimensional embeddings, the model "
                    f"{bank.dims}: the open-set gate falls back to msp (from the probabilities)"]


def _colours(image: Image.Image) -> int:
    """Distinct colours of a 64 × 64 thumbnail: photos have hundreds, an empty canvas a handful."""
    pixels = np.asarray(image.convert("RGB").resize((64, 64))).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def test_pictures_of_the_data_and_the_model(pipeline, trained_run: Path, tmp_path: Path) -> None:  # noqa: ANN001
    manifest, labels = load_manifest(pipeline.root / "clean")
    sheets = class_sheets(manifest, tmp_path)
    species = Image.open(sheets["species_sheet"])
    assert species.height > len(labels) * 112  # one row of thumbnails per species
    assert _colours(species) > 500  # photos, not an empty canvas
    assert Image.open(sheets["licence_sheet"]).height > manifest["license"].nunique() * 112
    dropped = Image.open(dropped_sheet(load_dropped(pipeline.root / "clean"), tmp_path))
    assert dropped.height > 2 * 112 and _colours(dropped) > 300
    wrong = Image.open(trained_run / "confidently_wrong.png")
    assert wrong.height > 112 and (trained_run / "per_class_f1.png").stat().st_size > 10_000


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_tensorboard_over_a_sweep(trained_run: Path, tmp_path: Path, free_port: int) -> None:
    runs = tmp_path / "runs"
    for run_id in ("aaa111", "bbb222"):
        shutil.copytree(trained_run / "logs", runs / "my-sweep" / run_id / "output" / "logs")
    port = free_port
    proc = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "tensorboard", "my-sweep", "--runs-root",
                             str(runs), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        listed = json.loads(_wait_http(f"http://127.0.0.1:{port}/data/runs", proc))
        deadline = time.monotonic() + 30
        while not listed and time.monotonic() < deadline:  # runs appear once TensorBoard has read the logs
            time.sleep(0.5)
            listed = json.loads(_wait_http(f"http://127.0.0.1:{port}/data/runs", proc))
        assert {name.split("/")[0] for name in listed} == {"aaa111", "bbb222"}
    finally:
        _stop(proc)


def test_make_lab_serves_jupyterlab_on_loopback_with_the_project_kernel(free_port: int) -> None:
    port = free_port
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_PORT={port}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        token = None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line or proc.poll() is None, "make lab exited"
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=(\w+)", line)
            token = found.group(1) if found else None
        assert token, "no URL with a token was printed"
        specs = json.loads(_wait_http(f"http://127.0.0.1:{port}/api/kernelspecs?token={token}", proc))
        assert specs["kernelspecs"]["fungilib"]["spec"]["display_name"] == "Python (fungilib)"
        contents = json.loads(_wait_http(f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}", proc))
        assert "05_export.ipynb" in {item["name"] for item in contents["content"]}  # opened at the project root
        settings = json.loads(_wait_http(f"http://127.0.0.1:{port}/lab/api/settings/@jupyterlab/apputils-extension:"
                                         f"notification?token={token}", proc))
        defaults = settings["schema"]["properties"]  # jupyter/overrides.json sets the defaults a user starts from
        assert defaults["fetchNews"]["default"] == "false"  # no "Jupyter news" question
        assert defaults["checkForUpdates"]["default"] is False
        extensions = json.loads(_wait_http(f"http://127.0.0.1:{port}/lab/api/extensions?token={token}", proc))
        assert "jupyter-widgets-jupyterlab-manager" in {ext["name"] for ext in extensions}  # tqdm bars render
        with socket.socket() as s:  # bound to loopback only
            lan = socket.gethostbyname(socket.gethostname())
            if not lan.startswith("127."):
                assert s.connect_ex((lan, port)) != 0
    finally:
        _stop(proc)


def test_species_sheets_sample_thousands_of_classes(tmp_path: Path) -> None:
    """At 2,451 species a sheet shows the 20 largest and a seeded sample of 20 from the long tail, not 2,451 rows."""
    from fungilib.contact_sheets import MAX_SPECIES_ROWS, THUMB, class_sheets, sheet_species

    rows = [{"species": f"Species {i:04d}", "path": str(tmp_path / "gone.jpg"), "license": "CC-BY"}
            for i in range(2451) for _ in range(1 + (2451 - i) // 400)]
    manifest = pd.DataFrame(rows)
    chosen, note = sheet_species(manifest, seed=0)
    assert len(chosen) == MAX_SPECIES_ROWS and chosen[:20] == [f"Species {i:04d}" for i in range(20)]
    assert all(int(name.split()[1]) >= 20 for name in chosen[20:]) and "sampled of the other 2,431" in note
    assert sheet_species(manifest, seed=0) == (chosen, note) and sheet_species(manifest, seed=1)[0] != chosen
    sheet = Image.open(class_sheets(manifest, tmp_path)["species_sheet"])
    assert sheet.height == 40 + MAX_SPECIES_ROWS * (THUMB + 28 + 6) + 6  # 40 rows of thumbnails and captions


def test_photos_prepared_together_are_prepared_exactly_as_one_by_one(tmp_path: Path) -> None:
    """predict groups photos by size into one eval_transform call: the same pixels as one call per photo."""
    import tensorflow as tf

    from fungilib.input_pipeline import eval_transform
    from fungilib.predict import prepare_batch

    rng = np.random.default_rng(3)
    photos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(90, 120, 3), (120, 90, 3), (90, 120, 3), (40, 41, 3), (300, 200, 3), (90, 120, 3)]]
    transform = tf.function(lambda pixels: eval_transform(pixels, 48),
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    together = prepare_batch(photos, transform)
    one_by_one = np.stack([eval_transform(tf.constant(p), 48).numpy() for p in photos])
    assert together.shape == (6, 48, 48, 3)
    np.testing.assert_allclose(together, one_by_one, atol=1e-4)
    # a camera-sized photo is prepared as soon as it is decoded (memory stays bounded) and then taken as it is
    from PIL import Image

    from fungilib.predict import GROUP_MAX_PIXELS, _decoded

    big = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    assert big.shape[0] * big.shape[1] > GROUP_MAX_PIXELS
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    prepared, error = _decoded(path, 48, transform)
    assert error == "" and prepared.shape == (48, 48, 3) and prepared.dtype == np.float32
    mixed = prepare_batch([photos[0], prepared, photos[1]], transform, 48)
    np.testing.assert_allclose(mixed[1], eval_transform(tf.constant(big), 48).numpy(), atol=1e-4)
    np.testing.assert_allclose(mixed[[0, 2]], one_by_one[[0, 1]], atol=1e-4)


def test_predict_answers_a_find_of_several_photos_once(trained_run: Path, pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """--group-by folder: each folder is one find, its photos combined into one answer (the run's own rule), each
    photo's answer kept in --json; an unreadable photo is reported and left out; photos that each name another
    species surely carry a note; a CSV path,find_id groups the same way."""
    from fungilib.predict import predict_files

    manifest, labels = load_manifest(pipeline.root / "clean")
    test = manifest[manifest["split"] == "test"]
    surest: dict[int, object] = {}  # per species it names: its surest photo
    named: dict[int, list[Path]] = {}  # per species: its photos the model names right with probability > 0.5
    for p, label in zip(predict_files([Path(p) for p in test["path"]], trained_run), test["label"], strict=True):
        index = p.top[0]["index"]
        if index == int(label) and p.top[0]["probability"] > 0.5:
            named.setdefault(index, []).append(Path(p.path))
        if p.top[0]["probability"] >= 0.8 and (index not in surest or p.top[0]["probability"] > surest[index].top[0][
                "probability"]):
            surest[index] = p
    sure = list(surest.values())
    assert len(sure) >= 2  # two photos the model names surely, as different species
    finds = tmp_path / "finds"
    one, two = finds / "find-1", finds / "find-2"
    one.mkdir(parents=True)
    two.mkdir()
    # three photos each above 0.5 for one species: every rule combines them into that species (no other class can
    # pass 0.5 on any of them), whatever the tiny model does with the rest of the test split
    species = next(s for s, paths in sorted(named.items()) if len(paths) >= 3)
    for i, path in enumerate(named[species][:3]):
        shutil.copy(path, one / f"p{i}.jpg")
    (one / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    shutil.copy(sure[0].path, two / "a.jpg")
    shutil.copy(sure[1].path, two / "b.jpg")
    proc = _predict(str(finds), "--model", str(trained_run), "--group-by", "folder", "--json")
    assert proc.returncode == 1, proc.stderr  # a photo could not be read
    rows = {Path(r["find"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == {"find-1", "find-2"}
    first = rows["find-1"]
    assert first["photos"] == 4 and first["readable"] == 3 and len(first["per_photo"]) == 4
    assert [p["ok"] for p in first["per_photo"]].count(False) == 1 and first["answer"] is not None
    assert first["rule"] in ("mean_log", "max") and first["top"][0]["index"] == species
    assert rows["find-2"]["disagree"] is True and not first["disagree"]
    table = tmp_path / "finds.csv"
    table.write_text("path,find_id\n" + "".join(f"finds/find-1/p{i}.jpg,cap-and-gills\n" for i in range(3)))
    proc = _predict(str(tmp_path), "--model", str(trained_run), "--group-by", str(table))
    assert proc.returncode == 0, proc.stderr
    assert "find cap-and-gills (3 of 3 photos combined" in proc.stdout
