"""Range analysis: declared input ranges in, sound static intervals for every value out.

The intervals themselves are an analysis (``qgraph.calib.intervals.RangeAnalysis``), read by
later passes with ``analyses.get(RangeAnalysis)``; this pass records what the user declares
about the graph inputs and computes the analysis, so that a problem surfaces here.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from qgraph.calib.intervals import RangeAnalysis
from qgraph.calib.ranges import Interval
from qgraph.errors import PassError, PipelineError
from qgraph.ir.core import Model
from qgraph.ir.dtypes import DType
from qgraph.pm.base import ALL_ANALYSES, AllAnalysesExcept, Pass, PassResult

_FLOAT_TYPES = (DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16)


class RangeAnalysisPass(Pass):
    """Declare graph input ranges and compute sound static intervals for every value.

    before => after (the graph is not changed; ``model.input_ranges`` and the analysis are):
        graph(%x: f32[1,3,8,8]) { %c = Conv(%x, %w, %b); %y = Relu(%c) }
        range-analysis(input-min=-1,input-max=1)
        =>  model.input_ranges = {"x": [-1, 1]}
            ranges: x [-1, 1], c [lo, hi] from w, b and x (per output channel too), y [max(lo, 0), max(hi, 0)]

    Options: ``input_min`` / ``input_max`` apply to every float graph input (one side alone
    leaves the other unbounded); ``input_ranges`` (Python: ``{name: (lo, hi)}``; text:
    ``input-ranges="x=-1:1;y=0:255"``) names inputs one by one and wins over the former.
    Declared ranges are merged into ``model.input_ranges``; the pass reports a change iff
    they changed it.

    Soundness: for every input inside its declared interval (undeclared inputs: any value),
    every value any tensor of the main graph takes when ONNX Runtime runs the model lies in
    its interval, float rounding included (see ``qgraph.calib.intervals``); a tensor no rule
    covers gets (-inf, inf) and its op is counted in ``meta["unknown_ops"]``. Calibration
    (``model.calibration``) narrows the analysis' intervals to what was observed; those are
    no longer bounds, only estimates.
    """

    name = "range-analysis"

    def __init__(self, input_min: Optional[float] = None, input_max: Optional[float] = None,
                 input_ranges: Optional[Mapping[str, tuple[float, float]]] = None):
        self.input_min = input_min
        self.input_max = input_max
        if isinstance(input_ranges, str):
            input_ranges = _parse_ranges(input_ranges)
        self.input_ranges = dict(input_ranges) if input_ranges is not None else None
        if input_min is not None and input_max is not None and input_min > input_max:
            raise PipelineError(f"pass '{self.name}': input-min {input_min} is larger than input-max {input_max}")

    def declared(self, model: Model) -> dict[str, Interval]:
        """The intervals this pass declares for ``model``'s inputs."""
        inputs = {v.name: v for v in model.graph.inputs}
        out: dict[str, Interval] = {}
        if self.input_min is not None or self.input_max is not None:
            lo = -math.inf if self.input_min is None else float(self.input_min)
            hi = math.inf if self.input_max is None else float(self.input_max)
            for name, v in inputs.items():
                if (v.dtype in _FLOAT_TYPES or v.dtype is None) and not v.is_initializer():
                    out[name] = Interval(lo, hi, "user")
        for name, pair in (self.input_ranges or {}).items():
            if name not in inputs:
                raise PassError(f"pass '{self.name}': input range given for '{name}', which is not a graph "
                                f"input (inputs: {', '.join(inputs) or 'none'})")
            try:
                lo, hi = (float(x) for x in pair)
                out[name] = Interval(lo, hi, "user")
            except (TypeError, ValueError) as e:
                raise PassError(f"pass '{self.name}': range of input '{name}' must be (min, max) with "
                                f"min <= max, got {pair!r}") from e
        return out

    def run(self, model: Model, analyses) -> PassResult:
        new = {**model.input_ranges, **self.declared(model)}
        changed = new != model.input_ranges
        if changed:
            model.input_ranges = new
            # Only the range analysis read the old declarations: drop it, compute it afresh below.
            analyses.invalidate(AllAnalysesExcept({RangeAnalysis}))
        ranges = analyses.get(RangeAnalysis)
        stats = {"values": len(ranges), "unbounded": int(ranges.meta.get("unbounded", 0)),
                 "unknown_ops": sum(ranges.meta.get("unknown_ops", {}).values())}
        # The graph is as it was, and the analysis cached now reflects the new declarations.
        return PassResult.of(changed, ALL_ANALYSES, declared=len(new), **stats)


def _parse_ranges(text: str) -> dict[str, tuple[float, float]]:
    """``"x=-1:1;y=0:255"`` (``,`` also separates) -> {"x": (-1, 1), "y": (0, 255)}."""
    out: dict[str, tuple[float, float]] = {}
    for item in filter(None, (s.strip() for s in text.replace(",", ";").split(";"))):
        name, eq, pair = item.rpartition("=")
        lo, colon, hi = pair.partition(":")
        try:
            if not (eq and colon and name):
                raise ValueError(item)
            out[name] = (float(lo), float(hi))
        except ValueError as e:
            raise PipelineError(f"pass 'range-analysis' option 'input-ranges': expected NAME=MIN:MAX items "
                                f"separated by ';', got {item!r}") from e
    return out


PASSES = (RangeAnalysisPass,)
