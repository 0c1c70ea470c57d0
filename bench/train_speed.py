"""Training speed and the input pipeline: images/s for MobileNetV3Small and EfficientNetB0 at the demo size,
and the tf.data training pipeline against a decode-and-resize-only loop over the same files.

Usage: .venv/bin/python bench/train_speed.py [--manifest runs/demo/clean] [--size 96]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=Path("runs/demo/clean"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--pipeline-only", action="store_true", help="the input pipeline rows only (no training)")
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf

    from fungilib.artifacts.dataset import load_manifest
    from fungilib.input_pipeline import Augmentation, decode_file, make_dataset
    from fungilib.models import build_classifier

    manifest, labels = load_manifest(args.manifest)
    train = manifest[manifest["split"] == "train"]
    n = len(labels)
    rows = []

    def images_per_second(ds, passes: int = 2) -> float:  # noqa: ANN001
        count, start = 0, time.perf_counter()
        for _ in range(passes):
            for x, _ in ds:
                count += int(x.shape[0])
        return count / (time.perf_counter() - start)

    paths = tf.data.Dataset.from_tensor_slices(train["path"].astype(str).to_numpy())
    decode_only = paths.map(lambda p: (tf.image.resize(decode_file(p), (args.size, args.size)), 0),
                            num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch)  # the same JPEG decoder settings
    in_pipeline = make_dataset(train, n, args.size, args.batch, True, Augmentation(jitter_in="pipeline"), cache=False)
    in_model = make_dataset(train, n, args.size, args.batch, True, Augmentation(jitter_in="model"), cache=False)
    for ds in (decode_only, in_pipeline, in_model):  # warm: traced, files in the page cache
        images_per_second(ds, 1)
    limits, before, after = [], [], []
    for _ in range(5):  # alternating, medians: this machine is noisy
        limits.append(images_per_second(decode_only))
        before.append(images_per_second(in_pipeline))
        after.append(images_per_second(in_model))
    limit = statistics.median(limits)
    rows.append({"what": "decode + resize only (all cores)", "images_per_second": round(limit)})
    for label, runs in (("jitter and flip in the pipeline (before)", before),
                        ("jitter and flip in the model (after)", after)):
        piped = statistics.median(runs)
        rows.append({"what": f"training pipeline: decode, random crop; {label}", "images_per_second":
                     round(piped), "share_of_decode_limit": round(piped / limit, 3)})
    for base in () if args.pipeline_only else ("MobileNetV3Small", "EfficientNetB0"):
        keras.utils.set_random_seed(0)
        plain, _ = build_classifier(base, "none", args.size, n, 0.2, bn_inference=False)
        model, _ = build_classifier(base, "none", args.size, n, 0.2, bn_inference=False,  # the default: jitter
                                    colour_jitter=Augmentation().color_jitter, flip=True)  # and flip in the model
        for m in (plain, model):
            m.compile("adam", keras.losses.CategoricalCrossentropy(from_logits=True))
        x = np.random.default_rng(0).uniform(0, 255, (args.batch * 4, args.size, args.size, 3)).astype("float32")
        y = keras.utils.to_categorical(np.arange(len(x)) % n, n)
        memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).repeat()
        real = make_dataset(train, n, args.size, args.batch, True, Augmentation(), cache=True).repeat()
        model.fit(memory, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
        plain.fit(memory, steps_per_epoch=3, epochs=1, verbose=0)
        model.fit(real, steps_per_epoch=len(train) // args.batch + 1, epochs=1, verbose=0)  # fills the cache

        def rate(ds, model=model) -> float:  # noqa: ANN001
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
            return args.steps * args.batch / (time.perf_counter() - start)

        triples = [(rate(memory, plain), rate(memory), rate(real)) for _ in range(3)]  # alternating, medians
        without = statistics.median(t[0] for t in triples)
        from_memory = statistics.median(t[1] for t in triples)
        through_pipeline = statistics.median(t[2] for t in triples)
        rows.append({"what": f"train {base} from memory, no jitter layer", "images_per_second": round(without)})
        rows.append({"what": f"train {base} from memory, jitter layer", "images_per_second": round(from_memory),
                     "share_of_memory_speed": round(from_memory / without, 3)})
        rows.append({"what": f"train {base} through the pipeline", "images_per_second": round(through_pipeline),
                     "share_of_memory_speed": round(through_pipeline / from_memory, 3)})
    result = {"benchmark": "train_speed", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "image_size": args.size, "batch_size": args.batch, "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| {args.size} px, batch {args.batch} | images/s | ratio |")
    print("|---|---|---|")
    for r in rows:
        ratio = r.get("share_of_decode_limit", r.get("share_of_memory_speed", ""))
        print(f"| {r['what']} | {r['images_per_second']} | {ratio} |")


if __name__ == "__main__":
    main()
