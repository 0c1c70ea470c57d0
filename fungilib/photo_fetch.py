"""One photo of the download stage: fetched, checked, oriented, converted, resized and saved atomically, its
record (status, reason, sizes) returned, never raised; the stage's resumable log read back."""

from __future__ import annotations

import contextlib
import errno
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fungilib.artifacts.downloads import IMAGES_DIR, SHARD_LOGS
from fungilib.errors import FungilibError, plain_message
from fungilib.fsutil import join_inside, safe_id
from fungilib.http_client import Fetcher, FetchError
from fungilib.photos import PhotoError, decode_photo, photo_pixels, save_photo

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFull(Exception):
    """No room left for photos: the stage stops (every later photo would fail the same way)."""


class PixelBudget:
    """The pixels decoded at once by all the threads of one process: a photo waits until its pixels fit, so memory
    does not grow with ``workers`` × the largest photo (herbarium scans of 100 MP arrive by accident)."""

    def __init__(self, pixels: int) -> None:
        self.total = self.free = pixels
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self.free += pixels
                self._changed.notify_all()


def save_image(body: bytes, target: Path, max_side: int, quality: int, max_pixels: int,
               budget: PixelBudget | None = None) -> dict:
    """Decode ``body`` fully, apply EXIF orientation, convert to RGB, shrink to ``max_side`` and save a JPEG; with a
    ``budget``, only once its pixels fit in it."""
    if not body:
        raise FetchError("empty body", transient=False)
    with budget.hold(photo_pixels(body)) if budget is not None else contextlib.nullcontext():
        try:
            img, (width, height) = decode_photo(body, max_pixels, max_side)
        except PhotoError as exc:
            raise FetchError(exc.reason, transient=False) from None
        saved = save_photo(img, target, quality, max_side)
        del img
    return {"orig_width": width, "orig_height": height, "width": saved.width, "height": saved.height}


def is_complete_jpeg(path: Path) -> bool:
    """A saved file is complete when it ends with the JPEG end-of-image marker (writes are atomic anyway)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-2, 2)
            return handle.read(2) == b"\xff\xd9"
    except OSError:
        return False


def image_path(out: Path, taxon_key: str, media_id: str) -> Path:
    """``out/images/<taxonKey>/<media_id>.jpg`` built from sanitized ids, never from names or URLs."""
    return join_inside(Path(out) / IMAGES_DIR, safe_id(taxon_key or "unplaced"), safe_id(media_id) + ".jpg")


def read_log(path: Path) -> dict[str, dict]:
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


def disk_full_error(out: Path, results: dict[str, dict], exc: BaseException) -> FungilibError:
    saved = sum(1 for r in results.values() if r.get("status") == "ok")
    return FungilibError(f"{out}: the disk is full ({exc}); {saved} photos are saved and kept — free some "
                         "space and rerun the same command to go on")


def fetch_one(fetcher: Fetcher, params: Any, out: Path, url: str, target: Path,
              budget: PixelBudget | None = None) -> dict:
    """Fetch, check and save one photo: its record (status, reason, sizes), never an exception — except a full
    disk, which is not this photo's fault and stops the stage."""
    t0 = time.perf_counter()
    rec: dict = {"url": url, "path": str(target.relative_to(out)), "cached": False}
    try:
        body, ctype, attempts = fetcher.get(url)
        rec.update(attempts=attempts, bytes=len(body), content_type=ctype)
        if ctype.startswith(("text/", "application/json", "application/xml")):
            raise FetchError(f"not an image ({ctype})", transient=False)
        rec.update(save_image(body, target, params.max_side, params.jpeg_quality, params.max_pixels, budget))
        rec.update(status="ok", reason="")
    except FetchError as exc:
        rec.setdefault("attempts", exc.attempts)
        rec.update(status="failed", reason=exc.reason, path="")
    except OSError as exc:
        if exc.errno in DISK_FULL:  # not this photo's fault: the stage stops, what is saved stays saved
            raise DiskFull(exc.strerror or "disk full") from None
        rec.update(status="failed", reason=f"error ({type(exc).__name__}: {plain_message(str(exc))})", path="")
    except Exception as exc:  # anything else about this one URL is its row, never the stage's end
        rec.update(status="failed", reason=f"error ({type(exc).__name__}: {plain_message(str(exc))})", path="")
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    rec["finished_at"] = round(time.time(), 3)  # wall clock: throughput over time in the download report
    return rec
