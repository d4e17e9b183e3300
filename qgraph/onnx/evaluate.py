"""Evaluate single float-graph nodes on constant inputs (for constant folding).

Uses onnx's reference implementation, at the model's opset, so folding computes exactly
what the spec says the node computes.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from qgraph.ir.core import Node
from qgraph.ir.dtypes import from_numpy


def evaluate(node: Node, inputs: Sequence[np.ndarray | None], opsets: Mapping[str, int]) -> list:
    """The outputs of ``node`` applied to ``inputs`` (None for absent optional inputs).

    Tensor outputs are numpy arrays; sequence outputs are lists (callers folding into
    initializers must skip those).
    """
    from qgraph.onnx.decompose import DECOMPOSITIONS, decompose
    from qgraph.onnx.exporter import _Exporter
    from onnx.reference import ReferenceEvaluator

    if node.op in DECOMPOSITIONS:  # a qgraph-domain op: evaluate the standard nodes it stands for
        counter = itertools.count()
        names = [v.name if v is not None and x is not None else "" for v, x in zip(node.inputs, inputs)]
        outs = [o.name if o is not None else "" for o in node.outputs]
        protos = decompose(node, opsets.get("", None), lambda hint: f"{hint}#{next(counter)}")
    else:
        names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
        outs = [f"out{k}" if o is not None else "" for k, o in enumerate(node.outputs)]
        np_ = onnx.NodeProto()
        np_.op_type, np_.domain = node.op.op_type, node.op.domain
        np_.input.extend(names)
        np_.output.extend(outs)
        exporter = _Exporter(None)
        for name, a in node.attrs.items():
            exporter.attr(name, a, np_.attribute.add())
        protos = [np_]
    feeds = {n: x for n, x in zip(names, inputs) if x is not None}
    graph = helper.make_graph(
        protos, "fold",
        [helper.make_tensor_value_info(n, int(from_numpy(x.dtype)), list(x.shape)) for n, x in feeds.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=onnx.IR_VERSION)
    results = ReferenceEvaluator(model).run(None, feeds)
    it = iter(results)
    return [next(it) if o else None for o in outs]  # sequences stay lists, optionals may be None
