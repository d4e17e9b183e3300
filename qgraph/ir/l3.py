"""The L3 integer IR: integer operators in the ``qgraph`` domain, with explicit semantics.

``lower-qdq`` produces these ops from ``DequantizeLinear -> op -> QuantizeLinear`` groups;
``qgraph.reference`` interprets them in numpy (the golden integer semantics) and the TVM
lowering generates kernels for them. Every number that decides an output bit is an
attribute of the node (or a constant integer input: weights and biases), so two
implementations of this document agree bit for bit.

Integer tensors hold their values in the storage type of their integer type (uint8, int8,
int16, uint16; 4-bit values in int8 / uint8 storage); an integer output with no declared
type is stored in the smallest of int8, uint8, int16, uint16, int32 holding its range
(``storage_dtype``). Where conv and pool windows lie is ``qgraph.ir.l3_geometry``. Scales appear only in ``Quantize`` /
``Dequantize`` at float boundaries; inside an integer region an op knows its operands only
through zero points and requantization multipliers.

Requantization (``qgraph.quant.fixedpoint``, the only implementation of the rounding):
``rq(acc, m, s) = (acc * m + 2**(s-1)) >> s`` in int64 (``acc * m`` for ``s == 0``), an
arithmetic shift, so rounding is half up. Then ``y = clip(y_zero_point + rq(...), y_qmin,
y_qmax)``: the clip bounds are the output type's range narrowed by a fused activation
(Relu: ``y_qmin = max(qmin, y_zero_point)``; Clip(lo, hi): the quantized bounds).

Common attributes of requantizing ops ("requant attrs"):

- ``multiplier`` (ints) and ``shift`` (ints): one value, or one per output channel;
- ``y_zero_point`` (int), ``y_qmin`` (int), ``y_qmax`` (int).

The ops (inputs in parentheses; ``x_pad`` pads with ``x_zero_point``, so padding adds 0):

``Quantize(x: float32) -> q``
    attrs ``scale`` (float), ``zero_point``, ``qmin``, ``qmax`` (ints). ONNX QuantizeLinear:
    ``q = clip(round_half_even(x / scale) + zero_point, qmin, qmax)``, division in float32.

``Dequantize(q) -> float32``
    attrs ``scale`` (float), ``zero_point``. ``(q - zero_point) * scale`` in float32.

``QConv(x, w, [bias]) -> y``
    ``w`` an int8 (or int4-valued int8) constant ``[M, C/group, k...]``, ``bias`` an int32
    constant ``[M]``. attrs: ONNX Conv's ``strides``, ``pads``, ``dilations``, ``group``,
    ``kernel_shape``; ``x_zero_point`` (int); ``w_zero_point`` (ints, 1 or M); requant attrs
    (1 or M). ``acc[n, m, p] = sum_{c, k} (x_pad - x_zp) * (w[m] - w_zp[m]) + bias[m]``,
    which must fit int32 (kernels accumulate in int32; the reference raises otherwise);
    ``y = clip(y_zp + rq(acc, multiplier[m], shift[m]), y_qmin, y_qmax)``.

``QConvTranspose(x, w, [bias]) -> y``
    ONNX ConvTranspose on integers. ``w`` an integer constant ``[C, M/group, k...]`` (ONNX's
    layout; int8, int4-valued int8, or as QConv's), ``bias`` an int32 constant ``[M]``. attrs:
    ``strides``, ``pads`` (explicit: ``auto_pad`` and ``output_shape`` are resolved into them by
    ``lower-qdq``), ``dilations``, ``output_padding``, ``group``, ``kernel_shape``;
    ``x_zero_point`` (int); ``w_zero_point`` (ints, 1 or M: per *output* channel ``o``); requant
    attrs (1 or M). Output size per spatial dim ``(in - 1) * s + output_padding + (k - 1) * d + 1
    - pad_begin - pad_end`` (``l3_geometry.transposed``). With ``o = g * M/group + m``:
    ``acc[n, o, p] = sum over (i, t) with i * s + t * d - pad_begin == p, c in group g of
    (x[n, c, i] - x_zp) * (w[c, m, t] - w_zp[o]) + bias[o]`` (a position no tap reaches holds
    the bias), which must fit int32; then requantized as QConv. The taps that reach one output
    position are those of one stride *phase* (``l3_geometry.transposed_phases``): the int32
    bound of ``lower-qdq`` is taken per phase.

``QMatMul(a, b, [bias]) -> y``
    numpy ``matmul`` semantics (batch dims broadcast). attrs ``a_zero_point`` (int),
    ``b_zero_point`` (ints, 1 or N: per column of a constant ``b [K, N]``); requant attrs
    (1 or N, per column). ``acc = (a - a_zp) @ (b - b_zp) + bias`` (int32), then as QConv.
    Gemm lowers here: ``transB`` is applied to the constant at lowering time, ``alpha`` goes
    into the multiplier, ``beta * C`` into the bias.

``QAdd(a, b) -> y``
    broadcasting. attrs ``a_zero_point``, ``b_zero_point``, ``a_multiplier``,
    ``b_multiplier``, ``shift`` (ints; one shared shift), ``y_zero_point``, ``y_qmin``,
    ``y_qmax``. ``y = clip(y_zp + ((a_m * (a - a_zp) + b_m * (b - b_zp) + 2**(shift-1)) >> shift))``
    (``qgraph.quant.fixedpoint.rounding_shift``): one rounding for the sum.

``QMul(a, b) -> y``
    broadcasting. attrs ``a_zero_point``, ``b_zero_point``, requant attrs (1 value).
    ``y = clip(y_zp + rq((a - a_zp) * (b - b_zp), multiplier, shift))``.

``QAveragePool(x) -> y``
    attrs: ONNX AveragePool's ``kernel_shape``, ``strides``, ``pads``, ``count_include_pad``,
    ``ceil_mode``; ``x_zero_point``; ``multiplier``, ``shift``: lists indexed by the window's
    divisor ``n`` (length ``prod(kernel_shape) + 1``; index 0 unused, 0); ``y_zero_point``,
    ``y_qmin``, ``y_qmax``. ``acc = sum_window(x_pad - x_zp)``; ``n`` is the window size when
    ``count_include_pad`` else the number of non-pad taps;
    ``y = clip(y_zp + rq(acc, multiplier[n], shift[n]), y_qmin, y_qmax)``.

``QGlobalAveragePool(x) -> y``
    attrs ``x_zero_point``, requant attrs (1 value), ``runtime_count`` (int, default 0).
    ``acc = sum_spatial(x - x_zp)`` (int64). With ``runtime_count == 0`` (a static spatial
    size) the multiplier is already divided by the size: ``y = clip(y_zp + rq(acc, m, s))``.
    With ``runtime_count == 1`` (a symbolic spatial size) ``m * 2**-s`` is the ratio
    ``s_in / s_out`` alone and the count ``n`` (the product of the spatial dims, at run time)
    divides exactly, rounding half to even: ``t = acc * m``, ``d = n << s``,
    ``q = floordiv(t, d)``, ``r = floormod(t, d)``,
    ``y = clip(y_zp + q + (2*r > d or (2*r == d and q odd)), y_qmin, y_qmax)``, all int64
    (``qgraph.quant.fixedpoint.rounding_divide``). ``lower-qdq`` picks ``m``, ``s``
    (``runtime_count_multiplier``) so that this fits int64 for ``n <= 2**20``
    (``MAX_RUNTIME_COUNT``); a larger ``n`` is outside the contract (the reference raises).

``Requantize(x) -> y``
    attrs ``x_zero_point``, requant attrs (1 value). ``y = clip(y_zp + rq(x - x_zp, m, s))``.
    Used where a consumer needs other parameters (Concat inputs, dtype changes).

``Lookup(x) -> y``
    attrs ``table`` (ints, ``2**bits`` entries), ``x_qmin`` (int). ``y = table[x - x_qmin]``:
    a unary float op on an 8-bit input, tabulated at lowering time as
    ``Q(op(DQ(x)))`` for every possible ``x`` (bit-exact with the QDQ simulation).

Standard ONNX data-movement ops on integer tensors are L3 ops too, with their ONNX meaning
(no arithmetic, so nothing to round): ``MaxPool``, ``Reshape``, ``Transpose``, ``Flatten``,
``Squeeze``, ``Unsqueeze``, ``Concat`` (inputs already requantized to the output's
parameters), ``Slice``, ``Split``, ``Gather``, ``Identity``. Float fallback regions are the
model's original float ops between ``Dequantize`` and ``Quantize``.
"""

from __future__ import annotations

import numpy as np

from qgraph.errors import InvalidModelError
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.ir.ops import QGRAPH_DOMAIN, OpId, op

Quantize = op("Quantize", QGRAPH_DOMAIN)
Dequantize = op("Dequantize", QGRAPH_DOMAIN)
QConv = op("QConv", QGRAPH_DOMAIN)
QConvTranspose = op("QConvTranspose", QGRAPH_DOMAIN)
QMatMul = op("QMatMul", QGRAPH_DOMAIN)
QAdd = op("QAdd", QGRAPH_DOMAIN)
QMul = op("QMul", QGRAPH_DOMAIN)
QAveragePool = op("QAveragePool", QGRAPH_DOMAIN)
QGlobalAveragePool = op("QGlobalAveragePool", QGRAPH_DOMAIN)
Requantize = op("Requantize", QGRAPH_DOMAIN)
Lookup = op("Lookup", QGRAPH_DOMAIN)

#: The integer ops of the qgraph domain (see the module doc for their semantics).
INTEGER_OPS: frozenset[OpId] = frozenset({
    Quantize, Dequantize, QConv, QConvTranspose, QMatMul, QAdd, QMul, QAveragePool, QGlobalAveragePool, Requantize,
    Lookup,
})

#: Attributes every requantizing op carries.
REQUANT_ATTRS = ("multiplier", "shift", "y_zero_point", "y_qmin", "y_qmax")

#: ``Node.metadata_props`` key: on a float op of an L3 model, why ``lower-qdq``'s rules did not
#: lower it ("rule: reason; rule: reason"). Informative only: no backend reads it.
STAYED_FLOAT = "qgraph.stayed_float"


def after_float_ops(graph) -> set[str]:
    """Names of the values computed from the result of a float fallback op (any non-L3 op with
    a float output; not Dequantize, which is exact). A backend's float kernels may differ from
    numpy's in the last bits, so a Quantize downstream of one may differ by 1 LSB: the values
    where bit-exactness with the reference is not promised."""
    floats = (DType.FLOAT, DType.FLOAT16, DType.DOUBLE)
    tainted: set[str] = set()
    for node in graph:
        float_op = node.op not in INTEGER_OPS and any(o is not None and o.dtype in floats for o in node.outputs)
        if float_op or any(v is not None and v.name in tainted for v in node.inputs):
            tainted.update(o.name for o in node.outputs if o is not None)
    return tainted


class ContractError(InvalidModelError):
    """A node breaks a rule of this contract (an integer output declared a float type, a range
    its declared type cannot hold, window attributes that do not fit the input); the message
    names the node. The reference and the TVM lowering re-raise it as their own error."""


# -- storage types -------------------------------------------------------------------------------
#: The integer storage types an integer output may be declared with.
_INT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
               np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int64))
#: Storage types tried, in order, for an integer output whose value has no declared type.
_STORAGE_ORDER = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
                  np.dtype(np.int32))
#: 4-bit values live in int8 / uint8 arrays (see the module doc, and qgraph.quant.params).
_SUB_BYTE_STORAGE = {DType.INT4: np.dtype(np.int8), DType.UINT4: np.dtype(np.uint8)}
_SUB_BYTE_RANGE = {DType.INT4: (-8, 7), DType.UINT4: (0, 15)}


def storage_dtype(node, lo: int, hi: int, index: int = 0) -> np.dtype:
    """The numpy storage type of integer output ``index`` of ``node`` whose values lie in
    ``[lo, hi]``: its declared type (4-bit types in int8 / uint8), else the smallest of int8,
    uint8, int16, uint16, int32 holding ``[lo, hi]``.

    Raises:
        ContractError: the declared type is not an integer type or cannot hold ``[lo, hi]``,
            or no storage type holds it.
    """
    out = node.outputs[index]
    declared = out.dtype if out is not None else None
    if declared is not None and declared != DType.UNDEFINED:
        dt = _SUB_BYTE_STORAGE.get(declared) or to_numpy(declared)
        if dt not in _INT_DTYPES:
            raise ContractError(f"{node.describe()}: output '{out.name}' is declared {declared.name}, "
                                "not an integer type")
        info = np.iinfo(dt)
        info_lo, info_hi = _SUB_BYTE_RANGE.get(declared, (info.min, info.max))
        if lo < info_lo or hi > info_hi:
            raise ContractError(f"{node.describe()}: output range [{lo}, {hi}] does not fit the declared "
                                f"type {declared.name} of '{out.name}'")
        return dt
    for dt in _STORAGE_ORDER:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise ContractError(f"{node.describe()}: output range [{lo}, {hi}] fits no integer storage type")
