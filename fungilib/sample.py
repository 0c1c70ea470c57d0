"""The embedded sample: a deterministic GBIF-shaped Darwin Core Archive of synthetic fungi and its images."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image
from tqdm.auto import tqdm

from fungilib.dwc_terms import DC, DWC, GBIF
from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, write_json
from fungilib.sample_art import draw_mushroom

ARCHIVE_NAME = "fungi-sample.zip"
SPEC_FILE = "sample.json"
GENERATOR_VERSION = 2  # 2: the field flora (26 species, look-alikes, hard photos) is the default
EML = (b'<?xml version="1.0"?><eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1">'
       b"<dataset><title>fungilib synthetic sample (not real observations)</title></dataset></eml:eml>")
DEFAULT_PORT = 8765
DEFAULT_BASE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

# species → (authorship, genus, family, order); keys are synthetic (9.1 M range), not GBIF's.
TAXA: dict[str, tuple[str, str, str, str]] = {
    "Amanita muscaria": ("(L.) Lam.", "Amanita", "Amanitaceae", "Agaricales"),
    "Boletus edulis": ("Bull.", "Boletus", "Boletaceae", "Boletales"),
    "Cantharellus cibarius": ("Fr.", "Cantharellus", "Hydnaceae", "Cantharellales"),
    "Trametes versicolor": ("(L.) Lloyd", "Trametes", "Polyporaceae", "Polyporales"),
    "Lycoperdon perlatum": ("Pers.", "Lycoperdon", "Lycoperdaceae", "Agaricales"),
    "Coprinus comatus": ("(O.F.Müll.) Pers.", "Coprinus", "Agaricaceae", "Agaricales"),
    "Pleurotus ostreatus": ("(Jacq.) P.Kumm.", "Pleurotus", "Pleurotaceae", "Agaricales"),
    "Laetiporus sulphureus": ("(Bull.) Murrill", "Laetiporus", "Laetiporaceae", "Polyporales"),
    "Morchella esculenta": ("(L.) Pers.", "Morchella", "Morchellaceae", "Pezizales"),
    "Ramaria formosa": ("(Pers.) Quél.", "Ramaria", "Gomphaceae", "Gomphales"),
    "Hygrocybe conica": ("(Schaeff.) P.Kumm.", "Hygrocybe", "Hygrophoraceae", "Agaricales"),
    "Mycena galericulata": ("(Scop.) Gray", "Mycena", "Mycenaceae", "Agaricales"),
    # the field flora adds look-alikes: groups the photo alone does not fully separate but place or month can
    "Hygrophoropsis aurantiaca": ("(Wulfen) Maire", "Hygrophoropsis", "Hygrophoropsidaceae", "Boletales"),
    "Omphalotus olearius": ("(DC.) Singer", "Omphalotus", "Omphalotaceae", "Agaricales"),
    "Boletus reticulatus": ("Schaeff.", "Boletus", "Boletaceae", "Boletales"),
    "Tylopilus felleus": ("(Bull.) P.Karst.", "Tylopilus", "Boletaceae", "Boletales"),
    "Agaricus campestris": ("L.", "Agaricus", "Agaricaceae", "Agaricales"),
    "Amanita virosa": ("Bertill.", "Amanita", "Amanitaceae", "Agaricales"),
    "Amanita pantherina": ("(DC.) Krombh.", "Amanita", "Amanitaceae", "Agaricales"),
    "Amanita rubescens": ("Pers.", "Amanita", "Amanitaceae", "Agaricales"),
    "Gyromitra esculenta": ("(Pers.) Fr.", "Gyromitra", "Discinaceae", "Pezizales"),
    "Pleurotus pulmonarius": ("(Fr.) Quél.", "Pleurotus", "Pleurotaceae", "Agaricales"),
    "Armillaria mellea": ("(Vahl) P.Kumm.", "Armillaria", "Physalacriaceae", "Agaricales"),
    "Galerina marginata": ("(Batsch) Kühner", "Galerina", "Hymenogastraceae", "Agaricales"),
    "Kuehneromyces mutabilis": ("(Schaeff.) Singer & A.H.Sm.", "Kuehneromyces", "Strophariaceae", "Agaricales"),
    "Scleroderma citrinum": ("Pers.", "Scleroderma", "Sclerodermataceae", "Boletales"),
}
TWELVE = list(TAXA)[:12]  # the first sample's flora, one look per species: the tests' small, fast samples
# The field flora (the default): 26 species, commonest first (the long tail follows this order), with look-alike
# groups: chanterelle / false chanterelle / Omphalotus; three boletes; field mushroom / destroying angel (the
# edible-deadly pair); panther cap / blusher; morel / false morel; two oyster mushrooms; honey fungus / funeral bell /
# sheathed woodtuft; puffball / earthball. Rare and deadly sit in the tail, as they do in real exports.
FIELD = [
    "Amanita muscaria", "Boletus edulis", "Cantharellus cibarius", "Trametes versicolor", "Agaricus campestris",
    "Armillaria mellea", "Lycoperdon perlatum", "Coprinus comatus", "Pleurotus ostreatus", "Amanita rubescens",
    "Laetiporus sulphureus", "Hygrophoropsis aurantiaca", "Morchella esculenta", "Tylopilus felleus",
    "Kuehneromyces mutabilis", "Ramaria formosa", "Boletus reticulatus", "Amanita pantherina", "Hygrocybe conica",
    "Scleroderma citrinum", "Mycena galericulata", "Pleurotus pulmonarius", "Gyromitra esculenta",
    "Galerina marginata", "Omphalotus olearius", "Amanita virosa",
]
FLORAS: dict[str, list[str]] = {"field": FIELD, "twelve": TWELVE}
LOOKALIKE_GROUPS: list[tuple[str, ...]] = [
    ("Cantharellus cibarius", "Hygrophoropsis aurantiaca", "Omphalotus olearius"),
    ("Boletus edulis", "Boletus reticulatus", "Tylopilus felleus"),
    ("Agaricus campestris", "Amanita virosa"),
    ("Amanita pantherina", "Amanita rubescens"),
    ("Morchella esculenta", "Gyromitra esculenta"),
    ("Pleurotus ostreatus", "Pleurotus pulmonarius"),
    ("Armillaria mellea", "Galerina marginata", "Kuehneromyces mutabilis"),
    ("Lycoperdon perlatum", "Scleroderma citrinum"),
]
# the share of a flora's photos drawn hard (partial, blurred, cluttered or dark), as real uploads are
HARD_SHARE = {"field": 0.1, "twelve": 0.0}
# the long tail's steepness: the k-th commonest species has 1/k**exponent of the commonest's observations (the field
# flora's rarest of 26 still has ~13 observations at the default size: learnable, rare)
TAIL_EXPONENT = {"field": 0.8, "twelve": 1.0}
DEFAULT_OBSERVATIONS = 900
# Where and when each species is found in the sample (synthetic, for the place-and-season prior to have something
# to learn; loosely after European fruiting seasons): range centre (lat, lon) and the months it fruits in.
PLACE_AND_SEASON: dict[str, tuple[float, float, tuple[int, ...]]] = {
    "Amanita muscaria": (58.5, 16.0, (8, 9, 10)),
    "Boletus edulis": (50.0, 8.0, (8, 9)),
    "Cantharellus cibarius": (57.0, 3.0, (7, 8, 9)),
    "Trametes versicolor": (53.5, 12.0, tuple(range(1, 13))),
    "Lycoperdon perlatum": (47.5, 20.0, (8, 9, 10)),
    "Coprinus comatus": (52.0, -2.0, (9, 10, 11)),
    "Pleurotus ostreatus": (54.0, 22.0, (11, 12, 1)),
    "Laetiporus sulphureus": (48.0, 2.0, (6, 7)),
    "Morchella esculenta": (49.0, 14.0, (4, 5)),
    "Ramaria formosa": (46.5, 10.0, (8, 9)),
    "Hygrocybe conica": (60.0, 6.0, (9, 10, 11)),
    "Mycena galericulata": (55.0, 18.0, (10, 11)),
    # look-alikes part by range or season (one group may overlap in one and part in the other)
    "Hygrophoropsis aurantiaca": (60.0, 15.0, (10, 11)),
    "Omphalotus olearius": (46.0, 6.0, (9, 10)),
    "Boletus reticulatus": (48.0, 16.0, (6, 7)),
    "Tylopilus felleus": (58.0, 22.0, (7, 8)),
    "Agaricus campestris": (50.0, 0.0, (7, 8)),
    "Amanita virosa": (60.5, 17.0, (9, 10)),
    "Amanita pantherina": (50.5, 10.0, (7, 8)),
    "Amanita rubescens": (57.0, 20.0, (8, 9, 10)),
    "Gyromitra esculenta": (59.5, 21.0, (3, 4)),
    "Pleurotus pulmonarius": (47.0, 12.0, (6, 7, 8)),
    "Armillaria mellea": (49.0, 4.0, (9, 10)),
    "Galerina marginata": (58.0, 14.0, (10, 11, 12)),
    "Kuehneromyces mutabilis": (53.0, 20.0, (4, 5, 6)),
    "Scleroderma citrinum": (55.0, 0.0, (7, 8)),
}
# identifications that stop above species: (rank, name, family, order, share of observations)
COARSE_IDS = [
    ("GENUS", "Russula", "Russulaceae", "Russulales", 0.03),
    ("GENUS", "Cortinarius", "Cortinariaceae", "Agaricales", 0.02),
    ("FAMILY", "Polyporaceae", "Polyporaceae", "Polyporales", 0.01),
]
LICENSES = [
    "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
    "http://creativecommons.org/licenses/by/4.0/legalcode",
    "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
]
COUNTRIES = ["DK", "SE", "NO", "DE", "GB", "FR", "NL", "PL"]
FAULTS = ["missing", "missing", "flaky", "slow", "truncated", "html", "corrupt", "png", "cmyk", "exif_rotated", "huge"]
# the media rows a real export has that fungilib must not download: bad scheme, no URL, not a still image
ODD_MEDIA = ["ftp_scheme", "empty_url", "sound"]
MIN_OBSERVATIONS = 24  # enough photos of the two commonest species to plant every fault on a distinct one

OCCURRENCE_TERMS = [
    (GBIF, "gbifID"), (GBIF, "datasetKey"), (DWC, "occurrenceID"), (DC, "license"), (DC, "rightsHolder"),
    (DWC, "institutionCode"), (DWC, "collectionCode"), (DWC, "basisOfRecord"), (DWC, "catalogNumber"),
    (DWC, "recordedBy"), (DWC, "occurrenceStatus"), (DWC, "eventDate"), (DWC, "year"), (DWC, "month"), (DWC, "day"),
    (DWC, "countryCode"), (DWC, "stateProvince"), (DWC, "decimalLatitude"), (DWC, "decimalLongitude"),
    (DWC, "coordinateUncertaintyInMeters"), (DWC, "identifiedBy"), (DWC, "taxonID"), (DWC, "scientificName"),
    (DWC, "kingdom"), (DWC, "phylum"), (DWC, "class"), (DWC, "order"), (DWC, "family"), (DWC, "genus"),
    (DWC, "specificEpithet"), (DWC, "taxonRank"), (DWC, "taxonomicStatus"), (GBIF, "publishingCountry"),
    (GBIF, "lastInterpreted"), (GBIF, "issue"), (GBIF, "mediaType"), (GBIF, "hasCoordinate"),
    (GBIF, "hasGeospatialIssues"), (GBIF, "taxonKey"), (GBIF, "acceptedTaxonKey"), (GBIF, "kingdomKey"),
    (GBIF, "phylumKey"), (GBIF, "classKey"), (GBIF, "orderKey"), (GBIF, "familyKey"), (GBIF, "genusKey"),
    (GBIF, "speciesKey"), (GBIF, "species"), (GBIF, "acceptedScientificName"), (GBIF, "verbatimScientificName"),
]
MULTIMEDIA_TERMS = [
    (GBIF, "gbifID"), (DC, "type"), (DC, "format"), (DC, "identifier"), (DC, "references"), (DC, "title"),
    (DC, "description"), (DC, "created"), (DC, "creator"), (DC, "publisher"), (DC, "license"), (DC, "rightsHolder"),
]


@dataclass
class SampleSpec:
    """What to generate: ``observations`` species-rank observations, long-tailed over the species of ``flora``
    (``field``: 26 with look-alike groups and some hard photos; ``twelve``: the first twelve, one look each)."""

    out: Path
    observations: int = DEFAULT_OBSERVATIONS
    seed: int = 0
    base_url: str = DEFAULT_BASE_URL
    image_size: int = 256
    tail_exponent: float | None = None  # None: the flora's own (TAIL_EXPONENT)
    extra_columns: int = 0  # empty columns appended, to reach a real export's ~250 terms in benchmarks
    write_images: bool = True
    flora: str = "field"

    def __post_init__(self) -> None:
        if self.flora not in FLORAS:
            raise FungilibError(f"flora: {self.flora!r} is not one of {', '.join(FLORAS)}")
        if self.tail_exponent is None:
            self.tail_exponent = TAIL_EXPONENT[self.flora]
        if self.observations < MIN_OBSERVATIONS:
            raise FungilibError(f"observations: {self.observations} is too few; the sample needs at least "
                                f"{MIN_OBSERVATIONS} (its species and {len(FAULTS)} planted faults)")
        if self.seed < 0 or self.image_size < 32:
            raise FungilibError("seed must be >= 0 and image_size >= 32")


@dataclass
class Sample:
    """Where a generated sample lies, and the faults its server plants (URL path → fault)."""

    root: Path
    archive: Path
    media_dir: Path
    faults: dict[str, str] = field(default_factory=dict)
    occurrences: int = 0
    media_rows: int = 0


def species_observation_counts(total: int, exponent: float, flora: str = "field") -> dict[str, int]:
    """Pareto-like (Zipf) counts: the k-th species of ``flora`` gets a share proportional to 1 / k**exponent."""
    names = FLORAS[flora]
    weights = 1.0 / np.arange(1, len(names) + 1) ** exponent
    counts = np.maximum(np.round(total * weights / weights.sum()).astype(int), 6)
    return dict(zip(names, counts.tolist(), strict=True))


def _media_path(photo_id: int, ext: str = "jpg") -> str:
    return f"photos/{photo_id}/original.{ext}"


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88, **kwargs)
    return buf.getvalue()


def _render(job: tuple[int, int, str, int, str, str, float]) -> None:
    """Draw one photo (seeded by sample seed and photo id) and write it, applying its planted fault."""
    seed, photo_id, species, size, fault, path, hard = job
    rng = np.random.default_rng([seed, photo_id])
    img = draw_mushroom(species, rng, size, hard=hard)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fault == "png":
        img.convert("RGBA").save(target, "PNG")
    elif fault == "cmyk":
        target.write_bytes(_jpeg(img.convert("CMYK")))
    elif fault == "exif_rotated":
        # stored rotated a quarter turn with Orientation=6, as phone cameras do: upright after EXIF transpose
        exif = Image.Exif()
        exif[0x0112] = 6
        target.write_bytes(_jpeg(img.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()))
    elif fault == "corrupt":
        data = _jpeg(img)
        target.write_bytes(data[:400] + bytes(range(256)) * 3 + b"\xff\xd9")
    elif fault == "html":
        target.write_bytes(b"<!DOCTYPE html><html><body><h1>Photo moved</h1></body></html>")
    elif fault == "huge":
        target.write_bytes(_huge_png(40000, 40000))
    else:
        target.write_bytes(_jpeg(img))


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` one-bit pixels (a decompression bomb), a few rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 16)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _taxon_columns(rank: str, species: str | None, genus: str, family: str, order: str, keys: dict) -> dict:
    author = TAXA[species][0] if species else ""
    name = f"{species} {author}" if species else f"{genus if rank == 'GENUS' else family}"
    taxon_key = keys[species] if species else keys[genus if rank == "GENUS" else family]
    return {
        "kingdom": "Fungi", "phylum": "Ascomycota" if order == "Pezizales" else "Basidiomycota",
        "class": "Pezizomycetes" if order == "Pezizales" else "Agaricomycetes", "order": order, "family": family,
        "genus": genus if rank != "FAMILY" else "", "specificEpithet": species.split()[1] if species else "",
        "taxonRank": rank, "scientificName": name, "acceptedScientificName": name, "verbatimScientificName": name,
        "taxonKey": taxon_key, "acceptedTaxonKey": taxon_key, "kingdomKey": 5,
        "phylumKey": 34 if order != "Pezizales" else 95,
        "classKey": 186, "orderKey": keys[order], "familyKey": keys[family],
        "genusKey": keys[genus] if rank != "FAMILY" else "", "speciesKey": keys[species] if species else "",
        "species": species or "",
    }


def _taxon_keys() -> dict[str, int]:
    names: list[str] = list(TWELVE)
    for _, genus, family, order in [TAXA[s] for s in TWELVE]:
        names += [genus, family, order]
    for _, name, family, order, _ in COARSE_IDS:
        names += [name, family, order]
    for species in TAXA:  # the look-alikes after: the twelve and the coarse names keep the keys they had
        names += [species, *TAXA[species][1:]]
    keys: dict[str, int] = {}
    for name in names:
        keys.setdefault(name, 9_100_000 + len(keys))
    return keys


def _meta_xml(occ_terms: list[tuple[str, str]], media_terms: list[tuple[str, str]]) -> str:
    def fields(terms: list[tuple[str, str]]) -> str:
        return "\n".join(f'    <field index="{i}" term="{ns}{name}"/>' for i, (ns, name) in enumerate(terms))

    attrs = ('encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
             'ignoreHeaderLines="1"')
    return f"""<?xml version="1.0" encoding="utf-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">
  <core {attrs} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
{fields(occ_terms)}
  </core>
  <extension {attrs} rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
{fields(media_terms)}
  </extension>
</archive>
"""


def _write_table(zf: zipfile.ZipFile, name: str, columns: dict[str, list]) -> None:
    table = pa.table({k: pa.array([str(v) for v in vals], pa.string()) for k, vals in columns.items()})
    buf = io.BytesIO()
    buf.write(("\t".join(columns) + "\n").encode())  # GBIF's header line is not quoted
    pacsv.write_csv(table, buf, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))
    _zip_bytes(zf, name, buf.getvalue())


def _zip_bytes(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))  # fixed, so the same spec gives the same bytes
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data, compresslevel=1)


def build_tables(spec: SampleSpec) -> tuple[dict[str, list], dict[str, list], list[tuple], dict[str, str]]:
    """The occurrence and multimedia columns, the photos to draw, and the planted faults (URL path → fault)."""
    rng = np.random.default_rng(spec.seed)
    keys = _taxon_keys()
    occ: dict[str, list] = {name: [] for _, name in OCCURRENCE_TERMS}
    media: dict[str, list] = {name: [] for _, name in MULTIMEDIA_TERMS}
    photos: list[tuple] = []  # (photo_id, species or None, gbifID)
    ids: list[tuple[str, str | None, str, str, str]] = []
    exponent = float(spec.tail_exponent)  # resolved to the flora's own in SampleSpec.__post_init__
    for species, n in species_observation_counts(spec.observations, exponent, spec.flora).items():
        _, genus, family, order = TAXA[species]
        ids += [("SPECIES", species, genus, family, order)] * n
    for rank, name, family, order, share in COARSE_IDS:
        ids += [(rank, None, name if rank == "GENUS" else "", family, order)] * max(2, round(spec.observations * share))
    order_ix = rng.permutation(len(ids))
    where_rng = np.random.default_rng(spec.seed + 1)  # apart from rng: every other column stays as it was
    photo_id = 100_000
    for row, ix in enumerate(order_ix):
        rank, species, genus, family, order = ids[ix]
        gbif_id = 4_000_000_000 + row * 7 + 3
        obs_id = 150_000_000 + row
        lic = LICENSES[rng.choice(3, p=[0.7, 0.2, 0.1])]
        user = f"observer{rng.integers(1, max(2, spec.observations // 6))}"
        date = np.datetime64("2018-01-01") + rng.integers(0, 8 * 365)
        year, month, day = str(date).split("-")
        values = {
            "gbifID": gbif_id, "datasetKey": "50c9509d-22c7-4a22-a47d-8c48425ef4a7",
            "occurrenceID": f"https://www.inaturalist.org/observations/{obs_id}", "license": lic,
            "rightsHolder": user, "institutionCode": "iNaturalist", "collectionCode": "Observations",
            "basisOfRecord": "HUMAN_OBSERVATION", "catalogNumber": obs_id, "recordedBy": user,
            "occurrenceStatus": "PRESENT",
            "eventDate": f"{date}T{rng.integers(6, 20):02d}:{rng.integers(0, 60):02d}:00",
            "year": int(year), "month": int(month), "day": int(day),
            "countryCode": COUNTRIES[rng.integers(len(COUNTRIES))],
            "stateProvince": "", "decimalLatitude": round(float(rng.uniform(45, 62)), 5),
            "decimalLongitude": round(float(rng.uniform(-5, 25)),
                                      5), "coordinateUncertaintyInMeters": int(rng.integers(3, 500)),
            "identifiedBy": user, "taxonID": f"https://www.inaturalist.org/taxa/{keys.get(species or genus or family)}",
            "taxonomicStatus": "ACCEPTED", "publishingCountry": "US", "lastInterpreted": "2026-10-01T00:00:00.000Z",
            "issue": "COORDINATE_ROUNDED" if rng.random() < 0.3 else "", "mediaType": "StillImage",
            "hasCoordinate": "true", "hasGeospatialIssues": "false",
        }
        values.update(_taxon_columns(rank, species, genus, family, order, keys))
        if species in PLACE_AND_SEASON:  # found within its range, in one of its months
            lat, lon, months = PLACE_AND_SEASON[species]
            fruiting = int(months[where_rng.integers(len(months))])
            day = min(int(day), 28)
            values.update(month=fruiting, day=day, eventDate=f"{year}-{fruiting:02d}-{day:02d}"
                          + values["eventDate"][10:],
                          decimalLatitude=round(float(np.clip(lat + where_rng.normal(0, 1.2), 45, 62)), 5),
                          decimalLongitude=round(float(np.clip(lon + where_rng.normal(0, 2.0), -5, 25)), 5))
        for name in occ:
            occ[name].append(values.get(name, ""))
        for _ in range(int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))):
            photos.append((photo_id, species or genus or family, gbif_id, lic, user))
            photo_id += 1
    # planted faults and odd rows, on photos of the most common species so every class keeps its images
    top, second = FLORAS[spec.flora][:2]
    commonest = [p for p in photos if p[1] == top]
    picked = rng.choice(len(commonest), 8, replace=False)
    shared = [commonest[i] for i in picked]  # shared photos stay within one species (the conflict is planted apart)
    pool = [p for i, p in enumerate(commonest) if i not in set(picked)] + [p for p in photos if p[1] == second]
    faults = {pool[i][0]: f for i, f in zip(rng.choice(len(pool), len(FAULTS), replace=False), FAULTS, strict=True)}
    media_rows: list[tuple] = [(p[2], p[0], p[3], p[4], "StillImage") for p in photos]
    # a few photos belong to two observations (same URL, same species); one to two species (a labelling conflict)
    for a, b in zip(shared[0:6:2], shared[1:6:2], strict=True):
        media_rows.append((b[2], a[0], a[3], a[4], "StillImage"))
    other = next(p for p in photos if p[1] == second)
    media_rows.append((other[2], shared[6][0], shared[6][3], shared[6][4], "StillImage"))
    for kind, p in zip(ODD_MEDIA, photos[-len(ODD_MEDIA):], strict=True):
        media_rows.append((p[2], -1, p[3], p[4], kind))
    for gbif_id, pid, lic, user, kind in media_rows:
        ext = "png" if faults.get(pid) in {"png", "huge"} else "jpg"
        url = f"{spec.base_url}/{_media_path(pid, ext)}"
        mtype, fmt = "StillImage", f"image/{'png' if ext == 'png' else 'jpeg'}"
        if kind == "ftp_scheme":
            url = url.replace("http://", "ftp://", 1)
        elif kind == "empty_url":
            url = ""
        elif kind == "sound":
            mtype, fmt, url = "Sound", "audio/mpeg", f"{spec.base_url}/sounds/{gbif_id}.mp3"
        row = {"gbifID": gbif_id, "type": mtype, "format": fmt, "identifier": url,
               "references": f"https://www.inaturalist.org/photos/{pid}", "title": "", "description": "",
               "created": "2024-09-14T10:00:00Z", "creator": user, "publisher": "iNaturalist", "license": lic,
               "rightsHolder": user}
        for name in media:
            media[name].append(row[name])
    draw_jobs = [(p[0], p[1], faults.get(p[0], "")) for p in photos]
    fault_paths = {"/" + _media_path(pid, "png" if f in {"png", "huge"} else "jpg"): f for pid, f in faults.items()}
    return occ, media, draw_jobs, fault_paths


def generate_sample(spec: SampleSpec, workers: int = 2) -> Sample:
    """Write the archive, the photos under ``media/`` and ``faults.json``; the same spec gives the same files."""
    root = Path(spec.out)
    media_dir = root / "media"
    occ, media, draw_jobs, faults = build_tables(spec)
    for i in range(spec.extra_columns):
        occ[f"extraTerm{i}"] = [""] * len(occ["gbifID"])
    occ_terms = OCCURRENCE_TERMS + [(DWC, f"extraTerm{i}") for i in range(spec.extra_columns)]
    archive = root / ARCHIVE_NAME
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        _zip_bytes(zf, "meta.xml", _meta_xml(occ_terms, MULTIMEDIA_TERMS).encode())
        _zip_bytes(zf, "metadata.xml", EML)
        _write_table(zf, "occurrence.txt", occ)
        _write_table(zf, "multimedia.txt", media)
    if spec.write_images:
        jobs = [
            (spec.seed, pid, name, spec.image_size, fault,
             str(media_dir / _media_path(pid, "png" if fault in {"png", "huge"} else "jpg")), HARD_SHARE[spec.flora])
            for pid, name, fault in draw_jobs
            if fault != "missing"
        ]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(tqdm(pool.map(_render, jobs, chunksize=16), total=len(jobs), desc="drawing sample photos", unit="img"))
    write_json(root / SPEC_FILE, _spec_record(spec))
    write_json(root / "faults.json", faults)  # last: its presence says the sample is complete
    return Sample(root, archive, media_dir, faults, len(occ["gbifID"]), len(media["gbifID"]))


def load_sample(root: Path) -> Sample:
    """A previously generated sample (its archive must exist)."""
    root = Path(root)
    faults = json.loads((root / "faults.json").read_text()) if (root / "faults.json").exists() else {}
    return Sample(root, root / ARCHIVE_NAME, root / "media", faults)


def _spec_record(spec: SampleSpec) -> dict[str, object]:
    """What a sample was generated from (``sample.json``), so a changed spec or generator regenerates it."""
    return {"generator": GENERATOR_VERSION, "observations": spec.observations, "seed": spec.seed,
            "base_url": spec.base_url, "image_size": spec.image_size, "tail_exponent": spec.tail_exponent,
            "extra_columns": spec.extra_columns, "flora": spec.flora, "hard_share": HARD_SHARE[spec.flora]}


def ensure_sample(root: Path, **spec: object) -> Sample:
    """Generate the sample under ``root`` unless the same spec (and generator) already made it there; a sample from
    another spec or an older generator is replaced (its photos removed first, so none is left over)."""
    root = Path(root)
    wanted = SampleSpec(out=root, **spec)  # type: ignore[arg-type]
    record = root / SPEC_FILE
    if (root / ARCHIVE_NAME).exists() and (root / "faults.json").exists() and record.exists():
        if json.loads(record.read_text()) == _spec_record(wanted):
            return load_sample(root)
    if (root / "media").is_dir():
        shutil.rmtree(root / "media")
    return generate_sample(wanted)


def ensure_sample_for(archive: str | Path, sample_dir: str | Path | None) -> None:
    """Make sure ``archive`` exists: generate the embedded sample into ``sample_dir`` when it is missing."""
    if Path(archive).exists():
        return
    if sample_dir is None:

        raise FungilibError(f"archive {archive} does not exist")
    ensure_sample(Path(sample_dir))


def write_scaled_archive(out: Path, occurrences: int, extra_columns: int = 200, seed: int = 0,
                         chunk_rows: int = 100_000) -> Path:
    """A GBIF-scale archive (for benchmarks): the sample's rows repeated with fresh gbifIDs up to ``occurrences``.

    Written in chunks straight into the zip, so generating 1.4 M occurrences x 250 columns takes little memory.
    No images are drawn; the media rows point at the sample's URLs.
    """
    occ, media, _, _ = build_tables(SampleSpec(out=Path(out), observations=700, seed=seed, write_images=False,
                                               flora="twelve"))
    template = pa.table({k: pa.array([str(v) for v in vals], pa.string()) for k, vals in occ.items()})
    media_table = pa.table({k: pa.array([str(v) for v in vals], pa.string()) for k, vals in media.items()})
    occ_index = {gid: i for i, gid in enumerate(occ["gbifID"])}
    media_occ = np.array([occ_index[g] for g in media["gbifID"]])
    t = template.num_rows
    extra = [f"extraTerm{i}" for i in range(extra_columns)]
    occ_terms = OCCURRENCE_TERMS + [(DWC, name) for name in extra]
    archive = Path(out) / "gbif-scale.zip"
    opts = pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
    media_file = Path(out) / ".multimedia.txt.part"  # a zip takes one writer at a time: media go to disk first
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _zip_bytes(zf, "meta.xml", _meta_xml(occ_terms, MULTIMEDIA_TERMS).encode())
        _zip_bytes(zf, "metadata.xml", EML)  # meta.xml names it, as GBIF's do; strict readers require it
        with zf.open("occurrence.txt", "w", force_zip64=True) as occ_out, open(media_file, "wb") as media_out:
            occ_out.write(("\t".join([n for _, n in occ_terms]) + "\n").encode())
            media_out.write(("\t".join(media) + "\n").encode())
            for start in tqdm(range(0, occurrences, chunk_rows), desc="writing GBIF-scale archive", unit="chunk"):
                rows = np.arange(start, min(start + chunk_rows, occurrences))
                ids = pa.array((5_000_000_000 + rows).astype(str), pa.string())
                chunk = template.take(pa.array(rows % t)).set_column(0, "gbifID", ids)
                for name in extra:
                    chunk = chunk.append_column(name, pa.nulls(len(rows), pa.string()))
                buf = io.BytesIO()
                pacsv.write_csv(chunk, buf, opts)
                occ_out.write(buf.getvalue())
                # media rows of these occurrences: every template media row whose occurrence falls in the chunk
                parts = []
                for copy in range(rows[0] // t, rows[-1] // t + 1):
                    lo, hi = max(start, copy * t), min(rows[-1] + 1, (copy + 1) * t)
                    sel = np.nonzero((media_occ >= lo - copy * t) & (media_occ < hi - copy * t))[0]
                    gids = pa.array((5_000_000_000 + copy * t + media_occ[sel]).astype(str), pa.string())
                    parts.append(media_table.take(pa.array(sel)).set_column(0, "gbifID", gids))
                buf = io.BytesIO()
                pacsv.write_csv(pa.concat_tables(parts), buf, opts)
                media_out.write(buf.getvalue())
        zf.write(media_file, "multimedia.txt")
    media_file.unlink()
    return archive
