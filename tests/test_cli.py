"""The fungilib command: clear one-line errors, parameters validated at the edge."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fungilib.cli import main
from fungilib.download import DownloadParams
from fungilib.errors import FungilibError
from fungilib.params import build_params, load_params


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_archive_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    proc = _cli("ingest", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith(f"fungilib: error: {bad}: not a Darwin Core Archive")


def test_unknown_and_mistyped_parameters_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["clean", "--observations", "a", "--downloads", "b", "--out", "c", "--set", "min_per_clas=3"]) == 2
    err = capsys.readouterr().err
    assert ("unknown parameter 'min_per_clas' for CleanParams; allowed: observations, downloads, out, "
            "min_per_class") in err
    params_file = tmp_path / "download.yaml"
    params_file.write_text("workers: many\n")
    with pytest.raises(FungilibError, match=r"download.yaml: workers: expected an integer, got 'many'"):
        load_params(DownloadParams, params_file, observations="o", out="x")
    with pytest.raises(FungilibError, match="retry_failed: expected true or false"):
        build_params(DownloadParams, {"observations": "o", "out": "x", "retry_failed": "yes"})
    params_file.write_text("- a list\n")
    with pytest.raises(FungilibError, match="expected a mapping"):
        load_params(DownloadParams, params_file)


def test_sample_command_writes_an_archive(tmp_path: Path) -> None:
    proc = _cli("sample", "--out", str(tmp_path), "--observations", "40", "--port", "9999")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fungi-sample.zip").exists()
    assert "fungilib sample serve" in proc.stdout
    with zipfile.ZipFile(tmp_path / "fungi-sample.zip") as zf:
        assert "\thttp://127.0.0.1:9999/photos/" in zf.read("multimedia.txt").decode()
