"""Which Optuna storage survives parallel trial processes on one machine: SQLite through SQLAlchemy against the
journal file, with N processes asking and telling trials on one study at once (as `fungilib sweep --workers N`
does). Counts trials recorded, errors (e.g. "database is locked") and wall time.

Usage: .venv/bin/python bench/optuna_storage.py [--processes 4] [--trials 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(url: str, trials: int, queue: multiprocessing.Queue) -> None:
    import optuna

    from fungilib.optuna_storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors: list[str] = []
    done = 0
    try:
        study = optuna.load_study(study_name="bench", storage=open_storage(url))
        for _ in range(trials):
            try:
                trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
                for step in range(3):
                    trial.report(trial.params["x"] * step, step)
                study.tell(trial, trial.params["x"])
                done += 1
            except Exception as exc:  # noqa: BLE001 — what is counted here
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    except Exception as exc:  # noqa: BLE001
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    queue.put((done, errors))


def measure(url: str, processes: int, trials: int) -> dict:
    import optuna

    from fungilib.optuna_storage import open_storage

    optuna.create_study(study_name="bench", storage=open_storage(url), direction="maximize")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    procs = [ctx.Process(target=worker, args=(url, trials, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    recorded = len(optuna.load_study(study_name="bench", storage=open_storage(url)).trials)
    errors = [e for _, errs in results for e in errs]
    return {"storage": url.split(":")[0], "processes": processes, "trials_asked": processes * trials,
            "trials_recorded": recorded, "errors": len(errors), "first_error": errors[0] if errors else "",
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    work = HERE / "work" / "optuna-storage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = [measure(f"sqlite:///{work / 'study.db'}", args.processes, args.trials),
            measure(f"journal:{work / 'study.journal'}", args.processes, args.trials)]
    result = {"benchmark": "optuna_storage", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "optuna_storage.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| storage | processes | trials asked | recorded | errors | wall s | first error |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['storage']} | {r['processes']} | {r['trials_asked']} | {r['trials_recorded']} | {r['errors']} | "
              f"{r['seconds']} | {r['first_error']} |")


if __name__ == "__main__":
    main()
