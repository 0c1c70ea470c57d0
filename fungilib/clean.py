"""Stage 3, clean: downloaded images → a deduplicated, filtered, leak-free manifest and the label table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fungilib.artifacts.dataset import STAGE_PARAMS
from fungilib.artifacts.downloads import load_downloads
from fungilib.artifacts.observations import load_observations
from fungilib.artifacts.stage_folder import prepare_output
from fungilib.dataset_builder import CleanResult, Pruner, SplitParams, finish_dataset
from fungilib.params import write_params

SPECIES_RANKS = {"SPECIES", "SUBSPECIES", "VARIETY", "FORM"}

__all__ = ["CleanParams", "CleanResult", "clean_dataset"]


@dataclass(kw_only=True)
class CleanParams(SplitParams):
    """Which downloaded images make the dataset, and how it is split."""

    observations: Path
    downloads: Path
    out: Path
    keep_genus_rank: bool = False  # keep genus-rank identifications as classes of their own


def _class_keys(frame: pd.DataFrame, keep_genus_rank: bool) -> tuple[pd.Series, pd.Series]:
    """The class of each row (speciesKey, or the species name when an archive has no keys) and a drop reason."""
    rank = frame["taxonRank"].fillna("").str.upper()
    species_key = frame["speciesKey"].fillna("").where(frame["speciesKey"].fillna("") != "",
                                                       frame["species"].fillna(""))
    is_species = (frame["species"].fillna("") != "") & (rank.isin(SPECIES_RANKS) | (rank == ""))
    genus_key = "genus:" + frame["genusKey"].fillna("").where(frame["genusKey"].fillna("") != "",
                                                              frame["genus"].fillna(""))
    is_genus = (rank == "GENUS") & (frame["genus"].fillna("") != "") & keep_genus_rank
    keys = species_key.where(is_species, genus_key.where(is_genus, ""))
    reason = ("identified only to rank " + rank.str.lower()).where(keys == "", "")
    return keys, reason


def clean_dataset(params: CleanParams) -> CleanResult:
    """Build ``manifest.h5`` (keys ``manifest``, ``labels``, ``dropped``) plus labels.csv/json and a report.

    Every image left out is listed in ``dropped`` with its reason: failed download, undecodable, too small,
    rank above species, duplicate (same bytes), conflicting labels for one image, class under
    ``min_per_class``, class over ``max_per_class``.
    """
    out = prepare_output(Path(params.out), "clean")
    obs = load_observations(params.observations)
    downloads_path = Path(params.downloads).resolve()
    download_dir = downloads_path if downloads_path.is_dir() else downloads_path.parent
    dl = load_downloads(params.downloads)
    frame = obs.merge(dl[["media_id", "status", "reason", "path"]], on="media_id", how="left")
    frame["status"] = frame["status"].fillna("failed")
    frame["reason"] = frame["reason"].fillna("not in the downloads table")
    pruner = Pruner(frame)
    pruner.drop(frame["status"] != "ok", "download failed: " + frame["reason"].astype(str))
    class_keys, rank_reason = _class_keys(pruner.frame, params.keep_genus_rank)
    pruner.frame["class_key"] = class_keys
    pruner.drop(class_keys == "", rank_reason)
    frame = pruner.frame
    frame["abs_path"] = [str(download_dir / p) for p in frame["path"]]
    pruner.frame = frame
    result = finish_dataset(pruner, params, out, base=download_dir)
    write_params(out / STAGE_PARAMS, params)
    return result
