""""Not a species this model knows", measured three ways:

1. the demo run (its two held-out sample species): known-vs-unknown AUROC of each score, and how often a species it
   never saw is named before and after the gate (from ``runs/demo/train/metrics.json``, after `make demo`);
2. real photos it never saw: the demo bundle on every photo of ../shared/data/images/flowers_128px (4,317 real
   flower photos; out of its domain entirely), answers with and without the gate;
3. real photos, real open set: the flowers imported with one class held out of training, a MobileNetV3Small trained
   from scratch (no pretrained weights offline), evaluated: AUROC and the named rate on the held-out real class.

Usage: .venv/bin/python bench/open_set.py [--epochs 12] [--image-size 96]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOWERS = HERE.parent.parent / "shared" / "data" / "images" / "flowers_128px"
KEYS = ("top1", "open_set_score", "open_set_threshold", "open_set_auroc", "open_set_auroc_msp",
        "open_set_auroc_neg_entropy", "open_set_auroc_max_logit", "open_set_auroc_neg_energy", "unknown_test_images",
        "unknown_named_before", "unknown_over_0.9_before", "unknown_named", "known_turned_away")


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"fungilib {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


def _answers(bundle: Path, photos: Path, gate: bool) -> dict[str, float]:
    rows = [json.loads(line) for line in _cli("predict", "--json", "--model", str(bundle), str(photos),
                                              *([] if gate else ["--no-open-set"])).splitlines()]
    rows = [r for r in rows if r["ok"]]
    ranks = collections.Counter(r["answer"]["rank"] for r in rows)
    return {"photos": len(rows), "named_species": ranks["species"] / len(rows),
            "not_a_species_it_knows": ranks["unknown"] / len(rows),
            "top_probability_over_0.9": sum(r["top"][0]["probability"] >= 0.9 for r in rows) / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo/train"))
    parser.add_argument("--bundle", type=Path, default=Path("runs/demo/export/bundle"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    result: dict = {"benchmark": "open_set", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores"}
    demo = json.loads((args.run / "metrics.json").read_text())
    result["demo_held_out_species"] = {k: demo.get(k) for k in KEYS}
    result["demo_held_out_species"]["held_out"] = json.loads((args.run / "open_set.json").read_text())["held_out"]
    if FLOWERS.is_dir():
        result["demo_bundle_on_real_flowers"] = {"without_gate": _answers(args.bundle, FLOWERS, False),
                                                 "with_gate": _answers(args.bundle, FLOWERS, True)}
        work = HERE / "work" / "open-set-flowers"
        shutil.rmtree(work, ignore_errors=True)
        _cli("import-folder", str(FLOWERS), "--out", str(work / "manifest"), "--set", "holdout_classes=1")
        _cli("train", "--manifest", str(work / "manifest"), "--out", str(work / "run"), "--set",
             f"dataset.image_size={args.image_size}", "--set", f"fit.epochs={args.epochs}",
             "--set", f"fit.patience={args.epochs}")
        metrics = json.loads((work / "run" / "metrics.json").read_text())
        result["flowers_one_class_held_out"] = {k: metrics.get(k) for k in KEYS}
        result["flowers_one_class_held_out"]["held_out"] = json.loads(
            (work / "run" / "open_set.json").read_text())["held_out"]
    else:
        print(f"{FLOWERS} is absent: the real-photo parts are skipped")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "open_set.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
