"""Analyses: computed lazily, cached per model, dropped when a pass does not preserve them."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from qgraph.ir.core import Model
from qgraph.pm.base import ALL_ANALYSES


class Analysis:
    """Base class: ``compute(model, analyses)`` returns the result object."""

    name: ClassVar[str] = ""

    @classmethod
    def compute(cls, model: Model, analyses: "AnalysisManager") -> Any:
        raise NotImplementedError


class AnalysisManager:
    """Caches analysis results for one model."""

    def __init__(self, model: Model):
        self.model = model
        self._cache: dict[type[Analysis], Any] = {}
        self.computations: Counter[str] = Counter()  # how often each analysis was computed

    def get(self, analysis: type[Analysis]) -> Any:
        if analysis not in self._cache:
            self._cache[analysis] = analysis.compute(self.model, self)
            self.computations[analysis.name or analysis.__name__] += 1
        return self._cache[analysis]

    def is_cached(self, analysis: type[Analysis]) -> bool:
        return analysis in self._cache

    def invalidate(self, preserved: Any = frozenset()) -> None:
        """Drop every cached result not in ``preserved`` (``ALL_ANALYSES`` keeps all)."""
        if preserved is ALL_ANALYSES:
            return
        self._cache = {k: v for k, v in self._cache.items() if k in preserved}
