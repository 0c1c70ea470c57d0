"""A loopback HTTP server for the sample's photos that plants the faults real image hosts have."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mimetypes
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fungilib.errors import FungilibError
from fungilib.fsutil import join_inside
from fungilib.sample_art import draw_scale_photo

SCALE_PREFIX = "/scale/"  # rehearsal photos (fungilib.sample_scale), drawn on request


@dataclass
class ServerState:
    """What the handler needs: the folder it serves, the faults, and counters the tests read."""

    media_dir: Path
    faults: dict[str, str]
    slow_seconds: float = 30.0
    latency: float = 0.0
    requests: Counter = field(default_factory=Counter)
    active: int = 0
    max_active: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    scale: dict | None = None  # a scale rehearsal's scale.json: its photos are drawn on request
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real image CDNs allow
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _release(self) -> None:
        """Stop counting this request as active: called just before the body is written, so that the server's
        count of active requests never exceeds the client's count of requests in flight."""
        if getattr(self, "_active", False):
            self._active = False
            with self.server.state.lock:
                self.server.state.active -= 1

    def _send(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self._release()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        state = self.server.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.requests[path] += 1
            seen = state.requests[path]
            state.active += 1
            state.max_active = max(state.max_active, state.active)
        self._active = True
        try:
            self._respond(state, path, seen)
        finally:
            self._release()

    def _respond(self, state: ServerState, path: str, seen: int) -> None:
        if state.latency:
            time.sleep(state.latency)
        fault = state.faults.get(path, "")
        if fault == "flaky" and seen == 1:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"try again", "text/plain")
            return
        if fault == "slow":
            end = time.monotonic() + state.slow_seconds
            while time.monotonic() < end and not state.stopping.is_set():
                time.sleep(0.05)
        if state.scale is not None and path.startswith(SCALE_PREFIX):
            self._scale_photo(state, path)
            return
        try:
            file = join_inside(state.media_dir, path.lstrip("/"))
            body = file.read_bytes()
        except (FungilibError, OSError):
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        if fault == "html":
            self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")
        elif fault == "truncated":
            self._send(HTTPStatus.OK, body[: len(body) // 2], "image/jpeg", length=len(body))
            self.close_connection = True
        else:
            self._send(HTTPStatus.OK, body, mimetypes.guess_type(file.name)[0] or "application/octet-stream")

    def _scale_photo(self, state: ServerState, path: str) -> None:
        """A rehearsal photo, drawn on request: /scale/<species>/<photo id>.jpg."""
        parts = path[len(SCALE_PREFIX):].removesuffix(".jpg").split("/")
        scale = state.scale or {}
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) >= scale.get("species", 0):
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        body = draw_scale_photo(int(scale["seed"]), int(parts[0]), int(parts[1]), int(scale["image_size"]))
        self._send(HTTPStatus.OK, body, "image/jpeg")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        self.state = state
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up early (timeouts, the truncated fault) are normal here, not errors to print."""


class SampleServer:
    """Serve ``root/media`` on 127.0.0.1 with the faults of ``root/faults.json``; ``port=0`` picks a free port."""

    def __init__(self, root: Path, port: int = 0, slow_seconds: float = 30.0, latency: float = 0.0,
                 faults: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.state = ServerState(self.root / "media", {}, slow_seconds, latency)
        if faults is None:
            self.load_faults()
        else:
            self.state.faults = faults
            scale_file = self.root / "scale.json"
            self.state.scale = json.loads(scale_file.read_text()) if scale_file.exists() else None
        try:
            self._server = _Server(("127.0.0.1", port), self.state)
        except OSError as exc:
            raise FungilibError(
                f"cannot serve the sample on 127.0.0.1:{port} ({exc.strerror}); stop what uses that port or pick "
                "another"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="sample-server", daemon=True)

    def load_faults(self) -> None:
        """(Re)read ``faults.json`` (and a rehearsal's ``scale.json``): a sample may be generated after the
        server picked its port."""
        faults_file = self.root / "faults.json"
        self.state.faults = json.loads(faults_file.read_text()) if faults_file.exists() else {}
        scale_file = self.root / "scale.json"
        self.state.scale = json.loads(scale_file.read_text()) if scale_file.exists() else None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def allowing(self, params: Any) -> Any:
        """Download parameters that may fetch from this loopback server (and, as always, public hosts only)."""
        return dataclasses.replace(params, allow_hosts=[*params.allow_hosts, f"127.0.0.1:{self.port}"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> Counter:
        """How many times each URL path was requested (the tests read this)."""
        return self.state.requests

    def start(self) -> SampleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(root: Path | None, port: int = 0, **kwargs: float) -> Iterator[SampleServer | None]:
    """Serve the sample under ``root`` for the duration of the block; ``root=None`` serves nothing."""
    if root is None:
        yield None
        return
    with SampleServer(root, port, **kwargs) as server:
        yield server
