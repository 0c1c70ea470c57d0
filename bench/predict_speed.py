"""`fungilib predict` throughput: the streaming, batched predictor against one photo at a time (how it worked
before: an eager resize per photo, one interpreter call per photo), on the same folder and bundle.

Usage: .venv/bin/python bench/predict_speed.py [--model runs/demo/export/bundle] [--photos runs/demo/download/images]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent


def one_at_a_time(paths: list[Path], model: Path) -> float:
    """The previous loop: decode, eager resize and crop, and a batch-of-one interpreter call, per photo."""
    import numpy as np
    import tensorflow as tf

    from fungilib.input_pipeline import eval_transform
    from fungilib.litert import litert_runner
    from fungilib.predict import read_photo

    prep = json.loads((model / "preprocessing.json").read_text())
    size = int(prep["input_size"])
    run = litert_runner((model / "model_f32.tflite").read_bytes(), size)
    start = time.perf_counter()
    for path in paths:
        x = eval_transform(tf.constant(read_photo(path)), size).numpy()
        np.asarray(run(x[None]))
    return len(paths) / (time.perf_counter() - start)


def streamed(paths: list[Path], model: Path) -> float:
    from fungilib.predict import iter_predictions

    start = time.perf_counter()
    count = sum(1 for _ in iter_predictions(paths, model))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/export/bundle"))
    parser.add_argument("--photos", type=Path, default=Path("runs/demo/download/images"))
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    from fungilib.predict import expand_inputs

    paths = expand_inputs([args.photos])[: args.limit]
    streamed(paths[:64], args.model)  # warm: traced, files in the page cache
    before = one_at_a_time(paths, args.model)
    after = streamed(paths, args.model)
    rows = [{"what": "one photo at a time (before)", "photos_per_second": round(before, 1)},
            {"what": "streamed, parallel decode, batched LiteRT", "photos_per_second": round(after, 1),
             "speedup": round(after / before, 2)}]
    result = {"benchmark": "predict_speed", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "model": str(args.model), "photos": len(paths), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "predict_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| {len(paths)} photos, {args.model} | photos/s | speed-up |\n|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['photos_per_second']} | {r.get('speedup', '')} |")


if __name__ == "__main__":
    main()
