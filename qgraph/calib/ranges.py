"""Value ranges: intervals, where they came from, and their JSON form.

A ``RangeMap`` maps value names to ``Interval``s. Static range analysis produces sound
intervals (every value the tensor can take lies inside); calibration produces observed
ones (what calibration data showed, clipped by the chosen method). Per-channel intervals
(weights) carry an ``axis`` and arrays of bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np

SOURCES = ("static", "calibration", "user")


@dataclass(frozen=True)
class Interval:
    """[lo, hi] for a whole tensor; ``lo`` / ``hi`` may be -inf / inf (unknown side)."""

    lo: float
    hi: float
    source: str = "static"  # one of SOURCES

    def __post_init__(self):
        if math.isnan(self.lo) or math.isnan(self.hi):
            raise ValueError("an interval bound is NaN")
        if self.lo > self.hi:
            raise ValueError(f"empty interval [{self.lo}, {self.hi}]")

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def contains(self, lo: float, hi: float, tol: float = 0.0) -> bool:
        return self.lo - tol <= lo and hi <= self.hi + tol

    def union(self, other: "Interval") -> "Interval":
        return Interval(min(self.lo, other.lo), max(self.hi, other.hi), self.source)

    def intersect(self, other: "Interval") -> "Interval":
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo > hi:  # disjoint: the narrower, observed one wins (calibration may clip outliers)
            return other
        return Interval(lo, hi, other.source if (lo, hi) == (other.lo, other.hi) else self.source)

    @staticmethod
    def unknown() -> "Interval":
        return Interval(-math.inf, math.inf)


@dataclass(frozen=True)
class ChannelIntervals:
    """Per-channel bounds along ``axis`` (weights)."""

    axis: int
    lo: np.ndarray
    hi: np.ndarray
    source: str = "static"

    def whole(self) -> Interval:
        return Interval(float(np.min(self.lo)), float(np.max(self.hi)), self.source)


@dataclass
class RangeMap:
    """Intervals by value name, with per-channel ones for weights."""

    tensors: dict[str, Interval] = field(default_factory=dict)
    channels: dict[str, ChannelIntervals] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)  # e.g. method, samples
    #: the observed min / max where a clipping method (percentile, entropy, mse) chose a
    #: narrower range for 8 bits; insert-qdq quantizes a wider (16-bit) tensor over these
    observed: dict[str, Interval] = field(default_factory=dict)
    #: per-channel means of the float activations a Conv / ConvTranspose / Gemm / MatMul with
    #: constant weights reads: tensor name -> (channel axis, mean per channel); insert-qdq's
    #: bias correction reads them
    means: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)

    def wide(self, name: str) -> Interval | None:
        """The range for a tensor quantized wider than 8 bits: the observed one where known."""
        return self.observed.get(name) or self.tensors.get(name)

    def __getitem__(self, name: str) -> Interval:
        return self.tensors[name]

    def get(self, name: str, default: Interval | None = None) -> Interval | None:
        return self.tensors.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    # -- JSON: {"ranges": {name: [lo, hi]}, "sources": {...}, "meta": {...}} ------------------
    def to_json(self) -> dict:
        def num(x: float):
            return x if math.isfinite(x) else (None if math.isnan(x) else ("inf" if x > 0 else "-inf"))

        return {
            "ranges": {k: [num(v.lo), num(v.hi)] for k, v in self.tensors.items()},
            "sources": {k: v.source for k, v in self.tensors.items()},
            "meta": self.meta,
            **({"observed": {k: [num(v.lo), num(v.hi)] for k, v in self.observed.items()}} if self.observed else {}),
            **({"means": {k: {"axis": a, "mean": [float(x) for x in m]} for k, (a, m) in self.means.items()}}
               if self.means else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping, where: str = "ranges") -> "RangeMap":
        from qgraph.errors import QGraphError

        if not isinstance(data, Mapping) or not isinstance(data.get("ranges"), Mapping):
            raise QGraphError(f"{where}: expected a JSON object with a \"ranges\" object")
        sources = data.get("sources", {})
        rm = cls(meta=dict(data.get("meta", {})))
        for name, pair in data["ranges"].items():
            try:
                lo, hi = (float(x) for x in pair)
                rm.tensors[name] = Interval(lo, hi, sources.get(name, "user"))
            except (TypeError, ValueError) as e:
                raise QGraphError(f"{where}: range of '{name}' must be [min, max] numbers, got {pair!r}") from e
        for name, pair in (data.get("observed") or {}).items():
            try:
                lo, hi = (float(x) for x in pair)
                rm.observed[name] = Interval(lo, hi, "calibration")
            except (TypeError, ValueError) as e:
                raise QGraphError(f"{where}: observed range of '{name}' must be [min, max] numbers, "
                                  f"got {pair!r}") from e
        for name, entry in (data.get("means") or {}).items():
            try:
                rm.means[name] = (int(entry["axis"]), np.asarray(entry["mean"], np.float64).reshape(-1))
            except (TypeError, ValueError, KeyError) as e:
                raise QGraphError(f"{where}: means of '{name}' must be {{\"axis\": int, \"mean\": [numbers]}}, "
                                  f"got {entry!r}") from e
        return rm

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "RangeMap":
        from qgraph.errors import QGraphError

        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise QGraphError(f"{path}: cannot read ranges: {e}") from e
        return cls.from_json(data, path)
