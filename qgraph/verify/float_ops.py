"""What the integer (L3) model computes in integers and what stayed float, and why.

``op_counts`` is the one count of integer ops, table lookups and float ops: report.json,
report.md, report.html and ``qgraph compile``'s summary line all print its numbers, and
its float ops are exactly the rows of ``stayed_float``.
"""

from __future__ import annotations

from qgraph.ir import l3, ops
from qgraph.ir.core import Model, Node
from qgraph.ir.dtypes import DType
from qgraph.ir.op_groups import RECURRENT_OPS

def _key(node: Node) -> str:
    return node.name or node.outputs[0].name


def float_nodes(integer: Model) -> list[Node]:
    """The L3 model's float ops: ONNX-domain nodes with a float output (a data-movement op on
    integers, e.g. a uint8 Reshape, is not one; nor are the Quantize / Dequantize boundaries)."""
    return [n for n in integer.graph
            if n.op.domain == "" and any(v is not None and v.dtype is DType.FLOAT for v in n.outputs)]


def op_counts(integer: Model) -> dict[str, int]:
    """``integer_ops`` (integer compute and data movement in the qgraph domain, boundaries
    excluded), ``lookups`` and ``float_ops`` (``float_nodes``)."""
    counts = {"integer_ops": 0, "lookups": 0, "float_ops": len(float_nodes(integer))}
    for n in integer.graph:
        if n.op is l3.Lookup:
            counts["lookups"] += 1
        elif n.op in l3.INTEGER_OPS and n.op not in (l3.Quantize, l3.Dequantize):
            counts["integer_ops"] += 1
    return counts


def stayed_float(integer: Model, qdq: Model, config) -> list[dict]:
    """One row per float op of ``integer`` (``float_nodes``): ``node``, ``op`` and ``reason``.

    The reason, first that applies: the config excludes it (by name or op type); insert-qdq
    left it unquantized because it reads the float output of another node, or because its op
    has no quantized form; lower-qdq's rules for the op did not fit (the reasons its rewrite
    tracer recorded on the node, ``metadata_props[qgraph.ir.l3.STAYED_FLOAT]``).
    """
    in_qdq = {_key(n): n for n in qdq.graph}
    rows = []
    for node in float_nodes(integer):
        key = _key(node)
        reason = _reason(node, in_qdq.get(key), config, node.metadata_props.get(l3.STAYED_FLOAT))
        if node.op in RECURRENT_OPS and config.recurrent_weights == "float16":
            reason += "; its weights hold float16 values (recurrent_weights float16)"
        rows.append({"node": key, "op": node.op_type, "reason": reason})
    return rows


def _reason(node: Node, q: Node | None, config, lowered: str | None) -> str:
    if node.name in config.exclude:
        return f"excluded by the config (exclude '{node.name}')"
    if node.op_type in config.exclude:
        return f"excluded by the config (op type '{node.op_type}')"
    if q is not None:
        acts = [v for v in q.inputs if v is not None and v.const_value is None]
        from_dq = [v for v in acts if v.producer() is not None and v.producer().op is ops.DequantizeLinear]
        if acts and not from_dq:
            floats = [v for v in acts if v.producer() is not None and v.producer().op is not ops.QuantizeLinear]
            if floats:
                p = floats[0].producer()
                return (f"reads the float output '{floats[0].name}' of {p.op_type} node '{_key(p)}', "
                        "which stayed float")
            return f"insert-qdq does not quantize op {node.op_type} here (no quantized input)"
    if lowered is None:
        return f"no integer form for op {node.op_type}"
    return f"no lower-qdq rule fits ({lowered})"
