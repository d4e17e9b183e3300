"""``--precision auto``: each layer's format from measured sensitivity, under an accuracy floor.

1. **Units and candidates.** ``insert-qdq`` writes the whole model once per integer format
   (W8A8, W8A16, W4A8); its quantized nodes are the units (``qgraph.precision.units``), and
   each unit's candidates are the formats that change something in it (a unit without
   weights has no W4A8) plus float. A range-mixing node (``diagnose.check_mixed_ranges``: a
   Concat / Add whose inputs' spans differ > 100x) loses its 8-bit-activation candidates:
   it gets a wider type or stays float.
2. **Sensitivity** (``qgraph.precision.sensitivity``): one probe per (unit, integer format),
   run by the executor: the outputs' channel-normalized noise-to-signal ratio when that unit
   alone takes that format. Cached on disk.
3. **Assignment**: minimize the cost (``bops``: multiply-accumulates x weight bits x
   activation bits plus output elements x activation bits; or ``bytes``: weight bytes) with
   the summed damages under a budget, as a 0/1 integer program (``scipy.optimize.milp``);
   with ``budget``, minimize the summed damage under a cost budget instead.
4. **Verification and repair**: damages do not add exactly, so every assignment is built
   (``insert-qdq``) and measured in ONNX Runtime's float simulation on the verification
   samples. The damage budget is tightened until the floor holds, then loosened while it
   still holds; the cheapest assignment that holds is kept (if none does, the most accurate
   one tried, and ``floor_met`` is False). Every verified point is kept for the report.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.precision.formats import FLOAT, FORMATS, Format, parse_formats
from qgraph.precision.units import Effect, Unit, effect, find_units
from qgraph.quant.config import QuantConfig

#: ``--accuracy`` metrics: the worst output's value is compared with the floor (``kl``: a
#: ceiling, ``kl<=X``, the mean KL divergence of the classifier-shaped outputs' softmax rows)
METRICS = ("sqnr", "top1", "cosine", "kl")


class PrecisionError(QGraphError):
    """Mixed-precision search cannot run as asked (bad floor, budget or data)."""


@dataclass(frozen=True)
class Floor:
    """An accuracy floor: ``metric >= value`` on the worst output, or a callable
    ``fn(float_outputs, quantized_outputs) -> bool``. ``auto``: top-1 agreement >= 0.99 on
    classifier-shaped outputs and channel SQNR >= 20 dB on the others."""

    metric: str
    value: float = 0.0
    fn: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], bool] | None = None

    def describe(self) -> str:
        if self.fn is not None:
            return f"callable {getattr(self.fn, '__name__', 'metric')}"
        if self.metric == "auto":
            return f"auto (top1>={AUTO_TOP1} on classifier outputs, sqnr>={AUTO_SQNR:g} dB on others)"
        if self.metric == "kl":
            return f"kl<={self.value:g}"
        return f"{self.metric}>={self.value:g}"


AUTO_TOP1 = 0.99
AUTO_SQNR = 20.0


def parse_accuracy(spec: Any) -> Floor:
    """``None`` / ``"auto"``, ``"top1>=0.998"``, ``"sqnr>=30"``, ``"cosine>=0.999"``, or a callable."""
    if spec is None or spec == "auto":
        return Floor("auto")
    if callable(spec):
        return Floor("callable", fn=spec)
    if isinstance(spec, Floor):
        return spec
    text = str(spec).replace(" ", "")
    if text.startswith("kl<="):
        metric, value = "kl", text[4:]
    elif ">=" not in text:
        raise PrecisionError(f"--accuracy '{spec}': write METRIC>=VALUE with METRIC one of sqnr, top1, cosine, "
                             "or kl<=VALUE")
    else:
        metric, value = text.split(">=", 1)
    if metric == "kl" and not text.startswith("kl<="):
        raise PrecisionError(f"--accuracy '{spec}': KL is a ceiling: write kl<=VALUE")
    if metric not in METRICS:
        raise PrecisionError(f"--accuracy '{spec}': unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    try:
        v = float(value)
    except ValueError:
        raise PrecisionError(f"--accuracy '{spec}': '{value}' is not a number") from None
    if metric in ("top1", "cosine") and not 0.0 < v <= 1.0:
        raise PrecisionError(f"--accuracy '{spec}': {metric} is a fraction in (0, 1]")
    if metric == "kl" and not (v > 0.0 and math.isfinite(v)):
        raise PrecisionError(f"--accuracy '{spec}': the KL ceiling is a positive number (nats)")
    return Floor(metric, v)


def parse_budget(spec: Any) -> tuple[str, float] | None:
    """``"bytes=N"`` (weight bytes, K / M suffixes) or ``"bops=N"``; None for no budget."""
    if spec is None:
        return None
    text = str(spec).replace(" ", "")
    kind, _, value = text.partition("=")
    if kind not in ("bytes", "bops") or not value:
        raise PrecisionError(f"--budget '{spec}': write bytes=N or bops=N")
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(value[-1].lower(), 1.0)
    try:
        n = float(value[:-1] if mult != 1.0 else value) * mult
    except ValueError:
        raise PrecisionError(f"--budget '{spec}': '{value}' is not a number") from None
    return kind, n


def cost(unit: Unit, fmt: Format, kind: str) -> float:
    """What ``unit`` costs in ``fmt``: ``bytes`` (its weights) or ``bops``.

    ``bops`` counts operand bits per multiply-accumulate, linear in the choices: a unit's
    weight width is charged to its own MACs (its input's width is its producer's choice), its
    output width to the MACs of the layers that read it, plus its output elements. A float
    unit computes in 32-bit float (its elementwise work counted 8x an integer element's:
    dequantize, the op, quantize) and hands integer readers ``FLOAT_BOUNDARY`` values.
    """
    if kind == "bytes":
        return unit.weight_elems * fmt.weight_bits / 8.0
    if fmt.is_float:  # float MACs, float elementwise work (dequantize, op, quantize), a 16-bit boundary
        return float(unit.macs * 32 * 32 + unit.out_elems * 32 * 8 + unit.macs_read * 8 * 16)
    return float(unit.macs * fmt.weight_bits * 8 + unit.macs_read * 8 * fmt.activation_bits
                 + unit.out_elems * fmt.activation_bits)


@dataclass
class Point:
    """One verified assignment: its damage budget, cost, measured metrics, whether the floor held."""

    budget: float
    cost: float
    weight_bytes: float
    metrics: dict[str, float]
    ok: bool
    formats: dict[str, int]  # format name -> units


@dataclass
class PrecisionResult:
    """What the search chose and why (the report's precision section reads it)."""

    config: QuantConfig
    assignment: dict[str, str]  # unit name -> format name
    units: list[Unit]
    candidates: dict[str, list[str]]
    damage: dict[str, dict[str, float]]  # unit -> format -> worst output's damage (channel NSR)
    floor: Floor
    floor_met: bool
    measured: dict[str, float]
    points: list[Point] = field(default_factory=list)
    cost_kind: str = "bops"
    budget: tuple[str, float] | None = None
    probes: int = 0
    cached: int = 0
    bounded: int = 0  # wide-activation damages taken from the 8-bit probe (below skip_below), not probed
    seconds: float = 0.0
    executor: str = "local"
    samples: int = 0
    verify_samples: int = 0
    range_mixing: list[str] = field(default_factory=list)
    forced_float: list[str] = field(default_factory=list)  # integer forms lower-qdq refused

    def per_layer(self) -> dict[str, dict]:
        """Unit -> its format, candidates' damages, MACs, weight bytes at its format."""
        out = {}
        for u in self.units:
            fmt = FORMATS[self.assignment[u.name]]
            out[u.name] = {"op": u.op, "format": fmt.name, "weight": fmt.weight or "float",
                           "activation": fmt.activation or "float", "macs": u.macs,
                           "weight_bytes": cost(u, fmt, "bytes"),
                           "damage": {f: d for f, d in self.damage[u.name].items()}}
        return out

    def to_json(self) -> dict:
        from qgraph.verify.metrics import json_float

        return {
            "floor": self.floor.describe(), "floor_met": self.floor_met,
            "measured": {k: json_float(v) for k, v in self.measured.items()},
            "cost": self.cost_kind, "budget": None if self.budget is None else f"{self.budget[0]}={self.budget[1]:g}",
            "probes": self.probes, "cached_probes": self.cached, "bounded": self.bounded,
            "seconds": round(self.seconds, 2),
            "executor": self.executor, "sensitivity_samples": self.samples, "verify_samples": self.verify_samples,
            "range_mixing": list(self.range_mixing), "forced_float": list(self.forced_float),
            "points": [{"budget": p.budget, "cost": p.cost, "weight_bytes": p.weight_bytes, "ok": p.ok,
                        "metrics": {k: json_float(v) for k, v in p.metrics.items()}, "formats": p.formats}
                       for p in self.points],
        }


#: the type of a float layer's output where an integer layer reads it (insert-qdq quantizes it
#: there): wide, so the boundary costs next to nothing (the global 8-bit default would not)
FLOAT_BOUNDARY = "uint16"


def assignment_config(base: QuantConfig, assignment: Mapping[str, str],
                      units: Sequence[Unit] = ()) -> QuantConfig:
    """``base`` with one node override per unit; float units excluded by name, their output
    tensors (``units``' ``tensors``) given ``FLOAT_BOUNDARY`` where an integer layer reads them."""
    from qgraph.quant.params import int_type

    nodes = dict(base.nodes)
    tensors = dict(base.tensors)
    exclude = list(base.exclude)
    outs = {u.name: u.tensors for u in units}
    for name, f in assignment.items():
        fmt = FORMATS[f]
        if fmt.is_float:
            if name not in exclude:
                exclude.append(name)
            for t in outs.get(name, ()):
                tensors[t] = {**tensors.get(t, {}), "dtype": int_type(FLOAT_BOUNDARY)}
            continue
        o = fmt.override()
        old = nodes.get(name)
        if old is not None:
            o = replace(o, activation={**old.activation, **o.activation}, weight={**old.weight, **o.weight})
        nodes[name] = o
    return replace(base, nodes=nodes, tensors=tensors, exclude=tuple(exclude))


# -- the search ----------------------------------------------------------------------------------------

def choose_precision(float_model: Model, base: QuantConfig, feeds: Mapping[str, np.ndarray], *,
                     accuracy: Any = None, budget: Any = None, cost_kind: str = "bops",
                     formats: Sequence[str] | str | None = None, executor: Any = None, samples: int = 16,
                     verify_samples: int = 64, cache: bool = True, skip_below: float = 1e-5,
                     show_progress: bool | None = None) -> PrecisionResult:
    """Choose each unit's format (see the module doc).

    Args:
        float_model: canonicalized, fused and calibrated (``model.calibration`` set).
        base: the config the formats start from (symmetry, per-channel, user overrides).
        feeds: calibration samples (one array per input, on its sample axis): the first
            ``samples`` measure sensitivity, the first ``verify_samples`` verify.
        accuracy: a floor (``parse_accuracy``); ignored when ``budget`` is given.
        budget: ``"bytes=N"`` / ``"bops=N"``: the most accurate assignment within it.
        cost_kind: what the floor mode minimizes, ``bops`` or ``bytes``.
        formats: candidate formats (default all of ``FORMATS``).
        executor: ``None`` / ``"local"``, ``"ray"``, ``"ray=ADDRESS"``, or an executor object.
        skip_below: a wider-activation format (W8A16) is probed only for units whose 8-bit twin
            (W8A8) damages the outputs more than this; below it the 8-bit damage stands in
            (an upper bound: same weights, finer outputs). 0 probes every one.
    """
    from qgraph import batching
    from qgraph.onnx import to_proto
    from qgraph.ort import run_ort
    from qgraph.precision import sensitivity as S
    from qgraph.precision.executor import make_executor
    from qgraph.progress import Progress, stage

    t0 = time.perf_counter()
    floor = parse_accuracy(accuracy)
    budget_spec = parse_budget(budget)
    if cost_kind not in ("bops", "bytes"):
        raise PrecisionError(f"cost '{cost_kind}': choose bops or bytes")
    fmts = _target_formats(parse_formats(formats if formats is not None else list(FORMATS)), base,
                           explicit=formats is not None)
    if float_model.calibration is None:
        raise PrecisionError("mixed precision needs a calibrated float model (run calibrate first)")
    axes = batching.model_axes(float_model)
    n = batching.sample_count(float_model, feeds)
    sens_feeds = batching.take(feeds, axes, 0, min(samples, n)) if n > samples else dict(feeds)
    ver_feeds = batching.take(feeds, axes, 0, min(verify_samples, n)) if n > verify_samples else dict(feeds)

    integer = [f for f in fmts if not f.is_float]
    with stage("precision: quantize once per format", enabled=show_progress):
        qdq = {f.name: _insert(float_model, f.config(base)) for f in integer}
    anchor = qdq.get("W8A8") or next(iter(qdq.values()))
    from qgraph.analysis.shapes import sample_shapes

    shapes = sample_shapes(float_model, sens_feeds, axes)
    units = find_units(float_model, anchor, shapes)
    if not units:
        raise PrecisionError("mixed precision: insert-qdq quantized no named node of this model")
    mixing = _range_mixing(float_model, base)
    nodes = {f: {n.name: n for n in m.graph if n.name} for f, m in qdq.items()}
    candidates: dict[str, list[str]] = {}
    effects: dict[tuple[str, str], Effect] = {}
    for u in units:
        seen: dict[tuple, str] = {}
        cands = []
        for f in integer:
            if u.name in mixing and f.activation_bits <= 8:
                continue
            if f.weight_bits < 8 and not u.macs:
                continue  # 4-bit weights pay where the weights are a conv / matmul's, not a scale vector
            node = nodes[f.name].get(u.name)
            e = effect(u, node) if node is not None else None
            if e is None or (not e.weights and not e.outputs):
                continue
            sig = (f.weight if e.weights else None, f.activation if e.outputs else None)
            if sig in seen:
                continue  # the same change as a format already listed (no weights: W4A8 is W8A8)
            seen[sig] = f.name
            cands.append(f.name)
            effects[(u.name, f.name)] = e
        cands.append(FLOAT.name)
        candidates[u.name] = cands

    # -- sensitivity ---------------------------------------------------------------------------
    ref_model = float_model
    reference = run_ort(ref_model, sens_feeds, what="the float model")
    out_axes = batching.probe_output_axes(float_model, axes)
    ex = executor if hasattr(executor, "map") else make_executor(executor)
    shared = S.Shared(to_proto(float_model).SerializeToString(), dict(sens_feeds), reference, out_axes,
                      threads=ex.threads)
    shared._model = float_model if ex.name == "local" else None
    with stage("precision: float activations at the cuts", enabled=show_progress):
        shared.cuts = S.make_cuts(float_model, sens_feeds, shapes, threads=ex.threads)
    shared.positions = {nd.name: i for i, nd in enumerate(float_model.graph) if nd.name} if shared.cuts else {}
    store = S.Cache(S.sweep_key(shared) if cache else None)
    results: dict[tuple[str, str], dict[str, float]] = {}
    bounded: dict[tuple[str, str], str] = {}  # (unit, wide format) -> the 8-bit format whose damage bounds it
    counts = {"probes": 0, "cached": 0}

    def sweep(tasks: list, label: str) -> None:
        todo = []
        for t in tasks:
            hit = store.get(t)
            if hit is not None:
                results[(t.unit.name, t.format)] = hit
                counts["cached"] += 1
            else:
                todo.append(t)
        counts["probes"] += len(todo)
        if not todo:
            return
        with Progress(f"precision: sensitivity, {label} ({ex.name})", total=len(todo), unit="probes",
                      enabled=show_progress) as bar:
            def done(k: int, r) -> None:
                t = todo[k]
                results[(t.unit.name, t.format)] = r
                store.put(t, r)
                bar.advance()

            ex.map(S.evaluate, shared, todo, done)

    def task(u: Unit, f: str) -> S.Task:
        return S.Task(u, f, effects[(u.name, f)])

    try:
        # 8-bit activations first; a wider activation is probed only where the 8-bit one hurts:
        # elsewhere its damage is bounded by the 8-bit one's (same weights, finer outputs)
        sweep([task(u, f) for u in units for f in candidates[u.name]
               if (u.name, f) in effects and FORMATS[f].activation_bits <= 8], "8-bit activations")
        wide = []
        for u in units:
            for f in candidates[u.name]:
                if (u.name, f) not in effects or FORMATS[f].activation_bits <= 8:
                    continue
                narrow = _narrow_twin(FORMATS[f], candidates[u.name])
                if narrow is not None and (u.name, narrow) in results \
                        and max(results[(u.name, narrow)].values()) <= skip_below:
                    results[(u.name, f)] = results[(u.name, narrow)]
                    bounded[(u.name, f)] = narrow
                else:
                    wide.append(task(u, f))
        sweep(wide, "wider activations")
    finally:
        store.save()
        if ex is not executor:
            ex.close()
    damage = {u.name: {f: (max(results[(u.name, f)].values()) if (u.name, f) in results else 0.0)
                       for f in candidates[u.name]} for u in units}

    # -- assignment, verified ------------------------------------------------------------------
    ver_ref = run_ort(ref_model, ver_feeds, what="the float model")
    searcher = _Search(float_model, base, units, candidates, damage, cost_kind, floor, ver_feeds, ver_ref, axes,
                       show_progress)
    if budget_spec is not None:
        best = searcher.within_budget(*budget_spec)
    else:
        best = searcher.under_floor()
    result = PrecisionResult(
        config=assignment_config(base, best.assignment, units), assignment=best.assignment, units=units,
        candidates=candidates, damage=damage, floor=floor, floor_met=best.point.ok, measured=best.point.metrics,
        points=searcher.points, cost_kind=cost_kind, budget=budget_spec, probes=counts["probes"],
        cached=counts["cached"], bounded=len(bounded), seconds=time.perf_counter() - t0, executor=ex.name,
        samples=batching.sample_count(float_model, sens_feeds), verify_samples=batching.sample_count(float_model, ver_feeds),
        range_mixing=sorted(mixing), forced_float=list(searcher.forced_float))
    return result


def _target_formats(fmts: tuple, base: QuantConfig, *, explicit: bool) -> tuple:
    """The formats the config's target runs (``QuantRules.runs``; W4A8 is not one on the HTP):
    the others are dropped from the default list, and an error where asked for by name."""
    from qgraph.passes.insert_qdq import target_rules

    rules = target_rules(base.target)
    if rules is None:
        return fmts
    bad = [f.name for f in fmts if not f.is_float and not rules.runs(f.weight, f.activation)]
    if bad and explicit:
        raise PrecisionError(f"--formats: target '{base.target}' does not run {', '.join(bad)}; it runs weights "
                             f"{', '.join(sorted(rules.weight_dtypes))} and activations "
                             f"{', '.join(sorted(rules.activation_dtypes))}")
    return tuple(f for f in fmts if f.name not in bad)


def _insert(float_model: Model, cfg: QuantConfig) -> Model:
    from qgraph.passes.insert_qdq import InsertQDQ
    from qgraph.pm import PassManager

    m = float_model.clone()
    PassManager([InsertQDQ.from_config(cfg)]).run(m)
    return m


@contextlib.contextmanager
def _native_stdout_silenced():
    """File descriptor 1 to /dev/null for the block (output written by native code; Python's
    own ``sys.stdout`` is flushed first, so nothing of ours is lost)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _narrow_twin(f: Format, names: Sequence[str]) -> str | None:
    """The candidate with ``f``'s weights and 8-bit activations (W8A16 -> W8A8), if any."""
    for n in names:
        g = FORMATS[n]
        if not g.is_float and g.weight == f.weight and g.activation_bits == 8:
            return n
    return None


def _unlowerable(qdq: Model) -> str | None:
    """The node ``lower-qdq`` refuses in ``qdq`` (by name), or None when it lowers."""
    from qgraph.passes.lower_qdq import LowerQDQ, LoweringError
    from qgraph.pm import PassManager

    try:
        PassManager([LowerQDQ()]).run(qdq.clone())
    except LoweringError as e:
        cause = e
        while cause is not None and getattr(cause, "node", None) is None:
            cause = cause.__cause__
        if cause is None:
            raise
        return cause.node
    return None


def _range_mixing(float_model: Model, base: QuantConfig) -> set[str]:
    from qgraph.verify.diagnose import check_mixed_ranges

    return {w.node for w in check_mixed_ranges(float_model, float_model.calibration, base) if w.node}


@dataclass
class _Tried:
    assignment: dict[str, str]
    point: Point


class _Search:
    """Solve for a damage (or cost) budget, build, measure; keeps every point."""

    def __init__(self, float_model, base, units, candidates, damage, cost_kind, floor, feeds, reference, axes,
                 show_progress):
        self.float_model, self.base, self.units = float_model, base, units
        self.candidates, self.damage, self.cost_kind, self.floor = candidates, damage, cost_kind, floor
        from qgraph import batching

        self.feeds, self.reference = feeds, reference
        self.out_axes = batching.probe_output_axes(float_model, axes)  # once: shape inference
        self.show_progress = show_progress
        self.points: list[Point] = []
        self._seen: dict[tuple, _Tried] = {}
        self.forced_float: list[str] = []
        self._last: dict = {}

    # -- one assignment -------------------------------------------------------------------------
    def solve(self, *, damage_budget: float | None = None, cost_budget: tuple[str, float] | None = None
              ) -> dict[str, str]:
        """The 0/1 program: min cost s.t. damage <= budget, or min damage s.t. cost <= budget."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        self._last = {"damage_budget": damage_budget, "cost_budget": cost_budget}

        keys = [(u.name, f) for u in self.units for f in self.candidates[u.name]]
        index = {k: i for i, k in enumerate(keys)}
        dmg = np.array([self.damage[u][f] for u, f in keys])
        by_unit = {u.name: u for u in self.units}
        if cost_budget is not None:
            kind, limit = cost_budget
            c_vec = np.array([cost(by_unit[u], FORMATS[f], kind) for u, f in keys])
            objective, bound_row, bound = dmg, c_vec, limit
        else:
            c_vec = np.array([cost(by_unit[u], FORMATS[f], self.cost_kind) for u, f in keys])
            objective, bound_row, bound = c_vec / max(c_vec.max(), 1.0), dmg, damage_budget
        eq = np.zeros((len(self.units), len(keys)))
        for r, u in enumerate(self.units):
            for f in self.candidates[u.name]:
                eq[r, index[(u.name, f)]] = 1.0
        constraints = [LinearConstraint(eq, 1, 1), LinearConstraint(bound_row[None, :], -np.inf, bound)]
        tie = self._class_ties(keys, index)
        if tie is not None:
            constraints.append(LinearConstraint(tie, 0, 0))
        with _native_stdout_silenced():  # HiGHS prints debug lines from C++ straight to fd 1
            res = milp(objective, integrality=np.ones(len(keys)), bounds=Bounds(0, 1), constraints=constraints,
                       options={"time_limit": 30})
        if res.x is None:
            if cost_budget is not None:
                raise PrecisionError(f"--budget {cost_budget[0]}={cost_budget[1]:g}: no assignment fits "
                                     "(the cheapest one costs more)")
            return {u.name: FLOAT.name for u in self.units}
        chosen = {}
        for u in self.units:
            best = max(self.candidates[u.name], key=lambda f: res.x[index[(u.name, f)]])
            chosen[u.name] = best
        return chosen

    def _class_ties(self, keys, index) -> np.ndarray | None:
        """Rows tying the units of one shared-scale class (``Unit.scale_class``) to one activation
        width: insert-qdq gives a class one scheme, so its members are all 8-bit or all wider (a
        float member's output is quantized at ``FLOAT_BOUNDARY`` where integer layers read it)."""
        classes: dict[str, list[str]] = {}
        for u in self.units:
            if u.scale_class:
                classes.setdefault(u.scale_class, []).append(u.name)
        rows = []
        for members in classes.values():
            first = members[0]
            for other in members[1:]:
                row = np.zeros(len(keys))
                for name, sign in ((first, 1.0), (other, -1.0)):
                    for f in self.candidates[name]:
                        if FORMATS[f].activation_bits == 8:
                            row[index[(name, f)]] += sign
                rows.append(row)
        return np.array(rows) if rows else None

    def verify(self, assignment: dict[str, str], budget: float) -> _Tried:
        key = tuple(sorted(assignment.items()))
        if key in self._seen:
            return self._seen[key]
        from qgraph.ort import run_ort

        qdq = _insert(self.float_model, assignment_config(self.base, assignment, self.units))
        blocked = _unlowerable(qdq)
        if blocked is not None and blocked in self.candidates and self.candidates[blocked] != [FLOAT.name]:
            # an integer form that cannot be lowered (an int32 accumulator that can overflow, e.g. an
            # activation x activation MatMul on 16-bit inputs): that layer stays float from now on
            self.candidates[blocked] = [FLOAT.name]
            self.forced_float.append(blocked)
            return self.verify(self.solve(**self._last), budget)
        out = run_ort(qdq, self.feeds, simulate=True, probe=self.float_model, what="the mixed-precision candidate")
        metrics = floor_metrics(self.reference, out, self.out_axes)
        ok = floor_holds(self.floor, metrics, self.reference, out)
        counts: dict[str, int] = {}
        for f in assignment.values():
            counts[f] = counts.get(f, 0) + 1
        p = Point(budget, sum(cost(u, FORMATS[assignment[u.name]], self.cost_kind) for u in self.units),
                  sum(cost(u, FORMATS[assignment[u.name]], "bytes") for u in self.units), metrics, ok, counts)
        self.points.append(p)
        tried = _Tried(assignment, p)
        self._seen[key] = tried
        return tried

    # -- the two modes ---------------------------------------------------------------------------
    def under_floor(self) -> _Tried:
        """Tighten the damage budget until the floor holds, then loosen it while it holds."""
        b = _initial_budget(self.floor)
        ok: list[_Tried] = []
        bad: list[_Tried] = []
        tried = self.verify(self.solve(damage_budget=b), b)
        step = 4.0
        if tried.point.ok:
            ok.append(tried)
            for _ in range(4):  # loosen
                b *= step
                t = self.verify(self.solve(damage_budget=b), b)
                (ok if t.point.ok else bad).append(t)
                if not t.point.ok:
                    break
        else:
            bad.append(tried)
            for _ in range(8):  # tighten
                b /= step
                t = self.verify(self.solve(damage_budget=b), b)
                (ok if t.point.ok else bad).append(t)
                if t.point.ok:
                    break
        if ok and bad:  # one bisection between the loosest that held and the tightest that did not
            lo = max(t.point.budget for t in ok)
            hi = min((t.point.budget for t in bad if t.point.budget > lo), default=None)
            if hi is not None:
                mid = math.sqrt(lo * hi)
                t = self.verify(self.solve(damage_budget=mid), mid)
                (ok if t.point.ok else bad).append(t)
        if ok:
            return min(ok, key=lambda t: (t.point.cost, -_score(t.point.metrics)))
        return max(bad, key=lambda t: _score(t.point.metrics))

    def within_budget(self, kind: str, limit: float) -> _Tried:
        return self.verify(self.solve(cost_budget=(kind, limit)), math.nan)


def _initial_budget(floor: Floor) -> float:
    if floor.metric == "sqnr":
        return 10.0 ** (-floor.value / 10.0)
    if floor.metric == "cosine":
        return max(2.0 * (1.0 - floor.value), 1e-6)
    if floor.metric == "auto":
        return 10.0 ** (-AUTO_SQNR / 10.0)
    if floor.metric == "kl":
        return max(floor.value, 1e-6)
    return 1e-2


def _score(metrics: Mapping[str, float]) -> float:
    """A higher-is-better summary for picking among points that all fail (or tie)."""
    return metrics.get("sqnr", -math.inf)


def floor_metrics(reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                  out_axes: Mapping[str, int]) -> dict[str, float]:
    """The worst output's channel SQNR, cosine and (over classifier-shaped outputs) top-1
    agreement; ``sqnr_other``: the worst channel SQNR over outputs that are not classifier-shaped.
    ``out_axes``: each output's sample axis (``batching.probe_output_axes``; default 0)."""
    from qgraph.verify.metrics import (
        channel_sqnr_db, classifier_shaped, cosine_similarity, softmax_kl, topk_agreement,
    )

    m: dict[str, float] = {"sqnr": math.inf, "cosine": 1.0}
    other = math.inf
    for k, r in reference.items():
        t = test[k]
        ax = out_axes.get(k, 0)
        s = channel_sqnr_db(r, t, ax)
        m["sqnr"] = min(m["sqnr"], s)
        m["cosine"] = min(m["cosine"], cosine_similarity(r, t))
        n = np.shape(r)[ax] if np.ndim(r) > ax else 1
        if classifier_shaped(r, n):
            m["top1"] = min(m.get("top1", 1.0), topk_agreement(r, t))
            m["kl"] = max(m.get("kl", 0.0), softmax_kl(r, t))
        else:
            other = min(other, s)
    m["sqnr_other"] = other
    return m


def floor_holds(floor: Floor, metrics: Mapping[str, float], reference, test) -> bool:
    if floor.fn is not None:
        return bool(floor.fn(reference, test))
    if floor.metric == "auto":
        return metrics.get("top1", 1.0) >= AUTO_TOP1 and metrics["sqnr_other"] >= AUTO_SQNR
    if floor.metric in ("top1", "kl") and floor.metric not in metrics:
        raise PrecisionError(f"--accuracy {floor.metric}: no output is classifier-shaped (use sqnr or cosine)")
    if floor.metric == "kl":
        return metrics["kl"] <= floor.value
    return metrics[floor.metric] >= floor.value
