"""The stage registry: every stage's notebook, parameters, defaults file, inputs, outputs, entry function and
command-line flags. The CLI, the demo, the sweep planner, the runs index and the tests read it; nothing else
lists stages."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fungilib.errors import FungilibError
from fungilib.fsutil import PROJECT_ROOT
from fungilib.params import ParamLayers, build_params, read_yaml

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "params"
SOURCE = "<source>"  # what a pipeline starts from: an archive, a manifest folder or an image folder


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Flag:
    """A command-line flag: shorthand for ``--set KEY=VALUE`` (``const`` flags set a fixed value)."""

    key: str  # the dotted parameter it sets
    option: str | None = None  # "--max-side"; None: a positional argument
    help: str = ""
    path: bool = False  # taken as written (not parsed as YAML)
    const: Any = None  # with switch: the value the flag alone sets
    switch: bool = False


@dataclass(frozen=True)
class Runnable:
    """What the registry runs: a parameters class and an entry function, both imported only when used (data
    stages never import TensorFlow)."""

    name: str
    params: str  # "module:Class"
    entry: str  # "module:function" taking the parameters object

    @property
    def params_class(self) -> type:
        return _load(self.params)

    @property
    def entry_function(self) -> Callable[..., Any]:
        return _load(self.entry)


@dataclass(frozen=True)
class Command(Runnable):
    """A ``fungilib`` sub-command that runs a stage (or one half of it) on its parameters object."""

    help: str = ""
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class Stage(Runnable):
    """One stage of the pipeline: a module's entry function, its notebook and its defaults file."""

    notebook: str | None = None  # under notebooks/; None for command-only stages
    reads: Mapping[str, str] = field(default_factory=dict)  # dotted parameter → the stage whose ``out`` it reads
    folder: str = ""  # its folder under a pipeline's root (runs/demo/<folder>)
    commands: tuple[Command, ...] = ()
    runner_parameters: tuple[str, ...] = ()  # notebook parameters that are not stage parameters (sample_dir)
    sweepable: bool = True  # may be a stage of a sweep's pipeline
    # its entry resumes (or skips) from what its folder holds — a training run's backup, its finished model — so a
    # folder last run with other inputs or parameters is emptied before it runs (never resumed with stale weights)
    resumes: bool = False
    # dotted parameter → a stage whose ``out`` it reads when that stage is part of the pipeline (else left as it is)
    optional_reads: Mapping[str, str] = field(default_factory=dict)

    @property
    def defaults_file(self) -> Path:
        return PARAMS_DIR / f"{self.name}.yaml"

    @property
    def notebook_path(self) -> Path:
        if self.notebook is None:
            raise FungilibError(f"stage {self.name} has no notebook")
        return NOTEBOOKS_DIR / self.notebook

    def defaults(self) -> dict[str, Any]:
        """``params/<stage>.yaml`` (empty when there is none)."""
        return read_yaml(self.defaults_file) if self.defaults_file.exists() else {}

    def inputs(self, outs: Mapping[str, str]) -> dict[str, Any]:
        """The stage's input paths as nested parameter values: each producer's ``out`` in ``outs``; a producer
        that is not part of this pipeline is replaced by its source (``outs[SOURCE]``, e.g. a manifest folder)."""
        layers = ParamLayers()
        for dotted, producer in self.reads.items():
            layers.set(dotted, outs.get(producer, outs.get(SOURCE)), "pipeline")
        for dotted, producer in self.optional_reads.items():
            if producer in outs:
                layers.set(dotted, outs[producer], "pipeline")
        return layers.values


_PATH = {"path": True}
STAGES: dict[str, Stage] = {stage.name: stage for stage in [
    Stage("ingest_eda", "fungilib.eda:IngestEdaParams", "fungilib.composed:ingest_and_describe", "01_ingest_eda.ipynb",
          {"archive": SOURCE}, "ingest", runner_parameters=("sample_dir",), commands=(
              Command("ingest", "fungilib.ingest:IngestParams", "fungilib.ingest:ingest",
                      "read a GBIF Darwin Core Archive into observations.h5",
                      (Flag("archive", help="a DwC-A .zip, .tgz or folder", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH))),
              Command("eda", "fungilib.eda:EdaParams", "fungilib.eda:run_eda",
                      "class distribution, Pareto curve, cut table and plots of observations.h5",
                      (Flag("observations", help="folder of observations.h5", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH))))),
    Stage("download", "fungilib.download:DownloadParams", "fungilib.download:download_images", "02_download.ipynb",
          {"observations": "ingest_eda"}, "download", runner_parameters=("sample_dir", "sample_port"), commands=(
              Command("download", "fungilib.download:DownloadParams", "fungilib.download:download_images",
                      "download, check and resize every image of observations.h5",
                      (Flag("observations", help="folder of observations.h5", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH),
                       Flag("workers", "--workers", "concurrent downloads"),
                       Flag("max_side", "--max-side", "resize-on-save: longest side in pixels"),
                       Flag("scheduler", "--scheduler", "run the photos in shards on this Dask scheduler "
                            "(tcp://host:8786); every worker must see the output folder", path=True),
                       Flag("local_cluster", "--local-cluster", "or on a Dask LocalCluster of N worker processes"))),)),
    Stage("clean", "fungilib.clean:CleanParams", "fungilib.clean:clean_dataset", "03_clean.ipynb",
          {"observations": "ingest_eda", "downloads": "download"}, "clean", commands=(
              Command("clean", "fungilib.clean:CleanParams", "fungilib.clean:clean_dataset",
                      "dedupe, filter and split the downloads into manifest.h5 and the label table",
                      (Flag("observations", "--observations", "folder of observations.h5", **_PATH),
                       Flag("downloads", "--downloads", "folder of downloads.h5", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH),
                       Flag("min_per_class", "--min-per-class", "classes with fewer images are dropped"),
                       Flag("seed", "--seed", "seed of the split and the per-class cap"))),)),
    Stage("embed", "fungilib.embed:EmbedParams", "fungilib.embed:embed", "03b_embed.ipynb",
          {"manifest": "clean"}, "embed", commands=(
              Command("embed", "fungilib.embed:EmbedParams", "fungilib.embed:embed",
                      "the pooled features of every photo of a manifest under a frozen base, once, for head runs "
                      "on them (train --set dataset.embeddings=DIR)",
                      (Flag("manifest", "--manifest", "the clean stage's folder (manifest.h5)", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH))),)),
    Stage("import_folder", "fungilib.image_folder:FolderParams", "fungilib.image_folder:import_folder", None,
          {"source": SOURCE}, "import", sweepable=False, commands=(
              Command("import-folder", "fungilib.image_folder:FolderParams", "fungilib.image_folder:import_folder",
                      "turn a folder of class folders (DIR/<label>/*.jpg) or a labels CSV "
                      "(path,label[,group,genus,family]) into a manifest for training",
                      (Flag("source", help="DIR/<label>/... or a CSV", **_PATH),
                       Flag("out", "--out", "the output folder", **_PATH))),)),
    Stage("train", "fungilib.train:TrainParams", "fungilib.composed:train_and_evaluate", "04_train.ipynb",
          {"dataset.manifest": "clean"}, "train", optional_reads={"dataset.embeddings": "embed"}, commands=(
              Command("train", "fungilib.train:TrainParams", "fungilib.composed:train_and_evaluate",
                      "train a classifier on a manifest (resumes when rerun with the same --out), then evaluate it",
                      (Flag("dataset.manifest", "--manifest", "the clean stage's folder (manifest.h5)", **_PATH),
                       Flag("out", "--out", "the run folder", **_PATH),
                       Flag("evaluate", "--no-evaluate", "skip the test-split evaluation", const=False,
                            switch=True))),),
          resumes=True),
    Stage("evaluate", "fungilib.evaluate:EvaluateParams", "fungilib.evaluate:evaluate_run", None,
          {"run": "train"}, "train", sweepable=False, commands=(
              Command("evaluate", "fungilib.evaluate:EvaluateParams", "fungilib.evaluate:evaluate_run",
                      "evaluate a trained run on its test split (metrics.json and plots)",
                      (Flag("run", help="a training run folder", **_PATH),
                       Flag("manifest", "--manifest", "default: the manifest the run was trained on", **_PATH),
                       Flag("temperature_scaling", "--no-temperature", "skip temperature scaling", const=False,
                            switch=True))),)),
    Stage("export", "fungilib.export:ExportParams", "fungilib.export:export_run", "05_export.ipynb",
          {"run": "train"}, "export", sweepable=False, commands=(
              Command("export", "fungilib.export:ExportParams", "fungilib.export:export_run",
                      "export a trained run: SavedModel, TFLite, TF.js and the offline web page, with a parity "
                      "check against Keras",
                      (Flag("run", help="a training run folder", **_PATH),
                       Flag("out", "--out", "the bundle folder (default RUN/export)", **_PATH))),)),
]}
SWEEP_PIPELINE = [name for name, stage in STAGES.items() if stage.sweepable]  # in pipeline order
DEMO_PIPELINE = ["ingest_eda", "download", "clean", "train"]  # then the sweep, then export of the best run
COMMANDS: dict[str, tuple[Stage, Command]] = {c.name: (s, c) for s in STAGES.values() for c in s.commands}
PATH_PARAMETERS = sorted({"out", *(k.rpartition(".")[2] for s in STAGES.values() for k in s.reads),
                          *(p for s in STAGES.values() for p in s.runner_parameters)})


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise FungilibError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None


def command_layers(name: str, params_file: Path | None = None) -> ParamLayers:
    """The first layers of a command's parameters: the stage's defaults file (the keys its class has), then
    ``--params FILE``."""
    owner, command = COMMANDS[name]
    fields = {f.name for f in dataclasses.fields(command.params_class)}
    layers = ParamLayers("command line")
    if owner.defaults_file.exists():
        layers.add_file(owner.defaults_file, only=fields)
    if params_file is not None:
        layers.add_file(params_file)
    return layers


def notebook_params(name: str, namespace: Mapping[str, Any]) -> Any:
    """A stage's parameters object from its notebook's parameters cell (papermill's injected values included)."""
    cls = stage(name).params_class
    names = [f.name for f in dataclasses.fields(cls)]
    return build_params(cls, {n: namespace[n] for n in names if n in namespace}, "notebook parameters")


def run_stage(name: str, params: Any) -> Any:
    """Call a stage's entry function on its parameters object."""
    return stage(name).entry_function(params)


def check_notebook_parameters(name: str, values: Mapping[str, Any], source: str) -> None:
    """Names against the notebook's parameters cell, types and values against the stage's parameter class
    (paths that are only known at run time filled with a placeholder)."""
    from fungilib.notebooks import check_parameters

    st = stage(name)
    check_parameters(st.notebook_path, dict(values), f"{source}: {name}")
    fields = {f.name for f in dataclasses.fields(st.params_class)}
    layers = ParamLayers(f"{source}: {name}")
    for dotted in [*st.reads, "out"]:
        layers.set(dotted, "-", "pipeline")
    layers.add_mapping({k: v for k, v in values.items() if k in fields}, f"{source}: {name}")
    layers.build(st.params_class)
