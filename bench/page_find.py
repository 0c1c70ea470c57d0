"""One find, three photos, on the exported page in headless Chromium on a phone-sized screen: the first photo
answered alone, then two more added with "Add another photo of this find"; the combined answer, each photo's own
answer and the journal's entry for the find, with screenshots of the answer and of the journal entry.

The find is one test observation of the run the bundle was exported from (its manifest's gbifID), chosen where
the photos alone do not all agree with the truth when there is one (one photo of three named wrong by the run's
own predictions.csv), else the first observation with three photos.

Usage: .venv/bin/python bench/page_find.py BUNDLE RUN [--screenshots docs/screenshots]
Writes bench/results/page_find.json and, with --screenshots, find-three-photos.png and find-journal-entry.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def pick_find(run: Path) -> tuple[str, list[Path], list[str]]:
    """(gbifID, its three test photos, their true species) of a test observation of ``run``."""
    from fungilib.artifacts.dataset import load_manifest
    from fungilib.artifacts.trained_run import TrainedRun

    params = TrainedRun(run).summary().params
    manifest, labels = load_manifest(params["dataset"]["manifest"])
    test = manifest[manifest["split"] == "test"].copy()
    predictions = pd.read_csv(run / "predictions.csv").set_index("media_id")
    test["wrong"] = [predictions.loc[m, "predicted"] != predictions.loc[m, "label"] for m in test["media_id"]]
    sizes = test.groupby("gbifID")["media_id"].transform("size")
    three = test[sizes == 3]
    if three.empty:
        sys.exit(f"{run}: no test observation has three photos")
    wrong = three.groupby("gbifID")["wrong"].sum()
    chosen = wrong[wrong == 1].index[0] if (wrong == 1).any() else wrong.index[0]
    rows = three[three["gbifID"] == chosen]
    species = dict(zip(labels["label"], labels["species"], strict=True))
    return str(chosen), [Path(p) for p in rows["path"]], [species[label] for label in rows["label"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("run", type=Path, help="the trained run the bundle was exported from")
    parser.add_argument("--port", type=int, default=8733)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    find_id, photos, truth = pick_find(args.run)
    server = subprocess.Popen([sys.executable, "-m", "fungilib.cli", "serve", str(args.bundle), "--port",
                               str(args.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps = []
    try:
        assert "http://" in server.stdout.readline()  # type: ignore[union-attr]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True)
            page = phone.new_page()
            page.goto(f"http://127.0.0.1:{args.port}/")
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=120_000)
            for i, photo in enumerate(photos):
                page.set_input_files("#photo" if i == 0 else "#add-photo", str(photo))
                page.wait_for_selector(f"body[data-result=done][data-find-photos='{i + 1}']", state="attached",
                                       timeout=120_000)
                page.wait_for_selector(f"#journal-list li[data-photos='{i + 1}']", state="attached",
                                       timeout=30_000)
                steps.append({"photos": i + 1, "verdict": page.inner_text("#verdict"),
                              "top": page.eval_on_selector_all("#top li", "els => els.slice(0, 3).map(e => "
                                                                          "e.innerText.split('\\n')[0])"),
                              "each_photo": page.eval_on_selector_all("#find-photo-list li",
                                                                      "els => els.map(e => e.innerText.trim())"),
                              "disagree": page.get_attribute("body", "data-find-disagree") == "true"})
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.click("#find-photos summary")  # each photo's own answer, opened
                page.locator("#answer").screenshot(path=str(args.screenshots / "find-three-photos.png"))
                page.locator("#journal-list li").first.screenshot(
                    path=str(args.screenshots / "find-journal-entry.png"))
            journal = page.eval_on_selector("#journal-list li", "e => e.innerText")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = {"benchmark": "page_find", "date": str(date.today()), "bundle": str(args.bundle),
              "run": str(args.run), "data": "the run's own test photos (see the run's manifest)",
              "find": find_id, "photos": [p.name for p in photos], "truth": truth, "steps": steps,
              "journal_entry": journal}
    (HERE / "results" / "page_find.json").write_text(json.dumps(result, indent=2) + "\n")
    for step in steps:
        print(f"{step['photos']} photo(s): {step['verdict']} · top {step['top']}")
    print(f"truth: {truth}")


if __name__ == "__main__":
    main()
