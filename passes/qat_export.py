"""``fold-qat-export``: a QDQ model exported after fake-quant training, in insert-qdq's form."""

from __future__ import annotations

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.dtypes import DType
from qgraph.ir.l2 import DEQUANTIZE, QUANTIZE, QDQParamsError, read_qdq
from qgraph.ir.tensor import Tensor
from qgraph.pm.base import Pass, PassResult
from qgraph.quant.params import QuantParams, quantize, quantize_bias

#: ops that move integers unchanged (a dequantized input's scale holds for their output)
_MOVEMENT = frozenset({ops.Flatten, ops.Reshape, ops.Transpose, ops.Squeeze, ops.Unsqueeze})
#: ops whose input 2 is a bias added to the input-0 x input-1 products
_BIASED = frozenset({ops.Conv, ops.Gemm})


def _params(node: Node) -> QuantParams | None:
    try:
        p = read_qdq(node)
        return None if p.block_size else QuantParams.from_qdq(p)
    except (QDQParamsError, ValueError):
        return None


def _dq_of(v: Value | None) -> Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op in DEQUANTIZE else None


class FoldQATExport(Pass):
    """Bring a QDQ model exported from a fake-quant training (``torch.onnx.export`` of FakeQuantize
    modules) into the groups ``lower-qdq`` lowers, without changing what it computes beyond
    the int32 rounding of biases.

    before => after:
        wq = Q(W, s, zp); w = DQ(wq, s, zp)          =>  w = DQ(Wint, s, zp)      (Wint = quantize(W), a constant)
        y = Conv(DQ(x), DQ(Wint), B)                  =>  y = Conv(DQ(x), DQ(Wint), DQ(Bint32, sx*sw))
        f = Flatten(DQ(xq, s, zp)); y = Gemm(f, ...)  =>  f = Flatten(...); y = Gemm(DQ(Q(f, s, zp)), ...)

    - The first is constant folding of QuantizeLinear (canonicalize leaves Q / DQ alone).
    - A float bias of a Conv / Gemm whose input is a per-tensor DQ and whose weight a DQ of a
      constant becomes int32 with scale ``sx * sw`` (``qgraph.quant.quantize_bias``, as insert-qdq
      writes it): PyTorch exports biases in float.
    - A data-movement op (Flatten, Reshape, Transpose, Squeeze, Unsqueeze) of a per-tensor DQ
      output read by a node other than a Q gets a Q -> DQ pair with the same parameters: exact,
      since ``round(((q - zp) * s) / s) = q - zp`` for 8- and 16-bit integers in float32.

    Preconditions: none; a model without Q / DQ is unchanged.
    """

    name = "fold-qat-export"

    def run(self, model: Model, analyses) -> PassResult:
        g = model.graph
        folded = biases = pairs = 0
        for node in list(g):
            if node.op in QUANTIZE and node.inputs[0] is not None:
                w = node.inputs[0].constant()
                users = node.outputs[0].users()
                p = _params(node)
                if (w is None or p is None or not users or node.outputs[0].is_graph_output()
                        or np.asarray(w.numpy()).dtype.kind != "f"):
                    continue
                q = quantize(np.asarray(w.numpy(), np.float32), p)
                init = g.add_initializer(g.unique_name(node.inputs[0].name + "_quantized"),
                                         Tensor(q.astype(p.dtype.storage), DType(p.dtype.onnx)))
                node.outputs[0].replace_all_uses_with(init)
                g.remove(node)
                folded += 1
        for node in list(g):
            if node.op in _BIASED and len(node.inputs) > 2 and node.inputs[2] is not None:
                biases += self._bias(g, node)
            elif node.op in _MOVEMENT:
                pairs += self._pair(g, node)
        changed = bool(folded or biases or pairs)
        return PassResult.of(changed, folded_weights=folded, quantized_biases=biases, qdq_pairs=pairs)

    def _bias(self, g, node: Node) -> int:
        b = node.inputs[2].constant()
        x_dq, w_dq = _dq_of(node.inputs[0]), _dq_of(node.inputs[1])
        if b is None or x_dq is None or w_dq is None or w_dq.inputs[0].constant() is None:
            return 0
        px, pw = _params(x_dq), _params(w_dq)
        if px is None or pw is None or px.per_channel or (pw.per_channel and pw.axis != 0):
            return 0
        if node.op is ops.Gemm and pw.per_channel and not node.attr("transB", 0):
            return 0  # per-channel scales on axis 0 of an untransposed weight are per input, not per output
        q, bp = quantize_bias(np.asarray(b.numpy(), np.float32).reshape(-1), px.scale, pw.scale)
        base = g.unique_name(node.name + "_bias")
        bq = g.add_initializer(base + "_quantized", Tensor(q, DType.INT32))
        scale = g.add_initializer(base + "_scale", np.asarray(bp.scale, np.float32))
        zp = g.add_initializer(base + "_zero_point", Tensor(np.zeros(bp.scale.shape, np.int32), DType.INT32))
        out = Value(g.unique_name(base + "_dequantized"), node.inputs[2].type)
        attrs = {"axis": 0} if bp.axis is not None else {}
        dq = Node(ops.DequantizeLinear, [bq, scale, zp], [out], attrs, name=g.unique_name(base + "_DequantizeLinear"))
        g.insert_before(node, [dq])
        node.replace_input(2, out)
        return 1

    def _pair(self, g, node: Node) -> int:
        dq = _dq_of(node.inputs[0])
        y = node.outputs[0]
        if dq is None or y is None:
            return 0
        p = _params(dq)
        if p is None or p.per_channel or p.dtype.bits > 16:
            return 0
        readers = [(n, i) for n, i in y.uses() if n.op not in QUANTIZE]
        if not readers:
            return 0
        qv = Value(g.unique_name(y.name + "_quantized"), None)
        dv = Value(g.unique_name(y.name + "_dequantized"), y.type)
        qn = Node(ops.QuantizeLinear, [y, dq.inputs[1], dq.inputs[2]], [qv], name=g.unique_name(y.name + "_QuantizeLinear"))
        dn = Node(ops.DequantizeLinear, [qv, dq.inputs[1], dq.inputs[2]], [dv], name=g.unique_name(y.name + "_DequantizeLinear"))
        g.insert_after(node, [qn, dn])
        for n, i in readers:  # a graph output stays the float value: only its readers move
            n.replace_input(i, dv)
        return 1


PASSES = (FoldQATExport,)
