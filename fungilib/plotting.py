"""Shared figure helpers: a headless backend, one house look, atomic PNG saves beside the run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline"} else None
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from fungilib.fsutil import atomic_path  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and return the path (the figure stays open for notebooks)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path
