""""Not a species this model knows": the scores, AUROC, the threshold fitted on validation, the metrics of a
trained run whose manifest holds species kept out of training, and `predict`'s answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fungilib.open_set import OpenSetGate, auroc, evaluate_open_set, fit_threshold, probability_score, scores
from fungilib.rollup import answer


def test_auroc_is_the_probability_a_known_photo_scores_higher() -> None:
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    brute = np.mean([(k > u) + 0.5 * (k == u) for k in known for u in unknown])
    assert abs(auroc(known, unknown) - brute) < 1e-12
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5  # ties count half
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0 and auroc(np.array([1.0]), np.array([])) is None


def test_scores_agree_with_their_definitions() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    s = scores(logits, temperature=2.0)
    p = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    assert np.allclose(s["msp"], p.max(axis=1)) and np.allclose(s["max_logit"], [4.0, 1.0])
    assert np.allclose(s["neg_entropy"], (p * np.log(p)).sum(axis=1))
    assert np.allclose(s["neg_energy"], 2.0 * np.log(np.exp(logits / 2).sum(axis=1)))
    assert np.allclose(probability_score(p, "neg_entropy"), s["neg_entropy"])  # what the page computes


def test_the_threshold_keeps_the_stated_share_of_right_answers() -> None:
    known = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2])
    correct = np.array([True] * 10 + [False])
    threshold = fit_threshold(known, correct, keep=0.8)
    assert threshold == 0.45 and (known[correct] >= threshold).mean() == 0.8  # 8 of the 10 right answers kept
    assert fit_threshold(known, correct, keep=0.95) == 0.3  # never fewer than asked for
    gate = OpenSetGate("msp", 0.55)
    assert gate.knows(np.array([0.7, 0.2, 0.1])) and not gate.knows(np.array([0.5, 0.3, 0.2]))
    labels = [{"species": "A a", "genus": "A", "family": "F"}, {"species": "B b", "genus": "B", "family": "F"},
              {"species": "C c", "genus": "C", "family": "F"}]
    assert answer(np.array([0.5, 0.3, 0.2]), labels, 0.6, gate).rank == "unknown"
    assert answer(np.array([0.5, 0.3, 0.2]), labels, 0.6).rank == "family"  # without the gate: as before
    # the gate looks at the photo's own probabilities, not at what a place prior made of them
    assert answer(np.array([0.9, 0.05, 0.05]), labels, 0.6, gate, np.array([0.5, 0.3, 0.2])).rank == "unknown"


def test_open_set_metrics_are_fitted_on_validation_and_reported_on_test() -> None:
    rng = np.random.default_rng(1)

    def logits(n: int, sharp: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 5, n)
        z = rng.normal(0, 1, (n, 5))
        z[np.arange(n), y] += sharp
        return z, y

    val, val_y = logits(400, 4.0)
    test, test_y = logits(400, 4.0)
    val_unknown, _ = logits(200, 0.5)
    test_unknown, _ = logits(200, 0.5)
    result = evaluate_open_set(val, val_y, val_unknown, test, test_y, test_unknown, 1.0, 0.6, keep=0.95)
    m = result.metrics
    assert m["open_set_score"] in ("msp", "neg_entropy") and m["open_set_auroc"] > 0.85 and result.gate is not None
    assert m["unknown_named"] < m["unknown_named_before"] and m["known_right_turned_away"] < 0.1
    assert set(result.record["val_auroc"]) == {"msp", "neg_entropy", "max_logit", "neg_energy"}
    # changing the test photos changes the report, never the fitted gate
    other = evaluate_open_set(val, val_y, val_unknown, test[:100], test_y[:100], test_unknown[:50], 1.0, 0.6)
    assert other.gate == result.gate
    # "unknown" photos that look like known ones: the score cannot separate them, and no gate is deployed
    lookalike, _ = logits(200, 4.0)
    blind = evaluate_open_set(val, val_y, lookalike, test, test_y, logits(200, 4.0)[0], 1.0, 0.6)
    assert blind.gate is None and blind.metrics["open_set_threshold"] == "not deployed"
    assert blind.metrics["unknown_named"] == blind.metrics["unknown_named_before"]
    assert blind.metrics["known_turned_away"] == 0.0


def test_a_run_with_held_out_species_reports_and_answers_not_a_species_it_knows(trained_run: Path, pipeline,  # noqa: ANN001
                                                                                 tmp_path: Path) -> None:
    """The shared run (two species held out): evaluation reports the open set; re-evaluated with the gate
    deployed whatever its AUROC, `predict` turns away what the metrics say it turns away."""
    import shutil

    from fungilib.artifacts.dataset import load_manifest

    metrics = json.loads((trained_run / "metrics.json").read_text())
    record = json.loads((trained_run / "open_set.json").read_text())
    for key in ("open_set_auroc", "open_set_auroc_msp", "open_set_auroc_neg_energy", "unknown_named_before",
                "unknown_named", "known_turned_away", "unknown_test_images"):
        assert key in metrics, key
    assert metrics["unknown_named"] <= metrics["unknown_named_before"]
    assert record["score"] == metrics["open_set_score"] and sorted(record["held_out"]) == sorted(
        ["Coprinus comatus", "Morchella esculenta"])
    assert record["deployed"] == (record["val_auroc"][record["score"]] >= 0.6)
    assert record["fitted_on"]["val_unknown_images"] > 0 and (trained_run / "open_set.png").stat().st_size > 5_000
    manifest, _ = load_manifest(pipeline.root / "clean")
    unknown = manifest[manifest["split"] == "test_unknown"]
    assert metrics["unknown_test_images"] == len(unknown)
    # per find: the score averaged over each observation's photos
    assert metrics["unknown_test_observations"] == unknown["gbifID"].nunique() and 0 <= metrics[
        "obs_open_set_auroc"] <= 1
    if metrics["open_set_threshold"] != "not deployed":  # the gate per find, at the deployed threshold
        assert 0 <= metrics["obs_known_turned_away"] <= 1 and 0 <= metrics["obs_unknown_turned_away"] <= 1

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "logs"))
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", "evaluate", str(run), "--set", "open_set_min_auroc=0",
                           "--set", "open_set_keep=0.9"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "open_set.json").read_text())["deployed"] and metrics["known_right_turned_away"] < 0.5

    def predict(*flags: str) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "fungilib.cli", "predict", "--json", *flags, "--model", str(run),
                              *unknown["path"]], capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    rows = predict()
    named = sum(r["answer"]["rank"] == "species" for r in rows)
    one = 1 / len(rows) + 1e-6  # predict decodes with Pillow, evaluation with tf.data: one photo at the edge may flip
    assert abs(named / len(rows) - metrics["unknown_named"]) <= one
    assert all(len(r["top"]) == 5 and "open_set_score" in r for r in rows)  # the nearest known species, shown as such
    if any(r["answer"]["rank"] == "unknown" for r in rows):
        table = subprocess.run([sys.executable, "-m", "fungilib.cli", "predict", "--model", str(run), *unknown["path"]],
                               capture_output=True, text=True, check=True).stdout
        assert "not a species this model knows; the nearest known species:" in table
    # without the gate, every photo is named at the species threshold as before
    ranks = pd.Series([r["answer"]["rank"] for r in predict("--no-open-set")])
    assert "unknown" not in set(ranks) and abs((ranks == "species").mean() - metrics["unknown_named_before"]) <= one


def test_the_feature_gate_inside_the_model_is_the_numpy_score() -> None:
    """A real (tiny) Keras network with its k-NN bank inside: its first outputs are the calibrated probabilities,
    its last the bank's score — the cosine to the k-th nearest bank row, or its sigmoid mix with the largest logit —
    as fungilib.feature_scores computes them in numpy (what evaluation fitted the threshold on)."""
    from fungilib.feature_scores import fit_knn_bank, fit_logit_mix, unit
    from fungilib.metrics import softmax
    from fungilib.model_outputs import with_embeddings
    from fungilib.models import build_classifier, with_open_set_score

    model, _ = build_classifier("MobileNetV3Small", "none", 32, 3, 0.0, bn_inference=False)
    images = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    logits, embeddings = (np.asarray(a, np.float64) for a in with_embeddings(model).predict(images, verbose=0))
    for rank, k in ((0, 1), (4, 3)):  # as it is / projected on 4 principal directions; k = 1 and 3
        bank = fit_knn_bank(embeddings[:18], np.arange(18) % 3, 3, per_class=4, rank=rank, k=k)
        for mix in (None, fit_logit_mix(bank.score(embeddings[18:]), logits[18:].max(axis=1))):
            bank.logit_mix = mix
            out = with_open_set_score(model, 1.7, bank).predict(images, verbose=0)
            assert out.shape == (24, 4)
            assert np.abs(out[:, :3] - softmax(logits, 1.7)).max() < 1e-5
            assert np.abs(out[:, 3] - bank.gate_score(embeddings, logits)).max() < 1e-4
    own = unit(embeddings[:1]) @ unit(embeddings[:18]).T  # a bank photo is its own nearest neighbour (k = 1)
    assert fit_knn_bank(embeddings[:18], np.arange(18) % 3, 3, per_class=6, rank=0, k=1).score(
        embeddings[:1])[0] == pytest.approx(own.max())
