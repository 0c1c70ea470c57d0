"""The download stage's output: the photos, downloads.h5 (one row per photo: status, failure kind, sizes), its
resumable log and summary; failure kinds are an enum, and whether a retry can mend one is said here only."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from fungilib.fsutil import read_stage_table

DOWNLOADS_FILE = "downloads.h5"
DOWNLOADS_CSV = "downloads.csv"
DOWNLOAD_SUMMARY = "download_summary.json"
LOG_FILE = "download_log.jsonl"
SHARD_LOGS = "download_log.shard-*.jsonl"  # one per Dask task: no two processes append to one file
DOWNLOAD_CLAIM = ".download-claim"
IMAGES_DIR = "images"


class FailureKind(StrEnum):
    """What went wrong with one photo; the value is how its recorded reason starts."""

    HTTP_CLIENT = "http 4"
    HTTP_SERVER = "http 5"
    NOT_AN_IMAGE = "not an image"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too large"
    TOO_MANY_PIXELS = "too many pixels"
    UNSUPPORTED_URL = "unsupported URL"
    MALFORMED_URL = "malformed URL"
    REFUSED = "refused"
    EMPTY_BODY = "empty body"
    UNSAFE_ID = "unsafe id"
    UNRESOLVABLE = "cannot resolve"
    TIMEOUT = "timeout"
    OTHER = ""  # connection errors, a shard task that died, …

    @classmethod
    def of(cls, reason: str) -> FailureKind:
        return next((kind for kind in cls if kind.value and reason.startswith(kind.value)), cls.OTHER)

    @property
    def permanent(self) -> bool:
        """A retry will not mend it: a rerun skips it unless asked to retry failed items."""
        return self in PERMANENT


PERMANENT = frozenset({FailureKind.HTTP_CLIENT, FailureKind.NOT_AN_IMAGE, FailureKind.UNDECODABLE,
                       FailureKind.TOO_LARGE, FailureKind.TOO_MANY_PIXELS, FailureKind.UNSUPPORTED_URL,
                       FailureKind.MALFORMED_URL, FailureKind.REFUSED, FailureKind.EMPTY_BODY,
                       FailureKind.UNRESOLVABLE})


def is_permanent(reason: str) -> bool:
    return FailureKind.of(reason).permanent


def reason_kind(reason: str) -> str:
    """Group reasons for the summary: 'http 404', 'timeout', 'undecodable', … without per-item detail."""
    return reason.split(" (")[0].split(" after ")[0]


def load_downloads(path: Path) -> Any:
    """Read downloads.h5 (or the folder holding it)."""
    return read_stage_table(path, DOWNLOADS_FILE, "downloads", "download")
