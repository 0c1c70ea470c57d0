"""Seed-scale rehearsal: every stage — ingest, EDA, download, clean, train, evaluate, export, predict — on a
generated GBIF-shaped archive of 2,451 species with a GBIF-like long tail and ~98 k photo URLs (drawn on request
by the loopback sample server), through the real `fungilib` commands. One table: wall time, throughput, peak RSS
(the stage's process and its children) and disk written, per stage; bench/results/scale_rehearsal.json.

Usage: .venv/bin/python bench/scale_rehearsal.py [--species 2451] [--photos 98000] [--max-side 96]
       [--image-size 64] [--epochs 1] [--work bench/work/rehearsal]
A bigger machine rehearses the seed itself: --photos 665000 --max-side 512 --image-size 224.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURE = ("import json, re, resource, sys\nfrom fungilib.cli import main\ncode = main(sys.argv[2:])\n"
           "status = open('/proc/self/status').read()\n"
           "usage = {'self_kb': int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)),\n"
           "         'children_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n"
           "open(sys.argv[1], 'w').write(json.dumps(usage))\nsys.exit(code)\n")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def stage(name: str, args: list[str], folder: Path, work: Path, items: int | None = None, unit: str = "",
          stdout: Path | None = None) -> dict:
    """Run ``fungilib ARGS`` in its own process; wall time, peak RSS, disk written under ``folder``."""
    usage_file = work / f".usage-{name}.json"
    before = folder_bytes(folder)
    start = time.perf_counter()
    with open(stdout or os.devnull, "w") as out:
        proc = subprocess.run([sys.executable, "-c", MEASURE, str(usage_file), *args], stdout=out,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: predict reports unreadable files, download failures are rows
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    usage = json.loads(usage_file.read_text())
    row = {"stage": name, "seconds": round(seconds, 1),
           "peak_rss_mb": round(max(usage["self_kb"], usage["children_kb"]) / 1024),
           "disk_written_mb": round((folder_bytes(folder) - before) / 2**20, 1)}
    if items:
        row.update(items=items, unit=unit, per_second=round(items / seconds, 1))
    print(f"  {name}: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=2451)
    parser.add_argument("--photos", type=int, default=98_000)
    parser.add_argument("--max-side", type=int, default=96, help="download's resize-on-save")
    parser.add_argument("--image-size", type=int, default=64, help="training input size")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--min-per-class", type=int, default=3)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "rehearsal")
    parser.add_argument("--label", default="", help="a name for this size in the results file")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fl = [sys.executable, "-m", "fungilib.cli"]
    subprocess.run([*fl, "sample", "--scale", "--out", str(work / "sample"), "--species", str(args.species),
                    "--photos", str(args.photos), "--image-size", str(max(128, args.max_side)),
                    "--port", str(args.port)], check=True, stdout=subprocess.DEVNULL)
    scale = json.loads((work / "sample" / "scale.json").read_text())
    server = subprocess.Popen([*fl, "sample", "serve", "--out", str(work / "sample"), "--port", str(args.port),
                               "--no-faults"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    rows = []
    try:
        time.sleep(2)
        archive = str(work / "sample" / "fungi-sample.zip")
        rows.append(stage("ingest", ["ingest", archive, "--out", str(work / "ingest")], work / "ingest", work,
                          scale["occurrences"], "occurrences"))
        rows.append(stage("eda", ["eda", str(work / "ingest"), "--out", str(work / "ingest")], work / "ingest", work,
                          scale["photos"], "images"))
        rows.append(stage("download", ["download", str(work / "ingest"), "--out", str(work / "download"),
                                       "--max-side", str(args.max_side),
                                       "--set", f"allow_hosts=[127.0.0.1:{args.port}]",
                                       "--set", "timeout=30"], work / "download", work, scale["photos"], "photos"))
        rows.append(stage("clean", ["clean", "--observations", str(work / "ingest"), "--downloads",
                                    str(work / "download"), "--out", str(work / "clean"), "--min-per-class",
                                    str(args.min_per_class)], work / "clean", work, scale["photos"], "images"))
        report = json.loads((work / "clean" / "clean_report.json").read_text())
        train_images = int(report["splits"]["train"])
        rows.append(stage("train", ["train", "--manifest", str(work / "clean"), "--out", str(work / "train"),
                                    "--no-evaluate", "--set", f"dataset.image_size={args.image_size}",
                                    "--set", "dataset.batch_size=64", "--set", f"fit.epochs={args.epochs}"],
                          work / "train", work, train_images * args.epochs, "images"))
        rows.append(stage("evaluate", ["evaluate", str(work / "train")], work / "train", work,
                          int(report["splits"]["test"]) + int(report["splits"]["val"]), "images"))
        rows.append(stage("export", ["export", str(work / "train"), "--out", str(work / "bundle"), "--set",
                                     "tfjs_quantization=[none]", "--set", "parity_images=8"], work / "bundle", work))
        rows.append(stage("predict", ["predict", str(work / "download" / "images"), "--model", str(work / "bundle"),
                                      "--json"], work / "predict", work, report["images"], "photos",
                          stdout=work / "predictions.jsonl"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    summary = json.loads((work / "train" / "train_summary.json").read_text())
    metrics = json.loads((work / "train" / "metrics.json").read_text())
    result = {"benchmark": "scale_rehearsal", "label": args.label or f"{args.photos} photos",
              "date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "species": args.species, "photos": scale["photos"], "occurrences": scale["occurrences"],
              "classes_trained": summary["classes"], "train_images": summary["train_images"],
              "max_side": args.max_side, "image_size": args.image_size, "epochs": args.epochs,
              "cache": summary.get("cache"), "test_top1": metrics.get("top1"), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / "scale_rehearsal.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs = [r for r in (runs if isinstance(runs, list) else [runs]) if r.get("label") != result["label"]]
    path.write_text(json.dumps([*runs, result], indent=2) + "\n")
    print(f"\n{scale['photos']:,} photos of {args.species:,} species ({summary['classes']:,} classes trained, "
          f"{summary['train_images']:,} training photos), max_side {args.max_side}, {args.image_size} px, "
          f"{args.epochs} epoch(s); cache: {summary.get('cache')}\n")
    print("| stage | wall s | throughput | peak RSS MB | disk written MB |\n|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['per_second']:,} {r['unit']}/s" if "per_second" in r else ""
        print(f"| {r['stage']} | {r['seconds']} | {rate} | {r['peak_rss_mb']:,} | {r['disk_written_mb']:,} |")


if __name__ == "__main__":
    main()
