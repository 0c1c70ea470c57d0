"""Inference latency per image and model size: Keras, native LiteRT (TFLite float and dynamic-range; the page's
batch-1 model at 1 and all threads), LiteRT.js in headless Chromium (WebAssembly, 1 and all threads, cross-origin
isolated) and TF.js there (CPU and WebGL-on-SwiftShader), for the demo model and MobileNetV3Small and
EfficientNetB0 at 224 px; and the page's first-load bytes and cold / warm time to its first answer.

One image at a time, as the person on the trail uses it: median of --repeats calls after a warm-up.
Usage: .venv/bin/python bench/inference.py [--run runs/demo/train] [--repeats 30]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

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
    const t = performance.now(); const y = model.predict(x); await y.data();
    times.push(performance.now() - t); y.dispose();
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


def _litert_ms(path: Path, x, repeats: int, threads: int | None = None) -> float:  # noqa: ANN001
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()

    def call() -> None:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()

    return _median_ms(call, repeats)


def _model_224(base: str, folder: Path, classes: int) -> tuple:  # noqa: ANN001
    """``base`` at 224 px (random weights: latency does not depend on them), exported like a bundle."""
    import keras
    import tensorflow as tf

    from fungilib.artifacts.bundle import WEB_TFLITE
    from fungilib.export_checks import web_tflite
    from fungilib.models import build_classifier
    from fungilib.tfjs_convert import convert_saved_model

    model, _ = build_classifier(base, "none", 224, classes, 0.2, bn_inference=False)
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
    if not (folder / WEB_TFLITE).exists():
        (folder / WEB_TFLITE).write_bytes(web_tflite(folder / "saved_model", 224))
    return with_softmax, folder


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _browser(site: Path, models: dict[str, tuple[str, str, int]], repeats: int) -> dict[tuple[str, str], float]:
    from playwright.sync_api import sync_playwright

    from fungilib.serve import serving

    results = {}
    threads = os.cpu_count() or 2
    with serving(site) as url, sync_playwright() as pw:
        for backend, flags in BACKEND_FLAGS.items():
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=COMMON_FLAGS + flags)
            page = browser.new_page()
            page.goto(url)
            for name, (model_url, _, size) in models.items():
                out = page.evaluate(BROWSER_TIMING, [model_url, size, repeats, backend])
                results[(name, f"TF.js float32, Chromium {backend}")] = out["median"]
                if out["backend"] != backend:
                    results[(name, f"TF.js float32, Chromium {backend}")] = float("nan")
            browser.close()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=COMMON_FLAGS + BACKEND_FLAGS["cpu"])
        page = browser.new_page()
        page.goto(url + "litert.html")
        page.wait_for_function("window.timingReady === true")
        assert page.evaluate("self.crossOriginIsolated"), "fungilib serve must isolate the page (COOP/COEP)"
        for name, (_, tflite_url, size) in models.items():
            for count in (1, threads):
                ms = page.evaluate("([u, s, r, n]) => window.timeLiteRt(u, s, r, n, true)", [tflite_url, size, repeats,
                                                                                         count])
                results[(name, f"LiteRT.js WASM, Chromium, {count} thread{'s' if count > 1 else ''}")] = ms
        browser.close()
    return results


def _counting_handler(sent: collections.Counter) -> type:
    """``fungilib serve``'s handler (same headers), counting into ``sent`` the body bytes it sends per path: what a
    visit downloads, the service worker's own precache included (a browser-side count misses what the worker
    fetches)."""
    from fungilib.serve import BundleHandler

    class Counting(BundleHandler):
        def copyfile(self, source: Any, outputfile: Any) -> None:
            while chunk := source.read(1 << 16):
                outputfile.write(chunk)
                sent[self.path.split("?")[0]] += len(chunk)

    return Counting


def _page_load(bundle: Path) -> dict[str, float]:
    """The identifier itself, served as by fungilib serve: bytes a first visit downloads, and the time from opening
    the page to its first answer, cold (a new browser profile) and warm (a reload, from the service worker)."""
    from playwright.sync_api import sync_playwright

    photo = WORK / "photo.jpg"
    from PIL import Image

    Image.new("RGB", (640, 480), (120, 90, 60)).save(photo)
    out: dict[str, float] = {}
    # a new on-disk profile, as a phone's browser has: an incognito-like context keeps its HTTP cache in memory and
    # stores no 9 MB WebAssembly file there, so the service worker would download the runtime a second time
    from fungilib.serve import serving

    sent: collections.Counter = collections.Counter()
    with serving(bundle, handler_class=_counting_handler(sent)) as url, sync_playwright() as pw, \
            tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM,
                                                        args=COMMON_FLAGS + BACKEND_FLAGS["cpu"])
        page = browser.new_page()
        for label in ("cold", "warm"):
            start = time.perf_counter()
            page.goto(url) if label == "cold" else page.reload()
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)
            page.set_input_files("#photo", str(photo))
            page.wait_for_selector("body[data-result=done]", state="attached", timeout=60_000)
            out[f"{label}_seconds_to_first_answer"] = round(time.perf_counter() - start, 2)
            if label == "cold":
                page.wait_for_timeout(2000)  # the service worker's precache and the runtime it keeps
                out["first_load_mb"] = round(sum(sent.values()) / 1e6, 2)
        out["runtime"] = page.get_attribute("body", "data-runtime")
        browser.close()
    return out


def parse_args(description: str) -> argparse.Namespace:
    """The options every inference benchmark takes: the run whose model is the demo row, and the repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, default=Path("runs/demo/train"))
    parser.add_argument("--repeats", type=int, default=30)
    return parser.parse_args()


def exported_demo(run: Path, bundle: Path | None = None, litert_web: str = "float32") -> Path:
    """``run`` exported once into ``bundle`` (bench/work/inference/demo-bundle; again when the run's model is
    newer), the page's model in ``litert_web`` precision."""
    from fungilib.artifacts.bundle import WEB_TFLITE
    from fungilib.export import ExportParams, export_run

    WORK.mkdir(parents=True, exist_ok=True)
    bundle = bundle or WORK / "demo-bundle"
    model = Path(run) / "model.keras"
    if not (bundle / WEB_TFLITE).exists() or (bundle / WEB_TFLITE).stat().st_mtime < model.stat().st_mtime:
        export_run(ExportParams(run=run, out=bundle, parity_images=4, litert_web=litert_web))
    return bundle


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    import numpy as np

    from fungilib.artifacts.bundle import WEB_TFLITE
    from fungilib.artifacts.trained_run import load_trained
    from fungilib.webapp import WEB_DIR, copy_litert, node_modules

    demo_bundle = exported_demo(args.run)
    model, labels, prep = load_trained(args.run)
    size = int(prep["input_size"])
    rng = np.random.default_rng(0)
    cases = {f"demo model ({size} px)": (model, demo_bundle, size)}
    for base in ("MobileNetV3Small", "EfficientNetB0"):
        big_model, big = _model_224(base, WORK / f"{base.lower()}-224", len(labels))
        cases[f"{base} 224 px"] = (big_model, big, 224)
    rows = []
    site = WORK / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    (site / "index.html").write_text('<!doctype html><script src="tf-globals.js"></script><script src="tf.min.js">'
                                     "</script><p>fungilib inference benchmark</p>")
    (site / "config.json").write_text("{}")
    shutil.copy(WEB_DIR / "tf-globals.js", site)
    shutil.copy(node_modules() / "@tensorflow" / "tfjs" / "dist" / "tf.min.js", site)
    copy_litert(site / "litert")
    shutil.copy(HERE / "litert_timing.js", site)
    (site / "litert.html").write_text('<!doctype html><script type="module" src="litert_timing.js"></script>'
                                      "<p>fungilib LiteRT.js benchmark</p>")
    threads = os.cpu_count() or 2
    browser_models = {}
    for name, (keras_model, folder, px) in cases.items():
        x = rng.uniform(0, 255, (1, px, px, 3)).astype(np.float32)
        keras_ms = _median_ms(lambda m=keras_model, x=x: m.predict_on_batch(x), args.repeats)
        rows.append({"model": name, "format": "Keras (predict_on_batch)", "size_mb": None, "ms": keras_ms})
        for tfl in ("model_f32.tflite", "model_dynamic.tflite"):
            rows.append({"model": name, "format": f"LiteRT {tfl}", "size_mb": _size_mb(folder / tfl),
                         "ms": _litert_ms(folder / tfl, x, args.repeats)})
        for count in (1, threads):
            rows.append({"model": name, "format": f"LiteRT native, batch-1 web model, {count} thread"
                         + ("s" if count > 1 else ""), "size_mb": _size_mb(folder / WEB_TFLITE),
                         "ms": _litert_ms(folder / WEB_TFLITE, x, args.repeats, count)})
        slug = name.split()[0].lower()
        shutil.copytree(folder / "tfjs", site / slug)
        shutil.copy(folder / WEB_TFLITE, site / f"{slug}.tflite")
        browser_models[name] = (f"{slug}/float32/model.json", f"{slug}.tflite", px)
        for q in ("float32", "float16", "uint8"):
            rows.append({"model": name, "format": f"TF.js {q} (size only)", "size_mb": _size_mb(folder / "tfjs" / q),
                         "ms": None})
    for (name, what), ms in _browser(site, browser_models, args.repeats).items():
        rows.append({"model": name, "format": what, "size_mb": None, "ms": ms})
    page = _page_load(demo_bundle)
    print("\nThe identifier page (demo bundle, fungilib serve):", json.dumps(page))
    rows.sort(key=lambda r: (r["model"], r["format"]))
    print(f"\nInference, one image per call, median of {args.repeats} (ms)")
    print(f"{'model':26} {'format':48} {'size MB':>8} {'ms/image':>9}")
    for r in rows:
        size_text = f"{r['size_mb']:.2f}" if r["size_mb"] is not None else ""
        ms_text = f"{r['ms']:.2f}" if r["ms"] is not None else ""
        print(f"{r['model']:26} {r['format']:48} {size_text:>8} {ms_text:>9}")
    result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "repeats": args.repeats, "rows": rows, "page": page}
    (HERE / "results" / "inference.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
