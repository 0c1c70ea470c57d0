"""Stage 1, ingest: a GBIF Darwin Core Archive → observations.h5, one row per image with its taxonomy."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fungilib.artifacts.observations import INGEST_REPORT, OBSERVATIONS_FILE, STAGE_PARAMS
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.dwca import MEDIA_ROW_TYPES, OCCURRENCE, Archive, RowIssues, TableSpec, local_name, open_archive
from fungilib.errors import FungilibError
from fungilib.fsutil import (
    COMPACT_MIN_ROWS,
    worth_a_dictionary,
    write_arrow_hdf,
    write_json,
)
from fungilib.params import write_params

NAME_TERMS = ("species", "scientificName", "acceptedScientificName")
# the occurrence terms the observations are made of (a GBIF export has ~250; only these are parsed)
INGESTED_TERMS = [
    "gbifID", "basisOfRecord", "eventDate", "year", "decimalLatitude", "decimalLongitude", "countryCode", "kingdom",
    "order", "family", "genus", "species", "taxonKey", "speciesKey", "genusKey", "familyKey", "scientificName",
    "acceptedScientificName", "taxonRank", "license", "rightsHolder", "recordedBy",
]
INGESTED_MEDIA_TERMS = ["type", "format", "identifier", "accessURI", "license", "rightsHolder"]
STILL_IMAGE = {"stillimage", "image", "http://purl.org/dc/dcmitype/stillimage"}


@dataclass
class IngestParams:
    """Where the archive is and where observations.h5 goes."""

    archive: Path
    out: Path

    def __post_init__(self) -> None:
        if not Path(self.archive).exists():
            raise FungilibError(f"archive {self.archive} does not exist (generate the sample with `fungilib sample`)")


@dataclass
class IngestResult:
    observations: Path
    images: int
    occurrences: int
    occurrences_with_images: int
    skipped_media: dict[str, int]
    malformed_rows: int
    seconds: float
    peak_memory_mb: float
    replaced_bytes: int = 0  # bytes invalid in the table's encoding, replaced (the rows are kept)


def _require_core(archive: Archive) -> TableSpec:
    core = archive.core
    if core.row_type != OCCURRENCE:
        raise FungilibError(
            f"{archive.source}: its core is {local_name(core.row_type)!r} records, not occurrences; "
            "fungilib needs a GBIF occurrence download (Darwin Core Archive format)"
        )
    if core.id_index is None and "gbifID" not in core.fields:
        raise FungilibError(f"{archive.source}: {core.location} has no <id> and no gbifID term to join images on")
    if not any(t in core.fields for t in NAME_TERMS):
        raise FungilibError(
            f"{archive.source}: {core.location} lacks the term 'species' (nor 'scientificName'): no label for images"
        )
    return core


def _media_spec(archive: Archive) -> TableSpec | None:
    for ext in archive.extensions:
        if ext.row_type in MEDIA_ROW_TYPES:
            if ext.id_index is None:
                raise FungilibError(f"{archive.source}: the multimedia extension {ext.location} has no <coreid>")
            if "identifier" not in ext.fields and "accessURI" not in ext.fields:
                raise FungilibError(f"{archive.source}: {ext.location} lacks the term 'identifier' (the image URL)")
            return ext
    return None


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """A text column, or empty strings when the archive lacks the term."""
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.array([""] * table.num_rows, pa.string())])


def _canonical_species(occ: pa.Table) -> pa.ChunkedArray:
    """The species name without authorship: GBIF's 'species' column, or the binomial of scientificName."""
    if "species" in occ.column_names:
        return occ.column("species")
    name = _column(occ, "scientificName" if "scientificName" in occ.column_names else "acceptedScientificName")
    binomial = pc.extract_regex(name, r"^(?P<genus>[A-Z][a-z-]+) (?P<epithet>[a-z][a-z-]+)(?:\s|$)")
    species = pc.binary_join_element_wise(pc.struct_field(binomial, "genus"), pc.struct_field(binomial, "epithet"), " ")
    rank = pc.utf8_upper(_column(occ, "taxonRank"))
    species_rank = pc.is_in(rank, pa.array(["", "SPECIES", "SUBSPECIES", "VARIETY", "FORM"]))
    return pc.if_else(pc.and_(pc.is_valid(species), species_rank), pc.fill_null(species, ""), "")


def _media_from_extension(archive: Archive, spec: TableSpec, issues: RowIssues) -> pa.Table:
    table = archive.read_table(spec, INGESTED_MEDIA_TERMS, issues, with_id="coreid")
    if "identifier" not in table.column_names:
        table = table.append_column("identifier", table.column("accessURI"))
    return table


def _media_from_associated(occ: pa.Table) -> pa.Table:
    """Occurrence cores without a multimedia extension may list image URLs in dwc:associatedMedia ('|'-separated)."""
    lists = pc.split_pattern_regex(occ.column("associatedMedia").combine_chunks(), r"[|,]")
    urls = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists)
    table = pa.table({"coreid": occ.column("_id").take(parents), "identifier": urls})
    table = table.filter(pc.not_equal(urls, ""))
    return table.append_column("type", pa.array(["StillImage"] * table.num_rows, pa.string()))


def _filter_media(media: pa.Table, skipped: dict[str, int]) -> pa.Table:
    """Keep still images with an http(s) URL; count what is left out, by reason. One filtering copy, of compacted
    columns (the media table is the largest thing ingest holds: 2.6 M rows at GBIF fungi scale)."""
    kind = pc.utf8_lower(_column(media, "type"))
    fmt = pc.utf8_lower(_column(media, "format"))
    still = pc.or_(pc.is_in(kind, pa.array(sorted(STILL_IMAGE))),
                   pc.and_(pc.equal(kind, ""), pc.starts_with(fmt, "image/")))
    del kind, fmt
    media = media.drop_columns([name for name in ("type", "accessURI") if name in media.column_names])
    for name in ("format", "license", "rightsHolder"):
        if name in media.column_names:
            media = media.set_column(media.column_names.index(name), name, _compact(media.column(name)))
    url = pc.utf8_trim_whitespace(media.column("identifier"))
    http = pc.match_substring_regex(url, r"^https?://[^\s/]+", ignore_case=True)  # schemes are case-insensitive
    kept_still = pc.sum(still).as_py() or 0
    keep = pc.and_(still, http)
    skipped["not a still image"] = media.num_rows - kept_still
    skipped["no http(s) URL"] = kept_still - (pc.sum(keep).as_py() or 0)
    media = media.set_column(media.column_names.index("identifier"), "identifier", url)
    return media.filter(keep)


def _join_positions(occ_ids: pa.Array, media_ids: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """For each media row, the position of its occurrence (the first one when an id repeats) and a found mask.

    Arrow's hash lookup of the key columns only (no Python objects: at 2.6 M rows those alone took 300 MB); the
    other columns are then taken by position."""
    pos = pc.index_in(media_ids, value_set=occ_ids)
    found = pc.is_valid(pos)
    return pc.drop_null(pos).combine_chunks(), found.combine_chunks() if isinstance(found, pa.ChunkedArray) else found


def _numbers(column: pa.ChunkedArray, dtype: pa.DataType) -> pa.ChunkedArray:
    """Text to numbers, with empty or malformed values as missing (NaN) rather than an error."""
    clean = pc.if_else(pc.match_substring_regex(column, r"^\s*[-+]?\d+(\.\d*)?([eE][-+]?\d+)?\s*$"), column, None)
    return pc.cast(pc.utf8_trim_whitespace(clean), dtype)


_SAFE_CORE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


HASH_CHUNK_ROWS = 250_000


def _hash_numbers(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each text (SipHash with pandas' fixed key); vectorised, in slices (the texts become
    Python objects for hashing: a slice at a time keeps that to a few megabytes)."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    parts = [pd.util.hash_array(values.slice(start, HASH_CHUNK_ROWS).to_numpy(zero_copy_only=False).astype(object),
                                categorize=False) for start in range(0, len(values), HASH_CHUNK_ROWS)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _hashes(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """:func:`_hash_numbers` as decimal text."""
    return _as_decimal(_hash_numbers(values))


def _as_decimal(numbers: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(numbers, pa.uint64()), pa.string())


def media_ids(core_ids: pa.ChunkedArray, url_hashes: np.ndarray) -> pa.Array:
    """A photo's identity: its occurrence's core id (the join key; hashed when unfit for a file name) and the hash
    of its URL (``url_hashes``: :func:`_hash_numbers` of the URLs). Stable when an archive reorders or changes an
    occurrence's photo list (a new URL is a new file, never a stale one credited to it), unique per occurrence and
    photo."""
    core_ids = core_ids.combine_chunks() if isinstance(core_ids, pa.ChunkedArray) else core_ids
    safe = pc.and_(pc.match_substring_regex(core_ids, _SAFE_CORE_ID),
                   pc.invert(pc.match_substring(core_ids, "..")))
    unsafe = pc.invert(safe)
    prefix = core_ids
    if pc.any(unsafe).as_py():  # only the unfit ids are hashed (GBIF's numeric gbifIDs are all fit)
        hashed = pc.binary_join_element_wise("h", _hashes(core_ids.filter(unsafe)), "")
        prefix = pc.replace_with_mask(core_ids, unsafe, hashed)
    return pc.binary_join_element_wise(prefix, _as_decimal(url_hashes), "-")


def _compact(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Text that repeats (fewer distinct values than a quarter of the rows: species, licences, ranks, dates) as a
    dictionary array, the rest as it is: 2,451 species names over 2.6 M photos are then 10 MB of indices, and a
    ``take`` to photo rows copies indices, not text. One dictionary for the whole column (HDF appends need it)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_string(column.type) or len(column) < COMPACT_MIN_ROWS:
        return column
    encoded = pc.dictionary_encode(column)
    return encoded if worth_a_dictionary(len(encoded.dictionary), len(column)) else column


def _as_text(column: pa.Array) -> pa.Array:
    return column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column


def _occurrence_columns(occ: pa.Table) -> dict[str, pa.Array]:
    """The occurrence side of the observations schema, at one row per occurrence, compacted column by column
    (each source column released once used)."""

    def take(name: str) -> pa.ChunkedArray:
        nonlocal occ
        column = _column(occ, name)
        if name in occ.column_names:
            occ = occ.drop_columns([name])
        return column

    def first_nonempty(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.if_else(pc.equal(a, ""), b, a)

    out: dict[str, pa.Array] = {"gbifID": _compact(first_nonempty(take("gbifID"), take("_row_id")))}
    species = take("species")
    rank = pc.utf8_upper(take("taxonRank"))
    out["rank"] = _compact(pc.if_else(pc.and_(pc.equal(rank, ""), pc.not_equal(species, "")), "SPECIES", rank))
    out["species"] = _compact(species)
    for name in ("license", "rightsHolder", "speciesKey", "genusKey", "genus", "familyKey", "family", "taxonKey"):
        out[name] = _compact(take(name))
    out["scientificName"] = _compact(first_nonempty(take("acceptedScientificName"), take("scientificName")))
    for name in ("kingdom", "order", "basisOfRecord", "eventDate"):
        out[name] = _compact(take(name))
    out["year"] = _numbers(take("year"), pa.float32()).combine_chunks()
    out["countryCode"] = _compact(take("countryCode"))
    out["decimalLatitude"] = _numbers(take("decimalLatitude"), pa.float64()).combine_chunks()
    out["decimalLongitude"] = _numbers(take("decimalLongitude"), pa.float64()).combine_chunks()
    out["recordedBy"] = _compact(take("recordedBy"))
    return out


def _observation_table(media: pa.Table, occurrence: dict[str, pa.Array], positions: pa.Array,
                       url_hashes: np.ndarray) -> pa.Table:
    """The stable observations schema, one row per photo: media rows, and their occurrence's columns taken by
    ``positions`` (row i of the media is a photo of occurrence ``positions[i]``, see ``_join_positions``)."""

    def of_photo(name: str) -> pa.Array:
        return occurrence[name].take(positions)

    def photo_or_occurrence(name: str) -> pa.Array:  # the photo's own licence or rights holder, else the record's
        own = _column(media, name).combine_chunks()
        missing = pc.equal(own, "")
        if not pc.any(missing).as_py():  # every photo has its own (usual in GBIF exports): kept as compacted
            return own
        own = _as_text(own)
        return _compact(pc.if_else(missing, _as_text(of_photo(name)), own))

    return pa.table({
        "media_id": media_ids(media.column("coreid"), url_hashes),
        "gbifID": of_photo("gbifID"),
        "url": media.column("identifier").combine_chunks(),
        "format": _compact(_as_text(_column(media, "format").combine_chunks())),
        "license": photo_or_occurrence("license"),
        "rightsHolder": photo_or_occurrence("rightsHolder"),
        **{name: of_photo(name) for name in ("speciesKey", "species", "genusKey", "genus", "familyKey", "family",
                                              "taxonKey")},
        "taxonRank": of_photo("rank"),
        **{name: of_photo(name) for name in ("scientificName", "kingdom", "order", "basisOfRecord", "eventDate",
                                              "year", "countryCode", "decimalLatitude", "decimalLongitude",
                                              "recordedBy")},
    })


def _first_of_each_photo(positions: np.ndarray, url_hashes: np.ndarray) -> np.ndarray:
    """A mask keeping the first row of each (occurrence, URL) pair — of each media id, which is made of the two.
    One stable sort of a 64-bit key mixing both; rows are dropped only when occurrence and URL hash both equal
    the previous row's (a key collision can then keep a duplicate, never drop a photo)."""
    key = url_hashes ^ (positions.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    order = np.argsort(key, kind="stable")
    k, p, h = key[order], positions[order], url_hashes[order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (k[1:] == k[:-1]) & (p[1:] == p[:-1]) & (h[1:] == h[:-1])
    keep = np.ones(len(order), bool)
    keep[order[repeat]] = False
    return keep


def ingest(params: IngestParams) -> IngestResult:
    """Read the archive at ``params.archive`` and write ``params.out/observations.h5`` (key ``observations``).

    Only the needed columns are parsed (pyarrow), so memory is bounded by those columns, not by the ~250 a GBIF
    export has; the join and reshaping run in Arrow. Media rows that are not still images, lack an http(s) URL
    or point at no occurrence are counted in ``ingest_report.json``; they are never silently dropped.
    """
    start = time.perf_counter()
    out = prepare_output(Path(params.out), "ingest", create=False)  # refused before the archive is read
    issues = RowIssues()
    with open_archive(params.archive) as archive:
        core = _require_core(archive)
        media_spec = _media_spec(archive)
        if media_spec is None and "associatedMedia" not in core.fields:
            occurrences = archive.read_table(core, ["gbifID"], issues, with_id="_id").num_rows
            raise FungilibError(
                f"{archive.source}: {occurrences} occurrences but no multimedia extension (nor associatedMedia), "
                "so no images to download; request the GBIF download in 'Darwin Core Archive' format"
            )
        terms = INGESTED_TERMS + (["associatedMedia"] if media_spec is None else [])
        occ = archive.read_table(core, terms, issues, with_id="_id")
        if "_id" not in occ.column_names:
            occ = occ.append_column("_id", occ.column("gbifID"))
        if "species" not in occ.column_names:
            occ = occ.append_column("species", _canonical_species(occ))
        media = _media_from_associated(occ) if media_spec is None else None
        occurrences, occ_ids = occ.num_rows, occ.column("_id").combine_chunks()
        # compacted before the (larger) media table is read: the occurrences' text is released column by column
        occurrence = _occurrence_columns(occ.rename_columns(["_row_id" if n == "_id" else n for n in occ.column_names]))
        del occ
        if media is None:
            media = _media_from_extension(archive, media_spec, issues)
    skipped: dict[str, int] = {}
    media = _filter_media(media, skipped)
    positions, found = _join_positions(occ_ids, media.column("coreid"))
    skipped["no matching occurrence"] = media.num_rows - len(positions)
    del occ_ids
    media = media.filter(found)
    del found
    url_hashes = _hash_numbers(media.column("identifier"))
    table = _observation_table(media, occurrence, positions, url_hashes)
    unique = _first_of_each_photo(positions.to_numpy(zero_copy_only=False), url_hashes)
    del media, occurrence, positions, url_hashes
    skipped["same photo listed twice for one occurrence"] = int((~unique).sum())
    if not unique.all():
        table = table.filter(pa.array(unique))
    if table.num_rows == 0:
        raise FungilibError(
            f"{params.archive}: no downloadable images ({occurrences} occurrences; media rows skipped: "
            + ", ".join(f"{k}: {v}" for k, v in skipped.items()) + ")"
        )
    prepare_output(out, "ingest")
    write_arrow_hdf(out / OBSERVATIONS_FILE, "observations", table)
    images, with_images = table.num_rows, len(pc.unique(table.column("gbifID").combine_chunks()))
    del table
    seconds = time.perf_counter() - start
    result = IngestResult(
        observations=out / OBSERVATIONS_FILE,
        images=images,
        occurrences=occurrences,
        occurrences_with_images=with_images,
        skipped_media=skipped,
        malformed_rows=issues.count,
        replaced_bytes=issues.replaced_bytes,
        seconds=round(seconds, 2),
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    write_json(out / INGEST_REPORT, {**result.__dict__, "observations": str(result.observations),
                                             "malformed_row_examples": issues.first, "archive": str(params.archive)})
    write_params(out / STAGE_PARAMS, params)
    return result


__all__ = ["IngestParams", "IngestResult", "ingest"]
