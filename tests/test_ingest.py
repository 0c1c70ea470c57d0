"""Ingest: driven by meta.xml, bad archives refused in one line, real archives handled."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fungilib.artifacts.observations import load_observations
from fungilib.errors import FungilibError
from fungilib.ingest import IngestParams, ingest


def _rewrite(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001 - edit(name, bytes) -> bytes | None
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


def test_sample_ingest_counts(pipeline) -> None:
    obs = load_observations(pipeline.root / "ingest")
    result = pipeline.ingest
    assert result.images == len(obs) > 0
    assert result.skipped_media == {"not a still image": 1, "no http(s) URL": 2, "no matching occurrence": 0,
                                    "same photo listed twice for one occurrence": 0}
    assert obs["url"].str.startswith("http://127.0.0.1:").all()
    assert obs["media_id"].is_unique
    assert set(obs["taxonRank"]) == {"SPECIES", "GENUS", "FAMILY"}
    assert (obs.loc[obs["taxonRank"] == "SPECIES", "species"].str.count(" ") == 1).all()  # no authorship
    assert (pipeline.root / "ingest" / "ingest_report.json").exists()


def test_columns_are_found_through_meta_xml_not_position(pipeline, tmp_path: Path) -> None:
    """Reverse the column order of occurrence.txt and its meta.xml indexes: the same observations come out."""

    def edit(name: str, data: bytes) -> bytes:
        if name == "occurrence.txt":
            lines = data.decode().split("\n")
            return "\n".join("\t".join(reversed(line.split("\t"))) if line else line for line in lines).encode()
        if name == "meta.xml":
            text = data.decode()
            core, rest = text.split("</core>", 1)
            n = len(re.findall(r"<field index=", core))
            core = re.sub(r'<field index="(\d+)"', lambda m: f'<field index="{n - 1 - int(m.group(1))}"', core)
            core = core.replace('<id index="0"/>', f'<id index="{n - 1}"/>')
            return (core + "</core>" + rest).encode()
        return data

    archive = _rewrite(pipeline.sample.archive, tmp_path / "reversed.zip", edit)
    ingest(IngestParams(archive, tmp_path / "out"))
    pd.testing.assert_frame_equal(load_observations(tmp_path / "out"), load_observations(pipeline.root / "ingest"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_meta", r"no meta\.xml"),
        ("missing_identifier", r"lacks the term 'identifier'"),
        ("missing_species", r"lacks the term 'species'"),
        ("wrong_delimiter", r"maps '.+' to column \d+ of occurrence\.txt, but its rows have 1 columns"),
        ("empty_occurrences", r"no downloadable images \(0 occurrences"),
        ("broken_xml", r"meta\.xml is not valid XML"),
        ("not_an_archive", r"not a Darwin Core Archive"),
        ("empty_file", r"not a Darwin Core Archive"),
        ("missing_file", r"names 'multimedia\.txt', which is not in the archive"),
    ],
)
def test_broken_archives_give_one_clear_line(pipeline, tmp_path: Path, case: str, message: str) -> None:
    src = pipeline.sample.archive
    target = tmp_path / f"{case}.zip"
    if case == "no_meta":
        _rewrite(src, target, lambda n, d: None if n == "meta.xml" else d)
    elif case == "missing_identifier":
        _rewrite(src, target, lambda n, d: d.replace(b"http://purl.org/dc/terms/identifier", b"http://example.org/x")
                 if n == "meta.xml" else d)
    elif case == "missing_species":
        _rewrite(src, target, lambda n, d: re.sub(rb'<field index="\d+" term="[^"]+/(species|scientificName|'
                                                  rb'acceptedScientificName)"/>', b"", d) if n == "meta.xml" else d)
    elif case == "wrong_delimiter":
        _rewrite(src, target, lambda n, d: d.replace(b'fieldsTerminatedBy="\\t"', b'fieldsTerminatedBy=","')
                 if n == "meta.xml" else d)
    elif case == "empty_occurrences":
        _rewrite(src, target, lambda n, d: b"" if n == "occurrence.txt" else d)
    elif case == "broken_xml":
        _rewrite(src, target, lambda n, d: d[: len(d) // 2] if n == "meta.xml" else d)
    elif case == "not_an_archive":
        target.write_text("gbifID\tspecies\n1\tAmanita muscaria\n")
    elif case == "empty_file":
        target.write_bytes(b"")
    elif case == "missing_file":
        _rewrite(src, target, lambda n, d: None if n == "multimedia.txt" else d)
    with pytest.raises(FungilibError, match=message) as info:
        ingest(IngestParams(target, tmp_path / "out"))
    assert "\n" not in str(info.value)
    assert str(target) in str(info.value) or case in {"empty_occurrences"}


def _extra_column_at(line_index: int):  # noqa: ANN202 - an edit for _rewrite
    """An edit giving occurrence.txt's line ``line_index`` (0: the header) one column too many."""
    def edit(name: str, data: bytes) -> bytes:
        if name == "occurrence.txt":
            lines = data.split(b"\n")
            lines[line_index] = lines[line_index] + b"\tan extra column"
            return b"\n".join(lines)
        return data

    return edit


def test_malformed_rows_are_counted_not_lost_silently(pipeline, tmp_path: Path) -> None:
    archive = _rewrite(pipeline.sample.archive, tmp_path / "extra.zip", _extra_column_at(3))
    result = ingest(IngestParams(archive, tmp_path / "out"))
    assert result.malformed_rows == 1
    assert result.occurrences == pipeline.ingest.occurrences - 1


def test_tgz_folder_and_zip_give_the_same_table(pipeline, tmp_path: Path) -> None:
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(pipeline.sample.archive) as zf:
        zf.extractall(folder)
    ingest(IngestParams(folder, tmp_path / "from_folder"))
    pd.testing.assert_frame_equal(load_observations(tmp_path / "from_folder"),
                                  load_observations(pipeline.root / "ingest"))


def test_associated_media_column_is_used_without_a_multimedia_extension(tmp_path: Path) -> None:
    archive = tmp_path / "simple.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("occurrence.csv", "gbifID,scientificName,taxonRank,associatedMedia\n"
                    "1,Amanita muscaria (L.) Lam.,SPECIES,https://img.example/1.jpg|https://img.example/2.jpg\n"
                    "2,Boletus edulis Bull.,SPECIES,https://img.example/3.jpg\n3,Russula,GENUS,\n")
    result = ingest(IngestParams(archive, tmp_path / "out"))
    obs = load_observations(tmp_path / "out")
    assert result.images == 3
    assert obs["species"].tolist() == ["Amanita muscaria", "Amanita muscaria", "Boletus edulis"]


def test_every_real_archive_ingests_or_is_refused_in_one_line(shared_dwca: Path, tmp_path: Path) -> None:
    archives = sorted(p for p in shared_dwca.iterdir() if p.suffix in {".zip", ".tgz"} or p.is_dir())
    assert len(archives) >= 20
    outcomes = {}
    for i, archive in enumerate(archives):
        try:
            result = ingest(IngestParams(archive, tmp_path / str(i)))
            outcomes[archive.name] = f"ok {result.images}"
        except FungilibError as exc:
            assert "\n" not in str(exc)
            outcomes[archive.name] = str(exc)
    # none of these fixtures carries image media: each must be refused for the right reason
    assert "158 occurrences but no multimedia extension" in outcomes["gbif-results.zip"]
    assert "its core is 'Taxon' records" in outcomes["dwca-star-test-archive.zip"]
    assert "2 occurrences but no multimedia" in outcomes["dwca-simple-test-archive.tgz"]
    assert "3 occurrences but no multimedia" in outcomes["dwca-simple-csv.zip"]
    assert "not a simple Darwin Core archive" in outcomes["dwca-invalid-simple-two.zip"]


def test_arrow_tables_are_written_as_pandas_reads_them_across_chunks(tmp_path: Path) -> None:
    """write_arrow_hdf lays out the head through pandas and appends the rest from Arrow's buffers: the file reads
    back with pandas.read_hdf as the same frame — categories, multi-byte text, empty text, NaN, blocks of floats."""
    import numpy as np
    import pyarrow as pa

    from fungilib.fsutil import write_arrow_hdf

    rows = 2_345
    rng = np.random.default_rng(0)
    names = ["Amanita muscaria", "Cortinarius violaceus", "Lactarius deliciosus"]
    species = pa.array([names[i] for i in rng.integers(0, 3, rows)]).dictionary_encode()
    text = pa.array([("" if i % 7 == 0 else f"https://example.org/ü/{i}/{'ñ' * (i % 13)}.jpg") for i in range(rows)])
    latitude = np.where(rng.random(rows) < 0.1, np.nan, rng.uniform(-60, 70, rows))
    table = pa.table({"url": text, "species": species, "latitude": latitude, "longitude": rng.uniform(-180, 180, rows),
                      "year": pa.array(rng.integers(1990, 2026, rows).astype(np.float32)), "media_id": text.slice(0)})
    path = tmp_path / "t.h5"
    write_arrow_hdf(path, "observations", table, chunk_rows=500, head_rows=100)
    got = pd.read_hdf(path, "observations")
    expected = table.to_pandas()
    expected["species"] = pd.Categorical(expected["species"].astype(str), categories=species.dictionary.to_pylist())
    for name in ("url", "media_id"):
        expected[name] = expected[name].astype(object)
        got[name] = got[name].astype(object)
    pd.testing.assert_frame_equal(got, expected, check_index_type=False)
    assert got["url"].str.len().max() == max(len(v) for v in text.to_pylist())
    assert got.index.tolist() == list(range(rows))


def test_zip_members_read_in_blocks_give_the_same_table_and_number_bad_lines(pipeline, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """A zip member is parsed in blocks of whole lines while the next block is inflated: with blocks of 2 KiB (a
    few rows each) the table is the one read with the default 16 MiB blocks, and a malformed row far into the
    file is counted once and named by its line in the whole file."""
    import fungilib.dwca

    archive = _rewrite(pipeline.sample.archive, tmp_path / "extra.zip", _extra_column_at(40))
    whole = ingest(IngestParams(archive, tmp_path / "whole"))
    monkeypatch.setattr(fungilib.dwca, "PARSE_BLOCK_BYTES", 2048)
    blocks = ingest(IngestParams(archive, tmp_path / "blocks"))
    assert blocks.malformed_rows == whole.malformed_rows == 1
    report = json.loads((tmp_path / "blocks" / "ingest_report.json").read_text())
    assert report["malformed_row_examples"][0].startswith("line 41: expected"), report["malformed_row_examples"]
    pd.testing.assert_frame_equal(load_observations(tmp_path / "blocks"), load_observations(tmp_path / "whole"))
    assert blocks.images == whole.images and blocks.occurrences == whole.occurrences == pipeline.ingest.occurrences - 1


def test_a_zip_member_with_old_mac_line_ends_reads_in_blocks_as_with_newlines(pipeline, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """Lines ended by a carriage return alone (pyarrow reads them) are cut into blocks there too: a file with no
    newline at all is not one 'line longer than the block'."""
    import fungilib.dwca

    def cr_only(name: str, data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r") if name.endswith(".txt") else data

    archive = _rewrite(pipeline.sample.archive, tmp_path / "cr.zip", cr_only)
    monkeypatch.setattr(fungilib.dwca, "PARSE_BLOCK_BYTES", 2048)
    result = ingest(IngestParams(archive, tmp_path / "cr"))
    assert result.malformed_rows == 0 and result.occurrences == pipeline.ingest.occurrences
    pd.testing.assert_frame_equal(load_observations(tmp_path / "cr"), load_observations(pipeline.root / "ingest"))
