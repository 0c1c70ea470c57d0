"""An independent forward pass of the two packaged ImageNet checkpoints in numpy (float64), written from the
PyTorch modules' semantics (torchvision's MobileNetV2; efficientnet_pytorch's Lite0 with TF "same" padding), to
check fungilib's Keras conversion against. It reads the state dict only; it shares no code with the converter."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad(x: np.ndarray, kernel: int, stride: int, mode: str) -> np.ndarray:
    if mode == "torch":
        p = ((kernel // 2,) * 2, (kernel // 2,) * 2)
    else:
        p = (_same(x.shape[0], kernel, stride), _same(x.shape[1], kernel, stride))
    return np.pad(x, (*p, (0, 0)))


def conv(x: np.ndarray, w: np.ndarray, stride: int, mode: str) -> np.ndarray:
    """x (H, W, C); w (O, I, kh, kw) as torch stores it."""
    if w.shape[2] == 1:
        return x[::stride, ::stride] @ w[:, :, 0, 0].T
    windows = sliding_window_view(_pad(x, w.shape[2], stride, mode), w.shape[2:], axis=(0, 1))[::stride, ::stride]
    return np.einsum("hwcij,ocij->hwo", windows, w)


def depthwise(x: np.ndarray, w: np.ndarray, stride: int, mode: str) -> np.ndarray:
    windows = sliding_window_view(_pad(x, w.shape[2], stride, mode), w.shape[2:], axis=(0, 1))[::stride, ::stride]
    return np.einsum("hwcij,cij->hwc", windows, w[:, 0])


def bn(x: np.ndarray, sd: dict, key: str, eps: float) -> np.ndarray:
    return (x - sd[f"{key}.running_mean"]) / np.sqrt(sd[f"{key}.running_var"] + eps) * sd[f"{key}.weight"] \
        + sd[f"{key}.bias"]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 6)


def mobilenet_v2_logits(sd: dict, image: np.ndarray) -> np.ndarray:
    """``image``: RGB in [0, 255], H × W × 3. torchvision: (x/255 − mean)/std, padding 1 on each side, eps 1e-5."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (image / 255.0 - MEAN) / STD
    x = relu6(bn(conv(x, sd["features.0.0.weight"], 2, "torch"), sd, "features.0.1", 1e-5))
    index = 0
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            index += 1
            p, stride, y, j = f"features.{index}.conv", s if i == 0 else 1, x, 0
            if t != 1:
                y = relu6(bn(conv(y, sd[f"{p}.0.0.weight"], 1, "torch"), sd, f"{p}.0.1", 1e-5))
                j = 1
            y = relu6(bn(depthwise(y, sd[f"{p}.{j}.0.weight"], stride, "torch"), sd, f"{p}.{j}.1", 1e-5))
            y = bn(conv(y, sd[f"{p}.{j + 1}.weight"], 1, "torch"), sd, f"{p}.{j + 2}", 1e-5)
            x = x + y if stride == 1 and x.shape[-1] == c else y
    x = relu6(bn(conv(x, sd["features.18.0.weight"], 1, "torch"), sd, "features.18.1", 1e-5))
    return x.mean(axis=(0, 1)) @ sd["classifier.1.weight"].T + sd["classifier.1.bias"]


def lite0_logits(sd: dict, image: np.ndarray) -> np.ndarray:
    """``image``: RGB in [0, 255]. (x − 127)/128, TF "same" padding, eps 1e-3, no squeeze-excite, ReLU6."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = (image - 127.0) / 128.0
    x = relu6(bn(conv(x, sd["_conv_stem.weight"], 2, "same"), sd, "_bn0", 1e-3))
    index = 0
    blocks = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
    for r, _kernel, s, e, c in blocks:  # the kernel size comes from the weights' shape
        for i in range(r):
            p, stride, y = f"_blocks.{index}", s if i == 0 else 1, x
            if e != 1:
                y = relu6(bn(conv(y, sd[f"{p}._expand_conv.weight"], 1, "same"), sd, f"{p}._bn0", 1e-3))
            y = relu6(bn(depthwise(y, sd[f"{p}._depthwise_conv.weight"], stride, "same"), sd, f"{p}._bn1", 1e-3))
            y = bn(conv(y, sd[f"{p}._project_conv.weight"], 1, "same"), sd, f"{p}._bn2", 1e-3)
            x = x + y if stride == 1 and x.shape[-1] == c else y
            index += 1
    x = relu6(bn(conv(x, sd["_conv_head.weight"], 1, "same"), sd, "_bn1", 1e-3))
    return x.mean(axis=(0, 1)) @ sd["_fc.weight"].T + sd["_fc.bias"]
