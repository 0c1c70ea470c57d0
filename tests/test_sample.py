"""The embedded sample: deterministic, long-tailed, GBIF-shaped, with every planted fault."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fungilib.sample import FAULTS, TWELVE, SampleSpec, generate_sample, species_observation_counts


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
    assert len(per_species) == len(TWELVE) == 12
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


def test_the_field_flora_has_look_alikes_a_photo_cannot_split_and_place_or_month_can(tmp_path: Path) -> None:
    """The default sample: 26 species, long-tailed; each look-alike group shares shape, underside and ring, with
    caps within 50 of each other in RGB (less than a photo's own light changes them); in the archive its members
    part by month or by range; one group pairs a deadly species with an edible one on the sample's toxicity list."""
    import numpy as np

    from fungilib.fsutil import PROJECT_ROOT
    from fungilib.sample import FIELD, LOOKALIKE_GROUPS
    from fungilib.sample_art import LOOKS, _rgb
    from fungilib.toxicity import load_toxicity

    sample = generate_sample(SampleSpec(out=tmp_path / "s", observations=600, seed=3, write_images=False))
    occ, _ = _tables(sample.archive)
    species = occ[occ["taxonRank"] == "SPECIES"]
    counts = species["species"].value_counts()
    assert set(counts.index) == set(FIELD) and len(FIELD) == 26
    assert counts.iloc[0] >= 8 * counts.iloc[-1] and counts.iloc[-1] >= 6  # a long tail, every species learnable
    months = species.groupby("species")["month"].agg(lambda m: set(m.astype(int)))
    centre = species.assign(lat=species["decimalLatitude"].astype(float), lon=species["decimalLongitude"].astype(
        float)).groupby("species")[["lat", "lon"]].mean()
    for group in LOOKALIKE_GROUPS:
        looks = [LOOKS[name] for name in group]
        assert len({(lk.shape, lk.underside, lk.ring) for lk in looks}) == 1, group
        caps = np.array([_rgb(lk.hue, lk.sat, lk.val) for lk in looks], dtype=float)
        assert max(np.linalg.norm(x - y) for x in caps for y in caps) < 50, group
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                apart = float(np.hypot(*(centre.loc[a] - centre.loc[b])))
                assert not months[a] & months[b] or apart > 4, (a, b, months[a], months[b], apart)
    status = load_toxicity(PROJECT_ROOT / "params" / "toxicity-sample.csv")
    assert any({"deadly", "edible"} <= {status.get(name) for name in group} for group in LOOKALIKE_GROUPS)


def test_hard_photos_come_after_the_rest_so_an_easy_photo_stays_as_it_was() -> None:
    """``hard`` draws after every other choice: hard=0 gives the pictures the twelve-species tests were made with;
    hard=1 makes every one of them harder (cut, blurred, cluttered or dark) from the same start."""
    import numpy as np

    from fungilib.sample_art import draw_mushroom

    for seed in range(12):
        easy = np.asarray(draw_mushroom("Boletus edulis", np.random.default_rng(seed), 96))
        same = np.asarray(draw_mushroom("Boletus edulis", np.random.default_rng(seed), 96, hard=0.0))
        hard = np.asarray(draw_mushroom("Boletus edulis", np.random.default_rng(seed), 96, hard=1.0))
        np.testing.assert_array_equal(easy, same)
        assert hard.shape != easy.shape or np.abs(hard.astype(int) - easy).mean() > 2


def test_ensure_sample_keeps_the_same_spec_and_replaces_another(tmp_path: Path) -> None:
    from fungilib.sample import SPEC_FILE, ensure_sample

    root = tmp_path / "sample"
    first = ensure_sample(root, observations=40, flora="twelve", image_size=48)
    photos = sorted(p.name for p in first.media_dir.rglob("*.jpg"))
    stamp = first.archive.stat().st_mtime_ns
    assert ensure_sample(root, observations=40, flora="twelve", image_size=48).archive.stat().st_mtime_ns == stamp
    bigger = ensure_sample(root, observations=60, flora="twelve", image_size=48)  # another spec: generated again
    assert bigger.archive.stat().st_mtime_ns != stamp
    assert len(list(bigger.media_dir.rglob("*.jpg"))) > len(photos)
    (root / SPEC_FILE).unlink()  # a sample from before the record (an older generator): replaced too
    ensure_sample(root, observations=60, flora="twelve", image_size=48)
    assert (root / SPEC_FILE).exists()
