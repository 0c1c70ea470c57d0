"""The seed-scale rehearsal sample: a GBIF-shaped archive of N species (2,451 by default, as the project this
replaces) with a GBIF-like long tail — a few species with thousands of photos, a median of a few dozen, a long
tail of 1–5 — genera and families, 1–4 photos per observation, coordinates and dates with per-species ranges and
fruiting months, and photo URLs that the loopback sample server draws on request (distinct bytes per photo), so
100 k photos need no 100 k files on disk."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, write_json
from fungilib.sample import (
    ARCHIVE_NAME,
    DEFAULT_BASE_URL,
    EML,
    MULTIMEDIA_TERMS,
    OCCURRENCE_TERMS,
    Sample,
    _meta_xml,
)
from fungilib.sample_server import SCALE_PREFIX

SCALE_FILE = "scale.json"
SYLLABLES = ["ma", "ri", "co", "bo", "le", "tus", "ny", "phy", "ga", "ru", "la", "pho", "mi", "cor", "te", "xa",
             "no", "ce", "ly", "pso", "ra", "di", "hy", "gro", "su", "lac", "ta", "ve", "pe", "zi"]
PHOTOS_PER_OBSERVATION = ([1, 2, 3, 4], [0.45, 0.3, 0.15, 0.1])
LICENSES = ["http://creativecommons.org/licenses/by-nc/4.0/legalcode",
            "http://creativecommons.org/licenses/by/4.0/legalcode",
            "http://creativecommons.org/publicdomain/zero/1.0/legalcode"]


@dataclass
class ScaleSpec:
    """What to rehearse: ``species`` species and about ``photos`` photo URLs, drawn at ``image_size`` px."""

    out: Path
    species: int = 2451
    photos: int = 98_000
    seed: int = 0
    base_url: str = DEFAULT_BASE_URL
    image_size: int = 128

    def __post_init__(self) -> None:
        if self.species < 2 or self.photos < 2 * self.species:
            raise FungilibError(f"a scale sample needs at least 2 species and 2 photos per species on average "
                                f"(got {self.species} species, {self.photos} photos)")
        if self.image_size < 32:
            raise FungilibError("image_size must be at least 32")


def _name(index: int, parts: int) -> str:
    rng = np.random.default_rng([104729, index, parts])
    return "".join(SYLLABLES[i] for i in rng.integers(len(SYLLABLES), size=parts))


# The shape of a GBIF fungi export's class sizes (photos per species, by rank as a share of all species): a few
# species with thousands, a steep head, a median of a few dozen, a long tail of 1–5. Sizes are interpolated in
# log space between these anchors, then scaled to the photos asked for.
SIZE_ANCHORS = ((0.0, 3000), (0.002, 1000), (0.04, 80), (0.5, 25), (0.8, 5), (1.0, 1))


def class_sizes(species: int, photos: int, rng: np.random.Generator) -> np.ndarray:
    """Photos per species, largest first, about ``photos`` in all, at least 1 each."""
    ranks = (np.arange(species) + 0.5) / species
    share, size = zip(*SIZE_ANCHORS, strict=True)
    sizes = np.exp(np.interp(ranks, share, np.log(size)))
    sizes = sizes * photos / sizes.sum() * rng.lognormal(0.0, 0.15, species)
    return np.sort(np.maximum(1, np.round(sizes)).astype(np.int64))[::-1]


def build_scale_tables(spec: ScaleSpec) -> tuple[dict[str, list], dict[str, list]]:
    """The occurrence and multimedia columns of the rehearsal archive."""
    rng = np.random.default_rng(spec.seed)
    sizes = class_sizes(spec.species, spec.photos, rng)
    genus_of = np.arange(spec.species) // 5  # about five species a genus …
    family_of = genus_of // 8  # … and eight genera a family
    centre = np.column_stack([rng.uniform(38, 64, spec.species), rng.uniform(-9, 30, spec.species)])
    peak = rng.integers(1, 13, spec.species)  # fruiting month
    occ_cols = [name for _, name in OCCURRENCE_TERMS]
    occ: dict[str, list] = {name: [] for name in occ_cols}
    media: dict[str, list] = {name: [] for _, name in MULTIMEDIA_TERMS}
    gbif_id, photo_id = 5_000_000_000, 1
    choices, probs = PHOTOS_PER_OBSERVATION
    for sp, size in enumerate(sizes.tolist()):
        genus = _name(int(genus_of[sp]), 3).capitalize()
        family = _name(10_000 + int(family_of[sp]), 3).capitalize() + "aceae"
        epithet = _name(20_000 + sp, 3)
        species = f"{genus} {epithet}"
        keys = {"speciesKey": 9_000_000 + sp, "genusKey": 8_000_000 + int(genus_of[sp]),
                "familyKey": 7_000_000 + int(family_of[sp])}
        left = int(size)
        while left > 0:
            n = min(left, int(rng.choice(choices, p=probs)))
            left -= n
            gbif_id += 1
            month = int((peak[sp] - 1 + round(rng.normal(0, 1.2))) % 12 + 1)
            day = int(rng.integers(1, 29))
            year = int(rng.integers(2015, 2026))
            lat, lon = centre[sp] + rng.normal(0, 2.0, 2)
            licence = LICENSES[int(rng.choice(3, p=[0.7, 0.2, 0.1]))]
            user = f"observer{int(rng.integers(1, 5000))}"
            values = {
                "gbifID": gbif_id, "occurrenceID": f"urn:rehearsal:{gbif_id}", "license": licence,
                "rightsHolder": user, "basisOfRecord": "HUMAN_OBSERVATION", "recordedBy": user,
                "eventDate": f"{year}-{month:02d}-{day:02d}", "year": year, "month": month, "day": day,
                "countryCode": "DK", "decimalLatitude": round(float(lat), 4), "decimalLongitude": round(float(lon), 4),
                "scientificName": species, "acceptedScientificName": species, "verbatimScientificName": species,
                "kingdom": "Fungi", "phylum": "Basidiomycota", "class": "Agaricomycetes", "order": "Agaricales",
                "family": family, "genus": genus, "specificEpithet": epithet, "species": species,
                "taxonRank": "SPECIES", "taxonomicStatus": "ACCEPTED", "taxonKey": keys["speciesKey"],
                "acceptedTaxonKey": keys["speciesKey"], **keys, "mediaType": "StillImage",
            }
            for name in occ_cols:
                occ[name].append(values.get(name, ""))
            for _ in range(n):
                row = {"gbifID": gbif_id, "type": "StillImage", "format": "image/jpeg",
                       "identifier": f"{spec.base_url}{SCALE_PREFIX}{sp}/{photo_id}.jpg", "references": "",
                       "title": "", "description": "", "created": f"{year}-{month:02d}-{day:02d}", "creator": user,
                       "publisher": "rehearsal", "license": licence, "rightsHolder": user}
                for name in media:
                    media[name].append(row[name])
                photo_id += 1
    return occ, media


def _table_bytes(columns: dict[str, list]) -> bytes:
    table = pa.table({k: pa.array([str(v) for v in vals], pa.string()) for k, vals in columns.items()})
    buf = io.BytesIO()
    buf.write(("\t".join(columns) + "\n").encode())
    pacsv.write_csv(table, buf, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))
    return buf.getvalue()


def generate_scale_sample(spec: ScaleSpec) -> Sample:
    """Write the rehearsal archive and ``scale.json`` (what the sample server needs to draw its photos)."""
    root = Path(spec.out)
    occ, media = build_scale_tables(spec)
    archive = root / ARCHIVE_NAME
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.xml", _meta_xml(OCCURRENCE_TERMS, MULTIMEDIA_TERMS))
        zf.writestr("metadata.xml", EML)
        zf.writestr("occurrence.txt", _table_bytes(occ))
        zf.writestr("multimedia.txt", _table_bytes(media))
    write_json(root / SCALE_FILE, {"seed": spec.seed, "image_size": spec.image_size, "species": spec.species,
                                   "photos": len(media["identifier"]), "occurrences": len(occ["gbifID"])})
    write_json(root / "faults.json", {})
    return Sample(root, archive, root / "media", {}, len(occ["gbifID"]), len(media["identifier"]))


def read_scale(root: Path) -> dict | None:
    path = Path(root) / SCALE_FILE
    return json.loads(path.read_text()) if path.exists() else None
