"""upgrade-opset: raise the default-domain opset, rewriting ops whose form changed on the way.

``insert-qdq`` calls it when the quantized model needs a newer opset (per-channel
QuantizeLinear: 13; 16- and 4-bit types: 21); it is also a pass of its own.
"""

from __future__ import annotations

import numpy as np

from qgraph.errors import PassError
from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.dtypes import DType
from qgraph.ir.types import TensorType
from qgraph.pm.base import Pass, PassResult

#: ops whose attributes became inputs: op -> (opset of the change, attribute)
_ATTR_TO_INPUT = {
    ops.Squeeze: (13, "axes"), ops.Unsqueeze: (13, "axes"), ops.op("ReduceSum"): (13, "axes"),
    ops.Split: (13, "split"),
    **{ops.op(r): (18, "axes") for r in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                         "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}
_SOFTMAX_LIKE = frozenset({ops.Softmax, ops.op("LogSoftmax"), ops.op("Hardmax")})
#: ops whose meaning changed in a way no local rewrite keeps: op -> opset of the change
_BREAKING = {ops.op("Upsample"): 10, ops.op("Scatter"): 11, ops.op("RoiAlign"): 16, ops.op("GridSample"): 20,
             ops.op("DFT"): 20}
#: qgraph-domain stand-ins with the interface of a standard op: stand-in -> (standard op, its opset)
_STANDARD_FROM = {ops.QGraphHardSwish: (ops.HardSwish, 14), ops.QGraphGelu: (ops.Gelu, 20),
                  ops.QGraphLayerNormalization: (ops.LayerNormalization, 17)}
#: the oldest opset the adaptations start from
MIN_OPSET = 7


class OpsetUpgradeError(PassError):
    """The model cannot be moved to the asked opset; the message names the node."""


def check_upgrade(model: Model, version: int) -> None:
    """Raise ``OpsetUpgradeError`` if ``upgrade_opset(model, version)`` would refuse; changes nothing."""
    old = model.opset("")
    if old is None or old >= version:
        return
    if old < MIN_OPSET:
        raise OpsetUpgradeError(f"the model imports opset {old} and opset {version} is needed; upgrade it to "
                                f"{MIN_OPSET} or later first (onnx.version_converter)")
    for g in model.graph.all_graphs():
        for node in g:
            if node.domain == "":
                _check(node, old, version)


def upgrade_opset(model: Model, version: int) -> bool:
    """Raise the default-domain opset to ``version`` (never lower it); whether anything changed.

    Adapted: attributes that became inputs (Squeeze / Unsqueeze / ReduceSum / Split at 13,
    the other reductions at 18), Split's ``num_outputs`` (18), Softmax / LogSoftmax / Hardmax
    (13: the axis no longer flattens; rewritten as Flatten -> op -> Reshape unless the axis is
    the last), Dropout's ``ratio`` (12), Slice's ``starts`` / ``ends`` / ``axes`` and
    TopK's ``k`` (10), Clip's ``min`` / ``max`` and Pad's ``pads`` / ``value`` (11); qgraph::HardSwish and qgraph::Gelu become the
    standard op once the opset has it (14, 20). Refused (``OpsetUpgradeError``, naming the
    node, before anything changes): ops whose meaning changed otherwise (Upsample, Scatter,
    RoiAlign, GridSample, DFT, Resize's tf_half_pixel_for_nn) and models below opset 7.
    """
    old = model.opset("")
    if old is None or old >= version:
        return False
    check_upgrade(model, version)
    for g in model.graph.all_graphs():
        for node in list(g):
            if node.domain == "":
                _adapt(node, old, version)
            elif node.op in _STANDARD_FROM and _STANDARD_FROM[node.op][1] <= version and _standard_fits(node):
                _to_standard(node, _STANDARD_FROM[node.op][0])
    key = next(d for d in model.opset_imports if ops.normalize_domain(d) == "")
    model.opset_imports[key] = version
    import onnx.helper

    model.ir_version = max(model.ir_version,
                           onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", version)], True))
    return True


class UpgradeOpset(Pass):
    """Raise the model's default-domain opset to ``version``, adapting ops whose form changed.

    before => after (opset 11 -> 13)::

        y = Squeeze(x) {axes=[2, 3]}           =>  y = Squeeze(x, axes_const)
        y = Softmax(x) {axis=1} (x rank 4)     =>  y = Reshape(Softmax(Flatten(x) {axis=1}) {axis=1}, Shape(x))

    See ``upgrade_opset`` for what is adapted and what is refused. A model already at
    ``version`` or newer is left as it is (the opset is never lowered).
    """

    name = "upgrade-opset"

    def __init__(self, version: int = 13):
        self.version = version

    def run(self, model: Model, analyses) -> PassResult:
        old = model.opset("")
        changed = upgrade_opset(model, self.version)
        return PassResult.of(changed, **({"from_opset": old, "to_opset": self.version} if changed else {}))


def _check(node: Node, old: int, new: int) -> None:
    since = _BREAKING.get(node.op)
    if since is not None and old < since <= new:
        raise OpsetUpgradeError(f"{node.describe()} changes meaning between opset {old} and {new}; "
                                "upgrade the model first")
    if node.op is ops.op("Resize") and old < 13 <= new and node.attr("coordinate_transformation_mode") in (
            "tf_half_pixel_for_nn", b"tf_half_pixel_for_nn"):
        raise OpsetUpgradeError(f"{node.describe()} uses tf_half_pixel_for_nn, removed in opset 13")


def _attrs_to_inputs(node: Node, names: list[tuple[str, object]], *, first: int = 1) -> None:
    """Move attributes ``names`` (with their numpy dtypes, or a default) to inputs ``first``...,
    in order; an attribute that is absent becomes an absent input unless a later one is set."""
    g = node.graph
    values: list[Value | None] = []
    for name, make in names:
        if name in node.attrs:
            values.append(g.add_initializer(f"{node.name or node.op_type}_{name}", make(node.attr(name))))
            node.del_attr(name)
        else:
            values.append(None)
    while values and values[-1] is None:
        values.pop()
    node.set_inputs([*node.inputs[:first], *values])


def _float_like(node: Node):
    dt = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
    np_dtype = np.float64 if dt is DType.DOUBLE else np.float16 if dt is DType.FLOAT16 else np.float32
    return lambda v: np.asarray(v, np_dtype)


def _ints(v) -> np.ndarray:
    return np.asarray(v, np.int64)


def _adapt_old(node: Node, old: int, new: int) -> None:
    """Ops whose attributes became inputs at opset 10 / 11."""
    if node.op is ops.Slice and old < 10 <= new:
        _attrs_to_inputs(node, [("starts", _ints), ("ends", _ints), ("axes", _ints)])
    elif node.op is ops.op("TopK") and old < 10 <= new and "k" in node.attrs:
        _attrs_to_inputs(node, [("k", lambda k: np.asarray([k], np.int64))])
    elif node.op is ops.Clip and old < 11 <= new:
        _attrs_to_inputs(node, [("min", _float_like(node)), ("max", _float_like(node))])
    elif node.op is ops.Pad and old < 11 <= new:
        _attrs_to_inputs(node, [("pads", _ints), ("value", _float_like(node))])


def _adapt(node: Node, old: int, new: int) -> None:
    g = node.graph
    if old < 11:
        _adapt_old(node, old, new)
    change = _ATTR_TO_INPUT.get(node.op)
    if change is not None and old < change[0] <= new and change[1] in node.attrs:
        value = g.add_initializer(f"{node.name or node.op_type}_{change[1]}",
                                  np.asarray(node.attr(change[1]), np.int64))
        node.del_attr(change[1])
        node.set_inputs([node.inputs[0], value, *node.inputs[2:]])
    if node.op is ops.Split and old < 18 <= new and (len(node.inputs) < 2 or node.inputs[1] is None):
        node.set_attr("num_outputs", len(node.outputs))
    if node.op is ops.Dropout and old < 12 <= new and "ratio" in node.attrs:
        ratio = g.add_initializer(f"{node.name or 'dropout'}_ratio", np.asarray(node.attr("ratio"), np.float32))
        node.del_attr("ratio")
        node.set_inputs([node.inputs[0], ratio])
    if node.op in _SOFTMAX_LIKE and old < 13 <= new:
        _adapt_softmax(node)


def _adapt_softmax(node: Node) -> None:
    """Opset < 13 Softmax flattens to 2-D at ``axis``; keep that meaning at 13+."""
    x = node.inputs[0]
    axis = node.attr("axis", 1)
    rank = len(x.shape) if x.shape is not None else None
    if rank is not None and (axis if axis >= 0 else axis + rank) == rank - 1:
        node.set_attr("axis", -1)  # the last axis: the same meaning in both forms
        return
    g, base = node.graph, node.name or node.op_type
    shape = Value(g.unique_name(base + "_in_shape"), TensorType(DType.INT64, (rank,) if rank is not None else None))
    flat = Value(g.unique_name(base + "_flat"), TensorType(x.dtype, None) if x.dtype is not None else None)
    y = node.outputs[0]
    y2 = Value(g.unique_name(base + "_2d"), flat.type)
    pre = [Node(ops.Shape, [x], [shape], name=g.unique_name(base + "_shape")),
           Node(ops.Flatten, [x], [flat], {"axis": axis}, name=g.unique_name(base + "_flatten"))]
    g.insert_before(node, pre)
    new = Node(node.op, [flat], [y2], {"axis": 1}, name=node.name)
    g.insert_after(node, new)
    reshape = Node(ops.Reshape, [y2, shape], [Value(g.unique_name(base + "_out"), y.type)],
                   name=g.unique_name(base + "_reshape"))
    g.insert_after(new, reshape)
    g.replace_value(y, reshape.outputs[0])
    g.remove(node)


def _standard_fits(node: Node) -> bool:
    """Whether the stand-in has the standard op's required inputs (qgraph::LayerNormalization
    may lack the Scale that LayerNormalization-17 requires: it then stays the stand-in)."""
    if node.op is ops.QGraphLayerNormalization:
        return len(node.inputs) > 1 and node.inputs[1] is not None
    return True


def _to_standard(node: Node, op: ops.OpId) -> None:
    """The qgraph-domain stand-in ``node`` as the standard ``op`` (same inputs, attributes, outputs)."""
    g = node.graph
    new = Node(op, list(node.inputs), [Value(g.unique_name(o.name + "_std"), o.type) for o in node.outputs],
               dict(node.attrs), name=node.name)
    new.metadata_props = dict(node.metadata_props)
    g.insert_after(node, new)
    for o, n_o in zip(node.outputs, new.outputs):
        if not o.is_graph_output():  # the value keeps its name (a graph output's moves over in replace_value)
            o.name, n_o.name = n_o.name, o.name
        g.replace_value(o, n_o)
    g.remove(node)


PASSES = (UpgradeOpset,)
