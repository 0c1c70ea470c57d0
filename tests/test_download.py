"""Download over real HTTP on loopback: planted faults, resume, SIGKILL, limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fungilib.artifacts.downloads import load_downloads
from fungilib.artifacts.observations import load_observations
from fungilib.download import download_images
from fungilib.errors import FungilibError
from fungilib.fsutil import join_inside, safe_id

from .conftest import fast_download_params

EXPECTED = {
    "missing": ("failed", "http 404"),
    "flaky": ("ok", ""),
    "slow": ("failed", "timeout"),
    "truncated": ("failed", "truncated body"),
    "html": ("failed", "not an image (text/html)"),
    "corrupt": ("failed", "undecodable"),
    "png": ("ok", ""),
    "cmyk": ("ok", ""),
    "exif_rotated": ("ok", ""),
    "huge": ("failed", "too many pixels"),
}


def _by_fault(pipeline) -> dict[str, list]:
    table = load_downloads(pipeline.root / "download")
    base = pipeline.server.base_url
    rows: dict[str, list] = {}
    for path, fault in pipeline.sample.faults.items():
        rows.setdefault(fault, []).extend(table[table["url"] == base + path].to_dict("records"))
    return rows


def test_every_planted_fault_ends_recorded_with_its_reason(pipeline) -> None:
    rows = _by_fault(pipeline)
    assert set(rows) == set(EXPECTED)
    for fault, (status, reason) in EXPECTED.items():
        for row in rows[fault]:
            assert row["status"] == status, (fault, row)
            assert row["reason"].startswith(reason), (fault, row["reason"])
            assert (row["path"] != "") == (status == "ok")
    requests = pipeline.server.requests
    missing = [p for p, f in pipeline.sample.faults.items() if f == "missing"]
    assert all(requests[p] == 1 for p in missing)  # a 404 is never retried
    flaky = next(p for p, f in pipeline.sample.faults.items() if f == "flaky")
    assert requests[flaky] == 2  # a 500 is retried, and succeeds
    slow = next(p for p, f in pipeline.sample.faults.items() if f == "slow")
    assert requests[slow] == 2  # timeout: one retry (retries=1)


def test_saved_images_are_rgb_oriented_resized_and_nothing_bad_is_kept(pipeline) -> None:
    out = pipeline.root / "download"
    table = load_downloads(out)
    files = sorted((out / "images").rglob("*"))
    files = [f for f in files if f.is_file()]
    ok_paths = set(table.loc[table["status"] == "ok", "path"])
    assert {str(f.relative_to(out)) for f in files} == ok_paths  # exactly the ok images, no leftovers
    for f in files:
        with Image.open(f) as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB"
            assert max(img.size) <= 128
    rows = _by_fault(pipeline)
    rotated = rows["exif_rotated"][0]
    assert rotated["orig_width"] < rotated["orig_height"]  # stored sideways …
    assert rotated["width"] >= rotated["height"]  # … saved upright
    assert not list(out.rglob(".tmp-*"))


def test_rerun_requests_nothing_already_saved(pipeline, tmp_path: Path) -> None:
    before = Counter(pipeline.server.requests)
    result = download_images(fast_download_params(pipeline.root / "ingest", pipeline.root / "download", max_side=128))
    after = pipeline.server.requests
    retried = {p for p in after if after[p] != before[p]}
    transient = {p for p, f in pipeline.sample.faults.items() if f in {"slow", "truncated"}}
    assert retried == transient  # only transient failures are tried again; 404 and saved files are not
    assert result.ok == pipeline.download.ok and result.cached >= result.ok


def test_per_host_limit_is_respected(pipeline, tmp_path: Path) -> None:
    state = pipeline.server.state
    deadline = time.monotonic() + 10
    while state.active and time.monotonic() < deadline:  # a slow fault of an earlier test may still be sleeping
        time.sleep(0.05)
    faults, state.faults = state.faults, {}  # only plain responses: a server-side sleep outlives the client's timeout
    state.max_active, state.latency = 0, 0.02
    try:
        result = download_images(fast_download_params(pipeline.root / "ingest", tmp_path, workers=8, per_host=2,
                                                      limit=40))
    finally:
        state.latency, state.faults = 0.0, faults
    assert result.ok + result.failed == 40
    assert state.max_active == 2


def test_sigkill_mid_download_then_rerun_resumes(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    state = pipeline.server.state
    state.latency = 0.03
    cmd = [sys.executable, "-m", "fungilib.cli", "download", str(pipeline.root / "ingest"), "--out", str(out),
           "--workers", "4", "--max-side", "128", "--set", "timeout=1", "--set", "retries=1", "--set", "backoff=0.05",
           "--set", "allow_hosts=[127.0.0.1]"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list((out / "images").rglob("*.jpg"))) < 60:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        state.latency = 0.0
    saved = sorted((out / "images").rglob("*.jpg"))
    total = load_observations(pipeline.root / "ingest")["url"].nunique()
    assert 60 <= len(saved) < total, "the kill must land mid-way"
    for f in saved:  # no partial file under a final name
        with Image.open(f) as img:
            img.load()
    assert not (out / "downloads.h5").exists()
    before = Counter(pipeline.server.requests)
    result = download_images(fast_download_params(pipeline.root / "ingest", out, max_side=128))
    after = pipeline.server.requests
    base = len(pipeline.server.base_url)
    table = load_downloads(out)  # file path ≠ URL path: map the saved files to their URLs through the table
    saved_rel = {str(f.relative_to(out)) for f in saved}
    saved_url_paths = set(table.loc[table["path"].isin(saved_rel), "url"].str[base:])
    assert len(saved_url_paths) == len(saved)  # every file saved before the kill is one URL of the table
    assert all(after[p] == before[p] for p in saved_url_paths)  # … and none of them was requested again
    rest = set(table.loc[(table["status"] == "ok") & ~table["path"].isin(saved_rel), "url"].str[base:])
    assert rest and all(after[p] > before[p] for p in rest)  # the others were fetched by the rerun
    assert result.ok == pipeline.download.ok
    assert not list(out.rglob(".tmp-*"))


def test_paths_are_built_from_safe_ids_only(tmp_path: Path) -> None:
    assert safe_id("4000000003-1") == "4000000003-1"
    for bad in ["../etc", "a/b", "", "..", "x" * 200, "a b"]:
        with pytest.raises(FungilibError):
            safe_id(bad)
    with pytest.raises(FungilibError, match="escapes"):
        join_inside(tmp_path, "..", "outside.jpg")


def test_keyboard_interrupt_in_cli_exits_cleanly_without_traceback(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    state = pipeline.server.state
    state.latency = 0.2  # the download outlasts the wait for its first 10 images, even on a loaded machine
    errors = tmp_path / "stderr.txt"
    try:
        with open(errors, "w") as err_file:  # a file, not a pipe: tqdm's progress can never block the child
            proc = subprocess.Popen(
                [sys.executable, "-m", "fungilib.cli", "download", str(pipeline.root / "ingest"), "--out", str(out),
                 "--workers", "2", "--set", "allow_hosts=[127.0.0.1]"], stdout=subprocess.DEVNULL, stderr=err_file,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(list((out / "images").rglob("*.jpg"))) < 10:
                time.sleep(0.05)
            assert proc.poll() is None, "the download ended before it could be interrupted"
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        err = errors.read_text()
    finally:
        state.latency = 0.0
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert (out / "download_log.jsonl").read_text().count("\n") >= 10


@pytest.mark.slow
def test_dask_local_cluster_downloads_in_shards_then_resumes_after_the_client_is_killed(pipeline,
                                                                                       tmp_path: Path) -> None:
    """Two Dask worker processes write into one folder; the client (and with it its cluster) is SIGKILLed mid-way;
    the rerun keeps every finished photo, requests none of them again and leaves no partial file."""
    out = tmp_path / "dl"
    state = pipeline.server.state
    state.latency = 0.03
    cmd = [sys.executable, "-m", "fungilib.cli", "download", str(pipeline.root / "ingest"), "--out", str(out),
           "--workers", "2", "--max-side", "128", "--local-cluster", "2", "--set", "shard_size=20", "--set",
           "timeout=1", "--set", "retries=1", "--set", "backoff=0.05", "--set", "allow_hosts=[127.0.0.1]"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((out / "images").rglob("*.jpg"))) < 40:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the client, its scheduler and both workers at once
        proc.wait()
    finally:
        state.latency = 0.0
    time.sleep(0.5)
    saved = sorted((out / "images").rglob("*.jpg"))
    total = load_observations(pipeline.root / "ingest")["url"].nunique()
    assert 40 <= len(saved) < total, "the kill must land mid-way"
    assert list(out.glob("download_log.shard-*.jsonl")), "each task keeps its own log"
    before = Counter(pipeline.server.requests)
    result = download_images(fast_download_params(pipeline.root / "ingest", out, max_side=128, local_cluster=2,
                                                  shard_size=20))
    after = pipeline.server.requests
    assert result.ok == pipeline.download.ok and result.failed == pipeline.download.failed  # as one process got
    assert not list((out / "images").rglob(".tmp-*"))
    for f in (out / "images").rglob("*.jpg"):  # no partial file under a final name
        with Image.open(f) as img:
            img.load()
    base = len(pipeline.server.base_url)
    table = load_downloads(out)
    saved_rel = {str(f.relative_to(out)) for f in saved}
    saved_url_paths = set(table.loc[table["path"].isin(saved_rel), "url"].str[base:])
    assert len(saved_url_paths) == len(saved) and all(after[p] == before[p] for p in saved_url_paths)
    ok = table[table["status"] == "ok"].drop_duplicates("url")  # (a photo of several observations: one file)
    assert ok["path"].is_unique and len(ok) == len(list((out / "images").rglob("*.jpg")))  # one file per photo
    rest = set(ok.loc[~ok["path"].isin(saved_rel), "url"].str[base:])
    assert rest and all(after[p] - before[p] == 1 for p in rest if p in after)  # fetched once each by the rerun


def test_the_download_report_shows_every_outcome_by_reason_and_throughput(pipeline, tmp_path: Path) -> None:
    """download_report.png beside the run; its numbers: outcomes that add up to the table (each planted fault under
    its reason) and, for a run that fetched, one point per photo it finished, in time order."""
    from fungilib.download_report import REPORT_PLOT, failure_examples, outcomes, throughput

    out = tmp_path / "dl"
    since = time.time()
    download_images(fast_download_params(pipeline.root / "ingest", out, max_side=64))
    table = load_downloads(out)
    counts = outcomes(table)
    assert counts.sum() == len(table) and counts["ok (fetched)"] == (table["status"] == "ok").sum()
    assert {"failed: http 404", "failed: not an image", "failed: too many pixels"} <= set(counts.index)
    timeline = throughput(out, since)
    assert len(timeline) == len(table.drop_duplicates("url"))  # every URL fetched (or failed) once in this run
    assert timeline["seconds"].is_monotonic_increasing and timeline["done"].iloc[-1] == len(timeline)
    examples = failure_examples(table)
    assert examples["kind"].is_unique and len(examples) == len(counts) - 1  # one per failure kind
    assert (out / REPORT_PLOT).stat().st_size > 10_000
