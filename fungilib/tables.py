"""Results as small tables for notebooks: a stage's result object read as what / value rows instead of a repr."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd


def _rows(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += _rows(item, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        return rows
    if isinstance(value, pd.DataFrame | pd.Series):
        return [(prefix, f"table of {len(value)} rows")]
    if isinstance(value, Path):
        return [(prefix, str(value))]
    if isinstance(value, list | tuple):
        return [(prefix, ", ".join(map(str, value)))]
    if isinstance(value, float):
        return [(prefix, round(value, 4))]
    return [(prefix, value)]


def result_table(result: Any) -> pd.DataFrame:
    """One row per scalar field of ``result`` (nested results and dicts flattened with dotted names)."""
    return pd.DataFrame(_rows(result, ""), columns=["what", "value"]).set_index("what")
