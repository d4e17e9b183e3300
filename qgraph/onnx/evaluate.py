"""Evaluate single graph nodes with onnx's reference implementation.

Used by constant folding, by ``lower-qdq`` (lookup tables) and by the reference
interpreter's fallback for standard ops, so that all three compute exactly what the spec
says the node computes, at the model's opset (with ``qgraph.onnx.evaluator_fixes`` for the
ops onnx's own implementation gets wrong). A qgraph-domain op listed in
``qgraph.onnx.decompose.DECOMPOSITIONS`` is evaluated as the standard nodes it stands for.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from qgraph.ir.core import Node, Value
from qgraph.ir.dtypes import from_numpy
from qgraph.onnx.evaluator_fixes import FIXES


def captured_values(node: Node) -> list[Value]:
    """The values of enclosing graphs that ``node``'s subgraphs (If / Loop / Scan bodies,
    nested ones included) read, in first-use order: the implicit inputs of ``node``.

    The IR keeps an outer-scope reference as a direct use of the outer ``Value``; a body
    evaluated on its own must be given these values by name.
    """
    inner = {id(g) for sub in node.subgraphs() for g in sub.all_graphs()}
    found: dict[int, Value] = {}
    for sub in node.subgraphs():
        for n in sub.all_nodes():
            for v in n.inputs:
                if v is not None and id(v.graph) not in inner:
                    found.setdefault(id(v), v)
        for v in sub.outputs:  # a body may return an outer value as it is
            if id(v.graph) not in inner:
                found.setdefault(id(v), v)
    return list(found.values())


class NodeEvaluator:
    """One node, evaluated by onnx's ``ReferenceEvaluator``.

    Building an evaluator costs far more than running a small node, so one is built per
    input-dtype signature on first use and reused (the reference interpreter keeps a
    ``NodeEvaluator`` per node across runs).

    A node with subgraphs (If / Loop / Scan) keeps its bodies and its value names (the bodies
    refer to outer values by name); the outer values its bodies read (``captured``, see
    ``captured_values``) are inputs of the one-node model and follow the node's own inputs
    in ``run``.
    """

    def __init__(self, node: Node, opsets: Mapping[str, int]):
        from qgraph.onnx.decompose import DECOMPOSITIONS

        self.node = node
        self.opsets = dict(opsets)
        self._decomposed = node.op in DECOMPOSITIONS
        self._scoped = any(True for _ in node.subgraphs())
        #: outer values the node's subgraphs read; ``run`` takes them after the node's inputs
        self.captured: list[Value] = captured_values(node) if self._scoped else []
        self._evaluators: dict[tuple, object] = {}

    def _protos(self, names: list[str], outs: list[str]) -> list[onnx.NodeProto]:
        node = self.node
        if self._decomposed:  # the decomposition reads and writes the node's own value names
            from qgraph.onnx.decompose import decompose

            counter = itertools.count()
            return decompose(node, self.opsets.get("", self.opsets.get("ai.onnx")),
                             lambda hint: f"{hint}#{next(counter)}")
        from qgraph.onnx.exporter import _Exporter  # the exporter's attribute encoding

        proto = onnx.NodeProto()
        proto.op_type, proto.domain, proto.name = node.op.op_type, node.op.domain, node.name
        proto.input.extend(names[:len(node.inputs)])
        proto.output.extend(outs)
        exporter = _Exporter(None, opset=self.opsets.get("", self.opsets.get("ai.onnx")))
        for name, a in node.attrs.items():
            exporter.attr(name, a, proto.attribute.add())
        return [proto]

    def _names(self, inputs: Sequence[np.ndarray | None]) -> tuple[list[str], list[str]]:
        """Input and output names: the node's own for a decomposition, positional otherwise."""
        node = self.node
        if self._decomposed or self._scoped:
            names = [v.name if v is not None and x is not None else ""
                     for v, x in zip((*node.inputs, *self.captured), inputs)]
            return names, [o.name if o is not None else "" for o in node.outputs]
        return ([f"in{i}" if x is not None else "" for i, x in enumerate(inputs)],
                [f"out{k}" if o is not None else "" for k, o in enumerate(node.outputs)])

    def run(self, inputs: Sequence[np.ndarray | None]) -> list:
        """The outputs for ``inputs`` (None for absent optional inputs; for a node with
        subgraphs, the node's inputs then the ``captured`` values): tensor outputs are numpy
        arrays, sequence outputs lists, absent outputs None."""
        from onnx.reference import ReferenceEvaluator

        expected = len(self.node.inputs) + len(self.captured)
        if self._scoped and len(inputs) != expected:
            raise ValueError(f"{self.node.describe()}: {len(inputs)} inputs given, it takes {expected}"
                             + (f" (its inputs, then the outer values its subgraphs read: "
                                f"{', '.join(repr(v.name) for v in self.captured)})" if self.captured else ""))
        names, outs = self._names(inputs)
        key = tuple(None if x is None else getattr(x, "dtype", type(x)) for x in inputs)
        ev = self._evaluators.get(key)
        if ev is None:
            declared = {}
            for n, x in zip(names, inputs):
                if n and x is not None:  # a sequence (a list) is declared untyped: the evaluator needs no type
                    declared.setdefault(n, helper.make_tensor_value_info(n, int(from_numpy(x.dtype)), None)
                                        if isinstance(x, np.ndarray) else helper.make_value_info(n, onnx.TypeProto()))
            graph = helper.make_graph(self._protos(names, outs), "evaluate", list(declared.values()),
                                      [helper.make_value_info(o, onnx.TypeProto()) for o in outs if o])
            model = helper.make_model(graph, ir_version=onnx.IR_VERSION,
                                      opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])
            ev = self._evaluators[key] = ReferenceEvaluator(model, new_ops=list(FIXES))
        feeds = {n: x for n, x in zip(names, inputs) if n and x is not None}
        results = iter(ev.run(None, feeds))
        return [next(results) if o else None for o in outs]  # sequences stay lists, optionals may be None


def evaluate(node: Node, inputs: Sequence[np.ndarray | None], opsets: Mapping[str, int]) -> list:
    """The outputs of ``node`` applied to ``inputs`` once (see ``NodeEvaluator.run``)."""
    return NodeEvaluator(node, opsets).run(inputs)
