"""Hostile archives: every path a meta.xml names stays inside the archive, one bad row or byte is one recorded
row, a damaged container is one line and leaves no temp folder, a huge line costs bounded memory. Real archives
built from the generated sample, real `fungilib ingest` subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from fungilib.sample import SampleSpec, generate_sample

SECRET = "TOP-SECRET-CONTENT\tnot\tan\toccurrence\n"


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("hostile-sample")
    sample = generate_sample(SampleSpec(out=root, observations=60, seed=3, write_images=False, flora="twelve"))
    with zipfile.ZipFile(sample.archive) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _folder(files: dict[str, bytes], root: Path) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _zip(files: dict[str, bytes], path: Path, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tgz(files: dict[str, bytes], path: Path, extra: dict[str, bytes] | None = None) -> Path:
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _ingest(archive: Path, out: Path, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
    return subprocess.run([sys.executable, "-m", "fungilib.cli", "ingest", str(archive), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def _with_location(files: dict[str, bytes], location: str) -> dict[str, bytes]:
    meta = files["meta.xml"].decode().replace("<location>occurrence.txt</location>", f"<location>{location}</location>")
    assert location in meta
    return {**files, "meta.xml": meta.encode()}


# -- 1. every member path stays inside the archive (zip, tgz and folder alike; symlinks included) ----------------
@pytest.mark.parametrize("container", ["folder", "tgz", "zip"])
@pytest.mark.parametrize("location", ["ABSOLUTE", "../../secret.txt", "sub/../../secret.txt", "..\\..\\secret.txt"])
def test_meta_xml_cannot_read_outside_the_archive(sample_files: dict[str, bytes], tmp_path: Path,
                                                  container: str, location: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    location = str(secret) if location == "ABSOLUTE" else location
    files = _with_location(sample_files, location)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = {"folder": lambda: _folder(files, work / "archive"), "tgz": lambda: _tgz(files, work / "x.tgz"),
               "zip": lambda: _zip(files, work / "x.zip")}[container]()
    out = tmp_path / "out"
    proc = _ingest(archive, out)
    _one_line_error(proc, "a path outside the archive; refused")
    assert not out.exists()  # nothing written, nothing of the secret anywhere
    assert SECRET.split()[0] not in proc.stdout + proc.stderr


def test_a_symlink_leaving_a_folder_archive_is_refused(sample_files: dict[str, bytes], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    archive = _folder({k: v for k, v in sample_files.items() if k != "occurrence.txt"}, tmp_path / "archive")
    (archive / "occurrence.txt").symlink_to(secret)
    proc = _ingest(archive, tmp_path / "out")
    _one_line_error(proc, "'occurrence.txt' is a link leading outside the archive; refused")
    assert not (tmp_path / "out").exists()


# -- 8. the column count comes from the header, not from the first data row --------------------------------------
@pytest.mark.parametrize("damage", ["extra_tab", "short_row"])
def test_one_bad_first_row_is_one_malformed_row(sample_files: dict[str, bytes], tmp_path: Path, damage: str) -> None:
    for table in ("occurrence.txt", "multimedia.txt"):
        header, first, *rest = sample_files[table].decode().split("\n")
        bad = first + "\textra" if damage == "extra_tab" else first.split("\t", 1)[0]
        files = {**sample_files, table: "\n".join([header, bad, *rest]).encode()}
        out = tmp_path / f"{table}-out"
        proc = _ingest(_zip(files, tmp_path / f"{table}.zip"), out)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "ingest_report.json").read_text())
        assert report["malformed_rows"] == 1, report
        example = report["malformed_row_examples"][0]
        assert "None" not in example and "columns, got" in example, example
        good = json.loads(_good_report(sample_files, tmp_path / table))
        core_id = first.split("\t", 1)[0]
        photos_of_first = sum(1 for line in sample_files["multimedia.txt"].decode().split("\n")
                              if line.startswith(core_id + "\t"))
        lost = 1 if table == "multimedia.txt" else photos_of_first  # only the bad row's own images are lost
        assert report["images"] == good["images"] - lost, (report["images"], good["images"], lost)


def _good_report(sample_files: dict[str, bytes], tmp_path: Path) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = _ingest(_zip(sample_files, tmp_path / "good.zip"), tmp_path / "good")
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "good" / "ingest_report.json").read_text()


# -- 9. a byte invalid in the table's encoding: replaced and counted wherever it falls, never a traceback ----------
@pytest.mark.parametrize("table", ["occurrence.txt", "multimedia.txt"])
@pytest.mark.parametrize("where", ["first_kib", "far_down"])
def test_a_non_utf8_byte_is_replaced_and_counted(sample_files: dict[str, bytes], tmp_path: Path, table: str,
                                                 where: str) -> None:
    lines = sample_files[table].split(b"\n")
    column = lines[0].split(b"\t").index(b"recordedBy" if table == "occurrence.txt" else b"rightsHolder")
    at = 1 if where == "first_kib" else len(lines) - 3
    cells = lines[at].split(b"\t")
    cells[column] += b"\xff\xfe"  # in a column ingest reads (a byte in a skipped column is never decoded)
    lines[at] = b"\t".join(cells)
    files = {**sample_files, table: b"\n".join(lines)}
    good = json.loads(_good_report(sample_files, tmp_path))
    out = tmp_path / "out"
    proc = _ingest(_zip(files, tmp_path / "bad.zip"), out)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["replaced_bytes"] == 2 and report["images"] == good["images"]
    assert report["malformed_rows"] == 0


# -- 10. damaged containers: one line, temp folders always removed -------------------------------------------------
def test_a_zip_with_a_corrupt_deflate_stream_is_one_line(sample_files: dict[str, bytes], tmp_path: Path) -> None:
    archive = _zip(sample_files, tmp_path / "x.zip")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("occurrence.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 20, start + 60):  # inside the deflate stream, after its first block header
        data[i] ^= 0x5A
    archive.write_bytes(bytes(data))
    proc = _ingest(archive, tmp_path / "out")
    _one_line_error(proc, f"{archive}: damaged archive")
    assert not (tmp_path / "out" / "observations.h5").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "data/../../escape.txt", "/abs/escape.txt"])
def test_a_tgz_member_never_lands_outside_and_no_temp_is_left(sample_files: dict[str, bytes], tmp_path: Path,
                                                              member: str) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    archive = _tgz(sample_files, tmp_path / "x.tgz", {member: b"boo"})
    proc = _ingest(archive, tmp_path / "out", tmpdir)
    # only meta.xml and the files it names are inflated: a member it does not name is never written anywhere
    assert proc.returncode == 0, proc.stderr
    assert list(tmpdir.iterdir()) == []  # the extracted copy was removed
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs/escape.txt").exists()


def test_a_truncated_tgz_is_one_line_and_no_temp_is_left(sample_files: dict[str, bytes], tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    archive = _tgz(sample_files, tmp_path / "x.tgz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    proc = _ingest(archive, tmp_path / "out", tmpdir)
    _one_line_error(proc, str(archive))
    assert list(tmpdir.iterdir()) == []


# -- 11. a huge line: bounded memory, one line ---------------------------------------------------------------------
def test_a_huge_single_line_costs_bounded_memory(sample_files: dict[str, bytes], tmp_path: Path) -> None:
    files = {**sample_files, "multimedia.txt": sample_files["multimedia.txt"].split(b"\n")[0] + b"\n"
             + b"x" * (60 << 20)}
    archive = _zip(files, tmp_path / "huge.zip")
    assert archive.stat().st_size < 1 << 20  # a small download …
    # the peak of this process's own memory (VmHWM): ru_maxrss would also count the pytest worker it was forked from
    code = ("import re, sys; from fungilib.cli import main; rc = main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "ingest", str(archive), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    _one_line_error(proc, "a line longer than 16 MiB")
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert peak_mb < 450, peak_mb  # … whose 60 MB line is never held whole more than a block at a time


# -- second round: archives that exhaust disk or memory, or are ambiguous ------------------------------------------
def _with_meta(files: dict[str, bytes], old: str, new: str) -> dict[str, bytes]:
    meta = files["meta.xml"].decode()
    assert old in meta
    return {**files, "meta.xml": meta.replace(old, new, 1).encode()}


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read (a bomb's payload never sits in the test's memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_tgz_bomb_is_stopped_at_the_inflation_cap_and_unnamed_members_are_never_inflated(
        sample_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tgz whose named data file inflates 1000-fold: stopped at the cap (4 MiB here, for the test's speed; the
    same rule as the real 64 MiB floor), the bytes under the temp folder never past it, nothing left behind; a
    20 MiB member meta.xml does not name is never written at all."""
    import threading

    from fungilib import dwca
    from fungilib.errors import FungilibError

    monkeypatch.setattr(dwca, "INFLATE_FLOOR", 4 << 20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    archive = tmp_path / "bomb.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in sample_files.items():
            if name != "occurrence.txt":
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, size in (("unnamed.bin", 20 << 20), ("occurrence.txt", 100 << 20)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _Zeros(size))
    assert archive.stat().st_size < 400_000
    peak, done = [0], threading.Event()

    def watch() -> None:  # the bytes under the temp folder, sampled while the archive is opened
        while not done.is_set():
            try:
                peak[0] = max(peak[0], sum(p.stat().st_size for p in (tmp_path / "tmp").rglob("*") if p.is_file()))
            except OSError:  # removed while it was being measured
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(FungilibError, match=r"bomb\.tgz: refused: it inflates past \d+ MiB \(the larger of 4 MiB "
                                                r"and 100× its 0\.\d MB\); a decompression bomb\?") as info:
            dwca.Archive(archive)
    finally:
        done.set()
        watcher.join()
    cap = int(str(info.value).split("inflates past ")[1].split(" MiB")[0]) << 20
    assert cap < 20 << 20 and 0 < peak[0] <= cap + (1 << 20)  # the unnamed 20 MiB never; at most a block past the cap
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(("old", "new", "fragment"), [
    ('ignoreHeaderLines="1"', 'ignoreHeaderLines="99999999999999999999"', "ignoreHeaderLines='99999999999999999999'"),
    ('ignoreHeaderLines="1"', 'ignoreHeaderLines="2000000000"', "ignoreHeaderLines=2000000000 for occurrence.txt, "
                                                                "which holds only"),
    ('ignoreHeaderLines="1"', 'ignoreHeaderLines="-1"', "ignoreHeaderLines='-1': expected a whole number >= 0"),
    ('ignoreHeaderLines="1"', 'ignoreHeaderLines="one"', "ignoreHeaderLines='one': expected a whole number >= 0"),
    ('<id index="0"/>', '<id index="x"/>', "<id index>='x': expected a whole number >= 0"),
    ('<field index="2" ', '<field index="-2" ', "<field index> of occurrenceID='-2': expected a whole number"),
    ('<field index="2" term="http://rs.tdwg.org/dwc/terms/occurrenceID"/>',
     '<field index="2" term="http://rs.gbif.org/terms/1.0/gbifID"/>', "the term gbifID is mapped twice"),
    ('fieldsTerminatedBy="\\t"', 'fieldsTerminatedBy="\\t\\t"',
     "fieldsTerminatedBy='\\\\t\\\\t' must be one character"),
    ('fieldsTerminatedBy="\\t"', 'fieldsTerminatedBy=""', "fieldsTerminatedBy='' must be one character"),
    ("<location>occurrence.txt</location>", "<location>.</location>", "names '.', a folder, as its data file"),
], ids=["header count past any integer", "header count past the file", "negative header count",
        "header count not a number", "id index not a number", "negative field index", "term mapped twice",
        "two-character delimiter", "empty delimiter", "location is the folder itself"])
def test_ambiguous_or_impossible_meta_xml_is_one_line(sample_files: dict[str, bytes], tmp_path: Path, old: str,
                                                     new: str, fragment: str) -> None:
    archive = _folder(_with_meta(sample_files, old, new), tmp_path / "archive")
    proc = _ingest(archive, tmp_path / "out")
    _one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists()


def test_a_zip_with_two_members_of_one_name_is_refused(sample_files: dict[str, bytes], tmp_path: Path) -> None:
    import warnings

    archive = _zip(sample_files, tmp_path / "x.zip")
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
        zf.writestr("occurrence.txt", sample_files["occurrence.txt"].splitlines(keepends=True)[0])
    proc = _ingest(archive, tmp_path / "out")
    _one_line_error(proc, "refused: the zip holds two members named 'occurrence.txt'")
