"""Warnings about a quantized model: what the numbers alone would hide.

Each check returns ``QuantWarning``s, one line each, naming the tensor or node and saying
what to do. ``qgraph.verify.report.build_report`` collects them into ``Report.warnings``
(report.json ``"warnings"``, the top of report.md and report.html); ``qgraph compile``
prints them as ``qgraph: warning: ...`` and ``--strict`` turns them into an error.

The checks and their thresholds:

- ``few-samples``: fewer than ``MIN_SAMPLES`` calibration samples;
- ``constant-input``: a calibration input that is all zero or one constant value, or whose
  first samples are all identical;
- ``constant-range``: a quantized tensor whose calibrated range has zero width;
- ``low-output``: a model output under ``LOW_OUTPUT_DB`` against float (the headline
  number itself says it, but one line among many is easy to miss);
- ``low-sqnr``: a layer at or below 0 dB; ``sqnr-drop``: a layer ``DROP_DB`` or more under
  the median of the layers before it;
- ``mixed-ranges``: a Concat or Add whose inputs' calibrated spans differ more than
  ``SPAN_RATIO`` times (one scale for box coordinates and class scores zeroes the scores);
- ``output-shape``: an output the float model returns in another shape than it declares;
- ``unused-exclude``: a config ``exclude`` entry that matches no node name or op type;
- ``unused-labels``: held-out data with labels that fit no classifier-shaped output.
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model

#: fewer calibration samples than this give ranges that the next input can overflow
MIN_SAMPLES = 16
#: a layer this many dB under the median of the layers before it lost something the others kept
DROP_DB = 20.0
#: inputs of one shared-scale op whose spans differ more than this lose the narrow ones
SPAN_RATIO = 100.0
#: a model output under this SQNR against float is far from usable (a classifier at 10 dB
#: already disagrees with float on a few percent of its top-1 answers)
LOW_OUTPUT_DB = 10.0
#: per-tensor lines of one kind before the rest is summed up in one line
MAX_LINES = 5


@dataclass(frozen=True)
class QuantWarning:
    """One finding.

    Attributes:
        kind: which check (see the module doc), e.g. ``mixed-ranges``.
        message: one line for the user: what, where (node / tensor), what to do.
        node: the node concerned, if any.
        tensor: the tensor concerned, if any.
        inputs: other tensors it concerns (``mixed-ranges``: the inputs that lose resolution).
    """

    kind: str
    message: str
    node: str | None = None
    tensor: str | None = None
    inputs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d


def _limited(found: list[QuantWarning], kind: str, what: str) -> list[QuantWarning]:
    if len(found) <= MAX_LINES:
        return found
    rest = found[MAX_LINES:]
    names = ", ".join(f"'{w.tensor}'" for w in rest[:3]) + (", ..." if len(rest) > 3 else "")
    return found[:MAX_LINES] + [QuantWarning(kind, f"{len(rest)} more {what} ({names}); see the calibrated ranges in report.md's Layers table")]


def check_calibration(ranges, float_model: Model, first_samples: Sequence[Mapping[str, np.ndarray]] = ()
                      ) -> list[QuantWarning]:
    """``few-samples`` and ``constant-input``: from the calibrated ranges of the graph inputs
    and the first calibration samples (those the report ran)."""
    out = []
    meta = getattr(ranges, "meta", {}) or {}
    n = meta.get("samples")
    if isinstance(n, int) and n < MIN_SAMPLES:
        out.append(QuantWarning("few-samples", f"calibration used {n} sample{'s' * (n != 1)}: ranges from fewer than "
                                f"{MIN_SAMPLES} samples miss values that other inputs take, and those saturate; "
                                "calibrate on a few hundred representative samples"))
    for v in float_model.graph.inputs:
        if v.is_initializer():
            continue
        r = ranges.get(v.name)
        if r is not None and r.lo == r.hi:
            what = "all zero" if r.lo == 0 else f"the constant {r.lo:.4g}"
            out.append(QuantWarning("constant-input", f"calibration input '{v.name}' is {what} in every sample: "
                                    "every range and scale is fitted to it and real inputs will saturate; "
                                    "calibrate on representative data", tensor=v.name))
            continue
        arrays = [s[v.name] for s in first_samples if v.name in s]
        if len(arrays) > 1 and all(np.array_equal(arrays[0], a) for a in arrays[1:]):
            out.append(QuantWarning("constant-input", f"calibration input '{v.name}': the first {len(arrays)} "
                                    "samples are identical; calibrate on varied, representative data",
                                    tensor=v.name))
    return out


def check_ranges(rows: Sequence[Mapping[str, Any]]) -> list[QuantWarning]:
    """``constant-range``: layers whose quantized output's calibrated range (the report
    rows' ``output.range``) is a single value."""
    found = []
    for r in rows:
        out = r.get("output") or {}
        rng = out.get("range")
        if not rng or rng[0] != rng[1]:
            continue
        node, tensor = r.get("node") or None, out.get("tensor")
        where = f" (output of {r['op']} node '{node}')" if node else ""
        found.append(QuantWarning("constant-range", f"tensor '{tensor}'{where} took the single value {rng[0]:.4g} on "
                                  "all calibration data (a zero-width range): its scale is a guess; calibrate on data "
                                  "that exercises it, or exclude its node in the config", node, tensor))
    return _limited(found, "constant-range", "tensors with zero-width ranges")


def check_outputs(outputs: Mapping[str, Mapping[str, Any]], measured_on: str) -> list[QuantWarning]:
    """``low-output``: model outputs under ``LOW_OUTPUT_DB`` against float.

    Args:
        outputs: output name -> metrics (``sqnr_db``) as the report holds them.
        measured_on: what data they were measured on, for the message.
    """
    out = []
    for name, m in outputs.items():
        s = m.get("sqnr_db")
        db = float(s) if not isinstance(s, str) else (math.inf if s == "inf" else -math.inf)
        if db < LOW_OUTPUT_DB:
            out.append(QuantWarning("low-output", f"output '{name}' is at {_db(db)} vs float ({measured_on}): far "
                                    "from usable; the layer warnings and report.html show where the error starts; "
                                    "try --method percentile or entropy, more calibration data, or keep the worst "
                                    "layers float with \"exclude\" in the config", tensor=name))
    return out


def check_layers(rows: Sequence[Mapping[str, Any]], explained: Sequence[QuantWarning] = ()) -> list[QuantWarning]:
    """``low-sqnr`` and ``sqnr-drop`` over the report's layer rows, in graph order.

    Args:
        rows: the report's layer rows (``sqnr_db``, ``node``, ``op``, ``output.tensor``).
        explained: ``mixed-ranges`` warnings: a layer whose tensor lost its resolution to
            one of their shared scales points at that node instead of at itself.
    """
    causes = {t: w.node for w in explained for t in w.inputs}
    out, before = [], []
    for r in rows:
        s = r.get("sqnr_db")
        if s is None:
            continue
        db = float(s) if not isinstance(s, str) else (math.inf if s == "inf" else -math.inf)
        tensor = (r.get("output") or {}).get("tensor")
        who = f"{r['op']} node '{r['node']}'" if r.get("node") else f"{r['op']} node"
        fix = (f"check its calibrated range and scale in report.md, or keep it float with "
               f"{{\"exclude\": [\"{r.get('node') or r['op']}\"]}} in the config")
        if tensor in causes:
            fix = f"it shares the output scale of node '{causes[tensor]}' (see the mixed-ranges warning)"
        if db == -math.inf:
            out.append(QuantWarning("low-sqnr", f"{who} (tensor '{tensor}') is all zero in float on these samples but "
                                    f"not once quantized (-inf dB); {fix}", r.get("node"), tensor))
        elif db <= 0:
            out.append(QuantWarning("low-sqnr", f"{who} (tensor '{tensor}') is at {_db(db)} vs float: its quantized "
                                    f"output is no better than zero; {fix}", r.get("node"), tensor))
        elif len(before) >= 2 and math.isfinite(db):
            median = statistics.median(before)
            if db <= median - DROP_DB:
                out.append(QuantWarning("sqnr-drop", f"{who} (tensor '{tensor}') is at {_db(db)}, {median - db:.1f} dB "
                                        f"under the median ({median:.1f} dB) of the layers before it; {fix}",
                                        r.get("node"), tensor))
        if math.isfinite(db):
            before.append(db)
    return out


def _db(x: float) -> str:
    return f"{x:.1f} dB" if math.isfinite(x) else f"{x} dB"


def _span(r) -> float:
    """The span an asymmetric scale covers: the range widened to include 0."""
    return max(r.hi, 0.0) - min(r.lo, 0.0)


def check_mixed_ranges(float_model: Model, ranges, config, quantized: Mapping[str, str] | None = None
                       ) -> list[QuantWarning]:
    """``mixed-ranges``: Concat / Add / Sum nodes whose non-constant inputs' calibrated spans
    differ more than ``SPAN_RATIO`` times (at 8 bits; at ``b`` bits, more than
    ``SPAN_RATIO * (2**b - 1) / 255``: the narrow input is left fewer than 2.55 steps).

    A Concat puts its inputs under its output's one scale, so the narrow ones keep
    ``255 / ratio`` steps or fewer (a YOLO head's class scores next to box coordinates in
    pixels: all 0). An Add reads each input at its own scale, but its 8-bit output's scale
    follows the widest, so a narrow input moves the sum by a few steps at most.

    Args:
        quantized: the quantized float tensors and their dtype names (``uint8``; None: all,
            8-bit); a node whose output is not quantized is skipped, as are nodes the config
            excludes.
    """
    keep = None if quantized is None else dict(quantized)
    out = []
    for node in float_model.graph:
        if node.op not in (ops.Concat, ops.Add, ops.Sum) or config.excludes(node):
            continue
        if keep is not None and node.outputs[0].name not in keep:
            continue
        spans = []
        for v in node.inputs:
            r = ranges.get(v.name) if v is not None and v.const_value is None else None
            if r is not None and r.bounded and _span(r) > 0:
                spans.append((v.name, r))
        if len(spans) < 2:
            continue
        wide = max(spans, key=lambda p: _span(p[1]))
        narrow = min(spans, key=lambda p: _span(p[1]))
        ratio = _span(wide[1]) / _span(narrow[1])
        dtype = "uint8" if keep is None else keep[node.outputs[0].name]
        levels = 2 ** int("".join(c for c in dtype if c.isdigit()) or 8) - 1
        if ratio <= SPAN_RATIO * levels / 255:
            continue
        name = node.name or node.outputs[0].name
        tensor = node.outputs[0].name
        lost = [n for n, r in spans if _span(wide[1]) / _span(r) > SPAN_RATIO * levels / 255]
        names = ", ".join(repr(n) for n in lost)
        steps = levels / ratio
        exclude = f"{{\"exclude\": [{json.dumps(name)}]}}"
        if node.op is ops.Concat:
            effect = (f"under the one {dtype} scale of its output {names} keep{'s' * (len(lost) == 1)} at most "
                      f"{steps:.1f} of {levels} steps (a detector's class scores next to its boxes become 0)")
            fix = (f"keep the node float with {exclude} in the config, or give its inputs separate scales "
                   "(e.g. separate model outputs)")
        else:
            effect = (f"its output's {dtype} scale follows the widest input, so {names} move{'s' * (len(lost) == 1)} "
                      f"the sum by at most {steps:.1f} steps")
            fix = (f"keep the node float with {exclude}, or give its output 16 bits with "
                   f"{{\"nodes\": {{{json.dumps(name)}: {{\"activation\": {{\"dtype\": \"int16\"}}}}}}}} in the config")
        out.append(QuantWarning(
            "mixed-ranges",
            f"{node.op_type} node '{name}' (tensor '{tensor}') joins inputs whose calibrated ranges differ {ratio:.0f}x "
            f"('{wide[0]}' [{wide[1].lo:.4g}, {wide[1].hi:.4g}] vs '{narrow[0]}' [{narrow[1].lo:.4g}, "
            f"{narrow[1].hi:.4g}]): {effect}; {fix}", name, tensor, tuple(lost)))
    return out


def check_output_shapes(declared: Mapping[str, Any], actual: Mapping[str, tuple]) -> list[QuantWarning]:
    """``output-shape``: outputs whose shape from the float run disagrees with the declared
    one (rank, or a static dim); symbolic dims match anything."""
    out = []
    for name, shape in actual.items():
        want = declared.get(name)
        if want is None:
            continue
        want = tuple(want)
        clash = len(want) != len(shape) or any(isinstance(d, int) and d > 0 and d != g for d, g in zip(want, shape))
        if clash:
            text = "[" + ", ".join(str(d) if d is not None else "?" for d in want) + "]"
            out.append(QuantWarning("output-shape", f"output '{name}' is declared {text} but the float model returns "
                                    f"{list(shape)} (one sample): code written against the declaration will misread "
                                    "it; fix the output's declaration in the model (or its export)", tensor=name))
    return out


def check_excludes(config, models: Iterable[Model]) -> list[QuantWarning]:
    """``unused-exclude``: ``exclude`` entries that are no node name or op type of the model
    after canonicalize and fusion (what insert-qdq matches them against)."""
    names, types = set(), set()
    for m in models:
        for n in m.graph:
            if n.name:
                names.add(n.name)
            types.add(n.op_type)
    out = []
    for entry in config.exclude:
        if entry in names or entry in types:
            continue
        close = difflib.get_close_matches(entry, sorted(names | types), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        out.append(QuantWarning("unused-exclude", f"config exclude '{entry}' matches no node name or op type of the "
                                f"model after canonicalize/fuse, so nothing was kept float for it; {hint}"
                                "report.md lists the node names (Layers, Stayed float)", entry))
    return out


def check_labels(outputs: Mapping[str, Mapping[str, Any]], labels, source: str) -> list[QuantWarning]:
    """``unused-labels``: ``labels`` were given but no output got an accuracy from them."""
    if labels is None or any("accuracy_float" in m for m in outputs.values()):
        return []
    return [QuantWarning("unused-labels", f"the labels in {source} (shape {list(np.shape(labels))}) fit no "
                         "classifier-shaped output (one label per row of an [N, C] output, or per row of a "
                         "softmax-like last axis), so no accuracy was computed; check which output they are for")]
