"""An embed stage's folder: the pooled features of every photo of a manifest under one base, written in parts
(a killed run resumes from its last complete part) and joined into one array beside its index and what made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fungilib.errors import FungilibError
from fungilib.fsutil import atomic_path, write_json

EMBEDDINGS = "embeddings.npy"  # float32, one row per photo (and per augmented view)
INDEX = "embedding_index.csv"  # row → media_id, split, label, view (0: the centre crop)
INFO = "embed_info.json"  # base, weights, input size, the manifest's version, rows, dims, time, peak RSS
PARTS_DIR = "parts"
PLOT = "embeddings.png"


@dataclass
class Embeddings:
    """A finished embed folder, read back: the array (memory-mapped), its index and its description."""

    folder: Path
    array: np.ndarray
    index: Any  # pandas DataFrame
    info: dict[str, Any]

    def rows(self, split: str, views: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, labels) of a split: its centre crops, and with ``views`` its augmented views too."""
        chosen = self.index[(self.index["split"] == split) & ((self.index["view"] == 0) | views)]
        return np.asarray(self.array[chosen["row"].to_numpy()]), chosen["label"].to_numpy()


def part_file(folder: Path, number: int) -> Path:
    return Path(folder) / PARTS_DIR / f"{number:05d}.npy"


def write_part(folder: Path, number: int, rows: np.ndarray) -> None:
    with atomic_path(part_file(folder, number)) as tmp, tmp.open("wb") as f:
        np.save(f, rows.astype(np.float32))


def join_parts(folder: Path, count: int, rows: int, dims: int) -> None:
    """The parts, in order, into one array (streamed: one part in memory at a time); the parts are then removed."""
    folder = Path(folder)
    with atomic_path(folder / EMBEDDINGS) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dims))
        at = 0
        for number in range(count):
            part = np.load(part_file(folder, number))
            out[at:at + len(part)] = part
            at += len(part)
        out.flush()
        del out
    if at != rows:
        raise FungilibError(f"{folder}: the parts hold {at} rows, the index {rows}; run the embed stage again")
    for number in range(count):
        part_file(folder, number).unlink()
    (folder / PARTS_DIR).rmdir()


def write_finished(folder: Path, index: Any, info: dict[str, Any]) -> None:
    with atomic_path(Path(folder) / INDEX) as tmp:
        index.to_csv(tmp, index=False)
    write_json(Path(folder) / INFO, info)


def is_embedded(folder: Path) -> bool:
    return all((Path(folder) / name).exists() for name in (EMBEDDINGS, INDEX, INFO))


def load_embeddings(folder: Path) -> Embeddings:
    """A finished embed folder; one line when it is not one."""
    import pandas as pd

    folder = Path(folder)
    if not is_embedded(folder):
        raise FungilibError(f"{folder}: no finished embeddings ({EMBEDDINGS}, {INDEX}, {INFO}); run `fungilib embed` "
                            "first")
    info = json.loads((folder / INFO).read_text())
    array = np.load(folder / EMBEDDINGS, mmap_mode="r")
    index = pd.read_csv(folder / INDEX)
    if array.shape != (len(index), info.get("dims")):
        raise FungilibError(f"{folder}: {EMBEDDINGS} is {array.shape}, its index {len(index)} rows of "
                            f"{info.get('dims')} dims; run the embed stage again")
    return Embeddings(folder, array, index, info)
