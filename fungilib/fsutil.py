"""Atomic file writes and paths that cannot escape their folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from fungilib.errors import FungilibError

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout: notebooks/, params/, web/

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_id(value: object) -> str:
    """Return ``value`` as a string usable as one path component, or raise.

    Ids come from archives we do not control: anything but letters, digits, ``_``, ``.`` and ``-``
    (and so ``..``, ``/`` or an empty string) is refused rather than silently rewritten.
    """
    text = str(value)
    if not _SAFE_ID.match(text) or text in {".", ".."} or ".." in text:
        raise FungilibError(f"unsafe id {text!r}: ids used in file names may hold only letters, digits, '_', '.', '-'")
    return text


def join_inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse a result that leaves ``root``."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise FungilibError(f"path {path} escapes its folder {root}")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only when the block succeeds.

    A killed process leaves at most a ``.tmp-*`` file, never a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` when the block exits cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


COMPACT_MIN_ROWS = 1000  # text columns shorter than this stay plain text


def worth_a_dictionary(distinct: int, rows: int) -> bool:
    """Whether a text column repeats enough to store as codes and a dictionary (categorical): fewer distinct values
    than a quarter of its rows (species, licences, ranks; not ids or URLs)."""
    return rows >= COMPACT_MIN_ROWS and distinct < rows // 4


def compact_text(frame: Any) -> Any:
    """Text columns with few distinct values (species, licence, rank, …) as categoricals, the rest as plain
    objects: at GBIF scale this divides memory, join and HDF write times several-fold."""
    frame = frame.copy(deep=False)  # new columns replace the old ones here only; the caller's frame is unchanged
    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind in "iufb" or isinstance(column.dtype, pd.CategoricalDtype):
            continue
        head = column.iloc[:10_000]
        if len(column) < COMPACT_MIN_ROWS or head.nunique() > len(head) // 2:  # ids, URLs, dates: plain text
            frame[name] = column.fillna("").astype(str).astype(object)
            continue
        codes, uniques = pd.factorize(column.fillna(""))
        if worth_a_dictionary(len(uniques), len(column)):
            frame[name] = pd.Categorical.from_codes(codes, pd.Index(uniques.astype(str), dtype=object))
        else:
            frame[name] = column.fillna("").astype(str).astype(object)
    return frame


def write_hdf(path: Path, tables: dict[str, Any]) -> None:
    """Write pandas DataFrames to one HDF5 file (PyTables ``table`` format), atomically. An empty table is
    written too (in ``fixed`` format: pandas skips an empty ``table`` write), so every key a stage promises exists."""
    with atomic_path(path) as tmp:
        for key, frame in tables.items():
            if frame.empty:
                frame.astype({c: object for c in frame.columns if frame[c].dtype.kind not in "iufb"}).to_hdf(
                    tmp, key=key, mode="a", format="fixed")
                continue
            _write_table(compact_text(frame), tmp, key)


HDF_CHUNK_ROWS = 200_000
HDF_TABLE_OPTIONS = {"mode": "a", "format": "table", "index": False, "complevel": 5, "complib": "blosc:lz4"}


def _write_table(frame: Any, path: Path, key: str) -> None:
    """One table, in chunks of ``HDF_CHUNK_ROWS`` rows when it is bigger: PyTables turns text into fixed-width byte
    arrays, and at GBIF scale (millions of rows, URLs of 200 characters) doing that for the whole frame at once
    doubled the peak memory of ingest. Text columns then get the width of their longest value up front, so every
    chunk fits (which makes them PyTables data columns; a small table is written in one go, as before)."""
    options = {"key": key, **HDF_TABLE_OPTIONS}
    if len(frame) <= HDF_CHUNK_ROWS:
        frame.to_hdf(path, **options)
        return
    widths = {name: max(1, int(frame[name].str.len().max())) for name in frame.columns if frame[name].dtype == object}
    for start in range(0, len(frame), HDF_CHUNK_ROWS):
        frame.iloc[start:start + HDF_CHUNK_ROWS].to_hdf(path, append=start > 0, min_itemsize=widths or None, **options)


def _fixed_width(column: Any, width: int) -> np.ndarray:
    """An Arrow text column (no nulls) → a NumPy ``S{width}`` array, straight from Arrow's offsets and bytes:
    pandas would encode and copy every value in Python (a third of ingest's time at GBIF scale)."""
    import pyarrow as pa

    if column.null_count:
        raise ValueError("text column with nulls: fill them before writing")
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    _, offsets_buffer, data_buffer = column.buffers()
    offsets = np.frombuffer(offsets_buffer, offset_type)[column.offset:column.offset + len(column) + 1]
    lengths = np.diff(offsets)
    out = np.zeros((len(column), width), np.uint8)
    if data_buffer is not None and len(column):
        # row-major boolean assignment: row i's first lengths[i] cells take its bytes, in order
        out[np.arange(width) < lengths[:, None]] = np.frombuffer(data_buffer, np.uint8)[offsets[0]:offsets[-1]]
    return out.view(f"S{width}").ravel()


def _pandas_head(part: Any, categories: dict[str, Any], widths: dict[str, int]) -> Any:
    """The table's first rows as the pandas frame whose ``to_hdf`` lays out the HDF5 table."""
    frame = pd.DataFrame(index=pd.RangeIndex(part.num_rows))
    for name in part.column_names:
        column = part.column(name).combine_chunks()
        if name in categories:
            frame[name] = pd.Categorical.from_codes(column.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                                                    categories[name])
        elif name in widths:
            frame[name] = pd.Series(column.to_numpy(zero_copy_only=False), index=frame.index, dtype=object)
        else:
            frame[name] = column.to_numpy(zero_copy_only=False)
    return frame


def _append_rows(store_table: Any, part: Any, start: int) -> None:
    """Append an Arrow slice to a table pandas created (its first rows), as pandas lays it out: the ``index``
    column, one fixed-width column per text column, and ``values_block_N`` blocks whose ``…_kind`` attribute
    names the frame columns they hold (category codes, numbers) — built in NumPy, no Python object per value."""
    rows = np.zeros(part.num_rows, dtype=store_table.dtype)
    for field in store_table.dtype.names:
        target = rows[field]
        if field == "index":
            target[:] = np.arange(start, start + part.num_rows)
            continue
        names = [field] if not field.startswith("values_block_") else list(store_table.attrs[f"{field}_kind"])
        for position, name in enumerate(names):
            column = part.column(name).combine_chunks()
            if target.dtype.kind == "S":
                values = _fixed_width(column, target.dtype.itemsize)
            elif hasattr(column, "indices"):
                values = column.indices.to_numpy(zero_copy_only=False)
            else:
                values = column.to_numpy(zero_copy_only=False)
            if target.ndim == 2:
                target[:, position] = values
            else:
                target[:] = values
    store_table.append(rows)


def write_arrow_hdf(path: Path, key: str, table: Any, chunk_rows: int = HDF_CHUNK_ROWS,
                    head_rows: int = 1000) -> None:
    """A non-empty Arrow table (an empty one goes through ``write_hdf``) → one HDF5 key in pandas' ``table`` format
    (``pandas.read_hdf`` reads it), atomically. Pandas writes the first ``head_rows`` rows, which lays out the table
    and its metadata (dictionary columns become categoricals with one set of categories for the whole table, other
    text fixed-width strings as wide as the longest value in bytes, numbers as they are); the rest is appended
    ``chunk_rows`` at a time straight from Arrow's buffers into that layout (:func:`_append_rows`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import tables

    categories: dict[str, Any] = {}
    widths: dict[str, int] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_dictionary(column.type):
            categories[name] = pd.Index(column.dictionary.to_numpy(zero_copy_only=False).astype(object), dtype=object)
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            widths[name] = max(1, int(pc.max(pc.binary_length(column)).as_py() or 0))
    with atomic_path(path) as tmp:
        head = table.slice(0, head_rows)
        _pandas_head(head, categories, widths).to_hdf(tmp, key=key, min_itemsize=widths or None, **HDF_TABLE_OPTIONS)
        if table.num_rows > head.num_rows:
            with tables.open_file(tmp, mode="a") as handle:
                store_table = handle.get_node(f"/{key}/table")
                for start in range(head.num_rows, table.num_rows, chunk_rows):
                    _append_rows(store_table, table.slice(start, chunk_rows), start)


def remove_stale_temps(folder: Path) -> int:
    """Delete ``.tmp-*`` leftovers of a killed run under ``folder``; return how many were removed."""
    count = 0
    for tmp in Path(folder).rglob(".tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            count += 1
    return count


def read_stage_table(path: Path, file_name: str, key: str, stage: str) -> Any:
    """Read ``key`` of a stage's HDF output, given the file or the folder holding it; missing → one clear line."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.exists():
        raise FungilibError(f"{path}: no {file_name}; run the {stage} stage first")
    return read_hdf(path, key)


def read_hdf(path: Path, key: str) -> Any:
    """Read a table written by :func:`write_hdf`; categorical text columns come back as plain text. A file that
    is not such a table (truncated, another format, the key missing) is one line naming it."""
    try:
        frame = pd.read_hdf(path, key)
    except FileNotFoundError:
        raise FungilibError(f"{path}: no such file") from None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError,
            AttributeError) as exc:  # HDF5ExtError: RuntimeError
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FungilibError(f"{path}: not a readable fungilib table (key {key!r}: {detail[:100]}); "
                            "rerun the stage that writes it") from None
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(str)
    return frame
