"""qgraph-domain ops written back as standard ONNX on export.

Fusion passes replace a chain of ONNX ops by one qgraph-domain op when the model's opset
has no standard op for it (LayerNormalization before opset 17, Gelu before 20, HardSwish
before 14). The IR keeps the fused op; the exporter writes, in its place, the standard
ONNX nodes that ``DECOMPOSITIONS`` produces for it, so an exported model never needs a
"qgraph" runtime.

``DECOMPOSITIONS`` is the one place such ops are added. An entry maps an op identity to a
function ``(node, emitter) -> [output value name, ...]`` that emits ONNX nodes through the
``Emitter`` (``e.op("Mul", a, b)``, ``e.scalar(0.5)``, ...) and returns, for each output of
the qgraph node, the name of the emitted value holding it; the emitter then gives those
values the qgraph node's output names.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import onnx
from onnx import helper

from qgraph.errors import QGraphError
from qgraph.ir import ops
from qgraph.ir.core import Node
from qgraph.ir.dtypes import DType
from qgraph.ir.ops import OpId


class Emitter:
    """Builds the standard ONNX nodes that stand for one qgraph-domain node.

    Args:
        node: the qgraph node being written.
        opset: the model's default-domain opset (decides e.g. ReduceMean's ``axes`` form).
        fresh_name: returns a value name unused in the model for a hint (which contains "/").
    """

    def __init__(self, node: Node, opset: int, fresh_name: Callable[[str], str]):
        self.node = node
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._fresh = fresh_name
        first = next((o for o in node.outputs if o is not None), None)
        self._base = (first.name if first is not None else "") or node.name or node.op.op_type

    # -- reading the node -----------------------------------------------------------------
    def input(self, i: int) -> str | None:
        """The name of input ``i``, or None when it is absent."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        return v.name if v is not None else None

    def attr(self, name: str, default=None):
        value = self.node.attr(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def dtype(self) -> DType:
        """The element type the node computes in: its first input's, else its output's, else
        another input's (constants created with ``scalar`` use it)."""
        n = self.node
        for v in (n.inputs[0] if n.inputs else None, *n.outputs, *n.inputs[1:]):
            if v is not None and v.dtype is not None:
                return v.dtype
        raise QGraphError(f"cannot write {n.describe()} as standard ONNX: the element type of its input "
                          f"'{self.input(0)}' is unknown; give the value a tensor type")

    # -- emitting -------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str | None, **attrs) -> str:
        """Emit ``op_type(inputs)`` with ``attrs``; returns its (fresh) output name."""
        out = self._fresh(f"{self._base}/{op_type}")
        self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], [out], name=out, **attrs))
        return out

    def scalar(self, value: float) -> str:
        """A rank-0 constant of the node's element type."""
        return self._constant(helper.make_tensor("value", int(self.dtype()), [], [value]))

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant."""
        return self._constant(helper.make_tensor("value", onnx.TensorProto.INT64, [len(values)], list(values)))

    def _constant(self, tensor: onnx.TensorProto) -> str:
        out = self._fresh(f"{self._base}/Constant")
        tensor.name = out
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def reduce_mean(self, x: str, axes: Sequence[int] | None) -> str:
        """ReduceMean keeping dims over ``axes`` (None: all axes), in the model opset's form."""
        if axes is None:
            return self.op("ReduceMean", x, keepdims=1)
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(axes), keepdims=1)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=1)

    def finish(self, results: Sequence[str]) -> list[onnx.NodeProto]:
        """The emitted nodes, with ``results[k]`` renamed to the node's output ``k``."""
        produced = {o for p in self.nodes for o in p.output}
        given: dict[str, str] = {}  # emitted name -> the output name it now has
        for k, o in enumerate(self.node.outputs):
            if o is None:
                continue
            if k >= len(results):
                raise QGraphError(f"the decomposition of {self.node.op} gives {len(results)} output(s); "
                                  f"{self.node.describe()} reads output {k}")
            r = results[k]
            if r in produced and r not in given:
                for p in self.nodes:
                    _rename(p.input, r, o.name)
                    _rename(p.output, r, o.name)
                    if p.name == r:
                        p.name = o.name
                given[r] = o.name
            else:  # an input passed through, or a value already given to another output
                self.nodes.append(helper.make_node("Identity", [given.get(r, r)], [o.name], name=o.name))
        return self.nodes


def _rename(names, old: str, new: str) -> None:
    for k, name in enumerate(names):
        if name == old:
            names[k] = new


Decomposition = Callable[[Node, Emitter], Sequence[str]]


# -- the decompositions ---------------------------------------------------------------------------
def _normalized_axes(node: Node) -> list[int] | None:
    """ReduceMean axes for a LayerNormalization ``axis`` (None: every axis)."""
    axis = node.attr("axis", -1)
    if axis < 0:
        return list(range(axis, 0))
    if axis == 0:
        return None
    x = node.inputs[0]
    if x.shape is None:
        raise QGraphError(f"cannot write {node.describe()} as standard ONNX: axis={axis} needs the rank of "
                          f"'{x.name}', which is unknown; use a negative axis or give the value a shape")
    return list(range(axis, len(x.shape)))


def layer_normalization(node: Node, e: Emitter) -> list[str]:
    """ReduceMean / Sub / Mul / ReduceMean / Add / Sqrt / Div [/ Mul Scale] [/ Add B]."""
    if len(node.outputs) > 1 and any(o is not None for o in node.outputs[1:]):
        raise QGraphError(f"{node.describe()}: qgraph::LayerNormalization has one output (Y)")
    axes = _normalized_axes(node)
    x = e.input(0)
    d = e.op("Sub", x, e.reduce_mean(x, axes))
    var = e.reduce_mean(e.op("Mul", d, d), axes)
    std = e.op("Sqrt", e.op("Add", var, e.scalar(e.attr("epsilon", 1e-5))))
    y = e.op("Div", d, std)
    if e.input(1) is not None:
        y = e.op("Mul", y, e.input(1))
    if len(node.inputs) > 2 and e.input(2) is not None:
        y = e.op("Add", y, e.input(2))
    return [y]


def gelu(node: Node, e: Emitter) -> list[str]:
    """x * 0.5 * (1 + Erf(x / sqrt(2))), or with Tanh(sqrt(2/pi) * (x + 0.044715 x^3))."""
    x = e.input(0)
    approximate = e.attr("approximate", "none")
    if approximate == "tanh":
        cube = e.op("Mul", e.op("Mul", x, x), x)
        inner = e.op("Add", x, e.op("Mul", cube, e.scalar(0.044715)))
        t = e.op("Tanh", e.op("Mul", inner, e.scalar(math.sqrt(2.0 / math.pi))))
    elif approximate == "none":
        if e.opset < 9:
            raise QGraphError(f"cannot write {node.describe()} as standard ONNX at opset {e.opset}: Erf needs opset 9")
        t = e.op("Erf", e.op("Div", x, e.scalar(math.sqrt(2.0))))
    else:
        raise QGraphError(f"{node.describe()}: approximate='{approximate}' is not 'none' or 'tanh'")
    return [e.op("Mul", e.op("Mul", x, e.scalar(0.5)), e.op("Add", t, e.scalar(1.0)))]


def hard_swish(node: Node, e: Emitter) -> list[str]:
    """x * HardSigmoid(x) {alpha=1/6, beta=0.5}: HardSwish-14's definition, in ops of every opset."""
    x = e.input(0)
    return [e.op("Mul", x, e.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5))]


DECOMPOSITIONS: Mapping[OpId, Decomposition] = MappingProxyType({
    ops.QGraphLayerNormalization: layer_normalization,
    ops.QGraphGelu: gelu,
    ops.QGraphHardSwish: hard_swish,
})


def decompose(node: Node, opset: int | None, fresh_name: Callable[[str], str]) -> list[onnx.NodeProto] | None:
    """The standard ONNX nodes standing for ``node``, or None when it is written as is."""
    fn = DECOMPOSITIONS.get(node.op)
    if fn is None:
        return None
    if opset is None:
        raise QGraphError(f"cannot write {node.describe()} as standard ONNX: the model imports no "
                          "default-domain opset")
    e = Emitter(node, opset, fresh_name)
    return e.finish(list(fn(node, e)))


def uses_domain(mp: onnx.ModelProto, domain: str) -> bool:
    """Whether any node of ``mp`` (subgraphs and functions included) is in ``domain``."""
    def in_graph(g: onnx.GraphProto) -> bool:
        return in_nodes(g.node)

    def in_nodes(nodes) -> bool:
        for n in nodes:
            if ops.normalize_domain(n.domain) == domain:
                return True
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH and in_graph(a.g):
                    return True
                if a.type == onnx.AttributeProto.GRAPHS and any(in_graph(g) for g in a.graphs):
                    return True
        return False

    return in_graph(mp.graph) or any(f.domain == domain or in_nodes(f.node) for f in mp.functions)
