"""What ``lower-qdq`` reads from an L2 graph, and how it writes L3 values.

An L2 operand is *quantized* when it is the output of a ``DequantizeLinear`` with constant
parameters: the integer tensor is that node's input (``QIn``). An L2 result is *quantized*
when every reader is a ``QuantizeLinear`` with constant per-tensor parameters, possibly
behind one Relu / Clip that the integer op absorbs into its output clip bounds (``QOut``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgraph.errors import PassError
from qgraph.ir import l3, ops
from qgraph.ir.core import Graph, Node, Value
from qgraph.ir.dtypes import from_numpy
from qgraph.ir.l2 import DEQUANTIZE, QUANTIZE, QDQParamsError, read_qdq
from qgraph.ir.types import TensorType
from qgraph.quant.fixedpoint import fixed_point_multiplier
from qgraph.quant.params import QuantParams, quantize
from qgraph.rewrite import constant_tensor


class LoweringError(PassError):
    """``lower-qdq`` met a group it must lower but cannot do so safely (names node and tensor;
    ``node``: the node's name, for callers that repair, e.g. mixed precision)."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


def const_array(v: Value | None) -> np.ndarray | None:
    """The compile-time data of ``v`` (initializer or Constant), else None."""
    t = constant_tensor(v)
    return None if t is None else np.asarray(t.numpy())


# -- quantization parameters of Q / DQ nodes ------------------------------------------------------

def read_params(node: Node) -> QuantParams:
    """The parameters of a QuantizeLinear / DequantizeLinear (``qgraph.ir.l2.read_qdq``).

    Raises:
        QDQParamsError: they are not constants, block-quantized, or not a type the
            quantization math knows (the message says which and names the node).
    """
    p = read_qdq(node)
    try:
        return QuantParams.from_qdq(p)
    except ValueError as e:
        raise QDQParamsError(f"{node.describe()}: {e}") from e


def qdq_params(node: Node) -> QuantParams | None:
    """``read_params``, or None where it raises (the node is then not quantized for lowering)."""
    try:
        return read_params(node)
    except QDQParamsError:
        return None


def value_range(p: QuantParams) -> int:
    """The largest ``|q - zero_point|`` over the type's values (a bound on one operand)."""
    t = p.dtype
    return int(max(np.max(p.zero_point) - t.qmin, t.qmax - np.min(p.zero_point)))


def static_shape(v: Value | None):
    """The shape of ``v``, looking through DequantizeLinear / QuantizeLinear to the tensor they carry."""
    for _ in range(4):
        if v is None:
            return None
        if v.shape is not None:
            return v.shape
        p = v.producer()
        if p is None or (p.op not in QUANTIZE and p.op not in DEQUANTIZE):
            return None
        v = p.inputs[0]
    return None


# -- operands and results --------------------------------------------------------------------------

@dataclass
class QIn:
    """A quantized operand: ``value`` holds integers, ``params`` says what they mean."""

    value: Value
    params: QuantParams
    dq: Node
    const: np.ndarray | None  # the integers (int64) when constant

    @property
    def per_tensor(self) -> bool:
        return self.params.axis is None


def quantized_input(v: Value | None) -> QIn | None:
    """The quantized operand behind ``v`` = DequantizeLinear(q), or None."""
    if v is None:
        return None
    dq = v.producer()
    if dq is None or dq.op not in DEQUANTIZE or dq.inputs[0] is None:
        return None
    params = qdq_params(dq)
    if params is None:
        return None
    data = const_array(dq.inputs[0])
    if data is not None:
        data = np.asarray(data).astype(np.int64)
        if params.axis is not None:
            axis = params.axis + data.ndim if params.axis < 0 else params.axis
            if not 0 <= axis < data.ndim or data.shape[axis] != params.scale.size:
                return None
            params = QuantParams(params.scale, params.zero_point, params.dtype, axis)
    elif params.axis is not None:
        return None  # per-channel activations are not lowered
    return QIn(dq.inputs[0], params, dq, data)


@dataclass
class QOut:
    """Where a float result goes: into QuantizeLinear nodes (``qs``), maybe through ``act``."""

    value: Value  # the float value the QuantizeLinear nodes read
    qs: list[Node]
    params: QuantParams  # the first QuantizeLinear's (the integer op writes these)
    act: Node | None
    qmin: int
    qmax: int


_ACTS = (ops.Relu, ops.Clip)


def quantized_output(y: Value | None, *, allow_act: bool = True) -> QOut | None:
    """The QuantizeLinear readers of ``y`` (or of one Relu / Clip reading it), or None.

    Every reader must be a QuantizeLinear with constant per-tensor parameters, and no
    float value on the way may be a graph output.
    """
    if y is None or y.is_graph_output() or not y.has_uses():
        return None
    users = y.users()
    act = None
    if allow_act and len(users) == 1 and users[0].op in _ACTS and len(y.uses()) == 1:
        act = users[0]
        if act.inputs[0] is not y or clip_bounds(act) is None:
            return None
        y = act.outputs[0]
        if y is None or y.is_graph_output() or not y.has_uses():
            return None
        users = y.users()
    if not all(u.op in QUANTIZE and u.inputs[0] is y for u in users):
        return None
    params = [qdq_params(q) for q in users]
    if any(p is None or p.axis is not None for p in params):
        return None
    p = params[0]
    qmin, qmax = p.dtype.qmin, p.dtype.qmax
    if act is not None:
        lo, hi = clip_bounds(act)
        if lo is not None:
            qmin = max(qmin, int(quantize(np.float32(lo), p)))
        if hi is not None:
            qmax = min(qmax, int(quantize(np.float32(hi), p)))
        if qmin > qmax:
            return None
    return QOut(y, users, p, act, qmin, qmax)


def clip_bounds(act: Node) -> tuple[float | None, float | None] | None:
    """(lo, hi) of a Relu (0, None) or a Clip with constant bounds; None if not constant."""
    if act.op is ops.Relu:
        return 0.0, None
    if "min" in act.attrs or "max" in act.attrs:  # opset < 11
        return act.attr("min"), act.attr("max")
    out: list[float | None] = []
    for i in (1, 2):
        v = act.inputs[i] if i < len(act.inputs) else None
        if v is None:
            out.append(None)
            continue
        a = const_array(v)
        if a is None or a.size != 1:
            return None
        out.append(float(a.reshape(-1)[0]))
    return out[0], out[1]


# -- writing L3 -------------------------------------------------------------------------------------

def int_value(g: Graph, hint: str, params: QuantParams, like: Value | None) -> Value:
    """A new integer value of ``params``' storage type with ``like``'s shape."""
    shape = static_shape(like)
    return Value(g.unique_name(hint), TensorType(from_numpy(params.dtype.storage), shape))


def take_place(g: Graph, old: Value, new: Value) -> None:
    """Make ``new`` stand for ``old`` everywhere, taking its name (graph outputs keep theirs)."""
    was_output = old.is_graph_output()
    g.replace_value(old, new)
    if not was_output and new.producer() is not None:
        name = old.name
        old.name = g.unique_name(name + "_l2")
        new.name = name


def requant_attrs(real, params: QuantParams, qmin: int, qmax: int, acc_bound: int) -> dict:
    """``multiplier`` / ``shift`` for ``real`` (1 value or per channel) and the output's y attrs."""
    fp = fixed_point_multiplier(np.atleast_1d(np.asarray(real, np.float64)), acc_bound=acc_bound)
    return {**fp.to_attrs(), "y_zero_point": int(params.zero_point), "y_qmin": int(qmin), "y_qmax": int(qmax)}


def requantize_node(g: Graph, x: Value, src: QuantParams, dst: QuantParams, name: str,
                    like: Value | None) -> Node:
    """``Requantize(x)`` from ``src`` to ``dst`` parameters (per tensor), not yet inserted."""
    real = float(np.float64(src.scale)) / float(np.float64(dst.scale))
    out = int_value(g, f"{x.name}_requant", dst, like)
    attrs = {"x_zero_point": int(src.zero_point),
             **requant_attrs(real, dst, dst.dtype.qmin, dst.dtype.qmax, value_range(src))}
    return Node(l3.Requantize, [x], [out], attrs, name=g.unique_name(name))


def bind_outputs(g: Graph, after: Node, new: Value, src: QuantParams, qs: list[Node]) -> list[Node]:
    """Make every QuantizeLinear in ``qs`` read as ``new`` (integers of ``src``).

    A QuantizeLinear with other parameters gets a ``Requantize`` of ``new``, inserted after
    ``after``; returns the Requantize nodes made.
    """
    made: list[Node] = []
    for q in qs:
        p = qdq_params(q)
        if p == src:
            take_place(g, q.outputs[0], new)
            continue
        rq = requantize_node(g, new, src, p, f"{q.name or new.name}_requantize", q.outputs[0])
        g.insert_after(made[-1] if made else after, rq)
        made.append(rq)
        take_place(g, q.outputs[0], rq.output)
    return made
