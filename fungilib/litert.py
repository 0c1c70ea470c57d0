"""A TFLite model run with the LiteRT interpreter (export parity, predictions), a batch per call."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fungilib.errors import FungilibError


def litert_runner(model: bytes, size: int, batch_size: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function from images (N×size×size×3, [0, 255]) to the model's outputs. The interpreter is sized once
    for ``batch_size`` images (a model with a dynamic batch dimension); a short last batch is padded, so no
    call reallocates its tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if int(inp["shape"][0]) != batch_size:
        interpreter.resize_tensor_input(inp["index"], [batch_size, size, size, 3])
    interpreter.allocate_tensors()
    buffer = np.zeros((batch_size, size, size, 3), np.float32)

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            buffer[: len(chunk)] = chunk
            interpreter.set_tensor(inp["index"], buffer)
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[: len(chunk)].copy())
        return np.concatenate(rows) if rows else np.zeros((0, int(out["shape"][-1])), np.float32)

    return run


def litert_outputs(model: bytes) -> int:
    """How many values a TFLite model answers per image (its classes); a file that is no model is one line."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        return int(Interpreter(model_content=model).get_output_details()[0]["shape"][-1])
    except (ValueError, RuntimeError, IndexError) as exc:
        raise FungilibError(f"not a readable TFLite model ({str(exc).splitlines()[0][:120]})") from None
