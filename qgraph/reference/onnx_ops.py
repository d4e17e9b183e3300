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
from qgraph.reference.common import InterpreterError


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
