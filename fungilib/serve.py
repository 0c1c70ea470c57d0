"""Serve an export bundle's web classifier on loopback (``fungilib serve EXPORT_DIR``).

Plain static files from the bundle folder only (no directory listings, nothing outside it), with the same
Content-Security-Policy as the page's own (nothing but this origin may be contacted) and cross-origin isolation.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fungilib.artifacts.bundle import INDEX_PAGE, is_page
from fungilib.errors import FungilibError

CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
       "connect-src 'self'; worker-src 'self' blob:; manifest-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
# Cross-origin isolation: SharedArrayBuffer, hence WebAssembly threads for LiteRT.js (the service worker adds the
# same headers to what it serves, for static hosts that send none).
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}


def bundle_dir(path: Path) -> Path:
    """The bundle folder for an export folder or a run folder holding ``export/``."""
    path = Path(path)
    for candidate in (path, path / "export"):
        if is_page(candidate):
            return candidate.resolve()
    raise FungilibError(f"{path} is not an export bundle (no index.html and config.json); "
                        f"run `fungilib export RUN` first and serve RUN/export")


MAX_CONNECTIONS = 64  # connections served at once; more are closed at once (each holds a thread)
IDLE_TIMEOUT_S = 10.0  # a connection that sends nothing for this long is closed (a half-open request holds nothing)


class BundleHandler(SimpleHTTPRequestHandler):
    timeout = IDLE_TIMEOUT_S  # socket reads time out: a request line never finished frees its thread
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".webmanifest": "application/manifest+json",
                      ".js": "text/javascript", ".json": "application/json", ".bin": "application/octet-stream",
                      ".svg": "image/svg+xml", ".tflite": "application/octet-stream", ".wasm": "application/wasm"}
    quiet = False

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")  # revalidate online; the service worker serves offline
        super().end_headers()

    def send_head(self) -> Any:
        """Only regular files whose resolved path stays inside the bundle (a symlink placed in it that leads out
        is a 404, as is a NUL byte or anything else that is not a file of the bundle)."""
        root = Path(self.directory).resolve()
        path = self.translate_path(self.path)
        if "\0" in path:
            self.send_error(400, "bad request")
            return None
        target = Path(path)
        if target.is_dir():
            target = target / INDEX_PAGE
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        if real is None or not real.is_relative_to(root) or not real.is_file():
            self.send_error(404, "not found")
            return None
        return super().send_head()

    def list_directory(self, path: Any) -> None:  # no listings: only the bundle's files
        self.send_error(404, "not found")
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the base class's name
        if not self.quiet:
            super().log_message(format, *args)


class BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most MAX_CONNECTIONS connections at once and closes the others."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once, no thread
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_server(bundle: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                handler_class: type[BundleHandler] = BundleHandler) -> ThreadingHTTPServer:
    """A server for ``bundle``; ``handler_class``: :class:`BundleHandler` or a subclass (a benchmark's, counting
    the bytes it sends)."""
    handler = type("Handler", (handler_class,), {"quiet": quiet})
    try:
        server = BoundedServer((host, port), partial(handler, directory=str(bundle_dir(bundle))))
    except OSError as exc:
        fix = ("pick another port with --port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else
               "--host must be an address of this machine (127.0.0.1, or 0.0.0.0 for every network)")
        raise FungilibError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}") from None
    return server


@contextlib.contextmanager
def serving(bundle: Path, host: str = "127.0.0.1", port: int = 0,
            handler_class: type[BundleHandler] = BundleHandler) -> Iterator[str]:
    """Serve ``bundle`` in a background thread for the duration of the block; yields the page's URL."""
    server = make_server(bundle, host, port, quiet=True, handler_class=handler_class)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
