"""Clean and split: no leakage, deterministic, and every parameter changes what it names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fungilib.artifacts.dataset import load_dropped, load_manifest
from fungilib.artifacts.observations import load_observations
from fungilib.clean import CleanParams, clean_dataset
from fungilib.errors import FungilibError
from fungilib.split import connected_groups, stratified_group_split


def _clean(pipeline, tmp_path: Path, name: str, **kw: object):
    params = CleanParams(observations=pipeline.root / "ingest", downloads=pipeline.root / "download",
                         out=tmp_path / name, **{"min_per_class": 5, **kw})  # type: ignore[arg-type]
    result = clean_dataset(params)
    manifest, labels = load_manifest(tmp_path / name)
    return result, manifest, labels


def test_no_observation_and_no_image_in_two_splits(pipeline) -> None:
    manifest, labels = load_manifest(pipeline.root / "clean")
    assert (manifest.groupby("gbifID")["split"].nunique() == 1).all()
    assert manifest["sha256"].is_unique
    assert (manifest.groupby("group")["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test", "val_unknown", "test_unknown"}
    # every class is evaluated, and the label table matches the manifest
    assert (labels["test_images"] > 0).all() and (labels["val_images"] > 0).all()
    assert labels["label"].tolist() == list(range(len(labels)))
    merged = manifest.merge(labels, on="label", suffixes=("", "_label"))
    assert len(merged) == (manifest["label"] >= 0).sum()
    assert (merged["class_key"] == merged["class_key_label"]).all()
    assert labels["species"].is_monotonic_increasing
    assert all(Path(p).exists() for p in manifest["path"])


def test_shared_photos_are_deduplicated_and_conflicts_dropped(pipeline) -> None:
    dropped = load_dropped(pipeline.root / "clean")
    reasons = dropped["reason"]
    assert reasons.str.startswith("duplicate (same bytes as").sum() == 3
    assert (reasons == "same image filed under different species").sum() == 2
    assert reasons.str.startswith("download failed: http 404").sum() == 2
    assert reasons.str.startswith("identified only to rank genus").sum() > 0
    manifest, _ = load_manifest(pipeline.root / "clean")
    observations = load_observations(pipeline.root / "ingest")
    kept_or_dropped = set(manifest["media_id"]) | set(dropped["media_id"])
    assert kept_or_dropped == set(observations["media_id"])  # never a silent loss
    assert not set(manifest["media_id"]) & set(dropped["media_id"])


def test_same_seed_same_split_other_seed_other_split(pipeline, tmp_path: Path) -> None:
    _, a, _ = _clean(pipeline, tmp_path, "a", seed=3)
    _, b, _ = _clean(pipeline, tmp_path, "b", seed=3)
    _, c, _ = _clean(pipeline, tmp_path, "c", seed=4)
    key = ["media_id", "split"]
    pd.testing.assert_frame_equal(a[key], b[key])
    assert not a.set_index("media_id")["split"].equals(c.set_index("media_id").loc[a["media_id"], "split"])


def test_each_parameter_changes_its_outcome(pipeline, tmp_path: Path) -> None:
    base, manifest, labels = _clean(pipeline, tmp_path, "base")
    r, m, lab = _clean(pipeline, tmp_path, "min", min_per_class=int(labels[[c for c in labels if c.endswith("_images")]]
                                                                   .sum(axis=1).median()) + 1)
    assert r.classes < base.classes and m["label"].max() == len(lab) - 1
    r, m, _ = _clean(pipeline, tmp_path, "cap", max_per_class=20)
    assert m.groupby("class_key").size().max() == 20 and r.images < base.images
    r, m, lab = _clean(pipeline, tmp_path, "genus", keep_genus_rank=True)
    assert r.classes > base.classes and (lab["taxonRank"] == "GENUS").any()
    assert lab.loc[lab["taxonRank"] == "GENUS", "species"].str.endswith(" sp.").all()
    r, m, _ = _clean(pipeline, tmp_path, "side", min_side=100)
    assert r.images < base.images and (m[["width", "height"]].min(axis=1) >= 100).all()
    r, m, _ = _clean(pipeline, tmp_path, "frac", val_fraction=0.3, test_fraction=0.3)
    assert r.splits["test"] > base.splits["test"] and r.splits["train"] < base.splits["train"]
    r, m, _ = _clean(pipeline, tmp_path, "noval", val_fraction=0.0)
    assert r.splits["val"] == 0


def test_bad_parameters_are_refused(pipeline, tmp_path: Path) -> None:
    with pytest.raises(FungilibError, match="leave some images for training"):
        _clean(pipeline, tmp_path, "x", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(FungilibError, match="max_per_class"):
        _clean(pipeline, tmp_path, "y", max_per_class=3, min_per_class=5)
    with pytest.raises(FungilibError, match="no images left"):
        _clean(pipeline, tmp_path, "z", min_per_class=100_000)


def test_group_split_on_a_hand_made_table() -> None:
    frame = pd.DataFrame({"label": ["a"] * 10 + ["b"] * 4, "group": [f"g{i // 2}" for i in range(10)] + ["h1"] * 2 +
                          ["h2", "h3"]})
    split = stratified_group_split(frame, "label", "group", {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert (frame.assign(split=split).groupby("group")["split"].nunique() == 1).all()
    assert set(split[frame["label"] == "b"]) == {"train", "val", "test"}
    groups = connected_groups(pd.Series(["o1", "o2", "o3"]), pd.Series(["i1", "i1", "i2"]))
    assert groups["o1"] == groups["o2"] != groups["o3"]


def test_held_out_species_never_reach_training(pipeline, tmp_path: Path) -> None:
    """Species kept out as "unknown" are in no split the model sees and not in its label table; their photos are
    split by observation between val_unknown (fitting the open-set threshold) and test_unknown (reporting it)."""
    from tests.conftest import HELD_OUT

    manifest, labels = load_manifest(pipeline.root / "clean")
    unknown = manifest[manifest["split"].isin(["val_unknown", "test_unknown"])]
    assert set(unknown["species"]) == set(HELD_OUT) and (unknown["label"] == -1).all()
    assert not set(HELD_OUT) & set(labels["species"]) and len(labels) == 10
    assert not set(HELD_OUT) & set(manifest.loc[manifest["split"].isin(["train", "val", "test"]), "species"])
    assert (unknown.groupby("group")["split"].nunique() == 1).all()
    for species in HELD_OUT:
        assert set(unknown.loc[unknown["species"] == species, "split"]) == {"val_unknown", "test_unknown"}
    assert sorted(pipeline.clean.held_out) == sorted(HELD_OUT) and pipeline.clean.splits["test_unknown"] > 0
    # a number of classes drawn: seeded, and the known ones keep a proper split
    drawn, m, lab = _clean(pipeline, tmp_path, "drawn", holdout_classes=3, seed=5)
    again, _, _ = _clean(pipeline, tmp_path, "again", holdout_classes=3, seed=5)
    assert len(drawn.held_out) == 3 and drawn.held_out == again.held_out and len(lab) == drawn.classes
    assert set(m.loc[m["label"] == -1, "species"]) == set(drawn.held_out)
    with pytest.raises(FungilibError, match="'Amanita nonexistens' is not a class of this dataset"):
        _clean(pipeline, tmp_path, "bad", holdout_species=["Amanita nonexistens"])
    with pytest.raises(FungilibError, match="leaves fewer than two to train on"):
        _clean(pipeline, tmp_path, "all", holdout_classes=11)
