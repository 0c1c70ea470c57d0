"""Inference latency per image and model size: Keras, LiteRT (TFLite float and dynamic-range) and TF.js in
headless Chromium (CPU and WebGL-on-SwiftShader backends), for the demo model and MobileNetV3Small at 224 px.

One image at a time, as the person on the trail uses it: median of --repeats calls after a warm-up.
Usage: .venv/bin/python bench/inference.py [--run runs/demo/train] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "inference"
CHROMIUM = "/usr/bin/chromium"
COMMON_FLAGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
BACKEND_FLAGS = {"cpu": ["--disable-gpu"], "webgl": ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]}
BROWSER_TIMING = """async ([url, size, repeats, backend]) => {
  await tf.setBackend(backend); await tf.ready();
  const model = await tf.loadGraphModel(url);
  const x = tf.randomUniform([1, size, size, 3], 0, 255);
  for (let i = 0; i < 3; i++) { const y = model.predict(x); await y.data(); y.dispose(); }
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now(); const y = model.predict(x); await y.data(); times.push(performance.now() - t); y.dispose();
  }
  times.sort((a, b) => a - b);
  return {backend: tf.getBackend(), median: times[Math.floor(times.length / 2)]};
}"""


def _median_ms(call, repeats: int) -> float:  # noqa: ANN001
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _litert_ms(path: Path, x, repeats: int) -> float:  # noqa: ANN001
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()

    def call() -> None:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()

    return _median_ms(call, repeats)


def _mobilenet_224(folder: Path, classes: int) -> tuple:  # noqa: ANN001
    """MobileNetV3Small at 224 px (random weights: latency does not depend on them), exported like a bundle."""
    import keras
    import tensorflow as tf

    from fungilib.models import build_classifier
    from fungilib.tfjs_convert import convert_saved_model

    model, _ = build_classifier("MobileNetV3Small", "none", 224, classes, 0.2, bn_inference=False)
    inputs = keras.Input((224, 224, 3))
    with_softmax = keras.Model(inputs, keras.layers.Softmax()(model(inputs)))
    if not (folder / "tfjs" / "float32" / "model.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        with_softmax.export(str(folder / "saved_model"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / "saved_model"))
        (folder / "model_f32.tflite").write_bytes(converter.convert())
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        (folder / "model_dynamic.tflite").write_bytes(converter.convert())
        convert_saved_model(folder / "saved_model", {"none": folder / "tfjs" / "float32",
                                                     "float16": folder / "tfjs" / "float16",
                                                     "uint8": folder / "tfjs" / "uint8"})
    return with_softmax, folder


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _browser(site: Path, models: dict[str, tuple[str, int]], repeats: int) -> dict[tuple[str, str], float]:
    from playwright.sync_api import sync_playwright

    from fungilib.serve import serving

    results = {}
    with serving(site) as url, sync_playwright() as pw:
        for backend, flags in BACKEND_FLAGS.items():
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=COMMON_FLAGS + flags)
            page = browser.new_page()
            page.goto(url)
            for name, (model_url, size) in models.items():
                out = page.evaluate(BROWSER_TIMING, [model_url, size, repeats, backend])
                results[(name, backend)] = out["median"]
                if out["backend"] != backend:
                    results[(name, backend)] = float("nan")
            browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo/train"))
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    import numpy as np

    from fungilib.export import ExportParams, export_run
    from fungilib.train import load_trained
    from fungilib.webapp import WEB_DIR, node_modules

    WORK.mkdir(parents=True, exist_ok=True)
    demo_bundle = WORK / "demo-bundle"
    if not (demo_bundle / "config.json").exists():
        export_run(ExportParams(run=args.run, out=demo_bundle, parity_images=4))
    model, labels, prep = load_trained(args.run)
    size = int(prep["input_size"])
    big_model, big = _mobilenet_224(WORK / "mobilenetv3small-224", len(labels))
    rng = np.random.default_rng(0)
    cases = {f"demo model ({size} px)": (model, demo_bundle, size),
             "MobileNetV3Small 224 px": (big_model, big, 224)}
    rows = []
    site = WORK / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    (site / "index.html").write_text('<!doctype html><script src="tf-globals.js"></script><script src="tf.min.js">'
                                     "</script><p>fungilib inference benchmark</p>")
    (site / "config.json").write_text("{}")
    shutil.copy(WEB_DIR / "tf-globals.js", site)
    shutil.copy(node_modules() / "@tensorflow" / "tfjs" / "dist" / "tf.min.js", site)
    browser_models = {}
    for name, (keras_model, folder, px) in cases.items():
        x = rng.uniform(0, 255, (1, px, px, 3)).astype(np.float32)
        keras_ms = _median_ms(lambda m=keras_model, x=x: m.predict_on_batch(x), args.repeats)
        rows.append({"model": name, "format": "Keras (predict_on_batch)", "size_mb": None, "ms": keras_ms})
        for tfl in ("model_f32.tflite", "model_dynamic.tflite"):
            rows.append({"model": name, "format": f"LiteRT {tfl}", "size_mb": _size_mb(folder / tfl),
                         "ms": _litert_ms(folder / tfl, x, args.repeats)})
        slug = "demo" if name.startswith("demo") else "mnv3s224"
        shutil.copytree(folder / "tfjs", site / slug)
        browser_models[name] = (f"{slug}/float32/model.json", px)
        for q in ("float32", "float16", "uint8"):
            rows.append({"model": name, "format": f"TF.js {q} (size only)", "size_mb": _size_mb(folder / "tfjs" / q),
                         "ms": None})
    for (name, backend), ms in _browser(site, browser_models, args.repeats).items():
        rows.append({"model": name, "format": f"TF.js float32, Chromium {backend}", "size_mb": None, "ms": ms})
    rows.sort(key=lambda r: (r["model"], r["format"]))
    print(f"\nInference, one image per call, median of {args.repeats} (ms)")
    print(f"{'model':26} {'format':38} {'size MB':>8} {'ms/image':>9}")
    for r in rows:
        size_text = f"{r['size_mb']:.2f}" if r["size_mb"] is not None else ""
        ms_text = f"{r['ms']:.2f}" if r["ms"] is not None else ""
        print(f"{r['model']:26} {r['format']:38} {size_text:>8} {ms_text:>9}")
    result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "repeats": args.repeats, "rows": rows}
    (HERE / "results" / "inference.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
