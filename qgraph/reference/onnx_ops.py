"""Standard ONNX ops in the reference interpreter.

A few data-movement ops that dominate integer graphs have numpy kernels here (their
semantics are plain indexing: nothing to round). Every other standard op, the float
fallback regions (Sigmoid, Softmax, LayerNormalization, Resize, float Conv...) and the
qgraph-domain float ops that ``qgraph.onnx.decompose`` writes as standard ONNX, run through
onnx's ``ReferenceEvaluator`` through ``qgraph.onnx.evaluate.NodeEvaluator``; the evaluator of
each node is built once and reused across runs (building one costs far more than running
a small node).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from qgraph.ir.core import Node, Value
from qgraph.onnx.evaluate import NodeEvaluator
from qgraph.reference.common import InterpreterError, NotNative


# -- numpy data movement -------------------------------------------------------------------------
def identity(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Identity."""
    return [args[0]]


def transpose(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Transpose (``perm`` defaults to reversing the axes)."""
    perm = node.attr("perm")
    return [np.transpose(args[0], None if perm is None else list(perm))]


def reshape(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Reshape: 0 copies the input dim (unless ``allowzero``), -1 is inferred."""
    x, shape = args[0], [int(d) for d in np.asarray(args[1]).reshape(-1)]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    try:
        return [x.reshape(shape)]
    except ValueError as e:
        raise InterpreterError(f"{node.describe()}: cannot reshape '{node.inputs[0].name}' {x.shape} to {shape}") from e


def flatten(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Flatten: ``[prod(shape[:axis]), prod(shape[axis:])]``."""
    x = args[0]
    axis = int(node.attr("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def concat(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Concat along ``axis``."""
    axis = node.attr("axis")
    if axis is None:
        raise InterpreterError(f"{node.describe()}: missing attribute 'axis'")
    parts = [a for a in args if a is not None]
    dtypes = {a.dtype for a in parts}
    if len(dtypes) > 1:
        raise InterpreterError(f"{node.describe()}: inputs have different element types "
                               f"({', '.join(sorted(str(d) for d in dtypes))})")
    try:
        return [np.concatenate(parts, axis=int(axis))]
    except ValueError as e:
        shapes = ", ".join(f"'{v.name}' {a.shape}" for v, a in zip(node.inputs, args) if a is not None)
        raise InterpreterError(f"{node.describe()}: cannot concatenate {shapes} on axis {axis}") from e


def lrn(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX LRN across channels (axis 1):
    ``Y = X / (bias + alpha / size * square_sum) ** beta``, ``square_sum[c]`` the sum of ``X[c'] ** 2``
    for ``c'`` in ``[c - floor((size - 1) / 2), c + ceil((size - 1) / 2)]`` clipped to the channels,
    added in channel order.

    Native because onnx's ``ReferenceEvaluator`` (1.23) loops over the batch axis instead of the
    channels: for a batch of N it sums the window only for channels ``< N`` and leaves
    ``square_sum`` 0 for the others, unlike the spec and ONNX Runtime. The float arithmetic
    is the evaluator's otherwise (float32 throughout, ``alpha / size`` rounded to float32).
    """
    x = args[0]
    if x.ndim < 3:
        raise InterpreterError(f"{node.describe()}: LRN needs an input of rank >= 3, got {list(x.shape)}")
    size = node.attr("size")
    if size is None:
        raise InterpreterError(f"{node.describe()}: missing attribute 'size'")
    size = int(size)
    alpha, beta, bias = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0))
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    channels = x.shape[1]
    sq = x * x
    padded = np.zeros((x.shape[0], channels + before + after) + x.shape[2:], x.dtype)
    padded[:, before:before + channels] = sq
    total = padded[:, 0:channels].copy()  # window terms in channel order; the zero padding adds exactly
    for k in range(1, size):
        total = total + padded[:, k:k + channels]
    dt = x.dtype.type
    return [(x / ((dt(bias) + dt(alpha / size) * total) ** dt(beta))).astype(x.dtype)]


def pad(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX Pad where some pads are negative (a crop, legal since opset 11): the negative
    parts are sliced off, then the positive ones padded as ``np.pad`` does (what onnx's
    evaluator does for them too). Others go to onnx's evaluator (``NotNative``), which hands
    negative pads to ``np.pad`` and fails."""
    x = args[0]
    if len(args) > 1 and args[1] is not None:
        pads = [int(p) for p in np.asarray(args[1]).reshape(-1)]
        value = args[2] if len(args) > 2 and args[2] is not None else None
        axes = [int(a) for a in np.asarray(args[3]).reshape(-1)] if len(args) > 3 and args[3] is not None else None
    else:
        pads, value, axes = list(node.attr("pads") or []), node.attr("value", 0.0), None
    if min(pads, default=0) >= 0:
        raise NotNative("no negative pads")
    axes = list(range(x.ndim)) if axes is None else [a + x.ndim if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        raise InterpreterError(f"{node.describe()}: {len(pads)} pads for {len(axes)} axes (need two per axis)")
    begin, end = pads[:len(axes)], pads[len(axes):]
    crop = [slice(None)] * x.ndim
    widths = [(0, 0)] * x.ndim
    for a, b, e in zip(axes, begin, end):
        crop[a] = slice(max(-b, 0), x.shape[a] - max(-e, 0))
        widths[a] = (max(b, 0), max(e, 0))
    x = x[tuple(crop)]
    mode = node.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        fill = 0 if value is None else np.asarray(value).reshape(-1)[0]
        return [np.pad(x, widths, mode="constant", constant_values=fill).astype(x.dtype)]
    return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


def conv_transpose(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX ConvTranspose with ``group`` > 1, one group at a time through onnx's evaluator
    (whose own grouped ConvTranspose reshapes the weights wrongly in onnx 1.23: a 3-group
    ConvTranspose failed with "cannot reshape array"). Ungrouped ones go to the evaluator
    directly (``NotNative``)."""
    group = int(node.attr("group", 1))
    if group == 1:
        raise NotNative("ungrouped")
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if x.shape[1] % group or w.shape[0] != x.shape[1]:
        raise InterpreterError(f"{node.describe()}: input channels {x.shape[1]} and weight {list(w.shape)} do not "
                               f"split into {group} groups")
    if "evaluator" not in memo:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        attrs = {k: a.value for k, a in node.attrs.items() if k != "group"}
        one = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
        names = list(one.input)
        graph = helper.make_graph([one], "group", [helper.make_tensor_value_info(n, 0, None) for n in names],
                                  [helper.make_tensor_value_info("y", 0, None)])
        memo["evaluator"] = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]))
    cin, cout = x.shape[1] // group, w.shape[1]
    outs = []
    for g in range(group):
        feeds = {"x": x[:, g * cin:(g + 1) * cin], "w": w[g * cin:(g + 1) * cin]}
        if b is not None:
            feeds["b"] = b[g * cout:(g + 1) * cout]
        outs.append(memo["evaluator"].run(None, feeds)[0])
    return [np.concatenate(outs, axis=1).astype(x.dtype)]


# -- onnx's reference evaluator ------------------------------------------------------------------
class OnnxNodeRunner:
    """Evaluates one node with onnx's ``ReferenceEvaluator`` (``qgraph.onnx.evaluate``),
    keeping its evaluators across runs.

    Control flow (If / Loop / Scan) runs here too, bodies and all, in float: its ``args`` are
    the node's inputs followed by the outer values its bodies read (``captured``).
    """

    def __init__(self, node: Node, opsets: Mapping[str, int]):
        self._evaluator = NodeEvaluator(node, opsets)

    @property
    def captured(self) -> list[Value]:
        """The outer values the node's subgraphs read (empty for a node without subgraphs)."""
        return self._evaluator.captured

    def __call__(self, node: Node, args: list, memo: dict) -> list:
        return self._evaluator.run(args)
