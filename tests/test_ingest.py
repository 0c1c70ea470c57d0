"""Ingest: driven by meta.xml, bad archives refused in one line, real archives handled."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from fungilib.errors import FungilibError
from fungilib.ingest import IngestParams, ingest, load_observations


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


def test_malformed_rows_are_counted_not_lost_silently(pipeline, tmp_path: Path) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if name == "occurrence.txt":
            lines = data.split(b"\n")
            lines[3] = lines[3] + b"\tan extra column"
            return b"\n".join(lines)
        return data

    archive = _rewrite(pipeline.sample.archive, tmp_path / "extra.zip", edit)
    result = ingest(IngestParams(archive, tmp_path / "out"))
    assert result.malformed_rows == 1
    assert result.occurrences == pipeline.ingest.occurrences - 1


def test_tgz_folder_and_zip_give_the_same_table(pipeline, tmp_path: Path) -> None:
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(pipeline.sample.archive) as zf:
        zf.extractall(folder)
    ingest(IngestParams(folder, tmp_path / "from_folder"))
    pd.testing.assert_frame_equal(load_observations(tmp_path / "from_folder"), load_observations(pipeline.root / "ingest"))


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
