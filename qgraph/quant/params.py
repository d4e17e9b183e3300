"""Integer types, scale / zero-point choice, QuantizeLinear and DequantizeLinear.

The conventions are ONNX Runtime's quantizer's (``onnxruntime/quantization/quant_utils.py``),
so that a qgraph model and an ORT-quantized one can be compared value for value:

- the real range always includes 0 (``[min(lo, 0), max(hi, 0)]``), so 0 is exact;
- symmetric ranges use ``absmax = max(|lo|, |hi|)`` and the zero point is the middle of the
  integer range, ``round((qmin + qmax) / 2)`` (0 for int8 / int16, 128 for uint8, 32768 for
  uint16), independent of the scale;
- asymmetric zero points are ``round(qmin - lo / scale)``, rounding half to even, with the
  scale computed in float64 and stored as float32;
- a range of width 0 (all zeros) gets scale 1.0 and zero point 0;
- ``pow2`` (for NPUs that shift instead of multiplying) rounds the scale *up* to a power of
  two, so the range still fits, and then applies the same zero-point rule with that scale;
- symmetric int8 / int16 use the restricted range [-127, 127] / [-32767, 32767]; the other
  types use their full range;
- ``reduce_range`` (ORT's 7-bit weight option for CPUs without VNNI) uses ORT's table:
  int8 [-64, 64], uint8 [0, 127], int16 [-16384, 16384], uint16 [0, 32767],
  int4 [-4, 3], uint4 [0, 7]; it takes precedence over the symmetric range.

``quantize`` is ONNX QuantizeLinear: ``saturate(round_half_to_even(x / scale) + zero_point)``
with ``x / scale`` computed in float32, as the ONNX reference and ORT's kernels do.
``dequantize`` is DequantizeLinear: ``(q - zero_point) * scale`` in float32.
4-bit values are held in int8 / uint8 arrays (what onnx's reference and ORT's quantizer
use before packing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from onnx import TensorProto


@dataclass(frozen=True)
class IntType:
    """An integer element type: its width, signedness, ONNX code and numpy storage dtype.

    ``onnx`` is the plain ONNX ``TensorProto`` code (an int): the numerics know nothing of
    the IR, whose ``DType`` is an ``IntEnum`` over the same codes (``DType(t.onnx)``).
    """

    name: str
    bits: int
    signed: bool
    onnx: int  # TensorProto.DataType code
    storage: np.dtype  # numpy dtype holding the values (int8 / uint8 for 4-bit types)

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def qrange(self, *, symmetric: bool = False, reduce_range: bool = False) -> tuple[int, int]:
        """The integer range scale / zero-point choice targets (ORT's tables, see the module doc).

        QuantizeLinear itself always saturates to the full range ``[qmin, qmax]``.
        """
        if reduce_range:
            if self.name not in _REDUCED_RANGE:
                raise ValueError(f"reduce_range is not defined for {self.name} (ORT defines it for "
                                 f"{', '.join(_REDUCED_RANGE)})")
            return _REDUCED_RANGE[self.name]
        if symmetric and self.signed and self.bits in (8, 16, 32):
            return -self.qmax, self.qmax
        return self.qmin, self.qmax

    def __str__(self) -> str:
        return self.name


INT4 = IntType("int4", 4, True, TensorProto.INT4, np.dtype(np.int8))
UINT4 = IntType("uint4", 4, False, TensorProto.UINT4, np.dtype(np.uint8))
INT8 = IntType("int8", 8, True, TensorProto.INT8, np.dtype(np.int8))
UINT8 = IntType("uint8", 8, False, TensorProto.UINT8, np.dtype(np.uint8))
INT16 = IntType("int16", 16, True, TensorProto.INT16, np.dtype(np.int16))
UINT16 = IntType("uint16", 16, False, TensorProto.UINT16, np.dtype(np.uint16))
INT32 = IntType("int32", 32, True, TensorProto.INT32, np.dtype(np.int32))

INT_TYPES: dict[str, IntType] = {t.name: t for t in (INT4, UINT4, INT8, UINT8, INT16, UINT16, INT32)}

_REDUCED_RANGE = {
    "int8": (-64, 64), "uint8": (0, 127), "int16": (-16384, 16384), "uint16": (0, 32767),
    "int4": (-4, 3), "uint4": (0, 7),
}

IntTypeLike = Union[IntType, str, int, np.dtype, type]  # int: an ONNX code (the IR's DType is one)


def int_type(t: IntTypeLike) -> IntType:
    """The ``IntType`` named by ``t``: an IntType, a name ("int8", "u8"), an ONNX type code (an int,
    the IR's ``DType`` included) or a numpy dtype."""
    if isinstance(t, IntType):
        return t
    if isinstance(t, str):
        key = t.lower()
        key = {"i4": "int4", "u4": "uint4", "i8": "int8", "u8": "uint8", "i16": "int16",
               "u16": "uint16", "i32": "int32"}.get(key, key)
        if key in INT_TYPES:
            return INT_TYPES[key]
        raise ValueError(f"unknown integer type '{t}'; choose one of {', '.join(INT_TYPES)}")
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        code = int(t)
        if code not in TensorProto.DataType.values():
            raise ValueError(f"{t} is not an ONNX data type code")
        for it in INT_TYPES.values():
            if it.onnx == code:
                return it
        raise ValueError(f"{TensorProto.DataType.Name(code)} is not a quantized integer type")
    try:
        dt = np.dtype(t)
    except TypeError as e:
        raise ValueError(f"cannot read {t!r} as an integer type") from e
    # int8 / uint8 storage names the 8-bit types (4-bit types must be asked for by name).
    for it in (INT8, UINT8, INT16, UINT16, INT32):
        if it.storage == dt:
            return it
    if dt.name in INT_TYPES:  # ml_dtypes int4 / uint4
        return INT_TYPES[dt.name]
    raise ValueError(f"numpy dtype {dt} is not a quantized integer type")


class QuantParams:
    """Scale and zero point of a quantized tensor, per tensor or per channel.

    Attributes:
        scale: float32 array, shape ``()`` per tensor or ``(C,)`` per channel; every value > 0.
        zero_point: int64 array of the same shape, inside ``[dtype.qmin, dtype.qmax]``
            (``zero_point_stored`` gives it in the type's storage dtype, for ONNX).
        dtype: the integer type.
        axis: the channel axis of the quantized tensor (None per tensor).
    """

    __slots__ = ("scale", "zero_point", "dtype", "axis")

    def __init__(self, scale, zero_point, dtype: IntTypeLike, axis: int | None = None):
        self.dtype = int_type(dtype)
        self.scale = np.asarray(scale, dtype=np.float32)
        self.zero_point = np.asarray(zero_point).astype(np.int64)
        self.axis = axis
        if self.zero_point.shape != self.scale.shape:
            if self.zero_point.ndim == 0:
                self.zero_point = np.full(self.scale.shape, int(self.zero_point), np.int64)
            else:
                raise ValueError(f"scale shape {self.scale.shape} and zero point shape "
                                 f"{self.zero_point.shape} differ")
        if axis is None and self.scale.ndim != 0:
            if self.scale.size != 1:
                raise ValueError(f"{self.scale.size} scales need a channel axis")
            self.scale, self.zero_point = self.scale.reshape(()), self.zero_point.reshape(())
        if axis is not None and self.scale.ndim != 1:
            raise ValueError(f"per-channel scales must be 1-D, got shape {self.scale.shape}")
        if not np.all(np.isfinite(self.scale) & (self.scale > 0)):
            raise ValueError(f"scales must be finite and > 0, got {self.scale}")
        if np.any(self.zero_point < self.dtype.qmin) or np.any(self.zero_point > self.dtype.qmax):
            raise ValueError(f"zero point {self.zero_point} outside {self.dtype.name} "
                             f"[{self.dtype.qmin}, {self.dtype.qmax}]")
        self.scale.flags.writeable = False
        self.zero_point.flags.writeable = False

    @classmethod
    def from_qdq(cls, p: Any) -> "QuantParams":
        """The parameters a Q / DQ node holds (``qgraph.ir.l2.read_qdq``), per tensor or per axis.

        ``p`` is read by its fields (``scale``, ``zero_point``, ``dtype`` an ONNX code,
        ``axis``, ``block_size``), so the numerics need not import the IR that defines it.

        Raises:
            ValueError: block quantization (no ``QuantParams`` form), a type the quantization
                math does not know (int2 / uint2), or values it refuses (a scale <= 0).
        """
        if p.block_size:
            raise ValueError(f"block quantization (block_size {p.block_size}) has no per-tensor or per-axis form")
        return cls(p.scale, p.zero_point, p.dtype, p.axis)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def zero_point_stored(self) -> np.ndarray:
        return self.zero_point.astype(self.dtype.storage)

    def broadcast(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, zero_point) reshaped to broadcast against a rank-``ndim`` tensor."""
        if self.axis is None:
            return self.scale, self.zero_point
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise ValueError(f"channel axis {self.axis} is out of range for a rank-{ndim} tensor")
        shape = [1] * ndim
        shape[axis] = self.scale.size
        return self.scale.reshape(shape), self.zero_point.reshape(shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (self.dtype == other.dtype and self.axis == other.axis
                and np.array_equal(self.scale, other.scale) and np.array_equal(self.zero_point, other.zero_point))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        def show(a):
            return a.item() if a.ndim == 0 else (a.tolist() if a.size <= 4 else f"[{a.size} values]")

        axis = f", axis={self.axis}" if self.axis is not None else ""
        return f"QuantParams(scale={show(self.scale)}, zero_point={show(self.zero_point)}, {self.dtype.name}{axis})"


def choose_params(lo, hi, dtype: IntTypeLike, *, symmetric: bool = False, reduce_range: bool = False,
                  axis: int | None = None, min_real_range: float | None = None,
                  pow2: bool = False) -> QuantParams:
    """Scale and zero point for real values in ``[lo, hi]``, as ORT's ``compute_scale_zp``.

    Args:
        lo, hi: the range; scalars, or 1-D arrays (one per channel, with ``axis``). Read as
            float32, as ORT's calibrators hand them over.
        dtype: the integer type ("uint8", "int8", ... or an ``IntType``).
        symmetric: symmetric range around 0 (see the module doc for the zero point).
        reduce_range: ORT's reduced range (7-bit int8 / uint8 weights for non-VNNI CPUs).
        axis: the channel axis of the tensor these parameters quantize (per-channel).
        min_real_range: the minimum ``hi - lo`` (ORT's ``MinimumRealRange`` option).
        pow2: round each scale up to a power of two (the zero point then follows from it).
    """
    t = int_type(dtype)
    qmin, qmax = t.qrange(symmetric=symmetric, reduce_range=reduce_range)
    lo32 = np.asarray(lo, dtype=np.float32)
    hi32 = np.asarray(hi, dtype=np.float32)
    if lo32.shape != hi32.shape:
        raise ValueError(f"lo shape {lo32.shape} and hi shape {hi32.shape} differ")
    if np.any(np.isnan(lo32)) or np.any(np.isnan(hi32)):
        raise ValueError("a range bound is NaN")
    if not (np.all(np.isfinite(lo32)) and np.all(np.isfinite(hi32))):
        raise ValueError(f"cannot quantize an unbounded range [{lo}, {hi}]")
    if axis is None and lo32.ndim != 0:
        if lo32.size != 1:
            raise ValueError(f"{lo32.size} ranges need a channel axis")
        lo32, hi32 = lo32.reshape(()), hi32.reshape(())
    rmin = np.minimum(lo32, np.float32(0))
    rmax = np.maximum(hi32, np.float32(0))
    if min_real_range is not None:
        rmax = np.maximum(rmax, rmin + np.float32(min_real_range))
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    degenerate = scale64 < np.finfo(np.float32).tiny
    safe = np.where(degenerate, 1.0, scale64)
    if pow2:
        # exact powers of two in float64 and float32 alike; ceil keeps [rmin, rmax] representable
        safe = np.exp2(np.ceil(np.log2(safe)))
    if symmetric:
        zp = np.full(scale64.shape, np.round((qmin + qmax) / 2.0))
    else:
        zp = np.round(qmin - rmin.astype(np.float64) / safe)
    scale = np.where(degenerate, np.float32(1.0), safe.astype(np.float32))
    zp = np.where(degenerate, 0, zp).astype(np.int64)
    return QuantParams(scale, zp, t, axis)


#: ``choose_weight_params``'s ``clip`` choices: the tensor's own min / max, or the range
#: shrunk per channel to the least squared rounding-plus-clipping error (``CLIP_RATIOS``).
WEIGHT_CLIPS = ("minmax", "mse")

#: The shrink factors ``clip="mse"`` tries on a channel's min / max: 1.0 (min / max itself)
#: down to 0.5 in steps of 1/64.
CLIP_RATIOS = np.linspace(1.0, 0.5, 33, dtype=np.float32)


def choose_weight_params(w: np.ndarray, dtype: IntTypeLike = "int8", *, axis: int | None = 0,
                         symmetric: bool = True, reduce_range: bool = False, pow2: bool = False,
                         clip: str = "minmax") -> QuantParams:
    """Parameters for a constant tensor, per channel along ``axis`` (or per tensor).

    ``clip``: ``"minmax"``, the range from the tensor's min / max (ORT's quantizer); ``"mse"``,
    each channel's min / max times the factor of ``CLIP_RATIOS`` whose quantize-dequantize
    round trip has the least squared error against the float weights (ties: the wider range).
    A weight's few largest values then saturate and every other value gets a finer step: at
    4 bits (7 positive steps) that is what keeps most of a channel's information; at 8 bits the
    gain is small. Each candidate is the exact ``choose_params`` / ``quantize`` /
    ``dequantize`` of the result, so the chosen error is the one the model will have.

    ORT's default for int8 weights is symmetric; its QDQ quantizer makes per-channel weights
    symmetric whatever the option says.
    """
    if clip not in WEIGHT_CLIPS:
        raise ValueError(f"clip={clip!r}: choose one of {', '.join(WEIGHT_CLIPS)}")
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        flat, out_axis = w.reshape(1, -1), None
    else:
        axis = axis + w.ndim if axis < 0 else axis
        flat, out_axis = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), axis
    if flat.shape[1] == 0:
        lo = hi = np.zeros(flat.shape[0], np.float32)
    else:
        lo, hi = flat.min(axis=1), flat.max(axis=1)

    def params(ratio):
        lo_r, hi_r = lo * ratio, hi * ratio
        if out_axis is None:
            lo_r, hi_r = lo_r.reshape(()), hi_r.reshape(())
        return choose_params(lo_r, hi_r, dtype, symmetric=symmetric, reduce_range=reduce_range, axis=out_axis,
                             pow2=pow2)

    if clip == "minmax" or flat.shape[1] == 0:
        return params(np.float32(1.0))
    best_err = best_ratio = None
    for ratio in CLIP_RATIOS:
        p = params(ratio)
        p_flat = QuantParams(p.scale.reshape(-1), p.zero_point.reshape(-1), p.dtype, 0)
        err = np.square(dequantize(quantize(flat, p_flat), p_flat) - flat).sum(axis=1, dtype=np.float64)
        if best_err is None:
            best_err, best_ratio = err, np.full(err.shape, ratio, np.float32)
        else:
            better = err < best_err
            best_err, best_ratio = np.where(better, err, best_err), np.where(better, ratio, best_ratio)
    return params(best_ratio)


def quantize(x, params: QuantParams) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(round_half_to_even(x / scale) + zero_point)``.

    Returns an array of ``params.dtype.storage``. NaN inputs are refused (QuantizeLinear
    does not define them).
    """
    x32 = np.asarray(x, dtype=np.float32)
    if np.isnan(x32).any():
        raise ValueError("cannot quantize NaN")
    scale, zp = params.broadcast(x32.ndim)
    with np.errstate(over="ignore"):  # x / scale may overflow to inf: it saturates below
        q = np.rint(x32 / scale).astype(np.float64) + zp
    t = params.dtype
    return np.clip(q, t.qmin, t.qmax).astype(t.storage)


def dequantize(q, params: QuantParams) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q)
    scale, zp = params.broadcast(q.ndim)
    return (q.astype(np.int64) - zp).astype(np.float32) * scale


#: the largest int32 bias ``fit_weight_scale_to_bias`` allows: half of int32, the other half is
#: left to the products an int32 accumulator adds to it
BIAS_BOUND = 1 << 30


def fit_weight_scale_to_bias(w_params: QuantParams, bias, act_scale, *, pow2: bool = False) -> QuantParams:
    """``w_params`` with each scale raised, where needed, so the int32 bias stays within ``BIAS_BOUND``.

    A channel whose weights are (nearly) all zero gets a tiny scale from its min / max, and
    its bias divided by ``act_scale * scale`` overflows int32 (and the accumulator). As ONNX
    Runtime's quantizer does (``_adjust_weight_scale_for_int32_bias``), such a scale is raised
    to ``|bias| / (act_scale * BIAS_BOUND)``: the channel's weights then use fewer integer
    levels (none but 0 when they were ~0). Zero points are kept (the range only grows);
    with ``pow2`` a raised scale is rounded up to a power of two. Returns ``w_params`` itself
    when no scale needs raising.
    """
    scale = w_params.scale.astype(np.float64)
    b = np.abs(np.asarray(bias, np.float64)).reshape(-1)
    need = b / (np.float64(np.asarray(act_scale, np.float32).reshape(())) * BIAS_BOUND)
    need = need.max(initial=0.0) if scale.ndim == 0 else np.broadcast_to(need, scale.shape)
    raise_ = need > scale
    if not np.any(raise_):
        return w_params
    new = np.where(raise_, need * 1.0001, scale)  # margin for the float32 products quantize_bias takes
    if pow2:
        new = np.where(raise_, np.exp2(np.ceil(np.log2(new))), new)
    return QuantParams(new.astype(np.float32), w_params.zero_point, w_params.dtype, w_params.axis)


def quantize_bias(bias, act_scale, weight_scale) -> tuple[np.ndarray, QuantParams]:
    """An int32 bias with scale ``act_scale * weight_scale`` (float32) and zero point 0.

    As ORT's quantizer: the division is done in float64, rounded half to even and clipped to
    int32. ``weight_scale`` may be per channel (then so is the result, along axis 0). A
    weight scale too small for the bias is enlarged beforehand by ``fit_weight_scale_to_bias``.
    Returns the int32 values and their parameters.
    """
    s = np.asarray(act_scale, np.float32) * np.asarray(weight_scale, np.float32)
    per_channel = s.size > 1
    s = s.reshape(-1) if per_channel else s.reshape(())
    q = np.round(np.asarray(bias, np.float64) / s.astype(np.float64))
    q = np.clip(q, INT32.qmin, INT32.qmax).astype(np.int32)
    return q, QuantParams(s, np.zeros(s.shape, np.int64), INT32, 0 if per_channel else None)
