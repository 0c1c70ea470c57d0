"""Metrics on hand-made predictions, checked against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fungilib.metrics import (
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    per_class_table,
    rollup_accuracy,
    softmax,
    top_confusions,
    top_k_accuracy,
)

# 3 classes, 5 images. True labels 0 0 1 2 2.
PROBS = np.array([
    [0.7, 0.2, 0.1],  # true 0, predicted 0
    [0.3, 0.6, 0.1],  # true 0, predicted 1 (0 is 2nd)
    [0.1, 0.8, 0.1],  # true 1, predicted 1
    [0.5, 0.1, 0.4],  # true 2, predicted 0 (2 is 2nd)
    [0.2, 0.1, 0.7],  # true 2, predicted 2
])
LABELS = np.array([0, 0, 1, 2, 2])


def test_top_k() -> None:
    assert top_k_accuracy(PROBS, LABELS, 1) == pytest.approx(3 / 5)
    assert top_k_accuracy(PROBS, LABELS, 2) == pytest.approx(5 / 5)
    assert top_k_accuracy(PROBS, LABELS, 5) == 1.0


def test_per_class_and_macro_f1_by_hand() -> None:
    predicted = PROBS.argmax(axis=1)  # 0 1 1 0 2
    table = per_class_table(predicted, LABELS, 3)
    # class 0: tp 1, predicted 2, support 2 → P 1/2, R 1/2, F1 1/2
    # class 1: tp 1, predicted 2, support 1 → P 1/2, R 1,   F1 2/3
    # class 2: tp 1, predicted 1, support 2 → P 1,   R 1/2, F1 2/3
    assert table["precision"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert table["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert table["f1"].tolist() == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert macro_f1(predicted, LABELS, 3) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    cm = confusion_matrix(predicted, LABELS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    pairs = top_confusions(cm, ["a", "b", "c"])
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["a", "b", 1], ["c", "a", 1]]


def test_calibration_by_hand() -> None:
    # confidences 0.7 0.6 0.8 0.5 0.7, correct 1 0 1 0 1; with 2 bins ([0, .5], (.5, 1]):
    # bin 0: {0.5} acc 0 → gap 0.5, weight 1/5; bin 1: conf mean 0.7, acc 3/4 → gap 0.05, weight 4/5
    ece, table = expected_calibration_error(PROBS, LABELS, bins=2)
    assert ece == pytest.approx(0.2 * 0.5 + 0.8 * 0.05)
    assert table["count"].tolist() == [1, 4]


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 2.5, labels)  # logits that are 2.5x too confident
    assert t == pytest.approx(2.5, rel=0.1)


def test_taxonomic_rollup() -> None:
    # classes 0 and 1 share genus "A"; row 2 (true 1) is predicted 1 anyway; row 1 (true 0, predicted 1) is right
    # at genus rank; row 3 (true 2 "B", predicted 0 "A") stays wrong: summed A = 0.6 > B = 0.4.
    genus = np.array(["A", "A", "B"])
    assert rollup_accuracy(PROBS, LABELS, genus) == pytest.approx(4 / 5)


def test_rank_metrics_only_where_the_rank_is_known() -> None:
    """A folder import knows no genus: no genus score at all, rather than a perfect score for a rank it lacks."""
    import pandas as pd

    from fungilib.evaluate import classification_metrics

    assert rollup_accuracy(PROBS, LABELS, np.array(["", "", ""])) is None
    # class 2's genus unknown: its photos do not count; the others are scored as before (rows of classes 0 and 1)
    partial = rollup_accuracy(PROBS, LABELS, np.array(["A", "A", ""]))
    known = np.isin(LABELS, [0, 1])
    assert partial is not None and 0 <= partial <= 1 and known.sum() < len(LABELS)
    table = pd.DataFrame({"genus": ["", "", ""], "family": ["F", "F", "G"]})
    metrics = classification_metrics(np.log(PROBS), LABELS, table)
    assert "genus_top1" not in metrics and "family_top1" in metrics


def test_photos_of_one_find_are_answered_together_and_the_rule_is_chosen_on_validation() -> None:
    import pandas as pd

    from fungilib.evaluate import classification_metrics
    from fungilib.find_metrics import choose_rule, combine, observation_metrics

    labels = pd.DataFrame({"label": [0, 1, 2], "species": ["a", "b", "c"]})
    # one find, three photos: two say species 1, one says species 0 a little more surely
    probs = np.array([[0.1, 0.85, 0.05], [0.1, 0.85, 0.05], [0.9, 0.08, 0.02], [0.1, 0.1, 0.8]])
    groups = np.array(["find-1", "find-1", "find-1", "find-2"])
    first, mean_log = combine(probs, groups, "mean_log")
    assert first.tolist() == [0, 3] and mean_log.shape == (2, 3) and np.allclose(mean_log.sum(axis=1), 1)
    assert mean_log[0].argmax() == 1  # the geometric mean: one surer photo does not outvote two
    assert combine(probs, groups, "max")[1][0].argmax() == 0  # the max rule follows the surest photo
    y = np.array([1, 1, 1, 2])
    found = observation_metrics(probs, y, groups, "mean_log", labels, classification_metrics)
    assert found["top1"] == 1.0  # both finds right, though one of the find's photos alone is wrong
    rule, by_rule = choose_rule(probs, y, groups, labels, classification_metrics)
    assert rule == "mean_log" and by_rule == {"mean_log": 1.0, "max": 0.5}


def test_lookalike_order_puts_species_confused_with_each_other_side_by_side() -> None:
    from fungilib.confusion_order import lookalike_order

    cm = np.diag([20] * 8)
    cm[0, 6], cm[6, 0] = 6, 4  # 0 and 6 are look-alikes
    cm[2, 7] = 5  # 7 is named for 2 (one way only)
    cm[3, 5], cm[5, 1], cm[1, 3] = 3, 3, 3  # a triple
    order = list(lookalike_order(cm))
    assert sorted(order) == list(range(8))
    place = {c: i for i, c in enumerate(order)}
    assert abs(place[0] - place[6]) == 1 and abs(place[2] - place[7]) == 1
    assert max(place[c] for c in (1, 3, 5)) - min(place[c] for c in (1, 3, 5)) == 2
    assert list(lookalike_order(np.diag([3, 3]))) == [0, 1]


def test_export_parity_counts_a_float_tie_as_agreement_and_a_real_flip_as_disagreement() -> None:
    from fungilib.export_checks import PARITY_MAX_ABS_DIFF, compare

    reference = np.array([[0.5, 0.5 - PARITY_MAX_ABS_DIFF / 2, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)
    tied = np.array([[0.5 - PARITY_MAX_ABS_DIFF / 2, 0.5, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)
    flipped = np.array([[0.5, 0.5 - PARITY_MAX_ABS_DIFF / 2, 0.0], [0.2, 0.7, 0.1]], dtype=np.float32)
    assert compare(reference, tied)["top1_agreement"] == 1.0
    assert compare(reference, flipped)["top1_agreement"] == 0.5 and compare(reference, flipped)["max_abs_diff"] > 0.4
