"""The ingest stage's output: observations.h5 (one row per photo of an occurrence) and its reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fungilib.fsutil import read_stage_table

OBSERVATIONS_FILE = "observations.h5"
INGEST_REPORT = "ingest_report.json"
EDA_SUMMARY = "eda_summary.json"
STAGE_PARAMS = "params.yaml"  # every data stage's resolved parameters beside its output
EDA_PARAMS = "eda_params.yaml"
CLASS_COUNTS = "class_counts.csv"
CUT_TABLE = "cut_table.csv"


def load_observations(path: Path) -> Any:
    """Read observations.h5 (or the folder holding it) as a pandas table."""
    return read_stage_table(path, OBSERVATIONS_FILE, "observations", "ingest")
