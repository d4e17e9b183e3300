"""The lowering rules of ``lower-qdq``: one rewrite rule per L2 group, each building one L3 op.

A rule is a ``qgraph.rewrite.RewriteRule`` rooted at a float node whose operands are
``DequantizeLinear`` outputs and whose result goes into ``QuantizeLinear`` nodes. Its
check is a ``plan_*`` function: it only reads the graph, calls ``fail(reason)`` when the
group does not have the shape the rule lowers (the node stays float, and the rewrite
engine's tracer keeps the reason), raises ``LoweringError`` when it does but the integer op
would be wrong (an int32 accumulator that can overflow), and returns the build: a function
of the graph that inserts the integer node before the float node and rewires the
QuantizeLinear outputs to it.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from qgraph.ir import fusion, l3, op_groups, ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.l3_geometry import phase_weights, transposed_phases
from qgraph.onnx.evaluate import evaluate
from qgraph.quant.fixedpoint import fixed_point_multiplier, runtime_count_multiplier, shared_shift_multipliers
from qgraph.quant.overflow import accumulator_bounds
from qgraph.quant.params import INT32, dequantize, quantize, quantize_bias
from qgraph.rewrite import Match, NodePattern, RewriteRule, RuleSet
from qgraph.rewrite.pattern import MatchFailed

from qgraph.passes.lower_qdq_common import (LoweringError, QIn, QOut, bind_outputs, const_array,
                                            int_value, quantized_input, quantized_output, requant_attrs,
                                            requantize_node, static_shape, value_range)

ACC_BOUND = INT32.qmax  # QConv / QMatMul accumulate in int32

# the op groups lower-qdq lowers; each is a superset of the insert-qdq group it must agree with
# (qgraph.ir.op_groups)
DATA_MOVEMENT = op_groups.DATA_MOVEMENT
UNARY = op_groups.UNARY_ELEMENTWISE
SCALAR_BINARY = op_groups.SCALAR_BINARY

LOOKUP_MAX_BITS = 8

#: What a plan returns: inserts the integer node into the graph and returns it.
Build = Callable[[Graph], Node]

fail = RewriteRule.fail  # the group is not one this rule lowers: the node stays float, for this reason


def _require_out(node: Node, allow_act: bool = True) -> QOut:
    out = quantized_output(node.outputs[0], allow_act=allow_act)
    if out is None:
        fail(f"the result '{node.outputs[0].name}' is not read only by QuantizeLinear nodes")
    return out


def _require_act(node: Node, i: int) -> QIn:
    v = node.inputs[i] if i < len(node.inputs) else None
    q = quantized_input(v)
    if q is None or not q.per_tensor:
        fail(f"input {i} '{v.name if v is not None else ''}' is not a per-tensor DequantizeLinear output")
    return q


def _finish(g: Graph, node: Node, new: Node, out: QOut) -> Node:
    """Insert ``new`` before ``node`` and bind the QuantizeLinear readers to its output."""
    g.insert_before(node, new)
    bind_outputs(g, new, new.output, out.params, out.qs)
    return new


def _result(node: Node, out: QOut, op, inputs: Callable[[Graph], list], attrs: dict) -> Build:
    """The build of a one-output integer op: ``op(inputs(g))`` with ``attrs``, bound to ``out``."""
    def build(g: Graph) -> Node:
        ins = inputs(g)
        y = int_value(g, out.qs[0].outputs[0].name + "_int", out.params, out.value)
        return _finish(g, node, Node(op, ins, [y], attrs, name=node.name), out)
    return build


def _y_attrs(out: QOut) -> dict:
    return {"y_zero_point": int(out.params.zero_point), "y_qmin": out.qmin, "y_qmax": out.qmax}


def _initializer(g: Graph, hint: str, data: np.ndarray, reuse: Value | None) -> Value:
    """``reuse`` when it is an initializer already holding exactly ``data``, else a new one."""
    if reuse is not None and reuse.is_initializer():
        old = reuse.const_value.numpy()
        if old.dtype == data.dtype and old.shape == data.shape and np.array_equal(old, data):
            return reuse
    return g.add_initializer(hint, data)


def _check_acc(node: Node, lo: np.ndarray, hi: np.ndarray, what: str) -> None:
    worst_lo, worst_hi = int(np.min(lo, initial=0)), int(np.max(hi, initial=0))
    if worst_lo < INT32.qmin or worst_hi > INT32.qmax:
        raise LoweringError(
            f"{node.describe()}: the int32 accumulator of {what} can reach [{worst_lo}, {worst_hi}], beyond int32; "
            "quantize the weights or activations narrower (e.g. 8-bit) or leave this node in float", node.name)


class _Bias:
    """An int32 bias [rows] in accumulator units, to become an initializer (``value``)."""

    def __init__(self, name: str, ints: np.ndarray, reuse: Value | None = None):
        self.name, self.ints, self.reuse = name, ints, reuse

    def value(self, g: Graph) -> Value:
        return _initializer(g, self.name, self.ints, self.reuse)


def _bias(node: Node, v: Value | None, x: QIn, w_scale: np.ndarray, rows: int,
          factor: float = 1.0) -> _Bias | None:
    """The int32 bias [rows] in accumulator units ``x.scale * w_scale``.

    An int32 DequantizeLinear bias whose scale is already ``x.scale * w_scale`` is used as
    is (its initializer reused when it has the shape); anything else (float constant, other
    scale, ``factor`` != 1) is re-quantized with ``quantize_bias``.
    """
    if v is None:
        return None
    qb = quantized_input(v)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (rows,))
    if qb is not None and qb.const is not None:
        if qb.const.size not in (1, rows):
            fail(f"bias '{v.name}' has {qb.const.size} values for {rows} channels")
        acc_scale = np.asarray(x.params.scale, np.float32) * w_scale
        scale = np.broadcast_to(qb.params.scale.reshape(-1), (rows,)) if qb.params.scale.size > 1 \
            else np.full(rows, qb.params.scale, np.float32)
        if (factor == 1.0 and qb.params.dtype == INT32 and np.array_equal(scale, acc_scale)
                and not np.any(qb.params.zero_point)):
            ints = np.broadcast_to(qb.const.reshape(-1), (rows,)).astype(np.int32)
            return _Bias(f"{v.name}_int32", ints, qb.value if qb.const.shape == (rows,) else None)
        real = dequantize(qb.const, qb.params)
    else:
        real = const_array(v)
        if real is None or real.dtype.kind != "f":
            fail(f"bias '{v.name}' is neither a constant nor a DequantizeLinear of one")
        if real.size not in (1, rows):
            fail(f"bias '{v.name}' has {real.size} values for {rows} channels")
    real = np.broadcast_to(np.asarray(real, np.float64).reshape(-1), (rows,)) * factor
    ints, _ = quantize_bias(real, x.params.scale, w_scale)
    return _Bias(f"{v.name}_int32", ints.astype(np.int32))


def _explicit_pads(node: Node, x: Value, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX ``pads`` with ``auto_pad`` resolved (SAME_* needs static spatial dims)."""
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n = len(kernel)
    if auto in ("NOTSET", ""):
        return [int(p) for p in (node.attr("pads") or [0] * (2 * n))]
    if auto == "VALID":
        return [0] * (2 * n)
    shape = static_shape(x)
    if shape is None or len(shape) != n + 2 or not all(isinstance(d, int) for d in shape[2:]):
        fail(f"auto_pad={auto} needs the static spatial shape of '{x.name}'")
    begin, end = [], []
    for d, k, s, dl in zip(shape[2:], kernel, strides, dilations):
        total = max((math.ceil(d / s) - 1) * s + (k - 1) * dl + 1 - d, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


# -- QConv ------------------------------------------------------------------------------------------

def plan_conv(node: Node, model: Model) -> Build:
    """DQ(x), DQ(w) [, DQ(b)] -> Conv [-> Relu/Clip] -> Q  =>  QConv(x, w, b)."""
    x = _require_act(node, 0)
    w = quantized_input(node.inputs[1])
    if w is None or w.const is None:
        fail("the weight is not a DequantizeLinear of a constant")
    if w.const.ndim < 3 or (w.params.axis is not None and w.params.axis != 0):
        fail(f"weight '{w.value.name}' of shape {w.const.shape} is not per-tensor or per-channel on axis 0")
    out = _require_out(node)
    m_out = w.const.shape[0]
    n = w.const.ndim - 2
    kernel = [int(k) for k in (node.attr("kernel_shape") or w.const.shape[2:])]
    strides = [int(s) for s in (node.attr("strides") or [1] * n)]
    dilations = [int(d) for d in (node.attr("dilations") or [1] * n)]
    pads = _explicit_pads(node, node.inputs[0], kernel, strides, dilations)
    w_scale = np.broadcast_to(w.params.scale.reshape(-1), (m_out,)) if w.params.axis is not None \
        else np.full(m_out, w.params.scale, np.float32)
    w_zp = w.params.zero_point.reshape(-1)
    bias = _bias(node, node.inputs[2] if len(node.inputs) > 2 else None, x, w_scale, m_out)
    rows = w.const.reshape(m_out, -1)
    t = x.params.dtype  # padding reads the zero point, inside the type's range
    lo, hi = accumulator_bounds(rows, np.broadcast_to(w_zp, (m_out,)), t.qmin, t.qmax, int(x.params.zero_point),
                                bias.ints if bias is not None else None)
    _check_acc(node, lo, hi, f"weight '{node.inputs[1].name}' and input '{node.inputs[0].name}'")
    real = np.float64(x.params.scale) * w_scale.astype(np.float64) / np.float64(out.params.scale)
    if w.params.axis is None:
        real = real[:1]
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "group": int(node.attr("group", 1)),
             "kernel_shape": kernel, "x_zero_point": int(x.params.zero_point), "w_zero_point": [int(z) for z in w_zp],
             **fixed_point_multiplier(real, acc_bound=ACC_BOUND).to_attrs(), **_y_attrs(out)}

    def inputs(g: Graph) -> list:
        w_int = _initializer(g, f"{node.inputs[1].name}_int", w.const.astype(w.params.dtype.storage), w.value)
        return [x.value, w_int] + ([bias.value(g)] if bias is not None else [])
    return _result(node, out, l3.QConv, inputs, attrs)


# -- QConvTranspose ---------------------------------------------------------------------------------

def plan_conv_transpose(node: Node, model: Model) -> Build:
    """DQ(x), DQ(w) [, DQ(b)] -> ConvTranspose [-> Relu/Clip] -> Q  =>  QConvTranspose(x, w, b).

    ``w`` is ``[C, M/group, k...]``, per tensor or per channel on axis 1 (the output channel
    within a group: what insert-qdq and ONNX Runtime's quantizer write); ``auto_pad`` and
    ``output_shape`` are resolved into explicit pads as ONNX Runtime resolves them (both need
    the static spatial shape of ``x``). The int32 accumulator is bounded per stride phase:
    the weights that reach one output position (``l3_geometry.phase_weights``).
    """
    x = _require_act(node, 0)
    w = quantized_input(node.inputs[1])
    if w is None or w.const is None:
        fail("the weight is not a DequantizeLinear of a constant")
    if w.const.ndim < 3 or (w.params.axis is not None and w.params.axis != 1):
        fail(f"weight '{w.value.name}' of shape {w.const.shape} is not per-tensor or per-channel on axis 1 "
             "(the output channel)")
    out = _require_out(node)
    n = w.const.ndim - 2
    group = int(node.attr("group", 1))
    c, mg = w.const.shape[:2]
    if group < 1 or c % group:
        fail(f"group={group} does not divide the {c} input channels of weight '{w.value.name}'")
    m_out = mg * group
    kernel = [int(k) for k in (node.attr("kernel_shape") or w.const.shape[2:])]
    if kernel != list(w.const.shape[2:]):
        fail(f"kernel_shape {kernel} differs from the weight's {list(w.const.shape[2:])}")
    strides = [int(s) for s in (node.attr("strides") or [1] * n)]
    dilations = [int(d) for d in (node.attr("dilations") or [1] * n)]
    extra = [int(p) for p in (node.attr("output_padding") or [0] * n)]
    if len(strides) != n or len(dilations) != n or len(extra) != n:
        fail(f"strides / dilations / output_padding do not have {n} values")
    if min(strides + dilations) < 1 or min(extra) < 0:
        fail(f"strides {strides} / dilations {dilations} must be >= 1, output_padding {extra} >= 0")
    pads = _transposed_pads(node, node.inputs[0], kernel, strides, dilations, extra)
    # per output channel o = g * M/group + m: axis-1 parameters repeat in every group
    w_scale = np.tile(np.broadcast_to(w.params.scale.reshape(-1), (mg,)), group) if w.params.axis is not None \
        else np.full(m_out, w.params.scale, np.float32)
    w_zp = np.tile(np.broadcast_to(w.params.zero_point.reshape(-1), (mg,)), group) if w.params.axis is not None \
        else np.full(m_out, int(w.params.zero_point), np.int64)
    bias = _bias(node, node.inputs[2] if len(node.inputs) > 2 else None, x, w_scale, m_out)
    wd = (w.const.reshape((group, c // group, mg) + w.const.shape[2:])
          - w_zp.reshape((group, 1, mg) + (1,) * n)).reshape(w.const.shape)
    rows = phase_weights(wd, group, [transposed_phases(k, s, d) for k, s, d in zip(kernel, strides, dilations)])
    p_count = math.prod(strides)
    t = x.params.dtype
    phase_bias = None if bias is None else np.repeat(bias.ints.reshape(group, 1, mg), p_count, axis=1).reshape(-1)
    lo, hi = accumulator_bounds(rows.reshape(rows.shape[0], -1), np.zeros(rows.shape[0], np.int64), t.qmin, t.qmax,
                                int(x.params.zero_point), phase_bias)
    _check_acc(node, lo, hi, f"weight '{node.inputs[1].name}' and input '{node.inputs[0].name}'")
    real = np.float64(x.params.scale) * w_scale.astype(np.float64) / np.float64(out.params.scale)
    per_channel = w.params.axis is not None
    if not per_channel:
        real = real[:1]
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "output_padding": extra, "group": group,
             "kernel_shape": kernel, "x_zero_point": int(x.params.zero_point),
             "w_zero_point": [int(z) for z in (w_zp if per_channel else w_zp[:1])],
             **fixed_point_multiplier(real, acc_bound=ACC_BOUND).to_attrs(), **_y_attrs(out)}

    def inputs(g: Graph) -> list:
        w_int = _initializer(g, f"{node.inputs[1].name}_int", w.const.astype(w.params.dtype.storage), w.value)
        return [x.value, w_int] + ([bias.value(g)] if bias is not None else [])
    return _result(node, out, l3.QConvTranspose, inputs, attrs)


def _transposed_pads(node: Node, x: Value, kernel: list[int], strides: list[int], dilations: list[int],
                     extra: list[int]) -> list[int]:
    """ONNX ConvTranspose ``pads`` with ``auto_pad`` / ``output_shape`` resolved as ONNX Runtime
    does: the total padding ``(in - 1) * s + output_padding + (k - 1) * d + 1 - out`` (``out``:
    ``output_shape``, or ``in * s`` for SAME_*), the odd one at the end for SAME_UPPER and at
    the start otherwise."""
    n = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    target = node.attr("output_shape")
    if auto not in ("NOTSET", "", "VALID", "SAME_UPPER", "SAME_LOWER"):
        fail(f"unknown auto_pad '{auto}'")
    if target is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n) if auto == "VALID" else [int(p) for p in (node.attr("pads") or [0] * (2 * n))]
        if len(pads) != 2 * n or min(pads) < 0:
            fail(f"pads {pads} are not {2 * n} values >= 0")
        return pads
    shape = static_shape(x)
    if shape is None or len(shape) != n + 2 or not all(isinstance(d, int) for d in shape[2:]):
        fail(f"{'output_shape' if target is not None else 'auto_pad=' + auto} needs the static spatial shape of "
             f"'{x.name}'")
    if target is not None and len(target) != n:
        fail(f"output_shape {list(target)} does not give the {n} spatial dims")
    begin, end = [], []
    for i, (d_in, k, s, dl, e) in enumerate(zip(shape[2:], kernel, strides, dilations, extra)):
        want = int(target[i]) if target is not None else d_in * s
        total = (d_in - 1) * s + e + (k - 1) * dl + 1 - want
        if total < 0:
            fail(f"output_shape {list(target)} is larger than the full output along spatial dim {i}")
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


# -- QMatMul ----------------------------------------------------------------------------------------

def plan_matmul(node: Node, model: Model) -> Build:
    """DQ(a), DQ(b) -> MatMul [-> Relu/Clip] -> Q  =>  QMatMul(a, b) (b a weight or an activation)."""
    a = _require_act(node, 0)
    b = quantized_input(node.inputs[1])
    if b is None:
        fail(f"input 1 '{node.inputs[1].name}' is not a DequantizeLinear output")
    out = _require_out(node)
    return _qmatmul(node, a, b, out, alpha=1.0, trans_b=False, c=None, beta=1.0)


def plan_gemm(node: Node, model: Model) -> Build:
    """DQ(a), DQ(w) [, DQ(C)] -> Gemm [-> Relu/Clip] -> Q  =>  QMatMul(a, w', bias).

    ``transB`` is applied to the constant, ``alpha`` goes into the multiplier and
    ``beta * C`` into the int32 bias. ``transA`` or a C that is not a constant row stays float.
    """
    if node.attr("transA", 0):
        fail("transA=1 (the activation would need a transpose)")
    a = _require_act(node, 0)
    b = quantized_input(node.inputs[1])
    if b is None or b.const is None:
        fail("the weight is not a DequantizeLinear of a constant")
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None and const_array(c) is None and (quantized_input(c) is None or quantized_input(c).const is None):
        fail(f"C '{c.name}' is not a constant")
    out = _require_out(node)
    return _qmatmul(node, a, b, out, alpha=float(node.attr("alpha", 1.0)), trans_b=bool(node.attr("transB", 0)),
                    c=c, beta=float(node.attr("beta", 1.0)))


def _qmatmul(node: Node, a: QIn, b: QIn, out: QOut, *, alpha: float, trans_b: bool,
             c: Value | None, beta: float) -> Build:
    if alpha <= 0:
        fail(f"alpha={alpha} (a requantization multiplier must be positive)")
    bias = None
    if b.const is not None and b.const.ndim == 2:
        w, params = b.const, b.params
        axis = params.axis
        if trans_b:
            w = w.T
            axis = None if axis is None else 1 - axis
        if axis is not None and axis != 1:
            fail(f"weight '{b.value.name}' is per-channel along the reduction axis")
        k, n = w.shape
        b_scale = np.broadcast_to(params.scale.reshape(-1), (n,)) if axis is not None \
            else np.full(n, params.scale, np.float32)
        b_zp = np.broadcast_to(params.zero_point.reshape(-1), (n,)) if axis is not None \
            else np.full(n, int(params.zero_point), np.int64)
        if c is not None:
            c_data = const_array(c)
            if c_data is None:
                qc = quantized_input(c)
                c_data = dequantize(qc.const, qc.params)
            if c_data.size not in (1, n) or (c_data.ndim == 2 and c_data.shape[0] != 1) or c_data.ndim > 2:
                fail(f"C '{c.name}' of shape {c_data.shape} is not a row of {n} values")
            bias = _bias(node, c, a, b_scale, n, factor=beta / alpha)
        t = a.params.dtype
        lo, hi = accumulator_bounds(w.T, b_zp, t.qmin, t.qmax, int(a.params.zero_point),
                                    bias.ints if bias is not None else None)
        _check_acc(node, lo, hi, f"weight '{node.inputs[1].name}' and input '{node.inputs[0].name}'")
        w_ints, w_reuse = np.ascontiguousarray(w).astype(params.dtype.storage), None if trans_b else b.value
        b_zp_attr = [int(z) for z in (b_zp if axis is not None else b_zp[:1])]
        real = alpha * np.float64(a.params.scale) * b_scale.astype(np.float64) / np.float64(out.params.scale)
        if axis is None:
            real = real[:1]
    else:
        if not b.per_tensor:
            fail(f"input 1 '{node.inputs[1].name}' is quantized per channel")
        k = _reduction_size(node)
        if k is None:
            fail(f"the reduction size of '{node.inputs[0].name}' is not static, so the int32 "
                           "accumulator cannot be bounded")
        bound = k * value_range(a.params) * value_range(b.params)
        _check_acc(node, np.array([-bound]), np.array([bound]),
                   f"inputs '{node.inputs[0].name}' x '{node.inputs[1].name}'")
        w_ints = None if b.const is None else b.const.astype(b.params.dtype.storage)
        w_reuse = b.value
        b_zp_attr = [int(b.params.zero_point)]
        real = np.array([alpha * np.float64(a.params.scale) * np.float64(b.params.scale)
                         / np.float64(out.params.scale)])
    attrs = {"a_zero_point": int(a.params.zero_point), "b_zero_point": b_zp_attr,
             **fixed_point_multiplier(real, acc_bound=ACC_BOUND).to_attrs(), **_y_attrs(out)}

    def inputs(g: Graph) -> list:
        b_value = b.value if w_ints is None else _initializer(g, f"{node.inputs[1].name}_int", w_ints, w_reuse)
        return [a.value, b_value] + ([bias.value(g)] if bias is not None else [])
    return _result(node, out, l3.QMatMul, inputs, attrs)


def _reduction_size(node: Node) -> int | None:
    for v, axis in ((node.inputs[0], -1), (node.inputs[1], -2)):
        shape = static_shape(v)
        if shape is not None and len(shape) >= (2 if axis == -2 else 1) and isinstance(shape[axis], int):
            return int(shape[axis])
    return None


# -- QAdd / QMul ------------------------------------------------------------------------------------

def plan_add(node: Node, model: Model) -> Build:
    """DQ(a), DQ(b) -> Add [-> Relu/Clip] -> Q  =>  QAdd(a, b) (one rounding, shared shift)."""
    a, b = _operands(node)
    out = _require_out(node)
    bound = max(value_range(a.params), value_range(b.params))
    reals = [np.float64(a.params.scale) / np.float64(out.params.scale),
             np.float64(b.params.scale) / np.float64(out.params.scale)]
    mults, shift = shared_shift_multipliers(reals, acc_bound=bound)
    attrs = {"a_zero_point": int(a.params.zero_point), "b_zero_point": int(b.params.zero_point),
             "a_multiplier": [int(mults[0])], "b_multiplier": [int(mults[1])], "shift": [int(shift)],
             **_y_attrs(out)}
    return _result(node, out, l3.QAdd, lambda g: [a.value, _operand_value(g, node, b)], attrs)


def plan_mul(node: Node, model: Model) -> Build:
    """DQ(a), DQ(b) -> Mul [-> Relu/Clip] -> Q  =>  QMul(a, b)."""
    a, b = _operands(node)
    out = _require_out(node)
    bound = value_range(a.params) * value_range(b.params)
    real = np.float64(a.params.scale) * np.float64(b.params.scale) / np.float64(out.params.scale)
    attrs = {"a_zero_point": int(a.params.zero_point), "b_zero_point": int(b.params.zero_point),
             **requant_attrs(real, out.params, out.qmin, out.qmax, bound)}
    return _result(node, out, l3.QMul, lambda g: [a.value, _operand_value(g, node, b)], attrs)


def _operands(node: Node) -> tuple[QIn, QIn]:
    if len(node.inputs) != 2:
        fail(f"{len(node.inputs)} inputs")
    a, b = (quantized_input(v) for v in node.inputs)
    for i, q in enumerate((a, b)):
        if q is None or not q.per_tensor:
            fail(f"input {i} '{node.inputs[i].name}' is not a per-tensor DequantizeLinear output")
    if a.const is not None and b.const is None:
        fail("the constant is the first operand")  # QAdd / QMul keep a as the activation
    return a, b


def _operand_value(g: Graph, node: Node, b: QIn) -> Value:
    if b.const is None:
        return b.value
    return _initializer(g, f"{node.inputs[1].name}_int", b.const.astype(b.params.dtype.storage), b.value)


# -- pooling ----------------------------------------------------------------------------------------

def plan_average_pool(node: Node, model: Model) -> Build:
    """DQ(x) -> AveragePool -> Q  =>  QAveragePool(x), one multiplier per window size."""
    x = _require_act(node, 0)
    out = _require_out(node, allow_act=False)
    kernel = [int(k) for k in node.attr("kernel_shape")]
    n = len(kernel)
    if any(int(d) != 1 for d in (node.attr("dilations") or [1] * n)):
        fail("dilated AveragePool")
    strides = [int(s) for s in (node.attr("strides") or [1] * n)]
    pads = _explicit_pads(node, node.inputs[0], kernel, strides, [1] * n)
    taps = math.prod(kernel)
    reals = np.array([0.0] + [np.float64(x.params.scale) / (k * np.float64(out.params.scale))
                              for k in range(1, taps + 1)])
    fp = fixed_point_multiplier(reals, acc_bound=taps * value_range(x.params))
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads,
             "count_include_pad": int(node.attr("count_include_pad", 0)), "ceil_mode": int(node.attr("ceil_mode", 0)),
             "x_zero_point": int(x.params.zero_point), **fp.to_attrs(), **_y_attrs(out)}
    return _result(node, out, l3.QAveragePool, lambda g: [x.value], attrs)


def plan_global_average_pool(node: Node, model: Model) -> Build:
    """DQ(x) -> GlobalAveragePool -> Q  =>  QGlobalAveragePool(x): the size folded into the
    multiplier where the spatial shape is static, else the runtime-count form (``qgraph.ir.l3``),
    for up to ``MAX_RUNTIME_COUNT`` positions."""
    x = _require_act(node, 0)
    out = _require_out(node, allow_act=False)
    shape = static_shape(node.inputs[0])
    if shape is not None and len(shape) < 3:
        fail(f"'{node.inputs[0].name}' has rank {len(shape)}, not [N, C, spatial...]")
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        real = np.float64(x.params.scale) / np.float64(out.params.scale)
        try:
            fp = runtime_count_multiplier(real, x_bound=value_range(x.params))
        except ValueError as e:
            fail(f"the spatial shape of '{node.inputs[0].name}' is not static, and the runtime-count form "
                 f"does not fit int64: {e}")
        attrs = {"x_zero_point": int(x.params.zero_point), **fp.to_attrs(), **_y_attrs(out), "runtime_count": 1}
        return _result(node, out, l3.QGlobalAveragePool, lambda g: [x.value], attrs)
    size = math.prod(int(d) for d in shape[2:])
    real = np.float64(x.params.scale) / (size * np.float64(out.params.scale))
    attrs = {"x_zero_point": int(x.params.zero_point),
             **requant_attrs(real, out.params, out.qmin, out.qmax, size * value_range(x.params))}
    return _result(node, out, l3.QGlobalAveragePool, lambda g: [x.value], attrs)


# -- data movement ----------------------------------------------------------------------------------

def plan_data_movement(node: Node, model: Model) -> Build:
    """DQ(q) -> Reshape/Transpose/MaxPool/... -> Q  =>  the same op on q.

    Inputs of a Concat with other parameters than its output are requantized first; an
    output whose QuantizeLinear has other parameters than the input gets a Requantize.
    """
    data_idx = list(range(len(node.inputs))) if node.op is ops.Concat else [0]
    ins = []
    for i in data_idx:
        ins.append(_require_act(node, i))
    if node.op is ops.MaxPool and len(node.outputs) > 1 and node.outputs[1] is not None \
            and (node.outputs[1].has_uses() or node.outputs[1].is_graph_output()):
        fail("the MaxPool indices are read")
    live = [o for o in node.outputs if o is not None and (o.has_uses() or o.is_graph_output())]
    outs = {id(o): quantized_output(o, allow_act=False) for o in live}
    if not live or any(q is None for q in outs.values()):
        fail("a result is not read only by QuantizeLinear nodes")
    src = ins[0].params
    if node.op is ops.Concat:
        src = next(iter(outs.values())).params  # the output's: inputs are brought to it
    if node.op is ops.Gather and ins[0].const is not None:
        fail("Gather of a constant (left to constant folding)")
    if node.op is ops.Resize:
        mode = node.attr("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "nearest":
            fail(f"Resize mode '{mode}' computes new values (only nearest moves integers)")
        if any(v is not None and v.constant() is None for v in node.inputs[1:]):
            fail("Resize with roi / scales / sizes computed at run time")
    return lambda g: _move(g, node, data_idx, ins, outs, src)


def _move(g: Graph, node: Node, data_idx: list[int], ins: list[QIn], outs: dict, src) -> Node:
    new_inputs = list(node.inputs)
    made: list[Node] = []
    for i, q in zip(data_idx, ins):
        v = q.value
        if q.const is not None:
            v = _initializer(g, f"{node.inputs[i].name}_int", q.const.astype(q.params.dtype.storage), q.value)
        if node.op is ops.Concat and q.params != src:
            rq = requantize_node(g, v, q.params, src, f"{node.name or node.outputs[0].name}_requantize_{i}",
                                 node.inputs[i])
            made.append(rq)
            v = rq.output
        new_inputs[i] = v
    new_outputs = [int_value(g, f"{o.name}_int", src, o) if o is not None and id(o) in outs else None
                   for o in node.outputs]
    if node.op is ops.MaxPool:
        new_outputs = new_outputs[:1]
    new = Node(node.op, new_inputs, new_outputs, dict(node.attrs), name=node.name)
    g.insert_before(node, made + [new])
    for o, n_o in zip(node.outputs, new.outputs):
        if n_o is not None:
            bind_outputs(g, new, n_o, src, outs[id(o)].qs)
    return new


# -- Lookup -----------------------------------------------------------------------------------------

def plan_lookup(node: Node, model: Model) -> Build:
    """DQ(x) -> f [-> Relu/Clip] -> Q  =>  Lookup(x), table[q - qmin] = Q(f(DQ(q))) for every q.

    ``f`` is a unary elementwise op, or a binary one whose other operand is a one-element
    constant; ``x`` is at most 8 bits wide.
    """
    act_idx = [i for i, v in enumerate(node.inputs) if v is not None and not _is_constant(v)]
    if len(act_idx) != 1:
        fail("not exactly one non-constant operand")
    i = act_idx[0]
    x = _require_act(node, i)
    if x.params.dtype.bits > LOOKUP_MAX_BITS:
        fail(f"input '{node.inputs[i].name}' is {x.params.dtype.name}; Lookup tables take <= "
                       f"{LOOKUP_MAX_BITS}-bit inputs")
    feeds: list[np.ndarray | None] = []
    t = x.params.dtype
    qs = np.arange(t.qmin, t.qmax + 1, dtype=np.int64)
    for k, v in enumerate(node.inputs):
        if v is None:
            feeds.append(None)
        elif k == i:
            feeds.append(dequantize(qs.astype(t.storage), x.params))
        else:
            c = _constant_float(v)
            if node.op in SCALAR_BINARY and (c.size != 1 or c.ndim > 1):
                fail(f"operand '{v.name}' is not a one-element constant")
            feeds.append(c)
    out = _require_out(node)
    return _lookup(node, x, out, lambda: evaluate(node, feeds, model.opset_imports)[0], model)


def plan_activation_group(node: Node, model: Model) -> Build:
    """DQ(x) -> a marked activation group -> Q  =>  Lookup(x): the group (``x * Sigmoid(x)``, a
    decomposed hard-swish: ``qgraph.ir.fusion``) evaluated node by node on every value of an
    8-bit ``x``, then quantized once (no rounding inside the group: insert-qdq put no pair there).
    """
    form = node.metadata_props.get(fusion.ACTIVATION_GROUP_KEY)
    if form is None:
        fail("not the root of a marked activation group")
    try:  # the group's own shape; a producer-fusion mark went stale when insert-qdq quantized x
        unit = fusion.find_activation(node, form)
    except fusion.FusionRefused as e:
        fail(f"the marked {form} group no longer holds: {e.reason}")
    x = quantized_input(unit.input)
    if x is None or not x.per_tensor:
        fail(f"the group's input '{unit.input.name}' is not a per-tensor DequantizeLinear output")
    if x.params.dtype.bits > LOOKUP_MAX_BITS:
        fail(f"input '{unit.input.name}' is {x.params.dtype.name}; Lookup tables take <= {LOOKUP_MAX_BITS}-bit inputs")
    t = x.params.dtype
    qs = np.arange(t.qmin, t.qmax + 1, dtype=np.int64)
    out = _require_out(node)

    def run() -> np.ndarray:
        vals = {id(unit.input): dequantize(qs.astype(t.storage), x.params)}
        for n in unit.nodes:
            feeds = []
            for v in n.inputs:
                c = None if v is None or id(v) in vals else const_array(v)
                if v is not None and id(v) not in vals and c is None:
                    fail(f"operand '{v.name}' of {n.describe()} is neither inside the group nor a constant")
                feeds.append(None if v is None else vals[id(v)] if id(v) in vals else c)
            vals[id(n.outputs[0])] = np.asarray(evaluate(n, feeds, model.opset_imports)[0], np.float32)
        return vals[id(node.outputs[0])]

    return _lookup(node, x, out, run, model)


def _lookup(node: Node, x: QIn, out: QOut, compute: Callable[[], np.ndarray], model: Model) -> Build:
    """The Lookup of ``x`` whose table is ``compute()`` (the float op on every dequantized value
    of ``x``), through ``out``'s fused Relu / Clip, quantized to ``out``."""
    t = x.params.dtype
    try:
        y = compute()
        if out.act is not None:
            rest = [const_array(v) for v in out.act.inputs[1:]]
            y = evaluate(out.act, [np.asarray(y, np.float32)] + rest, model.opset_imports)[0]
    except MatchFailed:
        raise
    except Exception as e:  # the reference evaluator raises many kinds
        fail(f"cannot tabulate: {e}")
    y = np.asarray(y, np.float32)
    if y.shape != (t.qmax - t.qmin + 1,) or np.isnan(y).any():
        fail("the op is not elementwise on this input or gives NaN")
    table = np.clip(quantize(y, out.params).astype(np.int64), out.qmin, out.qmax)
    attrs = {"table": [int(v) for v in table], "x_qmin": int(t.qmin)}
    return _result(node, out, l3.Lookup, lambda g: [x.value], attrs)


def _is_constant(v: Value) -> bool:
    if const_array(v) is not None:
        return True
    q = quantized_input(v)
    return q is not None and q.const is not None


def _constant_float(v: Value) -> np.ndarray:
    q = quantized_input(v)
    if q is not None and q.const is not None:
        return dequantize(q.const, q.params)
    return const_array(v)


class LoweringRule(RewriteRule):
    """A ``lower-qdq`` rule: rooted at one float op (any inputs), its ``plan`` is the check.

    The rewrite rewires the QuantizeLinear readers of the root to the integer op; the float
    root and its Q / DQ nodes are left for ``remove_dead_code``.
    """

    def __init__(self, op: ops.OpId, plan: Callable[[Node, Model], Build]):
        self.pattern = NodePattern(op, [], allow_extra_inputs=True)
        self.plan = plan

    def rule_name(self) -> str:  # one rule per (plan, op): "plan_conv" -> "lower-conv"
        return self.plan.__name__.replace("plan_", "lower-").replace("_", "-")

    def check(self, m: Match) -> None:
        m.facts["build"] = self.plan(m.root, m.model)

    def rewrite(self, m: Match, b) -> list:
        m.facts["build"](b.graph)
        return list(m.root.outputs)


_PLANS = {
    ops.Conv: plan_conv,
    ops.ConvTranspose: plan_conv_transpose,
    ops.MatMul: plan_matmul,
    ops.Gemm: plan_gemm,
    ops.Add: plan_add,
    ops.Mul: plan_mul,
    ops.AveragePool: plan_average_pool,
    ops.GlobalAveragePool: plan_global_average_pool,
    **{op: plan_data_movement for op in DATA_MOVEMENT},
    **{op: plan_lookup for op in UNARY},
}

#: The rules, best first per op: a marked activation group's root (Mul, Div) and an Add / Mul
#: with a one-element constant tabulate (Lookup).
RULES = RuleSet([LoweringRule(op, plan_activation_group) for op in sorted(set(fusion.GROUP_ROOTS.values()), key=str)]
                + [LoweringRule(op, plan_lookup) for op in SCALAR_BINARY]
                + [LoweringRule(op, plan) for op, plan in _PLANS.items()])


__all__ = ["DATA_MOVEMENT", "RULES", "UNARY", "LoweringRule"]
