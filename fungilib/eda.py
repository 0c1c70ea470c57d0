"""EDA of observations.h5: class distribution (Pareto), photos per observation, licences, map, and the cut table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fungilib.artifacts.observations import (
    CLASS_COUNTS,
    CUT_TABLE,
    EDA_PARAMS,
    EDA_SUMMARY,
    load_observations,
)
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.errors import FungilibError
from fungilib.fsutil import write_json
from fungilib.params import write_params
from fungilib.plotting import plt, save_figure


@dataclass
class EdaParams:
    """Which observations to describe, where the plots go, and the thresholds of the cut table."""

    observations: Path
    out: Path
    min_images: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 350, 500,
                                                           1000])
    species_only: bool = True
    max_side: int = 512  # the download's resize-on-save: the cut table's disk estimate is at this size

    def __post_init__(self) -> None:
        if not self.min_images or any(m < 1 for m in self.min_images):
            raise FungilibError("min_images must list thresholds of at least 1")
        if self.max_side < 1:
            raise FungilibError(f"max_side must be at least 1, got {self.max_side}")


@dataclass(kw_only=True)
class IngestEdaParams:
    """Notebook 01: ingest the archive into ``out`` and describe it there."""

    archive: Path
    out: Path
    min_images: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 350, 500,
                                                           1000])
    species_only: bool = True
    max_side: int = 512

    def __post_init__(self) -> None:
        EdaParams(observations=self.out, out=self.out, min_images=self.min_images, species_only=self.species_only,
                  max_side=self.max_side)


@dataclass
class EdaResult:
    printed_tables: ClassVar[tuple[str, ...]] = ("cut_table",)
    class_counts: pd.DataFrame
    cut_table: pd.DataFrame
    pareto: pd.DataFrame
    photos_per_observation: pd.Series
    licenses: pd.Series
    plots: dict[str, Path]
    summary: dict


def class_counts(obs: pd.DataFrame, species_only: bool = True) -> pd.DataFrame:
    """Images and observations per class (species; with ``species_only=False`` any rank), largest first."""
    frame = obs[obs["species"].fillna("") != ""] if species_only else obs
    name = frame["species"].where(frame["species"].fillna("") != "", frame["scientificName"])
    counts = frame.assign(name=name).groupby("name").agg(
        images=("media_id", "size"), observations=("gbifID", "nunique"), rank=("taxonRank", "first"),
        genus=("genus", "first"), family=("family", "first"))
    return counts.sort_values(["images", "observations"], ascending=False).reset_index()


def pareto_curve(counts: pd.DataFrame) -> pd.DataFrame:
    """Share of all images held by the top share of classes (classes ordered largest first)."""
    images = counts["images"].to_numpy()
    return pd.DataFrame({
        "classes": np.arange(1, len(images) + 1),
        "class_share": np.arange(1, len(images) + 1) / max(len(images), 1),
        "image_share": np.cumsum(images) / max(images.sum(), 1),
    })


# Typical size of a natural photo saved as JPEG at quality 90: about 0.3 bytes per pixel (2.4 bits), for a 4:3 frame.
JPEG_BYTES_PER_PIXEL = 0.3
ASPECT = 0.75


def photo_bytes(max_side: int) -> float:
    """Estimated bytes of one photo saved by the download stage at ``max_side`` (longest side)."""
    return max_side * max_side * ASPECT * JPEG_BYTES_PER_PIXEL


def cut_table(counts: pd.DataFrame, thresholds: list[int], max_side: int = 512) -> pd.DataFrame:
    """For each 'min images per class': how many classes and images remain, the share of images kept, and the
    disk those images take at ``max_side`` (the original project chose 350 photos a class for its disk)."""
    total = max(int(counts["images"].sum()), 1)
    rows = []
    for t in sorted(thresholds):
        kept = counts[counts["images"] >= t]
        rows.append({"min_images": t, "classes": len(kept), "images": int(kept["images"].sum()),
                     "image_share": round(kept["images"].sum() / total, 4),
                     "smallest_class": int(kept["images"].min()) if len(kept) else 0,
                     f"disk_gb_at_{max_side}px": round(kept["images"].sum() * photo_bytes(max_side) / 1e9, 3)})
    return pd.DataFrame(rows)


def photos_per_observation(obs: pd.DataFrame) -> pd.Series:
    return obs.groupby("gbifID").size().value_counts().sort_index().rename("observations")


def license_counts(obs: pd.DataFrame) -> pd.Series:
    short = obs["license"].fillna("").str.extract(r"licenses/([a-z-]+)/|publicdomain/(zero)", expand=True)
    name = ("CC-" + short[0].str.upper()).fillna(short[1].map({"zero": "CC0"}))
    name = name.fillna(obs["license"].replace("", "unknown"))
    return name.value_counts().rename("images")


def _plots(obs: pd.DataFrame, counts: pd.DataFrame, pareto: pd.DataFrame, cuts: pd.DataFrame,
           per_obs: pd.Series, licenses: pd.Series, out: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.r_[0, pareto["class_share"]] * 100, np.r_[0, pareto["image_share"]] * 100,
            marker="." if len(pareto) < 60 else None)
    ax.plot([0, 100], [0, 100], ls="--", c="grey", lw=0.8)
    for share in (0.2, 0.5):
        idx = int(np.ceil(share * len(pareto))) - 1
        if idx >= 0:
            ax.annotate(f"top {share:.0%} of classes: {pareto['image_share'].iloc[idx]:.0%} of images",
                        (share * 100, pareto["image_share"].iloc[idx] * 100), textcoords="offset points",
                        xytext=(8, -14), fontsize=8)
    ax.set(xlabel="% of classes (largest first)", ylabel="% of images", title="Pareto curve of the class distribution")
    plots["pareto"] = save_figure(fig, out / "pareto.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.logspace(0, np.log10(max(counts["images"].max(), 2)), 30)
    ax.hist(counts["images"], bins=bins, color="tab:green")
    ax.set(xscale="log", xlabel="images per class (log)", ylabel="classes", title="Images per class")
    plots["class_histogram"] = save_figure(fig, out / "class_histogram.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, max(3, 0.25 * min(len(counts), 40))))
    top = counts.head(40).iloc[::-1]
    ax.barh(top["name"], top["images"], color="tab:brown")
    ax.set(xlabel="images", title=f"Largest {len(top)} of {len(counts)} classes")
    plots["class_counts"] = save_figure(fig, out / "class_counts.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(per_obs.index.astype(str), per_obs.to_numpy(), color="tab:blue")
    axes[0].set(xlabel="photos per observation", ylabel="observations", title="Photos per observation")
    axes[1].barh(licenses.index[::-1], licenses.to_numpy()[::-1], color="tab:purple")
    axes[1].set(xlabel="images", title="Licences")
    plots["photos_and_licenses"] = save_figure(fig, out / "photos_and_licenses.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    located = obs.dropna(subset=["decimalLatitude", "decimalLongitude"]).drop_duplicates("gbifID")
    if len(located) > 50_000:
        located = located.sample(50_000, random_state=0)
    ax.scatter(located["decimalLongitude"], located["decimalLatitude"], s=3, alpha=0.4, c="tab:red")
    ax.set(xlabel="longitude", ylabel="latitude", title=f"Where ({len(located)} observations shown)")
    plots["map"] = save_figure(fig, out / "map.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cuts["min_images"], cuts["classes"], marker="o", label="classes kept")
    ax2 = ax.twinx()
    ax2.plot(cuts["min_images"], cuts["image_share"] * 100, marker="s", c="tab:orange", label="% images kept")
    ax.set(xscale="log", xlabel="min images per class", ylabel="classes", title="What a minimum per class keeps")
    ax2.set_ylabel("% of images", color="tab:orange")
    ax2.grid(False)
    plots["cut_table"] = save_figure(fig, out / "cut_table.png")
    plt.close(fig)
    return plots


def run_eda(params: EdaParams) -> EdaResult:
    """Compute the tables, write them as CSV and the plots as PNG under ``params.out``, and return them."""
    out = prepare_output(Path(params.out), "eda")
    obs = load_observations(params.observations)
    counts = class_counts(obs, params.species_only)
    if counts.empty:
        raise FungilibError(f"{params.observations}: no species-rank images to describe")
    pareto = pareto_curve(counts)
    cuts = cut_table(counts, params.min_images, params.max_side)
    per_obs = photos_per_observation(obs)
    licenses = license_counts(obs)
    plots = _plots(obs, counts, pareto, cuts, per_obs, licenses, out)
    counts.to_csv(out / CLASS_COUNTS, index=False)
    cuts.to_csv(out / CUT_TABLE, index=False)
    top20 = pareto["image_share"].iloc[max(int(np.ceil(0.2 * len(pareto))) - 1, 0)]
    summary = {
        "images": len(obs), "observations": int(obs["gbifID"].nunique()), "classes": len(counts),
        "ranks": obs["taxonRank"].value_counts().to_dict(), "top_20pct_classes_image_share": round(float(top20), 4),
        "largest_class": counts.iloc[0]["name"], "largest_class_images": int(counts.iloc[0]["images"]),
        "smallest_class_images": int(counts["images"].min()),
    }
    write_json(out / EDA_SUMMARY, summary)
    write_params(out / EDA_PARAMS, params)
    return EdaResult(counts, cuts, pareto, per_obs, licenses, plots, summary)
