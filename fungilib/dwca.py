"""Darwin Core Archive reading driven by meta.xml: zip, tgz or folder, any column order, delimiter or encoding."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from fungilib.dwc_terms import KNOWN_TERMS
from fungilib.errors import FungilibError

OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MEDIA_ROW_TYPES = {"http://rs.gbif.org/terms/1.0/Multimedia", "http://rs.tdwg.org/ac/terms/Multimedia"}
_DATA_SUFFIXES = {".txt", ".csv", ".tsv", ".tab"}
MAX_HEADER_BYTES = 1 << 20  # a header or sample line longer than this is not a table row
BLOCK_SIZE = 1 << 24  # pyarrow's read block: also the longest line a table may hold (memory stays bounded)
# What a damaged zip or tgz raises while it is read: one line naming the archive, never a traceback
DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError)


_CANONICAL = {t.lower(): t for t in KNOWN_TERMS}


def local_name(term: str) -> str:
    """``http://rs.tdwg.org/dwc/terms/scientificName`` → ``scientificName`` (known terms in canonical case)."""
    name = term.rstrip("/").replace("#", "/").rsplit("/", 1)[-1]
    return _CANONICAL.get(name.lower(), name)


def _unescape(value: str | None, default: str) -> str:
    if value is None:
        return default
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")


@dataclass
class FieldSpec:
    term: str
    index: int | None
    default: str | None


@dataclass
class TableSpec:
    """One data file of the archive as meta.xml describes it."""

    row_type: str
    location: str
    encoding: str = "utf-8"
    delimiter: str = ","
    quote: str = '"'
    header_lines: int = 0
    id_index: int | None = None
    fields: dict[str, FieldSpec] = field(default_factory=dict)  # by local term name

    @property
    def kind(self) -> str:
        return local_name(self.row_type)


@dataclass
class RowIssues:
    """Rows a reader had to skip (wrong number of columns): counted and reported, never lost silently."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    replaced_bytes: int = 0  # bytes that were not valid in the table's encoding, replaced by U+FFFD

    def handler(self, row: pacsv.InvalidRow) -> str:
        self.count += 1
        if len(self.first) < 3:
            where = f"line {row.number}" if row.number is not None else f"row {self.count} skipped"
            text = row.text if len(row.text) <= 60 else row.text[:60] + "…"
            self.first.append(f"{where}: expected {row.expected_columns} columns, got {row.actual_columns}: {text!r}")
        return "skip"


class _Utf8Repair(io.RawIOBase):
    """A byte stream re-encoded to valid UTF-8: bytes invalid in ``encoding`` become U+FFFD and are counted."""

    def __init__(self, raw: IO[bytes], encoding: str, issues: RowIssues) -> None:
        self._raw, self._issues = raw, issues
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            text = self._decoder.decode(chunk, final=not chunk)
            self._issues.replaced_bytes += text.count("\ufffd")
            self._pending = text.encode("utf-8")
            if not chunk:
                break
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class Archive:
    """A Darwin Core Archive opened for reading; use as a context manager (a tgz is extracted to a temp folder)."""

    def __init__(self, source: Path) -> None:
        self.source = Path(source)
        self._tmp: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        try:
            self._open_container()
            self.core, self.extensions = self._read_descriptor()
        except FungilibError:
            self.close()  # a tgz's extracted copy never outlives a failed open
            raise
        except DAMAGED as exc:
            self.close()
            raise FungilibError(f"{self.source}: damaged archive ({_damage(exc)})") from None

    # -- container ---------------------------------------------------------------------------------------------
    def _open_container(self) -> None:
        src = self.source
        if not src.exists():
            raise FungilibError(f"{src}: no such file or folder")
        if src.is_dir():
            self._root = src
        elif zipfile.is_zipfile(src):
            self._zip = zipfile.ZipFile(src)
        elif tarfile.is_tarfile(src):
            self._tmp = Path(tempfile.mkdtemp(prefix="fungilib-dwca-"))
            with tarfile.open(src) as tar:
                try:
                    tar.extractall(self._tmp, filter="data")  # refuses ../, absolute paths and links leaving it
                except tarfile.FilterError as exc:
                    raise FungilibError(f"{src}: refused: a member would be written outside the archive "
                                        f"({exc})") from None
            self._root = self._tmp
        else:
            raise FungilibError(f"{src}: not a Darwin Core Archive (expected a .zip, a .tgz or a folder)")
        names = self._names()
        metas = sorted((n for n in names if PurePosixPath(n).name.lower() == "meta.xml"), key=lambda n: n.count("/"))
        data = [n for n in names if PurePosixPath(n).suffix.lower() in _DATA_SUFFIXES]
        if metas:
            self._prefix = str(PurePosixPath(metas[0]).parent).lstrip(".")
            self._meta_name: str | None = metas[0]
        else:
            self._meta_name = None
            self._prefix = str(PurePosixPath(data[0]).parent).lstrip(".") if len(data) == 1 else ""

    def _names(self) -> list[str]:
        if self._zip is not None:
            names = [i.filename for i in self._zip.infolist() if not i.is_dir()]
        else:
            names = [p.relative_to(self._root).as_posix() for p in self._root.rglob("*") if p.is_file()]
        return [n for n in names if "__MACOSX" not in n and not PurePosixPath(n).name.startswith("._")]

    def _member(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _contained(self, name: str) -> str:
        """The member for ``name``, refused when it could leave the archive (absolute, ``..``, a symlink out)."""
        member = PurePosixPath(self._member(name.replace("\\", "/")))
        if not name.strip() or member.is_absolute() or ".." in member.parts or ":" in member.parts[0]:
            raise FungilibError(f"{self.source}: meta.xml names {name!r}, a path outside the archive; refused")
        if self._zip is None:
            root = self._root.resolve()
            if not (self._root / member).resolve().is_relative_to(root):
                raise FungilibError(f"{self.source}: {name!r} is a link leading outside the archive; refused")
        return str(member)

    def open_binary(self, name: str) -> IO[bytes]:
        """Open a file of the archive (a name relative to meta.xml's folder) for reading bytes."""
        member = self._contained(name)
        try:
            if self._zip is not None:
                return self._zip.open(member)
            return open(self._root / member, "rb")
        except (KeyError, FileNotFoundError, IsADirectoryError):
            raise FungilibError(f"{self.source}: meta.xml names {name!r}, which is not in the archive") from None
        except DAMAGED as exc:
            raise FungilibError(f"{self.source}: damaged archive: cannot open {name!r} ({_damage(exc)})") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- descriptor --------------------------------------------------------------------------------------------
    def _read_descriptor(self) -> tuple[TableSpec, list[TableSpec]]:
        if self._meta_name is None:
            return self._simple_descriptor(), []
        with self.open_binary("meta.xml") as handle:
            text = handle.read()
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise FungilibError(f"{self.source}: meta.xml is not valid XML ({exc})") from None
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        core_el = root.find(f"{ns}core")
        if core_el is None:
            raise FungilibError(f"{self.source}: meta.xml has no <core> element")
        core = self._table_spec(core_el, ns, "id")
        extensions = [self._table_spec(el, ns, "coreid") for el in root.findall(f"{ns}extension")]
        return core, extensions

    def _table_spec(self, el: ET.Element, ns: str, id_tag: str) -> TableSpec:
        location = (el.findtext(f"{ns}files/{ns}location") or "").strip()
        row_type = el.get("rowType", "")
        if not location:
            raise FungilibError(f"{self.source}: meta.xml: <{el.tag.removeprefix(ns)}> {row_type} has no <files><location>")
        id_el = el.find(f"{ns}{id_tag}")
        spec = TableSpec(
            row_type=row_type,
            location=location,
            encoding=el.get("encoding", "utf-8") or "utf-8",
            delimiter=_unescape(el.get("fieldsTerminatedBy"), ","),
            quote=_unescape(el.get("fieldsEnclosedBy"), '"'),
            header_lines=int(el.get("ignoreHeaderLines", "0") or 0),
            id_index=int(id_el.get("index", "0")) if id_el is not None else None,
        )
        for f in el.findall(f"{ns}field"):
            term = (f.get("term") or "").strip()
            if not term:
                raise FungilibError(f"{self.source}: meta.xml: a <field> of {spec.location} has no term")
            index = f.get("index")
            spec.fields[local_name(term)] = FieldSpec(term, int(index) if index not in (None, "") else None, f.get("default"))
        return spec

    def _simple_descriptor(self) -> TableSpec:
        """No meta.xml: a 'simple Darwin Core' archive is one data file whose header holds the terms."""
        names = self._names()
        data = [n for n in names if PurePosixPath(n).suffix.lower() in _DATA_SUFFIXES]
        others = [n for n in names if n not in data and PurePosixPath(n).name.lower() != "eml.xml"]
        if len(data) != 1 or others:
            raise FungilibError(
                f"{self.source}: no meta.xml, and not a simple Darwin Core archive (one data file, optionally eml.xml)"
            )
        name = PurePosixPath(data[0]).name
        with self.open_binary(name) as handle:
            first = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="").readline(
                MAX_HEADER_BYTES)
        delimiter = "\t" if first.count("\t") > first.count(",") else ","
        header = next(csv.reader([first], delimiter=delimiter))
        spec = TableSpec(OCCURRENCE, name, "utf-8", delimiter, '"', 1, None)
        for i, term in enumerate(header):
            spec.fields[local_name(term.strip())] = FieldSpec(term.strip(), i, None)
        id_candidates = [n for n in ("gbifID", "occurrenceID", "id") if n in spec.fields]
        spec.id_index = spec.fields[id_candidates[0]].index if id_candidates else None
        return spec

    # -- data --------------------------------------------------------------------------------------------------
    def _read_csv(self, spec: TableSpec, read_opts: pacsv.ReadOptions, parse_opts: pacsv.ParseOptions,
                  convert_opts: pacsv.ConvertOptions, issues: RowIssues) -> pa.Table:
        """pyarrow's reader at full speed; a file with bytes invalid in its encoding is read again through a
        repairing stream (each bad byte replaced and counted), never failed whole for one byte.

        A file on disk (folder or extracted tgz) is opened by pyarrow itself, with its threads. A zip member is a
        Python stream: pyarrow then reads it on the calling thread, because its read-ahead threads would call
        into Python during interpreter shutdown after an error (a fatal crash seen under load)."""
        for repair in (False, True):
            try:
                if not repair and self._zip is None:
                    return pacsv.read_csv(str(self._root / self._contained(spec.location)), read_opts, parse_opts,
                                          convert_opts)
                with self.open_binary(spec.location) as handle:
                    serial = {"column_names": read_opts.column_names, "skip_rows": read_opts.skip_rows,
                              "block_size": read_opts.block_size, "use_threads": False}
                    if not repair:
                        return pacsv.read_csv(handle, pacsv.ReadOptions(encoding=read_opts.encoding, **serial),
                                              parse_opts, convert_opts)
                    stream = io.BufferedReader(_Utf8Repair(handle, _py_encoding(spec.encoding), issues), 1 << 20)
                    return pacsv.read_csv(stream, pacsv.ReadOptions(encoding="utf8", **serial), parse_opts,
                                          convert_opts)
            except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                message = str(exc).splitlines()[0]
                if not repair and (isinstance(exc, UnicodeDecodeError) or "UTF8" in message or "utf-8" in message.lower() or "decode" in message.lower()):
                    continue
                if "straddl" in message:
                    message = f"a line longer than {BLOCK_SIZE >> 20} MiB (not a table row)"
                raise FungilibError(f"{self.source}: cannot read {spec.location}: {message}") from None
            except DAMAGED as exc:
                raise FungilibError(f"{self.source}: damaged archive: cannot read {spec.location} "
                                    f"({_damage(exc)})") from None
        raise AssertionError("unreachable")

    def _split(self, spec: TableSpec, line: str) -> list[str]:
        if spec.quote:
            return next(csv.reader([line], delimiter=spec.delimiter, quotechar=spec.quote), [])
        return line.split(spec.delimiter)

    def column_count(self, spec: TableSpec, sample_rows: int = 100) -> int:
        """The number of columns of ``spec``'s rows: the header's when the file has one, else the most common
        count among its first rows (so one bad first row cannot make every good row 'malformed'); 0 when empty.
        Lines are read with a bound (a 400 MB line costs no more than MAX_HEADER_BYTES here)."""
        try:
            with self.open_binary(spec.location) as handle:
                text = io.TextIOWrapper(handle, encoding=_py_encoding(spec.encoding), errors="replace", newline="")
                lines = [text.readline(MAX_HEADER_BYTES) for _ in range(spec.header_lines if spec.header_lines
                                                                        else sample_rows)]
        except DAMAGED as exc:
            raise FungilibError(f"{self.source}: damaged archive: cannot read {spec.location} ({_damage(exc)})") from None
        lines = [line.rstrip("\r\n") for line in lines if line.strip("\r\n")]
        if not lines:
            return 0
        if spec.header_lines:
            return len(self._split(spec, lines[-1]))
        return Counter(len(self._split(spec, line)) for line in lines).most_common(1)[0][0]

    def read_table(self, spec: TableSpec, terms: list[str], issues: RowIssues | None = None,
                   with_id: str | None = None) -> pa.Table:
        """Read the columns for ``terms`` (local names) of ``spec``'s file as strings.

        Terms the descriptor lacks are left out (the caller decides which are required); a term with a default
        and no index becomes a constant column; ``with_id`` names the column holding the row id / core id.
        """
        ncols = self.column_count(spec)
        if ncols == 0:
            names = [t for t in terms if t in spec.fields] + ([with_id] if with_id else [])
            return pa.table({t: pa.array([], pa.string()) for t in dict.fromkeys(names)})
        wanted: dict[str, int] = {}
        for term in terms:
            f = spec.fields.get(term)
            if f is not None and f.index is not None:
                wanted[term] = f.index
        if with_id is not None and spec.id_index is not None:
            wanted.setdefault(with_id, spec.id_index)
        too_far = {t: i for t, i in wanted.items() if i >= ncols}
        if too_far:
            term, index = next(iter(too_far.items()))
            raise FungilibError(
                f"{self.source}: meta.xml maps {term!r} to column {index} of {spec.location}, "
                f"but its rows have {ncols} columns (a malformed descriptor)"
            )
        names = [f"c{i}" for i in range(ncols)]
        for term, index in wanted.items():
            names[index] = names[index] if names[index] in wanted else term
        issues = issues if issues is not None else RowIssues()
        read_opts = pacsv.ReadOptions(
            column_names=names, skip_rows=spec.header_lines, encoding=_py_encoding(spec.encoding), block_size=BLOCK_SIZE
        )
        parse_opts = pacsv.ParseOptions(
            delimiter=spec.delimiter, quote_char=spec.quote or False, double_quote=bool(spec.quote),
            newlines_in_values=False, invalid_row_handler=issues.handler,
        )
        include = [names[i] for i in dict.fromkeys(wanted.values())]
        convert_opts = pacsv.ConvertOptions(
            include_columns=include, column_types={n: pa.string() for n in include}, strings_can_be_null=False,
            quoted_strings_can_be_null=False, null_values=[],
        )
        table = self._read_csv(spec, read_opts, parse_opts, convert_opts, issues)
        columns: dict[str, pa.Array] = {}
        for term, index in wanted.items():
            col = table.column(names[index])
            default = spec.fields[term].default if term in spec.fields else None
            if default is not None:
                col = pc.if_else(pc.equal(col, ""), default, col)
            columns[term] = col
        for term in terms:
            f = spec.fields.get(term)
            if f is not None and f.index is None and f.default is not None:
                columns[term] = pa.array([f.default] * table.num_rows, pa.string())
        return pa.table(columns)


def _damage(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable data'}"


def _py_encoding(name: str) -> str:
    try:
        return io.TextIOWrapper(io.BytesIO(), encoding=name).encoding
    except LookupError:
        raise FungilibError(f"meta.xml names an unknown encoding {name!r}") from None


@contextlib.contextmanager
def open_archive(source: Path) -> Iterator[Archive]:
    """``with open_archive(path) as archive:`` — the archive is closed (and a tgz's temp folder removed) after."""
    archive = Archive(source)
    try:
        yield archive
    finally:
        archive.close()
