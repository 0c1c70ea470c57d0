"""A sweep's plan: the shared data stages (each once, cached by content key) and the per-run executions, each a
StageRun with its folder and notebook parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fungilib.artifacts.dataset import has_manifest
from fungilib.artifacts.run_record import OUTPUT_DIR, STAGES_DIR, RunState, read_status
from fungilib.data_version import content_key, source_version
from fungilib.fsutil import join_inside
from fungilib.params import build_params, deep_merge
from fungilib.run_execution import StageRun
from fungilib.stages import SOURCE, stage
from fungilib.sweep_file import Sweep, stage_values


def prepare_source(sweep: Sweep, runs_root: Path) -> None:
    """A `folder:` source is imported once per folder content and import parameters, under
    ``runs/<sweep>/stages/import-<key>/``; the sweep then trains from that manifest."""
    if sweep.folder_import is None:
        return
    values = dict(sweep.folder_import)
    key = content_key("import", values, source_version(values["source"]))
    out = Path(runs_root).resolve() / sweep.name / STAGES_DIR / f"import-{key}"
    if not has_manifest(out):
        importer = stage("import_folder")  # the registry's stage: orchestration knows stages only through it
        importer.entry_function(build_params(importer.params_class, {**values, "out": out}, f"{sweep.source}: import"))
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
            if i == len(sweep.pipeline) - 1:
                run_id = content_key(sweep.name, [stage_values(sweep, s, overrides) for s in sweep.pipeline],
                                     input_key)[:10]
                folder = root / run_id
            elif key in shared:  # another grid point's: planned already
                folder = shared[key].folder
            else:
                folder = _finished_elsewhere(Path(runs_root), name, key) or root / STAGES_DIR / f"{name}-{key}"
            parameters = stage_parameters(name, values, folder / OUTPUT_DIR, outs)
            if i == len(sweep.pipeline) - 1:
                per_run.append(StageRun(name, key, folder, parameters, run_id, data))
            else:
                shared.setdefault(key, StageRun(name, key, folder, parameters, data=data))
            outs[name] = parameters["out"]
            input_key = key
    return list(shared.values()), per_run


def _finished_elsewhere(runs_root: Path, name: str, key: str) -> Path | None:
    """A data stage with this content key that another sweep under ``runs_root`` has finished: the same parameters
    on the same input, so its output is this sweep's too (a second study of heads reuses the first's embeddings).
    None when no sweep has finished it (this sweep then runs it in its own ``stages/`` folder)."""
    for folder in sorted(Path(runs_root).glob(f"*/{STAGES_DIR}/{name}-{key}")):
        if read_status(folder).get("state") == RunState.DONE:
            return folder.resolve()
    return None


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
