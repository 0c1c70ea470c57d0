"""The exported page on real photos, in headless Chromium on a phone-sized screen: the bundle of a model trained
on real photos answers real test photos it never saw; per photo the page's answer, its top species and the time
the page itself reports (decode, preprocess, LiteRT.js); a screenshot of the first answer.

Usage: .venv/bin/python bench/page_on_real_photos.py BUNDLE PHOTO... [--screenshot docs/screenshots/x.png]
Writes bench/results/page_on_real_photos.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--results", default="page_on_real_photos.json", help="file name under bench/results/")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "serve", str(args.bundle), "--port",
                               str(args.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = []
    try:
        assert "http://" in server.stdout.readline()  # type: ignore[union-attr]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            phone = browser.new_context(viewport={"width": 360, "height": 800}, device_scale_factor=2, is_mobile=True,
                                        has_touch=True)
            page = phone.new_page()
            page.goto(f"http://127.0.0.1:{args.port}/")
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)
            runtime = page.get_attribute("body", "data-runtime")
            for i, photo in enumerate(args.photos):
                page.set_input_files("#photo", str(photo))
                page.wait_for_selector("body[data-result=done], body[data-result=error]", state="attached",
                                       timeout=120_000)
                timing = page.inner_text("#timing")
                ms = float(re.search(r"Answered in (\d+) ms", timing).group(1))  # type: ignore[union-attr]
                top = page.eval_on_selector_all("#top li", "els => els.map(e => [e.dataset.index, "
                                                           "e.dataset.probability, e.innerText.split('\\n')[0]])")
                rows.append({"photo": photo.name, "folder": photo.parent.name, "ms": ms,
                             "verdict": page.inner_text("#verdict").splitlines()[0],
                             "rank": page.get_attribute("#verdict", "data-rank"),
                             "top": [{"index": int(a), "probability": round(float(b), 4), "text": c}
                                     for a, b, c in top]})
                if i == 0 and args.screenshot:
                    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.screenshot), full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    config = json.loads((args.bundle / "config.json").read_text())
    spec = json.loads((args.bundle / "preprocessing.json").read_text())
    result = {"benchmark": "page_on_real_photos", "date": str(date.today()), "bundle": str(args.bundle),
              "runtime": runtime, "litert_variant": config.get("litert_variant"), "input_size": spec["input_size"],
              "median_ms_after_first": statistics.median(r["ms"] for r in rows[1:]) if len(rows) > 1 else None,
              "open_set": config.get("open_set"),
              "answers_by_folder": {folder: dict(collections.Counter(r["rank"] for r in rows if r["folder"] == folder))
                                    for folder in sorted({r["folder"] for r in rows})},
              "photos": rows}
    out = HERE / "results" / args.results
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['folder']}/{row['photo']}: {row['verdict']} ({row['ms']:.0f} ms)")
    print(f"{runtime}, {config.get('litert_variant')}, {spec['input_size']} px: median "
          f"{result['median_ms_after_first']} ms per answer after the first")


if __name__ == "__main__":
    main()
