"""The embedded sample: deterministic, long-tailed, GBIF-shaped, with every planted fault."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fungilib.sample import FAULTS, TAXA, SampleSpec, generate_sample, species_observation_counts


def _tables(archive: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with zipfile.ZipFile(archive) as zf:
        occ = pd.read_csv(io.BytesIO(zf.read("occurrence.txt")), sep="\t", dtype=str, keep_default_na=False)
        media = pd.read_csv(io.BytesIO(zf.read("multimedia.txt")), sep="\t", dtype=str, keep_default_na=False)
    return occ, media


def test_same_spec_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = generate_sample(SampleSpec(out=tmp_path / "a", observations=60, seed=1, write_images=False))
    b = generate_sample(SampleSpec(out=tmp_path / "b", observations=60, seed=1, write_images=False))
    c = generate_sample(SampleSpec(out=tmp_path / "c", observations=60, seed=2, write_images=False))
    assert a.archive.read_bytes() == b.archive.read_bytes()
    assert a.archive.read_bytes() != c.archive.read_bytes()


def test_archive_has_gbif_columns_long_tail_and_coarse_ranks(served_sample) -> None:
    sample, _ = served_sample
    occ, media = _tables(sample.archive)
    for column in ["gbifID", "occurrenceID", "basisOfRecord", "eventDate", "decimalLatitude", "decimalLongitude",
                   "countryCode", "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonKey",
                   "speciesKey", "acceptedScientificName", "taxonRank", "license", "rightsHolder"]:
        assert column in occ.columns, column
    for column in ["gbifID", "type", "format", "identifier", "references", "created", "license", "rightsHolder"]:
        assert column in media.columns, column
    per_species = occ[occ["taxonRank"] == "SPECIES"]["species"].value_counts()
    assert len(per_species) == len(TAXA) == 12
    assert per_species.iloc[0] >= 5 * per_species.iloc[-1]  # long-tailed
    assert {"GENUS", "FAMILY"} <= set(occ["taxonRank"])
    assert occ.loc[occ["taxonRank"] == "SPECIES", "acceptedScientificName"].str.contains(r"\(|\.").all()  # authorship
    photos = media[media["type"] == "StillImage"].groupby("gbifID").size()
    assert photos.min() >= 1 and photos.max() <= 5  # 1–4 photos, plus a shared one on a few observations
    shared = media[media["identifier"] != ""].groupby("identifier")["gbifID"].nunique()
    assert (shared == 2).sum() >= 3


def test_every_fault_is_planted_and_images_are_all_different(served_sample) -> None:
    sample, _ = served_sample
    assert sorted(sample.faults.values()) == sorted(FAULTS)
    files = [p for p in sample.media_dir.rglob("*") if p.is_file()]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert len(digests) == len(files)
    exif = next(path for path, fault in sample.faults.items() if fault == "exif_rotated")
    with Image.open(sample.media_dir / exif.lstrip("/")) as img:
        assert img.getexif().get(0x0112) == 6


def test_species_counts_follow_a_power_law() -> None:
    counts = list(species_observation_counts(1200, 1.0).values())
    assert counts == sorted(counts, reverse=True)
    assert abs(counts[0] / counts[1] - 2.0) < 0.1


def test_scale_sample_has_a_gbif_like_long_tail_and_draws_photos_on_request(tmp_path: Path) -> None:
    """The rehearsal archive: many species with a steep head, a median of a few dozen and a tail of 1–5, genera and
    families, coordinates and dates; the server draws each photo on request, distinct bytes for every photo."""
    import urllib.request

    import numpy as np

    from fungilib.artifacts.observations import load_observations
    from fungilib.ingest import IngestParams, ingest
    from fungilib.sample_scale import ScaleSpec, generate_scale_sample
    from fungilib.sample_server import SampleServer

    with SampleServer(tmp_path / "scale", port=0) as server:
        sample = generate_scale_sample(ScaleSpec(out=tmp_path / "scale", species=300, photos=12_000,
                                                 base_url=server.base_url, image_size=64))
        server.load_faults()
        ingest(IngestParams(archive=sample.archive, out=tmp_path / "ingest"))
        obs = load_observations(tmp_path / "ingest")
        per_species = obs.groupby("species").size().sort_values(ascending=False).to_numpy()
        assert len(per_species) == 300 and abs(len(obs) - 12_000) < 600
        assert per_species[0] > 10 * np.median(per_species) and (per_species <= 5).sum() >= 30  # head and tail
        assert 15 <= np.median(per_species) <= 60
        per_observation = obs.groupby("gbifID").size()
        assert set(per_observation.unique()) <= {1, 2, 3, 4} and per_observation.max() == 4
        # five species a genus, eight genera a family
        assert obs["genus"].nunique() == 60 and obs["family"].nunique() == 8
        assert obs["decimalLatitude"].between(20, 85).all() and obs["eventDate"].str.len().eq(10).all()
        first, second = obs[obs["species"] == obs["species"].iloc[0]]["url"].head(2)
        bodies = [urllib.request.urlopen(url, timeout=10).read() for url in (first, second, first)]
        assert bodies[0] == bodies[2] and bodies[0] != bodies[1] and bodies[0][:2] == b"\xff\xd8"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{server.base_url}/scale/999999/1.jpg", timeout=10)
