"""Leak-free splits: images grouped by observation (and by shared photos), groups stratified by class."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fungilib.errors import FungilibError

SPLITS = ("train", "val", "test")


def connected_groups(keys_a: pd.Series, keys_b: pd.Series) -> dict[str, str]:
    """Union-find over pairs (a, b): every key maps to the smallest key of its connected component."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(keys_a, keys_b, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {k: find(k) for k in parent}


def stratified_group_split(frame: pd.DataFrame, label: str, group: str, fractions: dict[str, float],
                           seed: int) -> pd.Series:
    """Assign each row a split so that no group spans two splits and each class follows ``fractions``.

    Within a class, groups are shuffled (seeded) and each goes to the split furthest below its target share of
    the class's images. With three or more groups, val and test each get one group first, so every class is
    evaluated.
    """
    rng = np.random.default_rng(seed)
    assignment: dict[object, str] = {}
    sizes = frame.groupby([label, group], sort=True).size()
    for _, class_groups in sizes.groupby(level=0, sort=True):
        groups = class_groups.droplevel(0)
        order = rng.permutation(len(groups))
        total = float(groups.sum())
        assigned = dict.fromkeys(SPLITS, 0.0)
        seeded = [s for s in ("test", "val") if fractions[s] > 0] if len(groups) >= 3 else []
        for rank, ix in enumerate(order):
            key, count = groups.index[ix], float(groups.iloc[ix])
            if rank < len(seeded):
                split = seeded[rank]
            else:
                split = max(SPLITS, key=lambda s: fractions[s] * total - assigned[s])
            assigned[split] += count
            assignment[key] = split
    return frame[group].map(assignment)


UNKNOWN_SPLITS = ("val_unknown", "test_unknown")  # photos of species held out of training: the open-set check


def held_out_classes(classes: pd.Series, count: int, names: list[str], seed: int) -> set[str]:
    """The class keys kept out of training as "unknown": the ``names`` (species names or class keys) given, plus
    ``count`` more drawn (seeded) from the other classes. Fewer than two known classes left is an error."""

    by_name = dict(zip(classes.index.astype(str), classes.index, strict=True)) | {
        str(name): key for key, name in classes.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise FungilibError(f"holdout_species: {', '.join(map(repr, missing))} is not a class of this dataset "
                            f"(after cleaning; classes are e.g. {', '.join(map(repr, classes.head(3).tolist()))})")
    chosen = {by_name[n] for n in names}
    rest = sorted(set(classes.index) - chosen)
    if len(classes) < 2:
        raise FungilibError(f"only {len(classes)} class left after cleaning: training needs at least two")
    if len(chosen) + count > len(classes) - 2:
        raise FungilibError(f"holdout_classes/holdout_species: holding out {len(chosen) + count} of "
                            f"{len(classes)} classes leaves fewer than two to train on")
    rng = np.random.default_rng(seed + 7919)  # not the split's own stream: the split does not move
    chosen |= {rest[i] for i in rng.choice(len(rest), size=count, replace=False)} if count else set()
    return chosen


def unknown_split(frame: pd.DataFrame, label: str, group: str, seed: int) -> pd.Series:
    """Held-out classes' photos, by observation group, half to ``val_unknown`` (fitting the open-set threshold)
    and half to ``test_unknown`` (reporting it)."""
    halves = stratified_group_split(frame, label, group, {"train": 0.0, "val": 0.5, "test": 0.5}, seed)
    return halves.map({"val": "val_unknown", "test": "test_unknown", "train": "test_unknown"})
