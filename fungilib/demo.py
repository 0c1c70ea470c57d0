"""The main job on the embedded sample: generate it, serve it on loopback, run the stage notebooks in order
(from the stage registry), the sweep, and export the best run as the offline web classifier. A rerun with
nothing changed only reports: every stage is keyed by its parameters and what its inputs contain."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fungilib.artifacts.run_record import OUTPUT_DIR, read_status
from fungilib.artifacts.trained_run import TrainedRun
from fungilib.data_version import content_key, source_version
from fungilib.errors import FungilibError
from fungilib.fsutil import PROJECT_ROOT
from fungilib.kernel_pool import start_pool
from fungilib.params import deep_merge, read_yaml
from fungilib.run_execution import StageRun, execute
from fungilib.sample import ARCHIVE_NAME, DEFAULT_OBSERVATIONS, DEFAULT_PORT, SPEC_FILE, ensure_sample
from fungilib.stages import DEMO_PIPELINE, SOURCE, stage
from fungilib.sweep_plan import stage_parameters


@dataclass
class DemoResult:
    root: Path
    runs: list[StageRun]
    sweep: Any = None
    skipped: int = 0


def _runner(name: str, root: Path, port: int) -> dict[str, Any]:
    """What the demo adds to a stage's parameters: the sample to serve, and (download) a short timeout so the
    sample server's planted slow response does not idle the demo."""
    if name == "ingest_eda":
        return {"sample_dir": str(root / "sample")}
    if name == "download":
        return {"sample_dir": str(root / "sample"), "sample_port": port}
    return {}


# two of the sample's species are kept out of training: the demo's model learns the others, and its "not a species
# this model knows" answer is fitted and measured on photos of the two it never saw (the morel's deadly look-alike,
# the false morel, stays in: a morel must be turned away, not named as it)
DEMO_HELD_OUT = ["Coprinus comatus", "Morchella esculenta"]
# the sample's toxicity list (synthetic, marked so in every row): evaluation reports how often a deadly or toxic
# species is named as an edible one, the page marks toxic species and warns on a toxic look-alike
TOXICITY_SAMPLE = PROJECT_ROOT / "params" / "toxicity-sample.csv"
# the sample's photos are drawn, not photographed: the demo trains the sample's recipe (MobileNetV3Small from scratch,
# 96 px; params/recipes/sample.yaml) where the default for a user's photos is the pretrained EfficientNet-Lite0
SAMPLE_RECIPE = PROJECT_ROOT / "params" / "recipes" / "sample.yaml"
DEMO_VALUES = {"download": {"timeout": 3.0, "retries": 2}, "clean": {"holdout_species": DEMO_HELD_OUT},
               "train": {**read_yaml(SAMPLE_RECIPE), "toxicity": str(TOXICITY_SAMPLE)},
               "export": {"toxicity": str(TOXICITY_SAMPLE)}}


def _headline(run_dir: Path) -> str:
    m = TrainedRun(run_dir).metrics()
    return (f"validation top-1 {m.get('val_top1', float('nan')):.3f} ({m.get('val_images', 0)} images); test top-1 "
            f"{m['top1']:.3f}, top-3 {m['top3']:.3f}, macro-F1 {m['macro_f1']:.3f} ({m['images']} images)")


def _science(run_dir: Path) -> str:
    """What the prior, the open-set gate and the toxicity list do on the test split, from the run's metrics."""
    m = TrainedRun(run_dir).metrics()
    parts = []
    if "top1_with_prior" in m:
        parts.append(f"with the place-and-season prior (weight {m['prior_weight']:.2f}, fitted on validation): top-1 "
                     f"{m['top1']:.3f} → {m['top1_with_prior']:.3f}")
    if "poisonous_as_edible" in m:
        after = m.get("poisonous_as_edible_with_prior")
        parts.append(f"deadly or toxic photos named edible {m['poisonous_as_edible']:.3f}"
                     + (f" → {after:.3f} with the prior" if after is not None else ""))
    if "open_set_auroc" in m:
        parts.append(f"unseen species: {m['open_set_score']} AUROC {m['open_set_auroc']:.3f}, named "
                     f"{m['unknown_named_before']:.2f} → {m['unknown_named']:.2f} with the gate, known turned away "
                     f"{m['known_turned_away']:.2f}")
    return "; ".join(parts)


def _validation_key(metrics: dict) -> tuple[float, float]:
    return (metrics.get("val_top1", float("-inf")), metrics.get("val_macro_f1", float("-inf")))


def _run_once(run: StageRun) -> bool:
    """Execute ``run`` unless it is done with the same key; True when it ran. A failure stops the demo."""
    if run.done:
        print(f"[demo] {run.stage}: unchanged since its last run ({run.folder}), skipped", flush=True)
        return False
    print(f"[demo] {stage(run.stage).notebook} → {run.folder}", flush=True)
    status = execute(run, wait=True)  # a second `make demo` at the same time waits for this one's stage
    if status.get("skipped"):
        print("[demo]   finished meanwhile by another process, skipped", flush=True)
        return False
    if status["state"] != "done":
        raise FungilibError(f"{stage(run.stage).notebook} failed ({status['error']}); the executed notebook is "
                            f"{run.folder / stage(run.stage).notebook_path.name}")
    print(f"[demo]   done in {status['duration_s']:.0f} s", flush=True)
    return True


def run_demo(root: Path, observations: int = DEFAULT_OBSERVATIONS, port: int = DEFAULT_PORT,
             sweep_file: Path | None = None) -> DemoResult:
    """Generate the sample under ``root/sample`` (once) and execute the stage notebooks into ``root/<stage>/``."""
    root = Path(root).resolve()
    start_pool()  # the stages' kernels (and the sweep's) are forks of one warm zygote
    record = root / "sample" / SPEC_FILE
    drawn = record.read_text() if record.exists() else None
    ensure_sample(root / "sample", observations=observations, base_url=f"http://127.0.0.1:{port}")
    if drawn is not None and record.read_text() != drawn and (root / "download").is_dir():
        # the redrawn photos sit at the same URLs: the downloads of the old ones would pass for them
        print(f"[demo] the sample was drawn again: its earlier downloads ({root / 'download'}) are removed", flush=True)
        shutil.rmtree(root / "download")
    archive = root / "sample" / ARCHIVE_NAME
    outs = {SOURCE: str(archive)}
    # the archive and how its photos were drawn (the server serves them): a redrawn sample reruns every stage
    spec = json.loads(record.read_text())
    data = source_version(archive)
    input_key = content_key("sample", spec, data)
    runs, skipped = [], 0
    for name in DEMO_PIPELINE:
        st = stage(name)
        values = deep_merge(st.defaults(), DEMO_VALUES.get(name, {}))
        key = content_key(name, values, input_key)
        folder = root / st.folder
        run = StageRun(name, key, folder, stage_parameters(name, values, folder, outs, _runner(name, root, port)),
                       data=data)
        if name == "train":
            m = values["model"]
            print(f"[demo] train: {m['base']}, weights {m['weights']}, {values['dataset']['image_size']} px — the "
                  f"sample's recipe ({SAMPLE_RECIPE.relative_to(PROJECT_ROOT)}); for real photos the default is "
                  "EfficientNet-Lite0 from its packaged ImageNet weights (params/train.yaml)", flush=True)
        skipped += not _run_once(run)
        if name == "train":
            print(f"[demo]   {_headline(folder)}", flush=True)
            print(f"[demo]   {_science(folder)}", flush=True)
        runs.append(run)
        outs[name] = str(folder)
        input_key = key
    sweep = None
    best, best_key = root / "train", input_key
    if sweep_file is not None:
        from fungilib.runs_index import best_run
        from fungilib.sweep import run_sweep

        print(f"[demo] sweep {sweep_file}", flush=True)
        sweep = run_sweep(sweep_file, root.parent, workers=2)  # two at a time: start-up overlaps the other's fit
        try:
            current = {str(s.get("run_id")) for s in sweep.statuses}  # not runs left there from earlier data
            best_folder = best_run(root.parent, sweep.sweep.name, among=current)
            # the sweep's best against the demo's own run, on validation top-1 (then validation macro-F1)
            mine, theirs = TrainedRun(best).metrics(), TrainedRun(best_folder / OUTPUT_DIR).metrics()
            if _validation_key(theirs) > _validation_key(mine):
                best, best_key = best_folder / OUTPUT_DIR, read_status(best_folder).get("key", "")
        except FungilibError as exc:  # no finished sweep run: export the demo's own training run
            print(f"[demo] {exc}", flush=True)
        print(f"[demo] exporting {best}, the best on validation top-1 ({_headline(best)}); the test split is reported, "
              "never chosen on", flush=True)
    values = deep_merge(stage("export").defaults(), DEMO_VALUES["export"])
    folder = root / "export"
    run = StageRun("export", content_key("export", values, str(best), best_key), folder,
                   {**values, "run": str(best), "out": str(folder / "bundle")}, data=data)
    skipped += not _run_once(run)
    runs.append(run)
    print(f"[demo] the offline classifier: fungilib serve {folder / 'bundle'}  →  open http://127.0.0.1:8000/ "
          "once; it then works offline", flush=True)
    return DemoResult(root, runs, sweep, skipped)
