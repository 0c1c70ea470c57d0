"""The runs index: every run folder read into one table, rebuilt from the folders (never edited in place)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fungilib.artifacts.run_record import INDEX_CSV, INDEX_H5, OUTPUT_DIR, PARAMS_FILE
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, safe_id, write_hdf
from fungilib.stages import PATH_PARAMETERS

# validation first: a run is chosen on these (best_run, the demo's export, the runs table's order) …
VALIDATION = ["val_top1", "val_macro_f1", "val_nll", "val_ece"]
# … and reported on the test split, never chosen on
TEST = ["top1", "top3", "top5", "macro_f1", "genus_top1", "ece"]
HEADLINE = [*VALIDATION, *TEST]
LOWER_IS_BETTER = {"val_nll", "val_ece"}
PATH_KEYS = set(PATH_PARAMETERS)  # where a run read and wrote: not parameters to compare runs by


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif key not in PATH_KEYS:
            flat[name] = value if not isinstance(value, list) else json.dumps(value)
    return flat


def collect_runs(runs_root: Path, sweep: str | None = None) -> pd.DataFrame:
    """One row per run folder (``runs/<sweep>/<run_id>/status.json``): status, timing, parameters, metrics."""
    if sweep is not None:
        safe_id(sweep)  # one folder name: never a pattern or a path out of the runs root
    rows = []
    for status_file in sorted(Path(runs_root).glob(f"{sweep or '*'}/*/status.json")):
        folder = status_file.parent
        if folder.parent.name == "stages" or folder.name == "stages":
            continue
        try:
            status = json.loads(status_file.read_text())
        except json.JSONDecodeError:
            status = {"state": "unreadable", "run_id": folder.name}
        if not status.get("run_id"):  # a pipeline's data stage (the demo's folders), not a run
            continue
        row: dict[str, Any] = {"run_id": folder.name, "sweep": folder.parent.name, "status": status.get("state"),
                               "duration_s": status.get("duration_s"), "start": status.get("start", ""),
                               "data": status.get("data", ""), "host": status.get("host", ""),
                               "error": status.get("error", "")}
        if "trial" in status:  # an Optuna trial: its number, how it ended, its objective value
            row.update(trial=status["trial"], trial_state=status.get("trial_state", ""), value=status.get("value"),
                       pruned_at_epoch=status.get("pruned_at_epoch", 0), direction=status.get("direction", ""))
        params_file = folder / PARAMS_FILE
        if params_file.exists():
            row.update({f"param.{k}": v for k, v in _flatten(yaml.safe_load(params_file.read_text()) or {}).items()})
        metrics = TrainedRun(folder / OUTPUT_DIR).metrics()
        if metrics:
            row.update({m: metrics.get(m) for m in HEADLINE})
        rows.append(row)
    return pd.DataFrame(rows)


def write_index(runs_root: Path, sweep: str | None = None) -> pd.DataFrame:
    """Rebuild ``runs/index.h5`` (key ``runs``) and ``runs/index.csv`` from every run folder, atomically, and
    return the rows of ``sweep`` (all runs when None): the index always holds every sweep's runs."""
    if sweep is not None:
        safe_id(sweep)
    everything = collect_runs(runs_root)
    if everything.empty:
        return everything
    root = Path(runs_root)
    table = everything
    stored = table.copy()
    for name in stored.columns:
        if stored[name].dtype == object:
            stored[name] = stored[name].map(lambda v: "" if v is None else str(v))
    write_hdf(root / INDEX_H5, {"runs": stored})
    with atomic_path(root / INDEX_CSV) as tmp:
        table.to_csv(tmp, index=False)
    return table if sweep is None else table[table["sweep"] == sweep].reset_index(drop=True)


def render_report(run_dir: Path) -> list[Path]:
    """Render every executed notebook of a run folder to HTML beside it, for reading without Jupyter."""
    from nbconvert import HTMLExporter

    notebooks = sorted(Path(run_dir).glob("*.ipynb"))
    if not notebooks:
        raise FungilibError(f"{run_dir}: no executed notebooks here (a run folder holds them)")
    exporter = HTMLExporter()
    written = []
    for notebook in notebooks:
        body, _ = exporter.from_filename(str(notebook))
        target = notebook.with_suffix(".html")
        with atomic_path(target) as tmp:
            tmp.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def check_choice_metric(metric: str) -> None:
    """A run is chosen on a validation metric only: the test split is reported, never chosen on."""
    if metric not in VALIDATION:
        raise FungilibError(f"metric {metric!r}: runs are chosen on a validation metric ({', '.join(VALIDATION)}); "
                            "the test split is reported for the chosen run, never used to choose")


def ranked(table: Any, metric: str) -> Any:
    """Finished, evaluated runs best first by ``metric`` (a validation metric); ties go to the higher validation
    macro-F1, then to the smaller run id, so every caller names the same run."""
    check_choice_metric(metric)
    if metric not in table:  # no evaluated run (a sweep of data stages): nothing to rank
        return table.iloc[0:0]
    done = table[(table["status"] == "done") & table[metric].notna()]
    keys = [metric, *(["val_macro_f1"] if "val_macro_f1" in done and metric != "val_macro_f1" else []), "run_id"]
    ascending = [metric in LOWER_IS_BETTER, *([False] if len(keys) == 3 else []), True]
    return done.sort_values(keys, ascending=ascending)


def best_run(runs_root: Path, sweep: str, metric: str = "val_top1", among: set[str] | None = None) -> Path:
    """The folder of the sweep's finished run that is best on ``metric`` (a validation metric; see ``ranked``).
    ``among``: only these run ids (the runs of the sweep as it stands, not earlier runs on other data left in its
    folder)."""
    check_choice_metric(metric)
    table = collect_runs(runs_root, sweep)
    if table.empty or metric not in table:
        raise FungilibError(f"sweep {sweep!r} under {runs_root} has no evaluated runs to choose from")
    if among is not None:
        table = table[table["run_id"].astype(str).isin(among)]
    done = ranked(table, metric)
    if done.empty:
        raise FungilibError(f"sweep {sweep!r} has no finished, evaluated run")
    return Path(runs_root) / sweep / str(done.iloc[0]["run_id"])


def tensorboard_command(runs_root: Path, sweep: str | None, host: str = "127.0.0.1", port: int = 6006) -> list[str]:
    """TensorBoard over the runs' logs, each run named by its id (``--logdir_spec run_id:path,...``)."""
    import shutil
    import sys

    root = Path(runs_root)
    pattern = f"{sweep}/*/output/logs" if sweep else "*/*/output/logs"
    logs = sorted(p for p in root.glob(pattern) if p.is_dir() and p.parent.parent.parent.name != "stages")
    if not sweep:
        logs += sorted(p for p in root.glob("*/train/logs") if p.is_dir())  # the demo's own training run
    if not logs:
        raise FungilibError(f"no TensorBoard logs under {root / (sweep or '')}: run a sweep (or train) first")
    spec = ",".join(f"{p.parent.parent.name if p.parent.name == 'output' else p.parent.parent.name + '-train'}:{p}"
                    for p in logs)
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or "tensorboard"
    return [exe, "--logdir_spec", spec, "--host", host, "--port", str(port)]


def runs_table_text(runs_root: Path, sweep: str | None, sort: str) -> str:
    """The runs table as ``fungilib runs`` prints it: the swept parameters and the metrics, an Optuna study's best
    trial first, else best first on a validation metric (the runs that cannot be ranked after), else by ``sort``."""
    table = write_index(runs_root, sweep)
    if table.empty:
        return "no runs yet"
    swept = [c for c in table.columns if c.startswith("param.") and table[c].astype(str).nunique() > 1]
    trials = [c for c in ("trial", "trial_state", "value", "pruned_at_epoch") if c in table]
    columns = ["run_id", "sweep", "status", "duration_s", "data", *trials, *swept, *[m for m in HEADLINE if m in table]]
    if "value" in table and table["value"].notna().any():
        minimize = "direction" in table and (table["direction"] == "minimize").all()
        table = table.sort_values("value", ascending=bool(minimize), na_position="last")
    elif sort in VALIDATION:
        best = ranked(table, sort)
        table = pd.concat([best, table[~table.index.isin(best.index)]])
    elif sort in table:
        table = table.sort_values(sort, ascending=False)
    return (table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")
            + f"\n(index: {Path(runs_root) / INDEX_H5}, {Path(runs_root) / INDEX_CSV})")

