"""Where and when: a place-and-season prior over the species, counted from the training split's own observations.

P(species | place, month) ∝ P(species | place) × P(month | species), a naive-Bayes pair of counts:

- place: counts per species in a fine grid cell (``cell_deg``), backed off to a coarse region (``region_deg``) and
  then to the overall class frequency, each level smoothed towards the next (``smoothing`` pseudo-observations);
- season: counts per species and month, smoothed towards a flat year.

Combined with the image model as p ∝ p_image × prior^w, with w fitted on the validation split (never on test).
Observations without coordinates or a date, and impossible coordinates (|lat| > 90, |lon| > 180, 0/0 "null
island"), carry no prior for that part and are counted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fungilib.errors import FungilibError

WEIGHTS = np.round(np.arange(0.0, 2.01, 0.1), 2)  # the prior weights tried on validation


@dataclass
class PlaceSeason:
    """Each photo's latitude, longitude and month (NaN / 0 where unknown), and what was unusable."""

    lat: np.ndarray
    lon: np.ndarray
    month: np.ndarray  # 1..12, 0 unknown
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def has_place(self) -> np.ndarray:
        return ~np.isnan(self.lat)


PLACE_AND_TIME = ("decimalLatitude", "decimalLongitude", "eventDate")  # the manifest columns the prior reads


def knows_place(frame: pd.DataFrame) -> bool:
    """Whether these rows carry where or when at all (GBIF sources do; a folder import does not)."""
    return bool(set(PLACE_AND_TIME) & set(frame.columns))


def place_and_season(frame: pd.DataFrame) -> PlaceSeason:
    """From manifest rows (``decimalLatitude``, ``decimalLongitude``, ``eventDate``)."""
    n = len(frame)
    lat = pd.to_numeric(frame.get("decimalLatitude", pd.Series([np.nan] * n)), errors="coerce").to_numpy(float)
    lon = pd.to_numeric(frame.get("decimalLongitude", pd.Series([np.nan] * n)), errors="coerce").to_numpy(float)
    missing = np.isnan(lat) | np.isnan(lon)
    impossible = ~missing & ((np.abs(lat) > 90) | (np.abs(lon) > 180))
    null_island = ~missing & (lat == 0) & (lon == 0)
    bad = missing | impossible | null_island
    lat, lon = np.where(bad, np.nan, lat), np.where(bad, np.nan, lon)
    dates = pd.to_datetime(frame.get("eventDate", pd.Series([""] * n)).astype(str).str.slice(0, 10),
                           errors="coerce", format="%Y-%m-%d")
    month = dates.dt.month.fillna(0).astype(int).to_numpy()
    return PlaceSeason(lat, lon, month, {"no coordinates": int(missing.sum()), "impossible coordinates":
                                         int(impossible.sum()), "null island (0, 0)": int(null_island.sum()),
                                         "no date": int((month == 0).sum())})


def _cells(lat: np.ndarray, lon: np.ndarray, degrees: float) -> np.ndarray:
    rows = np.floor((np.nan_to_num(lat) + 90) / degrees).astype(np.int64)
    cols = np.floor((np.nan_to_num(lon) + 180) / degrees).astype(np.int64)
    return rows * int(np.ceil(360 / degrees)) + cols


@dataclass
class PlacePrior:
    """Counts, stored sparse: (cell, class, count) triples for the fine and the coarse grid, months dense."""

    classes: int
    cell_deg: float
    region_deg: float
    smoothing: float
    fine: np.ndarray  # int64 [k, 3]: cell, class, count
    region: np.ndarray
    months: np.ndarray  # int32 [classes, 12]
    totals: np.ndarray  # int32 [classes]: training photos with a usable place
    weight: float = 1.0
    dropped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, train: pd.DataFrame, classes: int, cell_deg: float = 1.0, region_deg: float = 10.0,
              smoothing: float = 2.0) -> PlacePrior:
        """From the training split's rows only (``label`` and the place/date columns)."""
        if cell_deg <= 0 or region_deg < cell_deg:
            raise FungilibError(f"prior cell_deg ({cell_deg}) must be > 0 and region_deg ({region_deg}) >= it")
        where = place_and_season(train)
        labels = train["label"].to_numpy(int)
        placed = where.has_place

        def triples(degrees: float) -> np.ndarray:
            keys = pd.DataFrame({"cell": _cells(where.lat[placed], where.lon[placed], degrees),
                                 "label": labels[placed]})
            counted = keys.value_counts().reset_index()
            return counted[["cell", "label", "count"]].to_numpy(np.int64)

        months = np.zeros((classes, 12), np.int32)
        dated = where.month > 0
        np.add.at(months, (labels[dated], where.month[dated] - 1), 1)
        totals = np.bincount(labels[placed], minlength=classes).astype(np.int32)
        return cls(classes, cell_deg, region_deg, smoothing, triples(cell_deg), triples(region_deg), months, totals,
                   dropped=where.dropped)

    def _place(self, lat: float, lon: float) -> np.ndarray:
        k = self.smoothing
        overall = (self.totals + 1.0) / (self.totals.sum() + self.classes)
        probs = overall
        for table, degrees in ((self.region, self.region_deg), (self.fine, self.cell_deg)):
            cell = _cells(np.array([lat]), np.array([lon]), degrees)[0]
            rows = table[table[:, 0] == cell]
            counts = np.zeros(self.classes)
            counts[rows[:, 1]] = rows[:, 2]
            probs = (counts + k * probs) / (counts.sum() + k)  # few records here: mostly the wider level
        return probs

    def _season(self, month: int) -> np.ndarray:
        if month < 1:
            return np.ones(self.classes)
        per_class = self.months.sum(axis=1)
        return (self.months[:, month - 1] + self.smoothing / 12) / (per_class + self.smoothing)

    def log_prior(self, where: PlaceSeason) -> np.ndarray:
        """[photos, classes] log prior; rows with neither place nor month are 0 (no prior)."""
        out = np.zeros((len(where.lat), self.classes))
        cache: dict[tuple, np.ndarray] = {}
        for i, (lat, lon, month) in enumerate(zip(where.lat, where.lon, where.month, strict=True)):
            key = (None if np.isnan(lat) else (_cells(np.array([lat]), np.array([lon]), self.cell_deg)[0]),
                   int(month))
            if key not in cache:
                prior = (self._place(lat, lon) if key[0] is not None else np.ones(self.classes)) * self._season(month)
                cache[key] = np.log(prior / prior.sum()) if key != (None, 0) else np.zeros(self.classes)
            out[i] = cache[key]
        return out

    def to_bytes(self) -> bytes:
        """The compact file the export bundle carries (numpy npz, compressed)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, fine=self.fine.astype(np.int32), region=self.region.astype(np.int32),
                            months=self.months.astype(np.uint16), totals=self.totals,
                            meta=np.array([self.classes, self.cell_deg, self.region_deg, self.smoothing, self.weight]))
        return buffer.getvalue()

    def to_json(self) -> dict:
        """What the web page reads (web/place_prior.js computes the same prior): flat integer lists."""
        return {"classes": self.classes, "cell_deg": self.cell_deg, "region_deg": self.region_deg,
                "smoothing": self.smoothing, "weight": self.weight, "fine": self.fine.ravel().tolist(),
                "region": self.region.ravel().tolist(), "months": self.months.ravel().tolist(),
                "totals": self.totals.tolist()}

    @classmethod
    def from_bytes(cls, data: bytes) -> PlacePrior:
        arrays = np.load(io.BytesIO(data))
        classes, cell_deg, region_deg, smoothing, weight = arrays["meta"]
        return cls(int(classes), float(cell_deg), float(region_deg), float(smoothing),
                   arrays["fine"].astype(np.int64), arrays["region"].astype(np.int64),
                   arrays["months"].astype(np.int32), arrays["totals"], float(weight))


def combine(log_probs: np.ndarray, log_prior: np.ndarray, weight: float) -> np.ndarray:
    """Probabilities ∝ exp(log p_image + weight × log prior), renormalised per photo."""
    scores = log_probs + weight * log_prior
    scores -= scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def fit_weight(log_probs: np.ndarray, log_prior: np.ndarray, labels: np.ndarray) -> tuple[float, dict[float, float]]:
    """The prior weight with the lowest negative log-likelihood on these (validation) photos, and the curve."""
    if not len(labels):
        return 0.0, {}
    curve = {}
    for w in WEIGHTS:
        p = combine(log_probs, log_prior, float(w))
        curve[float(w)] = float(-np.mean(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-12))))
    best = min(curve, key=lambda w: (curve[w], w))
    return best, curve


__all__ = ["PLACE_AND_TIME", "PlacePrior", "knows_place", "PlaceSeason", "combine", "fit_weight", "place_and_season"]
