"""Any labelled image folder as a dataset (``fungilib import-folder``): ``DIR/<label>/**/*.jpg`` (as in
flower_photos or CUB's ``images/``) or a CSV of ``path,label[,group,genus,family]``, turned into the same
``manifest.h5`` and label table the GBIF path's clean stage writes, so training, sweeps and export work on it
unchanged. Images that are not plain RGB JPEGs (PNG, WebP, CMYK, EXIF-rotated) get a normalised JPEG copy
under ``OUT/images/``; every file left out is listed with its reason, never silently lost.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from fungilib.artifacts.dataset import IMPORT_REPORT, MANIFEST_FILE, STAGE_PARAMS
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.dataset_builder import CleanResult, Pruner, SplitParams, finish_dataset
from fungilib.errors import FungilibError
from fungilib.fsutil import write_json
from fungilib.params import write_params
from fungilib.photos import PhotoError, decode_photo, is_plain_jpeg, save_photo

SOURCE_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("group", "genus", "family")


@dataclass(kw_only=True)
class FolderParams(SplitParams):
    """A folder tree of class-labelled images (or a CSV of labels) into a manifest."""

    source: Path  # DIR with one sub-folder per label, or a CSV with columns path,label[,group,genus,family]
    out: Path
    min_per_class: int = 5
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb limit


@dataclass
class FolderResult(CleanResult):
    empty_classes: list[str] = field(default_factory=list)
    normalised: int = 0


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _scan_tree(root: Path) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Files under ``root/<label>/`` (sub-folders allowed), the entries refused, and the empty label folders."""
    rows: list[dict] = []
    refused: list[dict] = []
    labels_seen: dict[str, int] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        rel = here.relative_to(root)
        for name in sorted(dirs):
            if (here / name).is_symlink():  # never followed: loops and trees outside
                where = "leaving the folder" if not _inside(here / name, root) else "inside the folder, not followed"
                refused.append({"path": str(here / name), "label": rel.parts[0] if rel.parts else "",
                                "reason": f"symlinked folder {where}"})
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and not d.startswith("."))
        if rel.parts:
            labels_seen.setdefault(rel.parts[0], 0)
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue  # .DS_Store and friends
            if not rel.parts:
                refused.append({"path": str(path), "label": "", "reason": "not in a class folder"})
                continue
            if path.is_symlink() and not _inside(path, root):
                refused.append({"path": str(path), "label": rel.parts[0], "reason": "symlink leaving the folder"})
                continue
            if not path.is_file():  # a FIFO, a socket, a device: reading it could wait forever
                refused.append({"path": str(path), "label": rel.parts[0], "reason": "not a regular file"})
                continue
            labels_seen[rel.parts[0]] += 1
            rows.append({"path": str(path), "label": rel.parts[0], "media_id": path.relative_to(root).as_posix()})
    frame = pd.DataFrame(rows, columns=["path", "label", "media_id"])
    frame["group"] = frame["media_id"]  # split by file
    empty = sorted(label for label, n in labels_seen.items() if n == 0)
    return frame, refused, empty


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SOURCE_COLUMNS if c not in table.columns]
    if missing:
        raise FungilibError(f"{path}: missing column {missing[0]!r}; a labels CSV needs columns path,label "
                            f"(optional: {', '.join(OPTIONAL_COLUMNS)}); found {', '.join(table.columns)}")
    root = path.parent.resolve()
    rows, refused = [], []
    for record in table.to_dict(orient="records"):
        target = (root / record["path"]).resolve() if record["path"] else root
        if not record["path"] or not _inside(target, root):
            refused.append({"path": record["path"], "label": record["label"],
                            "reason": "path outside the CSV's folder"})
        elif not record["label"].strip():
            refused.append({"path": record["path"], "label": "", "reason": "no label"})
        else:
            rows.append({**record, "path": str(root / record["path"]), "media_id": record["path"]})
    frame = pd.DataFrame(rows, columns=[*SOURCE_COLUMNS, "media_id", *[c for c in OPTIONAL_COLUMNS if c in table]])
    if "group" not in frame or (frame["group"] == "").all():
        frame["group"] = frame["media_id"]
    frame["group"] = frame["group"].where(frame["group"] != "", frame["media_id"])
    return frame, refused


def _normalise(path: str, images: Path, max_pixels: int) -> tuple[str, str]:
    """(the path training reads, error): the file itself, or a normalised JPEG copy named by its content hash."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return "", f"unreadable ({type(exc).__name__})"
    try:
        img, _ = decode_photo(data, max_pixels)
    except PhotoError as exc:
        reason = exc.reason
        if reason.startswith("too many pixels"):
            return "", reason
        return "", "not a readable image " + reason.partition(" ")[2]
    if is_plain_jpeg(img):
        return path, ""
    digest = hashlib.sha256(data).hexdigest()
    target = images / digest[:2] / f"{digest}.jpg"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        save_photo(img, target, quality=95)
    return str(target), ""


def import_folder(params: FolderParams) -> FolderResult:
    """Write ``OUT/manifest.h5`` (keys manifest, labels, dropped), labels.csv/json and ``import_report.json``."""
    source = Path(params.source).resolve()
    out = Path(params.out).resolve()
    if not source.exists():
        raise FungilibError(f"{params.source}: no such folder or CSV")
    if source.is_dir():
        frame, refused, empty = _scan_tree(source)
    elif source.suffix.lower() in (".csv", ".txt"):
        frame, refused = _read_csv(source)
        empty = []
    else:
        raise FungilibError(f"{params.source}: expected a folder of class folders or a labels CSV")
    if frame.empty:
        raise FungilibError(f"{params.source}: no image files found under class folders (DIR/<label>/*.jpg)")
    prepare_output(out, "import_folder")
    images = out / "images"
    stored, errors = [], []
    for path in tqdm(frame["path"], desc="importing images", unit="img"):
        kept, error = _normalise(path, images, params.max_pixels)
        stored.append(kept)
        errors.append(error)
    frame = frame.assign(stored=stored, error=errors)
    table = pd.DataFrame({
        "media_id": frame["media_id"], "gbifID": frame["group"].astype(str), "species": frame["label"],
        "speciesKey": frame["label"], "class_key": frame["label"],
        "genus": frame.get("genus", pd.Series("", index=frame.index)),
        "family": frame.get("family", pd.Series("", index=frame.index)),
        "taxonRank": "SPECIES", "license": "", "rightsHolder": "", "path": frame["path"],
        "abs_path": frame["stored"],
    })
    pruner = Pruner(table)
    pruner.drop(frame["error"] != "", frame["error"])
    if refused:
        gone = pd.DataFrame(refused).rename(columns={"label": "species"})
        gone["media_id"], gone["gbifID"] = gone["path"], ""
        pruner.dropped.append(gone[["media_id", "gbifID", "species", "path", "reason"]])
    result = finish_dataset(pruner, params, out)
    report = {"source": str(source), "images": result.images, "classes": result.classes, "dropped": result.dropped,
              "splits": result.splits, "empty_classes": empty,
              "normalised": int(sum(1 for s in stored if s and Path(s).is_relative_to(images)))}
    write_json(out / IMPORT_REPORT, report)
    write_params(out / STAGE_PARAMS, params)
    return FolderResult(out / MANIFEST_FILE, result.images, result.classes, result.dropped, result.splits,
                        result.held_out, empty, report["normalised"])
