"""The L2 (QDQ) IR: what a ``QuantizeLinear`` / ``DequantizeLinear`` node's parameters say.

L2 is ONNX with ``QuantizeLinear`` / ``DequantizeLinear`` pairs around float ops
(``insert-qdq`` writes it, ``lower-qdq`` turns it into L3, ``qgraph.ir.l3``). Every
reader of L2 quantization parameters goes through ``read_qdq``, so the ONNX rules below
are written once:

- ``y_scale`` / ``x_scale`` (input 1) and the zero point (input 2) must be constants
  (``Value.constant``: an initializer that is also a graph input is not one).
- The integer type is the zero point's type. Without a zero point it is, for
  ``QuantizeLinear``, the ``output_dtype`` attribute (opset 21) or else uint8, and for
  ``DequantizeLinear`` the type of its input (of the QuantizeLinear producing it when the
  input is untyped); the zero point is then 0.
- The granularity follows the scale: one element is per tensor (``axis`` None, scale and
  zero point of shape ``()``), a 1-D scale is per axis along ``axis`` (default 1; shape
  ``(C,)``), and a ``block_size`` attribute > 0 is block quantization (the scale has the
  tensor's rank, ``ceil(dim / block_size)`` along ``axis``, and keeps that shape).
- A negative ``axis`` is normalized against the quantized tensor's rank when the rank is
  known (from the integer or float side's shape, or a constant's data); it stays negative
  otherwise (``qgraph.quant.QuantParams.broadcast`` normalizes it then).
- Integer types of 2 to 32 bits have ``qmin`` / ``qmax``. Float8 / float4 / float6
  quantization cannot be represented (qgraph's integer IR has no float codes): refused.

``read_qdq`` returns plain numpy arrays and keeps no state; ``qgraph.quant.QuantParams.from_qdq``
turns a per-tensor or per-axis result into the quantization math's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir import ops
from qgraph.ir.core import Node, Value
from qgraph.ir.dtypes import DType, bit_width

#: ONNX QuantizeLinear, and ONNX Runtime's com.microsoft one (same semantics; its quantizer
#: writes it for 16-bit and 4-bit types below opset 21)
QUANTIZE = frozenset({ops.QuantizeLinear, ops.op("QuantizeLinear", "com.microsoft")})
#: ONNX DequantizeLinear and ONNX Runtime's com.microsoft one
DEQUANTIZE = frozenset({ops.DequantizeLinear, ops.op("DequantizeLinear", "com.microsoft")})

#: The integer types a Q / DQ node may carry (INT32: the biases ``insert-qdq`` writes).
INTEGER_TYPES = frozenset({DType.INT2, DType.UINT2, DType.INT4, DType.UINT4, DType.INT8, DType.UINT8,
                           DType.INT16, DType.UINT16, DType.INT32} & set(DType))
#: Scale types ONNX allows; each widens to float32 exactly.
_SCALE_TYPES = frozenset({DType.FLOAT, DType.FLOAT16, DType.BFLOAT16})


class QDQParamsError(QGraphError):
    """A Q / DQ node's parameters cannot be read (not constant, unknown type, bad axis).

    Callers for which such a node simply is not quantized (``lower-qdq`` leaves it float)
    catch this; the message names the node and the value.
    """


@dataclass(frozen=True, eq=False)
class QDQParams:
    """The quantization parameters of one ``QuantizeLinear`` / ``DequantizeLinear`` node.

    Attributes:
        scale: float32, shape ``()`` per tensor, ``(C,)`` per axis, the tensor's rank per block
            (widened exactly from ``scale_dtype``).
        zero_point: int64, the scale's shape (zeros when the node has none).
        dtype: the integer type (``DType.INT8``, ``DType.UINT4``, ...).
        axis: the quantized axis (normalized when the rank is known); None per tensor.
        block_size: the block length along ``axis`` (0: not block quantization).
        qmin: the smallest value of ``dtype``.
        qmax: the largest value of ``dtype``.
        scale_dtype: the scale's type in the graph (float, float16 or bfloat16).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: DType
    axis: int | None
    block_size: int
    qmin: int
    qmax: int
    scale_dtype: DType = DType.FLOAT

    @property
    def per_tensor(self) -> bool:
        return self.axis is None

    @property
    def per_channel(self) -> bool:
        """One scale per slice along ``axis`` (not per tensor, not per block)."""
        return self.axis is not None and not self.block_size


def int_range(dtype: DType) -> tuple[int, int]:
    """``(qmin, qmax)`` of an integer type of ``INTEGER_TYPES``."""
    bits = bit_width(dtype)
    if dtype.name.startswith("U"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def read_qdq(node: Node) -> QDQParams:
    """The parameters of ``node``, a QuantizeLinear or DequantizeLinear (see the module doc).

    Raises:
        QDQParamsError: ``node`` is not a Q / DQ node, its scale or zero point is missing or
            not a constant, its type is not an integer type, or its axis / shapes disagree.
    """
    if node.op not in QUANTIZE and node.op not in DEQUANTIZE:
        raise QDQParamsError(f"{node.describe()} is not a QuantizeLinear or DequantizeLinear")
    scale_v = node.inputs[1] if len(node.inputs) > 1 else None
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    scale_t = _constant(node, scale_v, "scale")
    if scale_t.dtype not in _SCALE_TYPES:
        raise QDQParamsError(f"{node.describe()}: scale '{scale_v.name}' is {scale_t.dtype.name}; "
                             f"ONNX allows float, float16 and bfloat16 scales")
    scale = np.asarray(scale_t.numpy()).astype(np.float32)
    if zp_v is not None:
        zp_t = _constant(node, zp_v, "zero point")
        dtype = zp_t.dtype
        # ONNX wants equal shapes; exporters also write a scalar scale with a [1] zero point
        if zp_t.shape != scale.shape and not (zp_t.size == 1 and scale.size == 1):
            raise QDQParamsError(f"{node.describe()}: zero point '{zp_v.name}' has shape {zp_t.shape}, "
                                 f"the scale '{scale_v.name}' {scale_t.shape}")
        zp = np.asarray(zp_t.numpy()).astype(np.int64).reshape(scale.shape)
    else:
        dtype = _type_without_zero_point(node)
        zp = np.zeros(scale.shape, np.int64)
    if dtype not in INTEGER_TYPES:
        raise QDQParamsError(f"{node.describe()} quantizes to {dtype.name}; qgraph reads integer "
                             f"Q/DQ types only ({', '.join(sorted(t.name for t in INTEGER_TYPES))})")
    qmin, qmax = int_range(dtype)
    block_size = int(node.attr("block_size", 0) or 0)
    rank, shape = _rank(node)
    if block_size < 0:
        raise QDQParamsError(f"{node.describe()}: block_size {block_size} is negative")
    if not block_size and scale.size == 1:  # a scalar or a one-element 1-D scale: per tensor
        axis = None
        scale, zp = scale.reshape(()), zp.reshape(())
    else:
        axis = _axis(node, rank)
        _check_shape(node, scale, axis, block_size, rank, shape)
    scale.flags.writeable = False
    zp.flags.writeable = False
    return QDQParams(scale, zp, dtype, axis, block_size, qmin, qmax, scale_t.dtype)


def _constant(node: Node, v: Value | None, what: str):
    if v is None:
        raise QDQParamsError(f"{node.describe()} has no {what} input")
    t = v.constant()
    if t is None:
        overridable = v.is_graph_input() and v.const_value is not None
        why = " (an initializer that is also a graph input may be overridden by a feed)" if overridable else ""
        raise QDQParamsError(f"{node.describe()}: the {what} '{v.name}' is not a constant{why}; "
                             f"qgraph reads Q/DQ parameters only from initializers or Constant nodes")
    return t


def _type_without_zero_point(node: Node) -> DType:
    if node.op in QUANTIZE:
        out = node.attr("output_dtype", 0)
        return DType(out) if out else DType.UINT8  # ONNX: uint8 unless output_dtype says otherwise
    x = node.inputs[0]
    t = x.dtype if x is not None else None
    if t is None and x is not None and x.constant() is not None:
        t = x.constant().dtype
    q = x.producer() if x is not None else None
    if t is None and q is not None and q.op in QUANTIZE:  # an untyped Q -> DQ edge: the Q's type
        t = read_qdq(q).dtype
    if t is None:
        raise QDQParamsError(f"{node.describe()} has no zero point and the type of its input "
                             f"'{x.name if x is not None else '?'}' is unknown")
    return t


def _rank(node: Node) -> tuple[int | None, tuple | None]:
    """The rank and shape of the quantized tensor: the integer side's, else the float side's."""
    x = node.inputs[0] if node.inputs else None
    out = node.outputs[0] if node.outputs else None
    for v in (x, out):
        if v is None:
            continue
        if v.shape is not None:
            return len(v.shape), v.shape
        t = v.constant()
        if t is not None:
            return len(t.shape), t.shape
    return None, None


def _axis(node: Node, rank: int | None) -> int:
    axis = int(node.attr("axis", 1))
    if rank is None:
        return axis
    if not -rank <= axis < rank:
        raise QDQParamsError(f"{node.describe()}: axis {axis} is out of range for its rank-{rank} tensor")
    return axis + rank if axis < 0 else axis


def _check_shape(node: Node, scale: np.ndarray, axis: int, block_size: int, rank: int | None,
                 shape: tuple | None) -> None:
    if not block_size:
        if scale.ndim != 1:
            raise QDQParamsError(f"{node.describe()}: a per-axis scale must be 1-D, got shape {scale.shape}")
        want = shape[axis] if shape is not None and axis >= 0 else None
        if isinstance(want, int) and want != scale.size:
            raise QDQParamsError(f"{node.describe()}: {scale.size} scales for axis {axis} of size {want}")
        return
    if rank is not None and scale.ndim != rank:
        raise QDQParamsError(f"{node.describe()}: a block scale must have the tensor's rank {rank}, "
                             f"got shape {scale.shape}")
    dim = shape[axis] if shape is not None and axis >= 0 else None
    if isinstance(dim, int) and scale.shape[axis] != -(-dim // block_size):
        raise QDQParamsError(f"{node.describe()}: {scale.shape[axis]} blocks of {block_size} along axis "
                             f"{axis} of size {dim} (expected {-(-dim // block_size)})")
