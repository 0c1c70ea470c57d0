"""The download stage's pictures: every photo's outcome by reason (what a reader of the run wants first: how much
came, what failed and why), and throughput over time (from each record's finish time in the log)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fungilib.artifacts.downloads import LOG_FILE, reason_kind
from fungilib.photo_fetch import read_log
from fungilib.plotting import plt, save_figure

REPORT_PLOT = "download_report.png"


def _failed(downloads: pd.DataFrame) -> pd.DataFrame:
    """The failed rows, each with its failure ``kind`` (``http 404``, ``timeout``, ``undecodable``, …)."""
    return downloads[downloads["status"] != "ok"].assign(kind=lambda d: d["reason"].map(reason_kind))


def outcomes(downloads: pd.DataFrame) -> pd.Series:
    """Photos per outcome: ``ok (fetched)``, ``ok (already here)``, then each failure kind (``http 404``,
    ``timeout``, ``undecodable``, …), commonest first."""
    ok = downloads["status"] == "ok"
    counts = {"ok (fetched)": int((ok & ~downloads["cached"]).sum()),
              "ok (already here)": int((ok & downloads["cached"]).sum())}
    failed = _failed(downloads)["kind"].value_counts()
    counts.update({f"failed: {k}": int(v) for k, v in failed.items()})
    return pd.Series({k: v for k, v in counts.items() if v}, name="photos")


def failure_examples(downloads: pd.DataFrame, per_kind: int = 1) -> pd.DataFrame:
    """``per_kind`` failed photos of each failure kind: the URL, the full reason and the attempts it took."""
    return (_failed(downloads).groupby("kind", sort=True).head(per_kind)[["kind", "url", "reason", "attempts"]]
            .sort_values("kind").reset_index(drop=True))


def throughput(out: Path, since: float = 0.0) -> pd.DataFrame:
    """Photos finished over time by the run that began at ``since`` (wall clock): ``seconds`` since its first
    request began, ``done`` (cumulative); empty when nothing was fetched then (or the log is older than finish
    times)."""
    records = [r for r in read_log(Path(out) / LOG_FILE).values() if r.get("finished_at", -1.0) >= since]
    if not records:
        return pd.DataFrame({"seconds": [], "done": []})
    ends = np.sort(np.array([r["finished_at"] for r in records], dtype=np.float64))
    starts = np.array([r["finished_at"] - r.get("seconds", 0.0) for r in records], dtype=np.float64)
    return pd.DataFrame({"seconds": ends - starts.min(), "done": np.arange(1, len(ends) + 1)})


def plot_download_report(out: Path, downloads: pd.DataFrame, since: float = 0.0) -> Path:
    """``download_report.png`` in ``out``: outcomes by reason (log scale: 1,700 ok beside 2 timeouts) and
    photos finished over time by the run that began at ``since``, with the mean rate."""
    counts = outcomes(downloads)
    timeline = throughput(out, since)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.32 * len(counts) + 1.5)))
    colours = ["#2ca02c" if k.startswith("ok") else "#d62728" for k in counts.index]
    left.barh(counts.index[::-1], counts.values[::-1], color=colours[::-1])
    left.set_xscale("log")
    for y, value in enumerate(counts.values[::-1]):
        left.text(value, y, f" {value:,}", va="center", fontsize=8)
    left.set(xlabel="photos (log scale)", title=f"Outcome of {int(counts.sum()):,} photos, by reason")
    if len(timeline):
        span = float(timeline["seconds"].iloc[-1]) or 1e-9
        right.plot(timeline["seconds"], timeline["done"], lw=1.5)
        right.set(xlabel="seconds since the first request", ylabel="photos finished (ok or failed)",
                  title=f"Throughput: {len(timeline) / span:,.{0 if len(timeline) >= 10 * span else 2}f} photos/s "
                        f"over {span:,.1f} s ({len(timeline):,} fetched)")
    else:
        right.text(0.5, 0.5, "nothing fetched in this run\n(every photo was already here or failed for good)",
                   ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    fig.tight_layout()
    path = save_figure(fig, Path(out) / REPORT_PLOT)
    plt.close(fig)
    return path


__all__ = ["REPORT_PLOT", "failure_examples", "outcomes", "plot_download_report", "throughput"]
