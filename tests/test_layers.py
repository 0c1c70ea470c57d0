"""The package's layers, read from its own source: artifacts at the bottom, stages that never import each other,
orchestration on top, no import cycles (function-local imports included), and every run-folder file name spelled
only in the artifacts layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fungilib"

# Each stage and the modules that are its parts; a stage's modules may import each other, never another stage's.
STAGES = {
    "sample": {"sample", "sample_scale", "sample_server"},
    "ingest": {"ingest"},
    "eda": {"eda"},
    "download": {"download", "download_params", "download_report", "download_shards", "photo_fetch"},
    "clean": {"clean"},
    "embed": {"embed"},
    "import_folder": {"image_folder"},
    "train": {"train", "train_params", "keras_parts", "multi_worker_fit", "head_fit"},
    "evaluate": {"evaluate"},
    "export": {"export", "export_checks", "model_card", "webapp", "tfjs_convert"},
    "predict": {"predict", "predict_finds"},
    "serve": {"serve"},
}
# Orchestration: the only modules that know several stages.
ORCHESTRATION = {"cli", "composed", "demo", "executors", "notebooks", "run_execution", "runs_index", "search",
                 "stages", "sweep", "sweep_file", "sweep_plan", "compare", "kernel_pool", "kernel_zygote",
                 "kernel_launcher"}
STAGE_MODULES = {m for modules in STAGES.values() for m in modules}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the fungilib modules it imports anywhere in its file (top level or inside functions)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fungilib"):
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names if a.name.startswith("fungilib")]
            else:
                continue
            targets |= {c for c in candidates if c in files and c not in (name, "fungilib")}
        graph[name] = targets
    return graph


def _short(module: str) -> str:
    return module.removeprefix("fungilib.")


def test_no_import_cycles_function_local_imports_included() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(map(_short, c)) for c in cycles)


def test_stage_modules_import_no_other_stage_and_no_orchestration() -> None:
    graph = import_graph()
    owner = {m: stage for stage, modules in STAGES.items() for m in modules}
    wrong = []
    for module, targets in graph.items():
        name = _short(module)
        for target in map(_short, targets):
            if name in owner and target in owner and owner[target] != owner[name]:
                wrong.append(f"{name} (stage {owner[name]}) imports {target} (stage {owner[target]})")
            if name not in ORCHESTRATION and target in ORCHESTRATION:
                wrong.append(f"{name} imports the orchestration module {target}")
            if name.startswith("artifacts") and not target.startswith("artifacts") and target in (
                    STAGE_MODULES | ORCHESTRATION):
                wrong.append(f"{name} (artifacts) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer() -> None:
    """A new module is placed on purpose: a stage's part, orchestration, the artifacts layer or a shared helper
    (listed here so that a stage module is never added as a 'helper' by accident)."""
    helpers = {"errors", "fsutil", "params", "plotting", "tables", "dwc_terms", "dwca", "data_version", "claims",
               "host_policy", "http_client", "photos", "split", "metrics", "history", "rollup", "open_set",
               "feature_scores", "model_outputs", "place_prior", "toxicity", "litert", "input_pipeline", "models",
               "distribution", "gpus", "sample_art",
               "contact_sheets", "dataset_builder", "optuna_storage", "search_space", "dask_cluster", "torch_weights",
               "find_metrics", "pretrained_bases", "confusion_order", "__init__"}
    modules = {_short(m) for m in import_graph()}
    unplaced = {m for m in modules if not m.startswith("artifacts")} - STAGE_MODULES - ORCHESTRATION - helpers
    assert not unplaced, f"modules in no layer: {sorted(unplaced)}"
    gone = (STAGE_MODULES | ORCHESTRATION | helpers) - modules - {"__init__"}
    assert not gone, f"listed but missing: {sorted(gone)}"


def _artifact_file_names() -> set[str]:
    names = set()
    for path in (PACKAGE / "artifacts").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(
                    node.value.value, str) and "." in node.value.value and " " not in node.value.value:
                names.add(node.value.value)
    return names


def test_run_folder_file_names_are_spelled_only_in_the_artifacts_layer() -> None:
    names = _artifact_file_names()
    assert {"model.keras", "metrics.json", "labels.csv", "history.csv", "status.json", "manifest.h5",
            "config.json", "train_summary.json", "downloads.h5", "observations.h5"} <= names
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "artifacts":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "run-folder file names outside fungilib/artifacts:\n" + "\n".join(found)


def test_modules_stay_readable_in_one_sitting() -> None:
    """~400 lines at most; the exceptions each hold one job (reading a Darwin Core Archive; drawing the sample)."""
    one_job = {"dwca", "sample"}
    long = {_short(_module_name(p)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {m: n for m, n in long.items() if n > 400 and m not in one_job}
