"""Pipelines, fixed-point groups, the pass context and the pass manager."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from qgraph.errors import PassContractError, PassError, PipelineError, QGraphError, RewriteCycleError, VerificationError
from qgraph.ir.core import Model
from qgraph.pm.analysis import AnalysisManager
from qgraph.pm.base import ALL_ANALYSES, Pass, PassResult
from qgraph.pm.instruments import Instrument


class FixedPoint:
    """Runs its passes in order, again and again, until none changes the IR.

    Fails with ``RewriteCycleError`` when an iteration recreates the IR of an earlier one
    (a cycle) or after ``max_iterations`` iterations.
    """

    name = "fixed-point"

    def __init__(self, passes: Sequence["Pass | FixedPoint"], max_iterations: int = 32):
        if not passes:
            raise PipelineError("fixed-point needs at least one pass")
        self.passes = list(passes)
        self.max_iterations = max_iterations

    def __str__(self) -> str:
        return f"fixed-point({','.join(str(p) for p in self.passes)})"

    def flat_names(self) -> list[str]:
        return _flat_names(self.passes)


def _flat_names(items: Iterable["Pass | FixedPoint"]) -> list[str]:
    out = []
    for p in items:
        out.extend(p.flat_names() if isinstance(p, FixedPoint) else [p.name])
    return out


class Pipeline:
    """An ordered list of passes and fixed-point groups."""

    def __init__(self, passes: Sequence["Pass | FixedPoint"]):
        self.passes = list(passes)
        self._check_requires()

    def _check_requires(self) -> None:
        names = _flat_names(self.passes)
        seen: set[str] = set()
        for i, (name, p) in enumerate(zip(names, _flat_passes(self.passes))):
            later = set(names[i:])
            missing = [r for r in p.requires if r not in seen and r in later]
            if missing:
                raise PipelineError(f"pass '{name}' requires {', '.join(repr(m) for m in missing)} earlier in the pipeline")
            seen.add(name)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __iter__(self):
        return iter(self.passes)


def _flat_passes(items: Iterable["Pass | FixedPoint"]) -> list[Pass]:
    out: list[Pass] = []
    for p in items:
        out.extend(_flat_passes(p.passes) if isinstance(p, FixedPoint) else [p])
    return out


@dataclass
class PassContext:
    """How passes run.

    Attributes:
        verify_each: verify the IR after every pass, and check that a pass that reported
            no change really left the IR untouched (debug mode; tests always set it).
        disabled: pass names to skip.
        instruments: hooks run around each pass (timing, IR dumps, ...).
    """

    verify_each: bool = False
    disabled: frozenset[str] = frozenset()
    instruments: list[Instrument] = field(default_factory=list)


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float
    stats: dict


@dataclass
class PipelineResult:
    modified: bool
    records: list[PassRecord]


class PassManager:
    """Runs a pipeline on a model under a ``PassContext``."""

    def __init__(self, pipeline: "Pipeline | Sequence[Pass | FixedPoint]", context: PassContext | None = None):
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.context = context or PassContext()
        self.records: list[PassRecord] = []

    def run(self, model: Model, analyses: AnalysisManager | None = None) -> PipelineResult:
        am = analyses or AnalysisManager(model)
        self.records = []
        modified = False
        for p in self.pipeline:
            modified |= self._run_item(p, model, am)
        return PipelineResult(modified, list(self.records))

    def _run_item(self, p: "Pass | FixedPoint", model: Model, am: AnalysisManager) -> bool:
        if isinstance(p, FixedPoint):
            return self._run_fixed_point(p, model, am)
        return self._run_pass(p, model, am)

    def _run_pass(self, p: Pass, model: Model, am: AnalysisManager) -> bool:
        ctx = self.context
        if p.name in ctx.disabled:
            return False
        from qgraph.ir.text import fingerprint
        from qgraph.ir.verify import verify

        before = fingerprint(model) if ctx.verify_each else None
        for inst in ctx.instruments:
            inst.before_pass(p, model)
        start = time.perf_counter()
        try:
            p.check_preconditions(model)
            result = p.run(model, am)
        except PassError as e:
            if f"pass '{p.name}'" in str(e):
                raise
            raise type(e)(f"pass '{p.name}': {e}") from e
        except QGraphError as e:
            raise PassError(f"pass '{p.name}' failed: {e}") from e
        except Exception as e:
            raise PassError(f"pass '{p.name}' crashed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PassContractError(f"pass '{p.name}' returned {type(result).__name__}, expected a PassResult")
        am.invalidate(result.preserved if result.modified else ALL_ANALYSES)
        if ctx.verify_each:
            try:
                verify(model)
            except VerificationError as e:
                raise PassContractError(f"pass '{p.name}' left invalid IR: {e}") from e
            if not result.modified and fingerprint(model) != before:
                raise PassContractError(f"pass '{p.name}' reported no change but modified the IR")
        for inst in ctx.instruments:
            inst.after_pass(p, model, result, seconds)
        self.records.append(PassRecord(p.name, result.modified, seconds, dict(result.stats)))
        return result.modified

    def _run_fixed_point(self, group: FixedPoint, model: Model, am: AnalysisManager) -> bool:
        from qgraph.ir.text import fingerprint

        seen = {fingerprint(model): 0}
        changed_by: list[str] = []
        for it in range(1, group.max_iterations + 1):
            changed_by = [str(p) for p in group.passes if self._run_item(p, model, am)]
            if not changed_by:
                return it > 1
            state = fingerprint(model)
            if state in seen:
                raise RewriteCycleError(
                    f"{group}: iteration {it} recreated the IR of iteration {seen[state]} (a cycle); "
                    f"passes that reported changes: {', '.join(changed_by)}")
            seen[state] = it
        raise RewriteCycleError(f"{group} did not converge in {group.max_iterations} iterations; "
                                f"still changing: {', '.join(changed_by)}")
