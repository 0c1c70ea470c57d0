"""The search-space vocabulary of sweep files — choice, uniform, loguniform, int — checked once, drawn by a
random search and handed to Optuna alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fungilib.errors import FungilibError

KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple[Any, ...]

    def draw(self, rng: np.random.Generator) -> Any:
        """One seeded draw (a random search's run)."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        lo, hi = self.args
        if self.kind == "uniform":
            return float(rng.uniform(lo, hi))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return int(rng.integers(lo, hi + 1))

    def to_optuna(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.args))
        if self.kind == "int":
            return IntDistribution(self.args[0], self.args[1])
        return FloatDistribution(float(self.args[0]), float(self.args[1]), log=self.kind == "loguniform")

    def first(self) -> Any:
        """The point a study's base run validates the stages with."""
        return float(self.args[0]) if self.kind in ("uniform", "loguniform") else self.args[0]


def parse_distribution(spec: Any, where: str) -> Distribution:
    """``{choice: [...]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{int: [lo, hi]}``; anything
    else is one line naming ``where``."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise FungilibError(f"{where}: expected one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                            f"{{loguniform: [lo, hi]}}, {{int: [lo, hi]}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise FungilibError(f"{where}: choice needs a non-empty list")
        return Distribution(kind, tuple(args))
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args) or args[0] >= args[1]):
        raise FungilibError(f"{where}: {kind} needs [low, high] with low < high, got {args!r}")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise FungilibError(f"{where}: int needs integer bounds, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise FungilibError(f"{where}: loguniform bounds must be > 0")
    return Distribution(kind, tuple(args))
