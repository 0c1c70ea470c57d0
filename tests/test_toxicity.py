"""The toxicity list a user supplies: read strictly, applied by species then genus, the poisonous-confusion rate in
evaluation (with and without the prior), and the page's marks and warning."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fungilib.errors import FungilibError
from fungilib.fsutil import PROJECT_ROOT
from fungilib.toxicity import class_statuses, load_toxicity, poisonous_as_edible

SAMPLE_LIST = PROJECT_ROOT / "params" / "toxicity-sample.csv"


@pytest.mark.parametrize(("text", "message"), [
    ("species,edibility\nA b,toxic\n", "row 1 must be the header name,status"),
    ("name,status\nAmanita muscaria,poisonous\n", "row 2 \\(Amanita muscaria\\): status 'poisonous' is not one of"),
    ("name,status\n,toxic\n", "row 2 needs a name and a status"),
    ("name,status\nA b,toxic\nA b,edible\n", "row 3: A b is listed twice"),
])
def test_a_malformed_list_is_one_line_naming_the_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(text)
    with pytest.raises(FungilibError, match=message) as info:
        load_toxicity(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_species_rows_win_over_genus_rows_and_the_rest_is_unknown() -> None:
    listed = load_toxicity(SAMPLE_LIST)
    labels = pd.DataFrame({"species": ["Pleurotus ostreatus", "Amanita muscaria", "Mycena galericulata", ""],
                           "genus": ["Pleurotus", "Amanita", "Mycena", "Pleurotus"]})
    assert class_statuses(labels, listed) == ["edible", "toxic", "unknown", "edible"]
    assert "SYNTHETIC" in SAMPLE_LIST.read_text()  # the sample's list says what it is


def test_poisonous_as_edible_counts_toxic_photos_predicted_edible() -> None:
    statuses = ["toxic", "edible", "unknown", "deadly"]
    labels = np.array([0, 0, 3, 3, 1, 2])
    predicted = np.array([1, 0, 1, 2, 1, 1])  # toxic→edible, right, deadly→edible, deadly→unknown
    assert poisonous_as_edible(predicted, labels, statuses) == pytest.approx(2 / 4)
    assert poisonous_as_edible(predicted, labels, ["edible"] * 4) is None


def test_evaluation_and_the_page_use_the_list(trained_run: Path, pipeline, tmp_path: Path, free_port: int) -> None:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    from fungilib.artifacts.dataset import load_manifest
    from fungilib.export import ExportParams, export_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "logs"))
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", "evaluate", str(run), "--set",
                           f"toxicity={SAMPLE_LIST}", "--set", "open_set_min_auroc=0",  # the gate, however weak,
                           "--set", "open_set_keep=0.6"],  # and strict: it turns photos away
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["poisonous_as_edible"] <= 1 and 0 <= metrics["poisonous_as_edible_with_prior"] <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("name,status\nAmanita muscaria,maybe\n")
    with pytest.raises(FungilibError, match="row 2"):
        export_run(ExportParams(run=run, out=tmp_path / "never", toxicity=bad))
    result = export_run(ExportParams(run=run, out=tmp_path / "bundle", tfjs_quantization=["none"], parity_images=4,
                                     toxicity=SAMPLE_LIST))
    statuses = json.loads((result.bundle / "toxicity.json").read_text())["status"]
    manifest, _ = load_manifest(pipeline.root / "clean")
    from fungilib.open_set import OpenSetGate
    from fungilib.predict import predict_files

    gate = OpenSetGate.from_config(json.loads((result.bundle / "config.json").read_text())["open_set"])
    candidates = [Path(p) for p in manifest.loc[manifest["split"].isin(["test", "test_unknown"]), "path"]]
    python = {Path(p.path): p for p in predict_files(candidates, result.bundle)}
    turned_away = [path for path, p in python.items() if p.answer.rank == "unknown"]
    assert turned_away  # the strict gate turns some photos away (the page must say so for them)
    images = [Path(p) for p in manifest.loc[manifest["split"] == "test", "path"].iloc[::7]] + turned_away[:4]
    server = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "serve", str(result.bundle), "--port",
                               str(free_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server.stdout.readline()  # type: ignore[union-attr]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{free_port}/")
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=60_000)
            marked = unknowns = 0
            for image in images:
                page.set_input_files("#photo", str(image))
                page.wait_for_selector("body[data-result=done]", state="attached", timeout=60_000)
                rows = page.eval_on_selector_all("#top li", "els => els.map(e => [+e.dataset.index, "
                                                 "+e.dataset.probability, e.dataset.toxicity, e.innerText])")
                for index, _, status, text in rows:
                    assert status == statuses[index]
                    assert ("· toxic" in text) == (statuses[index] == "toxic")
                    marked += statuses[index] == "toxic"
                rank = page.get_attribute("#verdict", "data-rank")
                if abs(python[image].open_set_score - gate.threshold) > 1e-3:  # the page's rank is Python's
                    assert (rank == "unknown") == (python[image].answer.rank == "unknown"), image
                if rank == "unknown":  # "not a species this model knows": the rows are the nearest known species
                    unknowns += 1
                    assert "Not a species this model knows" in page.inner_text("#verdict")
                    warned = any(s in ("toxic", "deadly") for _, _, s, _ in rows)
                    assert page.is_visible("#toxic-warning") == warned
                    if warned:
                        assert "its nearest known species include" in page.inner_text("#toxic-warning")
                    continue
                warned = any(s in ("toxic", "deadly") and p >= 0.05 for _, p, s, _ in rows[1:]) \
                    and rows[0][2] == "edible"
                assert page.is_visible("#toxic-warning") == warned
                if warned:
                    assert "among the close alternatives" in page.inner_text("#toxic-warning")
            assert marked  # toxic species were shown, and marked
            assert unknowns  # and the page said "not a species this model knows" for them
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
