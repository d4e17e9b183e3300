"""Op groups, one table: named sets of op identities (``qgraph.ir.ops``) that passes test with ``in``.

Each group is a frozenset of ``OpId`` and states the property the passes rely on. Groups that
must agree between passes are built from each other, so the relation holds by construction:
every op insert-qdq quantizes by sharing a scale lowers as data movement in lower-qdq, and every
activation it quantizes alone (or fuses) tabulates as a Lookup::

    PASS_THROUGH_OPS <= SHARED_SCALE_OPS <= DATA_MOVEMENT
    CLAMPING_ACTIVATIONS | UNARY_ACTIVATIONS <= UNARY_ELEMENTWISE
    SINGLE_ACTIVATIONS <= CLAMPING_ACTIVATIONS | UNARY_ACTIVATIONS
    FUSABLE_PRODUCERS <= QUANTIZED_OPS

(``tests/test_op_groups.py`` checks these.)
"""

from __future__ import annotations

from qgraph.ir import ops

# -- quantization (insert-qdq places Q/DQ, lower-qdq turns the groups into integer ops) ---------

#: ops quantized whenever their float inputs have ranges (inputs DQ, output Q)
QUANTIZED_OPS = frozenset({ops.Conv, ops.ConvTranspose, ops.Gemm, ops.MatMul, ops.Add, ops.Mul,
                           ops.AveragePool, ops.GlobalAveragePool, ops.MaxPool, ops.Concat})
#: pass-through: one data input rearranged into one output (no value added, dropped or changed),
#: so the output is quantized whenever the input is, with the input's scale
PASS_THROUGH_OPS = frozenset({ops.Reshape, ops.Transpose, ops.Flatten, ops.Squeeze, ops.Unsqueeze})
#: shared scale: every output value is one of the input values (pass-through, MaxPool's maximum,
#: Concat's union), so insert-qdq gives the inputs and the output one scale
SHARED_SCALE_OPS = PASS_THROUGH_OPS | {ops.MaxPool, ops.Concat}
#: data movement: the output values are a subset / rearrangement of the input values, so the op
#: runs on the integers as they are (lower-qdq); a superset of what insert-qdq shares a scale over.
#: Resize only in nearest mode (lower-qdq checks the attribute: linear / cubic compute new values)
DATA_MOVEMENT = SHARED_SCALE_OPS | {ops.Slice, ops.Split, ops.Gather, ops.Identity, ops.Resize}
#: recurrent ops: they stay float in a quantized model (as in ONNX Runtime's and OpenVINO's static
#: quantization); ``QuantConfig.recurrent_weights`` applies to their weights W and R (inputs 1, 2)
RECURRENT_OPS = frozenset({ops.LSTM, ops.GRU, ops.RNN})

#: clamping activations: a requantizing op clamps to them (y_qmin / y_qmax), so fused into one they
#: need no Q/DQ pair between the op and themselves
CLAMPING_ACTIVATIONS = frozenset({ops.Relu, ops.Clip})
#: unary activations: single-input elementwise activations insert-qdq quantizes (input DQ,
#: output Q) whenever their input is, so that an 8-bit one lowers to a Lookup
UNARY_ACTIVATIONS = frozenset({
    ops.LeakyRelu, ops.HardSigmoid, ops.HardSwish, ops.Sigmoid, ops.Tanh, ops.Gelu, ops.Elu, ops.Selu,
    ops.Softplus, ops.Mish, ops.op("Celu"), ops.op("ThresholdedRelu"), ops.op("Softsign"),
    ops.QGraphHardSwish, ops.QGraphGelu,
})
#: unary elementwise: one float operand, each output element a function of the same input
#: element alone, so on an <= 8-bit input the op is exactly a table over the input codes (Lookup)
UNARY_ELEMENTWISE = CLAMPING_ACTIVATIONS | UNARY_ACTIVATIONS | {
    ops.Exp, ops.Neg, ops.Abs, ops.Sqrt, ops.Reciprocal, ops.Erf, ops.op("Log"), ops.op("Sin"), ops.op("Cos"),
    ops.op("Floor"), ops.op("Ceil"), ops.op("Round"), ops.op("Shrink"),
}
#: scalar binary: elementwise binary ops that are unary elementwise in one operand when the other
#: is a one-element constant (then tabulated as a Lookup)
SCALAR_BINARY = frozenset({ops.Add, ops.Sub, ops.Mul, ops.Div, ops.Pow, ops.Max, ops.Min})

# -- activation fusion (qgraph.ir.fusion) -------------------------------------------------------

#: fusable producers: ops whose output an activation may be fused into. Add and Mul lower to
#: QAdd / QMul, whose requantization clamps a fused Relu / Clip away (a residual Add -> Relu in
#: ResNet: no Q/DQ pair and no 256-entry lookup between them; ORT's QDQ quantizer drops such an
#: activation too), when both operands are activations (``fusion.check_producer_fusion``)
FUSABLE_PRODUCERS = frozenset({ops.Conv, ops.ConvTranspose, ops.Gemm, ops.MatMul, ops.Add, ops.Mul})
#: single activations: one-op activations fuse-activation fuses into a fusable producer
SINGLE_ACTIVATIONS = frozenset({ops.Relu, ops.Clip, ops.LeakyRelu, ops.HardSwish, ops.HardSigmoid,
                                ops.Sigmoid, ops.Tanh})

# -- range analysis (qgraph.calib.intervals) ----------------------------------------------------

#: chain elementwise: ops the range analysis follows in a chain ``g`` of ``x * g(x)`` (each output
#: element a function of the same element of the one non-constant input), bounding the product
#: piece by piece; not every elementwise op: adding one changes (tightens) computed ranges
CHAIN_ELEMENTWISE = frozenset({ops.Relu, ops.Clip, ops.HardSigmoid, ops.Sigmoid, ops.Tanh, ops.LeakyRelu,
                               ops.Neg, ops.Add, ops.Sub, ops.Mul, ops.Div})
