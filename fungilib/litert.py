"""A TFLite model run one image at a time with the LiteRT interpreter (export parity, predictions)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def litert_runner(model: bytes, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function from images (N×size×size×3, [0, 255]) to the model's outputs, one interpreter call per image."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [1, size, size, 3])
    interpreter.allocate_tensors()

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in images:
            interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0].copy())
        return np.stack(rows)

    return run
