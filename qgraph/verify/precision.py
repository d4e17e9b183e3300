"""What precision a QDQ model computes in: the share of multiply-accumulates on 8-bit operands
and the bytes of its weights (report.json's ``precision`` section, for any quantized model)."""

from __future__ import annotations

from qgraph.analysis.shapes import MAC_OPS, elements, macs
from qgraph.ir.core import Model, Value
from qgraph.ir.l2 import DEQUANTIZE, QDQParamsError, read_qdq


def _bits(v: Value | None) -> int:
    """The integer width ``v`` is read at (a DequantizeLinear output), else 32 (float)."""
    p = v.producer() if v is not None else None
    if p is None or p.op not in DEQUANTIZE:
        return 32
    try:
        q = read_qdq(p)
    except (QDQParamsError, ValueError):
        return 32
    return int(q.qmax - q.qmin).bit_length()


def precision_summary(qdq: Model, shapes: dict[str, tuple] | None = None) -> dict:
    """``mac_fraction_8bit``: the share of Conv / ConvTranspose / MatMul / Gemm multiply-accumulates
    (per sample; symbolic dims count 1) whose two operands are read at 8 bits or fewer;
    ``weight_bytes``: their weights (input 1) at the width they are stored, float as 4 bytes;
    ``per_layer``: node -> ``{"op", "macs", "input_bits", "weight_bits"}``. ``shapes``: value
    name -> static shape for one sample (``qgraph.analysis.shapes.sample_shapes``), where the
    model's are symbolic.
    """
    shapes = shapes or {}

    def dims(v):
        return shapes.get(v.name, v.shape)

    total = narrow = 0
    weight_bytes = 0.0
    per_layer = {}
    for node in qdq.graph:
        if node.op not in MAC_OPS or len(node.inputs) < 2:
            continue
        n_macs = macs(node, dims)
        a, w = _bits(node.inputs[0]), _bits(node.inputs[1])
        total += n_macs
        if a <= 8 and w <= 8:
            narrow += n_macs
        src = node.inputs[1].producer()
        stored = src.inputs[0] if src is not None and src.op in DEQUANTIZE else node.inputs[1]
        if stored is not None and stored.constant() is not None:
            weight_bytes += elements(dims(stored)) * w / 8.0
        per_layer[node.name or node.outputs[0].name] = {"op": node.op_type, "macs": n_macs, "input_bits": a,
                                                        "weight_bits": w}
    return {"mac_fraction_8bit": (narrow / total) if total else None, "weight_bytes": int(round(weight_bytes)),
            "per_layer": per_layer}
