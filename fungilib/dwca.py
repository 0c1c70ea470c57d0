"""Darwin Core Archive reading driven by meta.xml: zip, tgz or folder, any column order, delimiter or encoding."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import queue
import shutil
import tarfile
import tempfile
import threading
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
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
# A tgz is inflated to a temp folder, only the members meta.xml names, and never past this many bytes: the larger of
# a floor and a multiple of the archive's own size (GBIF's text compresses 10-20 times; a bomb, a thousand times)
INFLATE_FLOOR = 64 << 20
INFLATE_RATIO = 100
# What a damaged zip or tgz raises while it is read: one line naming the archive, never a traceback
DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError)


_CANONICAL = {t.lower(): t for t in KNOWN_TERMS}


def local_name(term: str) -> str:
    """``http://rs.tdwg.org/dwc/terms/scientificName`` → ``scientificName`` (known terms in canonical case)."""
    name = term.rstrip("/").replace("#", "/").rsplit("/", 1)[-1]
    return _CANONICAL.get(name.lower(), name)


MAX_COUNT = 1 << 31  # a column index or header count past this names no real file's column or line


def _count(value: str, where: str) -> int:
    """A non-negative integer of meta.xml (a column index, a header line count), or one line naming it."""
    try:
        number = int(value.strip())
    except ValueError:
        raise FungilibError(f"{where}={value!r}: expected a whole number >= 0") from None
    if not 0 <= number < MAX_COUNT:
        raise FungilibError(f"{where}={value!r}: expected a whole number >= 0 (and below {MAX_COUNT})")
    return number


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
            self._root = self._tmp
            self._extract_tgz(src)
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

    def _extract_tgz(self, src: Path) -> None:
        """Inflate the members a Darwin Core Archive needs — meta.xml, then the files it names (or the one data file
        of an archive without it) — and nothing else, streamed, stopping at the inflation cap. Only regular files
        inside the archive are written (tarfile's data filter refuses ../, absolute paths and links)."""
        cap = max(INFLATE_FLOOR, INFLATE_RATIO * src.stat().st_size)
        written = 0
        with tarfile.open(src) as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

            def extract(name: str) -> None:
                nonlocal written
                try:
                    member = tarfile.data_filter(members[name], str(self._tmp))
                except tarfile.FilterError as exc:
                    raise FungilibError(f"{src}: refused: a member would be written outside the archive "
                                        f"({exc})") from None
                target = self._root / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as data, open(target, "wb") as out:  # type: ignore[union-attr]
                    while block := data.read(1 << 20):
                        written += len(block)
                        if written > cap:
                            raise FungilibError(f"{src}: refused: it inflates past {cap >> 20} MiB (the larger of "
                                                f"{INFLATE_FLOOR >> 20} MiB and {INFLATE_RATIO}× its "
                                                f"{src.stat().st_size / 1e6:.1f} MB); a decompression bomb?")
                        out.write(block)

            metas = sorted((n for n in members if PurePosixPath(n).name.lower() == "meta.xml"),
                           key=lambda n: n.count("/"))
            if not metas:
                for name in members:
                    if PurePosixPath(name).suffix.lower() in _DATA_SUFFIXES:
                        extract(name)
                return
            extract(metas[0])
            prefix = PurePosixPath(metas[0]).parent
            try:
                root = ET.fromstring((self._root / metas[0]).read_bytes())
            except ET.ParseError:
                return  # the descriptor's own check reports it
            for location in root.iter():
                if location.tag.rpartition("}")[2] == "location" and location.text:
                    name = str(prefix / location.text.strip().replace("\\", "/")).removeprefix("./")
                    if name in members:
                        extract(name)

    def member_size(self, name: str) -> int:
        """The inflated size of a file of the archive, in bytes."""
        member = self._contained(name)
        try:
            if self._zip is not None:
                return self._zip.getinfo(member).file_size
            return (self._root / member).stat().st_size
        except (KeyError, FileNotFoundError):
            raise FungilibError(f"{self.source}: meta.xml names {name!r}, which is not in the archive") from None

    def _names(self) -> list[str]:
        if self._zip is not None:
            infos = [i.filename for i in self._zip.infolist() if not i.is_dir()]
            twice = [n for n, count in Counter(infos).items() if count > 1]
            if twice:
                raise FungilibError(f"{self.source}: refused: the zip holds two members named {twice[0]!r} "
                                    "(which one is the data is ambiguous)")
            names = infos
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
            raise FungilibError(f"{self.source}: meta.xml: <{el.tag.removeprefix(ns)}> {row_type} "
                                "has no <files><location>")
        if location in (".", "./") or location.endswith("/"):
            raise FungilibError(f"{self.source}: meta.xml: {row_type} names {location!r}, a folder, as its data file")
        where = f"{self.source}: meta.xml: {local_name(row_type) or 'a table'} ({location})"
        id_el = el.find(f"{ns}{id_tag}")
        delimiter = _unescape(el.get("fieldsTerminatedBy"), ",")
        if len(delimiter) != 1:
            raise FungilibError(f"{where}: fieldsTerminatedBy={el.get('fieldsTerminatedBy')!r} must be one character")
        quote = _unescape(el.get("fieldsEnclosedBy"), '"')
        if len(quote) > 1:
            raise FungilibError(f"{where}: fieldsEnclosedBy={el.get('fieldsEnclosedBy')!r} must be one character or "
                                "empty")
        spec = TableSpec(
            row_type=row_type,
            location=location,
            encoding=el.get("encoding", "utf-8") or "utf-8",
            delimiter=delimiter,
            quote=quote,
            header_lines=_count(el.get("ignoreHeaderLines", "0") or "0", f"{where}: ignoreHeaderLines"),
            id_index=_count(id_el.get("index", "0"), f"{where}: <{id_tag} index>") if id_el is not None else None,
        )
        for f in el.findall(f"{ns}field"):
            term = (f.get("term") or "").strip()
            if not term:
                raise FungilibError(f"{self.source}: meta.xml: a <field> of {spec.location} has no term")
            name, index = local_name(term), f.get("index")
            if name in spec.fields:
                raise FungilibError(f"{where}: the term {name} is mapped twice (which column holds it is "
                                    "ambiguous)")
            spec.fields[name] = FieldSpec(term, _count(index, f"{where}: <field index> of {name}")
                                          if index not in (None, "") else None, f.get("default"))
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

        A file on disk (folder or extracted tgz) is opened by pyarrow itself, with its threads. A zip member is
        inflated by a Python thread in blocks of whole lines, each parsed from memory with pyarrow's threads
        (:meth:`_read_member_in_blocks`); pyarrow never reads a Python stream with its read-ahead threads, which
        would call into Python during interpreter shutdown after an error (a fatal crash seen under load). The
        repairing stream is read on the calling thread."""
        for repair in (False, True):
            try:
                if not repair and self._zip is None:
                    return pacsv.read_csv(str(self._root / self._contained(spec.location)), read_opts, parse_opts,
                                          convert_opts)
                if not repair and not parse_opts.newlines_in_values and \
                        codecs.lookup(read_opts.encoding).name in _LINE_SAFE_ENCODINGS:
                    return self._read_member_in_blocks(spec, read_opts, parse_opts, convert_opts, issues)
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
                undecodable = isinstance(exc, UnicodeDecodeError) or "UTF8" in message or any(
                    word in message.lower() for word in ("utf-8", "decode"))
                if not repair and undecodable:
                    continue
                if "straddl" in message:
                    message = f"a line longer than {BLOCK_SIZE >> 20} MiB (not a table row)"
                raise FungilibError(f"{self.source}: cannot read {spec.location}: {message}") from None
            except DAMAGED as exc:
                raise FungilibError(f"{self.source}: damaged archive: cannot read {spec.location} "
                                    f"({_damage(exc)})") from None
        raise AssertionError("unreachable")

    def _read_member_in_blocks(self, spec: TableSpec, read_opts: pacsv.ReadOptions,
                               parse_opts: pacsv.ParseOptions, convert_opts: pacsv.ConvertOptions,
                               issues: RowIssues) -> pa.Table:
        """A zip member, inflated one block ahead by a thread while pyarrow parses the previous block with all its
        threads: at GBIF scale (1.4 M rows × 250 columns) twice as fast as one thread reading the stream. A block
        with malformed rows is parsed again on one thread, which numbers them (lines of the whole file); its
        counts join ``issues`` only when the whole file was read (a retry through the repairing stream would
        count them again)."""
        found = RowIssues()
        tables: list[pa.Table] = []
        lines_before = 0
        with self.open_binary(spec.location) as handle, _line_too_long(self.source, spec.location):
            for index, (block, newlines) in enumerate(_read_ahead(_line_blocks(handle, PARSE_BLOCK_BYTES))):
                def options(threads: bool, first: bool = index == 0) -> pacsv.ReadOptions:
                    return pacsv.ReadOptions(column_names=read_opts.column_names,
                                             skip_rows=read_opts.skip_rows if first else 0,
                                             encoding=read_opts.encoding, block_size=read_opts.block_size,
                                             use_threads=threads)

                bad = RowIssues()
                table = pacsv.read_csv(pa.BufferReader(block), options(True), _with_handler(parse_opts, bad.handler),
                                       convert_opts)
                if bad.count:
                    def numbered(row: pacsv.InvalidRow, offset: int = lines_before) -> str:
                        number = None if row.number is None else row.number + offset
                        return found.handler(pacsv.InvalidRow(row.expected_columns, row.actual_columns, number,
                                                              row.text))

                    table = pacsv.read_csv(pa.BufferReader(block), options(False),
                                           _with_handler(parse_opts, numbered), convert_opts)
                tables.append(table)
                lines_before += newlines
        issues.count += found.count
        issues.first.extend(found.first[:max(0, 3 - len(issues.first))])
        if not tables:
            return pa.table({name: pa.array([], pa.string()) for name in convert_opts.include_columns})
        return pa.concat_tables(tables)

    def _split(self, spec: TableSpec, line: str) -> list[str]:
        if spec.quote:
            return next(csv.reader([line], delimiter=spec.delimiter, quotechar=spec.quote), [])
        return line.split(spec.delimiter)

    def column_count(self, spec: TableSpec, sample_rows: int = 100) -> int:
        """The number of columns of ``spec``'s rows: the header's when the file has one, else the most common
        count among its first rows (so one bad first row cannot make every good row 'malformed'); 0 when empty.
        Lines are read with a bound (a 400 MB line costs no more than MAX_HEADER_BYTES here)."""
        try:
            if spec.header_lines > max(1, self.member_size(spec.location)):  # a line holds at least one byte
                raise FungilibError(f"{self.source}: meta.xml: ignoreHeaderLines={spec.header_lines} for "
                                    f"{spec.location}, which holds only {self.member_size(spec.location)} bytes")
            with self.open_binary(spec.location) as handle:
                text = io.TextIOWrapper(handle, encoding=_py_encoding(spec.encoding), errors="replace", newline="")
                lines = []
                for _ in range(spec.header_lines or sample_rows):
                    lines.append(text.readline(MAX_HEADER_BYTES))
                    if not lines[-1]:  # the end of the file: no more lines to skip or sample
                        break
        except DAMAGED as exc:
            raise FungilibError(
                f"{self.source}: damaged archive: cannot read {spec.location} ({_damage(exc)})") from None
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


PARSE_BLOCK_BYTES = 1 << 24  # a zip member is parsed 16 MiB of whole lines at a time while the next is inflated
# (measured at 1.4 M occurrences: 8–16 MiB 1.8 s, 32 MiB 2.7 s, 64 MiB 3.5 s; bigger reads inflate slower)


class _LineTooLong(ValueError):
    pass


def _newlines(block: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(block, np.uint8) == 10))  # NumPy lets the parsing thread run


def _line_blocks(handle: IO[bytes], size: int) -> Iterator[tuple[bytes, int]]:
    """The stream as blocks of whole lines of about ``size`` bytes (the last may lack its newline), each with its
    number of newlines (for the line numbers of malformed rows); a line longer than ``size`` raises
    :class:`_LineTooLong` before more of it is read. A block cut between a CR and its LF leaves the next one an
    empty first line, which pyarrow skips."""
    rest = b""
    while True:
        data = handle.read(size)
        if not data:
            if rest:
                yield rest, _newlines(rest)
            return
        data = rest + data if rest else data
        cut = (data.rfind(b"\n") + 1) or (data.rfind(b"\r") + 1)  # LF or CRLF; a lone CR (old Mac), as pyarrow reads
        if cut == 0:
            if len(data) > size:
                raise _LineTooLong(size)
            rest = data
            continue
        rest, block = data[cut:], data[:cut]
        yield block, _newlines(block)


def _read_ahead(blocks: Iterator[Any]) -> Iterator[Any]:
    """``blocks`` produced by a thread one block ahead of the consumer (inflating a zip member releases the GIL,
    so it overlaps the parsing). The thread stops when the consumer does, finished or not."""
    slot: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def hand_over(item: Any) -> bool:
        """Put ``item`` in the slot unless the consumer has stopped; whether it was put."""
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not hand_over(block):
                    return
            item: Any = end
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer, raised there
            item = exc
        hand_over(item)

    thread = threading.Thread(target=produce, name="fungilib-inflate", daemon=True)
    thread.start()
    try:
        while True:
            item = slot.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _line_too_long(source: Path, location: str) -> Iterator[None]:
    try:
        yield
    except _LineTooLong as exc:
        raise FungilibError(f"{source}: cannot read {location}: a line longer than {exc.args[0] >> 20} MiB "
                            "(not a table row)") from None


_LINE_SAFE_ENCODINGS = {"utf-8", "utf-8-sig", "ascii", "latin-1", "iso8859-1", "cp1252"}  # b"\n" ends a line


def _with_handler(options: pacsv.ParseOptions, handler: Any) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter=options.delimiter, quote_char=options.quote_char,
                              double_quote=options.double_quote, escape_char=options.escape_char,
                              newlines_in_values=options.newlines_in_values,
                              ignore_empty_lines=options.ignore_empty_lines, invalid_row_handler=handler)


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
