"""Shared fixtures: one small generated sample, served on a loopback port, run through the data stages once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fungilib.clean import CleanParams, CleanResult, clean_dataset
from fungilib.download import DownloadParams, DownloadResult, download_images
from fungilib.fsutil import PROJECT_ROOT
from fungilib.ingest import IngestParams, IngestResult, ingest
from fungilib.kernel_pool import start_pool
from fungilib.sample import Sample, SampleSpec, generate_sample
from fungilib.sample_server import SampleServer

# The tests' network: MobileNetV3Small from scratch, the smallest that shows each behaviour (the default for a user's
# photos is the pretrained EfficientNet-Lite0, two_phase; tests of it say so). The same as params/recipes/sample.yaml.
SCRATCH_MODEL = {"base": "MobileNetV3Small", "weights": "none", "freeze": "train_all"}
SCRATCH_SETS = [x for key, value in SCRATCH_MODEL.items() for x in ("--set", f"model.{key}={value}")]

collect_ignore_glob = ["notebooks/*.ipynb"]  # fixture notebooks (one fails on purpose), not tests
SHARED = Path(__file__).resolve().parents[2] / "shared"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def warm_kernels() -> None:
    """Every notebook the tests execute (here or in a CLI they run) gets a fork of one warm zygote: TensorFlow,
    Keras, pandas and plotting imported once per test process, not once per notebook (fungilib.kernel_pool)."""
    start_pool()


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
    values = {"timeout": 1.0, "retries": 1, "backoff": 0.05, "workers": 8, "allow_hosts": ["127.0.0.1"], **kw}
    return DownloadParams(observations=observations, out=out, **values)  # type: ignore[arg-type]


# kept out of training in the shared pipeline: "not a species this model knows" is fitted and tested on them
HELD_OUT = ("Coprinus comatus", "Morchella esculenta")


@pytest.fixture(scope="session")
def served_sample(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sample")
    server = SampleServer(root, port=0, slow_seconds=3.0)
    # the first twelve species, one look each: the pipeline behaviour the tests check, at the smallest size that
    # shows it (the demo's field flora of 26 with look-alikes is tested on its own, in test_sample.py)
    sample = generate_sample(SampleSpec(out=root, observations=160, seed=7, base_url=server.base_url, image_size=160,
                                        flora="twelve"))
    server.load_faults()
    with server:
        yield sample, server


@pytest.fixture(scope="session")
def pipeline(served_sample, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    sample, server = served_sample
    root = tmp_path_factory.mktemp("pipeline")
    ing = ingest(IngestParams(sample.archive, root / "ingest"))
    dl = download_images(fast_download_params(root / "ingest", root / "download", max_side=128))
    cl = clean_dataset(CleanParams(observations=root / "ingest", downloads=root / "download", out=root / "clean",
                                   min_per_class=5, holdout_species=list(HELD_OUT)))
    return Pipeline(sample, server, ing, dl, cl, root)


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shared_dwca() -> Path:
    folder = SHARED / "data" / "dwca"
    if not folder.is_dir():
        pytest.skip("../shared/data/dwca is absent")
    return folder


@dataclass
class KilledRun:
    path: Path
    finished_before_kill: int  # epochs finished when SIGKILL arrived
    epochs: int


TRAINED_EPOCHS = 12


def _train_killed_then_resumed(manifest: Path, out: Path) -> KilledRun:
    """``fungilib train`` killed with SIGKILL after its first finished epoch, then the same command again."""
    cmd = [sys.executable, "-m", "fungilib.cli", "train", "--manifest", str(manifest), "--out", str(out), *SCRATCH_SETS,
           "--set", "dataset.image_size=48", "--set", f"fit.epochs={TRAINED_EPOCHS}", "--set", "fit.patience=50",
           "--set", "augmentation.enabled=false", "--set", "optimizer.learning_rate=0.004",
           "--set", f"toxicity={PROJECT_ROOT / 'params' / 'toxicity-sample.csv'}"]  # evaluated with the sample's list
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 2:  # header + 1 finished epoch
            break
        time.sleep(0.1)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(history.read_text().splitlines()) - 1 if history.exists() else 0
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return KilledRun(out, finished, TRAINED_EPOCHS)


@pytest.fixture(scope="session")
def killed_run(pipeline, tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """One real training run for several tests (48 px, 12 epochs, evaluated by the CLI): it was SIGKILLed after
    its first epoch and resumed — test_train checks the resume, the export/web/predict tests use the model."""
    return _train_killed_then_resumed(pipeline.root / "clean", tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture(scope="session")
def trained_run(killed_run: KilledRun) -> Path:
    return killed_run.path


@pytest.fixture(scope="session")
def bundle(trained_run: Path):  # noqa: ANN201 — an ExportResult
    """The run exported through notebooks/05_export.ipynb under papermill, as the demo does."""
    import json

    from fungilib.export import ExportResult
    from fungilib.notebooks import run_notebook
    from fungilib.stages import NOTEBOOKS_DIR

    out = trained_run.parent / "export" / "bundle"
    executed = trained_run.parent / "export" / "05_export.ipynb"
    run_notebook(NOTEBOOKS_DIR / "05_export.ipynb", executed, {"run": str(trained_run), "out": str(out),
                                                                "parity_images": 12})
    text = executed.read_text()
    assert f"fungilib serve {out}" in text and "tfjs_uint8_node" in text  # the serve command and the formats table
    assert (out.parent / "formats.png").stat().st_size > 10_000
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return ExportResult(out, files, json.loads((out / "parity.json").read_text()))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs two workers, --dist loadgroup) a file's tests stay together, and
    every test that uses the one shared trained model shares a worker, so that model is trained once. (The
    stage notebooks run under nbval in a second, single-process pytest: their cells share one kernel.)"""
    for item in items:
        uses_model = {"killed_run", "trained_run", "bundle"} & set(getattr(item, "fixturenames", ()))
        group = "trained-model" if uses_model else Path(str(item.path)).name
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def postgres_url():  # noqa: ANN201 — a SQLAlchemy URL
    """A real PostgreSQL server on a loopback port for this test session (skipped where Debian's postgresql
    package is not installed: `make setup` installs it)."""
    from .postgres import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip("Debian's postgresql is not installed here (make setup installs it)")
    with postgres_server() as url:
        yield url
