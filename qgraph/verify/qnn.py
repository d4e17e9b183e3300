"""The QDQ export on the Qualcomm HTP emulator against the integer reference, layer by layer.

Each layer is measured on its own: the QDQ model is cut at every quantized tensor the L3
model also computes (the QuantizeLinear outputs, which keep their names in L3), so that each
DequantizeLinear reads a graph input fed with the reference's integers and each
QuantizeLinear writes a graph output. One HTP session then runs every layer at once, each
from the same inputs as the reference: a layer's distance is its own, not the sum of the
layers before it (on a chained run a 1-LSB tie upstream grows to 2-3 LSB a few layers on).

    check = layer_check(compiled, feeds)     # compiled: a CompiledDir or QuantizedModel
    check.layers["conv1_quantized"].max_lsb  # 0 or 1 on 8-bit layers
    check.placement.htp_share                # 1.0: every node on the HTP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph import batching
from qgraph.ir import ops
from qgraph.ir.core import Model, Value
from qgraph.ir.types import TensorType

#: The suffix of the graph input that replaces a quantized tensor in the cut model.
_FED = "__reference"


@dataclass
class LayerLSB:
    """One quantized tensor: the node writing it, its type, and the HTP's distance to the
    reference in LSBs (``histogram[k]``: the share of elements k LSBs away)."""

    tensor: str
    node: str
    op: str
    dtype: str
    max_lsb: int
    histogram: list[float]

    @property
    def exact(self) -> float:
        return self.histogram[0] if self.histogram else 1.0

    def to_json(self) -> dict:
        return {"node": self.node, "op": self.op, "dtype": self.dtype, "max_lsb": self.max_lsb,
                "exact": self.exact, "histogram": self.histogram}


@dataclass
class QnnCheck:
    """``layers``: tensor name -> ``LayerLSB``; ``placement``: ``qgraph.qnn.Placement`` of the
    whole (uncut) QDQ model."""

    layers: dict[str, LayerLSB] = field(default_factory=dict)
    placement: Any = None

    def worst(self, bits: int = 8) -> int:
        """The largest distance of the layers of ``bits``-bit types."""
        return max((l.max_lsb for l in self.layers.values() if l.dtype.endswith(str(bits))), default=0)

    def histogram(self, bits: int = 8) -> dict[int, int]:
        """LSB distance -> number of ``bits``-bit layers whose worst element is that far."""
        out: dict[int, int] = {}
        for l in self.layers.values():
            if l.dtype.endswith(str(bits)):
                out[l.max_lsb] = out.get(l.max_lsb, 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict:
        return {"layers": {k: v.to_json() for k, v in self.layers.items()},
                "placement": self.placement.to_json() if self.placement is not None else None}

    def lines(self) -> list[str]:
        """``qgraph verify``'s lines: placement share and the per-layer histograms."""
        out = []
        if self.placement is not None:
            p = self.placement
            cpu = p.on_cpu()
            out.append(f"  HTP placement: {sum(w == 'HTP' for w in p.where.values())}/{len(p.where)} nodes "
                       f"({p.htp_share:.1%}) on the HTP" + (f"; on the CPU: {', '.join(cpu[:8])}"
                                                               + (" ..." if len(cpu) > 8 else "") if cpu else "")
                       + (f"; {len(p.folded)} shape nodes folded at compile time" if p.folded else ""))
        for bits in (8, 16):
            h = self.histogram(bits)
            if h:
                n = sum(h.values())
                out.append(f"  reference vs QNN HTP, per layer ({n} {bits}-bit layers, each from the reference's "
                           f"inputs): max {max(h)} LSB; layers by worst LSB: "
                           + ", ".join(f"{k}: {v}" for k, v in h.items()))
        return out


def quantized_tensors(qdq: Model, integer: Model) -> list[Value]:
    """The activation QuantizeLinear outputs of ``qdq`` that ``integer`` computes too."""
    l3 = {o.name for n in integer.graph for o in n.outputs if o is not None}
    return [n.outputs[0] for n in qdq.graph
            if n.op is ops.QuantizeLinear and n.outputs[0] is not None and n.outputs[0].name in l3
            and n.inputs[0] is not None and n.inputs[0].constant() is None]


def cut_model(qdq: Model, tensors: list[str], shapes: Mapping[str, tuple]) -> Model:
    """``qdq`` with each of ``tensors`` (QuantizeLinear outputs) a graph output, and its
    readers reading a new graph input ``<name>__reference`` of ``shapes[name]`` instead."""
    m = qdq.clone()
    by_name = {o.name: o for n in m.graph for o in n.outputs if o is not None}
    for name in tensors:
        v = by_name[name]
        uses = list(v.uses())
        if uses:
            fed = Value(m.graph.unique_name(name + _FED), TensorType(v.dtype, tuple(shapes[name])))
            m.graph.inputs.append(fed)
            for node, i in uses:
                node.replace_input(i, fed)
        if not v.is_graph_output():
            m.graph.outputs.append(v)
    return m


def layer_check(compiled, feeds: Mapping[str, np.ndarray], *, htp_arch: int | None = None) -> QnnCheck:
    """Every quantized layer of ``compiled`` on the HTP emulator vs the reference, and where
    the QNN EP placed each node of the QDQ model (``qgraph.qnn``: needs its environment).
    A model of a fixed batch size is measured on its first batch of ``feeds``."""
    from qgraph import qnn
    from qgraph.reference import Interpreter

    qdq, integer = compiled.qdq, compiled.integer
    tensors = quantized_tensors(qdq, integer)
    names = [v.name for v in tensors]
    interp = Interpreter(integer)
    in_axes = batching.model_axes(integer)
    fixed = batching.fixed_batch(batching.input_shapes(integer), in_axes)
    if fixed is not None:  # a model of a fixed batch is measured on its first batch
        feeds = batching.take(dict(feeds), in_axes, 0, fixed, pad_to=fixed)
    ref = interp.run(dict(feeds), outputs=names)
    one_batch = fixed is not None or batching.sample_count(integer, feeds) == 1
    # one run: each cut input goes whole (no sample axis); else each one's own sample axis
    axes = {k: None for k in names} if one_batch else _sample_axes(interp, integer, feeds, names, ref)
    with qnn.QnnSession(qdq, qnn.batch_shapes(qdq, feeds), htp_arch=htp_arch) as s:
        placement = s.placement
    cut = cut_model(qdq, names, {k: np.shape(v) for k, v in ref.items()})
    batching.set_model_axes(cut, {k + _FED: axes.get(k) for k in names if k + _FED in
                                  {v.name for v in cut.graph.inputs}})
    fed = dict(feeds)
    by_name = {v.name: v for v in cut.graph.inputs}
    for name in names:
        if name + _FED in by_name:
            fed[name + _FED] = ref[name]
    used = {v.name for v in cut.graph.inputs if not v.is_initializer()}
    out = qnn.run_qnn(cut, {k: v for k, v in fed.items() if k in used}, htp_arch=htp_arch,
                      what="backend 'qnn' (per layer)")
    check = QnnCheck(placement=placement)
    for v in tensors:
        a, b = out[v.name].astype(np.int64), ref[v.name].astype(np.int64)
        d = np.abs(a - b).ravel()
        hist = (np.bincount(d) / max(d.size, 1)).tolist() if d.size else [1.0]
        p = v.producer()
        check.layers[v.name] = LayerLSB(v.name, p.name if p else "", _layer_op(p), str(ref[v.name].dtype),
                                        int(d.max()) if d.size else 0, [round(x, 6) for x in hist])
    return check


def _sample_axes(interp, integer: Model, feeds: Mapping[str, np.ndarray], names: list[str],
                 ref: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """Each tensor's sample axis: where its shape on one sample differs from its shape on all
    of them (an attention's [3, N, ...] keeps N on axis 1); None where no dim differs."""
    axes = batching.model_axes(integer)
    one = batching.take(dict(feeds), axes, 0, 1)
    small = interp.run(one, outputs=names)
    out = {}
    for k in names:
        a, b = np.shape(ref[k]), np.shape(small[k])
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y] if len(a) == len(b) else []
        out[k] = diff[0] if len(diff) == 1 else None
    return out


def _layer_op(q) -> str:
    """The op a QuantizeLinear quantizes the output of (through a fused Relu / Clip)."""
    x = q.inputs[0].producer() if q is not None and q.inputs[0] is not None else None
    if x is not None and x.op in (ops.Relu, ops.Clip) and x.inputs[0] is not None and x.inputs[0].producer() is not None:
        return f"{x.inputs[0].producer().op_type}+{x.op_type}"
    return x.op_type if x is not None else "input"


def annotate_report(report, placement) -> None:
    """Say in ``report`` (``qgraph.verify.report.Report``) which target runs each op: a
    ``runs_on`` of ``HTP`` or ``CPU`` on every layer row (the node's placement; a fused
    activation runs with its op), the share in the summary and the CPU nodes with the EP's
    reasons."""
    if report is None:
        return
    for row in report.layers:
        where = placement.where.get(row["node"])
        if where is not None:
            row["runs_on"] = where
    report.summary["runs_on"] = (f"QNN HTP: {sum(w == 'HTP' for w in placement.where.values())}/"
                                 f"{len(placement.where)} nodes ({placement.htp_share:.1%}) on the HTP"
                                 + (f", {len(placement.folded)} shape nodes folded at compile time"
                                    if placement.folded else ""))
    report.summary["qnn_placement"] = placement.to_json()
