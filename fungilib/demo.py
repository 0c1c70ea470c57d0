"""The main job on the embedded sample: generate it, serve it on loopback, run the stage notebooks in order,
the sweep, and export the best run as the offline web classifier."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fungilib.notebooks import NOTEBOOKS_DIR, NotebookRun, run_notebook, stage_defaults
from fungilib.sample import ARCHIVE_NAME, DEFAULT_PORT, ensure_sample

STAGE_NOTEBOOKS = [
    ("ingest_eda", "01_ingest_eda.ipynb", "ingest"),
    ("download", "02_download.ipynb", "download"),
    ("clean", "03_clean.ipynb", "clean"),
    ("train", "04_train.ipynb", "train"),
]


@dataclass
class DemoResult:
    root: Path
    runs: list[NotebookRun]
    sweep: Any = None


def stage_paths(root: Path) -> dict[str, dict[str, str]]:
    """Where each stage of a pipeline rooted at ``root`` reads and writes (absolute paths)."""
    root = Path(root).resolve()
    return {
        "ingest_eda": {"archive": str(root / "sample" / ARCHIVE_NAME), "out": str(root / "ingest")},
        "download": {"observations": str(root / "ingest"), "out": str(root / "download"),
                     "sample_dir": str(root / "sample")},
        "clean": {"observations": str(root / "ingest"), "downloads": str(root / "download"), "out": str(root / "clean")},
        "train": {"manifest": str(root / "clean"), "out": str(root / "train")},
    }


def _headline(run_dir: Path) -> str:
    import json

    m = json.loads((run_dir / "metrics.json").read_text())
    return f"top-1 {m['top1']:.3f}, top-3 {m['top3']:.3f}, macro-F1 {m['macro_f1']:.3f} on {m['images']} images"


def run_demo(root: Path, observations: int = 700, port: int = DEFAULT_PORT,
             sweep_file: Path | None = None) -> DemoResult:
    """Generate the sample under ``root/sample`` (once) and execute the stage notebooks into ``root/<stage>/``."""
    root = Path(root).resolve()
    ensure_sample(root / "sample", observations=observations, base_url=f"http://127.0.0.1:{port}")
    runs = []
    paths = stage_paths(root)
    for stage, notebook, folder in STAGE_NOTEBOOKS:
        parameters = {**stage_defaults(stage), **paths[stage]}
        if stage == "download":
            # the sample's server is on loopback: a short timeout keeps its planted slow response from idling the demo
            parameters.update(sample_port=port, timeout=3.0, retries=2)
        print(f"[demo] {notebook} → {root / folder}", flush=True)
        run = run_notebook(NOTEBOOKS_DIR / notebook, root / folder / notebook, parameters, f"params/{stage}.yaml")
        print(f"[demo]   done in {run.seconds:.0f} s", flush=True)
        if stage == "train":
            print(f"[demo]   test split: {_headline(root / folder)}", flush=True)
        runs.append(run)
    sweep = None
    if sweep_file is not None:
        from fungilib.sweep import run_sweep

        print(f"[demo] sweep {sweep_file}", flush=True)
        sweep = run_sweep(sweep_file, root.parent, workers=2)  # two at a time: start-up overlaps the other's fit
    best = root / "train"
    if sweep is not None:
        from fungilib.errors import FungilibError
        from fungilib.runs_index import best_run

        try:
            best = best_run(root.parent, sweep.sweep.name)
        except FungilibError as exc:  # no finished sweep run: export the demo's own training run
            print(f"[demo] {exc}; exporting {best}", flush=True)
    bundle = root / "export" / "bundle"
    print(f"[demo] 05_export.ipynb: {best} → {bundle}", flush=True)
    parameters = {**stage_defaults("export"), "run": str(best), "out": str(bundle)}
    run = run_notebook(NOTEBOOKS_DIR / "05_export.ipynb", root / "export" / "05_export.ipynb", parameters,
                       "params/export.yaml")
    runs.append(run)
    print(f"[demo]   done in {run.seconds:.0f} s\n[demo] the offline classifier: fungilib serve {bundle}  "
          "→  open http://127.0.0.1:8000/ once; it then works offline", flush=True)
    return DemoResult(root, runs, sweep)
