"""The ``fungilib`` command: one sub-command per stage (from the stage registry), plus the sample, sweeps,
runs, serving, prediction and the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fungilib import __version__
from fungilib.artifacts.dataset import LABELS_CSV, MANIFEST_FILE
from fungilib.errors import FungilibError
from fungilib.params import ParamLayers, parse_value
from fungilib.sample import DEFAULT_OBSERVATIONS
from fungilib.stages import COMMANDS, Command, Flag, command_layers, stage

OVERRIDES = "overrides"  # the namespace attribute holding (key, value, source) in command-line order


class _Override(argparse.Action):
    """Record a flag (or ``--set KEY=VALUE``) as one override, in the order given on the command line."""

    def __init__(self, *args: Any, flag: Flag | None = None, **kwargs: Any) -> None:
        self.flag = flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        recorded = getattr(namespace, OVERRIDES, None) or []
        setattr(namespace, OVERRIDES, recorded)
        if self.flag is None:  # --set KEY=VALUE
            key, sep, raw = str(values).partition("=")
            source = f"--set {values}"
            if not sep or not key.strip():
                raise FungilibError(f"--set expects KEY=VALUE, got {values!r}")
            recorded.append((key.strip(), parse_value(raw, source), source))
            return
        flag = self.flag
        if flag.switch:
            recorded.append((flag.key, flag.const, option_string or flag.key))
            return
        if values is None:  # an optional positional left out
            return
        source = f"{option_string} {values}" if option_string else f"{flag.key} {values}"
        recorded.append((flag.key, values if flag.path else parse_value(values, source), source))


def _add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    p = sub.add_parser(command.name, help=command.help, description=command.help + ". Parameters: the stage's "
                       "defaults file < --params FILE < flags and --set, in the order given.")
    p.set_defaults(**{OVERRIDES: []})
    for flag in command.flags:
        if flag.option is None:
            p.add_argument(flag.key.replace(".", "_"), nargs="?", default=None, action=_Override, flag=flag,
                           help=f"{flag.help} (= --set {flag.key}=...)")
        elif flag.switch:
            p.add_argument(flag.option, nargs=0, action=_Override, flag=flag,
                           help=f"{flag.help} (= --set {flag.key}={json.dumps(flag.const)})")
        else:
            p.add_argument(flag.option, action=_Override, flag=flag, metavar=flag.key.rpartition(".")[2].upper(),
                           help=f"{flag.help} (= --set {flag.key}=...)")
    p.add_argument("--params", type=Path, help="a YAML file of parameters laid over the stage's defaults file")
    p.add_argument("--set", action=_Override, metavar="KEY=VALUE",
                   help="set one parameter (dotted keys for groups: fit.epochs=3); values are YAML")


def command_params(args: argparse.Namespace) -> Any:
    """A stage command's parameters object: defaults file < --params < flags and --set in the order given."""
    layers: ParamLayers = command_layers(args.command, args.params)
    for key, value, source in getattr(args, OVERRIDES, []):
        layers.set(key, value, source)
    _, command = COMMANDS[args.command]
    try:
        return layers.build(command.params_class)
    except FungilibError as exc:
        missing = str(exc).split("missing required parameter '", 1)
        flag = next((f for f in command.flags if len(missing) == 2 and missing[1].startswith(f.key + "'")), None)
        if flag is None:
            raise
        how = flag.option or f"the {flag.key.upper()} argument"
        raise FungilibError(f"{exc}: give {how} (or --set {flag.key}=...)") from None


def _plain(value: Any) -> Any:
    """A result as JSON-able values: dataclasses as mappings, paths as strings, tables left out (printed apart)."""
    import pandas as pd

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not isinstance(getattr(value, f.name), pd.DataFrame | pd.Series)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _print_result(result: object) -> None:
    for name in getattr(type(result), "printed_tables", ()):
        print(getattr(result, name).to_string(index=False))
    print(json.dumps(_plain(result), indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fungilib", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fungilib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate the embedded sample archive, or serve its images on loopback")
    p.add_argument("action", nargs="?", choices=["generate", "serve"], default="generate")
    p.add_argument("--out", type=Path, default=Path("runs/demo/sample"), help="sample folder")
    p.add_argument("--observations", type=int, default=DEFAULT_OBSERVATIONS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8765, help="loopback port the archive's URLs point at")
    p.add_argument("--slow-seconds", type=float, default=30.0, help="(serve) how long the planted slow response waits")
    p.add_argument("--latency", type=float, default=0.0, help="(serve) seconds added before every response")
    p.add_argument("--no-faults", action="store_true", help="(serve) serve every file plainly (benchmarks)")
    p.add_argument("--scale", action="store_true", help="(generate) a seed-scale rehearsal: --species species with "
                   "a GBIF-like long tail, about --photos photo URLs the server draws on request")
    p.add_argument("--species", type=int, default=2451, help="(--scale) number of species")
    p.add_argument("--photos", type=int, default=98_000, help="(--scale) number of photo URLs")
    p.add_argument("--image-size", type=int, default=128, help="(--scale) side of the drawn photos, px")

    for _, command in COMMANDS.values():
        _add_command(sub, command)

    p = sub.add_parser("weights", help="fill the offline caches with pretrained weights (on a connected machine)")
    p.add_argument("action", choices=["fetch", "where"])
    p.add_argument("name", help="a base model name (see fungilib.models.BASES) or a TF Hub handle")

    p = sub.add_parser("sweep", help="run a sweep file: papermill across a grid/random search, locally or on Dask")
    p.add_argument("sweep_file", type=Path)
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--workers", type=int, default=0, help="parallel runs in a local process pool (default: cores/2)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scheduler", help="submit the runs to an existing Dask cluster, e.g. tcp://host:8786")
    group.add_argument("--local-cluster", type=int, default=0, metavar="N",
                       help="start a Dask LocalCluster of N workers")
    p.add_argument("--gpus", default="", metavar="IDS",
                   help="local pool: place runs on these GPUs (e.g. 0,1,2,3), each run seeing only its own")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="K", help="with --gpus: runs sharing one GPU")
    p.add_argument("--gpu-resource", action="store_true",
                   help='Dask: each run holds one "GPU" resource (workers started with --resources GPU=1)')

    p = sub.add_parser("runs", help="the runs table (rebuilds runs/index.h5 and runs/index.csv)")
    p.add_argument("sweep", nargs="?")
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--sort", default="val_top1",
                   help="column to sort by (default: validation top-1, the metric runs are chosen on; the test "
                        "columns are reported, never chosen on)")

    p = sub.add_parser("serve", help="serve an export bundle's offline web classifier on 127.0.0.1")
    p.add_argument("bundle", type=Path, help="an export folder (or a run folder holding export/)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")

    p = sub.add_parser("predict", help="top-k species and the rank-aware verdict for photos or folders of photos")
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", type=Path, required=True, help="a training run folder or an export bundle")
    p.add_argument("--top", type=_positive, default=5, help="species listed per photo (at least 1)")
    p.add_argument("--threshold", type=float, help="verdict threshold (default: the bundle's, else 0.6)")
    p.add_argument("--no-open-set", action="store_true",
                   help="always name the nearest species, even for a photo the model's open-set gate (fitted on "
                        "species held out of training) says is not a species it knows")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per photo (JSON Lines) instead of a table")
    p.add_argument("--group-by", help="answer finds, not photos: 'folder' (each folder is one find) or a CSV of "
                                      "path,find_id; photos of one find are combined, each photo's answer kept")
    p.add_argument("--batch-size", type=int, default=512,
                   help="photos decoded and prepared together (photos of one size are resized in one call)")

    p = sub.add_parser("tensorboard", help="TensorBoard over a sweep's runs (or all runs), on 127.0.0.1")
    p.add_argument("sweep", nargs="?", help="a sweep name under runs/ (default: every run)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("report", help="render a run's executed notebooks to HTML")
    p.add_argument("run", type=Path)

    p = sub.add_parser("demo", help="the main job on the embedded sample: sample → ingest/EDA → download → clean")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--observations", type=int, default=DEFAULT_OBSERVATIONS)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--sweep", type=Path, help="a sweep file to run after the stage notebooks")
    return parser


def _positive(text: str) -> int:
    if not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return int(text)


def _print_runs_table(runs_root: Path, sweep: str | None, sort: str) -> None:
    from fungilib.runs_index import runs_table_text

    print(runs_table_text(runs_root, sweep, sort))


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise FungilibError(f"--port {port}: a port is a number from 1 to 65535 (0: any free port)")


def _sample_command(args: argparse.Namespace) -> int:
    from fungilib.sample import SampleSpec, generate_sample
    from fungilib.sample_server import SampleServer

    if args.action == "serve":
        with SampleServer(args.out, port=args.port, slow_seconds=args.slow_seconds, latency=args.latency,
                          faults={} if args.no_faults else None) as server:
            print(f"serving {args.out / 'media'} at {server.base_url}/ (Ctrl-C stops)", flush=True)
            try:
                server._thread.join()
            except KeyboardInterrupt:
                pass
        return 0
    if args.scale:
        from fungilib.sample_scale import ScaleSpec, generate_scale_sample

        sample = generate_scale_sample(ScaleSpec(out=args.out, species=args.species, photos=args.photos,
                                                 seed=args.seed, image_size=args.image_size,
                                                 base_url=f"http://127.0.0.1:{args.port}"))
    else:
        sample = generate_sample(SampleSpec(out=args.out, observations=args.observations, seed=args.seed,
                                            base_url=f"http://127.0.0.1:{args.port}"))
    print(f"wrote {sample.archive} ({sample.occurrences} occurrences, {sample.media_rows} media rows); "
          f"serve its images with: fungilib sample serve --out {args.out} --port {args.port}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from fungilib.demo import run_demo

    result = run_demo(args.out, args.observations, args.port, args.sweep)
    root = result.root
    print(f"\nThe demo is in {root}:")

    notebooks = [r.folder / stage(r.stage).notebook_path.name for r in result.runs]
    print(f"  executed notebooks: {', '.join(str(n.relative_to(root)) for n in notebooks)}"
          + (f" ({result.skipped} unchanged, not rerun)" if result.skipped else ""))
    print(f"  manifest and labels: {root / 'clean' / MANIFEST_FILE}, {root / 'clean' / LABELS_CSV}")
    print(f"  plots: {root / 'ingest'}/*.png, {root / 'clean' / 'splits.png'}")
    if result.sweep is not None:
        print(f"\nThe sweep {result.sweep.sweep.name} (runs/{result.sweep.sweep.name}/):")
        _print_runs_table(root.parent, result.sweep.sweep.name, "val_top1")
    print(f"\nOpen it all: .venv/bin/jupyter lab {root.parent}")
    return 1 if result.sweep is not None and result.sweep.failed else 0


def _sweep_command(args: argparse.Namespace) -> int:
    from fungilib.gpus import parse_gpus
    from fungilib.sweep import run_sweep

    gpus = parse_gpus(args.gpus, args.runs_per_gpu) if args.gpus else None  # checked before anything runs
    result = run_sweep(args.sweep_file, args.runs_root, args.workers, args.scheduler, args.local_cluster, gpus,
                       args.runs_per_gpu, args.gpu_resource)
    _print_runs_table(args.runs_root, result.sweep.name, "val_top1")
    print(f"\n{len(result.executed)} executed, {result.skipped} already done (cached), "
          f"{len(result.failed)} failed" + (f", {len(result.elsewhere)} being run by another process"
                                            if result.elsewhere else ""))
    for failed in result.failed:
        print(f"  failed: {failed.get('run_id')}: {failed.get('error')}")
    return 1 if result.failed else 0


def _predict_command(args: argparse.Namespace) -> int:
    from fungilib.predict import as_json, format_one, iter_predictions

    if args.group_by:
        from fungilib.predict_finds import print_finds

        return print_finds(args.images, args.model, args.group_by, args.top, args.threshold, args.no_open_set,
                           args.json)
    count = failed = 0
    for prediction in iter_predictions(args.images, args.model, args.top, args.threshold,
                                       batch_size=args.batch_size, progress=None,
                                       no_open_set=args.no_open_set):
        count += 1
        failed += not prediction.ok
        print(json.dumps(as_json(prediction)) if args.json else format_one(prediction, args.top), flush=True)
    if not count:
        raise FungilibError("no images found in " + ", ".join(map(str, args.images)))
    if failed:
        print(f"fungilib: {failed} of {count} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def _tensorboard_command(args: argparse.Namespace) -> int:
    from fungilib.runs_index import tensorboard_command

    cmd = tensorboard_command(args.runs_root, args.sweep, args.host, args.port)
    print(" ".join(cmd), flush=True)
    import subprocess

    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def _serve_command(args: argparse.Namespace) -> int:
    from fungilib.serve import bundle_dir, make_server

    server = make_server(args.bundle, args.host, args.port)
    print(f"serving {bundle_dir(args.bundle)} at http://{args.host}:{server.server_address[1]}/ "
          "(open it once online; it then works offline) — Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from fungilib.runs_index import render_report

    for path in render_report(args.run):
        print(path)
    return 0


def _runs_command(args: argparse.Namespace) -> int:
    _print_runs_table(args.runs_root, args.sweep, args.sort)
    return 0


def _weights_command(args: argparse.Namespace) -> int:
    from fungilib.models import fetch_weights, hub_cache_dir, keras_cache_dir, spec_for

    if args.action == "where":
        print(hub_cache_dir() if spec_for(args.name).hub_handle else keras_cache_dir())
        return 0
    print(f"cached in {fetch_weights(args.name)}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sample": _sample_command,
    "demo": _demo_command,
    "sweep": _sweep_command,
    "predict": _predict_command,
    "tensorboard": _tensorboard_command,
    "serve": _serve_command,
    "report": _report_command,
    "runs": _runs_command,
    "weights": _weights_command,
}


def _stage_command(args: argparse.Namespace) -> int:
    """A stage's sub-command (built from the registry): its entry function on its parameters."""
    _, command = COMMANDS[args.command]
    _print_result(command.entry_function(command_params(args)))
    return 0


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "port", None) is not None:
        _check_port(args.port)
    return HANDLERS.get(args.command, _stage_command)(args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except FungilibError as exc:
        print(f"fungilib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fungilib: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
