"""A sweep's or pipeline's run folder: status.json (a state from RunState), params.yaml, the executed notebook and
output/; the runs index beside the runs."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from fungilib.fsutil import write_json

STATUS_FILE = "status.json"
PARAMS_FILE = "params.yaml"
OUTPUT_DIR = "output"
STAGES_DIR = "stages"  # a sweep's shared data stages
INDEX_H5 = "index.h5"
INDEX_CSV = "index.csv"


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    PRUNED = "pruned"
    CLAIMED = "claimed"  # being executed by another process
    UNREADABLE = "unreadable"  # status.json missing its state or not JSON


FINISHED = frozenset({RunState.DONE, RunState.PRUNED})
ACTIVE = frozenset({RunState.RUNNING, RunState.CLAIMED})


def read_status(folder: Path) -> dict[str, Any]:
    """status.json of a run folder, {} when absent or torn."""
    path = Path(folder) / STATUS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def write_status(folder: Path, status: dict[str, Any]) -> None:
    write_json(Path(folder) / STATUS_FILE, status)
