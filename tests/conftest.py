"""Shared fixtures: one small generated sample, served on a loopback port, run through the data stages once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from fungilib.clean import CleanParams, CleanResult, clean_dataset
from fungilib.download import DownloadParams, DownloadResult, download_images
from fungilib.ingest import IngestParams, IngestResult, ingest
from fungilib.sample import Sample, SampleSpec, generate_sample
from fungilib.sample_server import SampleServer

collect_ignore_glob = ["notebooks/*.ipynb"]  # fixture notebooks (one fails on purpose), not tests
SHARED = Path(__file__).resolve().parents[2] / "shared"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Pipeline:
    sample: Sample
    server: SampleServer
    ingest: IngestResult
    download: DownloadResult
    clean: CleanResult
    root: Path


def fast_download_params(observations: Path, out: Path, **kw: object) -> DownloadParams:
    """Download settings for tests: the slow fault (3 s) outlasts a 1 s timeout."""
    values = {"timeout": 1.0, "retries": 1, "backoff": 0.05, "workers": 8, **kw}
    return DownloadParams(observations=observations, out=out, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def served_sample(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sample")
    server = SampleServer(root, port=0, slow_seconds=3.0)
    sample = generate_sample(SampleSpec(out=root, observations=160, seed=7, base_url=server.base_url, image_size=160))
    server.load_faults()
    with server:
        yield sample, server


@pytest.fixture(scope="session")
def pipeline(served_sample, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    sample, server = served_sample
    root = tmp_path_factory.mktemp("pipeline")
    ing = ingest(IngestParams(sample.archive, root / "ingest"))
    dl = download_images(fast_download_params(root / "ingest", root / "download", max_side=128))
    cl = clean_dataset(CleanParams(root / "ingest", root / "download", root / "clean", min_per_class=5))
    return Pipeline(sample, server, ing, dl, cl, root)


@pytest.fixture
def shared_dwca() -> Path:
    folder = SHARED / "data" / "dwca"
    if not folder.is_dir():
        pytest.skip("../shared/data/dwca is absent")
    return folder


@pytest.fixture(scope="session")
def trained_run(pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model that has learned something (48 px, 6 epochs), evaluated: for export, web and predict tests."""
    from fungilib.evaluate import evaluate_run
    from fungilib.params import build_params
    from fungilib.train import TrainParams, train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(build_params(TrainParams, {
        "out": out, "dataset": {"manifest": str(pipeline.root / "clean"), "image_size": 48, "batch_size": 32},
        "augmentation": {"enabled": False}, "optimizer": {"learning_rate": 0.004},
        "fit": {"epochs": 5, "patience": 10, "seed": 0, "temperature_scaling": False}}))
    evaluate_run(out)
    return out
