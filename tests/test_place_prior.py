"""The place-and-season prior: built from training photos only, backing off where records are few, its weight
fitted on validation, bad coordinates counted — and its effect reported on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fungilib.place_prior import PlacePrior, combine, fit_weight, place_and_season


def _rows(label: int, lat: float, lon: float, month: int, count: int, split: str = "train") -> pd.DataFrame:
    return pd.DataFrame({"label": [label] * count, "split": [split] * count, "decimalLatitude": [lat] * count,
                         "decimalLongitude": [lon] * count, "eventDate": [f"2024-{month:02d}-15T10:00:00"] * count})


def _where(lat: float, lon: float, month: int):  # noqa: ANN202
    return place_and_season(_rows(0, lat, lon, month, 1))


# class 0 lives at (50.5, 10.5) in autumn, class 1 at (58.5, 20.5) in spring, class 2 everywhere, all year
TRAIN = pd.concat([_rows(0, 50.5, 10.5, 10, 30), _rows(1, 58.5, 20.5, 4, 30),
                   *[_rows(2, 50.5 + 4 * i, 10.5 + 5 * i, 1 + 3 * i, 10) for i in range(4)]], ignore_index=True)


def test_the_prior_prefers_the_species_of_the_place_and_the_month() -> None:
    prior = PlacePrior.build(TRAIN, 3)
    here_in_autumn = np.exp(prior.log_prior(_where(50.5, 10.5, 10)))[0]
    there_in_spring = np.exp(prior.log_prior(_where(58.5, 20.5, 4)))[0]
    assert here_in_autumn.argmax() == 0 and there_in_spring.argmax() == 1
    assert here_in_autumn.sum() == pytest.approx(1.0) and there_in_spring[1] > 0.8
    nowhere = prior.log_prior(place_and_season(pd.DataFrame({"label": [0]})))  # no place, no date: no prior
    assert np.all(nowhere == 0)


def test_few_records_back_off_to_the_region_then_to_the_class_frequency() -> None:
    prior = PlacePrior.build(TRAIN, 3)
    # a cell with no record, in class 0's 10-degree region: the region's counts decide (month unknown)
    near = np.exp(prior.log_prior(place_and_season(_rows(0, 51.5, 11.5, 1, 1).assign(eventDate=""))))[0]
    assert near.argmax() == 0
    # far from every record: the overall class frequency (30 : 30 : 40)
    far = np.exp(prior.log_prior(place_and_season(_rows(0, -30.0, -60.0, 1, 1).assign(eventDate=""))))[0]
    np.testing.assert_allclose(far, (np.array([30, 30, 40]) + 1) / (100 + 3), atol=1e-6)


def test_built_from_training_photos_only() -> None:
    """A species seen at a place only in test photos gets no mass there: the prior never sees the test split."""
    test_only = _rows(0, 40.5, -3.5, 6, 50, split="test")
    frame = pd.concat([TRAIN, test_only], ignore_index=True)
    prior = PlacePrior.build(frame[frame["split"] == "train"], 3)
    leaky = PlacePrior.build(frame, 3)
    where = _where(40.5, -3.5, 6)
    assert np.exp(prior.log_prior(where))[0][0] < 0.5 < np.exp(leaky.log_prior(where))[0][0]


def test_bad_coordinates_and_dates_are_counted_and_carry_no_place() -> None:
    frame = pd.DataFrame({"label": [0, 0, 0, 0, 0], "decimalLatitude": [95.0, 0.0, np.nan, 50.0, 50.0],
                          "decimalLongitude": [10.0, 0.0, 10.0, 200.0, 10.0],
                          "eventDate": ["2024-10-01", "", "not a date", "2024-10-01", "2024-10-01T09:00:00"]})
    where = place_and_season(frame)
    assert where.dropped == {"no coordinates": 1, "impossible coordinates": 2, "null island (0, 0)": 1, "no date": 2}
    assert where.has_place.tolist() == [False, False, False, False, True]
    assert where.month.tolist() == [10, 0, 0, 10, 10]


def test_the_weight_is_fitted_on_validation_and_zero_for_a_useless_prior() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    # an image model that cannot tell classes 0 and 1 apart, a prior that can
    log_probs = np.log(np.tile([0.5, 0.5], (400, 1)) + rng.normal(0, 0.01, (400, 2)).clip(-0.4, 0.4))
    informative = np.log(np.where(labels[:, None] == np.arange(2), 0.8, 0.2))
    weight, curve = fit_weight(log_probs, informative, labels)
    assert weight > 0.5 and curve[weight] < curve[0.0]
    combined = combine(log_probs, informative, weight)
    assert (combined.argmax(1) == labels).mean() > 0.95
    useless = np.log(rng.dirichlet([1, 1], 400))
    assert fit_weight(log_probs, useless, labels)[0] <= 0.2


def test_the_sample_carries_ranges_and_seasons(pipeline) -> None:  # noqa: ANN001
    """The generated sample's species are found in their own ranges and months (so a prior can learn them)."""
    from fungilib.artifacts.dataset import load_manifest

    manifest, labels = load_manifest(pipeline.root / "clean")
    where = place_and_season(manifest)
    assert where.has_place.all() and (where.month > 0).all()
    morels = manifest["species"] == "Morchella esculenta"
    assert set(where.month[morels]) <= {4, 5}  # a spring species
    by_species = pd.DataFrame({"species": manifest["species"], "lat": where.lat}).groupby("species")["lat"].mean()
    assert by_species.max() - by_species.min() > 8  # ranges apart


def test_evaluation_reports_the_test_split_with_and_without_the_prior(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for name in ("top1", "top3", "macro_f1"):
        assert 0 <= metrics[f"{name}_with_prior"] <= 1
    assert 0 <= metrics["prior_weight"] <= 2 and 0 < metrics["prior_bytes"] < 1_500_000
    detail = json.loads((trained_run / "place_prior.json").read_text())
    assert detail["weight"] == metrics["prior_weight"] and set(detail["validation_nll_by_weight"])
    prior = PlacePrior.from_bytes((trained_run / "place_prior.npz").read_bytes())
    assert prior.weight == pytest.approx(metrics["prior_weight"]) and prior.classes == metrics["classes"]


def test_the_export_bundle_carries_the_prior(bundle, trained_run: Path) -> None:  # noqa: ANN001
    config = json.loads((bundle.bundle / "config.json").read_text())
    assert config["place_prior"] == "place_prior.json"
    prior = PlacePrior.from_bytes((trained_run / "place_prior.npz").read_bytes())
    assert json.loads((bundle.bundle / "place_prior.json").read_text()) == prior.to_json()
    assert "with the place-and-season prior" in (bundle.bundle / "MODEL_CARD.md").read_text()


def test_the_page_computes_the_same_prior_and_reads_exif_gps_and_date(tmp_path: Path) -> None:
    """web/place_prior.js against PlacePrior (Node), and web/exif.js on a JPEG with GPS and a date (Pillow)."""
    import subprocess

    from PIL import Image

    from fungilib.webapp import WEB_DIR, node_executable

    prior = PlacePrior.build(TRAIN, 3)
    prior.weight = 0.7
    (tmp_path / "prior.json").write_text(json.dumps(prior.to_json()))
    points = [(50.5, 10.5, 10), (58.5, 20.5, 4), (51.5, 11.5, 0), (-30.0, -60.0, 7), (None, None, 4), (0.0, 0.0, 0)]
    image = Image.new("RGB", (64, 48), (120, 80, 40))
    exif = Image.Exif()
    exif[0x8825] = {1: "S", 2: (33.0, 30.0, 0.0), 3: "W", 4: (70.0, 15.0, 36.0)}
    exif[0x8769] = {0x9003: "2024:05:10 10:00:00"}
    image.save(tmp_path / "gps.jpg", "JPEG", exif=exif.tobytes())
    image.save(tmp_path / "plain.jpg", "JPEG")
    script = f"""
    const fs = require("fs");
    const P = require({json.dumps(str(WEB_DIR / "place_prior.js"))});
    const X = require({json.dumps(str(WEB_DIR / "exif.js"))});
    const prior = P.create(JSON.parse(fs.readFileSync(process.argv[1], "utf8")));
    const points = JSON.parse(process.argv[2]);
    const buffer = (f) => {{ const b = fs.readFileSync(f); return b.buffer.slice(b.byteOffset,
                                                                                 b.byteOffset + b.length); }};
    console.log(JSON.stringify({{
      prior: points.map(([lat, lon, m]) => Array.from(prior.logPrior(lat, lon, m))),
      combined: Array.from(P.combine([0.5, 0.3, 0.2], prior.logPrior(50.5, 10.5, 10), prior.weight)),
      gps: X.read(buffer(process.argv[3])), plain: X.read(buffer(process.argv[4])),
    }}));"""
    done = subprocess.run([node_executable(), "-e", script, str(tmp_path / "prior.json"), json.dumps(points),
                           str(tmp_path / "gps.jpg"), str(tmp_path / "plain.jpg")],
                          capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(done.stdout)
    for (lat, lon, month), got in zip(points, out["prior"], strict=True):
        where = place_and_season(pd.DataFrame({"decimalLatitude": [np.nan if lat is None else lat],
                                               "decimalLongitude": [np.nan if lon is None else lon],
                                               "eventDate": [f"2024-{month:02d}-01" if month else ""]}))
        np.testing.assert_allclose(got, prior.log_prior(where)[0], atol=1e-9)
    want = combine(np.log([[0.5, 0.3, 0.2]]), prior.log_prior(_where(50.5, 10.5, 10)), 0.7)[0]
    np.testing.assert_allclose(out["combined"], want, atol=1e-9)
    assert out["gps"]["lat"] == pytest.approx(-33.5) and out["gps"]["lon"] == pytest.approx(-(70 + 15 / 60 + 36 / 3600))
    assert out["gps"]["month"] == 5 and out["plain"] == {"lat": None, "lon": None, "month": None}
