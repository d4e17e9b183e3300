"""Sound static ranges: interval propagation over the float graph, without data.

``propagate(model, input_ranges)`` walks the main graph in order and gives every value an
interval that holds every value the tensor can take when the graph inputs lie in their
declared intervals (undeclared inputs: anything). The intervals are *sound* for the
computation as ONNX Runtime does it in floating point, not only for exact arithmetic:

- every rounding is accounted for: a result of one rounding moves its bound out by a few
  units in the last place of the output type, a sum of K products (Conv, Gemm, MatMul,
  pooling) by ``(K + 2) u`` times the sum of the magnitudes of the terms that make the
  bound (the standard ``gamma_K`` bound, valid for any summation order and for FMA);
  transcendental functions (Exp, Sigmoid, Tanh, Erf, ...) by a relative and an absolute
  tolerance larger than ONNX Runtime's measured error (its Sigmoid and Tanh reach
  ``1 + 2**-23``, so their bounds do too);
- a bound beyond the largest finite value of the type becomes infinite (the op overflows);
- a NaN is no value an interval holds: it can only appear where an interval upstream is
  unbounded (an ``inf`` was possible), and such intervals say so.

Bounds are kept per element where that is cheap (numpy arrays broadcastable to the value's
shape, at most ``_CAP`` elements): a Conv gives per-output-channel bounds and the next Conv
uses them, so a channel that BatchNormalization made small stays small. Each value's
``RangeMap`` entry is the union over its elements; Conv / ConvTranspose / Gemm / MatMul
outputs and their weights also get per-channel ``ChannelIntervals``.

Intervals are tight one layer from the inputs (a Conv's bound is attained by the input that
puts every weight's sign at the matching end) but, as interval arithmetic does, they widen
geometrically with depth: each layer multiplies the width by about sum |w| over its fan-in,
while real activations cancel. On PP-OCRv4 cls (53 Convs) the last Conv's static interval is
~1e20 times its observed one. They stay useful where an op bounds its output (Sigmoid,
Softmax, HardSigmoid, Clip, Tanh, LayerNormalization) and near the inputs.

What no rule covers becomes unknown (``(-inf, inf)``) and is counted by op in
``RangeMap.meta["unknown_ops"]``. Values inside subgraphs are not analysed.

Assumptions worth stating: an initializer that is also a graph input (overridable) is
taken at its stored value unless ``input_ranges`` names it; LayerNormalization's bound
``|x - mean| / std <= sqrt(n - 1)`` assumes the variance is computed without catastrophic
cancellation (qgraph's decomposition does two passes; a one-pass E[x^2] - E[x]^2 kernel on
inputs whose mean dwarfs their spread does not honour it); an average over a count the
shapes do not give (GlobalAveragePool, ReduceMean) gets the rounding slack of 2**15 elements.
"""

from __future__ import annotations

import functools
import math
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from qgraph.calib.ranges import ChannelIntervals, Interval, RangeMap
from qgraph.errors import QGraphError
from qgraph.ir import op_groups, ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.dtypes import DType
from qgraph.pm.analysis import Analysis, AnalysisManager
from qgraph.rewrite.pattern import constant_tensor

Bounds = tuple[np.ndarray, np.ndarray]  # (lo, hi), float64, broadcastable to the value's shape

_CAP = 1 << 14  # most elements a bounds array keeps before it is reduced to per-channel
_TINY = 2.0 ** -126  # a flushed denormal: absolute slack for every rounded non-zero bound
# Transcendental ops: |ORT - exact| <= _TRANS_REL * |exact| + _TRANS_ABS (measured worst:
# Sigmoid 1.7e-7 absolute, Tanh 2.4e-7, Elu 2.7e-5 relative near 0 with 6e-8 absolute).
_TRANS_REL = 2.0 ** -18
_TRANS_ABS = 2.0 ** -21

_FLOATS = {DType.FLOAT: (2.0 ** -24, float(np.finfo(np.float32).max)),
           DType.DOUBLE: (2.0 ** -53, float(np.finfo(np.float64).max)),
           DType.FLOAT16: (2.0 ** -11, 65504.0),
           DType.BFLOAT16: (2.0 ** -8, 3.3895313892515355e38)}

# Ops the op table does not name (no pass refers to them).
_Ceil, _Floor, _Round = ops.op("Ceil"), ops.op("Floor"), ops.op("Round")
_GlobalMaxPool, _LogSoftmax = ops.op("GlobalMaxPool"), ops.op("LogSoftmax")
_ReduceMax, _ReduceMin, _Mean = ops.op("ReduceMax"), ops.op("ReduceMin"), ops.op("Mean")
_Upsample, _DepthToSpace, _SpaceToDepth = ops.op("Upsample"), ops.op("DepthToSpace"), ops.op("SpaceToDepth")
_GatherElements, _GatherND = ops.op("GatherElements"), ops.op("GatherND")


# -- numbers -------------------------------------------------------------------------------------
def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b where 0 * inf = 0 (a bound times an exact zero: every real value times 0 is 0)."""
    with np.errstate(invalid="ignore", over="ignore"):
        r = a * b
    return np.where((a == 0) | (b == 0), 0.0, r)


def _imul(a: Bounds, b: Bounds) -> Bounds:
    p = [_mul(x, y) for x in a for y in b]
    return functools.reduce(np.minimum, p), functools.reduce(np.maximum, p)


def _unknown() -> Bounds:
    return _f(-math.inf), _f(math.inf)


def _exact(a: np.ndarray) -> Bounds:
    a = _f(a)
    return a, a


def _union(*bs: Bounds) -> Bounds:
    return functools.reduce(np.minimum, [b[0] for b in bs]), functools.reduce(np.maximum, [b[1] for b in bs])


def _whole(b: Bounds) -> Bounds:
    return _f(np.min(b[0])), _f(np.max(b[1]))


def _keep(b: Bounds, axes: Sequence[int]) -> Bounds:
    """Reduce every axis not in ``axes`` (keepdims); 0-d arrays stay as they are."""
    lo, hi = b
    if lo.ndim == 0 and hi.ndim == 0:
        return b
    nd = max(lo.ndim, hi.ndim)
    lo, hi = _rank(lo, nd), _rank(hi, nd)
    drop = tuple(a for a in range(nd) if a not in {x % nd for x in axes})
    return np.min(lo, axis=drop, keepdims=True), np.max(hi, axis=drop, keepdims=True)


def _rank(a: np.ndarray, rank: int) -> np.ndarray:
    if a.ndim == 0 or a.ndim == rank:
        return a
    return a.reshape((1,) * (rank - a.ndim) + a.shape)  # callers pass rank >= a.ndim


def _vec(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Bounds array ``x`` (0-d, or 1 / n along ``axis`` and 1 elsewhere) as a length-n vector."""
    if x.ndim == 0:
        return np.full(n, float(x))
    return np.broadcast_to(x.reshape(-1), (n,))


def _axis_vec(b: Bounds, axis: int, n: int, rank: int | None) -> Bounds:
    """Bounds as length-n vectors along ``axis`` of a rank-``rank`` value (other axes reduced).

    Bounds arrays broadcast like ONNX (trailing axes aligned), so a negative axis needs no
    rank; a non-negative one does, and without it the bounds collapse to one interval.
    """
    lo, hi = b
    nd = lo.ndim
    if nd and axis >= 0 and (rank is None or nd > rank):
        lo, hi = _whole(b)
    elif nd and axis >= 0:
        lo, hi = _rank(lo, rank), _rank(hi, rank)
    elif nd and nd < -axis:  # constant along that axis
        lo, hi = _whole(b)
    if lo.ndim:
        ax = axis % lo.ndim
        if lo.shape[ax] not in (1, n):
            lo, hi = _whole((lo, hi))
        else:
            lo, hi = _keep((lo, hi), [ax])
    return _vec(lo, axis, n), _vec(hi, axis, n)


def _along(v: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A length-n vector as a rank-``rank`` array varying along ``axis``."""
    shape = [1] * rank
    shape[axis % rank] = v.shape[0]
    return v.reshape(shape)


def _out_round(b: Bounds, unit: float, k: float = 4.0, mag: Bounds | None = None) -> Bounds:
    """Move bounds out by ``k * unit`` times their magnitude (or ``mag``), plus a flushed denormal.

    A bound that is 0 with a zero magnitude stays: rounding a value of one sign keeps its sign.
    """
    lo, hi = b
    mlo, mhi = (np.abs(lo), np.abs(hi)) if mag is None else mag
    with np.errstate(invalid="ignore", over="ignore"):
        lo = lo - (k * unit * mlo + np.where(mlo > 0, _TINY, 0.0))
        hi = hi + (k * unit * mhi + np.where(mhi > 0, _TINY, 0.0))
    return lo, hi


def _trans_round(b: Bounds) -> Bounds:
    lo, hi = b
    with np.errstate(invalid="ignore", over="ignore"):
        return lo - (_TRANS_REL * np.abs(lo) + _TRANS_ABS), hi + (_TRANS_REL * np.abs(hi) + _TRANS_ABS)


def _clamp(b: Bounds, lo: float, hi: float) -> Bounds:
    return np.clip(b[0], lo, hi), np.clip(b[1], lo, hi)


# -- elementwise functions -----------------------------------------------------------------------
def _monotone(fn: Callable[[np.ndarray], np.ndarray], b: Bounds, decreasing: bool = False) -> Bounds:
    with np.errstate(all="ignore"):
        lo, hi = fn(b[0]), fn(b[1])
    return (hi, lo) if decreasing else (lo, hi)


def _unimodal(fn: Callable[[np.ndarray], np.ndarray], b: Bounds, crit: Sequence[float],
              at_neg_inf: float, at_pos_inf: float) -> Bounds:
    """Bounds of ``fn`` over [lo, hi] for a function monotone between the points ``crit``.

    ``at_neg_inf`` / ``at_pos_inf`` are its limits (the value used for an infinite end).
    """
    lo, hi = b
    with np.errstate(all="ignore"):
        f_lo = np.where(np.isneginf(lo), at_neg_inf, fn(np.where(np.isfinite(lo), lo, 0.0)))
        f_hi = np.where(np.isposinf(hi), at_pos_inf, fn(np.where(np.isfinite(hi), hi, 0.0)))
    out_lo, out_hi = np.minimum(f_lo, f_hi), np.maximum(f_lo, f_hi)
    for c in crit:
        inside = (lo < c) & (c < hi)
        fc = float(fn(np.float64(c)))
        out_lo = np.where(inside, np.minimum(out_lo, fc), out_lo)
        out_hi = np.where(inside, np.maximum(out_hi, fc), out_hi)
    return out_lo, out_hi


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _hard_sigmoid(b: Bounds, alpha: float, beta: float) -> Bounds:
    return _clamp(_monotone(lambda x: _mul(_f(alpha), x) + beta, b, decreasing=alpha < 0), 0.0, 1.0)


def _leaky(b: Bounds, slope: Bounds) -> Bounds:
    """x if x >= 0 else slope * x: the union of the non-negative part and slope times the negative part."""
    lo, hi = b
    pos = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    neg = _imul((np.minimum(lo, 0.0), np.minimum(hi, 0.0)), slope)
    both = _union(pos, neg)
    return (np.where(hi < 0, neg[0], np.where(lo >= 0, pos[0], both[0])),
            np.where(hi < 0, neg[1], np.where(lo >= 0, pos[1], both[1])))


def _text(s) -> str:
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)


# -- the propagator ------------------------------------------------------------------------------
class _Propagator:
    def __init__(self, model: Model, input_ranges: Mapping[str, Interval]):
        self.model = model
        self.graph = model.graph
        self.input_ranges = input_ranges
        self.env: dict[Value, Bounds] = {}
        self.result = RangeMap(meta={"method": "static"})
        self.unknown_ops: dict[str, int] = {}

    # -- inputs of a node ------------------------------------------------------------------------
    def const(self, v: Value | None) -> np.ndarray | None:
        t = constant_tensor(v)
        if t is None and v is not None and v.is_initializer() and v.name not in self.input_ranges:
            t = v.const_value  # overridable initializer: its stored value (see module doc)
        if t is None:
            return None
        a = t.numpy()
        return a if a.dtype.kind in "fiub" else None

    def bounds(self, v: Value | None) -> Bounds | None:
        if v is None:
            return None
        b = self.env.get(v)
        if b is None:
            if v.producer() is not None:  # not produced yet (the graph is out of order): anything
                return _unknown()
            b = self._normalize(v, self._leaf(v))
            self.env[v] = b
            self._record(v, b)
        return b

    def _leaf(self, v: Value) -> Bounds:
        """Bounds of a value no node of the main graph produces: an input, a constant, an outer value."""
        declared = self.input_ranges.get(v.name)
        if declared is not None:
            return _f(declared.lo), _f(declared.hi)
        a = self.const(v)
        if a is not None:
            return self._const_bounds(a)
        return _unknown()

    @staticmethod
    def _const_bounds(a: np.ndarray) -> Bounds:
        a = _f(a)
        if a.size == 0 or np.isnan(a).any():  # NaN is in no interval; an empty tensor has no values
            return _unknown()
        return a, a

    def rank(self, v: Value | None) -> int | None:
        return len(v.shape) if v is not None and v.shape is not None else None

    def dims(self, v: Value | None) -> list[int | None] | None:
        if v is None or v.shape is None:
            return None
        return [d if isinstance(d, int) and d >= 0 else None for d in v.shape]

    def unit(self, v: Value | None) -> float:
        d = v.dtype if v is not None else None
        return _FLOATS.get(d, _FLOATS[DType.FLOAT])[0]

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> RangeMap:
        for v in self.graph.inputs:
            self.bounds(v)
        for v in self.graph.initializers.values():
            self.bounds(v)
        for node in self.graph:
            self._node(node)
        self.result.meta["unknown_ops"] = dict(sorted(self.unknown_ops.items()))
        self.result.meta["unbounded"] = sum(1 for i in self.result.tensors.values() if not i.bounded)
        return self.result

    def _node(self, node: Node) -> None:
        outs = [o for o in node.outputs if o is not None]
        if not outs:
            return
        rule = _RULES.get(node.op)
        ins = [self.bounds(v) for v in node.inputs]
        results = None
        if rule is not None and not any(True for _ in node.subgraphs()):
            try:
                results = rule(self, node, ins)
            except (ValueError, IndexError, TypeError, KeyError) as e:  # malformed node: say which
                raise QGraphError(f"range analysis of {node.describe()} failed: {type(e).__name__}: {e}") from e
        if results is None:
            results = [None] * len(node.outputs)
            if any(_is_float(o) for o in outs):
                self.unknown_ops[str(node.op)] = self.unknown_ops.get(str(node.op), 0) + 1
        for o, b in zip(node.outputs, list(results) + [None] * len(node.outputs)):
            if o is None:
                continue
            b = self._normalize(o, b if b is not None else _unknown())
            self.env[o] = b
            self._record(o, b)

    def _normalize(self, v: Value, b: Bounds) -> Bounds:
        lo, hi = _f(b[0]), _f(b[1])
        lo = np.where(np.isnan(lo), -math.inf, lo)
        hi = np.where(np.isnan(hi), math.inf, hi)
        if v.dtype in _FLOATS or v.dtype is None:
            fmax = _FLOATS.get(v.dtype, _FLOATS[DType.FLOAT])[1]
            lo = np.where(lo < -fmax, -math.inf, np.minimum(lo, fmax))
            hi = np.where(hi > fmax, math.inf, np.maximum(hi, -fmax))
        rank = self.rank(v)
        nd = max(lo.ndim, hi.ndim)
        if nd and rank is not None and nd > rank:
            lo, hi = _whole((lo, hi))
        elif nd and rank is not None:
            lo, hi = _rank(lo, rank), _rank(hi, rank)
        if max(lo.size, hi.size) > _CAP:
            lo, hi = _keep((lo, hi), [1]) if nd >= 2 else _whole((lo, hi))
            if max(lo.size, hi.size) > _CAP:
                lo, hi = _whole((lo, hi))
        lo, hi = np.broadcast_arrays(lo, hi)
        return np.minimum(lo, hi), np.maximum(lo, hi)

    def _record(self, v: Value, b: Bounds) -> None:
        lo, hi = b
        self.result.tensors[v.name] = Interval(float(np.min(lo)), float(np.max(hi)))

    def channels(self, v: Value, axis: int, lo: np.ndarray, hi: np.ndarray) -> None:
        """Keep per-channel bounds of ``v`` (vectors along ``axis``) in the range map."""
        if v is not None and lo.ndim == 1 and lo.size > 0:
            self.result.channels[v.name] = ChannelIntervals(axis, lo.copy(), hi.copy())

    def weight_channels(self, w: Value, axis: int) -> np.ndarray | None:
        a = self.const(w)
        if a is None or a.ndim == 0 or a.size == 0 or w.name in self.result.channels:
            return a
        a64 = _f(a)
        if not np.isnan(a64).any():
            ax = axis % a.ndim
            red = tuple(i for i in range(a.ndim) if i != ax)
            self.channels(w, ax, np.min(a64, axis=red), np.max(a64, axis=red))
        return a

def _is_float(v: Value) -> bool:
    return v.dtype is None or v.dtype in _FLOATS


# -- rules: each returns the output bounds (None = unknown); _RULES below names them by op -------
def _unit(p: _Propagator, node: Node) -> float:
    return p.unit(node.outputs[0])


def _same(p, node, ins):
    return [ins[0]]  # Dropout in inference; its mask output stays unknown


def _cast(p, node, ins):
    to = node.attr("to")
    if to is None or DType(to) not in _FLOATS:
        return None
    src = node.inputs[0].dtype
    exact = src in _FLOATS and _FLOATS[DType(to)][0] <= _FLOATS[src][0]
    return [ins[0] if exact else _out_round(ins[0], _FLOATS[DType(to)][0], 1.0)]


def _relu(p, node, ins):
    return [(np.maximum(ins[0][0], 0.0), np.maximum(ins[0][1], 0.0))]


def _neg(p, node, ins):
    return [(-ins[0][1], -ins[0][0])]


def _abs(p, node, ins):
    return [_unimodal(np.abs, ins[0], [0.0], math.inf, math.inf)]


def _round_like(p, node, ins):
    fn = {_Floor: np.floor, _Ceil: np.ceil, _Round: np.round}[node.op]
    return [_monotone(fn, ins[0])]


def _clip(p, node, ins):
    x = ins[0]
    if "min" in node.attrs or "max" in node.attrs or len(ins) == 1:  # opset < 11: attributes
        mn = _exact(_f(node.attr("min", -math.inf)))
        mx = _exact(_f(node.attr("max", math.inf)))
    else:
        mn = ins[1] if len(ins) > 1 and ins[1] is not None else _exact(_f(-math.inf))
        mx = ins[2] if len(ins) > 2 and ins[2] is not None else _exact(_f(math.inf))
    # clip(x, a, b) = min(max(x, a), b) is monotone in each argument
    return [(np.minimum(np.maximum(x[0], mn[0]), mx[0]), np.minimum(np.maximum(x[1], mn[1]), mx[1]))]


def _leaky_relu(p, node, ins):
    return [_out_round(_leaky(ins[0], _exact(_f(node.attr("alpha", 0.01)))), _unit(p, node), 2.0)]


def _prelu(p, node, ins):
    return [_out_round(_leaky(ins[0], ins[1]), _unit(p, node), 2.0)]


def _sigmoid(p, node, ins):
    b = _trans_round(_monotone(lambda x: 0.5 * (1 + np.tanh(0.5 * x)), ins[0]))
    return [_clamp(b, 0.0, 1.0 + 2 * _unit(p, node))]


def _tanh(p, node, ins):
    one = 1.0 + 2 * _unit(p, node)
    return [_clamp(_trans_round(_monotone(np.tanh, ins[0])), -one, one)]


def _erf_rule(p, node, ins):
    return [_clamp(_trans_round(_monotone(_erf, ins[0])), -1.0 - 2 * _unit(p, node), 1.0 + 2 * _unit(p, node))]


def _exp(p, node, ins):
    lo, hi = _trans_round(_monotone(np.exp, ins[0]))
    return [(np.maximum(lo, 0.0), hi)]


def _softplus(p, node, ins):
    lo, hi = _trans_round(_monotone(lambda x: np.logaddexp(0.0, x), ins[0]))
    return [(np.maximum(lo, 0.0), hi)]


def _elu(p, node, ins):
    alpha = node.attr("alpha", 1.0 if node.op is ops.Elu else 1.67326319217681884765625)
    gamma = 1.0 if node.op is ops.Elu else node.attr("gamma", 1.05070102214813232421875)
    if alpha < 0 or gamma < 0:
        return None
    fn = lambda x: gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))  # noqa: E731
    return [_trans_round(_monotone(fn, ins[0]))]


def _sqrt(p, node, ins):
    lo, hi = ins[0]
    if np.any(lo < 0):
        return None  # a negative input gives NaN
    return [_out_round(_monotone(np.sqrt, ins[0]), _unit(p, node), 2.0)]


def _reciprocal(p, node, ins):
    return [_divide(_exact(_f(1.0)), ins[0], _unit(p, node))]


def _hard_sigmoid_rule(p, node, ins):
    b = _hard_sigmoid(ins[0], node.attr("alpha", 0.2), node.attr("beta", 0.5))
    return [_clamp(_out_round(b, _unit(p, node), 4.0), 0.0, 1.0)]


def _hard_swish(p, node, ins):
    fn = lambda x: x * np.clip(x / 6 + 0.5, 0.0, 1.0)  # noqa: E731
    return [_out_round(_unimodal(fn, ins[0], [-1.5], 0.0, math.inf), _unit(p, node), 4.0)]


def _gelu_rule(p, node, ins):
    approx = _text(node.attr("approximate", "none"))
    crit = -0.7524 if approx == "tanh" else -0.7517916243
    return [_trans_round(_unimodal(lambda x: _gelu(x, approx), ins[0], [crit], 0.0, math.inf))]


def _mish(p, node, ins):
    fn = lambda x: x * np.tanh(np.logaddexp(0.0, x))  # noqa: E731
    return [_trans_round(_unimodal(fn, ins[0], [-1.1924], 0.0, math.inf))]


def _softmax(p, node, ins):
    opset = p.model.opset("") or 13
    dims, axis = p.dims(node.inputs[0]), node.attr("axis", -1 if opset >= 13 else 1)
    n = None  # the size of the softmax axis (before opset 13: of the axes from `axis` on)
    if dims is not None:
        ax = axis % len(dims)
        tail = dims[ax:] if opset < 13 else [dims[ax]]
        n = math.prod(tail) if all(d is not None for d in tail) else None
    lo, hi = _whole(ins[0])
    w = float(hi - lo)
    if node.op is _LogSoftmax:
        if n is None or not math.isfinite(w):
            return [(_f(-math.inf), _f(0.0))]
        b = (_f(-(w + math.log(n))), _f(-math.log1p((n - 1) * math.exp(-w))))
        lo_, hi_ = _trans_round(b)
        return [(lo_, np.minimum(hi_, 0.0))]
    if n is None or not math.isfinite(w):
        return [(_f(0.0), _f(1.0))]
    with np.errstate(over="ignore"):
        b = (_f(1.0 / (1.0 + (n - 1) * np.exp(w))), _f(1.0 / (1.0 + (n - 1) * np.exp(-w))))
    return [_clamp(_trans_round(b), 0.0, 1.0)]


# -- binary elementwise --------------------------------------------------------------------------
def _divide(a: Bounds, b: Bounds, unit: float) -> Bounds:
    blo, bhi = b
    zero = (blo <= 0) & (bhi >= 0)
    safe_lo, safe_hi = np.where(zero, 1.0, blo), np.where(zero, 1.0, bhi)  # 1/b = [1/hi, 1/lo] off zero
    inv = (1.0 / safe_hi, 1.0 / safe_lo)
    lo, hi = _out_round(_imul(a, inv), unit, 4.0)
    return np.where(zero, -math.inf, lo), np.where(zero, math.inf, hi)


def _add(p, node, ins):
    if any(b is None for b in ins):
        return None
    lo = functools.reduce(np.add, [b[0] for b in ins])
    hi = functools.reduce(np.add, [b[1] for b in ins])
    k = 2.0 * len(ins)  # n - 1 roundings, relative to the sum of magnitudes
    mag = (functools.reduce(np.add, [np.abs(b[0]) for b in ins]), functools.reduce(np.add, [np.abs(b[1]) for b in ins]))
    with np.errstate(invalid="ignore"):
        return [_out_round((lo, hi), _unit(p, node), k, mag if len(ins) > 2 else None)]


def _mean(p, node, ins):
    if any(b is None for b in ins):
        return None
    b = _union(*ins)
    return [_out_round(b, _unit(p, node), 2.0 * len(ins) + 2)]


def _sub(p, node, ins):
    (alo, ahi), (blo, bhi) = ins
    return [_out_round((alo - bhi, ahi - blo), _unit(p, node), 4.0)]


def _mul_rule(p, node, ins):
    a, b = ins
    if node.inputs[0] is node.inputs[1]:  # x * x
        return [_out_round(_unimodal(np.square, a, [0.0], math.inf, math.inf), _unit(p, node), 4.0)]
    for x, y, xv, yv in ((a, b, node.inputs[0], node.inputs[1]), (b, a, node.inputs[1], node.inputs[0])):
        chain = _chain(yv, xv)
        if chain:  # y = g(x) elementwise: bound x * g(x) piece by piece (hard-swish, swish)
            return [_out_round(_self_product(p, x, chain), _unit(p, node), 4.0)]
    return [_out_round(_imul(a, b), _unit(p, node), 4.0)]


def _div(p, node, ins):
    return [_divide(ins[0], ins[1], _unit(p, node))]


def _max_min(p, node, ins):
    if any(b is None for b in ins):
        return None
    f = np.maximum if node.op is ops.Max else np.minimum
    return [(functools.reduce(f, [b[0] for b in ins]), functools.reduce(f, [b[1] for b in ins]))]


def _pow(p, node, ins):
    e = p.const(node.inputs[1])
    if e is None or e.size != 1:
        return None
    e = float(e.ravel()[0])
    lo, hi = ins[0]
    if e == 0:
        return [(_f(1.0), _f(1.0))]
    if e == int(e) and e > 0:
        if int(e) % 2 == 0:
            b = _unimodal(lambda x: x ** e, ins[0], [0.0], math.inf, math.inf)
        else:
            b = _monotone(lambda x: x ** e, ins[0])
        return [_trans_round(b)]
    if e > 0 and np.all(lo >= 0):
        return [_trans_round(_monotone(lambda x: x ** e, ins[0]))]
    return None


def _where(p, node, ins):
    return [_union(ins[1], ins[2])] if ins[1] is not None and ins[2] is not None else None


# -- x * g(x): a product of a value with an elementwise function of itself --------------------------
# Interval arithmetic forgets that both factors come from the same element, so x * Clip(x + 3, 0, 6)
# on [-a, b] would get [-6a, 6b]. Splitting x's interval into pieces and bounding each piece's
# product separately stays sound (every x lies in some piece) and is tight: [-2.25 - d, 6b].
_CHAIN_OPS = op_groups.CHAIN_ELEMENTWISE
_PIECES = 48


def _chain(y: Value | None, x: Value | None, depth: int = 4) -> list[Node] | None:
    """The nodes of y = g(x), from x to y, when g is a chain of elementwise ops on x alone."""
    if y is None or x is None or y is x:
        return None
    chain: list[Node] = []
    v = y
    while depth > 0:
        n = v.producer()
        if n is None or n.op not in _CHAIN_OPS or len([o for o in n.outputs if o is not None]) != 1:
            return None
        live = [u for u in n.inputs if u is not None and constant_tensor(u) is None]
        if n.op is ops.Clip:
            live = n.inputs[:1]
        if len(live) != 1:
            return None
        chain.append(n)
        if live[0] is x:
            return chain[::-1]
        v, depth = live[0], depth - 1
    return None


def _pieces(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Edges of pieces covering each [lo, hi], stacked on a new leading axis.

    A uniform (or, toward an infinite end, geometric) grid of _PIECES pieces, refined by a
    fine geometric grid around 0, where activations bend.
    """
    base = _grid(lo, hi)
    fine = np.clip(_FINE.reshape((-1,) + (1,) * lo.ndim), lo, hi)
    return np.sort(np.concatenate([base, fine], axis=0), axis=0)


_FINE = np.concatenate([-(2.0 ** np.arange(20, -4, -0.125)), [0.0], 2.0 ** np.arange(-4, 20, 0.125)])


def _grid(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    t = np.linspace(0.0, 1.0, _PIECES + 1).reshape((-1,) + (1,) * lo.ndim)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = lo + (hi - lo) * t
    geo = np.geomspace(2.0 ** -6, 2.0 ** 24, _PIECES - 1)
    up = np.concatenate([[0.0], geo, [math.inf]]).reshape(t.shape)  # [lo, inf)
    half = np.geomspace(2.0 ** -6, 2.0 ** 24, _PIECES // 2 - 1)
    both = np.concatenate([[-math.inf], -half[::-1], [0.0], half, [math.inf]]).reshape(t.shape)
    with np.errstate(invalid="ignore"):
        edges = np.where(np.isfinite(lo) & np.isfinite(hi), finite,
                         np.where(np.isfinite(lo), lo + up,
                                  np.where(np.isfinite(hi), hi - up[::-1], both)))
    return edges


def _self_product(p: _Propagator, x: Bounds, chain: list[Node]) -> Bounds:
    # the pieces' axis leads every other: give x the largest rank any operand of the chain has
    rank = max([x[0].ndim] + [p.bounds(u)[0].ndim for n in chain for u in n.inputs if u is not None])
    lo, hi = _rank(x[0], rank), _rank(x[1], rank)
    edges = _pieces(lo, hi)
    piece = (edges[:-1], edges[1:])
    g = piece
    for n in chain:  # the chain's rules on the pieces (elementwise: the extra leading axis broadcasts)
        ins = [g if (u is not None and constant_tensor(u) is None and (n.op is not ops.Clip or k == 0))
               else p.bounds(u) for k, u in enumerate(n.inputs)]
        out = _RULES[n.op](p, n, ins)
        if out is None or out[0] is None:
            return _imul(x, p.bounds(chain[-1].outputs[0]))
        g = out[0]
    plo, phi = _imul(piece, g)
    return np.min(plo, axis=0), np.max(phi, axis=0)


# -- linear ops: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization ----------------------------
def _dot(wp: np.ndarray, wn: np.ndarray, xlo: np.ndarray, xhi: np.ndarray, k_terms: int, unit: float,
         bias: Bounds | None = None) -> Bounds:
    """Bounds of bias[o] + sum_j w[o, j] x[o, j] over x[o, j] in [xlo, xhi], rounding included.

    ``wp`` / ``wn`` are the sums of the positive / negative weight parts per (o, j) (a Conv
    sums its kernel taps into them: one input channel has one interval). The rounding slack
    of each side uses the magnitudes of the terms that make that side: with
    |fl(sum t) - sum t| <= K u sum |t| for any order of the sum (the bias first or last, an
    extra scaling by alpha) and t = t_max - d (d >= 0), fl(sum t) <= sum t_max + K u sum |t_max|,
    finite even where the other side is not.
    """
    hi = np.sum(_mul(wp, xhi) + _mul(wn, xlo), axis=-1)
    lo = np.sum(_mul(wp, xlo) + _mul(wn, xhi), axis=-1)
    mhi = np.sum(_mul(wp, np.abs(xhi)) + _mul(-wn, np.abs(xlo)), axis=-1)
    mlo = np.sum(_mul(wp, np.abs(xlo)) + _mul(-wn, np.abs(xhi)), axis=-1)
    if bias is not None:
        lo, hi = lo + bias[0], hi + bias[1]
        mlo, mhi = mlo + np.abs(bias[0]), mhi + np.abs(bias[1])
    return _out_round((lo, hi), unit, 2.0 * (k_terms + 3), (mlo, mhi))


def _with_bias(b: Bounds, bias: Bounds | None, unit: float) -> Bounds:
    """``b`` + ``bias`` where ``b`` is already a rounded sum (the interval-only fallbacks)."""
    if bias is None:
        return b
    mag = (np.abs(b[0]) + np.abs(bias[0]), np.abs(b[1]) + np.abs(bias[1]))
    return _out_round((b[0] + bias[0], b[1] + bias[1]), unit, 4.0, mag)


def _generic_dot(x: Bounds, w: Bounds, k_terms: int | None, unit: float) -> Bounds | None:
    """Every output sums K products of an x and a w, both only known by their intervals."""
    if k_terms is None:
        return None
    t = _imul(_whole(x), _whole(w))
    return _out_round((t[0] * k_terms, t[1] * k_terms), unit, 2.0 * (k_terms + 2))


def _pads_zeros(node: Node) -> bool:
    auto = _text(node.attr("auto_pad", "NOTSET"))
    return auto in ("SAME_UPPER", "SAME_LOWER") or any(int(q) != 0 for q in node.attr("pads", ()) or ())


def _conv(p, node, ins):
    wv = node.inputs[1]
    bias_v = node.inputs[2] if len(node.inputs) > 2 else None
    transpose = node.op is ops.ConvTranspose
    unit = _unit(p, node)
    w = p.weight_channels(wv, 1 if transpose else 0)
    bias = p.bounds(bias_v) if bias_v is not None else None
    if w is None or w.ndim < 3:
        wdims = p.dims(wv)
        k = math.prod(wdims[1:]) if wdims and all(d is not None for d in wdims[1:]) else None
        if transpose and wdims and all(d is not None for d in wdims):
            k = wdims[0] * math.prod(wdims[2:])  # every input channel of a group could reach an output
        out = _generic_dot(_hull0(ins[0]), ins[1], k, unit)
        return [_with_bias(_whole(out), _whole(bias) if bias else None, unit)] if out is not None else None
    group = int(node.attr("group", 1))
    w = _f(w)
    if transpose:  # [C, O/g, k...] -> [O, C/g, k...]
        c, og = w.shape[0], w.shape[1]
        k = w.shape[2:]
        w = w.reshape((group, c // group, og) + k).swapaxes(1, 2).reshape((group * og, c // group) + k)
    o_ch, cg = w.shape[0], w.shape[1]
    red = tuple(range(2, w.ndim))
    wp, wn = np.sum(np.maximum(w, 0), axis=red), np.sum(np.minimum(w, 0), axis=red)
    xlo, xhi = _axis_vec(ins[0], 1, cg * group, w.ndim)
    if transpose or _pads_zeros(node):  # a zero from padding (or a tap that reaches no input) is a term too
        xlo, xhi = np.minimum(xlo, 0.0), np.maximum(xhi, 0.0)
    gidx = (np.arange(o_ch) // (o_ch // group))[:, None] * cg + np.arange(cg)[None, :]
    bias = _axis_vec(bias, -1, o_ch, None) if bias is not None else None
    lo, hi = _dot(wp, wn, xlo[gidx], xhi[gidx], cg * math.prod(w.shape[2:]), unit, bias)
    lo, hi = np.broadcast_to(lo, (o_ch,)), np.broadcast_to(hi, (o_ch,))
    p.channels(node.outputs[0], 1, lo, hi)
    return [(_along(lo, 1, w.ndim), _along(hi, 1, w.ndim))]


def _hull0(b: Bounds) -> Bounds:
    return np.minimum(b[0], 0.0), np.maximum(b[1], 0.0)


def _gemm(p, node, ins):
    a_v, b_v = node.inputs[0], node.inputs[1]
    c_v = node.inputs[2] if len(node.inputs) > 2 else None
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    unit = _unit(p, node)
    w = p.weight_channels(b_v, 0 if tb else 1)
    if w is None or w.ndim != 2:
        bd, ad = p.dims(b_v), p.dims(a_v)
        k = (bd[1 if tb else 0] if bd else None) or (ad[0 if ta else 1] if ad else None)
        out = _generic_dot(ins[0], ins[1], k, unit)
        if out is None:
            return None
    c = None
    if c_v is not None and ins[2] is not None and beta != 0:  # beta * C, per column
        c = _keep(ins[2], [-1]) if ins[2][0].ndim >= 2 else ins[2]
        c = _imul((c[0].reshape(-1) if c[0].ndim else c[0], c[1].reshape(-1) if c[1].ndim else c[1]),
                  _exact(_f(beta)))
    if w is None or w.ndim != 2:
        out = _with_bias(_imul(out, _exact(_f(alpha))), c, unit)
    else:
        wt = _f(w).T * alpha if tb else _f(w) * alpha  # [K, N], alpha folded in (one more rounding)
        k, n = wt.shape
        alo, ahi = _axis_vec(ins[0], 0 if ta else 1, k, 2)
        out = _dot(np.maximum(wt, 0).T, np.minimum(wt, 0).T, alo[None, :], ahi[None, :], k + 1, unit, c)
    lo, hi = out
    if lo.ndim == 1:
        p.channels(node.outputs[0], 1, np.broadcast_to(lo, hi.shape).copy(), hi)
        return [(lo[None, :], hi[None, :])]
    return [out]


def _matmul(p, node, ins):
    a_v, b_v = node.inputs
    unit = _unit(p, node)
    out_rank = p.rank(node.outputs[0])
    w = p.const(b_v)
    if out_rank is None and w is not None and w.ndim >= 2 and p.rank(a_v) is not None:
        out_rank = max(p.rank(a_v), w.ndim) if p.rank(a_v) >= 2 else w.ndim - 1
    if w is not None and w.ndim >= 2:
        p.weight_channels(b_v, -1)
        w = _f(w)
        k, n = w.shape[-2], w.shape[-1]
        alo, ahi = _axis_vec(ins[0], -1, k, None)
        wt = np.swapaxes(w, -1, -2).reshape(-1, n, k)  # batches of [N, K]
        lo, hi = _dot(np.maximum(wt, 0), np.minimum(wt, 0), alo, ahi, k, unit)  # [batch, N]
        lo, hi = np.min(lo, axis=0), np.max(hi, axis=0)
        p.channels(node.outputs[0], -1 if out_rank is None else out_rank - 1, lo, hi)
        if out_rank is None or out_rank < 1:
            return [_whole((lo, hi))]
        return [(_along(lo, -1, out_rank), _along(hi, -1, out_rank))]
    ad, bd = p.dims(a_v), p.dims(b_v)
    k = (ad[-1] if ad else None) or (bd[-2] if bd and len(bd) >= 2 else (bd[0] if bd else None))
    return [_generic_dot(ins[0], ins[1], k, unit)] if k else None


def _batch_norm(p, node, ins):
    if int(node.attr("training_mode", 0)) or len(node.inputs) < 5:
        return None
    consts = [p.const(v) for v in node.inputs[1:5]]
    if any(c is None for c in consts):
        return None
    scale, b, mean, var = (_f(c).reshape(-1) for c in consts)
    a = scale / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    shift = b - mean * a
    c = a.shape[0]
    x = node.inputs[0]
    rank = p.rank(x) or p.rank(node.outputs[0])
    xlo, xhi = _axis_vec(ins[0], 1, c, rank)
    lo, hi = _imul((xlo, xhi), _exact(a))
    mag = _mul(np.abs(a), np.maximum(np.abs(xlo), np.abs(xhi))) + np.abs(mean * a) + np.abs(b)
    lo, hi = _out_round((lo + shift, hi + shift), _unit(p, node), 16.0, (mag, mag))
    if not rank:  # the channel axis cannot be placed
        return [_whole((lo, hi))]
    return [(_along(lo, 1, rank), _along(hi, 1, rank))]


def _layer_norm(p, node, ins):
    x = node.inputs[0]
    dims = p.dims(x)
    axis, eps = int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5))
    z = math.inf
    if dims is not None:
        tail = dims[axis % len(dims):]
        if all(d is not None for d in tail):
            z = math.sqrt(max(math.prod(tail) - 1, 0))
    lo, hi = _whole(ins[0])
    if math.isfinite(float(hi - lo)) and eps > 0:
        z = min(z, float(hi - lo) / math.sqrt(eps))
    z *= 1 + 2.0 ** -10  # rounding in the mean and variance (see the module doc)
    y = _imul((_f(-z), _f(z)), ins[1]) if len(ins) > 1 and ins[1] is not None else (_f(-z), _f(z))
    if len(ins) > 2 and ins[2] is not None:
        y = (y[0] + ins[2][0], y[1] + ins[2][1])
    outs = [_out_round(y, _unit(p, node), 8.0)]
    if len(node.outputs) > 1:
        outs.append(_whole(ins[0]))  # Mean
    if len(node.outputs) > 2:
        outs.append((_f(0.0), _f(1.0 / math.sqrt(eps) if eps > 0 else math.inf) * (1 + 2.0 ** -10)))
    return outs


# -- data movement and pooling -------------------------------------------------------------------
def _union_of_input(p, node, ins):
    return [_whole(ins[0])]


def _transpose(p, node, ins):
    lo, hi = ins[0]
    nd = max(lo.ndim, hi.ndim)
    rank = p.rank(node.inputs[0])
    if nd == 0:
        return [ins[0]]
    if rank != nd:
        return [_whole(ins[0])]
    perm = node.attr("perm") or tuple(range(nd))[::-1]
    return [(np.transpose(_rank(lo, nd), perm), np.transpose(_rank(hi, nd), perm))]


def _axes(p: _Propagator, node: Node, index: int = 1) -> list[int] | None:
    """A node's ``axes`` (attribute, or the constant input at ``index`` from opset 13)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attr("axes")]
    if len(node.inputs) > index and node.inputs[index] is not None:
        a = p.const(node.inputs[index])
        return [int(v) for v in a.ravel()] if a is not None else None
    return []


def _unsqueeze(p, node, ins):
    lo, hi = ins[0]
    axes, rank = _axes(p, node), p.rank(node.inputs[0])
    if max(lo.ndim, hi.ndim) == 0:
        return [ins[0]]
    if axes is None or rank is None or rank != max(lo.ndim, hi.ndim):
        return [_whole(ins[0])]
    out_rank = rank + len(axes)
    axes = sorted(a % out_rank for a in axes)
    return [(np.expand_dims(_rank(lo, rank), axes), np.expand_dims(_rank(hi, rank), axes))]


def _squeeze(p, node, ins):
    lo, hi = ins[0]
    axes, rank = _axes(p, node), p.rank(node.inputs[0])
    nd = max(lo.ndim, hi.ndim)
    if nd == 0:
        return [ins[0]]
    if not axes or rank is None or rank != nd:
        return [_whole(ins[0])]
    axes = tuple(a % rank for a in axes)
    lo, hi = _keep((lo, hi), [a for a in range(nd) if a not in axes])
    return [(np.squeeze(lo, axes), np.squeeze(hi, axes))]


def _slice(p, node, ins):
    lo, hi = ins[0]
    nd = max(lo.ndim, hi.ndim)
    if nd == 0:
        return [ins[0]]
    rank = p.rank(node.inputs[0])
    if "starts" in node.attrs:
        axes = node.attr("axes")
        axes = list(axes) if axes is not None else list(range(rank or nd))
    else:
        axes = _axes(p, node, 3)
        if axes == [] and len(node.inputs) > 1:
            axes = list(range(rank or nd))
    if axes is None or rank != nd:
        return [_whole(ins[0])]
    sliced = {a % nd for a in axes}
    return [_keep((lo, hi), [a for a in range(nd) if a not in sliced])]


def _split(p, node, ins):
    lo, hi = ins[0]
    nd = max(lo.ndim, hi.ndim)
    axis = int(node.attr("axis", 0))
    b = _keep(ins[0], [a for a in range(nd) if a != axis % nd]) if nd else ins[0]
    return [b] * len(node.outputs)


def _concat(p, node, ins):
    if any(b is None for b in ins):
        return None
    axis = int(node.attr("axis", 0))
    rank = p.rank(node.outputs[0]) or next((p.rank(v) for v in node.inputs if p.rank(v)), None)
    if rank is not None and all(max(b[0].ndim, b[1].ndim) in (0, rank) for b in ins):
        ax = axis % rank
        parts_lo, parts_hi = [], []
        for v, (lo, hi) in zip(node.inputs, ins):
            d = (p.dims(v) or [None] * rank)[ax]
            if d is None:
                break
            lo, hi = _keep((_rank(lo, rank) if lo.ndim else lo.reshape((1,) * rank),
                            _rank(hi, rank) if hi.ndim else hi.reshape((1,) * rank)), [ax])
            parts_lo.append(np.repeat(lo, d, axis=ax) if lo.shape[ax] == 1 else lo)
            parts_hi.append(np.repeat(hi, d, axis=ax) if hi.shape[ax] == 1 else hi)
        else:
            return [(np.concatenate(parts_lo, axis=ax), np.concatenate(parts_hi, axis=ax))]
    return [_union(*[_whole(b) for b in ins])]


def _pad(p, node, ins):
    mode = _text(node.attr("mode", "constant"))
    b = _whole(ins[0])
    if mode != "constant":
        return [b]
    if "pads" in node.attrs or "paddings" in node.attrs:
        value = _f(node.attr("value", 0.0))
    else:
        c = p.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
        if c is None:
            return None
        value = _f(c.ravel()[0]) if c.size else _f(0.0)
    return [_union(b, _exact(value))]


def _resize(p, node, ins):
    mode = _text(node.attr("mode", "nearest"))
    if mode == "nearest":
        return [_keep(ins[0], [0, 1])]
    if mode in ("linear", "bilinear"):  # convex combinations of inputs
        if _text(node.attr("coordinate_transformation_mode", "")) == "tf_crop_and_resize":
            return [_out_round(_union(_whole(ins[0]), _exact(_f(node.attr("extrapolation_value", 0.0)))),
                               _unit(p, node), 8.0)]
        return [_out_round(_keep(ins[0], [0, 1]), _unit(p, node), 8.0)]
    return None  # cubic overshoots


def _spatial_count(p: _Propagator, v: Value) -> int | None:
    dims = p.dims(v)
    return math.prod(dims[2:]) if dims is not None and all(d is not None for d in dims[2:]) else None


def _max_pool(p, node, ins):
    return [_keep(ins[0], [0, 1])]  # MaxPool pads with -inf, which never wins; its Indices stay unknown


def _avg_pool(p, node, ins):
    b = _keep(ins[0], [0, 1])
    if node.op is ops.AveragePool:
        if int(node.attr("count_include_pad", 0)) and _pads_zeros(node):
            b = _hull0(b)
        k = math.prod(node.attr("kernel_shape", ()) or (1,))
    else:
        k = _spatial_count(p, node.inputs[0])
    return [_out_round(b, _unit(p, node), 2.0 * (k + 2) if k else 2.0 ** 16)]


def _reduce_mean(p, node, ins):
    return _reduce(p, node, ins, 1)


def _reduce_extreme(p, node, ins):
    return _reduce(p, node, ins, 0)


def _reduce(p: _Propagator, node: Node, ins, mean: int):
    lo, hi = ins[0]
    nd, rank = lo.ndim, p.rank(node.inputs[0])
    axes = _axes(p, node)
    if axes == [] and int(node.attr("noop_with_empty_axes", 0)):
        return [ins[0]]
    count = None
    if axes is None or rank is None or (nd and nd != rank):
        b = _whole(ins[0])
    else:
        axes = sorted({a % rank for a in axes}) if axes else list(range(rank))
        b = ins[0]
        if nd:
            b = _keep(b, [a for a in range(rank) if a not in axes])
            if not int(node.attr("keepdims", 1)):
                b = (np.squeeze(b[0], tuple(axes)), np.squeeze(b[1], tuple(axes)))
        dims = p.dims(node.inputs[0])
        if all(dims[a] is not None for a in axes):
            count = math.prod(dims[a] for a in axes)
    if mean:  # a sum of `count` roundings, then a division
        b = _out_round(b, _unit(p, node), 2.0 * (count + 2) if count else 2.0 ** 16)
    return [b]


# -- constants -----------------------------------------------------------------------------------
def _constant(p, node, ins):
    for key, a in node.attrs.items():
        if key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            data = a.value.numpy() if key == "value" else np.asarray(a.value, np.float64)
            return [p._const_bounds(data)] if data.dtype.kind in "fiub" else None
    return None


def _constant_of_shape(p, node, ins):
    v = node.attr("value")
    return [p._const_bounds(v.numpy().ravel()[:1])] if v is not None else [(_f(0.0), _f(0.0))]


# -- the rule table: op -> rule(propagator, node, input bounds) -> output bounds (None: unknown) --
Rule = Callable[[_Propagator, Node, list], Optional[Sequence[Optional[Bounds]]]]
_RULES: Mapping[ops.OpId, Rule] = MappingProxyType({
    ops.Identity: _same, ops.Dropout: _same,
    ops.Cast: _cast,
    ops.Relu: _relu,
    ops.Neg: _neg,
    ops.Abs: _abs,
    _Floor: _round_like, _Ceil: _round_like, _Round: _round_like,
    ops.Clip: _clip,
    ops.LeakyRelu: _leaky_relu,
    ops.PRelu: _prelu,
    ops.Sigmoid: _sigmoid,
    ops.Tanh: _tanh,
    ops.Erf: _erf_rule,
    ops.Exp: _exp,
    ops.Softplus: _softplus,
    ops.Elu: _elu, ops.Selu: _elu,
    ops.Sqrt: _sqrt,
    ops.Reciprocal: _reciprocal,
    ops.HardSigmoid: _hard_sigmoid_rule,
    ops.HardSwish: _hard_swish, ops.QGraphHardSwish: _hard_swish,
    ops.Gelu: _gelu_rule, ops.QGraphGelu: _gelu_rule,
    ops.Mish: _mish,
    ops.Softmax: _softmax, _LogSoftmax: _softmax,
    ops.Add: _add, ops.Sum: _add,
    _Mean: _mean,
    ops.Sub: _sub,
    ops.Mul: _mul_rule,
    ops.Div: _div,
    ops.Max: _max_min, ops.Min: _max_min,
    ops.Pow: _pow,
    ops.Where: _where,
    ops.Conv: _conv, ops.ConvTranspose: _conv,
    ops.Gemm: _gemm,
    ops.MatMul: _matmul,
    ops.BatchNormalization: _batch_norm,
    ops.LayerNormalization: _layer_norm, ops.QGraphLayerNormalization: _layer_norm,
    ops.Reshape: _union_of_input, ops.Flatten: _union_of_input, ops.Expand: _union_of_input,
    ops.Tile: _union_of_input, ops.Gather: _union_of_input, _GatherElements: _union_of_input,
    _GatherND: _union_of_input, _DepthToSpace: _union_of_input, _SpaceToDepth: _union_of_input,
    ops.Transpose: _transpose,
    ops.Unsqueeze: _unsqueeze,
    ops.Squeeze: _squeeze,
    ops.Slice: _slice,
    ops.Split: _split,
    ops.Concat: _concat,
    ops.Pad: _pad,
    ops.Resize: _resize, _Upsample: _resize,
    ops.MaxPool: _max_pool, _GlobalMaxPool: _max_pool,
    ops.AveragePool: _avg_pool, ops.GlobalAveragePool: _avg_pool,
    ops.ReduceMean: _reduce_mean, _ReduceMax: _reduce_extreme, _ReduceMin: _reduce_extreme,
    ops.Constant: _constant,
    ops.ConstantOfShape: _constant_of_shape,
})


# -- entry points --------------------------------------------------------------------------------
def propagate(model: Model, input_ranges: Mapping[str, Interval] | None = None) -> RangeMap:
    """Sound intervals for every value of ``model``'s main graph.

    Args:
        model: the model (not modified).
        input_ranges: declared intervals by graph input name; an input not named can take
            any value.

    Returns:
        A ``RangeMap``: ``tensors`` for every value (inputs, initializers, node outputs),
        ``channels`` for weights of Conv / ConvTranspose / Gemm / MatMul (output-channel
        axis) and for those ops' outputs, ``meta["unknown_ops"]`` (op -> nodes no rule
        covers) and ``meta["unbounded"]`` (values with an infinite side).
    """
    ranges = dict(input_ranges or {})
    for name, iv in ranges.items():
        if not isinstance(iv, Interval):
            raise QGraphError(f"input range of '{name}' must be a qgraph.calib.Interval, got {iv!r}")
    return _Propagator(model, ranges).run()


class RangeAnalysis(Analysis):
    """Static intervals (``propagate`` over ``model.input_ranges``), narrowed by calibration.

    Where ``model.calibration`` has a tensor, its observed interval is intersected with the
    static one: the narrower observation wins, but never outside a sound static bound.
    """

    name = "ranges"

    @classmethod
    def compute(cls, model: Model, analyses: AnalysisManager) -> RangeMap:
        ranges = propagate(model, model.input_ranges)
        calib = model.calibration
        narrowed = 0
        if calib is not None:
            for name, observed in getattr(calib, "tensors", calib).items():
                static = ranges.tensors.get(name)
                if static is not None:
                    ranges.tensors[name] = static.intersect(observed)
                    narrowed += 1
        ranges.meta["calibrated"] = narrowed
        return ranges


__all__ = ["RangeAnalysis", "propagate"]
