"""Elementwise L3 ops (QAdd, QMul, Requantize, Lookup), the float boundaries (Quantize,
Dequantize) and ONNX QuantizeLinear / DequantizeLinear (so an L2 QDQ model runs too).

Quantization and dequantization go through ``qgraph.quant.params``; requantization through
``qgraph.quant.fixedpoint``.
"""

from __future__ import annotations

import numpy as np

from qgraph.ir.core import Node
from qgraph.ir.dtypes import DType
from qgraph.quant.fixedpoint import requantize_to
from qgraph.quant.params import INT4, UINT4, IntType, QuantParams, dequantize, int_type, quantize
from qgraph.reference.common import (
    InterpreterError, NotNative, Requant, as_int64, ints, one_int, saturate, storage_dtype,
)


def _broadcast_error(node: Node, a: np.ndarray, b: np.ndarray, e: Exception) -> InterpreterError:
    return InterpreterError(f"{node.describe()}: '{node.inputs[0].name}' {a.shape} and "
                            f"'{node.inputs[1].name}' {b.shape} do not broadcast")


def qadd(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QAdd(a, b)``: ``clip(y_zp + rounding_shift(a_m * (a - a_zp) + b_m * (b - b_zp), shift))``."""
    a, b = args
    ad = as_int64(node, a, node.inputs[0].name) - one_int(node, "a_zero_point")
    bd = as_int64(node, b, node.inputs[1].name) - one_int(node, "b_zero_point")
    am, bm = one_int(node, "a_multiplier"), one_int(node, "b_multiplier")
    bound = (abs(am) * (int(np.abs(ad).max()) if ad.size else 0)
             + abs(bm) * (int(np.abs(bd).max()) if bd.size else 0))
    if bound >= 2**63:
        raise InterpreterError(f"{node.describe()}: a_multiplier * a + b_multiplier * b reaches {bound}, "
                               "beyond int64; the multipliers are too wide for these operands")
    try:
        acc = am * ad + bm * bd
    except ValueError as e:
        raise _broadcast_error(node, a, b, e) from e
    qmin, qmax = one_int(node, "y_qmin"), one_int(node, "y_qmax")
    # multiplier 1: the sum is already in output units * 2**shift, so only the shared shift rounds
    y = requantize_to(acc, 1, one_int(node, "shift"), one_int(node, "y_zero_point"), qmin, qmax)
    return [saturate(node, y, qmin, qmax)]


def qmul(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QMul(a, b)``: ``clip(y_zp + rq((a - a_zp) * (b - b_zp), multiplier, shift))``."""
    a, b = args
    ad = as_int64(node, a, node.inputs[0].name) - one_int(node, "a_zero_point")
    bd = as_int64(node, b, node.inputs[1].name) - one_int(node, "b_zero_point")
    try:
        acc = ad * bd
    except ValueError as e:
        raise _broadcast_error(node, a, b, e) from e
    return [Requant.of(node).apply(node, acc)]


def requantize_op(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``Requantize(x)``: ``clip(y_zp + rq(x - x_zp, multiplier, shift))``."""
    xs = as_int64(node, args[0], node.inputs[0].name) - one_int(node, "x_zero_point")
    return [Requant.of(node).apply(node, xs)]


def lookup(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``Lookup(x)``: ``table[x - x_qmin]``."""
    table = ints(node, "table")
    idx = as_int64(node, args[0], node.inputs[0].name) - one_int(node, "x_qmin")
    if idx.size and (idx.min() < 0 or idx.max() >= table.size):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise InterpreterError(f"{node.describe()}: input '{node.inputs[0].name}' holds "
                               f"{bad + one_int(node, 'x_qmin')}, outside the {table.size}-entry table "
                               f"starting at x_qmin={one_int(node, 'x_qmin')}")
    lo, hi = (int(table.min()), int(table.max())) if table.size else (0, 0)
    return [table[idx].astype(storage_dtype(node, lo, hi))]


def _declared_int_type(node: Node, storage: np.dtype) -> IntType:
    out = node.outputs[0]
    declared = out.dtype if out is not None else None
    if declared == DType.INT4:
        return INT4
    if declared == DType.UINT4:
        return UINT4
    return int_type(storage)


def _float_input(node: Node, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind != "f":
        raise InterpreterError(f"{node.describe()}: input '{node.inputs[0].name}' must be a float tensor, "
                               f"got {x.dtype}")
    return x


def quantize_op(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``Quantize(x)``: ONNX QuantizeLinear with the output range narrowed to ``[qmin, qmax]``."""
    x = _float_input(node, args[0])
    zp, qmin, qmax = one_int(node, "zero_point"), one_int(node, "qmin"), one_int(node, "qmax")
    scale = node.attr("scale")
    if scale is None:
        raise InterpreterError(f"{node.describe()}: missing attribute 'scale'")
    storage = storage_dtype(node, min(qmin, zp), max(qmax, zp))
    params = QuantParams(np.float32(scale), zp, _declared_int_type(node, storage))
    # QuantizeLinear saturates to the type's range; [qmin, qmax] lies inside it, so one more
    # clip gives clip(round(x / scale) + zp, qmin, qmax)
    return [np.clip(quantize(x, params), qmin, qmax).astype(storage)]


def dequantize_op(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``Dequantize(q)``: ``(q - zero_point) * scale`` in float32."""
    q = args[0]
    if q.dtype.kind not in "iu":
        raise InterpreterError(f"{node.describe()}: input '{node.inputs[0].name}' must be an integer "
                               f"tensor, got {q.dtype}")
    scale = node.attr("scale")
    if scale is None:
        raise InterpreterError(f"{node.describe()}: missing attribute 'scale'")
    zp = one_int(node, "zero_point")
    lo, hi = (-(2**31), 2**31 - 1) if q.dtype.itemsize >= 4 else (np.iinfo(q.dtype).min, np.iinfo(q.dtype).max)
    if not lo <= zp <= hi:
        raise InterpreterError(f"{node.describe()}: zero_point {zp} is outside the range of its input "
                               f"'{node.inputs[0].name}' ({q.dtype})")
    params = QuantParams(np.float32(scale), zp, "int32" if q.dtype.itemsize >= 4 else q.dtype)
    return [dequantize(q, params)]


# -- ONNX QuantizeLinear / DequantizeLinear ------------------------------------------------------
def _onnx_params(node: Node, scale: np.ndarray, zp: np.ndarray | None, dtype: IntType, rank: int) -> QuantParams:
    if node.attr("block_size", 0):
        raise NotNative("blocked quantization")
    scale = np.asarray(scale)
    zero = np.zeros(scale.shape, np.int64) if zp is None else np.asarray(zp).astype(np.int64).reshape(scale.shape)
    if scale.size == 1 and scale.ndim <= 1:  # per tensor (a 1-element 1-D scale broadcasts the same)
        return QuantParams(scale.reshape(()), zero.reshape(()), dtype)
    if scale.ndim != 1:
        raise NotNative("blocked quantization")
    axis = int(node.attr("axis", 1))
    return QuantParams(scale, zero, dtype, axis + rank if axis < 0 else axis)


def quantize_linear(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX QuantizeLinear through ``qgraph.quant.params.quantize`` (4-bit results in int8 /
    uint8 storage; float8 and blocked forms go to onnx's evaluator)."""
    x, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 else None
    try:
        if zp is not None:
            dtype = int_type(zp.dtype)
        else:
            code = int(node.attr("output_dtype", 0))
            dtype = int_type(DType(code)) if code else int_type("uint8")
    except ValueError as e:
        raise NotNative(str(e)) from e
    if dtype.bits > 16:
        raise NotNative("32-bit QuantizeLinear")
    return [quantize(_float_input(node, x), _onnx_params(node, scale, zp, dtype, x.ndim))]


def dequantize_linear(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX DequantizeLinear through ``qgraph.quant.params.dequantize``."""
    q, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 else None
    try:
        dtype = int_type(zp.dtype if zp is not None else q.dtype)
    except ValueError as e:
        raise NotNative(str(e)) from e
    if np.asarray(scale).dtype != np.float32:
        raise NotNative("non-float32 scale")
    return [dequantize(q, _onnx_params(node, scale, zp, dtype, q.ndim))]
