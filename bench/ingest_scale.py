"""Ingest at GBIF fungi scale: time and peak memory of `fungilib ingest` on a generated 1.4 M-occurrence archive.

Usage: .venv/bin/python bench/ingest_scale.py [--occurrences 1400000] [--columns 250]
The archive is generated once into bench/work/ by the sample code (fungilib.sample.write_scaled_archive).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occurrences", type=int, default=1_400_000)
    parser.add_argument("--columns", type=int, default=250, help="occurrence columns in all (GBIF exports have ~250)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from fungilib.sample import OCCURRENCE_TERMS, write_scaled_archive

    work = HERE / "work" / f"scale-{args.occurrences}-{args.columns}"
    archive = work / "gbif-scale.zip"
    if not archive.exists():
        t0 = time.perf_counter()
        write_scaled_archive(work, args.occurrences, extra_columns=args.columns - len(OCCURRENCE_TERMS))
        print(f"generated {archive} ({archive.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    rows = []
    for i in range(args.repeats):
        out = work / f"ingest-{i}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fungilib.cli", "ingest", str(archive), "--out", str(out)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stderr)
        report = json.loads((out / "ingest_report.json").read_text())
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        del before
        rows.append({"seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb), "images": report["images"],
                     "occurrences": report["occurrences"]})
    seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
    result = {
        "benchmark": "ingest_scale", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
        "occurrences": rows[0]["occurrences"], "media_rows": rows[0]["images"], "columns": args.columns,
        "archive_mb": round(archive.stat().st_size / 1e6), "median_seconds": seconds,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows), "runs": rows,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| occurrences | image rows | columns | archive MB | median s ({args.repeats} runs) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    print(f"| {result['occurrences']:,} | {result['media_rows']:,} | {args.columns} | {result['archive_mb']} | "
          f"{seconds} | {result['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
