"""Feature extractors (keras.applications and TF Hub modules), offline weight resolution, and the classifier head."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.errors import FungilibError
from fungilib.input_pipeline import colour_jitter
from fungilib.pretrained_bases import build_pretrained, checkpoint_file


@dataclass(frozen=True)
class BaseSpec:
    """How to build one feature extractor and what its input must look like."""

    name: str
    default_size: int
    scaling: str  # what the base expects: "0_255" (preprocessing inside), "minus1_1", "caffe", "0_1"
    application: str = ""  # keras.applications constructor name
    hub_handle: str = ""  # TF Hub handle (URL) for hub modules
    checkpoint: bool = False  # built to a packaged checkpoint's architecture (fungilib.pretrained_bases)


BASES: dict[str, BaseSpec] = {
    "MobileNetV3Small": BaseSpec("MobileNetV3Small", 224, "0_255", application="MobileNetV3Small"),
    "MobileNetV3Large": BaseSpec("MobileNetV3Large", 224, "0_255", application="MobileNetV3Large"),
    "MobileNetV2": BaseSpec("MobileNetV2", 224, "minus1_1", application="MobileNetV2"),
    "EfficientNetB0": BaseSpec("EfficientNetB0", 224, "0_255", application="EfficientNetB0"),
    "EfficientNetV2B0": BaseSpec("EfficientNetV2B0", 224, "0_255", application="EfficientNetV2B0"),
    # ImageNet checkpoints that install as packages (no download): built to their own architecture
    "MobileNetV2Torchvision": BaseSpec("MobileNetV2Torchvision", 224, "imagenet_mean_std", checkpoint=True),
    "EfficientNetLite0": BaseSpec("EfficientNetLite0", 224, "lite", checkpoint=True),
    "ResNet50": BaseSpec("ResNet50", 224, "caffe", application="ResNet50"),
    "InceptionV3": BaseSpec("InceptionV3", 299, "minus1_1", application="InceptionV3"),
    "Xception": BaseSpec("Xception", 299, "minus1_1", application="Xception"),
    "inat_inception_v3": BaseSpec(
        "inat_inception_v3", 299, "0_1", hub_handle="https://tfhub.dev/google/inaturalist/inception_v3/feature_vector/5"
    ),
}


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def hub_cache_dir() -> Path:
    return Path(os.environ.get("TFHUB_CACHE_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "tfhub_modules"))


def hub_cache_path(handle: str) -> Path:
    """Where tensorflow_hub keeps a downloaded module: TFHUB_CACHE_DIR/<sha1 of the handle>."""
    return hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def resolve_hub_module(handle: str) -> Path:
    """A local SavedModel folder for ``handle`` (a path, or a handle already in TF Hub's cache), or one clear error."""
    local = Path(handle)
    if local.is_dir():
        if not (local / "saved_model.pb").exists():
            raise FungilibError(f"{local}: not a SavedModel folder (no saved_model.pb)")
        return local
    cached = hub_cache_path(handle)
    if (cached / "saved_model.pb").exists():
        return cached
    raise FungilibError(
        f"TF Hub module {handle} is not available offline (looked in {cached}); on a connected machine run "
        f"`TFHUB_CACHE_DIR={hub_cache_dir()} fungilib weights fetch {handle}` and copy that folder here"
    )


def spec_for(base: str) -> BaseSpec:
    """The registry entry for ``base``: a registered name, a TF Hub handle, or a local SavedModel folder."""
    if base in BASES:
        return BASES[base]
    if base.startswith(("http://", "https://")) or Path(base).is_dir():
        return BaseSpec(base, 224, "0_1", hub_handle=base)
    raise FungilibError(f"unknown base model {base!r}; choose one of {', '.join(BASES)}, a TF Hub handle or a folder")


_HUB_LAYER: Any = None


def hub_layer_class() -> Any:
    """A Keras 3 layer over a reusable SavedModel (TF Hub format).

    Keras 3 cannot call tf_keras' ``hub.KerasLayer`` on its tensors, so modules load through ``TFSMLayer``. Its
    variables keep TF1-style names ending in ':0', which Keras 3 optimizers turn into invalid slot names (Adam:
    "'w:0_momentum' is not a valid scope name"); the subclass tracks them under sanitized names.
    """
    global _HUB_LAYER
    if _HUB_LAYER is None:
        import keras

        @keras.saving.register_keras_serializable(package="fungilib")
        class HubModuleLayer(keras.layers.TFSMLayer):
            def _add_existing_weight(self, weight: Any) -> None:
                variable = keras.Variable(initializer=weight, trainable=weight.trainable, dtype=weight.dtype,
                                          shape=weight.shape, name=weight.name.replace("/", "_").replace(":", "_"))
                self._track_variable(variable)

        _HUB_LAYER = HubModuleLayer
    return _HUB_LAYER


def _hub_layer(path: Path, trainable: bool) -> Any:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    endpoint = "serving_default" if "serving_default" in loaded.signatures else "__call__"
    return hub_layer_class()(str(path), call_endpoint=endpoint, trainable=trainable, name="hub_module")


def _fast_batchnorm(model: Any) -> None:
    """From scratch, Keras' BatchNorm momentum (0.99-0.999) leaves the moving statistics near their initial values
    for hundreds of steps: the model then scores well in training mode and predicts one class in inference."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9


def build_base(spec: BaseSpec, weights: str, image_size: int) -> Any:
    """The feature extractor (no top, global-pooled later), with weights 'imagenet', 'none' or a file path."""
    import keras

    if spec.hub_handle:
        if weights not in ("imagenet", "none", ""):
            raise FungilibError("a TF Hub module carries its own weights: set weights to 'imagenet' (default)")
        return _hub_layer(resolve_hub_module(spec.hub_handle), trainable=True)
    if spec.checkpoint:
        model = build_pretrained(spec.name, image_size, weights)
        if weights == "none":
            _fast_batchnorm(model)
        return model
    constructor = getattr(keras.applications, spec.application)
    kwargs: dict[str, Any] = {"include_top": False, "input_shape": (image_size, image_size, 3)}
    if spec.application.startswith(("MobileNetV3", "EfficientNetV2")):  # EfficientNet (v1) always rescales inside
        kwargs["include_preprocessing"] = True
    if weights == "none":
        model = constructor(weights=None, **kwargs)
        _fast_batchnorm(model)
        return model
    if weights == "imagenet":
        try:
            with warnings.catch_warnings():
                # Keras warns that ImageNet weights are 224 px ones at any other size: convolutional weights are
                # size-independent, and training at 96–299 px is what users choose (the model card records it)
                warnings.filterwarnings("ignore", message=".*Weights for input shape", category=UserWarning)
                return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # keras raises a plain Exception on a failed download
            if "URL fetch failure" not in str(exc) and "fetch" not in str(exc).lower():
                raise
            raise FungilibError(
                f"ImageNet weights for {spec.name} are not available offline (Keras looks in {keras_cache_dir()}); "
                f"on a connected machine run `fungilib weights fetch {spec.name}` and copy that folder here"
            ) from None
    path = Path(weights)
    if not path.exists():
        raise FungilibError(f"weights file {path} does not exist (weights: imagenet, none, or a path)")
    model = constructor(weights=None, **kwargs)
    model.load_weights(str(path))
    return model


def _in_keras_cache(application: str) -> bool:
    """Whether Keras' cache holds ``application``'s no-top ImageNet weights (its file names vary by model:
    weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5, efficientnetb0_notop.h5, …)."""
    wanted = "".join(c for c in application.lower() if c.isalnum())
    folder = keras_cache_dir()
    return folder.is_dir() and any(
        wanted in "".join(c for c in f.name.lower() if c.isalnum()) and "notop" in f.name.lower().replace("_", "")
        for f in folder.iterdir())


def imagenet_unavailable(name: str) -> str | None:
    """Why base ``name``'s ImageNet weights cannot load on this machine (None when they can): its installed
    checkpoint package, Keras' cache or TF Hub's cache — nothing is downloaded to find out."""
    spec = spec_for(name)
    try:
        if spec.checkpoint:
            checkpoint_file(name)
        elif spec.hub_handle:
            resolve_hub_module(spec.hub_handle)
        elif not _in_keras_cache(spec.application):
            return (f"ImageNet weights for {name} are not in Keras' cache {keras_cache_dir()} (on a connected machine "
                    f"run `fungilib weights fetch {name}` and copy that folder here)")
    except FungilibError as exc:
        return str(exc)
    return None


def fetch_weights(name: str) -> Path:
    """Download ``name``'s weights into the library's own cache (run on a connected machine)."""
    spec = spec_for(name)
    if spec.checkpoint:  # installed as a package: nothing to fetch
        return checkpoint_file(name)
    if spec.hub_handle:
        import tensorflow_hub as hub

        return Path(hub.resolve(spec.hub_handle))
    import keras

    getattr(keras.applications, spec.application)(weights="imagenet", include_top=False)
    return keras_cache_dir()


def rescale_layer(scaling: str) -> Any:
    """A layer mapping RGB in [0, 255] to what the base expects; the model's own input is always [0, 255]."""
    import keras

    if scaling == "0_255":
        return keras.layers.Identity(name="preprocess")
    if scaling == "minus1_1":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")
    if scaling == "0_1":
        return keras.layers.Rescaling(1 / 255.0, name="preprocess")
    if scaling == "imagenet_mean_std":  # torchvision: RGB in [0, 1], minus the ImageNet mean, over its std
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        return keras.layers.Rescaling(list(1 / (255 * std)), offset=list(-mean / std), name="preprocess")
    if scaling == "lite":  # EfficientNet-Lite: (x - 127) / 128
        return keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="preprocess")
    if scaling == "caffe":  # RGB → BGR, minus the ImageNet means
        return keras.layers.Lambda(
            lambda x: x[..., ::-1] - keras.ops.convert_to_tensor([103.939, 116.779, 123.68]), name="preprocess")
    raise FungilibError(f"unknown scaling {scaling!r}")


_JITTER_LAYER: Any = None


def colour_jitter_layer_class() -> Any:
    """A Keras layer applying a random horizontal flip and ``input_pipeline.colour_jitter`` to each training batch,
    and nothing at inference.

    In the model, this augmentation runs where the model runs (the accelerator, on a GPU machine) instead of on the
    input pipeline's CPU threads. Exported models call it in inference mode, where it adds no operation at all
    (Keras' own RandomFlip leaves random ops in the graph, which TFLite cannot convert)."""
    global _JITTER_LAYER
    if _JITTER_LAYER is None:
        import keras
        import tensorflow as tf

        @keras.saving.register_keras_serializable(package="fungilib")
        class ColourJitter(keras.layers.Layer):
            def __init__(self, strength: float = 0.0, flip: bool = False, **kwargs: Any) -> None:
                kwargs.setdefault("dtype", "float32")  # the random factors are float32, also under mixed precision
                super().__init__(**kwargs)
                self.strength = float(strength)
                self.flip = bool(flip)

            def call(self, images: Any, training: bool | None = None) -> Any:
                if not training:
                    return images
                if self.flip:
                    mirrored = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
                    images = tf.where(mirrored, tf.reverse(images, axis=[2]), images)
                return colour_jitter(images, self.strength) if self.strength > 0 else images

            def compute_output_shape(self, input_shape: Any) -> Any:
                return input_shape

            def get_config(self) -> dict[str, Any]:
                return {**super().get_config(), "strength": self.strength, "flip": self.flip}

        _JITTER_LAYER = ColourJitter
    return _JITTER_LAYER


def build_classifier(base_name: str, weights: str, image_size: int, num_classes: int, dropout: float,
                     bn_inference: bool, colour_jitter: float = 0.0, flip: bool = False) -> tuple[Any, Any]:
    """(model, base): [0, 255] RGB → [horizontal flip, colour jitter: training only] → preprocess → base → global
    average pool → dropout → dense logits.

    Dropout sits before the logits, never after; softmax is added at export time. With ``bn_inference`` the base
    runs with ``training=False`` so its BatchNorm statistics stay as pretrained while fine-tuning.
    """
    import keras

    spec = spec_for(base_name)
    base = build_base(spec, weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    augment = colour_jitter > 0 or flip
    x = colour_jitter_layer_class()(colour_jitter, flip, name="augment")(inputs) if augment else inputs
    x = rescale_layer(spec.scaling)(x)
    x = base(x, training=False) if bn_inference else base(x)
    if isinstance(x, dict):  # a SavedModel signature returns a dict of outputs
        x = next(iter(x.values()))
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=f"fungilib_{spec.name.replace('/', '_')}"), base


def with_open_set_score(model: Any, temperature: float, bank: Any = None) -> Any:
    """``model`` (image → logits) answering its calibrated probabilities — softmax of logits / ``temperature`` —
    and, with a k-NN ``bank`` (``fungilib.feature_scores.KnnBank``), the open-set score appended as one more
    value: the cosine similarity of the photo's unit embedding (projected as the bank is) to its k-th nearest bank
    row, or (the bank's ``logit_mix``) its mix with the largest logit. One output keeps every exported format and
    the page's runtime as they are; the bank travels inside the model as constant weights."""
    import keras

    size = int(model.input_shape[1])
    inputs = keras.Input((size, size, 3), name="image")
    if bank is None:
        logits = keras.layers.Rescaling(1.0 / temperature, name="temperature")(model(inputs))
        return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits))
    from fungilib.model_outputs import with_embeddings

    raw_logits, embedding = with_embeddings(model)(inputs)
    probabilities = keras.layers.Softmax(name="probabilities")(
        keras.layers.Rescaling(1.0 / temperature, name="temperature")(raw_logits))
    x = keras.layers.UnitNormalization(name="open_set_unit")(embedding)
    if bank.projection is not None:
        project = keras.layers.Dense(bank.projection.shape[1], use_bias=False, name="open_set_projection")
        x = keras.layers.UnitNormalization(name="open_set_unit_projected")(project(x))
        project.set_weights([bank.projection.astype(np.float32)])
    compare = keras.layers.Dense(len(bank.bank), use_bias=False, name="open_set_bank")
    similarity = compare(x)
    compare.set_weights([bank.bank.T.astype(np.float32)])
    k = min(bank.k, len(bank.bank))
    score = keras.layers.Lambda(lambda s: keras.ops.top_k(s, k)[0][:, k - 1:k], name="open_set_score")(similarity)
    if bank.logit_mix is not None:  # sigmoid(z(knn) + z(max logit)): fungilib.feature_scores.mix_with_max_logit
        knn_mean, knn_std, logit_mean, logit_std = (float(v) for v in bank.logit_mix)
        top = keras.layers.Lambda(lambda z: keras.ops.max(z, axis=-1, keepdims=True), name="open_set_max_logit")(
            raw_logits)
        score = keras.layers.Lambda(lambda t: keras.ops.sigmoid((t[0] - knn_mean) / knn_std
                                                                + (t[1] - logit_mean) / logit_std),
                                    name="open_set_mix")([score, top])
    return keras.Model(inputs, keras.layers.Concatenate(name="probabilities_and_open_set")([probabilities, score]))
