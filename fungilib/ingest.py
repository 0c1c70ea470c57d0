"""Stage 1, ingest: a GBIF Darwin Core Archive → observations.h5, one row per image with its taxonomy."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fungilib.dwca import MEDIA_ROW_TYPES, OCCURRENCE, Archive, RowIssues, TableSpec, local_name, open_archive
from fungilib.errors import FungilibError
from fungilib.fsutil import read_hdf, write_hdf, write_json
from fungilib.params import write_params

OBSERVATIONS_FILE = "observations.h5"
OCCURRENCE_TERMS = [
    "gbifID", "occurrenceID", "basisOfRecord", "eventDate", "year", "decimalLatitude", "decimalLongitude",
    "countryCode", "kingdom", "phylum", "class", "order", "family", "genus", "species", "specificEpithet",
    "taxonKey", "speciesKey", "genusKey", "familyKey", "scientificName", "acceptedScientificName", "taxonRank",
    "license", "rightsHolder", "recordedBy", "associatedMedia",
]
MEDIA_TERMS = ["type", "format", "identifier", "accessURI", "references", "created", "creator", "license", "rightsHolder"]
NAME_TERMS = ("species", "scientificName", "acceptedScientificName")
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


def _str_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def _canonical_species(occ: pd.DataFrame) -> pd.Series:
    """The species name without authorship: GBIF's 'species' column, or the binomial of scientificName."""
    if "species" in occ:
        return occ["species"]
    name = occ.get("scientificName", occ.get("acceptedScientificName"))
    parts = name.str.split(" ", n=2, expand=True).reindex(columns=[0, 1], fill_value="").fillna("")
    rank = occ.get("taxonRank", pd.Series("", index=occ.index)).str.upper()
    binomial = parts[1].str.match(r"^[a-z][a-z-]+$") & rank.isin(["", "SPECIES", "SUBSPECIES", "VARIETY", "FORM"])
    return (parts[0] + " " + parts[1]).where(binomial, "")


def _media_from_extension(archive: Archive, spec: TableSpec, issues: RowIssues) -> pa.Table:
    table = archive.read_table(spec, MEDIA_TERMS, issues, with_id="coreid")
    if "identifier" not in table.column_names:
        table = table.append_column("identifier", table.column("accessURI"))
    return table


def _media_from_associated(occ: pd.DataFrame) -> pd.DataFrame:
    """Occurrence cores without a multimedia extension may list image URLs in dwc:associatedMedia ('|'-separated)."""
    urls = occ["associatedMedia"].str.replace(",", "|").str.split("|")
    media = pd.DataFrame({"coreid": occ["_id"], "identifier": urls}).explode("identifier")
    media["identifier"] = media["identifier"].str.strip()
    media = media[media["identifier"].fillna("") != ""]
    return media.assign(type="StillImage", format="", license="", rightsHolder="", created="", references="")


def ingest(params: IngestParams) -> IngestResult:
    """Read the archive at ``params.archive`` and write ``params.out/observations.h5`` (key ``observations``).

    Only the needed columns are parsed (pyarrow), so memory is bounded by those columns, not by the ~250 a GBIF
    export has. Media rows that are not still images, lack an http(s) URL or point at no occurrence are counted
    in ``ingest_report.json``; they are never silently dropped.
    """
    start = time.perf_counter()
    out = Path(params.out)
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
        occ_table = archive.read_table(core, OCCURRENCE_TERMS, issues, with_id="_id")
        occ = _str_frame(occ_table)
        if "gbifID" in occ:
            occ["_id"] = occ["_id"] if core.id_index is not None else occ["gbifID"]
        media = (_str_frame(_media_from_extension(archive, media_spec, issues)) if media_spec is not None
                 else _media_from_associated(occ))
    occ = occ.drop(columns=["associatedMedia"], errors="ignore")
    occ["species"] = _canonical_species(occ)
    del occ_table
    skipped: dict[str, int] = {}
    kind = media.get("type", pd.Series("", index=media.index)).fillna("").str.lower()
    fmt = media.get("format", pd.Series("", index=media.index)).fillna("").str.lower()
    still = kind.isin(STILL_IMAGE) | ((kind == "") & fmt.str.startswith("image/"))
    skipped["not a still image"] = int((~still).sum())
    media = media[still]
    url = media["identifier"].fillna("").str.strip()
    http = url.str.match(r"^https?://[^\s/]+")
    skipped["no http(s) URL"] = int((~http).sum())
    media = media[http].assign(identifier=url[http])
    occ = occ.drop_duplicates("_id")
    joined = media.merge(occ, left_on="coreid", right_on="_id", how="inner", suffixes=("_media", ""))
    skipped["no matching occurrence"] = int(len(media) - len(joined))
    observations = _observation_rows(joined)
    if observations.empty:
        raise FungilibError(
            f"{params.archive}: no downloadable images ({len(occ)} occurrences; media rows skipped: "
            + ", ".join(f"{k}: {v}" for k, v in skipped.items()) + ")"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_hdf(out / OBSERVATIONS_FILE, {"observations": observations})
    seconds = time.perf_counter() - start
    result = IngestResult(
        observations=out / OBSERVATIONS_FILE,
        images=len(observations),
        occurrences=len(occ),
        occurrences_with_images=int(observations["gbifID"].nunique()),
        skipped_media=skipped,
        malformed_rows=issues.count,
        seconds=round(seconds, 2),
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    write_json(out / "ingest_report.json", {**result.__dict__, "observations": str(result.observations),
                                             "malformed_row_examples": issues.first, "archive": str(params.archive)})
    write_params(out / "params.yaml", params)
    return result


def _observation_rows(joined: pd.DataFrame) -> pd.DataFrame:
    """Shape the joined table into the stable observations schema."""

    def col(name: str) -> pd.Series:
        return joined[name].fillna("") if name in joined else pd.Series("", index=joined.index, dtype="string")

    gbif_id = col("gbifID").where(col("gbifID") != "", joined["_id"])
    position = joined.groupby("_id", sort=False).cumcount()
    rows = pd.DataFrame({
        "media_id": gbif_id.astype(str) + "-" + position.astype(str),
        "gbifID": gbif_id,
        "url": joined["identifier"],
        "format": col("format"),
        "license": col("license_media").where(col("license_media") != "", col("license")) if "license_media" in joined
        else col("license"),
        "rightsHolder": col("rightsHolder_media").where(col("rightsHolder_media") != "", col("rightsHolder"))
        if "rightsHolder_media" in joined else col("rightsHolder"),
        "speciesKey": col("speciesKey"),
        "species": col("species"),
        "genusKey": col("genusKey"),
        "genus": col("genus"),
        "familyKey": col("familyKey"),
        "family": col("family"),
        "taxonKey": col("taxonKey"),
        "taxonRank": col("taxonRank").str.upper(),
        "scientificName": col("acceptedScientificName").where(col("acceptedScientificName") != "", col("scientificName")),
        "kingdom": col("kingdom"),
        "order": col("order"),
        "basisOfRecord": col("basisOfRecord"),
        "eventDate": col("eventDate"),
        "year": pd.to_numeric(col("year"), errors="coerce").astype("float32"),
        "countryCode": col("countryCode"),
        "decimalLatitude": pd.to_numeric(col("decimalLatitude"), errors="coerce").astype("float64"),
        "decimalLongitude": pd.to_numeric(col("decimalLongitude"), errors="coerce").astype("float64"),
        "recordedBy": col("recordedBy"),
    })
    rows.loc[(rows["taxonRank"] == "") & (rows["species"] != ""), "taxonRank"] = "SPECIES"
    return rows.reset_index(drop=True)


def load_observations(path: Path) -> pd.DataFrame:
    """Read observations.h5 (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / OBSERVATIONS_FILE
    if not path.exists():
        raise FungilibError(f"{path}: no observations file; run the ingest stage first")
    return read_hdf(path, "observations")


__all__ = ["IngestParams", "IngestResult", "ingest", "load_observations", "pa", "pc"]
