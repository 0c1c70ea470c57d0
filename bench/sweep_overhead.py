"""Sweep overhead: a stage run through papermill (as sweeps run it) against the same stage function called
directly, on the demo's data — with a kernel started afresh (a notebook run from the shell) and with a warm kernel
forked from the pool's zygote (as sweeps, the demo and the tests run them: fungilib.kernel_pool). Training runs
report how much of their wall time the fit itself took.

Usage: .venv/bin/python bench/sweep_overhead.py [--repeats 3]   (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", type=Path, default=ROOT / "runs" / "demo")
    args = parser.parse_args()
    from fungilib.clean import CleanParams, clean_dataset
    from fungilib.kernel_pool import start_pool
    from fungilib.notebooks import run_notebook
    from fungilib.stages import stage

    clean = stage("clean")

    work = HERE / "work" / "overhead"
    shutil.rmtree(work, ignore_errors=True)
    paths = {"observations": str(args.demo / "ingest"), "downloads": str(args.demo / "download")}
    direct, papermill, warm = [], [], []

    def through_papermill(name: str) -> float:
        t0 = time.perf_counter()
        run = run_notebook(clean.notebook_path, work / name / "03_clean.ipynb",
                           {**clean.defaults(), **paths, "out": str(work / name / "out")})
        assert run.kernel == ("warm" if name.startswith("warm") else "cold"), run.kernel
        return time.perf_counter() - t0

    for i in range(args.repeats):
        t0 = time.perf_counter()
        clean_dataset(CleanParams(**{**clean.defaults(), **paths, "out": work / f"direct-{i}"}))
        direct.append(time.perf_counter() - t0)
        papermill.append(through_papermill(f"pm-{i}"))
    start_pool()  # from here on every kernel is a fork of one zygote (its start is not counted: once per sweep)
    warm = [through_papermill(f"warm-{i}") for i in range(args.repeats)]
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    overhead = med(papermill) - med(direct)
    sweep_rows = []
    for status_file in sorted((ROOT / "runs" / "demo-sweep").glob("*/status.json")):
        status = json.loads(status_file.read_text())
        summary_file = status_file.parent / "output" / "train_summary.json"
        if status.get("state") == "done" and summary_file.exists():
            fit = json.loads(summary_file.read_text())["seconds"]
            sweep_rows.append({"run_id": status_file.parent.name, "wall_s": status["duration_s"], "fit_s": fit})
    result = {"benchmark": "sweep_overhead", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "clean_direct_s": round(med(direct), 2), "clean_papermill_s": round(med(papermill), 2),
              "papermill_overhead_s": round(overhead, 2), "clean_papermill_warm_s": round(med(warm), 2),
              "papermill_warm_overhead_s": round(med(warm) - med(direct), 2), "demo_sweep_runs": sweep_rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "sweep_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| what | seconds (median) |\n|---|---|")
    print(f"| clean stage, direct call | {result['clean_direct_s']} |")
    print(f"| clean stage, papermill notebook | {result['clean_papermill_s']} |")
    print(f"| papermill overhead per run | {result['papermill_overhead_s']} |")
    print(f"| clean stage, papermill notebook, warm kernel | {result['clean_papermill_warm_s']} |")
    print(f"| papermill overhead per run, warm kernel | {result['papermill_warm_overhead_s']} |")
    if sweep_rows:
        wall, fit = sum(r["wall_s"] for r in sweep_rows), sum(r["fit_s"] for r in sweep_rows)
        print(f"| demo sweep: {len(sweep_rows)} training runs, wall / of which fit | {wall:.0f} / {fit:.0f} "
              f"({fit / wall:.0%}) |")


if __name__ == "__main__":
    main()
