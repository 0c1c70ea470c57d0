"""Stage 2, download: every image URL of observations.h5 → a resized RGB JPEG, with a per-image status table."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pandas as pd
from tqdm.auto import tqdm

from fungilib import __version__
from fungilib.claims import claim, holder
from fungilib.errors import FungilibError, plain_message
from fungilib.fsutil import (
    join_inside,
    read_stage_table,
    remove_stale_temps,
    safe_id,
    write_hdf,
    write_json,
)
from fungilib.host_policy import HostPolicy, RefusedAddress
from fungilib.ingest import load_observations
from fungilib.params import write_params
from fungilib.photos import PhotoError, decode_photo, save_photo

DOWNLOADS_FILE = "downloads.h5"
LOG_FILE = "download_log.jsonl"
SHARD_LOGS = "download_log.shard-*.jsonl"  # one per Dask task: no two processes append to one file
DOWNLOAD_CLAIM = ".download-claim"
# failures that a retry will not mend; a rerun skips them unless asked to retry failed items
PERMANENT = ("http 4", "not an image", "undecodable", "too large", "too many pixels", "unsupported URL",
             "malformed URL", "refused", "empty body")


@dataclass
class DownloadParams:
    """How to fetch: concurrency, patience, limits, and the size images are saved at."""

    observations: Path
    out: Path
    max_side: int = 512
    jpeg_quality: int = 90
    workers: int = 32
    per_host: int = 16
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 30_000_000
    max_pixels: int = 100_000_000
    limit: int = 0
    retry_failed: bool = False
    deadline: float = 60.0  # seconds one attempt at a photo may take in all (a server trickling bytes is cut off)
    allow_hosts: list[str] = field(default_factory=list)  # non-public hosts that may be fetched (see host_policy)
    # several machines: the photos in shards of shard_size, each a task on a Dask cluster writing into the same
    # (shared) folder; `workers` is then the concurrency of each task
    scheduler: str = ""  # an existing Dask scheduler, e.g. tcp://host:8786
    local_cluster: int = 0  # or a Dask LocalCluster of this many worker processes
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.scheduler and self.local_cluster:
            raise FungilibError("scheduler and local_cluster: choose one (an existing Dask cluster, or a local one)")
        if self.local_cluster < 0 or self.shard_size < 1:
            raise FungilibError("local_cluster must be >= 0 and shard_size >= 1")
        for name in ("max_side", "workers", "per_host", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise FungilibError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise FungilibError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0 or self.limit < 0:
            raise FungilibError("timeout must be > 0, and retries, backoff and limit >= 0")
        if self.deadline < self.timeout:
            raise FungilibError(f"deadline ({self.deadline:g} s) must be at least timeout ({self.timeout:g} s)")
        HostPolicy.validate(self.allow_hosts)


@dataclass
class DownloadResult:
    downloads: Path
    ok: int
    failed: int
    cached: int
    requested: int
    reasons: dict[str, int]
    seconds: float
    images_per_second: float


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class _DiskFull(Exception):
    """No room left for photos: the stage stops (every later photo would fail the same way)."""


class _Fetch(Exception):
    def __init__(self, reason: str, transient: bool, status: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.transient, self.status, self.retry_after = reason, transient, status, retry_after
        self.attempts = 1


class _Fetcher:
    """HTTP GETs over keep-alive connections (one per thread and host) with a per-host concurrency limit."""

    def __init__(self, params: DownloadParams) -> None:
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
        """One attempt: the response body and content type, following redirects; every failure is a _Fetch.

        The attempt has a deadline in all (``params.deadline``): the socket timeout bounds each read, the
        deadline a server that sends a byte just before every timeout."""
        started = time.monotonic()
        for _ in range(5):  # redirects
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 — a port that is not a number is a malformed URL
            except ValueError as exc:
                raise _Fetch(f"malformed URL ({exc})", transient=False) from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Fetch(f"unsupported URL scheme {parts.scheme or '(none)'!r}", transient=False)
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
                        raise _Fetch(f"http {status}", transient, status, min(retry_after, 30.0))
                    if length is not None and length > self.p.max_bytes:
                        self._drop(parts.scheme, netloc)
                        raise _Fetch(f"too large ({length} bytes > max_bytes)", transient=False)
                    body = _read_capped(resp, self.p.max_bytes + 1)
                    if len(body) > self.p.max_bytes:
                        self._drop(parts.scheme, netloc)
                        raise _Fetch(f"too large (> {self.p.max_bytes} bytes)", transient=False)
                    if length is not None and len(body) < length:
                        raise http.client.IncompleteRead(body, length - len(body))
                    if resp.will_close:
                        self._drop(parts.scheme, netloc)
                    return body, ctype
                except _Fetch:
                    raise
                except RefusedAddress as exc:
                    self._drop(parts.scheme, netloc)
                    raise _Fetch(str(exc), transient=False) from None
                except Exception as exc:  # any socket, HTTP or parsing failure of this attempt
                    self._drop(parts.scheme, netloc)
                    if expired.is_set():
                        raise _Fetch(f"deadline: no complete response in {self.p.deadline:g} s", transient=True) from None
                    if isinstance(exc, http.client.IncompleteRead):
                        raise _Fetch(f"truncated body ({len(exc.partial)} bytes received)", transient=True) from None
                    if isinstance(exc, TimeoutError):
                        raise _Fetch(f"timeout: no data for {self.p.timeout:g} s", transient=True) from None
                    if isinstance(exc, http.client.InvalidURL):
                        raise _Fetch(f"malformed URL ({exc})", transient=False) from None
                    raise _Fetch(f"connection error ({type(exc).__name__})", transient=True) from None
                finally:
                    watchdog.cancel()
        raise _Fetch("too many redirects", transient=False)

    def get(self, url: str) -> tuple[bytes, str, int]:
        """GET with retries on 5xx, 429, timeouts and connection errors (exponential backoff with jitter)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                body, ctype = self.get_once(url)
                return body, ctype, attempt
            except _Fetch as exc:
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


def save_image(body: bytes, target: Path, max_side: int, quality: int, max_pixels: int) -> dict:
    """Decode ``body`` fully, apply EXIF orientation, convert to RGB, shrink to ``max_side`` and save a JPEG."""
    if not body:
        raise _Fetch("empty body", transient=False)
    try:
        img, (width, height) = decode_photo(body, max_pixels, max_side)
    except PhotoError as exc:
        raise _Fetch(exc.reason, transient=False) from None
    saved = save_photo(img, target, quality, max_side)
    return {"orig_width": width, "orig_height": height, "width": saved.width, "height": saved.height}


def _is_complete_jpeg(path: Path) -> bool:
    """A saved file is complete when it ends with the JPEG end-of-image marker (writes are atomic anyway)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-2, 2)
            return handle.read(2) == b"\xff\xd9"
    except OSError:
        return False


def image_path(out: Path, taxon_key: str, media_id: str) -> Path:
    """``out/images/<taxonKey>/<media_id>.jpg`` built from sanitized ids, never from names or URLs."""
    return join_inside(Path(out) / "images", safe_id(taxon_key or "unplaced"), safe_id(media_id) + ".jpg")


def _read_log(path: Path) -> dict[str, dict]:
    """Records of ``download_log.jsonl`` and of the shard logs beside it (a cluster's tasks), oldest first."""
    records: dict[str, dict] = {}
    logs = [*([path] if path.exists() else []), *path.parent.glob(SHARD_LOGS)]
    for log in sorted(logs, key=lambda p: p.stat().st_mtime):
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                records[rec["url"]] = rec
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a killed run
    return records


def download_images(params: DownloadParams) -> DownloadResult:
    """Download, check, orient, convert and resize every image of ``params.observations`` into ``params.out``.

    Resumable: a complete file already saved is not requested again; failures recorded as permanent (404, not an
    image, undecodable) are not retried unless ``retry_failed``. Writes are atomic. Returns the summary and writes
    ``downloads.h5`` (key ``downloads``, one row per media_id), ``downloads.csv`` and ``download_summary.json``.
    """
    out = Path(params.out).resolve()
    with claim(out, name=DOWNLOAD_CLAIM) as mine:
        if not mine:
            raise FungilibError(f"{out}: another download is writing here ({holder(out, DOWNLOAD_CLAIM)}); wait for "
                                "it, or choose another --out")
        return _download_claimed(params, out)


def _download_claimed(params: DownloadParams, out: Path) -> DownloadResult:
    start = time.perf_counter()
    remove_stale_temps(out / "images")  # only this process writes here: leftovers are a killed run's
    obs = load_observations(params.observations)
    if params.limit:
        obs = obs.head(params.limit)
    urls = obs.drop_duplicates("url")[["url", "media_id", "taxonKey"]]
    log_path = out / LOG_FILE
    previous = _read_log(log_path)
    results: dict[str, dict] = {}
    todo: list[tuple[str, Path]] = []
    for url, media_id, taxon_key in urls.itertuples(index=False):
        try:
            target = image_path(out, taxon_key, media_id)
        except FungilibError as exc:
            results[url] = {"status": "failed", "reason": f"unsafe id: {exc}", "path": ""}
            continue
        rel = str(target.relative_to(out))
        prev = previous.get(url, {})
        if target.exists() and _is_complete_jpeg(target):
            results[url] = {**prev, "status": "ok", "reason": "", "path": rel, "cached": True}
        elif prev.get("status") == "failed" and prev.get("reason", "").startswith(PERMANENT) and not params.retry_failed:
            results[url] = {**prev, "cached": True}
        else:
            todo.append((url, target))

    if params.scheduler or params.local_cluster:
        fetched_by = _download_on_cluster(params, out, todo, results, len(urls))
        return _finish(params, out, obs, results, todo, fetched_by, start)
    fetcher = _Fetcher(params)

    def work(url: str, target: Path) -> dict:
        return fetch_one(fetcher, params, out, url, target)

    # unbuffered: a record is on disk once written, and a write that fails (a full disk) leaves nothing behind
    # to fail again when the file is closed
    with open(log_path, "ab", buffering=0) as log, ThreadPoolExecutor(params.workers) as pool, tqdm(
        total=len(urls), initial=len(results), desc="downloading", unit="img", smoothing=0.05
    ) as bar:
        futures = [pool.submit(work, url, target) for url, target in todo]
        try:
            for future in as_completed(futures):
                rec = future.result()
                results[rec["url"]] = rec
                log.write((json.dumps(rec) + "\n").encode())
                bar.update(1)
        except (KeyboardInterrupt, _DiskFull, OSError) as exc:
            for f in futures:
                f.cancel()
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, OSError) and exc.errno not in DISK_FULL:
                raise
            raise _disk_full(out, results, exc) from None
    return _finish(params, out, obs, results, todo, fetcher.requests, start)


def _disk_full(out: Path, results: dict[str, dict], exc: BaseException) -> FungilibError:
    saved = sum(1 for r in results.values() if r.get("status") == "ok")
    return FungilibError(f"{out}: the disk is full ({exc}); {saved} photos are saved and kept — free some "
                         "space and rerun the same command to go on")


def _finish(params: DownloadParams, out: Path, obs: pd.DataFrame, results: dict[str, dict],
            todo: list[tuple[str, Path]], requests: int, start: float) -> DownloadResult:
    table = _results_table(obs, results)
    write_hdf(out / DOWNLOADS_FILE, {"downloads": table})
    table.to_csv(out / "downloads.csv", index=False)
    seconds = time.perf_counter() - start
    fetched = len(todo)
    reasons = Counter(reason_kind(r) for r in table.loc[table["status"] != "ok", "reason"])
    result = DownloadResult(
        downloads=out / DOWNLOADS_FILE,
        ok=int((table["status"] == "ok").sum()),
        failed=int((table["status"] != "ok").sum()),
        cached=int(table["cached"].sum()),
        requested=requests,
        reasons=dict(reasons.most_common()),
        seconds=round(seconds, 2),
        images_per_second=round(fetched / seconds, 1) if fetched else 0.0,
    )
    write_json(out / "download_summary.json", {**result.__dict__, "downloads": str(result.downloads)})
    write_params(out / "params.yaml", params)
    return result


def fetch_one(fetcher: _Fetcher, params: DownloadParams, out: Path, url: str, target: Path) -> dict:
    """Fetch, check and save one photo: its record (status, reason, sizes), never an exception — except a full
    disk, which is not this photo's fault and stops the stage."""
    t0 = time.perf_counter()
    rec: dict = {"url": url, "path": str(target.relative_to(out)), "cached": False}
    try:
        body, ctype, attempts = fetcher.get(url)
        rec.update(attempts=attempts, bytes=len(body), content_type=ctype)
        if ctype.startswith(("text/", "application/json", "application/xml")):
            raise _Fetch(f"not an image ({ctype})", transient=False)
        rec.update(save_image(body, target, params.max_side, params.jpeg_quality, params.max_pixels))
        rec.update(status="ok", reason="")
    except _Fetch as exc:
        rec.setdefault("attempts", exc.attempts)
        rec.update(status="failed", reason=exc.reason, path="")
    except OSError as exc:
        if exc.errno in DISK_FULL:  # not this photo's fault: the stage stops, what is saved stays saved
            raise _DiskFull(exc.strerror or "disk full") from None
        rec.update(status="failed", reason=f"error ({type(exc).__name__}: {plain_message(str(exc))})", path="")
    except Exception as exc:  # anything else about this one URL is its row, never the stage's end
        rec.update(status="failed", reason=f"error ({type(exc).__name__}: {plain_message(str(exc))})", path="")
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def download_shard(params: DownloadParams, out: Path, items: list[tuple[str, str]]) -> dict[str, int]:
    """One Dask task: fetch ``items`` (url, path inside ``out``) with ``params.workers`` threads, each record
    appended to this task's own log. A photo already saved whole (by an earlier attempt of this task, on a worker
    that died) is not fetched again."""
    fetcher = _Fetcher(params)
    log_path = out / SHARD_LOGS.replace("*", f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    saved = {url for url, rel in items if (out / rel).exists() and _is_complete_jpeg(out / rel)}
    with open(log_path, "ab", buffering=0) as log, ThreadPoolExecutor(params.workers) as pool:
        for url, rel in items:
            if url in saved:
                log.write((json.dumps({"url": url, "path": rel, "status": "ok", "reason": "", "cached": True})
                           + "\n").encode())
        futures = [pool.submit(fetch_one, fetcher, params, out, url, out / rel) for url, rel in items if url not in saved]
        for future in as_completed(futures):
            log.write((json.dumps(future.result()) + "\n").encode())
    return {"requests": fetcher.requests, "items": len(items)}


def _download_on_cluster(params: DownloadParams, out: Path, todo: list[tuple[str, Path]], results: dict[str, dict],
                         total: int) -> int:
    """``todo`` in shards on a Dask cluster (``params.scheduler`` or a LocalCluster), progress counted as each shard
    lands; the shards' logs are merged into ``results`` at the end. Returns the requests made. The images folder must be one every worker
    writes to (a shared file system, as sweeps require); each file is written atomically."""
    from dask.distributed import Client, LocalCluster
    from dask.distributed import as_completed as landed

    items = [(url, str(target.relative_to(out))) for url, target in todo]
    shards = [items[i:i + params.shard_size] for i in range(0, len(items), params.shard_size)]
    requests = 0
    with contextlib.ExitStack() as stack:
        if params.local_cluster:
            cluster = stack.enter_context(LocalCluster(n_workers=params.local_cluster, threads_per_worker=1,
                                                       processes=True, dashboard_address=":0"))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(params.scheduler, timeout=30))
            except OSError as exc:
                raise FungilibError(f"scheduler {params.scheduler}: no Dask scheduler answers there ({exc}); start "
                                    "`dask scheduler` and `dask worker` on the hosts, or use local_cluster") from None
        bar = stack.enter_context(tqdm(total=total, initial=len(results), desc="downloading", unit="img",
                                       smoothing=0.05))
        futures = {client.submit(download_shard, params, out, shard, pure=False): shard for shard in shards}
        broken: dict[str, str] = {}
        for future in landed(futures):
            try:
                requests += future.result()["requests"]
            except _DiskFull as exc:
                client.cancel(list(futures))
                raise _disk_full(out, results, exc) from None
            except Exception as exc:  # a task that failed: its photos are recorded as such, the others go on
                reason = f"error (shard task: {type(exc).__name__}: {plain_message(str(exc))})"
                broken.update({url: reason for url, _ in futures[future]})
            bar.update(len(futures[future]))
    merged = _read_log(out / LOG_FILE)
    for url, _ in items:
        failed = {"url": url, "path": "", "status": "failed", "cached": False,
                  "reason": broken.get(url, "error (its shard task did not finish)")}
        results[url] = failed if url in broken else merged.get(url, failed)
    return requests


def reason_kind(reason: str) -> str:
    """Group reasons for the summary: 'http 404', 'timeout', 'undecodable', … without per-item detail."""
    return reason.split(" (")[0].split(" after ")[0]


def _results_table(obs: pd.DataFrame, results: dict[str, dict]) -> pd.DataFrame:
    """One row per media_id: images shared by several observations point at the one saved file."""
    columns = ["status", "reason", "path", "cached", "attempts", "bytes", "width", "height", "orig_width",
               "orig_height", "seconds"]
    per_url = pd.DataFrame.from_dict(results, orient="index").reindex(columns=columns)
    per_url.index.name = "url"
    table = obs[["media_id", "url"]].merge(per_url, left_on="url", right_index=True, how="left")
    table["status"] = table["status"].fillna("failed")
    table["reason"] = table["reason"].fillna("").astype(str)
    table["path"] = table["path"].fillna("").astype(str)
    table["cached"] = table["cached"].fillna(False).astype(bool)
    for name in columns[4:]:
        table[name] = pd.to_numeric(table[name], errors="coerce").fillna(0).astype("float64")
    return table.reset_index(drop=True)


def load_downloads(path: Path) -> pd.DataFrame:
    """Read downloads.h5 (or the folder holding it)."""
    return read_stage_table(path, DOWNLOADS_FILE, "downloads", "download")
