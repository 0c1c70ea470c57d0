"""Sweeps: papermill across a grid or random search of parameters, shared cached data stages, local or on Dask."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_open, write_json
from fungilib.notebooks import NOTEBOOKS_DIR, check_parameters, run_notebook, stage_defaults
from fungilib.params import build_params, deep_merge, read_yaml

STAGES: dict[str, str] = {
    "ingest_eda": "01_ingest_eda.ipynb",
    "download": "02_download.ipynb",
    "clean": "03_clean.ipynb",
    "train": "04_train.ipynb",
}
SWEEP_KEYS = {"name", "archive", "manifest", "folder", "import", "sample_dir", "sample_port", "pipeline", "base",
              "search"}
DISTRIBUTIONS = {"choice", "uniform", "loguniform", "int"}


@dataclass
class Sweep:
    """A validated sweep file: which stages, the values over the defaults, and the expanded runs."""

    name: str
    source: Path
    pipeline: list[str]
    archive: str  # the input of the first stage: a DwC archive, or a manifest folder for a train-only sweep
    sample_dir: str | None
    base: dict[str, dict[str, Any]]
    runs: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per run: stage → overrides
    sample_port: int = 8765
    folder_import: dict[str, Any] | None = None  # `folder:` source: import-folder parameters, run before the plan


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _draw(spec: Any, rng: np.random.Generator, where: str) -> Any:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise FungilibError(f"{where}: expected one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                            f"{{loguniform: [lo, hi]}}, {{int: [lo, hi]}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not args:
            raise FungilibError(f"{where}: choice needs at least one value")
        return args[int(rng.integers(len(args)))]
    lo, hi = args
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        if lo <= 0 or hi <= 0:
            raise FungilibError(f"{where}: loguniform bounds must be > 0")
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(lo, hi + 1))


def expand_search(search: dict[str, Any] | None, source: str) -> list[dict[str, Any]]:
    """The runs of a search as lists of dotted-key values: a cartesian grid, or n seeded random draws."""
    if not search:
        return [{}]
    if set(search) - {"grid", "random"} or len(search) != 1:
        raise FungilibError(f"{source}: search: expected exactly one of 'grid' or 'random', got {sorted(search)}")
    if "grid" in search:
        grid = search["grid"] or {}
        if not isinstance(grid, dict):
            raise FungilibError(f"{source}: search.grid: expected a mapping of dotted keys to lists of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise FungilibError(f"{source}: search.grid.{key}: expected a non-empty list of values")
        keys = sorted(grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    random = search["random"] or {}
    unknown = set(random) - {"n", "seed", "params"}
    if unknown:
        raise FungilibError(f"{source}: search.random: unknown key {sorted(unknown)[0]!r}; allowed: n, seed, params")
    n, params = random.get("n"), random.get("params") or {}
    if not isinstance(n, int) or n < 1 or not params:
        raise FungilibError(f"{source}: search.random needs n >= 1 and at least one entry under params")
    rng = np.random.default_rng(random.get("seed", 0))
    keys = sorted(params)
    return [{k: _draw(params[k], rng, f"{source}: search.random.params.{k}") for k in keys} for _ in range(n)]


def load_sweep(path: Path) -> Sweep:
    """Read and validate a sweep file completely before anything runs (keys, stages, types, every run)."""
    path = Path(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise FungilibError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    pipeline = data.get("pipeline") or []
    bad = [s for s in pipeline if s not in STAGES]
    if not pipeline or bad:
        raise FungilibError(f"{path}: pipeline: unknown stage {bad[0]!r}" if bad else f"{path}: pipeline is empty"
                            f"; stages: {', '.join(STAGES)}")
    if pipeline != [s for s in STAGES if s in pipeline] or pipeline[0] not in ("ingest_eda", "train"):
        raise FungilibError(f"{path}: pipeline must start at ingest_eda (or be [train]) and keep the order "
                            f"{' → '.join(STAGES)}")
    source_key = "archive" if pipeline[0] == "ingest_eda" else "folder" if "folder" in data else "manifest"
    if source_key not in data:
        raise FungilibError(f"{path}: missing {source_key!r} (the input of stage {pipeline[0]}"
                            + (": a manifest folder, or `folder:` for a labelled image folder)" if pipeline[0] == "train"
                               else ")"))
    folder_import = None
    if source_key == "folder":
        from fungilib.image_folder import FolderParams

        folder_import = {**(data.get("import") or {}), "source": str(data["folder"])}
        build_params(FolderParams, {**folder_import, "out": "."}, f"{path}: import")  # validated now, run later
    elif "import" in data:
        raise FungilibError(f"{path}: `import` applies only to a `folder:` source")
    base = data.get("base") or {}
    for stage in base:
        if stage not in pipeline:
            raise FungilibError(f"{path}: base.{stage}: not a stage of this pipeline ({', '.join(pipeline)})")
    runs = []
    for values in expand_search(data.get("search"), str(path)):
        overrides: dict[str, dict[str, Any]] = {}
        for dotted, value in values.items():
            stage, _, rest = dotted.partition(".")
            if stage not in pipeline or not rest:
                raise FungilibError(f"{path}: search key {dotted!r} must start with a stage of the pipeline "
                                    f"({', '.join(pipeline)}), e.g. train.optimizer.learning_rate")
            _set_dotted(overrides.setdefault(stage, {}), rest, value)
        runs.append(overrides)
    sweep = Sweep(str(data.get("name") or path.stem), path, pipeline, str(data[source_key]), data.get("sample_dir"),
                  base, runs, int(data.get("sample_port", 8765)), folder_import)
    for overrides in runs:
        for stage in pipeline:
            validate_stage(stage, stage_values(sweep, stage, overrides), str(path))
    return sweep


def stage_values(sweep: Sweep, stage: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """defaults (params/<stage>.yaml) ← the sweep's base ← this run's values."""
    return deep_merge(deep_merge(stage_defaults(stage), sweep.base.get(stage, {})), overrides.get(stage, {}))


def validate_stage(stage: str, values: dict[str, Any], source: str) -> None:
    """Names against the notebook's parameters cell, types against the stage's parameter classes."""
    check_parameters(NOTEBOOKS_DIR / STAGES[stage], values, f"{source}: {stage}")
    from fungilib.clean import CleanParams
    from fungilib.download import DownloadParams
    from fungilib.eda import EdaParams
    from fungilib.train import TrainParams

    classes = {"ingest_eda": EdaParams, "download": DownloadParams, "clean": CleanParams, "train": TrainParams}
    cls = classes[stage]
    names = {f for f in cls.__dataclass_fields__}
    dummy = {"observations": "-", "out": "-", "downloads": "-"}
    build_params(cls, {**{k: v for k, v in dummy.items() if k in names}, **{k: v for k, v in values.items()
                                                                               if k in names}}, f"{source}: {stage}")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _archive_identity(archive: str) -> str:
    """The archive's identity for caching: its bytes' hash (files are hashed once per size and mtime)."""
    path = Path(archive)
    if path.is_dir():
        return _key(sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file()))
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class StageRun:
    """One notebook execution: its folder, parameters (paths included) and cache key."""

    stage: str
    key: str
    folder: Path
    parameters: dict[str, Any]
    run_id: str = ""  # set for the per-run (last) stage


def prepare_source(sweep: Sweep, runs_root: Path) -> None:
    """A `folder:` source is imported once per folder content and import parameters, under
    ``runs/<sweep>/stages/import-<key>/``; the sweep then trains from that manifest."""
    if sweep.folder_import is None:
        return
    from fungilib.image_folder import FolderParams, import_folder

    values = dict(sweep.folder_import)
    key = _key("import", values, _archive_identity(values["source"]))
    out = Path(runs_root).resolve() / sweep.name / "stages" / f"import-{key}"
    if not (out / "manifest.h5").exists():
        import_folder(build_params(FolderParams, {**values, "out": out}, f"{sweep.source}: import"))
    sweep.archive = str(out)


def plan(sweep: Sweep, runs_root: Path) -> tuple[list[StageRun], list[StageRun]]:
    """(shared data-stage executions, per-run executions): every stage but the last is cached by key and
    shared; the last stage runs once per run in ``runs/<sweep>/<run_id>/``."""
    root = Path(runs_root).resolve() / sweep.name
    archive = str(Path(sweep.archive).resolve())
    shared: dict[str, StageRun] = {}
    per_run: list[StageRun] = []
    source_key = _archive_identity(archive) if Path(archive).exists() else archive
    for overrides in sweep.runs:
        upstream: dict[str, StageRun] = {}
        input_key = source_key
        for i, stage in enumerate(sweep.pipeline):
            values = stage_values(sweep, stage, overrides)
            key = _key(stage, values, input_key)
            last = i == len(sweep.pipeline) - 1
            folder = root / "stages" / f"{stage}-{key}"
            paths = _stage_paths(stage, archive, sweep, upstream)
            if last:
                run_id = _key(sweep.name, [stage_values(sweep, s, overrides) for s in sweep.pipeline], input_key)[:10]
                folder = root / run_id
                per_run.append(StageRun(stage, key, folder, {**values, **paths, **_out(stage, folder)}, run_id))
            else:
                shared.setdefault(key, StageRun(stage, key, folder, {**values, **paths, **_out(stage, folder)}))
            upstream[stage] = shared.get(key) or per_run[-1]
            input_key = key
    return list(shared.values()), per_run


def _out(stage: str, folder: Path) -> dict[str, str]:
    return {"out": str(folder / "output")}


def _stage_paths(stage: str, source: str, sweep: Sweep, up: dict[str, StageRun]) -> dict[str, Any]:
    def out_of(name: str) -> str:
        return up[name].parameters["out"]

    if stage == "ingest_eda":
        return {"archive": source, "sample_dir": None}
    if stage == "download":  # the sweep serves the sample itself, once, for all download executions
        return {"observations": out_of("ingest_eda"), "sample_dir": None}
    if stage == "clean":
        return {"observations": out_of("ingest_eda"), "downloads": out_of("download")}
    return {"manifest": out_of("clean") if "clean" in up else source}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_status(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "status.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def execute(run: StageRun, threads: int = 0) -> dict[str, Any]:
    """Execute one notebook into its folder, recording status.json (running → done | failed) around it.

    Runs in a worker process (local pool or Dask); a failure is recorded, never raised, so the sweep goes on."""
    folder = run.folder
    folder.mkdir(parents=True, exist_ok=True)
    if threads:
        os.environ["FUNGILIB_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    status = {"stage": run.stage, "run_id": run.run_id, "key": run.key, "state": "running", "start": _now(),
              "host": socket.gethostname(), "pid": os.getpid(), "notebook": STAGES[run.stage]}
    write_json(folder / "status.json", status)
    with atomic_open(folder / "params.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(run.parameters, handle, sort_keys=False)
    t0 = time.perf_counter()
    try:
        result = run_notebook(NOTEBOOKS_DIR / STAGES[run.stage], folder / STAGES[run.stage], run.parameters,
                              raise_on_error=False)
        ok, error = result.ok, result.error
    except Exception as exc:  # a kernel that died, a notebook that cannot start: recorded, not raised
        ok, error = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        traceback.print_exc()
    status.update(state="done" if ok else "failed", end=_now(), duration_s=round(time.perf_counter() - t0, 1),
                  error=error)
    write_json(folder / "status.json", status)
    return status


@dataclass
class SweepResult:
    sweep: Sweep
    executed: list[dict[str, Any]]
    skipped: int
    statuses: list[dict[str, Any]]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.statuses if s.get("state") != "done"]


def _collect(finished: Any, on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Statuses of futures (local or Dask) in the order they finish, reporting each as it lands."""
    results = []
    for future in finished:
        status = future.result()
        on_done(status)
        results.append(status)
    return results


def _submit_all(runs: list[StageRun], workers: int, scheduler: str | None, local_cluster: int,
                on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run ``runs`` in parallel: a local process pool, or tasks on a Dask distributed cluster."""
    if not runs:
        return []
    cores = os.cpu_count() or 2
    if scheduler or local_cluster:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = LocalCluster(n_workers=local_cluster, threads_per_worker=1, processes=True,
                               dashboard_address=None) if local_cluster else None
        threads = max(1, cores // max(1, local_cluster)) if local_cluster else 0
        with contextlib.ExitStack() as stack:
            if cluster is not None:
                stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster if cluster is not None else scheduler))
            futures = [client.submit(execute, run, threads, pure=False, key=f"fungilib-{run.run_id or run.key}")
                       for run in runs]
            return _collect(as_completed(futures), on_done)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import as_completed as done_in_order
    from multiprocessing import get_context

    threads = max(1, cores // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(execute, run, threads) for run in runs]
        return _collect(done_in_order(futures), on_done)


def run_sweep(path: Path, runs_root: Path = Path("runs"), workers: int = 0, scheduler: str | None = None,
              local_cluster: int = 0) -> SweepResult:
    """Validate the sweep, run the shared data stages once (cached by key), then every run in parallel.

    Finished stages and runs (status.json 'done') are skipped, so a rerun of a finished sweep only reports,
    and a killed sweep resumes: unfinished runs are executed again in the same folder (training continues
    from its last epoch)."""
    from tqdm.auto import tqdm

    from fungilib.sample_server import serving

    sweep = load_sweep(path)
    prepare_source(sweep, runs_root)
    shared, per_run = plan(sweep, runs_root)
    executed: list[dict[str, Any]] = []
    skipped = 0
    cores = os.cpu_count() or 2
    workers = workers or max(1, min(len(per_run), cores // 2 or 1))
    bar = tqdm(total=len(shared) + len(per_run), desc=f"sweep {sweep.name}", unit="stage")

    def report(status: dict[str, Any]) -> None:
        bar.update(1)
        label = status.get("run_id") or status.get("stage")
        tqdm.write(f"[sweep] {label}: {status['state']} in {status.get('duration_s', 0):.0f} s"
                   + (f" — {status['error']}" if status.get("error") else ""))

    needs_server = sweep.sample_dir and any(r.stage == "download" for r in shared + per_run
                                            if read_status(r.folder).get("state") != "done")
    with serving(Path(sweep.sample_dir) if needs_server else None, port=sweep.sample_port):
        for run in shared:  # data stages in order, once each, in this process
            if read_status(run.folder).get("state") == "done":
                skipped += 1
                bar.update(1)
                continue
            status = execute(run, threads=0)
            executed.append(status)
            report(status)
            if status["state"] != "done":
                bar.close()
                raise FungilibError(f"stage {run.stage} failed ({status['error']}); its notebook is "
                                    f"{run.folder / STAGES[run.stage]}")
        todo = [r for r in per_run if read_status(r.folder).get("state") != "done"]
        skipped += len(per_run) - len(todo)
        bar.update(len(per_run) - len(todo))
        for run in todo:
            if not read_status(run.folder):
                write_json(run.folder / "status.json", {"stage": run.stage, "run_id": run.run_id, "state": "queued",
                                                        "queued": _now()})
        executed += _submit_all(todo, workers, scheduler, local_cluster, report)
    bar.close()
    statuses = [read_status(r.folder) for r in per_run]
    return SweepResult(sweep, executed, skipped, statuses)


__all__ = ["Sweep", "SweepResult", "expand_search", "load_sweep", "plan", "run_sweep"]
