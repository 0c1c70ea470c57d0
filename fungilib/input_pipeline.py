"""tf.data pipelines from the manifest: augmented training batches, central-crop evaluation batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from fungilib.errors import FungilibError

EVAL_CROP = 0.875  # evaluation: resize the shorter side to size / 0.875, then a central square crop
# How eval_transform resizes, spelled out for other implementations (web/preprocess.js reads it):
# tf.image.resize bilinear with antialias is a triangle kernel widened by the downscale factor; the resized
# size is computed in float32 and rounded half to even, as tf.round does.
RESIZE_RULE = {"resize_kernel": "triangle", "antialias": True, "size_rounding": "float32, half to even"}


@dataclass
class Augmentation:
    """Training-time augmentation; ``enabled: false`` turns all of it off."""

    enabled: bool = True
    min_crop: float = 0.35  # random-resized-crop: smallest share of the image area kept
    flip: bool = True
    color_jitter: float = 0.15  # brightness, contrast and saturation strength (0: none)
    # where colour jitter and flip run: layers of the model (training only; on the accelerator of a GPU machine,
    # and off the input pipeline's CPU threads), or the input pipeline
    jitter_in: Literal["model", "pipeline"] = "model"


def decode_file(path: Any) -> Any:
    """A saved JPEG as uint8 RGB, with the accurate integer IDCT that browsers and Pillow use.

    TensorFlow's default (INTEGER_FAST) differs from them by up to 5 levels per pixel, which moved the
    web page's probabilities by 5e-4 from Keras' on the same photo; with INTEGER_ACCURATE they agree to 1e-7.
    """
    import tensorflow as tf

    return tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")


def _decode_example(path: Any, label: Any) -> tuple[Any, Any]:
    return decode_file(path), label


def eval_transform(image: Any, size: int) -> Any:
    """Resize so the shorter side is size / 0.875 and crop the central size x size square, as float [0, 255].

    ``image`` is one photo (H×W×3) or a batch of photos of one size (N×H×W×3), each transformed alike."""
    import tensorflow as tf

    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    scale = (size / EVAL_CROP) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _crop_window(shape: Any, aug: Augmentation) -> tuple[Any, Any]:
    """A random crop (begin, size) of an image of ``shape``: 3/4–4/3 aspect, ``min_crop``–100 % of the area."""
    import tensorflow as tf

    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(aug.min_crop, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin, crop_size


def train_transform(image: Any, size: int, aug: Augmentation) -> Any:
    """Random-resized crop, horizontal flip and mild colour jitter (each only when enabled)."""
    import tensorflow as tf

    if not aug.enabled:
        return eval_transform(image, size)
    begin, crop_size = _crop_window(tf.shape(image), aug)
    return _augment(tf.slice(image, begin, crop_size), size, aug)


def train_transform_file(path: Any, size: int, aug: Augmentation) -> Any:
    """``train_transform`` straight from a JPEG file: only the random crop's window is decoded
    (``decode_and_crop_jpeg``), which costs less than decoding the whole photo."""
    import tensorflow as tf

    if not aug.enabled:
        return eval_transform(decode_file(path), size)
    data = tf.io.read_file(path)
    begin, crop_size = _crop_window(tf.io.extract_jpeg_shape(data), aug)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    return _augment(tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method="INTEGER_ACCURATE"), size, aug)


def _augment(crop: Any, size: int, aug: Augmentation) -> Any:
    import tensorflow as tf

    # area averaging: antialiased like eval's triangle filter at these shrink factors, several times cheaper
    image = tf.image.resize(crop, (size, size), method="area")
    if aug.flip and aug.jitter_in == "pipeline":
        image = tf.image.random_flip_left_right(image)
    if aug.color_jitter > 0 and aug.jitter_in == "pipeline":
        image = colour_jitter(image[None], aug.color_jitter)[0]
    return image


GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # tf.image.rgb_to_grayscale's


def colour_jitter(images: Any, strength: float) -> Any:
    """Brightness, contrast and saturation jitter of a batch of photos (N×H×W×3), a factor of each per photo.

    The three are affine in the pixels, so they fold into one pass: with brightness b, contrast c (around the
    photo's mean m) and saturation s (a blend with the grey image g, as torchvision's ColorJitter does it),
    out = c·s·x + c·(1 − s)·g(x) + (1 − c)·m + b. Applied step by step (TensorFlow's random_brightness,
    random_contrast and a saturation blend) it cost a third of the pipeline's speed; per photo, inside the map that
    decodes it, it costs a sixth (a separate map over batches cost more: it contends with the decoding threads)."""
    import tensorflow as tf

    j = strength
    n = tf.shape(images)[0]
    brightness = tf.random.uniform([n, 1, 1, 1], -255 * j * 0.5, 255 * j * 0.5)
    contrast = tf.random.uniform([n, 1, 1, 1], 1 - j, 1 + j)
    saturation = tf.random.uniform([n, 1, 1, 1], 1 - j, 1 + j)
    grey = tf.reduce_sum(images * tf.constant(GREY_WEIGHTS, images.dtype), axis=-1, keepdims=True)
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)  # the mean of the grey image is the photo's mean
    out = (contrast * saturation) * images + (contrast * (1 - saturation)) * grey + ((1 - contrast) * mean + brightness)
    return tf.clip_by_value(out, 0.0, 255.0)


def decoded_megabytes(frame: pd.DataFrame) -> float:
    """What holding ``frame``'s photos decoded would take (RGB bytes, from the manifest's width and height)."""
    if frame.empty or not {"width", "height"} <= set(frame.columns):
        return 0.0
    return float((frame["width"].astype("float64") * frame["height"].astype("float64")).sum() * 3 / 2**20)


@dataclass
class CachePlan:
    """Whether decoded photos are kept in memory between epochs, and why."""

    in_memory: bool
    decoded_mb: float
    budget_mb: int
    mode: str


def plan_cache(frames: list[pd.DataFrame], mode: str, budget_mb: int) -> CachePlan:
    """``auto``: in memory only when the decoded training and validation photos fit ``budget_mb``, else read
    from the files every epoch (only each random crop's window is decoded). ``memory`` over the budget is refused
    before training starts, with the number and the parameter to change — never an out-of-memory kill mid-epoch."""

    decoded = sum(decoded_megabytes(f) for f in frames)
    if mode == "memory" and decoded > budget_mb:
        raise FungilibError(f"dataset.cache: memory would hold {decoded:,.0f} MB of decoded photos, over "
                            f"dataset.cache_budget_mb ({budget_mb:,} MB); set dataset.cache: auto (or none), or raise "
                            "dataset.cache_budget_mb if this machine has the memory")
    return CachePlan(mode == "memory" or (mode == "auto" and decoded <= budget_mb), round(decoded, 1), budget_mb, mode)


def make_dataset(frame: pd.DataFrame, num_classes: int, size: int, batch_size: int, training: bool,
                 aug: Augmentation | None = None, seed: int = 0, cache: bool = False,
                 balance: str = "none") -> Any:
    """Batches of (image float32 [0, 255], one-hot label) for ``frame``'s rows (``path``, ``label``).

    Training: shuffled each epoch (seeded), augmented (crop, flip and colour jitter per image),
    optionally class-balanced by sampling; evaluation: in manifest order, central crop. ``cache`` keeps decoded
    images in memory (decode once, augment every epoch): see ``plan_cache`` for when that is safe.
    """
    import tensorflow as tf

    paths = frame["path"].astype(str).to_numpy()
    labels = frame["label"].astype("int32").to_numpy()
    autotune = tf.data.AUTOTUNE

    aug = aug or Augmentation()
    from_files = training and aug.enabled and not cache  # decode only each random crop's window

    def labelled(indices: np.ndarray) -> Any:
        ds = tf.data.Dataset.from_tensor_slices((paths[indices], labels[indices]))
        if from_files:
            return ds
        ds = ds.map(_decode_example, num_parallel_calls=autotune, deterministic=not training)
        return ds.cache() if cache else ds

    if training and balance == "sampling":
        per_class = [np.nonzero(labels == c)[0] for c in range(num_classes) if (labels == c).any()]
        streams = [labelled(ix).shuffle(len(ix), seed=seed, reshuffle_each_iteration=True).repeat() for ix in per_class]
        ds = tf.data.Dataset.sample_from_datasets(streams, seed=seed, stop_on_empty_dataset=False)
        ds = ds.take(len(labels))  # an epoch is still one pass worth of images
    else:
        ds = labelled(np.arange(len(labels)))
        if training:
            ds = ds.shuffle(min(len(labels), 10_000), seed=seed, reshuffle_each_iteration=True)

    def to_example(image: Any, label: Any) -> tuple[Any, Any]:
        if from_files:
            image = train_transform_file(image, size, aug)
        else:
            image = train_transform(image, size, aug) if training else eval_transform(image, size)
        return image, tf.one_hot(label, num_classes)

    ds = ds.map(to_example, num_parallel_calls=autotune, deterministic=not training)
    return ds.batch(batch_size).prefetch(autotune)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, normalised so the average image weighs 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}
