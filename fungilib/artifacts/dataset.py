"""A training dataset: manifest.h5 (manifest, labels, dropped) and the label table, written by clean and by
import-folder, read by train, evaluate, export and the sweep planner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fungilib.errors import FungilibError
from fungilib.fsutil import read_hdf, write_json

MANIFEST_FILE = "manifest.h5"
LABELS_CSV = "labels.csv"
LABELS_JSON = "labels.json"
CLEAN_REPORT = "clean_report.json"
IMPORT_REPORT = "import_report.json"
STAGE_PARAMS = "params.yaml"


def manifest_file(path: Path) -> Path:
    """manifest.h5, given it or the folder holding it."""
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def load_manifest(path: Path) -> tuple[Any, Any]:
    """(manifest with absolute ``path``s, label table) from manifest.h5 or the folder holding it."""
    path = manifest_file(path)
    if not path.exists():
        raise FungilibError(f"{path}: no manifest; run the clean stage first")
    manifest = read_hdf(path, "manifest")
    manifest["path"] = [os.path.normpath(path.parent / p) for p in manifest["path"]]
    return manifest, read_hdf(path, "labels")


def load_dropped(path: Path) -> Any:
    return read_hdf(manifest_file(path), "dropped")


def write_label_table(folder: Path, labels: Any) -> None:
    """The exact index → label table (CSV for people and pandas, JSON for the page)."""
    labels.to_csv(Path(folder) / LABELS_CSV, index=False)
    write_json(Path(folder) / LABELS_JSON, labels.to_dict(orient="records"))
