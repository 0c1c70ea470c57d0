"""What a stage's input contains, as a short hash: the key of everything computed from it. Content, never
timestamps, so a rerun on unchanged data finds its finished runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fungilib.artifacts.dataset import has_manifest, manifest_file
from fungilib.fsutil import read_hdf

MANIFEST_TABLES = ("manifest", "labels")


def content_key(*parts: Any) -> str:
    """A 12-hex-digit key of JSON-able parts (parameters, upstream keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _file_digest(path: Path, digest: Any) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def _manifest_digest(folder: Path) -> str:
    """A manifest folder's version: the rows of its manifest and label tables (the executed notebook, plots and
    the HDF5 file's own bytes, which change on every write, do not count)."""
    import pandas as pd

    digest = hashlib.sha256()
    for key in MANIFEST_TABLES:
        table = read_hdf(manifest_file(folder), key)
        table = table[sorted(table.columns)]
        digest.update(key.encode() + json.dumps(list(table.columns)).encode())
        digest.update(pd.util.hash_pandas_object(table.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def source_version(path: str | Path) -> str:
    """The version of a pipeline's source: a file's bytes; a manifest folder's tables; any other folder's file
    names and bytes. A path that does not exist (yet) is its own version."""
    path = Path(path)
    if path.is_file():
        digest = hashlib.sha256()
        _file_digest(path, digest)
        return digest.hexdigest()[:16]
    if has_manifest(path):
        return _manifest_digest(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            _file_digest(file, digest)
        return digest.hexdigest()[:16]
    return content_key(str(path))
