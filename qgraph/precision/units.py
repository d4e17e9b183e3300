"""The layers a precision is chosen for, read from the QDQ models ``insert-qdq`` writes.

A *unit* is a named node that ``insert-qdq`` quantized: it reads constants through
DequantizeLinear (its weights and bias) and / or its output tensor (or the output of the
Relu / Clip fused with it) goes through QuantizeLinear. Its format decides those weights and
those outputs. What a format does to a unit is read from a QDQ model of the whole graph in
that format (``Effect``): the dequantized weights, and the parameters of each output's
QuantizeLinear; so the sensitivity measures exactly what ``insert-qdq`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qgraph.analysis.shapes import elements, macs
from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.l2 import DEQUANTIZE, QUANTIZE, QDQParamsError, read_qdq
from qgraph.quant.params import QuantParams, dequantize

_ACTS = (ops.Relu, ops.Clip)
_BIAS_INPUT = {ops.Conv: 2, ops.ConvTranspose: 2, ops.Gemm: 2}


@dataclass
class Unit:
    """One layer: a node name (the config's key) and what a format changes in it.

    ``weights``: input indices read through a DequantizeLinear of a constant (bias included);
    ``outputs``: (node name, output index) of the float tensors its format quantizes, by the
    float model's nodes; ``macs`` / ``out_elems``: per sample (symbolic dims count 1);
    ``weight_elems``: elements of the weights (bias excluded); ``tensors``: the float
    model's names of ``outputs``.
    """

    name: str
    op: str
    weights: tuple[int, ...] = ()
    outputs: tuple[tuple[str, int], ...] = ()
    macs: int = 0
    out_elems: int = 0
    weight_elems: int = 0
    tensors: tuple[str, ...] = ()
    scale_class: str = ""  # the scale its output shares with others (Concat, pooling, data movement)
    macs_read: int = 0  # per sample: the MACs of the Conv / MatMul nodes that read its outputs


@dataclass
class Effect:
    """What one format does to one unit: float weights to use, output tensors to fake-quantize.

    ``weights``: input index -> the dequantized constant; ``outputs``: (node name, output
    index) -> its QuantizeLinear's per-tensor parameters.
    """

    weights: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[tuple[str, int], QuantParams] = field(default_factory=dict)


def _dq_const(v: Value | None) -> Node | None:
    p = v.producer() if v is not None else None
    if p is not None and p.op in DEQUANTIZE and p.inputs[0] is not None and p.inputs[0].constant() is not None:
        return p
    return None


def _quantized_outputs(node: Node) -> list[tuple[Node, int, Node]]:
    """(node whose output is quantized, its output index, the QuantizeLinear) for ``node``'s group."""
    found = []
    for i, o in enumerate(node.outputs):
        if o is None:
            continue
        users = o.users()
        q = next((u for u in users if u.op in QUANTIZE), None)
        if q is not None:
            found.append((node, i, q))
        elif len(users) == 1 and users[0].op in _ACTS and users[0].name:
            act = users[0]
            q = next((u for u in act.outputs[0].users() if u.op in QUANTIZE), None) if act.outputs[0] else None
            if q is not None:
                found.append((act, 0, q))
    return found


def find_units(float_model: Model, qdq: Model, shapes: dict[str, tuple] | None = None) -> list[Unit]:
    """The units of ``qdq`` (a QDQ model of ``float_model``), in graph order.

    ``shapes``: value name -> static shape for one sample (``qgraph.analysis.shapes.sample_shapes``),
    for MACs and element counts where the model's own shapes are symbolic (else they count 1).
    """
    shapes = shapes or {}

    def dims(v):
        return shapes.get(v.name, v.shape) if v is not None else None

    by_name = {n.name: n for n in float_model.graph if n.name}
    units = []
    for node in qdq.graph:
        if not node.name or node.name not in by_name or node.op in QUANTIZE or node.op in DEQUANTIZE:
            continue
        weights = tuple(k for k, v in enumerate(node.inputs) if _dq_const(v) is not None)
        outs = tuple((n.name, i) for n, i, _ in _quantized_outputs(node) if n.name in by_name)
        if not weights and not outs:
            continue
        f = by_name[node.name]
        out_elems = elements(dims(f.outputs[0])) if f.outputs and f.outputs[0] is not None else 0
        bias = _BIAS_INPUT.get(f.op)
        w_elems = sum(elements(dims(f.inputs[k])) for k in weights
                      if k != bias and k < len(f.inputs) and f.inputs[k] is not None)
        tensors = tuple(by_name[n].outputs[i].name for n, i in outs)
        qs = [q for n, i, q in _quantized_outputs(node) if (n.name, i) in outs]
        shared = qs[0].inputs[1].name if qs and qs[0].inputs[1] is not None else ""
        readers = {r for n, i in outs for r in by_name[n].outputs[i].users()}
        read = sum(macs(r, dims) for r in readers)
        units.append(Unit(node.name, node.op_type, weights, outs, macs(f, dims), out_elems, w_elems,
                          tensors, shared, read))
    return units


def effect(unit: Unit, node: Node) -> Effect:
    """What a QDQ model of the whole graph in one format does to ``unit``: ``node`` is the
    unit's node in that model."""
    eff = Effect()
    for k in unit.weights:
        dq = _dq_const(node.inputs[k]) if k < len(node.inputs) else None
        if dq is None:
            continue
        p = read_qdq(dq)
        eff.weights[k] = np.asarray(dequantize(np.asarray(dq.inputs[0].constant().numpy()),
                                               QuantParams.from_qdq(p)), np.float32)
    wanted = set(unit.outputs)
    for n, i, q in _quantized_outputs(node):
        if (n.name, i) not in wanted:
            continue
        try:
            params = QuantParams.from_qdq(read_qdq(q))
        except (QDQParamsError, ValueError):
            continue
        if params.axis is None:  # activations are per tensor
            eff.outputs[(n.name, i)] = params
    return eff
