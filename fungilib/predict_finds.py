"""One find, several photos: the photos of one find (its cap, gills, stem, base) answered together — their
probabilities combined by the run's own rule (chosen on validation at evaluation), one answer per find, each
photo's own answer kept; a photo that cannot be read is reported and left out of its find."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fungilib.artifacts.trained_run import TrainedRun
from fungilib.errors import FungilibError
from fungilib.find_metrics import combine
from fungilib.predict import Prediction, as_json, expand_inputs, format_one, iter_predictions, load_predictor
from fungilib.rollup import Answer, RankIndex, answer, top_k

SURE = 0.8  # photos that each name a different species at least this surely: the find's answer carries a note


@dataclass
class Find:
    find_id: str
    photos: list[Prediction]
    rule: str
    top: list[dict] = field(default_factory=list)
    answer: Answer | None = None
    disagree: bool = False  # its photos name different species, each surely

    @property
    def readable(self) -> int:
        return sum(p.ok for p in self.photos)


def photos_disagree(probabilities: np.ndarray, sure: float = SURE) -> bool:
    """True when two photos of one find (rows of ``probabilities``) each name a different species at ``sure`` or
    above (the page's FungiRollup.disagree)."""
    best = probabilities.argmax(axis=1)
    return len(set(best[probabilities.max(axis=1) >= sure].tolist())) > 1


def find_groups(inputs: list[Path], group_by: str) -> dict[Path, str]:
    """Each photo's find: ``folder`` (every folder of photos is one find), or a CSV ``path,find_id`` (paths
    relative to the CSV's folder)."""
    if group_by == "folder":
        return {path: str(path.parent) for path in expand_inputs(inputs)}
    table = Path(group_by)
    if not table.is_file():
        raise FungilibError(f"--group-by {group_by}: expected 'folder' or a CSV file of path,find_id")
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "find_id"} <= set(rows[0]):
        raise FungilibError(f"{table}: expected the columns path,find_id")
    return {(table.parent / row["path"]): row["find_id"] for row in rows}


def predict_finds(inputs: list[Path], model: Path, group_by: str, top: int = 5, threshold: float | None = None,
                  no_open_set: bool = False) -> list[Find]:
    """One answer per find, in the order the finds first appear."""
    groups = find_groups(inputs, group_by)
    predictor = load_predictor(model)
    run = TrainedRun(model)
    rule = run.metrics().get("observation_rule", "mean_log") if run.has_model else "mean_log"
    finds: dict[str, Find] = {}
    for prediction in iter_predictions(list(groups), model, top, threshold, no_open_set=no_open_set,
                                       predictor=predictor):
        find_id = groups[Path(prediction.path)]
        finds.setdefault(find_id, Find(find_id, [], rule)).photos.append(prediction)
    cut = predictor.threshold if threshold is None else threshold
    gate = None if no_open_set else predictor.open_set
    ranks = RankIndex(predictor.labels)
    for find in finds.values():
        readable = [p for p in find.photos if p.ok and p.probabilities is not None]
        if not readable:
            continue
        stacked = np.stack([p.probabilities for p in readable])  # type: ignore[misc]
        combined = combine(stacked, np.zeros(len(readable)), rule)[1][0]
        find.top = top_k(combined, predictor.labels, top)
        scores = [p.open_set_score for p in readable if p.open_set_score is not None]  # a model-computed gate's:
        find.answer = answer(combined, ranks, cut, gate, model_score=float(np.mean(scores)) if scores else None)
        find.disagree = photos_disagree(stacked)
    return list(finds.values())


def find_json(find: Find) -> dict:
    return {"find": find.find_id, "photos": len(find.photos), "readable": find.readable, "rule": find.rule,
            "answer": find.answer.__dict__ if find.answer else None, "top": find.top, "disagree": find.disagree,
            "per_photo": [as_json(p) for p in find.photos]}


def format_find(find: Find, top: int) -> str:
    """The find's lines: its combined verdict and top species, a note when its photos disagree, then each photo."""
    summary = Prediction(f"find {find.find_id} ({find.readable} of {len(find.photos)} photos combined, "
                         f"{find.rule})", ok=find.answer is not None, error="no photo of it could be read",
                         top=find.top, answer=find.answer)
    lines = [format_one(summary, top)]
    if find.disagree:
        lines.append("  note: its photos disagree (each names another species surely); check them one by one")
    lines += ["  " + line for p in find.photos for line in format_one(p, 1).splitlines()]
    return "\n".join(lines)


def print_finds(inputs: list[Path], model: Path, group_by: str, top: int, threshold: float | None,
                no_open_set: bool, as_jsonl: bool) -> int:
    """``fungilib predict --group-by``: each find as a table or one JSON line; exit status 1 when a photo failed."""
    finds = predict_finds(inputs, model, group_by, top, threshold, no_open_set)
    if not finds:
        raise FungilibError("no images found in " + ", ".join(map(str, inputs)))
    for find in finds:
        print(json.dumps(find_json(find)) if as_jsonl else format_find(find, top), flush=True)
    failed = sum(not p.ok for find in finds for p in find.photos)
    if failed:
        print(f"fungilib: {failed} photos could not be read (left out of their finds)", file=sys.stderr)
    return 1 if failed else 0

