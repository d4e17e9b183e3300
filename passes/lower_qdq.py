"""``lower-qdq``: the L2 QDQ graph to the L3 integer IR (``qgraph.ir.l3``).

The rules live in ``lower_qdq_rules`` (rewrite rules, one per group) and what they read and
write in ``lower_qdq_common``; this module drives them once over the float nodes (through
the rewrite engine, whose tracer keeps why no rule fired on a node) and rewrites what is
left of the QuantizeLinear / DequantizeLinear nodes at the float boundaries.
"""

from __future__ import annotations

from collections import Counter

from qgraph.ir import l3
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.ops import QGRAPH_DOMAIN
from qgraph.ir.dtypes import DType
from qgraph.ir.l2 import QDQParamsError
from qgraph.ir.types import TensorType
from qgraph.analysis.shapes import infer_shapes
from qgraph.passes.cleanup import remove_dead_code
from qgraph.passes.lower_qdq_common import (DEQUANTIZE, QUANTIZE, LoweringError, const_array, int_value,
                                            read_params, take_place)
from qgraph.passes.lower_qdq_rules import RULES
from qgraph.pm.base import Pass, PassResult
from qgraph.quant.params import dequantize, quantize
from qgraph.rewrite import MatchTracer, try_rule

_QDQ = QUANTIZE | DEQUANTIZE
_INTEGER_COMPUTE = frozenset({l3.QConv, l3.QConvTranspose, l3.QMatMul, l3.QAdd, l3.QMul, l3.QAveragePool,
                              l3.QGlobalAveragePool})


class LowerQDQ(Pass):
    """Lower QuantizeLinear / DequantizeLinear groups to the integer ops of ``qgraph.ir.l3``.

    before => after (``q`` integer tensors, ``DQ`` / ``Q`` the standard ONNX ops):
        DQ(x), DQ(w) [, DQ(b)] -> Conv [-> Relu | Clip] -> Q      =>  QConv(x, w, b)
        DQ(x), DQ(w) [, DQ(b)] -> ConvTranspose [-> Relu | Clip] -> Q
                                                                 =>  QConvTranspose(x, w, b)
              (auto_pad / output_shape resolved into pads)
        DQ(a), DQ(w) [, DQ(C)] -> Gemm / MatMul [-> Relu | Clip] -> Q
                                                                 =>  QMatMul(a, w', bias)
              (transB applied to w, alpha in the multiplier, beta * C in the int32 bias)
        DQ(a), DQ(b) -> MatMul -> Q                               =>  QMatMul(a, b)
        DQ(a), DQ(b) -> Add | Mul [-> Relu | Clip] -> Q           =>  QAdd(a, b) | QMul(a, b)
        DQ(x) -> AveragePool | GlobalAveragePool -> Q             =>  QAveragePool | QGlobalAveragePool
        DQ(q) -> MaxPool | Reshape | Transpose | Flatten | Squeeze | Unsqueeze | Slice | Split
              | Gather | Identity -> Q                           =>  the same op on q
                                                                     [-> Requantize if Q's params differ]
        DQ(q1), DQ(q2) -> Concat -> Q                             =>  Concat(Requantize(q1), q2)
        DQ(x) -> f -> Q  (f unary elementwise, x <= 8 bits; or f(x, c) with c a
              one-element constant, e.g. Div(x, 6))              =>  Lookup(x), table = Q(f(DQ(q)))
        anything else                                            =>  the float op, with
              DequantizeLinear(q) -> Dequantize(q){scale, zero_point} and
              QuantizeLinear(x) -> Quantize(x){scale, zero_point, qmin, qmax}
        DQ(constant) read by a float op                           =>  the float constant

    A fused Relu / Clip (marked by ``fuse-activation`` or simply the only reader of the
    op's result) narrows ``y_qmin`` / ``y_qmax``; a QuantizeLinear reader with other
    parameters than the first one gets a ``Requantize``. Multipliers come from
    ``qgraph.quant.fixedpoint`` (per output channel for per-channel weights); the int32
    accumulators of QConv / QConvTranspose / QMatMul are bounded from the integer ranges of
    the weights, the activation type and the bias, and a bound beyond int32 is an error
    naming the node.

    Preconditions: an L2 graph as ONNX Runtime's QDQ quantizer (or ``insert-qdq``) writes
    it: constant scales and zero points, constant integer weights and biases behind
    DequantizeLinear (weights per tensor or per channel on the output-channel axis),
    activations quantized per tensor (a per-channel or block-quantized activation is an
    error). Control flow (If / Loop / Scan) stays a float op, its bodies not lowered (a DQ a
    body reads becomes a Dequantize). Graph inputs and outputs stay float and keep their
    names; dead QDQ nodes and initializers are removed. The model imports the ``qgraph``
    domain afterwards. Missing shapes are completed first (``canonicalize.infer_shapes``, the
    utility behind ``infer-shapes``: an L2 model from another quantizer often has none) and
    the groups it replaced pruned (``cleanup.remove_dead_code``); it runs no other pass.

    Stats: ``integer_ops`` (QConv, QConvTranspose, QMatMul, QAdd, QMul, pooling), ``lookups``,
    ``integer_data_movement``, ``requantizes``, ``float_fallbacks`` (float ops left),
    ``quantizes`` / ``dequantizes`` (float boundaries). Each float node left that had a
    rule to try keeps why none fired (the rewrite tracer's reasons, one per rule) in its
    ``metadata_props[qgraph.ir.l3.STAYED_FLOAT]``, which travels with the model and which the report's
    "Stayed float" list shows; ``fallback_reasons(model)`` reads them back.
    """

    name = "lower-qdq"
    requires = ("insert-qdq",)  # when the pipeline quantizes too, it lowers what insert-qdq wrote

    def run(self, model: Model, analyses) -> PassResult:
        g = model.graph
        if not any(n.op in _QDQ for n in g):
            return PassResult.unchanged()
        if model.opset(QGRAPH_DOMAIN) is None:
            model.opset_imports[QGRAPH_DOMAIN] = 1
        # act x act MatMul and SAME padding need static shapes (GlobalAveragePool takes its fast form
        # with one): complete them here
        # (the graph utility of infer-shapes), since an L2 model from another quantizer often has none
        infer_shapes(model)
        originals = [n for n in g if n.op not in _QDQ]
        tracer = MatchTracer()
        for node in originals:
            if node.graph is not g or not _live(node):
                continue
            _lower(node, model, tracer)
        remove_dead_code(g)  # the groups the rules replaced: the boundaries left are the live ones
        counts: Counter[str] = Counter()
        _rewrite_boundaries(g, counts)
        remove_dead_code(g)  # folded constants' DQ nodes, the replaced Q / DQ's scales and zero points
        original = set(originals)
        for n in g:
            if n.op in _INTEGER_COMPUTE:
                counts["integer_ops"] += 1
            elif n.op is l3.Lookup:
                counts["lookups"] += 1
            elif n.op is l3.Requantize:
                counts["requantizes"] += 1
            elif n in original:
                counts["float_fallbacks"] += 1
            elif n.op.domain != QGRAPH_DOMAIN:
                counts["integer_data_movement"] += 1
        return PassResult.changed(**{k: counts[k] for k in (
            "integer_ops", "lookups", "integer_data_movement", "requantizes", "float_fallbacks",
            "quantizes", "dequantizes")})



def _lower(node: Node, model: Model, tracer: MatchTracer) -> None:
    """Fire the first rule for ``node`` that applies, else note on it why it stays float."""
    node.metadata_props.pop(l3.STAYED_FLOAT, None)
    for rule in RULES.for_op(node.op):
        try:
            if try_rule(rule, node, model, tracer):
                return
        except LoweringError:
            raise
        except (ValueError, OverflowError) as e:
            raise LoweringError(f"{node.describe()}: cannot lower to integer ops: {e}", node.name) from e
    reasons = tracer.reasons(node)
    if reasons:  # an op with no rule at all needs no explaining
        node.metadata_props[l3.STAYED_FLOAT] = "; ".join(reasons)


def fallback_reasons(model: Model) -> dict[str, str]:
    """{node name (or first output's name): why lower-qdq left it float} over ``model``'s graph."""
    return {n.name or n.outputs[0].name: n.metadata_props[l3.STAYED_FLOAT]
            for n in model.graph if l3.STAYED_FLOAT in n.metadata_props}


def _live(n: Node) -> bool:
    return any(o is not None and (o.has_uses() or o.is_graph_output()) for o in n.outputs)


def _rewrite_boundaries(g: Graph, counts: Counter) -> None:
    """The QuantizeLinear / DequantizeLinear nodes left: qgraph Quantize / Dequantize, or constants."""
    for node in list(g):
        if node.op not in _QDQ or node.graph is not g or not _live(node):
            continue
        x, y = node.inputs[0], node.outputs[0]
        try:
            params = read_params(node)
        except QDQParamsError as e:
            raise LoweringError(f"{node.describe()}: cannot read the quantization parameters of '{x.name}' "
                                f"({e}); lower-qdq needs constant per-tensor or per-axis parameters") from e
        data = const_array(x)
        if data is not None:  # a constant: fold it
            folded = quantize(data, params) if node.op in QUANTIZE else dequantize(data, params)
            take_place(g, y, g.add_initializer(y.name + "_const", folded))
            continue
        if params.axis is not None:
            raise LoweringError(f"{node.describe()}: '{x.name}' is quantized per channel (axis {params.axis}); "
                                "lower-qdq lowers per-tensor activations only")
        common = {"scale": float(params.scale), "zero_point": int(params.zero_point)}
        if node.op in QUANTIZE:
            out = int_value(g, y.name + "_int", params, y)
            new = Node(l3.Quantize, [x], [out], {**common, "qmin": params.dtype.qmin, "qmax": params.dtype.qmax},
                       name=g.unique_name(node.name or y.name))
            counts["quantizes"] += 1
        else:
            out = Value(g.unique_name(y.name + "_float"), TensorType(DType.FLOAT, y.shape))
            new = Node(l3.Dequantize, [x], [out], common, name=g.unique_name(node.name or y.name))
            counts["dequantizes"] += 1
        g.insert_before(node, new)
        take_place(g, y, out)
        g.remove(node)


PASSES = (LowerQDQ,)

__all__ = ["LowerQDQ", "LoweringError", "fallback_reasons"]
