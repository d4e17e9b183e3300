"""Overflow analysis on the graph: the overflow facts of every weighted op of a model.

The kernel model and the integer bounds are ``qgraph.quant.overflow`` (the numerics, which
know nothing of the IR); this module reads the graph: which Conv / ConvTranspose / Gemm /
MatMul have a constant weight, their weights (float, or quantized behind a DequantizeLinear),
activation ranges and biases, and it is the pass manager's ``OverflowAnalysis``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.l2 import QDQParamsError, read_qdq
from qgraph.ir.l3_geometry import phase_weights, transposed_phases
from qgraph.pm.analysis import Analysis, AnalysisManager
from qgraph.quant.overflow import (
    INT16_MAX, INT16_MIN, NodeOverflow, OverflowScheme, accumulator_bounds, pair_sum_bounds,
)
from qgraph.quant.params import (
    INT32, IntType, QuantParams, choose_params, choose_weight_params, quantize, quantize_bias,
)

__all__ = ["NodeOverflow", "OverflowAnalysis", "OverflowScheme", "analyze_node", "overflow_report"]


# -- reading the graph ----------------------------------------------------------------------------

def _const(v: Value | None) -> np.ndarray | None:
    """The data of ``v`` when it is a constant (``Value.constant``), else None."""
    t = v.constant() if v is not None else None
    return None if t is None else t.numpy()


def _dq_params(dq: Node) -> QuantParams | None:
    """QuantParams of a DequantizeLinear whose scale and zero point are constant (``read_qdq``)."""
    try:
        return QuantParams.from_qdq(read_qdq(dq))
    except (QDQParamsError, ValueError):
        return None


def _weight(node: Node, scheme: OverflowScheme) -> tuple[np.ndarray, QuantParams] | None:
    """The integer weights and their parameters: quantized here, or read from a DequantizeLinear."""
    v = node.inputs[1]
    p = v.producer()
    if p is not None and p.op is ops.DequantizeLinear:
        q = _const(p.inputs[0])
        if q is None or q.dtype.kind not in "iuV" or q.ndim < 2:
            return None
        params = _dq_params(p)
        return (np.asarray(q).astype(np.int64), params) if params is not None else None
    w = _const(v)
    if w is None or w.dtype.kind != "f" or w.ndim < 2:
        return None
    axis = _channel_axis(node, w.ndim) if scheme.per_channel else None
    if node.op is ops.ConvTranspose and int(node.attr("group", 1)) != 1:
        axis = None  # axis 1 is the channel within a group: insert-qdq quantizes it per tensor
    params = choose_weight_params(w, scheme.weight, axis=axis, symmetric=scheme.weight_symmetric,
                                  reduce_range=scheme.reduce_range)
    return quantize(w, params).astype(np.int64), params


def _interval(ranges: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    r = ranges.get(name) if hasattr(ranges, "get") else None
    if r is None:
        return None
    lo, hi = (r.lo, r.hi) if hasattr(r, "lo") else r
    return float(lo), float(hi)


def _activation(v: Value, ranges, scale_ranges, scheme: OverflowScheme):
    """(float value name, interval or None, QuantParams) of the activation input, or a reason string."""
    p = v.producer()
    if p is not None and p.op is ops.DequantizeLinear:  # already quantized (L2): its parameters rule
        params = _dq_params(p)
        if params is None or params.axis is not None:
            return f"activation '{v.name}' has no constant per-tensor DequantizeLinear parameters"
        src = p.inputs[0].producer() if p.inputs[0] is not None else None
        name = src.inputs[0].name if src is not None and src.op is ops.QuantizeLinear else p.inputs[0].name
        return name, _interval(ranges, name) or _interval(ranges, v.name), params
    interval = _interval(ranges, v.name)
    for_scale = _interval(scale_ranges, v.name) if scale_ranges is not None else interval
    if for_scale is None:
        return f"no range for activation '{v.name}'"
    if not all(math.isfinite(b) for b in for_scale):
        return f"the range of activation '{v.name}' is unbounded [{for_scale[0]}, {for_scale[1]}]"
    params = choose_params(for_scale[0], for_scale[1], scheme.activation, symmetric=scheme.activation_symmetric)
    return v.name, interval, params


def _rows(node: Node, wq: np.ndarray, k_order: str) -> np.ndarray | None:
    """The weights as [rows, K]: one row per output channel, K in the kernel's reduction order."""
    if node.op is ops.Conv:
        if wq.ndim < 3:
            return None
        cout, cin_g = wq.shape[:2]
        w3 = wq.reshape(cout, cin_g, -1)
        return w3.transpose(0, 2, 1).reshape(cout, -1) if k_order == "mlas" else w3.reshape(cout, -1)
    if node.op is ops.Gemm:
        if wq.ndim != 2:
            return None
        return wq if node.attr("transB", 0) else wq.T
    if node.op is ops.MatMul and wq.ndim >= 2:  # batched B: one row per (batch, column)
        return np.swapaxes(wq, -1, -2).reshape(-1, wq.shape[-2])
    return None


def _channel_axis(node: Node, rank: int) -> int:
    if node.op is ops.Conv:
        return 0
    if node.op is ops.ConvTranspose:
        return 1
    if node.op is ops.Gemm:
        return 0 if node.attr("transB", 0) else 1
    return rank - 1


def _row_params(node: Node, params: QuantParams, shape: tuple[int, ...], k_order: str):
    """(scale, zero point) of every row of ``_rows``."""
    scale, zp = params.broadcast(len(shape))
    return (_rows(node, np.broadcast_to(scale, shape), k_order)[:, 0],
            _rows(node, np.broadcast_to(zp, shape), k_order)[:, 0])


def _transposed_rows(node: Node, wq: np.ndarray, wp: QuantParams, k_order: str):
    """A ConvTranspose's zero-point-shifted weights as the rows of its phase conv
    (``qgraph.ir.l3_geometry.phase_weights``: one row per output channel and stride phase, the
    taps that reach one output position), K in the kernel's order, with each row's scale and
    output channel; None when the weight does not fit the node's attributes."""
    group, n = int(node.attr("group", 1)), wq.ndim - 2
    c, mg = wq.shape[:2]
    kernel = tuple(int(k) for k in (node.attr("kernel_shape") or wq.shape[2:]))
    strides = [int(v) for v in (node.attr("strides") or [1] * n)]
    dilations = [int(v) for v in (node.attr("dilations") or [1] * n)]
    if (group < 1 or c % group or kernel != wq.shape[2:] or len(strides) != n or len(dilations) != n
            or min(strides + dilations, default=1) < 1):
        return None
    scale, zp = (np.broadcast_to(a, wq.shape) for a in wp.broadcast(wq.ndim))
    rows = phase_weights(wq - zp, group, [transposed_phases(k, s, d) for k, s, d in zip(kernel, strides, dilations)])
    if k_order == "mlas":
        rows = np.moveaxis(rows, 1, -1)
    p_count = math.prod(strides)
    channel = np.repeat(np.arange(group * mg).reshape(group, 1, mg), p_count, axis=1).reshape(-1)
    # the scale of output channel g * mg + m (axis 1 of the weight)
    out_scale = scale.reshape((group, c // group, mg, -1))[:, 0, :, 0].reshape(-1)
    return rows.reshape(rows.shape[0], -1), out_scale[channel], channel


def _bias(node: Node, act: QuantParams, rows_scale: np.ndarray, n_rows: int) -> np.ndarray | None:
    """The int32 bias per row (Conv / ConvTranspose B, Gemm C with alpha = beta = 1), or None."""
    if node.op in (ops.Conv, ops.ConvTranspose) and len(node.inputs) > 2 and node.inputs[2] is not None:
        v = node.inputs[2]
    elif (node.op is ops.Gemm and len(node.inputs) > 2 and node.inputs[2] is not None
          and node.attr("alpha", 1.0) == 1.0 and node.attr("beta", 1.0) == 1.0):
        v = node.inputs[2]
    else:
        return None
    p = v.producer()
    if p is not None and p.op is ops.DequantizeLinear:
        q = _const(p.inputs[0])
        if q is None or q.size not in (1, n_rows):
            return None
        return np.broadcast_to(q.reshape(-1), (n_rows,)).astype(np.int64)
    b = _const(v)
    if b is None or b.dtype.kind != "f" or b.size not in (1, n_rows):
        return None
    b = np.broadcast_to(b.reshape(-1), (n_rows,))
    return quantize_bias(b, act.scale, rows_scale)[0].astype(np.int64)


def _padded(node: Node) -> bool:
    return any(int(p) != 0 for p in node.attr("pads", ()) or ()) or node.attr("auto_pad", "NOTSET") not in (
        "NOTSET", b"NOTSET", "VALID", b"VALID")


def _is_depthwise(node: Node, w_shape: tuple[int, ...]) -> bool:
    group = int(node.attr("group", 1))
    return node.op is ops.Conv and w_shape[1] == 1 and w_shape[0] == group


_WEIGHTED = (ops.Conv, ops.ConvTranspose, ops.Gemm, ops.MatMul)


def _weighted_nodes(model: Model) -> Iterable[Node]:
    for n in model.graph.all_nodes():
        if n.op in _WEIGHTED and len(n.inputs) >= 2 and n.inputs[0] is not None \
                and n.inputs[1] is not None and _const(n.inputs[0]) is None:
            w = n.inputs[1]
            if _const(w) is not None or (w.producer() is not None and w.producer().op is ops.DequantizeLinear):
                yield n


def _node_key(n: Node) -> str:
    return n.name or (n.outputs[0].name if n.outputs and n.outputs[0] is not None else repr(n))


# -- the report -----------------------------------------------------------------------------------

def analyze_node(node: Node, ranges: Mapping[str, Any], scheme: OverflowScheme = OverflowScheme(),
                 scale_ranges: Mapping[str, Any] | None = None) -> NodeOverflow:
    """The overflow facts of one Conv / ConvTranspose / Gemm / MatMul with a constant weight (see
    the module doc; a ConvTranspose's rows are those of its phase conv, one per output channel
    and stride phase)."""
    key, op = _node_key(node), node.op_type
    act = _activation(node.inputs[0], ranges, scale_ranges, scheme)
    if isinstance(act, str):
        return NodeOverflow(key, op, "unknown", act, activation=node.inputs[0].name)
    name, interval, ap = act
    wv = node.inputs[1]
    got = _weight(node, scheme)
    if got is None:
        return NodeOverflow(key, op, "unknown", f"weight '{wv.name}' is not a readable constant", activation=name)
    wq, wp = got
    transposed = node.op is ops.ConvTranspose
    laid = (_transposed_rows(node, wq, wp, scheme.k_order) if transposed and wq.ndim >= 3
            else None if transposed else _rows(node, wq, scheme.k_order))
    if laid is None:
        return NodeOverflow(key, op, "unknown", f"weight '{wv.name}' of shape {wq.shape} is not a {op} weight",
                            activation=name)
    if transposed:  # rows of the phase conv, already zero-point-shifted; the bias per output channel
        w2, rows_scale, channel = laid
        rows_zp = np.zeros(w2.shape[0], np.int64)
        channel_scale = np.zeros(int(channel.max(initial=-1)) + 1, rows_scale.dtype)
        channel_scale[channel] = rows_scale
        bias = _bias(node, ap, channel_scale, channel_scale.size)
        bias = None if bias is None else bias[channel]
    else:
        w2 = laid
        rows_scale, rows_zp = _row_params(node, wp, wq.shape, scheme.k_order)
        bias = _bias(node, ap, rows_scale, w2.shape[0])
    if w2.shape[1] == 0:
        return NodeOverflow(key, op, "unknown", f"weight '{wv.name}' is empty", activation=name)

    at: IntType = ap.dtype
    zp = int(ap.zero_point)
    if interval is None:
        q_lo, q_hi = at.qmin, at.qmax  # QuantizeLinear saturates: the type's range bounds every value
    else:  # an infinite side saturates too
        q_lo, q_hi = (int(v) for v in quantize(np.array(interval, np.float32), ap))
    a_lo, a_hi = q_lo, q_hi
    if (node.op is ops.Conv and _padded(node)) or transposed:  # padding reads the zero point; a transposed
        a_lo, a_hi = min(a_lo, zp), max(a_hi, zp)               # conv's phases read it between inputs

    acc_lo, acc_hi = accumulator_bounds(w2, rows_zp, a_lo, a_hi, zp, bias)
    shift = 128 if at.signed and at.bits == 8 else 0  # s8 activations enter the u8 x s8 kernel as x + 128
    u_lo, u_hi = a_lo + shift, a_hi + shift
    raw_lo, raw_hi = accumulator_bounds(w2, np.zeros(w2.shape[0], np.int64), u_lo, u_hi, 0)
    fits32 = bool(acc_lo.min() >= INT32.qmin and acc_hi.max() <= INT32.qmax
                  and raw_lo.min() >= INT32.qmin and raw_hi.max() <= INT32.qmax)

    wt = wp.dtype
    # the pairs multiply raw weights (a weight zero point is corrected afterwards, like x's)
    pairs_apply = at.bits == 8 and wt.signed and wt.bits <= 8
    depthwise = _is_depthwise(node, wq.shape)
    p_lo, p_hi = pair_sum_bounds(w2, u_lo, u_hi)
    sat = (p_lo < INT16_MIN) | (p_hi > INT16_MAX)
    worst_hi, worst_lo = int(p_hi.max(initial=0)), int(p_lo.min(initial=0))
    pairs_exact = pairs_apply and not bool(sat.any())
    kernel = ("float" if transposed else "depthwise-int32" if depthwise and at.bits == 8
              else "u8s8-pairs" if pairs_apply else "n/a")
    return NodeOverflow(
        key, op, "ok", activation=name, interval=interval, activation_params=ap, q_range=(q_lo, q_hi),
        kernel_x_range=(u_lo, u_hi), weight_params=wp, channels=int(w2.shape[0]), reduction=int(w2.shape[1]),
        accumulator=(int(acc_lo.min()), int(acc_hi.max())), raw_accumulator=(int(raw_lo.min()), int(raw_hi.max())),
        int32_accumulator=fits32, pair_range=(worst_lo, worst_hi),
        worst_pair_sum=worst_hi if worst_hi >= -worst_lo else worst_lo,
        saturating_pairs=int(sat.sum()), saturating_channels=tuple(int(c) for c in np.flatnonzero(sat.any(axis=1))),
        avx2_u8s8_pairs=pairs_exact, kernel=kernel,
        ort_avx2_exact=kernel == "float" or fits32 and (pairs_exact if kernel == "u8s8-pairs"
                                                         else kernel == "depthwise-int32"),
    )


def overflow_report(model: Model, ranges: Mapping[str, Any], scheme: OverflowScheme = OverflowScheme(),
                    *, scale_ranges: Mapping[str, Any] | None = None) -> dict[str, NodeOverflow]:
    """Overflow facts for every Conv / ConvTranspose / Gemm / MatMul with a constant weight, by node name.

    Args:
        model: a float model (weights are quantized here as ``scheme`` says) or a QDQ model
            (weights and activation parameters are read from its DequantizeLinear nodes).
        ranges: activation intervals by value name (a ``RangeMap`` or any mapping to
            ``Interval`` / ``(lo, hi)``). They bound the values; a missing one leaves the node
            "unknown" (in a QDQ model, the type's range is used instead).
        scheme: the quantization scheme.
        scale_ranges: where the activation scales come from, when not ``ranges`` (e.g. scales
            from calibration, sound bounds from static range analysis).
    """
    return {_node_key(n): analyze_node(n, ranges, scheme, scale_ranges) for n in _weighted_nodes(model)}


class OverflowAnalysis(Analysis):
    """``overflow_report`` on ``model.calibration`` with the default scheme (nodes without a range: unknown).

    Subclass and set ``scheme`` for another scheme.
    """

    name = "overflow"
    scheme: ClassVar[OverflowScheme] = OverflowScheme()

    @classmethod
    def compute(cls, model: Model, analyses: AnalysisManager) -> dict[str, NodeOverflow]:
        return overflow_report(model, model.calibration if model.calibration is not None else {}, cls.scheme)
