"""The shared end of every dataset source (GBIF downloads, image folders): decode check, dedupe, min/cap per class,
the split by observation, and the dataset's files (fungilib.artifacts.dataset)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from fungilib.artifacts.dataset import CLEAN_REPORT, MANIFEST_FILE, write_label_table
from fungilib.artifacts.downloads import reason_kind
from fungilib.errors import FungilibError
from fungilib.fsutil import write_hdf, write_json
from fungilib.place_prior import PLACE_AND_TIME
from fungilib.split import (
    SPLITS,
    UNKNOWN_SPLITS,
    connected_groups,
    held_out_classes,
    stratified_group_split,
    unknown_split,
)


@dataclass(kw_only=True)
class SplitParams:
    """What every source's dataset keeps and how it is split (GBIF downloads and image folders alike)."""

    min_per_class: int = 10  # classes with fewer images are dropped
    max_per_class: int = 0  # larger classes are sampled down to this, seeded (0 keeps every image)
    min_side: int = 32  # images with a shorter side are dropped
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # species kept out of training entirely, as "unknown": their photos fit and test the open-set threshold
    holdout_classes: int = 0  # this many classes drawn (seeded)
    holdout_species: list[str] = field(default_factory=list)  # and these, by species name or class key

    def __post_init__(self) -> None:
        if self.holdout_classes < 0:
            raise FungilibError(f"holdout_classes must be >= 0, got {self.holdout_classes}")
        if self.min_per_class < 1 or self.max_per_class < 0 or self.min_side < 1:
            raise FungilibError("min_per_class and min_side must be >= 1, max_per_class >= 0")
        if self.max_per_class and self.max_per_class < self.min_per_class:
            raise FungilibError(f"max_per_class ({self.max_per_class}) is below min_per_class ({self.min_per_class})")
        fractions = (self.val_fraction, self.test_fraction)
        if not (all(0 <= f < 1 for f in fractions) and sum(fractions) < 1):
            raise FungilibError("val_fraction and test_fraction must be in [0, 1) and leave some images for training")
        if self.seed < 0:
            raise FungilibError(f"seed must be >= 0, got {self.seed}")


@dataclass
class CleanResult:
    manifest: Path
    images: int
    classes: int
    dropped: dict[str, int]
    splits: dict[str, int]
    held_out: list[str] = field(default_factory=list)  # species kept out of training (the "unknown" photos)


def _check_image(path: str) -> tuple[str, int, int, str]:
    """(sha256, width, height, error) of a saved image; the image is fully decoded, not only verified."""
    try:
        data = Path(path).read_bytes()
        with Image.open(path) as img:
            img.load()
            width, height = img.size
        return hashlib.sha256(data).hexdigest(), width, height, ""
    except Exception as exc:  # any decode failure is recorded per image
        return "", 0, 0, f"undecodable ({type(exc).__name__})"


def finish_dataset(pruner: Pruner, params: SplitParams, out: Path, base: Path | None = None) -> CleanResult:
    """The shared end of every source (GBIF downloads, image folders): decode check, size, dedupe, min/cap per
    class, the seeded stratified group split, and ``manifest.h5`` + labels + ``clean_report.json`` in ``out``.

    ``pruner.frame`` needs media_id, gbifID (the split group), species, speciesKey, genus, family, taxonRank,
    license, rightsHolder, class_key, path (as reported when dropped) and abs_path (the file training reads);
    ``params`` gives min_per_class, max_per_class, min_side, val_fraction, test_fraction and seed.
    """
    frame = pruner.frame
    unique_paths = frame["abs_path"].drop_duplicates().tolist()
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        checks = list(tqdm(pool.map(_check_image, unique_paths, chunksize=32), total=len(unique_paths),
                           desc="checking images", unit="img"))
    check = pd.DataFrame(checks, columns=["sha256", "width", "height", "error"], index=unique_paths)
    pruner.frame = frame.join(check, on="abs_path")
    pruner.drop(pruner.frame["error"] != "", pruner.frame["error"])
    pruner.drop(pruner.frame[["width", "height"]].min(axis=1) < params.min_side, f"too small (< {params.min_side} px)")
    _dedupe(pruner)
    sizes = pruner.frame["class_key"].map(pruner.frame["class_key"].value_counts())
    pruner.drop(sizes < params.min_per_class, "class under min_per_class (" + sizes.astype(str) + " images)")
    if params.max_per_class:
        keep = pruner.frame.groupby("class_key", group_keys=False).apply(
            lambda g: g.sample(n=min(len(g), params.max_per_class), random_state=params.seed), include_groups=False
        ).index
        pruner.drop(~pruner.frame.index.isin(keep), f"class over max_per_class ({params.max_per_class})")
    frame, dropped = pruner.frame, pruner.dropped
    if frame.empty:
        raise FungilibError(f"no images left after cleaning (min_per_class={params.min_per_class}); "
                            "see dropped reasons")
    fractions = {"train": 1 - params.val_fraction - params.test_fraction, "val": params.val_fraction,
                 "test": params.test_fraction}
    names = frame.groupby("class_key")["species"].first()
    held = held_out_classes(names, params.holdout_classes, params.holdout_species, params.seed)
    unknown = frame["class_key"].isin(held)
    frame["split"] = pd.Series(pd.NA, index=frame.index, dtype=object)
    if unknown.any():
        frame.loc[unknown, "split"] = unknown_split(frame[unknown], "class_key", "group", params.seed)
    frame.loc[~unknown, "split"] = stratified_group_split(frame[~unknown], "class_key", "group", fractions, params.seed)
    labels = _label_table(frame[~unknown])
    frame["label"] = frame["class_key"].map(dict(zip(labels["class_key"], labels["label"], strict=True)))
    frame["label"] = frame["label"].fillna(-1)  # held-out species: no class of the model
    manifest = _manifest(frame, out)
    dropped_table = (pd.concat(dropped, ignore_index=True) if dropped
                     else pd.DataFrame(columns=["media_id", "gbifID", "species", "path", "reason"]))
    dropped_table["path"] = [str(base / p) if p and base is not None else p for p in dropped_table["path"].fillna("")]
    write_hdf(out / MANIFEST_FILE, {"manifest": manifest, "labels": labels, "dropped": dropped_table})
    write_label_table(out, labels)
    reasons = dropped_table["reason"].map(reason_kind).value_counts()
    result = CleanResult(
        manifest=out / MANIFEST_FILE, images=len(manifest), classes=len(labels),
        dropped={str(k): int(v) for k, v in reasons.items()},
        splits={s: int((manifest["split"] == s).sum()) for s in SPLITS + (UNKNOWN_SPLITS if unknown.any() else ())},
        held_out=sorted(names.loc[list(held)].astype(str).tolist()),
    )
    write_json(out / CLEAN_REPORT, {**result.__dict__, "manifest": str(result.manifest), "seed": params.seed,
                                            "fractions": fractions})
    return result


class Pruner:
    """The rows still in, and every row taken out with its reason."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.dropped: list[pd.DataFrame] = []

    def drop(self, mask: pd.Series, reason: pd.Series | str) -> None:
        if mask.any():
            gone = self.frame.loc[mask, ["media_id", "gbifID", "species", "path"]].copy()
            gone["reason"] = reason[mask] if isinstance(reason, pd.Series) else reason
            self.dropped.append(gone)
            self.frame = self.frame.loc[~mask].copy()


def _dedupe(pruner: Pruner) -> None:
    """Identical bytes are one image: keep one copy, and tie the observations sharing it into one group."""
    frame = pruner.frame
    pairs = frame[["sha256", "gbifID"]].drop_duplicates()
    groups = connected_groups("obs:" + pairs["gbifID"].astype(str), "img:" + pairs["sha256"])
    component = ("obs:" + frame["gbifID"].astype(str)).map(groups)
    frame["group"] = frame["gbifID"].astype(str).groupby(component).transform("min")  # named by an observation
    labels_per_hash = frame.groupby("sha256")["class_key"].nunique()
    pruner.drop(frame["sha256"].map(labels_per_hash) > 1, "same image filed under different species")
    frame = pruner.frame.sort_values(["sha256", "gbifID", "media_id"])
    first = frame.groupby("sha256")["media_id"].transform("first")
    pruner.frame = frame
    pruner.drop(frame["media_id"] != first, "duplicate (same bytes as " + first + ")")


def _label_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Classes in a stable order (by name): the index → class table the model is trained and exported with."""
    first = frame.sort_values("media_id").groupby("class_key").first()
    is_genus = first.index.str.startswith("genus:")
    labels = pd.DataFrame({
        "class_key": first.index.to_numpy(),
        "speciesKey": np.where(is_genus, "", first["speciesKey"].fillna("")),
        "species": np.where(is_genus, first["genus"] + " sp.", first["species"]),
        "genus": first["genus"].fillna(""),
        "family": first["family"].fillna(""),
        "taxonRank": np.where(is_genus, "GENUS", "SPECIES"),
    }).reset_index(drop=True).sort_values(["species", "class_key"], ignore_index=True)
    labels.insert(0, "label", np.arange(len(labels)))
    counts = frame.groupby(["class_key", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS),
                                                                                        fill_value=0)
    for split in SPLITS:
        labels[f"{split}_images"] = labels["class_key"].map(counts[split]).fillna(0).astype(int)
    return labels


def _manifest(frame: pd.DataFrame, out: Path) -> pd.DataFrame:
    rel = [os.path.relpath(p, out) for p in frame["abs_path"]]
    manifest = pd.DataFrame({
        "path": rel, "label": frame["label"].astype("int32"), "split": frame["split"],
        "class_key": frame["class_key"], "species": frame["species"], "genus": frame["genus"],
        "family": frame["family"], "gbifID": frame["gbifID"], "media_id": frame["media_id"], "group": frame["group"],
        "sha256": frame["sha256"], "width": frame["width"].astype("int32"), "height": frame["height"].astype("int32"),
        "license": frame["license"], "rightsHolder": frame["rightsHolder"],
    })
    for name in PLACE_AND_TIME:  # where and when (GBIF sources): the place-and-season prior counts them
        if name in frame:
            manifest[name] = frame[name].to_numpy()
    return manifest.sort_values(["split", "label", "media_id"], ignore_index=True)


def plot_splits(labels: pd.DataFrame, out: Path) -> Path:
    """Stacked bars of images per class and split, saved as ``splits.png`` beside the manifest."""
    from fungilib.plotting import plt, save_figure

    table = labels.set_index("species")[[f"{s}_images" for s in SPLITS]].iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * min(len(table), 60))))
    table.tail(60).plot.barh(stacked=True, ax=ax, color=["tab:green", "tab:orange", "tab:red"])
    ax.set(xlabel="images", ylabel="", title="Images per class and split (split by observation)")
    ax.legend([s for s in SPLITS])
    path = save_figure(fig, Path(out) / "splits.png")
    plt.close(fig)
    return path
