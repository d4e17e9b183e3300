"""Which target runs each op of the integer (L3) model: report.json's ``placement`` and
report.md's "Runs on" section.

A TVM target (``cpu``, ``aarch64``, ``hexagon``...) runs the whole integer program: every op
is one of its kernels (fused with its neighbours), float fallbacks included; ``--target qdq``
builds nothing, so the ops run wherever the QDQ export is deployed (ONNX Runtime here).
"""

from __future__ import annotations

from qgraph.ir import l3
from qgraph.ir.core import Model
from qgraph.verify.float_ops import float_nodes


def placement(integer: Model, target: str) -> list[dict]:
    """One row per node of ``integer``: ``node``, ``op``, ``kind`` (``integer``, ``lookup``,
    ``float``, ``boundary`` for Quantize / Dequantize, ``movement``) and ``runs_on``."""
    floats = {id(n) for n in float_nodes(integer)}
    where = "ONNX Runtime (the QDQ export)" if target == "qdq" else target
    rows = []
    for n in integer.graph:
        if id(n) in floats:
            kind = "float"
        elif n.op is l3.Lookup:
            kind = "lookup"
        elif n.op in (l3.Quantize, l3.Dequantize):
            kind = "boundary"
        elif n.op in l3.INTEGER_OPS:
            kind = "integer"
        else:
            kind = "movement"
        rows.append({"node": n.name or n.outputs[0].name, "op": n.op.op_type, "kind": kind, "runs_on": where})
    return rows
