"""A training run's learning curves from its history.csv: loss and accuracy per epoch, training against
validation, and the learning rate — the plot a run's report opens with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.plotting import plt, save_figure


def read_history(run_dir: Path) -> pd.DataFrame:
    """history.csv with a 1-based ``epoch`` column (one row per finished epoch, resumed runs included)."""
    run = TrainedRun(run_dir)
    if not run.history_file.exists():
        raise FungilibError(f"{run_dir}: no {run.history_file.name} (the run has not finished an epoch)")
    frame = pd.read_csv(run.history_file)
    return frame.assign(epoch=range(1, len(frame) + 1))


def plot_history(run_dir: Path) -> Path:
    """``learning_curves.png`` beside the run: loss, accuracy (train vs validation) and learning rate."""
    history = read_history(run_dir)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    has_lr = "learning_rate" in history
    fig, axes = plt.subplots(1, len(panels) + has_lr, figsize=(4.2 * (len(panels) + has_lr), 3.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels, strict=False):
        for name, style in ((column, "-"), (f"val_{column}", "--")):
            if name in history:
                ax.plot(history["epoch"], history[name], style, marker=".",
                        label="validation" if name.startswith("val_") else "training")
        ax.set(xlabel="epoch", ylabel=label, title=label.capitalize())
        ax.legend(fontsize=8)
    if has_lr:
        ax = axes[0][-1]
        ax.plot(history["epoch"], history["learning_rate"], marker=".")
        ax.set(xlabel="epoch", ylabel="learning rate", title="Learning rate (end of epoch)", yscale="log")
    fig.suptitle(f"Learning curves of {Path(run_dir).resolve().name}")
    path = save_figure(fig, Path(run_dir) / "learning_curves.png")
    plt.close(fig)
    return path
