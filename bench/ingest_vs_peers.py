"""Ingest side by side on one generated GBIF-shaped archive: fungilib ingest vs python-dwca-reader's row
iteration into the same table vs the raw-pyarrow floor (read the two files' needed columns and join).

Each tool runs as its own process under /usr/bin/time (wall seconds, peak RSS). python-dwca-reader runs in
bench/work/peers-venv. At 1.4 M occurrences it would take many minutes, so the side-by-side archive defaults
to 200,000 occurrences × 250 columns (≈ 400,000 image rows); bench/ingest_scale.py measures fungilib alone
at full GBIF fungi scale.
Usage: .venv/bin/python bench/ingest_vs_peers.py [--occurrences 200000] [--repeats 3]
(results: bench/results/ingest_vs_peers.json, or ingest_vs_peers_<N>.json for another --occurrences; at
1,400,000 python-dwca-reader takes ≈ 2.5 min and 13 GB)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "work" / "peers-venv" / "bin" / "python"


def _timed(cmd: list[str], env: dict | None = None) -> dict:
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{cmd[:3]} failed: {done.stderr[-1500:]}")
    seconds, kb = done.stderr.strip().splitlines()[-1].split()
    return {"seconds": float(seconds), "peak_rss_mb": round(int(kb) / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occurrences", type=int, default=200_000)
    parser.add_argument("--columns", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reader-repeats", type=int, default=1, help="python-dwca-reader runs (slow)")
    args = parser.parse_args()
    if not PEERS.exists():
        sys.exit("python-dwca-reader is not installed: run `make bench` (it builds bench/work/peers-venv)")
    from fungilib.sample import OCCURRENCE_TERMS, write_scaled_archive

    work = HERE / "work" / f"scale-{args.occurrences}-{args.columns}"
    archive = work / "gbif-scale.zip"
    if not archive.exists():
        write_scaled_archive(work, args.occurrences, extra_columns=args.columns - len(OCCURRENCE_TERMS))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    runs: dict[str, list[dict]] = {"fungilib": [], "pyarrow": [], "python-dwca-reader": []}
    for i in range(args.repeats):
        runs["fungilib"].append(_timed([sys.executable, "-m", "fungilib.cli", "ingest", str(archive), "--out",
                                        str(work / f"ingest-{i}")]))
        runs["pyarrow"].append(_timed([sys.executable, str(HERE / "peers" / "pyarrow_ingest.py"), str(archive),
                                       str(work / "pyarrow.parquet")], env))
        if i < args.reader_repeats:
            runs["python-dwca-reader"].append(_timed([str(PEERS), str(HERE / "peers" / "dwca_reader_ingest.py"),
                                                      str(archive), str(work / "dwca-reader.pkl")]))
    report = json.loads((work / "ingest-0" / "ingest_report.json").read_text())
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    result = {"benchmark": "ingest_vs_peers", "date": str(date.today()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "occurrences": report["occurrences"],
              "image_rows": report["images"], "columns": args.columns,
              "archive_mb": round(archive.stat().st_size / 1e6), "median_seconds": median, "peak_rss_mb": peak,
              "speedup_vs_dwca_reader": median["python-dwca-reader"] / median["fungilib"],
              "ratio_to_pyarrow": median["fungilib"] / median["pyarrow"], "runs": runs}
    name = "ingest_vs_peers.json" if args.occurrences == 200_000 else f"ingest_vs_peers_{args.occurrences}.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{report['occurrences']:,} occurrences × {args.columns} columns, {report['images']:,} image rows "
          f"({result['archive_mb']} MB zip)")
    print("| tool | median s | peak RSS MB | fungilib speed-up |")
    print("|---|---|---|---|")
    for tool in runs:
        print(f"| {tool} | {median[tool]:.1f} | {peak[tool]} | {median[tool] / median['fungilib']:.2f}× |")


if __name__ == "__main__":
    main()
