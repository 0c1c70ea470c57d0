"""Seed-scale embeddings and head runs: the rehearsal's generated archive (2,451 species, GBIF-like long tail; drawn
photos, not mushrooms) downloaded from the loopback sample server and cleaned as `scale_rehearsal.py` does, then one
`embed` stage over every photo (EfficientNet-Lite0 from its packaged ImageNet weights) and head runs on the stored
embeddings with each class balance — none, class_weights, sampling, smote (capped: `dataset.smote_per_class`) —
each run's wall time, peak RSS, validation and test top-1, macro-F1 and the tail classes' recall (the quarter of
classes with the fewest training photos). Every step through the real `fungilib` commands.

Usage: .venv/bin/python bench/embed_scale.py [--photos 131000] [--image-size 64] [--epochs 8] [--smote-per-class 20]
       [--work bench/work/embed_scale] [--reuse]
``--reuse`` keeps a finished download and clean of the same size. Writes bench/results/embed_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from scale_rehearsal import folder_bytes, stage

HERE = Path(__file__).resolve().parent
BALANCES = ("none", "class_weights", "sampling", "smote")


def prepare(work: Path, photos: int, species: int, port: int, max_side: int) -> list[dict]:
    """sample → ingest → download → clean, as the rehearsal does (its rows)."""
    fl = [sys.executable, "-m", "fungilib.cli"]
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([*fl, "sample", "--scale", "--out", str(work / "sample"), "--species", str(species), "--photos",
                    str(photos), "--image-size", str(max(128, max_side)), "--port", str(port)], check=True,
                   stdout=subprocess.DEVNULL)
    scale = json.loads((work / "sample" / "scale.json").read_text())
    server = subprocess.Popen([*fl, "sample", "serve", "--out", str(work / "sample"), "--port", str(port),
                               "--no-faults"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        time.sleep(2)
        rows = [stage("ingest", ["ingest", str(work / "sample" / "fungi-sample.zip"), "--out", str(work / "ingest")],
                      work / "ingest", work, scale["occurrences"], "occurrences"),
                stage("download", ["download", str(work / "ingest"), "--out", str(work / "download"), "--max-side",
                                   str(max_side), "--set", f"allow_hosts=[127.0.0.1:{port}]", "--set", "timeout=30"],
                      work / "download", work, scale["photos"], "photos"),
                stage("clean", ["clean", "--observations", str(work / "ingest"), "--downloads", str(work / "download"),
                                "--out", str(work / "clean"), "--min-per-class", "3"], work / "clean", work,
                      scale["photos"], "images")]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    return rows


def tail_recall(run: Path) -> tuple[float, int, int]:
    """(mean test recall, classes, most training photos) of the quarter of classes with the fewest training photos
    that have test photos."""
    per_class = pd.read_csv(run / "per_class.csv")
    tested = per_class[per_class["support"] > 0]
    cut = float(np.quantile(tested["train_images"], 0.25))
    tail = tested[tested["train_images"] <= cut]
    return float(tail["recall"].mean()), len(tail), int(cut)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=2451)
    parser.add_argument("--photos", type=int, default=131_000)
    parser.add_argument("--max-side", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--smote-per-class", type=int, default=20)
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "embed_scale")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    rows: list[dict] = []
    if not (args.reuse and (work / "clean" / "manifest.h5").exists()):
        rows += prepare(work, args.photos, args.species, args.port, args.max_side)
    report = json.loads((work / "clean" / "clean_report.json").read_text())
    embedded = work / "embed"
    rows.append(stage("embed", ["embed", "--manifest", str(work / "clean"), "--out", str(embedded), "--set",
                                f"image_size={args.image_size}"], embedded, work, int(report["images"]), "photos"))
    info = {"embeddings_mb": round(folder_bytes(embedded) / 2**20, 1)}
    heads = []
    for balance in BALANCES:
        out = work / f"head-{balance}"
        row = stage(f"head {balance}", ["train", "--manifest", str(work / "clean"), "--out", str(out),
                                        "--set", f"dataset.embeddings={embedded}", "--set", "model.freeze=head_only",
                                        "--set", f"dataset.image_size={args.image_size}",
                                        "--set", "model.weights=imagenet", "--set", f"fit.epochs={args.epochs}",
                                        "--set", "dataset.batch_size=256", "--set", f"dataset.balance={balance}",
                                        "--set", f"dataset.smote_per_class={args.smote_per_class}"], out, work)
        metrics = json.loads((out / "metrics.json").read_text())
        summary = json.loads((out / "train_summary.json").read_text())
        recall, tail_classes, tail_cut = tail_recall(out)
        heads.append({**row, "balance": balance, "classes": summary["classes"],
                      "train_embeddings": summary["train_images"], "fit_seconds": summary["seconds"],
                      "val_top1": metrics.get("val_top1"), "val_macro_f1": metrics.get("val_macro_f1"),
                      "top1": metrics["top1"], "macro_f1": metrics["macro_f1"], "tail_recall": round(recall, 4),
                      "tail_classes": tail_classes, "tail_max_train_photos": tail_cut})
    result = {"benchmark": "embed_scale", "date": str(date.today()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU TensorFlow",
              "data": "the rehearsal's generated archive (drawn photos, not mushrooms)", "species": args.species,
              "photos": args.photos, "image_size": args.image_size, "base": "EfficientNetLite0 (imagenet)",
              "epochs": args.epochs, "smote_per_class": args.smote_per_class, "images": int(report["images"]),
              **info, "stages": rows, "heads": heads}
    (HERE / "results" / "embed_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| stage | wall s | throughput | peak RSS MB | disk written MB |\n|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['per_second']:,} {r['unit']}/s" if "per_second" in r else ""
        print(f"| {r['stage']} | {r['seconds']} | {rate} | {r['peak_rss_mb']:,} | {r['disk_written_mb']:,} |")
    print("\n| balance | run s (fit s) | peak RSS MB | val top-1 | test top-1 | macro-F1 | tail recall |\n"
          "|---|---|---|---|---|---|---|")
    for h in heads:
        print(f"| {h['balance']} | {h['seconds']} ({h['fit_seconds']}) | {h['peak_rss_mb']:,} | {h['val_top1']:.3f} | "
              f"{h['top1']:.3f} | {h['macro_f1']:.3f} | {h['tail_recall']:.3f} ({h['tail_classes']} classes ≤ "
              f"{h['tail_max_train_photos']} photos) |")


if __name__ == "__main__":
    main()
