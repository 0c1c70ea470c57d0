"""Training on the sample with tiny real models: strategies, parameters, resume after SIGKILL, Hub modules, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fungilib.artifacts.dataset import load_manifest
from fungilib.artifacts.trained_run import load_trained
from fungilib.errors import FungilibError
from fungilib.params import build_params
from fungilib.train import TrainParams, train

from .conftest import SCRATCH_MODEL

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

TINY = {"image_size": 32, "batch_size": 64, "cache": "memory"}


def _params(pipeline, out: Path, **groups: dict) -> TrainParams:
    values = {"out": out, "dataset": {**TINY, "manifest": str(pipeline.root / "clean"), **groups.pop("dataset", {})},
              "fit": {"epochs": 1, "patience": 5, "seed": 0, "temperature_scaling": False, **groups.pop("fit", {})},
              **groups, "model": {**SCRATCH_MODEL, **groups.get("model", {})}}
    return build_params(TrainParams, values)


def _weights_by_layer(model) -> dict[str, list[np.ndarray]]:  # noqa: ANN001
    found: dict[str, list[np.ndarray]] = {}

    def walk(layer, prefix: str = "") -> None:  # noqa: ANN001
        inner = getattr(layer, "layers", None)
        if inner:
            for sub in inner:
                walk(sub, prefix + layer.name + "/")
        elif layer.weights:
            found[prefix + layer.name] = [w.numpy() for w in layer.weights]

    for layer in model.layers:
        walk(layer)
    return found


@pytest.fixture(scope="module")
def pretrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' base saved to a weights file: the weights-path route, and BN statistics to keep."""
    path = tmp_path_factory.mktemp("weights") / "base.weights.h5"
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(32, 32, 3))
    base.save_weights(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("freeze", ["head_only", "top_k", "train_all", "two_phase"])
def test_each_freezing_strategy_moves_exactly_its_weights(pipeline, tmp_path: Path, pretrained_weights: Path,
                                                          freeze: str) -> None:
    fit = {"epochs": 2} if freeze == "two_phase" else {}
    params = _params(pipeline, tmp_path, model={"weights": str(pretrained_weights), "freeze": freeze, "top_k": 12},
                     schedule={"head_epochs": 1}, fit=fit, optimizer={"learning_rate": 0.01})
    from fungilib.models import build_classifier

    keras.utils.set_random_seed(0)
    initial, base = build_classifier("MobileNetV3Small", str(pretrained_weights), 32, 12, 0.2, bn_inference=True)
    before = _weights_by_layer(initial)
    base_layers = [layer.name for layer in base.layers]
    train(params)
    model, labels, prep = load_trained(tmp_path)
    after = _weights_by_layer(model)
    moved = {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name],
                                                                                       strict=True))}
    base_moved = {name.split("/", 1)[1] for name in moved if "/" in name}
    assert "logits" in moved  # the head always trains
    assert not any("bn" in name.lower() or "batchnorm" in name.lower() for name in base_moved), base_moved
    if freeze == "head_only":
        assert not base_moved
    elif freeze == "top_k":
        top = set(base_layers[-12:])
        assert base_moved and base_moved <= top
    else:  # train_all, and two_phase after its fine-tuning phase
        assert len(base_moved) > 20
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == params.fit.epochs
    _, manifest_labels = load_manifest(pipeline.root / "clean")
    pd.testing.assert_frame_equal(labels, manifest_labels.astype({"class_key": str, "speciesKey": str}),
                                  check_dtype=False)
    assert prep["input_size"] == 32 and prep["input_range"] == [0, 255]


def test_augmentation_switch_changes_the_input() -> None:
    from fungilib.input_pipeline import Augmentation, eval_transform, train_transform

    image = tf.constant(np.random.default_rng(0).integers(0, 255, (90, 120, 3)), tf.uint8)
    off = train_transform(image, 64, Augmentation(enabled=False)).numpy()
    np.testing.assert_array_equal(off, eval_transform(image, 64).numpy())
    tf.random.set_seed(0)
    on = [train_transform(image, 64, Augmentation()).numpy() for _ in range(3)]
    assert all(o.shape == (64, 64, 3) for o in on)
    assert not np.allclose(on[0], off) and not np.allclose(on[0], on[1])
    no_jitter = train_transform(image, 64, Augmentation(color_jitter=0.0, min_crop=1.0, flip=False)).numpy()
    np.testing.assert_allclose(no_jitter, tf.image.resize(image, (64, 64), method="area").numpy(), atol=1e-3)


def test_class_balanced_sampling_evens_out_the_long_tail(pipeline) -> None:
    from fungilib.input_pipeline import make_dataset

    manifest, labels = load_manifest(pipeline.root / "clean")
    train_rows = manifest[manifest["split"] == "train"]

    def label_counts(balance: str) -> np.ndarray:
        ds = make_dataset(train_rows, len(labels), 32, 64, True, balance=balance, cache=True)
        seen = np.concatenate([y.numpy().argmax(axis=1) for _, y in ds])
        return np.bincount(seen, minlength=len(labels))

    natural, balanced = label_counts("none"), label_counts("sampling")
    assert natural.sum() == balanced.sum() == len(train_rows)
    assert natural.max() / natural.min() > 5
    assert balanced.max() / balanced.min() < natural.max() / natural.min() / 2


def test_augmentation_from_files_decodes_only_the_crop_and_keeps_labels(pipeline) -> None:
    """Uncached training input decodes each random crop's window straight from the JPEG: right shapes, range,
    labels, a different crop every epoch; the cached path (decode once, crop in memory) gives the same kind."""
    from fungilib.input_pipeline import Augmentation, make_dataset

    manifest, labels = load_manifest(pipeline.root / "clean")
    rows = manifest[manifest["split"] == "train"].head(40)
    for cache in (False, True):
        ds = make_dataset(rows, len(labels), 48, 40, True, Augmentation(), seed=1, cache=cache)
        (x1, y1), (x2, y2) = [next(iter(ds)) for _ in range(2)]
        assert x1.shape == (40, 48, 48,
                            3) and 0 <= float(np.min(x1)) and float(np.max(x1)) <= 255 + 1e-2  # (area resize rounds)
        assert sorted(y1.numpy().argmax(1)) == sorted(rows["label"])  # one pass, every image once, its own label
        assert sorted(y2.numpy().argmax(1)) == sorted(rows["label"])
        assert float(np.abs(np.sort(x1.numpy().ravel()) - np.sort(x2.numpy().ravel())).max()) > 1  # new crops


def test_the_default_cache_never_holds_more_decoded_photos_than_its_budget(pipeline) -> None:
    """dataset.cache: auto keeps decoded photos in memory only when they fit cache_budget_mb; over it the tf.data
    graph has no cache at all (photos are decoded from their files every epoch), and cache: memory over the
    budget is refused before training starts, naming the parameter to change."""

    from fungilib.errors import FungilibError
    from fungilib.input_pipeline import decoded_megabytes, make_dataset, plan_cache
    from fungilib.train import DatasetParams

    manifest, labels = load_manifest(pipeline.root / "clean")
    train_rows = manifest[manifest["split"] == "train"]
    decoded = decoded_megabytes(train_rows)
    assert decoded == pytest.approx((train_rows["width"] * train_rows["height"]).sum() * 3 / 2**20)
    default = DatasetParams()
    assert default.cache == "auto"
    fits = plan_cache([train_rows], default.cache, default.cache_budget_mb)
    over = plan_cache([train_rows], default.cache, int(decoded) - 1)
    assert fits.in_memory and not over.in_memory and over.decoded_mb == pytest.approx(decoded, abs=0.1)
    with pytest.raises(FungilibError, match=r"dataset.cache: memory would hold .* over dataset.cache_budget_mb"):
        plan_cache([train_rows], "memory", int(decoded) - 1)

    def ops(cache: bool) -> str:
        ds = make_dataset(train_rows, len(labels), 32, 16, True, cache=cache)
        return ds._as_serialized_graph().numpy().decode("latin-1")

    assert "CacheDataset" in ops(True) and "CacheDataset" not in ops(over.in_memory)


def test_colour_jitter_is_per_image_within_a_batch() -> None:
    import tensorflow as tf

    from fungilib.input_pipeline import colour_jitter

    batch = tf.fill([8, 16, 16, 3], 120.0) + tf.random.stateless_uniform([8, 16, 16, 3], [1, 2], 0, 40)
    out = colour_jitter(batch, 0.3).numpy()
    assert out.shape == (8, 16, 16, 3) and out.min() >= 0 and out.max() <= 255
    means = out.reshape(8, -1).mean(axis=1)
    assert np.std(means) > 1  # each photo got its own brightness
    np.testing.assert_allclose(colour_jitter(batch, 0.0).numpy(), np.clip(batch.numpy(), 0, 255), atol=1e-3)


def test_the_models_colour_jitter_acts_in_training_only_and_survives_save_and_load(tmp_path: Path) -> None:
    from fungilib.models import build_classifier, colour_jitter_layer_class

    model, _ = build_classifier("MobileNetV3Small", "none", 32, 3, 0.0, bn_inference=False, colour_jitter=0.3,
                                flip=True)
    layer = model.get_layer("augment")
    x = tf.fill([4, 32, 32, 3], 120.0) + tf.random.stateless_uniform([4, 32, 32, 3], [3, 4], 0, 40)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())  # inference (and exports): identity
    jittered = layer(x, training=True).numpy()
    assert not np.allclose(jittered, x.numpy()) and np.std(jittered.reshape(4, -1).mean(axis=1)) > 1
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras",
                                     custom_objects={"ColourJitter": colour_jitter_layer_class()})
    assert loaded.get_layer("augment").strength == pytest.approx(0.3) and loaded.get_layer("augment").flip
    np.testing.assert_allclose(loaded(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)
    plain, _ = build_classifier("MobileNetV3Small", "none", 32, 3, 0.0, bn_inference=False)
    assert "augment" not in [layer.name for layer in plain.layers]

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def serve(image: Any) -> Any:
        return model(image, training=False)

    ops = {op.type for op in serve.get_concrete_function().graph.get_operations()}
    assert not any("Random" in op for op in ops), ops  # exports hold no random op (TFLite could not convert one)


def test_schedules_follow_their_shape() -> None:
    from fungilib.keras_parts import make_schedule
    from fungilib.train import ScheduleParams

    cosine = make_schedule(ScheduleParams(name="cosine", warmup_epochs=1), 0.1, steps_per_epoch=10, epochs=5)
    assert float(cosine(0)) < 0.01 and float(cosine(10)) == pytest.approx(0.1, rel=1e-3) and float(cosine(50)) < 1e-3
    step = make_schedule(ScheduleParams(name="step", step_epochs=2, step_gamma=0.5), 0.1, steps_per_epoch=10, epochs=6)
    assert [float(step(s)) for s in (0, 21, 41)] == pytest.approx([0.1, 0.05, 0.025])
    assert make_schedule(ScheduleParams(name="constant"), 0.1, 10, 5) == 0.1


def test_unknown_train_parameter_names_group_key_and_allowed() -> None:
    with pytest.raises(FungilibError, match=r"unknown parameter 'model.bsae' for ModelParams; allowed: base, weights"):
        build_params(TrainParams, {"out": "x", "model": {"bsae": "ResNet50"}})
    with pytest.raises(FungilibError, match=r"optimizer.name: 'adamw' is not one of 'adam', 'sgd', 'rmsprop'"):
        build_params(TrainParams, {"out": "x", "optimizer": {"name": "adamw"}})


def test_missing_imagenet_weights_and_hub_module_fail_at_once_naming_the_fix(tmp_path: Path, monkeypatch) -> None:
    from fungilib.models import BASES, build_base

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(FungilibError, match=r"ImageNet weights for MobileNetV3Small are not available offline .*"
                                            r"fungilib weights fetch MobileNetV3Small"):
        build_base(BASES["MobileNetV3Small"], "imagenet", 96)
    with pytest.raises(FungilibError, match=r"TF Hub module https://tfhub.dev/google/inaturalist/inception_v3/"
                                            r"feature_vector/5 is not available offline \(looked in .*hub/"):
        build_base(BASES["inat_inception_v3"], "imagenet", 299)
    assert time.perf_counter() - start < 30


def _write_hub_module(path: Path) -> None:
    """A small reusable SavedModel in TF Hub's form: __call__(inputs, training), variables, a serving signature."""

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.kernel = tf.Variable(rng.normal(0, 0.1, (3, 3, 3, 16)).astype("float32"), name="kernel")
            self.dense = tf.Variable(rng.normal(0, 0.1, (16, 8)).astype("float32"), name="w")
            self.trainable_variables_list = [self.kernel, self.dense]

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME"))
            return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.dense)

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})


@pytest.mark.slow
def test_hub_module_path_fine_tunes_with_adam_and_reloads(pipeline, tmp_path: Path) -> None:
    module = tmp_path / "module"
    _write_hub_module(module)
    runs = {}
    for freeze in ("head_only", "train_all"):
        out = tmp_path / freeze
        train(_params(pipeline, out, model={"base": str(module), "weights": "imagenet", "freeze": freeze},
                      optimizer={"name": "adam", "learning_rate": 0.05}))
        model, _, _ = load_trained(out)
        hub = model.get_layer("hub_module")
        runs[freeze] = [w.numpy() for w in hub.weights]
    original = tf.saved_model.load(str(module))
    kernel = original.kernel.numpy()
    head_only = next(w for w in runs["head_only"] if w.shape == kernel.shape)
    fine_tuned = next(w for w in runs["train_all"] if w.shape == kernel.shape)
    np.testing.assert_array_equal(head_only, kernel)  # frozen module: untouched
    assert not np.allclose(fine_tuned, kernel)  # fine-tuned with Adam: moved


def test_sigkill_mid_training_then_rerun_resumes(killed_run, pipeline) -> None:  # noqa: ANN001
    """The shared run (conftest) was killed with SIGKILL after its first epoch and rerun with the same command."""
    out = killed_run.path
    history = pd.read_csv(out / "history.csv")
    assert 1 <= killed_run.finished_before_kill < killed_run.epochs
    assert history["epoch"].tolist() == list(range(killed_run.epochs))  # continued, not restarted: each epoch once
    import json

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] == killed_run.finished_before_kill
    assert not (out / "backup").exists()
    again = train(build_params(TrainParams, {"out": out}))  # a finished run is not redone
    assert again.skipped and again.epochs_run == killed_run.epochs
    # trained with `--set toxicity=…`: its own evaluation has the poisonous-confusion rate, with and without the prior
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["poisonous_as_edible"] <= 1 and 0 <= metrics["poisonous_as_edible_with_prior"] <= 1
    assert 0 <= metrics["obs_poisonous_as_edible"] <= 1 and 0 <= metrics["obs_poisonous_as_edible_with_prior"] <= 1
    assert json.loads((out / "train_summary.json").read_text())["params"]["toxicity"].endswith("toxicity-sample.csv")
    assert history["val_accuracy"].iloc[-1] > 0.3  # it learned: the export and browser tests need real outputs
    _check_evaluation(pipeline, out)


def _check_evaluation(pipeline, run_dir: Path) -> None:  # noqa: ANN001
    """Evaluation of a finished run: metrics.json, tables and plots on the test split only."""
    from fungilib.evaluate import EvaluateParams, evaluate_run

    result = evaluate_run(EvaluateParams(run=run_dir))
    m = result.metrics
    assert {"top1", "top3", "top5", "macro_f1", "genus_top1", "family_top1", "ece", "temperature"} <= set(m)
    assert 0 <= m["top1"] <= m["top3"] <= m["top5"] <= 1 and m["top1"] <= m["genus_top1"]
    manifest, _ = load_manifest(pipeline.root / "clean")
    assert m["images"] == (manifest["split"] == "test").sum()
    # the validation split's own figures, with the weights the run keeps: what every choice of a run reads
    assert m["val_images"] == (manifest["split"] == "val").sum() > 0
    assert 0 <= m["val_top1"] <= m["val_top3"] <= 1 and m["val_nll"] > 0 and 0 <= m["val_ece"] <= 1
    for path in result.plots.values():
        assert path.stat().st_size > 5000
    assert (run_dir / "metrics.json").exists() and len(pd.read_csv(run_dir / "per_class.csv")) == 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV3Small", "MobileNetV3Large", "MobileNetV2", "EfficientNetB0",
                                  "EfficientNetV2B0", "ResNet50", "InceptionV3", "Xception"])
def test_every_registered_base_builds_offline_with_its_preprocessing(name: str) -> None:
    from fungilib.models import BASES, build_classifier

    model, _ = build_classifier(name, "none", 75, 3, 0.1, bn_inference=False)
    out = model(np.full((1, 75, 75, 3), 128.0, np.float32))
    assert out.shape == (1, 3) and BASES[name].scaling in {"0_255", "minus1_1", "caffe"}
