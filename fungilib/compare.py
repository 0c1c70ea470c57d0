"""Comparing the runs of a sweep: metric against each swept parameter, learning curves, the best run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fungilib.artifacts.run_record import OUTPUT_DIR
from fungilib.artifacts.trained_run import HISTORY
from fungilib.plotting import plt, save_figure


def swept_columns(table: pd.DataFrame) -> list[str]:
    """The parameter columns whose values differ between runs."""
    return [c for c in table.columns if c.startswith("param.") and table[c].astype(str).nunique() > 1]


def plot_metric_vs_params(table: pd.DataFrame, metric: str, out: Path) -> Path:
    """One panel per swept parameter: the metric of every run against that parameter's value."""
    swept = swept_columns(table) or ["run_id"]
    fig, axes = plt.subplots(1, len(swept), figsize=(4 * len(swept), 3.5), squeeze=False)
    for ax, column in zip(axes[0], swept, strict=True):
        values = table[column]
        numeric = pd.to_numeric(values, errors="coerce")
        x = numeric if numeric.notna().all() else values.astype(str)
        ax.scatter(x, table[metric], s=40)
        if numeric.notna().all() and numeric.min() > 0 and numeric.max() / numeric.min() > 20:
            ax.set_xscale("log")
        ax.set(xlabel=column.removeprefix("param."), ylabel=metric)
    fig.suptitle(f"{metric} against each swept parameter")
    path = save_figure(fig, Path(out) / f"{metric}_vs_params.png")
    plt.close(fig)
    return path


def learning_curves(runs_root: Path, sweep: str) -> pd.DataFrame:
    """Every run's history.csv stacked, with its run_id."""
    frames = []
    for history in sorted(Path(runs_root).glob(f"{sweep}/*/{OUTPUT_DIR}/{HISTORY}")):
        frame = pd.read_csv(history)
        frames.append(frame.assign(run_id=history.parent.parent.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_learning_curves(curves: pd.DataFrame, out: Path, column: str = "val_accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for run_id, frame in curves.groupby("run_id"):
        if column in frame:
            ax.plot(frame["epoch"] + 1, frame[column], marker=".", label=run_id)
    ax.set(xlabel="epoch", ylabel=column, title=f"{column} per epoch")
    ax.legend(fontsize=7)
    path = save_figure(fig, Path(out) / f"learning_curves_{column}.png")
    plt.close(fig)
    return path
