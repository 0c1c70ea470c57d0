"""Hostile image hosts and URLs: every per-URL failure is a recorded row with its reason and the stage finishes;
a trickling server meets a per-photo deadline; non-public addresses are refused unless allowed (redirects too);
a photo's identity follows its URL, so a changed archive never gets a stale file. Real archives, a real
misbehaving HTTP server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fungilib.artifacts.downloads import load_downloads
from fungilib.artifacts.observations import load_observations
from fungilib.download import DownloadParams, download_images
from fungilib.ingest import IngestParams, ingest

from .hostile import HostileServer, write_archive


@pytest.fixture(scope="module")
def server():
    with HostileServer() as srv:
        yield srv


def _pipeline(tmp_path: Path, photos: list[tuple[str, str]], **download: object) -> tuple[pd.DataFrame, object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    archive = write_archive(tmp_path / "archive.zip", photos)
    ingest(IngestParams(archive=archive, out=tmp_path / "ingest"))
    values = {"timeout": 3.0, "retries": 1, "backoff": 0.05, **download}
    params = DownloadParams(observations=tmp_path / "ingest", out=tmp_path / "download", **values)  # type: ignore[arg-type]
    result = download_images(params)
    table = load_downloads(tmp_path / "download").merge(load_observations(tmp_path / "ingest")[["media_id", "url"]])
    return table.set_index("url"), result


def _reason(table: pd.DataFrame, url: str) -> str:
    return str(table.loc[url, "reason"])


# -- 5. one odd response or URL is one recorded row; the stage finishes --------------------------------------------
def test_odd_responses_and_urls_are_rows_with_reasons(server: HostileServer, tmp_path: Path) -> None:
    b = server.base
    urls = [f"{b}/ok-1.jpg", f"{b}/badlength.jpg", f"{b}/retry-date.jpg", "http://[::1/x.jpg",
            "http://127.0.0.1:abc/x.jpg", f"{b}/empty.jpg", f"HTTP://127.0.0.1:{server.server_address[1]}/ok-upper.jpg",
            f"{b}/missing.jpg"]
    table, result = _pipeline(tmp_path, [(f"o{i}", u) for i, u in enumerate(urls)], allow_hosts=["127.0.0.1"])
    assert len(table) == len(urls)  # every URL has its row (the upper-case scheme was kept by ingest)
    ok = {u for u in urls if table.loc[u, "status"] == "ok"}
    assert ok == {urls[0], urls[1], urls[2], urls[6]}
    assert table.loc[urls[2], "attempts"] == 2  # the HTTP-date Retry-After was honoured, then it succeeded
    assert _reason(table, "http://[::1/x.jpg").startswith("malformed URL")
    assert _reason(table, "http://127.0.0.1:abc/x.jpg").startswith("malformed URL")
    assert _reason(table, urls[5]) == "empty body"
    assert _reason(table, urls[7]) == "http 404"
    assert "0x" not in "".join(table["reason"])  # no object addresses in reasons
    assert result.ok == 4 and result.failed == 4
    again = download_images(DownloadParams(observations=tmp_path / "ingest", out=tmp_path / "download",
                                           allow_hosts=["127.0.0.1"]))  # a rerun: the failures are remembered
    assert again.ok == 4 and again.requested == 0


# -- 6. a per-photo deadline, not only a per-read timeout ----------------------------------------------------------
def test_a_trickling_server_meets_the_deadline(server: HostileServer, tmp_path: Path) -> None:
    url = f"{server.base}/trickle.jpg"
    t0 = time.monotonic()
    table, _ = _pipeline(tmp_path, [("o1", url)], allow_hosts=["127.0.0.1"], deadline=4.0, retries=0)
    took = time.monotonic() - t0
    assert _reason(table, url) == "deadline: no complete response in 4 s"
    assert took < 9, took  # not the minute a byte-every-1.5-s photo would take under a 3 s read timeout


# -- 3. non-public addresses are refused unless allowed, at every redirect hop --------------------------------------
def test_non_public_addresses_need_an_explicit_allowance(server: HostileServer, tmp_path: Path) -> None:
    port = server.server_address[1]
    urls = [f"{server.base}/ok-a.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/x.jpg",
            f"http://localhost:{port}/ok-b.jpg"]
    table, _ = _pipeline(tmp_path / "none", [(f"o{i}", u) for i, u in enumerate(urls)])
    for url in urls:
        assert table.loc[url, "status"] == "failed" and _reason(table, url).startswith("refused: "), url
    assert "169.254.169.254 is a non-public address" in _reason(table, urls[1])
    assert server.requests["/ok-a.jpg"] == 0  # refused before connecting
    table, _ = _pipeline(tmp_path / "allowed", [(f"o{i}", u) for i, u in enumerate(urls)],
                         allow_hosts=[f"127.0.0.1:{port}"])
    assert table.loc[urls[0], "status"] == "ok"  # the allowed host:port
    assert table.loc[urls[3], "status"] == "ok"  # localhost resolves to the allowed address and port
    assert _reason(table, urls[1]).startswith("refused: ") and _reason(table, urls[2]).startswith("refused: ")


def test_a_redirect_to_an_internal_address_is_refused(server: HostileServer, tmp_path: Path) -> None:
    port = server.server_address[1]
    with HostileServer() as other:
        redirects = [f"{server.base}/redirect-to-169.254.169.254/latest/meta-data/",
                     f"{server.base}/redirect-to-127.0.0.1:{other.server_address[1]}/ok-c.jpg"]
        table, _ = _pipeline(tmp_path, [(f"o{i}", u) for i, u in enumerate(redirects)],
                             allow_hosts=[f"127.0.0.1:{port}"])
        assert all(_reason(table, u).startswith("refused: ") for u in redirects), table["reason"].tolist()
        assert other.requests["/ok-c.jpg"] == 0


def test_allow_hosts_is_validated(tmp_path: Path) -> None:
    from fungilib.errors import FungilibError

    with pytest.raises(FungilibError, match="allow_hosts: '10.0.0.0/99' is not a host"):
        DownloadParams(observations=tmp_path, out=tmp_path, allow_hosts=["10.0.0.0/99"])
    with pytest.raises(FungilibError, match=r"deadline \(2 s\) must be at least timeout \(10 s\)"):
        DownloadParams(observations=tmp_path, out=tmp_path, deadline=2.0)


# -- 7. a photo's identity is its occurrence and its URL ------------------------------------------------------------
def test_a_changed_photo_list_never_gets_a_stale_file(server: HostileServer, tmp_path: Path) -> None:
    b = server.base
    first = write_archive(tmp_path / "v1.zip", [("o1", f"{b}/photo-v1.jpg")])
    ingest(IngestParams(archive=first, out=tmp_path / "ingest"))
    params = DownloadParams(observations=tmp_path / "ingest", out=tmp_path / "download", allow_hosts=["127.0.0.1"])
    download_images(params)
    old = load_downloads(tmp_path / "download").iloc[0]
    second = write_archive(tmp_path / "v2.zip", [("o1", f"{b}/photo-v2.jpg")])  # the same occurrence, a new photo
    ingest(IngestParams(archive=second, out=tmp_path / "ingest"))
    result = download_images(params)
    new = load_downloads(tmp_path / "download").iloc[0]
    assert new["media_id"] != old["media_id"] and new["path"] != old["path"]
    assert result.requested == 1 and server.requests["/photo-v2.jpg"] == 1
    saved = (tmp_path / "download" / new["path"]).read_bytes()
    assert saved != (tmp_path / "download" / old["path"]).read_bytes()


def test_occurrences_sharing_a_gbif_id_keep_their_own_photos(server: HostileServer, tmp_path: Path) -> None:
    b = server.base
    archive = write_archive(tmp_path / "a.zip", [("c1", f"{b}/ok-x.jpg"), ("c2", f"{b}/ok-y.jpg")],
                            gbif_ids={"c1": "777", "c2": "777"})
    ingest(IngestParams(archive=archive, out=tmp_path / "ingest"))
    obs = load_observations(tmp_path / "ingest")
    assert len(obs) == 2 and obs["media_id"].is_unique
    assert sorted(obs["media_id"].str.split("-").str[0]) == ["c1", "c2"]
    result = download_images(DownloadParams(observations=tmp_path / "ingest", out=tmp_path / "download",
                                            allow_hosts=["127.0.0.1"]))
    assert result.ok == 2 and load_downloads(tmp_path / "download")["path"].nunique() == 2


# -- the same through the command, with --set: exit 0, one summary, no traceback -----------------------------------
def test_the_download_command_finishes_on_hostile_input(server: HostileServer, tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "a.zip", [("o1", f"{server.base}/ok-cli.jpg"), ("o2", "http://[::1/x.jpg"),
                                                  ("o3", f"{server.base}/badlength.jpg")])
    ingest(IngestParams(archive=archive, out=tmp_path / "ingest"))
    proc = subprocess.run([sys.executable, "-m", "fungilib.cli", "download", str(tmp_path / "ingest"), "--out",
                           str(tmp_path / "dl"), "--set", "allow_hosts=[127.0.0.1]", "--set", "timeout=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads((tmp_path / "dl" / "download_summary.json").read_text())
    assert summary["ok"] == 2 and summary["failed"] == 1 and summary["reasons"] == {"malformed URL": 1}


def test_a_full_disk_stops_the_download_with_one_line_and_keeps_what_is_saved(server: HostileServer,
                                                                              tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE) makes writes fail as a full disk does (EFBIG, as ENOSPC): one line, exit 2,
    the photos saved before it stay, and a rerun without the limit finishes the rest without fetching them again."""
    import resource
    import signal

    photos = [(f"o{i}", f"{server.base}/ok-disk-{i}.jpg") for i in range(12)]
    archive = write_archive(tmp_path / "a.zip", photos)
    ingest(IngestParams(archive=archive, out=tmp_path / "ingest"))
    size = len(server.photo("/ok-disk-0.jpg"))

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # photos fit; the download log soon does not

    cmd = [sys.executable, "-m", "fungilib.cli", "download", str(tmp_path / "ingest"), "--out", str(tmp_path / "dl"),
           "--workers", "1", "--set", "allow_hosts=[127.0.0.1]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=limited)
    last = proc.stderr.strip().splitlines()[-1]  # (the progress bar's lines come before it)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("fungilib: error: ") and "the disk is full" in last and "rerun the same command" in last
    saved = list((tmp_path / "dl" / "images").rglob("*.jpg"))
    assert 0 < len(saved) < 12 and size > 0
    before = sum(server.requests[f"/ok-disk-{i}.jpg"] for i in range(12))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "dl" / "images").rglob("*.jpg"))) == 12
    assert sum(server.requests[f"/ok-disk-{i}.jpg"] for i in range(12)) - before == 12 - len(saved)


# -- second round: memory per stage, not per photo; deep images; the user's pixel limit; names that do not resolve --
def test_huge_photos_are_decoded_within_a_shared_pixel_budget(server: HostileServer, tmp_path: Path) -> None:
    """Four 92-megapixel photos (110 kB PNGs) at workers=4: decoded one at a time within the stage's budget, so the
    process's peak memory is about one such photo's, not four."""
    photos = [(f"o{i}", f"{server.base}/big-{i}.png") for i in range(4)]
    archive = write_archive(tmp_path / "archive.zip", photos)
    ingest(IngestParams(archive=archive, out=tmp_path / "ingest"))
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "fungilib.cli", "download",
                           str(tmp_path / "ingest"), "--out", str(tmp_path / "download"), "--workers", "4",
                           "--set", "allow_hosts=[127.0.0.1]", "--max-side", "256"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
    table = load_downloads(tmp_path / "download")
    assert (table["status"] == "ok").all() and (table["orig_width"] == 9600).all()
    # measured: 0.9 GB within the default budget (one at a time), 2.0 GB with a budget that lets all four decode at
    # once (decode_budget_mp=1000), as every worker did before there was one
    assert peak_mb < 1600, peak_mb


def test_deep_images_are_scaled_into_eight_bits_not_saved_white(server: HostileServer, tmp_path: Path) -> None:
    from PIL import Image

    photos = [("o1", f"{server.base}/deep16.png"), ("o2", f"{server.base}/int32.tif")]
    table, _ = _pipeline(tmp_path, photos, allow_hosts=["127.0.0.1"])
    for url, _ in [(u, None) for _, u in photos]:
        assert table.loc[url, "status"] == "ok", table.loc[url, "reason"]
        saved = Image.open(tmp_path / "download" / table.loc[url, "path"]).convert("L")
        low, high = saved.getextrema()
        assert low < 30 and high > 225  # the gradient survives, not (255, 255, 255)


def test_the_users_pixel_limit_applies_above_and_below_pillows_own(server: HostileServer, tmp_path: Path) -> None:
    url = f"{server.base}/big-limit.png"  # 92 MP: above Pillow's 89.5 MP default
    table, _ = _pipeline(tmp_path / "above", [("o1", url)], allow_hosts=["127.0.0.1"], max_pixels=100_000_000,
                         max_side=128)
    assert table.loc[url, "status"] == "ok", table.loc[url, "reason"]
    table, _ = _pipeline(tmp_path / "below", [("o1", url)], allow_hosts=["127.0.0.1"], max_pixels=50_000_000)
    assert _reason(table, url) == "too many pixels (9600x9600)"


def test_a_host_that_does_not_resolve_is_a_permanent_failure_named_once(tmp_path: Path) -> None:
    url = "http://no-such-host.invalid/photo.jpg"
    table, _ = _pipeline(tmp_path, [("o1", url)], allow_hosts=["no-such-host.invalid"])
    assert _reason(table, url) == "cannot resolve no-such-host.invalid"
    assert table.loc[url, "attempts"] == 1  # not retried as a transient error
