"""A toxicity list the user supplies (nothing invented here): species or genus → deadly | toxic | edible | unknown.

Read from a CSV with the columns ``name`` and ``status`` (other columns, such as a source, are kept as they are);
a species row wins over its genus row. Used by the export (the page marks toxic species and warns when one is a
close alternative of an edible answer) and by evaluation (how often a toxic species is predicted as an edible
one: the FungiCLEF challenges' poisonous-confusion idea).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from fungilib.errors import FungilibError

STATUSES = ("deadly", "toxic", "edible", "unknown")
POISONOUS = ("deadly", "toxic")


def load_toxicity(path: Path) -> dict[str, str]:
    """name → status, or one line naming the file, the row and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FungilibError(f"toxicity list {path} does not exist (a CSV with the columns name,status)")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["name", "status"]:
        header = ",".join(rows[0]) if rows else ""
        raise FungilibError(f"{path}: row 1 must be the header name,status[,…], got {header!r}")
    found: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip():
            raise FungilibError(f"{path}: row {number} needs a name and a status, got {','.join(row)!r}")
        name, status = row[0].strip(), row[1].strip().lower()
        if status not in STATUSES:
            raise FungilibError(f"{path}: row {number} ({name}): status {row[1].strip()!r} is not one of "
                                f"{', '.join(STATUSES)}")
        if name in found and found[name] != status:
            raise FungilibError(f"{path}: row {number}: {name} is listed twice, as {found[name]} and {status}")
        found[name] = status
    return found


def class_statuses(labels: pd.DataFrame, listed: dict[str, str]) -> list[str]:
    """Each class's status: its species' row, else its genus' row, else unknown."""
    out = []
    for species, genus in zip(labels["species"].fillna("").astype(str), labels["genus"].fillna("").astype(str),
                              strict=True):
        out.append(listed.get(species) or listed.get(genus) or "unknown")
    return out


def poisonous_as_edible(predicted: np.ndarray, labels: np.ndarray, statuses: list[str]) -> float | None:
    """Of the test photos of deadly or toxic classes, the share predicted as an edible class (None: none listed)."""
    status = np.asarray(statuses)
    poisonous = np.isin(status[labels], POISONOUS)
    if not poisonous.any():
        return None
    return float(np.mean(status[predicted[poisonous]] == "edible"))


__all__ = ["POISONOUS", "STATUSES", "class_statuses", "load_toxicity", "poisonous_as_edible"]
