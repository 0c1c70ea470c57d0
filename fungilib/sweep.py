"""Sweeps: papermill across a grid or random search of parameters, shared cached data stages, local or on Dask."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
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

from fungilib.claims import CLAIM_FILE, claim, holder
from fungilib.data_version import content_key, source_version
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_open, join_inside, safe_id, write_json
from fungilib.notebooks import run_notebook
from fungilib.params import build_params, deep_merge, read_yaml, set_dotted
from fungilib.stages import SOURCE, SWEEP_PIPELINE, check_notebook_parameters, stage

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
    optuna: Any = None  # a fungilib.search.OptunaSearch: trials asked from a study instead of expanded runs
    sample_port: int = 8765
    folder_import: dict[str, Any] | None = None  # `folder:` source: import-folder parameters, run before the plan


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
    if set(search) - {"grid", "random", "optuna"} or len(search) != 1:
        raise FungilibError(f"{source}: search: expected exactly one of 'grid', 'random' or 'optuna', "
                            f"got {sorted(search)}")
    if "optuna" in search:
        return [{}]  # trials come from the study (fungilib.search); the base run validates the stages
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
    bad = [s for s in pipeline if s not in SWEEP_PIPELINE]
    if not pipeline or bad:
        raise FungilibError(f"{path}: pipeline: unknown stage {bad[0]!r}" if bad else f"{path}: pipeline is empty"
                            f"; stages: {', '.join(SWEEP_PIPELINE)}")
    if pipeline != [s for s in SWEEP_PIPELINE if s in pipeline] or pipeline[0] not in ("ingest_eda", "train"):
        raise FungilibError(f"{path}: pipeline must start at ingest_eda (or be [train]) and keep the order "
                            f"{' → '.join(SWEEP_PIPELINE)}")
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
    for name in base:
        if name not in pipeline:
            raise FungilibError(f"{path}: base.{name}: not a stage of this pipeline ({', '.join(pipeline)})")
    optuna_search = None
    if isinstance(data.get("search"), dict) and "optuna" in data["search"]:
        from fungilib.search import first_point, parse_optuna

        optuna_search = parse_optuna(data["search"]["optuna"], str(path))
        for key in optuna_search.params:
            if key.partition(".")[0] != pipeline[-1]:
                raise FungilibError(f"{path}: search.optuna.params.{key}: an Optuna search varies the last stage "
                                    f"only; keys start with {pipeline[-1]}.")
    runs = []
    for values in expand_search(data.get("search"), str(path)):
        overrides: dict[str, dict[str, Any]] = {}
        for dotted, value in values.items():
            name, _, rest = dotted.partition(".")
            if name not in pipeline or not rest:
                raise FungilibError(f"{path}: search key {dotted!r} must start with a stage of the pipeline "
                                    f"({', '.join(pipeline)}), e.g. train.optimizer.learning_rate")
            set_dotted(overrides.setdefault(name, {}), rest, value, f"{path}: search")
        runs.append(overrides)
    name = str(data.get("name") or path.stem)
    try:
        safe_id(name)
    except FungilibError:
        raise FungilibError(f"{path}: name {name!r}: a sweep's name is one folder name under the runs root "
                            "(letters, digits, '_', '.', '-'); set `name:` in the file") from None
    sweep = Sweep(name, path, pipeline, str(data[source_key]), data.get("sample_dir"), base, runs,
                  sample_port=int(data.get("sample_port", 8765)), folder_import=folder_import, optuna=optuna_search)
    if optuna_search is not None:  # a point of the space, checked against the notebook and the params class
        point: dict[str, dict[str, Any]] = {}
        for dotted, value in first_point(optuna_search).items():
            stage_name, _, rest = dotted.partition(".")
            set_dotted(point.setdefault(stage_name, {}), rest, value, f"{path}: search.optuna")
        check_notebook_parameters(pipeline[-1], stage_values(sweep, pipeline[-1], point), str(path))
    for overrides in runs:
        for name in pipeline:
            check_notebook_parameters(name, stage_values(sweep, name, overrides), str(path))
    return sweep


def stage_values(sweep: Sweep, name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """defaults (params/<stage>.yaml) ← the sweep's base ← this run's values."""
    return deep_merge(deep_merge(stage(name).defaults(), sweep.base.get(name, {})), overrides.get(name, {}))


@dataclass
class StageRun:
    """One notebook execution: its folder, parameters (paths included) and cache key."""

    stage: str
    key: str
    folder: Path
    parameters: dict[str, Any]
    run_id: str = ""  # set for the per-run (last) stage
    data: str = ""  # the version of the pipeline's source (see fungilib.data_version)

    @property
    def done(self) -> bool:
        """Finished with these very inputs and parameters (a folder reused with other inputs is not done); a
        pruned Optuna trial is finished too."""
        status = read_status(self.folder)
        return status.get("state") in ("done", "pruned") and status.get("key") == self.key


def prepare_source(sweep: Sweep, runs_root: Path) -> None:
    """A `folder:` source is imported once per folder content and import parameters, under
    ``runs/<sweep>/stages/import-<key>/``; the sweep then trains from that manifest."""
    if sweep.folder_import is None:
        return
    from fungilib.image_folder import FolderParams, import_folder

    values = dict(sweep.folder_import)
    key = content_key("import", values, source_version(values["source"]))
    out = Path(runs_root).resolve() / sweep.name / "stages" / f"import-{key}"
    if not (out / "manifest.h5").exists():
        import_folder(build_params(FolderParams, {**values, "out": out}, f"{sweep.source}: import"))
    sweep.archive = str(out)


def plan(sweep: Sweep, runs_root: Path) -> tuple[list[StageRun], list[StageRun]]:
    """(shared data-stage executions, per-run executions): every stage but the last is cached by key and
    shared; the last stage runs once per run in ``runs/<sweep>/<run_id>/``."""
    root = join_inside(Path(runs_root), sweep.name)
    archive = str(Path(sweep.archive).resolve())
    shared: dict[str, StageRun] = {}
    per_run: list[StageRun] = []
    data = source_version(archive)
    for overrides in sweep.runs:
        outs = {SOURCE: archive}
        input_key = data
        for i, name in enumerate(sweep.pipeline):
            values = stage_values(sweep, name, overrides)
            if name == "download" and sweep.sample_dir:  # the sweep serves the sample on loopback: allow it
                values["allow_hosts"] = [*values.get("allow_hosts", []), f"127.0.0.1:{sweep.sample_port}"]
            key = content_key(name, values, input_key)
            folder = root / "stages" / f"{name}-{key}"
            if i == len(sweep.pipeline) - 1:
                run_id = content_key(sweep.name, [stage_values(sweep, s, overrides) for s in sweep.pipeline],
                                     input_key)[:10]
                folder = root / run_id
            parameters = stage_parameters(name, values, folder / "output", outs)
            if i == len(sweep.pipeline) - 1:
                per_run.append(StageRun(name, key, folder, parameters, run_id, data))
            else:
                shared.setdefault(key, StageRun(name, key, folder, parameters, data=data))
            outs[name] = parameters["out"]
            input_key = key
    return list(shared.values()), per_run


def stage_parameters(name: str, values: dict[str, Any], out: Path, outs: dict[str, str],
                     runner: dict[str, Any] | None = None) -> dict[str, Any]:
    """A notebook's parameters: its values, its inputs (the upstream stages' ``out``), its ``out``, and its
    runner parameters (``sample_dir`` … ; None unless given: the sweep serves the sample itself)."""
    st = stage(name)
    parameters = deep_merge(values, st.inputs(outs))
    parameters["out"] = str(out)
    for extra in st.runner_parameters:
        parameters[extra] = (runner or {}).get(extra)
    return parameters


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


def execute(run: StageRun, threads: int = 0, wait: bool = False,
            context: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, Any]:
    """Execute one notebook into its folder, recording status.json (running → done | failed) around it.

    The folder is claimed first (see fungilib.claims): a run another live process is executing is left to it
    (or, with ``wait``, waited for), and one finished meanwhile is not redone. Runs in a worker process (local
    pool or Dask); a failure is recorded, never raised, so the sweep goes on."""
    with claim(run.folder, wait=wait) as mine:
        if not mine:
            return {**read_status(run.folder), "run_id": run.run_id, "stage": run.stage,
                    "state": "claimed", "error": f"being executed by another process ({holder(run.folder)})"}
        if run.done:
            return {**read_status(run.folder), "skipped": True, "duration_s": 0.0}
        with context() if context else contextlib.nullcontext():  # e.g. serve the sample, once claimed
            return _execute_claimed(run, threads)


def _clear_stale(run: StageRun) -> None:
    """A resuming stage's folder last run with other inputs or parameters: its outputs are stale, and the stage
    would resume (or skip) from them. They are removed first; the claim file stays."""
    previous = read_status(run.folder).get("key")
    if not stage(run.stage).resumes or not previous or previous == run.key:
        return
    print(f"[{run.stage}] {run.folder}: last run with other inputs or parameters; starting afresh", flush=True)
    for item in run.folder.iterdir():
        if item.name == CLAIM_FILE:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _execute_claimed(run: StageRun, threads: int) -> dict[str, Any]:
    folder = run.folder
    folder.mkdir(parents=True, exist_ok=True)
    _clear_stale(run)
    if threads:
        os.environ["FUNGILIB_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    notebook = stage(run.stage).notebook_path
    status = {"stage": run.stage, "run_id": run.run_id, "key": run.key, "data": run.data, "state": "running",
              "start": _now(), "host": socket.gethostname(), "pid": os.getpid(), "notebook": notebook.name,
              **({"gpu": os.environ["FUNGILIB_GPU"]} if os.environ.get("FUNGILIB_GPU") else {})}
    write_json(folder / "status.json", status)
    with atomic_open(folder / "params.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(run.parameters, handle, sort_keys=False)
    t0 = time.perf_counter()
    try:
        result = run_notebook(notebook, folder / notebook.name, run.parameters, raise_on_error=False)
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
        return [s for s in self.statuses
                if s.get("state") not in ("done", "pruned", "running", "claimed", "queued")]

    @property
    def elsewhere(self) -> list[dict[str, Any]]:
        """Runs another live process (a second sweep of the same file) is executing."""
        return [s for s in self.statuses if s.get("state") in ("running", "claimed")]


def _collect(finished: Any, on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Statuses of futures (local or Dask) in the order they finish, reporting each as it lands."""
    results = []
    for future in finished:
        status = future.result()
        on_done(status)
        results.append(status)
    return results


@dataclass
class Placement:
    """Where a sweep's runs execute: a local process pool (optionally one GPU per worker process), or a Dask
    cluster (optionally each run holding the workers' ``GPU`` resource)."""

    workers: int = 0  # local pool size (0: cores / 2); with gpus: len(gpus) x runs_per_gpu
    scheduler: str | None = None
    local_cluster: int = 0
    gpus: list[str] = field(default_factory=list)  # local pool: ids checked by fungilib.gpus.parse_gpus
    runs_per_gpu: int = 1
    gpu_resource: bool = False  # Dask: submit each run with resources={"GPU": 1}

    def __post_init__(self) -> None:
        if self.gpus and (self.scheduler or self.local_cluster):
            raise FungilibError("--gpus places runs in the local pool; on Dask each worker owns its GPU: start one "
                                "`CUDA_VISIBLE_DEVICES=<id> dask worker <scheduler> --resources GPU=1` per GPU and "
                                "pass --gpu-resource")
        if self.gpu_resource and not (self.scheduler or self.local_cluster):
            raise FungilibError("--gpu-resource is for Dask (--scheduler or --local-cluster); locally use --gpus")
        if self.gpus:
            self.workers = len(self.gpus) * self.runs_per_gpu


def _submit_all(runs: list[StageRun], place: Placement,
                on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run ``runs`` in parallel: a local process pool, or tasks on a Dask distributed cluster."""
    if not runs:
        return []
    cores = os.cpu_count() or 2
    if place.scheduler or place.local_cluster:
        from dask.distributed import Client, LocalCluster, as_completed

        gpu = {"GPU": 1} if place.gpu_resource else None
        cluster = LocalCluster(n_workers=place.local_cluster, threads_per_worker=2 if gpu else 1, processes=True,
                               dashboard_address=":0", resources=gpu) if place.local_cluster else None
        threads = max(1, cores // max(1, place.local_cluster)) if place.local_cluster else 0
        with contextlib.ExitStack() as stack:
            if cluster is not None:
                stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster if cluster is not None else place.scheduler))
            futures = [client.submit(execute, run, threads, pure=False, key=f"fungilib-{run.run_id or run.key}",
                                     resources=gpu) for run in runs]
            return _collect(as_completed(futures), on_done)
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import as_completed as done_in_order
    from multiprocessing import get_context

    context = get_context("spawn")
    workers = place.workers or max(1, cores // 2)
    threads = max(1, cores // workers)
    pool_args: dict[str, Any] = {}
    if place.gpus:  # one GPU slot per worker process: a run waits in the pool's queue until a GPU is free
        from fungilib.gpus import bind_worker_gpu

        slots = context.Queue()
        for gpu in place.gpus:
            for _ in range(place.runs_per_gpu):
                slots.put(gpu)
        pool_args = {"initializer": bind_worker_gpu, "initargs": (slots,)}
    with ProcessPoolExecutor(workers, mp_context=context, **pool_args) as pool:
        futures = [pool.submit(execute, run, threads) for run in runs]
        return _collect(done_in_order(futures), on_done)


def run_sweep(path: Path, runs_root: Path = Path("runs"), workers: int = 0, scheduler: str | None = None,
              local_cluster: int = 0, gpus: list[str] | None = None, runs_per_gpu: int = 1,
              gpu_resource: bool = False) -> SweepResult:
    """Validate the sweep, run the shared data stages once (cached by key), then every run in parallel.

    Finished stages and runs (status.json 'done') are skipped, so a rerun of a finished sweep only reports,
    and a killed sweep resumes: unfinished runs are executed again in the same folder (training continues
    from its last epoch)."""
    from tqdm.auto import tqdm

    from fungilib.sample_server import serving

    place = Placement(workers, scheduler, local_cluster, list(gpus or []), runs_per_gpu, gpu_resource)
    sweep = load_sweep(path)
    prepare_source(sweep, runs_root)
    shared, per_run = plan(sweep, runs_root)
    executed: list[dict[str, Any]] = []
    skipped = 0
    cores = os.cpu_count() or 2
    place.workers = place.workers or max(1, min(len(per_run), cores // 2 or 1))
    trials = sweep.optuna.n_trials if sweep.optuna is not None else len(per_run)
    bar = tqdm(total=len(shared) + trials, desc=f"sweep {sweep.name}", unit="stage")

    def report(status: dict[str, Any]) -> None:
        bar.update(1)
        label = status.get("run_id") or status.get("stage")
        if status.get("skipped"):
            tqdm.write(f"[sweep] {label}: done meanwhile by another process")
        elif status.get("state") == "claimed":
            tqdm.write(f"[sweep] {label}: {status['error']}")
        else:
            tqdm.write(f"[sweep] {label}: {status['state']} in {status.get('duration_s') or 0:.0f} s"
                       + (f" — {status['error']}" if status.get("error") else ""))

    def sample_server() -> contextlib.AbstractContextManager:
        """The sample on loopback while a download stage of this sweep runs (only once that stage is claimed:
        a second sweep of the same file waits for the first's download instead of fighting for the port)."""
        return serving(Path(sweep.sample_dir) if sweep.sample_dir else None, port=sweep.sample_port)

    per_run_downloads = sweep.sample_dir and any(r.stage == "download" for r in per_run if not r.done)
    with serving(Path(sweep.sample_dir) if per_run_downloads else None, port=sweep.sample_port):
        for run in shared:  # data stages in order, once each, in this process
            if run.done:
                skipped += 1
                bar.update(1)
                continue
            status = execute(run, threads=0, wait=True,  # another sweep making the same data: wait for it
                             context=sample_server if run.stage == "download" else None)
            report(status)
            if status.get("skipped"):  # finished by another process while this one waited
                skipped += 1
                continue
            executed.append(status)
            if status["state"] != "done":
                bar.close()
                raise FungilibError(f"stage {run.stage} failed ({status['error']}); its notebook is "
                                    f"{run.folder / stage(run.stage).notebook_path.name}")
        if sweep.optuna is not None:  # trials asked from the study, run as ordinary run folders
            from fungilib.search import run_optuna

            outs = {SOURCE: str(Path(sweep.archive).resolve()), **{r.stage: r.parameters["out"] for r in shared}}
            last = sweep.pipeline[-1]
            trials = run_optuna(sweep, runs_root, stage_values(sweep, last, {}), outs, per_run[0].data, place,
                                report)
            bar.close()
            return SweepResult(sweep, trials, skipped, trials)
        todo = [r for r in per_run if not r.done]
        skipped += len(per_run) - len(todo)
        bar.update(len(per_run) - len(todo))
        for run in todo:
            if not read_status(run.folder):
                write_json(run.folder / "status.json", {"stage": run.stage, "run_id": run.run_id, "state": "queued",
                                                        "queued": _now()})
        for status in _submit_all(todo, place, report):
            if status.get("skipped") or status.get("state") == "claimed":  # another process ran (or runs) it
                skipped += bool(status.get("skipped"))
            else:
                executed.append(status)
    bar.close()
    statuses = [read_status(r.folder) for r in per_run]
    return SweepResult(sweep, executed, skipped, statuses)


__all__ = ["Sweep", "SweepResult", "expand_search", "load_sweep", "plan", "run_sweep"]
