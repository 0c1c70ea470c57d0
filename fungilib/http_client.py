"""An HTTP client for photo hosts: keep-alive connections per thread and host, a per-host concurrency limit, a
deadline per attempt, capped bodies, retries with back-off and Retry-After, and the host policy checked at every
redirect."""

from __future__ import annotations

import email.utils
import http.client
import random
import re
import socket
import threading
import time
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from fungilib import __version__
from fungilib.host_policy import HostPolicy, RefusedAddress, Unresolvable


class FetchLimits(Protocol):
    """What the client needs of the download parameters."""

    per_host: int
    timeout: float
    deadline: float
    max_bytes: int
    retries: int
    backoff: float
    allow_hosts: list[str]


class FetchError(Exception):
    """One attempt at a URL failed: its reason, and whether a retry may mend it."""

    def __init__(self, reason: str, transient: bool, status: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.transient, self.status, self.retry_after = reason, transient, status, retry_after
        self.attempts = 1


class Fetcher:
    """HTTP GETs over keep-alive connections (one per thread and host) with a per-host concurrency limit."""

    def __init__(self, params: FetchLimits) -> None:
        self.p = params
        self._local = threading.local()
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._policy = HostPolicy(tuple(params.allow_hosts))
        self.requests = 0

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            if host not in self._host_slots:
                self._host_slots[host] = threading.BoundedSemaphore(self.p.per_host)
            return self._host_slots[host]

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        key = (scheme, netloc)
        if key not in pool:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.p.timeout)
            conn._create_connection = self._policy.create_connection  # type: ignore[attr-defined]
            pool[key] = conn
        return pool[key]

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = getattr(self._local, "pool", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def get_once(self, url: str) -> tuple[bytes, str]:
        """One attempt: the response body and content type, following redirects; every failure is a FetchError.

        The attempt has a deadline in all (``params.deadline``): the socket timeout bounds each read, the
        deadline a server that sends a byte just before every timeout."""
        started = time.monotonic()
        for _ in range(5):  # redirects
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 — a port that is not a number is a malformed URL
            except ValueError as exc:
                raise FetchError(f"malformed URL ({exc})", transient=False) from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError(f"unsupported URL scheme {parts.scheme or '(none)'!r}", transient=False)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            netloc = parts.netloc.rpartition("@")[2]  # credentials in a URL are never sent
            with self._slot(netloc):
                conn = self._connection(parts.scheme, netloc)
                remaining = self.p.deadline - (time.monotonic() - started)
                expired = threading.Event()
                watchdog = threading.Timer(max(remaining, 0.0), _cut_off, [conn, expired])
                watchdog.daemon = True
                watchdog.start()
                try:
                    with self._lock:
                        self.requests += 1
                    conn.request("GET", path, headers={"User-Agent": f"fungilib/{__version__}", "Accept": "image/*"})
                    resp = conn.getresponse()
                    status = resp.status
                    length = _content_length(resp.headers.get("Content-Length"))
                    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    if status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        _read_capped(resp, 1 << 16)
                        self._drop(parts.scheme, netloc)
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if status != 200:
                        _read_capped(resp, 1 << 16)
                        self._drop(parts.scheme, netloc)
                        retry_after = _retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else 0.0
                        transient = status >= 500 or status == 429
                        raise FetchError(f"http {status}", transient, status, min(retry_after, 30.0))
                    if length is not None and length > self.p.max_bytes:
                        self._drop(parts.scheme, netloc)
                        raise FetchError(f"too large ({length} bytes > max_bytes)", transient=False)
                    body = _read_capped(resp, self.p.max_bytes + 1)
                    if len(body) > self.p.max_bytes:
                        self._drop(parts.scheme, netloc)
                        raise FetchError(f"too large (> {self.p.max_bytes} bytes)", transient=False)
                    if length is not None and len(body) < length:
                        raise http.client.IncompleteRead(body, length - len(body))
                    if resp.will_close:
                        self._drop(parts.scheme, netloc)
                    return body, ctype
                except FetchError:
                    raise
                except RefusedAddress as exc:
                    self._drop(parts.scheme, netloc)
                    raise FetchError(str(exc), transient=False) from None
                except Unresolvable as exc:
                    self._drop(parts.scheme, netloc)
                    reason = (f"name lookup failed for now: {exc.host}" if exc.temporary  # a retry may mend it
                              else f"cannot resolve {exc.host}")
                    raise FetchError(reason, transient=exc.temporary) from None
                except Exception as exc:  # any socket, HTTP or parsing failure of this attempt
                    self._drop(parts.scheme, netloc)
                    if expired.is_set():
                        raise FetchError(f"deadline: no complete response in {self.p.deadline:g} s",
                                         transient=True) from None
                    if isinstance(exc, http.client.IncompleteRead):
                        raise FetchError(f"truncated body ({len(exc.partial)} bytes received)",
                                         transient=True) from None
                    if isinstance(exc, TimeoutError):
                        raise FetchError(f"timeout: no data for {self.p.timeout:g} s", transient=True) from None
                    if isinstance(exc, http.client.InvalidURL):
                        raise FetchError(f"malformed URL ({exc})", transient=False) from None
                    raise FetchError(f"connection error ({type(exc).__name__})", transient=True) from None
                finally:
                    watchdog.cancel()
        raise FetchError("too many redirects", transient=False)

    def get(self, url: str) -> tuple[bytes, str, int]:
        """GET with retries on 5xx, 429, timeouts and connection errors (exponential backoff with jitter)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                body, ctype = self.get_once(url)
                return body, ctype, attempt
            except FetchError as exc:
                if not exc.transient or attempt > self.p.retries:
                    exc.reason += f" after {attempt} attempts" if attempt > 1 else ""
                    exc.attempts = attempt
                    raise
                delay = exc.retry_after or self.p.backoff * 2 ** (attempt - 1)
                time.sleep(delay * random.uniform(0.75, 1.25))


def _cut_off(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    """The deadline passed: shut the socket so the blocked read returns at once."""
    expired.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _content_length(value: str | None) -> int | None:
    """A declared body length, or None when absent or not a number (then the body is read up to max_bytes)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110), else 0."""
    if not value:
        return 0.0
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when is None:
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def _read_capped(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """Read a body of unknown length (chunked) until its end or ``cap`` bytes."""
    chunks, size = [], 0
    while size < cap:
        chunk = resp.read(min(1 << 16, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
