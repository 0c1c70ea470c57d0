"""The page's batch-1 model in four variants — float32, float16 weights, dynamic-range int8, full int8 (weights and
activations, calibrated) — for the demo model, an EfficientNetB0 trained on the sample (when
bench/work/int8/effb0-train exists) and MobileNetV3Small / EfficientNetB0 at 224 px: size, agreement with float32
(max |Δp|, top-1 on the test photos, or on random inputs for the untrained 224 px models: speed rows), native LiteRT
and LiteRT.js (WebAssembly in headless Chromium, 1 and all threads) latency.

Usage: .venv/bin/python bench/web_variants.py [--run runs/demo/train] [--repeats 30]
(reuses bench/inference.py's models and page harness under bench/work/inference; the EfficientNetB0 run:
 fungilib train --params runs/demo/train/params.yaml --out bench/work/int8/effb0-train
   --set model.base=EfficientNetB0 --set fit.epochs=8)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VARIANTS = ("float32", "float16", "dynamic", "int8")
EFFNET_RUN = HERE / "work" / "int8" / "effb0-train"


def main() -> None:
    from inference import (
        CHROMIUM,
        COMMON_FLAGS,
        WORK,
        _litert_ms,
        _model_224,
        _page_load,
        exported_demo,
        parse_args,
    )

    args = parse_args(__doc__.splitlines()[0])
    import numpy as np

    from fungilib.artifacts.trained_run import load_trained
    from fungilib.export_checks import labelled_test_images, parity_images, web_tflite
    from fungilib.litert import litert_runner
    from fungilib.serve import serving
    from fungilib.webapp import copy_litert

    demo_bundle = exported_demo(args.run)
    _, labels, prep = load_trained(args.run)
    size = int(prep["input_size"])

    def photos(run: Path, bundle: Path) -> tuple[Path, int, np.ndarray, np.ndarray, np.ndarray]:
        """The run's test photos with their labels, and 200 training photos for the int8 calibration."""
        images, truth = labelled_test_images(run, size, 400, load_trained(run)[1])
        return (bundle, size, images, parity_images(run, size, 200, split="train"), truth)

    cases = {f"demo model, MobileNetV3Small ({size} px)": photos(args.run, demo_bundle)}
    if (EFFNET_RUN / "model.keras").exists():
        cases[f"EfficientNetB0 trained on the sample ({size} px)"] = photos(
            EFFNET_RUN, exported_demo(EFFNET_RUN, WORK / "effb0-bundle-float32"))
    rng = np.random.default_rng(0)
    for base in ("MobileNetV3Small", "EfficientNetB0"):
        _, folder = _model_224(base, WORK / f"{base.lower()}-224", len(labels))
        cases[f"{base} 224 px (untrained: speed)"] = (folder, 224, rng.uniform(0, 255, (16, 224, 224, 3)).astype(
            np.float32), rng.uniform(0, 255, (16, 224, 224, 3)).astype(np.float32), None)
    site = WORK / "variants-site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    copy_litert(site / "litert")
    shutil.copy(HERE / "litert_timing.js", site)
    (site / "index.html").write_text('<!doctype html><script type="module" src="litert_timing.js"></script>'
                                     "<p>fungilib LiteRT.js variants</p>")
    (site / "config.json").write_text("{}")
    rows, threads = [], os.cpu_count() or 2
    for number, (name, (folder, px, images, calibration, truth)) in enumerate(cases.items()):
        reference = None
        for variant in VARIANTS:
            path = site / f"case{number}-{px}-{variant}.tflite"
            path.write_bytes(web_tflite(folder / "saved_model", px, variant, calibration))
            run = litert_runner(path.read_bytes(), px, batch_size=1)
            probs = np.concatenate([run(images[i:i + 1]) for i in range(len(images))])
            reference = probs if reference is None else reference
            x = images[:1]
            rows.append({"model": name, "variant": variant, "size_mb": round(path.stat().st_size / 1e6, 2),
                         "max_abs_diff_vs_f32": float(np.abs(probs - reference).max()),
                         "top1_agreement_vs_f32": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                         "native_1_thread_ms": _litert_ms(path, x, args.repeats, 1),
                         f"native_{threads}_threads_ms": _litert_ms(path, x, args.repeats, threads),
                         "url": path.name, "px": px,
                         "test_top1": None if truth is None else float(np.mean(probs.argmax(1) == truth))})
    from playwright.sync_api import sync_playwright

    with serving(site) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=COMMON_FLAGS + ["--disable-gpu"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("window.timingReady === true")
        assert page.evaluate("self.crossOriginIsolated"), "fungilib serve must isolate the page (COOP/COEP)"
        for row in rows:
            for count in (1, threads):
                try:
                    ms = page.evaluate("([u, s, r, n]) => window.timeLiteRt(u, s, r, n, true)",
                                       [row["url"], row["px"], args.repeats, count])
                except Exception as exc:  # noqa: BLE001 — a variant LiteRT.js cannot run is a result, not a crash
                    ms, row["litert_js_error"] = None, str(exc).splitlines()[0][:200]
                row[f"litert_js_{count}_thread{'s' if count > 1 else ''}_ms"] = ms
        browser.close()
    # the page itself with the accurate model: bytes of a first visit, time to the first answer cold and warm
    page_loads = {variant: _page_load(exported_demo(EFFNET_RUN, WORK / f"effb0-bundle-{variant}", variant))
                  for variant in ("float32", "int8")} if (EFFNET_RUN / "model.keras").exists() else {}
    result = {"benchmark": "web_variants", "date": str(date.today()),
              "machine": f"{platform.machine()}, {threads} cores",
              "repeats": args.repeats, "rows": rows, "efficientnet_page_load": page_loads}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "web_variants.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = ["size_mb", "max_abs_diff_vs_f32", "top1_agreement_vs_f32", "test_top1", "native_1_thread_ms",
            f"native_{threads}_threads_ms", "litert_js_1_thread_ms", f"litert_js_{threads}_threads_ms"]
    print("| model | variant | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2))
    for r in rows:
        cells = [f"{r.get(k):.3g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys]
        print(f"| {r['model']} | {r['variant']} | " + " | ".join(cells) + " |")
    if page_loads:
        print("\n| EfficientNetB0 bundle, page model | first visit MB | cold s to first answer | warm s | runtime |\n"
              "|---|---|---|---|---|")
        for variant, load in page_loads.items():
            print(f"| {variant} | {load['first_load_mb']} | {load['cold_seconds_to_first_answer']} | "
                  f"{load['warm_seconds_to_first_answer']} | {load['runtime']} |")


if __name__ == "__main__":
    main()
