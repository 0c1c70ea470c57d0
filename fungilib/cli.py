"""The ``fungilib`` command: one sub-command per stage, plus the sample and the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from fungilib import __version__
from fungilib.errors import FungilibError
from fungilib.params import load_params


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs, values parsed as YAML (so numbers, booleans and lists keep their types)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise FungilibError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = yaml.safe_load(raw)
    return values


def _print_result(result: object) -> None:
    data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result  # type: ignore[arg-type]
    print(json.dumps(data, indent=2, default=str))


def _stage_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--params", type=Path, help="a YAML file of parameters (see params/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fungilib", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fungilib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="generate the embedded sample archive, or serve its images on loopback")
    p.add_argument("action", nargs="?", choices=["generate", "serve"], default="generate")
    p.add_argument("--out", type=Path, default=Path("runs/demo/sample"), help="sample folder")
    p.add_argument("--observations", type=int, default=700)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8765, help="loopback port the archive's URLs point at")
    p.add_argument("--slow-seconds", type=float, default=30.0, help="(serve) how long the planted slow response waits")
    p.add_argument("--latency", type=float, default=0.0, help="(serve) seconds added before every response")
    p.add_argument("--no-faults", action="store_true", help="(serve) serve every file plainly (benchmarks)")

    p = _stage_parser(sub, "ingest", "read a GBIF Darwin Core Archive into observations.h5")
    p.add_argument("archive", type=Path)
    p.add_argument("--out", type=Path, required=True)

    p = _stage_parser(sub, "eda", "class distribution, Pareto curve, cut table and plots of observations.h5")
    p.add_argument("observations", type=Path)
    p.add_argument("--out", type=Path, required=True)

    p = _stage_parser(sub, "download", "download, check and resize every image of observations.h5")
    p.add_argument("observations", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int)
    p.add_argument("--max-side", type=int)

    p = _stage_parser(sub, "clean", "dedupe, filter and split the downloads into manifest.h5 and the label table")
    p.add_argument("--observations", type=Path, required=True)
    p.add_argument("--downloads", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--min-per-class", type=int)
    p.add_argument("--seed", type=int)

    p = _stage_parser(sub, "train", "train a classifier on a manifest (resumes when rerun with the same --out)")
    p.add_argument("--manifest", type=Path, required=True, help="the clean stage's folder (manifest.h5)")
    p.add_argument("--out", type=Path, required=True, help="the run folder")
    p.add_argument("--no-evaluate", action="store_true", help="skip the test-split evaluation after training")

    p = sub.add_parser("evaluate", help="evaluate a trained run on its test split (metrics.json and plots)")
    p.add_argument("run", type=Path)
    p.add_argument("--manifest", type=Path, help="default: the manifest the run was trained on")
    p.add_argument("--no-temperature", action="store_true", help="skip temperature scaling on the validation split")

    p = sub.add_parser("weights", help="fill the offline caches with pretrained weights (on a connected machine)")
    p.add_argument("action", choices=["fetch", "where"])
    p.add_argument("name", help="a base model name (see fungilib.models.BASES) or a TF Hub handle")

    p = sub.add_parser("sweep", help="run a sweep file: papermill across a grid/random search, locally or on Dask")
    p.add_argument("sweep_file", type=Path)
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--workers", type=int, default=0, help="parallel runs in a local process pool (default: cores/2)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scheduler", help="submit the runs to an existing Dask cluster, e.g. tcp://host:8786")
    group.add_argument("--local-cluster", type=int, default=0, metavar="N", help="start a Dask LocalCluster of N workers")

    p = sub.add_parser("runs", help="the runs table (rebuilds runs/index.h5 and runs/index.csv)")
    p.add_argument("sweep", nargs="?")
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--sort", default="top1", help="column to sort by (descending)")

    p = _stage_parser(sub, "import-folder", "turn a folder of class folders (DIR/<label>/*.jpg) or a labels CSV "
                                            "(path,label[,group,genus,family]) into a manifest for training")
    p.add_argument("source", type=Path, help="DIR/<label>/... or a CSV")
    p.add_argument("--out", type=Path, required=True)

    p = _stage_parser(sub, "export", "export a trained run: SavedModel, TFLite, TF.js and the offline web page, "
                                     "with a parity check against Keras")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, help="the bundle folder (default RUN/export)")

    p = sub.add_parser("serve", help="serve an export bundle's offline web classifier on 127.0.0.1")
    p.add_argument("bundle", type=Path, help="an export folder (or a run folder holding export/)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")

    p = sub.add_parser("predict", help="top-k species and the rank-aware verdict for photos or folders of photos")
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", type=Path, required=True, help="a training run folder or an export bundle")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--threshold", type=float, help="verdict threshold (default: the bundle's, else 0.6)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("tensorboard", help="TensorBoard over a sweep's runs (or all runs), on 127.0.0.1")
    p.add_argument("sweep", nargs="?", help="a sweep name under runs/ (default: every run)")
    p.add_argument("--runs-root", type=Path, default=Path("runs"))
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--host", default="127.0.0.1")

    p = sub.add_parser("report", help="render a run's executed notebooks to HTML")
    p.add_argument("run", type=Path)

    p = sub.add_parser("demo", help="the main job on the embedded sample: sample → ingest/EDA → download → clean")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--observations", type=int, default=700)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--sweep", type=Path, help="a sweep file to run after the stage notebooks")
    return parser


def _print_runs_table(runs_root: Path, sweep: str | None, sort: str) -> None:
    from fungilib.runs_index import HEADLINE, write_index

    table = write_index(runs_root, sweep)
    if table.empty:
        print("no runs yet")
        return
    swept = [c for c in table.columns if c.startswith("param.") and table[c].astype(str).nunique() > 1]
    columns = ["run_id", "sweep", "status", "duration_s", *swept, *[m for m in HEADLINE if m in table]]
    if sort in table:
        table = table.sort_values(sort, ascending=False)
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"(index: {Path(runs_root) / 'index.h5'}, {Path(runs_root) / 'index.csv'})")


def _run(args: argparse.Namespace) -> int:
    if args.command == "sample":
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
        sample = generate_sample(SampleSpec(out=args.out, observations=args.observations, seed=args.seed,
                                            base_url=f"http://127.0.0.1:{args.port}"))
        print(f"wrote {sample.archive} ({sample.occurrences} occurrences, {sample.media_rows} media rows); "
              f"serve its images with: fungilib sample serve --out {args.out} --port {args.port}")
        return 0
    if args.command == "demo":
        from fungilib.demo import run_demo

        result = run_demo(args.out, args.observations, args.port, args.sweep)
        root = result.root
        print(f"\nThe demo is in {root}:")
        print(f"  executed notebooks: {', '.join(str(r.output.relative_to(root)) for r in result.runs)}")
        print(f"  manifest and labels: {root / 'clean' / 'manifest.h5'}, {root / 'clean' / 'labels.csv'}")
        print(f"  plots: {root / 'ingest'}/*.png, {root / 'clean' / 'splits.png'}")
        if result.sweep is not None:
            print(f"\nThe sweep {result.sweep.sweep.name} (runs/{result.sweep.sweep.name}/):")
            _print_runs_table(root.parent, result.sweep.sweep.name, "top1")
        print(f"\nOpen it all: .venv/bin/jupyter lab {root.parent}")
        return 1 if result.sweep is not None and result.sweep.failed else 0
    if args.command == "sweep":
        from fungilib.sweep import run_sweep

        result = run_sweep(args.sweep_file, args.runs_root, args.workers, args.scheduler, args.local_cluster)
        _print_runs_table(args.runs_root, result.sweep.name, "top1")
        print(f"\n{len(result.executed)} executed, {result.skipped} already done (cached), "
              f"{len(result.failed)} failed")
        for failed in result.failed:
            print(f"  failed: {failed.get('run_id')}: {failed.get('error')}")
        return 1 if result.failed else 0
    if args.command == "export":
        from fungilib.export import ExportParams, export_run
        from fungilib.notebooks import PARAMS_DIR

        params = load_params(ExportParams, args.params or PARAMS_DIR / "export.yaml", run=args.run, out=args.out,
                             **_overrides(args.set))
        result = export_run(params.run, **{k: v for k, v in vars(params).items() if k != "run"})
        print(json.dumps({"bundle": str(result.bundle), "parity": result.parity,
                          "sizes": {k: v for k, v in result.files.items() if "/variables/" not in k}}, indent=2))
        return 0
    if args.command == "predict":
        from fungilib.predict import format_table, predict_files, to_json

        predictions = predict_files(args.images, args.model, args.top, args.threshold)
        if not predictions:
            raise FungilibError("no images found in " + ", ".join(map(str, args.images)))
        print(json.dumps(to_json(predictions), indent=2) if args.json else format_table(predictions, args.top))
        failed = [p for p in predictions if not p.ok]
        if failed:
            print(f"fungilib: {len(failed)} of {len(predictions)} files could not be read", file=sys.stderr)
        return 1 if failed else 0
    if args.command == "tensorboard":
        from fungilib.runs_index import tensorboard_command

        cmd = tensorboard_command(args.runs_root, args.sweep, args.host, args.port)
        print(" ".join(cmd), flush=True)
        import subprocess

        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0
    if args.command == "serve":
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
    if args.command == "report":
        from fungilib.runs_index import render_report

        for path in render_report(args.run):
            print(path)
        return 0
    if args.command == "runs":
        _print_runs_table(args.runs_root, args.sweep, args.sort)
        return 0
    if args.command == "evaluate":
        from fungilib.evaluate import evaluate_run

        _print_result(evaluate_run(args.run, args.manifest, temperature_scaling=not args.no_temperature).metrics)
        return 0
    if args.command == "weights":
        from fungilib.models import fetch_weights, hub_cache_dir, keras_cache_dir, spec_for

        if args.action == "where":
            print(hub_cache_dir() if spec_for(args.name).hub_handle else keras_cache_dir())
            return 0
        print(f"cached in {fetch_weights(args.name)}")
        return 0
    values = _overrides(args.set)
    if args.command == "import-folder":
        from fungilib.image_folder import FolderParams, import_folder

        _print_result(import_folder(load_params(FolderParams, args.params, source=args.source, out=args.out, **values)))
        return 0
    if args.command == "ingest":
        from fungilib.ingest import IngestParams, ingest

        _print_result(ingest(load_params(IngestParams, args.params, archive=args.archive, out=args.out, **values)))
    elif args.command == "eda":
        from fungilib.eda import EdaParams, run_eda

        result = run_eda(load_params(EdaParams, args.params, observations=args.observations, out=args.out, **values))
        print(result.cut_table.to_string(index=False))
        _print_result(result.summary)
    elif args.command == "download":
        from fungilib.download import DownloadParams, download_images

        _print_result(download_images(load_params(
            DownloadParams, args.params, observations=args.observations, out=args.out, workers=args.workers,
            max_side=args.max_side, **values)))
    elif args.command == "train":
        from fungilib.evaluate import evaluate_run
        from fungilib.notebooks import PARAMS_DIR
        from fungilib.train import TrainParams, train

        params = load_params(TrainParams, args.params or PARAMS_DIR / "train.yaml", out=args.out,
                             **{"dataset.manifest": str(args.manifest)}, **values)
        _print_result(train(params))
        if not args.no_evaluate:
            _print_result(evaluate_run(params.out, temperature_scaling=params.fit.temperature_scaling).metrics)
    elif args.command == "clean":
        from fungilib.clean import CleanParams, clean_dataset

        _print_result(clean_dataset(load_params(
            CleanParams, args.params, observations=args.observations, downloads=args.downloads, out=args.out,
            min_per_class=args.min_per_class, seed=args.seed, **values)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except FungilibError as exc:
        print(f"fungilib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fungilib: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
