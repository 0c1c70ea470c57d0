"""Any labelled image folder as a dataset: a generated tree with the defects real folders have."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fungilib.artifacts.dataset import load_dropped, load_manifest
from fungilib.errors import FungilibError
from fungilib.image_folder import FolderParams, import_folder

from .conftest import SCRATCH_MODEL

CLASSES = {"Amanita muscaria": "9100000", "Boletus édulis (cèpe)": "9100001", "Cantharellus/2024/trip 1": "9100002"}


def _photos(pipeline, taxon: str) -> list[Path]:  # noqa: ANN001
    return sorted((pipeline.root / "download" / "images" / taxon).glob("*.jpg"))


def _make_tree(pipeline, root: Path, outside: Path) -> dict[str, Path]:  # noqa: ANN001
    """Three classes (odd names, one nested), plus every defect the importer must report."""
    special: dict[str, Path] = {}
    for folder, taxon in CLASSES.items():
        target = root / folder
        target.mkdir(parents=True)
        for photo in _photos(pipeline, taxon)[:8]:
            shutil.copy(photo, target / photo.name)
    amanita = root / "Amanita muscaria"
    source = Image.open(_photos(pipeline, "9100000")[8]).convert("RGB")
    rgba = source.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(amanita / "with alpha.png")
    special["png"] = amanita / "with alpha.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    source.save(amanita / "rotated.jpg", exif=exif.tobytes())
    special["rotated"] = amanita / "rotated.jpg"
    source.save(amanita / "photo.webp", "WEBP", quality=90)
    special["webp"] = amanita / "photo.webp"
    (amanita / "broken.jpg").write_bytes(_photos(pipeline, "9100000")[9].read_bytes()[:300])
    (amanita / "notes.txt").write_text("field notes, not a photo")
    (amanita / ".DS_Store").write_bytes(b"\x00\x01")
    shutil.copy(amanita / _photos(pipeline, "9100000")[0].name, amanita / "same bytes again.jpg")
    boletus = root / "Boletus édulis (cèpe)"
    shutil.copy(amanita / _photos(pipeline, "9100000")[1].name, boletus / "filed twice.jpg")  # in two classes
    (root / "Empty species").mkdir()
    (root / "README.md").write_text("photos from 2024")
    outside.mkdir()
    shutil.copy(_photos(pipeline, "9100001")[9], outside / "elsewhere.jpg")
    os.symlink(outside / "elsewhere.jpg", boletus / "link out.jpg")
    os.symlink(outside, root / "Amanita muscaria" / "linked folder")
    return special


def test_import_folder_reports_every_defect_and_trains(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    tree = tmp_path / "photos"
    special = _make_tree(pipeline, tree, tmp_path / "outside")
    out = tmp_path / "imported"
    result = import_folder(FolderParams(source=tree, out=out, min_per_class=4, seed=3))
    manifest, labels = load_manifest(out)
    dropped = load_dropped(out)
    reasons = dict(zip(dropped["path"].map(lambda p: Path(p).name), dropped["reason"], strict=True))
    assert reasons["broken.jpg"].startswith("not a readable image")
    assert reasons["notes.txt"].startswith("not a readable image")
    assert reasons["README.md"] == "not in a class folder"
    assert reasons["link out.jpg"] == "symlink leaving the folder"
    assert reasons["linked folder"] == "symlinked folder leaving the folder"
    assert reasons["same bytes again.jpg"].startswith("duplicate")
    assert {reasons.get("filed twice.jpg"), reasons.get(_photos(pipeline, "9100000")[1].name)} == {
        "same image filed under different species"}
    assert ".DS_Store" not in reasons
    assert result.empty_classes == ["Empty species"]
    assert sorted(labels["species"]) == ["Amanita muscaria", "Boletus édulis (cèpe)", "Cantharellus"]
    assert result.classes == 3 and result.images == len(manifest) == 8 + 3 + 7 + 8  # +png/webp/rotated, −conflict
    assert set(manifest["split"]) == {"train", "val", "test"}
    # PNG, WebP and EXIF-rotated photos were normalised to upright RGB JPEG copies under OUT/images
    assert result.normalised == 3
    copies = manifest[manifest["path"].str.startswith(str(out / "images"))]
    assert len(copies) == 3
    for path in copies["path"]:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
    with Image.open(special["rotated"]) as original:
        w, h = original.size
    rotated = [p for p in copies["path"] if Image.open(p).size == (h, w)]
    assert rotated  # the rotated photo is stored upright (width and height swapped)
    # the same training run works from the imported folder
    from fungilib.params import build_params
    from fungilib.train import TrainParams, train

    run = train(build_params(TrainParams, {"out": tmp_path / "run", "dataset": {
        "manifest": str(out), "image_size": 32, "batch_size": 16}, "model": SCRATCH_MODEL,
        "fit": {"epochs": 1, "temperature_scaling": False}}))
    assert run.epochs_run == 1 and (tmp_path / "run" / "model.keras").exists()


def test_import_from_a_labels_csv_keeps_groups_together(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    root = tmp_path / "data"
    rows = []
    for taxon, name in (("9100000", "Amanita muscaria"), ("9100001", "Boletus edulis")):
        for i, photo in enumerate(_photos(pipeline, taxon)[:12]):
            target = root / "img" / f"{taxon}-{i}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            rows.append({"path": f"img/{target.name}", "label": name, "group": f"{taxon}-site{i // 3}",
                         "genus": name.split()[0], "family": ""})
    rows.append({"path": "../outside.jpg", "label": "Amanita muscaria", "group": "x", "genus": "", "family": ""})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    out = tmp_path / "imported"
    done = subprocess.run([sys.executable, "-m", "fungilib.cli", "import-folder", str(root / "labels.csv"), "--out",
                           str(out), "--set", "min_per_class=4"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest, labels = load_manifest(out)
    assert len(manifest) == 24 and list(labels["genus"]) == ["Amanita", "Boletus"]
    assert (manifest.groupby("group")["split"].nunique() == 1).all()  # a group never straddles splits
    assert "path outside the CSV's folder" in set(load_dropped(out)["reason"])
    bad = root / "bad.csv"
    bad.write_text("file,species\na.jpg,x\n")
    with pytest.raises(FungilibError, match="missing column 'path'"):
        import_folder(FolderParams(source=bad, out=tmp_path / "bad"))


def test_import_folder_with_no_images_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tree" / "Some species").mkdir(parents=True)
    (tmp_path / "tree" / "Some species" / "notes.txt").write_bytes(io.BytesIO(b"x").getvalue())
    with pytest.raises(FungilibError, match="no images left"):
        import_folder(FolderParams(source=tmp_path / "tree", out=tmp_path / "out"))
    with pytest.raises(FungilibError, match="no such folder"):
        import_folder(FolderParams(source=tmp_path / "missing", out=tmp_path / "out"))


def test_a_sweep_can_name_an_image_folder_as_its_source(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    from fungilib.sweep_file import load_sweep
    from fungilib.sweep_plan import plan, prepare_source

    tree = tmp_path / "photos"
    for folder, taxon in CLASSES.items():
        (tree / folder).mkdir(parents=True)
        for photo in _photos(pipeline, taxon)[:6]:
            shutil.copy(photo, tree / folder / photo.name)
    sweep_file = tmp_path / "folder-sweep.yaml"
    sweep_file.write_text(f"name: folder-sweep\nfolder: {tree}\nimport: {{min_per_class: 4, seed: 1}}\n"
                          "pipeline: [train]\nbase: {train: {dataset: {image_size: 32}, "
                          "model: {base: MobileNetV3Small, weights: none, freeze: train_all}}}\n"
                          "search: {grid: {train.optimizer.learning_rate: [0.001, 0.002]}}\n")
    sweep = load_sweep(sweep_file)
    prepare_source(sweep, tmp_path / "runs")
    imported = Path(sweep.archive)
    assert imported.parent.name == "stages" and imported.name.startswith("import-")
    manifest, _ = load_manifest(imported)
    assert len(manifest) == 18
    _, runs = plan(sweep, tmp_path / "runs")
    assert [r.parameters["dataset"]["manifest"] for r in runs] == [str(imported)] * 2  # both runs train on the import
    stamp = (imported / "manifest.h5").stat().st_mtime_ns
    again = load_sweep(sweep_file)
    prepare_source(again, tmp_path / "runs")  # the same folder and parameters: imported once
    assert again.archive == sweep.archive and (imported / "manifest.h5").stat().st_mtime_ns == stamp
    sweep_file.write_text(sweep_file.read_text().replace("min_per_class: 4", "min_per_clas: 4"))
    with pytest.raises(FungilibError, match="min_per_clas"):
        load_sweep(sweep_file)
