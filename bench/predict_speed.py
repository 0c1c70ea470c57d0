"""`fungilib predict` throughput: the streaming, batched predictor against one photo at a time (how it worked
before: an eager resize per photo, one interpreter call per photo), on the same folder and bundle.

Usage: .venv/bin/python bench/predict_speed.py [--model runs/demo/export/bundle] [--photos runs/demo/download/images]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from datetime import date
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent


BEFORE = "74c20b7"  # the last commit with the one-photo-at-a-time predictor


def _module_from_git(name: str, path: str, replace: dict[str, str]) -> types.ModuleType:
    """A module as it was at BEFORE (read with git), with its imports pointed at the other old modules."""
    source = subprocess.run(["git", "show", f"{BEFORE}:{path}"], capture_output=True, text=True, check=True,
                            cwd=HERE.parent).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{BEFORE}:{path}", "exec"), module.__dict__)  # noqa: S102 — the project's own code
    return module


def one_at_a_time(paths: list[Path], model: Path) -> float:
    """The previous `fungilib predict` (its code at BEFORE): decode, an eager resize and crop, a batch-of-one
    interpreter call and a Python loop over the labels for the genus/family verdict, per photo."""
    _module_from_git("old_rollup", "fungilib/rollup.py", {})
    _module_from_git("old_litert", "fungilib/litert.py", {})
    old = _module_from_git("old_predict", "fungilib/predict.py", {
        "from fungilib.rollup import": "from old_rollup import",
        "from fungilib.litert import": "from old_litert import"})
    start = time.perf_counter()
    count = len(old.predict_files(paths, model))
    return count / (time.perf_counter() - start)


def streamed(paths: list[Path], model: Path) -> float:
    from fungilib.predict import iter_predictions

    start = time.perf_counter()
    count = sum(1 for _ in iter_predictions(paths, model))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/export/bundle"))
    parser.add_argument("--photos", type=Path, default=Path("runs/demo/download/images"))
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    from fungilib.predict import expand_inputs

    paths = expand_inputs([args.photos])[: args.limit]
    streamed(paths[:64], args.model)  # warm: traced, files in the page cache
    before = one_at_a_time(paths, args.model)
    after = streamed(paths, args.model)
    rows = [{"what": "one photo at a time (before)", "photos_per_second": round(before, 1)},
            {"what": "streamed, parallel decode, batched LiteRT", "photos_per_second": round(after, 1),
             "speedup": round(after / before, 2)}]
    result = {"benchmark": "predict_speed", "date": str(date.today()), "machine": f"{platform.machine()}, 2 cores",
              "model": str(args.model), "photos": len(paths), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "predict_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| {len(paths)} photos, {args.model} | photos/s | speed-up |\n|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['photos_per_second']} | {r.get('speedup', '')} |")


if __name__ == "__main__":
    main()
