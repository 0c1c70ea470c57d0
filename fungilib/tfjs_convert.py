"""SavedModel → TF.js graph model, run in its own process (``python -m fungilib.tfjs_convert``).

Two facts of this stack decide how (see the project notes): ``tensorflowjs`` is installed without its
dependencies, so its import of ``tensorflow_decision_forests`` (whose real build cannot load beside this
TensorFlow) is answered by an empty module; and oneDNN must be off before TensorFlow is imported, or
MobileNetV3's graph contains ``_FusedHardSwish``, which TF.js cannot run. Both only hold in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

from fungilib.artifacts.bundle import TFJS_MODEL
from fungilib.errors import FungilibError

QUANTIZATIONS: tuple[str, ...] = ("none", "float16", "uint8")


def convert_saved_model(saved_model: Path, outputs: dict[str, Path], timeout: float = 900) -> dict[str, Path]:
    """Convert ``saved_model`` once per ``{quantization: out_dir}`` in one child process (one TensorFlow import).

    Each ``out_dir`` receives ``model.json`` and its weight shards.
    """
    for quantization in outputs:
        if quantization not in QUANTIZATIONS:
            raise FungilibError(f"unknown TF.js quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "fungilib.tfjs_convert", str(saved_model),
           *(f"{q}={out}" for q, out in outputs.items())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise FungilibError(f"TF.js conversion of {saved_model} failed: {last[0]}")
    for out_dir in outputs.values():
        if not (out_dir / TFJS_MODEL).exists():
            raise FungilibError(f"TF.js conversion of {saved_model} wrote no model.json in {out_dir}")
    return outputs


def _import_converter():  # noqa: ANN202 — the tensorflowjs module has no type information
    sys.modules.setdefault("tensorflow_decision_forests", types.ModuleType("tensorflow_decision_forests"))
    try:
        from tensorflowjs.converters import tf_saved_model_conversion_v2
    except ImportError as exc:
        raise FungilibError(f"tensorflowjs is not importable ({exc}); run `make setup`, which installs it "
                            "from requirements-nodeps.txt") from exc
    return tf_saved_model_conversion_v2


def _main(argv: list[str]) -> int:
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0" or "tensorflow" in sys.modules:
        print("run with TF_ENABLE_ONEDNN_OPTS=0 in a fresh process (use convert_saved_model)", file=sys.stderr)
        return 2
    saved_model, jobs = Path(argv[0]), [arg.partition("=") for arg in argv[1:]]
    converter = _import_converter()
    for quantization, _, out in jobs:
        options: dict[str, object] = {}
        if quantization in ("float16", "uint8"):
            options["quantization_dtype_map"] = {quantization: "*"}
        Path(out).mkdir(parents=True, exist_ok=True)
        converter.convert_tf_saved_model(str(saved_model), out, signature_def="serving_default",
                                         saved_model_tags="serve", **options)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
