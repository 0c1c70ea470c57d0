"""Hostile input, second round, outside archives and downloads: a served bundle with a symlink out and half-open
connections, sweep files that ask for millions of runs or repeat a key, and the small ones (a negative --top, a
bind address that is not one, one class left). Real servers on loopback, real CLI subprocesses."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fungilib.errors import FungilibError
from fungilib.params import read_yaml
from fungilib.serve import MAX_CONNECTIONS, BundleHandler, make_server, serving
from fungilib.sweep_file import MAX_RUNS, load_sweep


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fungilib.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The smallest folder the server takes for a bundle: a page and its config."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>page</title>")
    (root / "config.json").write_text("{}")
    return root


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_serve_never_follows_a_symlink_out_of_the_bundle_and_a_nul_byte_is_a_400(site: Path, tmp_path: Path) -> None:
    secret = tmp_path / "passwd.txt"
    secret.write_text("root:x:0:0")
    (site / "passwd.txt").symlink_to(secret)
    (site / "etc").symlink_to(tmp_path, target_is_directory=True)
    (site / "inside.json").symlink_to(site / "config.json")  # a link that stays inside is a file of the bundle
    with serving(site) as url:
        assert _get(url, "/passwd.txt")[0] == 404
        assert _get(url, "/etc/passwd.txt")[0] == 404
        assert _get(url, "/inside.json") == (200, b"{}")
        assert _get(url, "/config.json%00.html")[0] in (400, 404)
        assert _get(url, "/")[0] == 200


def test_serve_bounds_its_connections_and_drops_idle_ones(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BundleHandler, "timeout", 0.5)  # the idle read timeout, short for the test
    server = make_server(site, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    before = threading.active_count()
    sockets = []
    try:
        for _ in range(3 * MAX_CONNECTIONS):  # each sends a request line and nothing more
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\n")
            sockets.append(s)
        deadline = time.monotonic() + 5
        while threading.active_count() - before < MAX_CONNECTIONS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert threading.active_count() - before <= MAX_CONNECTIONS  # never a thread per connection past the bound
        for s in sockets:  # every connection ends: closed at once when full, or dropped once idle past the timeout
            s.settimeout(5)
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b""
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert threading.active_count() <= before
        assert _get(f"http://127.0.0.1:{port}/", "/")[0] == 200  # and it still serves
    finally:
        for s in sockets:
            s.close()
        server.shutdown()
        server.server_close()


def test_serve_on_an_address_that_is_not_one_names_the_host(site: Path) -> None:
    proc = _cli("serve", str(site), "--host", "evil host", "--port", "0")
    _one_line(proc, "cannot listen on evil host:0")
    assert "--host must be an address of this machine" in proc.stderr and "pick another port" not in proc.stderr


def _sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_sweep_of_a_billion_runs_is_refused_before_anything_is_expanded(tmp_path: Path) -> None:
    values = list(range(1000))
    grid = {"train.fit.seed": values, "train.optimizer.learning_rate": values, "train.model.dropout": values}
    path = _sweep_file(tmp_path, yaml.safe_dump({"pipeline": ["train"], "manifest": "m", "search": {"grid": grid}}))
    with pytest.raises(FungilibError, match=rf"search\.grid: 1,000,000,000 runs; a sweep runs at most {MAX_RUNS:,}"):
        load_sweep(path)
    # 600 bytes: one list reused through YAML aliases, the same count
    aliased = ("pipeline: [train]\nmanifest: m\nsearch:\n  grid:\n    train.k0: &v [" + ", ".join(map(str, range(100)))
               + "]\n" + "".join(f"    train.k{i}: *v\n" for i in range(1, 6)))
    path = _sweep_file(tmp_path, aliased)
    with pytest.raises(FungilibError, match=r"1,000,000,000,000 runs"):
        load_sweep(path)
    path = _sweep_file(tmp_path, "pipeline: [train]\nmanifest: m\nsearch:\n  random:\n    n: 20000000\n    params:\n"
                                 "      train.fit.seed: {int: [0, 9]}\n")
    with pytest.raises(FungilibError, match=r"search\.random\.n: 20,000,000 runs"):
        load_sweep(path)


def test_a_key_given_twice_in_a_yaml_file_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "clean.yaml"
    path.write_text("seed: 1\nmin_per_class: 5\nmax_side: 3\nmin_per_class: 500\n")
    with pytest.raises(FungilibError, match=r"clean\.yaml: the key 'min_per_class' is given twice \(lines 2 and 4\)"):
        read_yaml(path)
    proc = _cli("clean", "--observations", "o", "--downloads", "d", "--out", str(tmp_path / "c"),
                "--params", str(path))
    _one_line(proc, "the key 'min_per_class' is given twice (lines 2 and 4); keep one")
    nested = tmp_path / "sweep.yaml"
    nested.write_text("pipeline: [train]\nmanifest: m\nbase:\n  train:\n    fit:\n      epochs: 1\n      epochs: 2\n")
    with pytest.raises(FungilibError, match=r"the key 'epochs' is given twice \(lines 6 and 7\)"):
        load_sweep(nested)


def test_predict_top_must_be_at_least_one(tmp_path: Path) -> None:
    proc = _cli("predict", str(tmp_path), "--model", str(tmp_path), "--top", "-1")
    assert proc.returncode == 2 and "--top: -1 is not at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_one_class_left_says_so(tmp_path: Path) -> None:
    import pandas as pd

    from fungilib.split import held_out_classes

    with pytest.raises(FungilibError, match="only 1 class left after cleaning: training needs at least two"):
        held_out_classes(pd.Series(["Amanita muscaria"], index=["1"]), 0, [], 0)

