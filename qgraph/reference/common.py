"""Shared pieces of the reference kernels: errors, attribute reading, output storage types,
the requantization step and the window geometry of convolutions and pools.

The arithmetic of requantization is not here: ``Requant.apply`` calls
``qgraph.quant.fixedpoint.requantize_to``, the one implementation of the rounding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Node
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.quant.fixedpoint import requantize_to

_INT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
               np.dtype(np.int32), np.dtype(np.uint32), np.dtype(np.int64))
#: Storage types tried, in order, for an integer output whose value has no declared type.
_STORAGE_ORDER = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
                  np.dtype(np.int32))
#: 4-bit values live in int8 / uint8 arrays (the L3 contract, and qgraph.quant.params).
_SUB_BYTE_STORAGE = {DType.INT4: np.dtype(np.int8), DType.UINT4: np.dtype(np.uint8)}


class InterpreterError(QGraphError):
    """The reference interpreter cannot run a node or a feed: names the node / tensor and why."""


class NotNative(Exception):
    """Raised by a numpy kernel for a form of its op it does not implement (e.g. MaxPool with
    Indices): the interpreter then evaluates the node with onnx's reference evaluator."""


class AccumulatorOverflowError(InterpreterError):
    """An integer accumulator left the range the L3 contract guarantees (int32 for conv / matmul)."""


# -- attributes ----------------------------------------------------------------------------------
_MISSING = object()


def ints(node: Node, name: str, default=_MISSING) -> np.ndarray:
    """Attribute ``name`` (INT or INTS) as a 1-D int64 array; raises naming the node when absent."""
    value = node.attr(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise InterpreterError(f"{node.describe()}: missing attribute '{name}'")
        value = default
    return np.atleast_1d(np.asarray(value, dtype=np.int64)).reshape(-1)


def one_int(node: Node, name: str, default=_MISSING) -> int:
    """Attribute ``name`` as a single int (an INTS attribute must then hold one value)."""
    arr = ints(node, name, default)
    if arr.size != 1:
        raise InterpreterError(f"{node.describe()}: attribute '{name}' must hold one value, got {arr.size}")
    return int(arr[0])


def per_channel(node: Node, name: str, arr: np.ndarray, channels: int | None) -> np.ndarray:
    """Check that ``arr`` (attribute ``name``) holds 1 value or one per channel."""
    if arr.size != 1 and (channels is None or arr.size != channels):
        want = "1" if channels is None else f"1 or {channels}"
        raise InterpreterError(f"{node.describe()}: attribute '{name}' has {arr.size} values; expected {want}")
    return arr


def along(arr: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-channel 1-D array shaped to broadcast along ``axis`` of a rank-``ndim`` tensor
    (a single value stays a scalar)."""
    if arr.size == 1:
        return arr.reshape(())
    shape = [1] * ndim
    shape[axis] = arr.size
    return arr.reshape(shape)


# -- output storage ------------------------------------------------------------------------------
def storage_dtype(node: Node, lo: int, hi: int, index: int = 0) -> np.dtype:
    """The numpy storage type of integer output ``index``: its declared type, else the smallest
    of int8, uint8, int16, uint16, int32 holding ``[lo, hi]``."""
    out = node.outputs[index]
    declared = out.dtype if out is not None else None
    if declared is not None and declared != DType.UNDEFINED:
        dt = _SUB_BYTE_STORAGE.get(declared) or to_numpy(declared)
        if dt not in _INT_DTYPES:
            raise InterpreterError(f"{node.describe()}: output '{out.name}' is declared {declared.name}, "
                                   "not an integer type")
        info = np.iinfo(dt)
        if declared in _SUB_BYTE_STORAGE:
            info_lo, info_hi = (-8, 7) if declared == DType.INT4 else (0, 15)
        else:
            info_lo, info_hi = info.min, info.max
        if lo < info_lo or hi > info_hi:
            raise InterpreterError(f"{node.describe()}: output range [{lo}, {hi}] does not fit the declared "
                                   f"type {declared.name} of '{out.name}'")
        return dt
    for dt in _STORAGE_ORDER:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise InterpreterError(f"{node.describe()}: output range [{lo}, {hi}] fits no integer storage type")


def as_int64(node: Node, x: np.ndarray, what: str) -> np.ndarray:
    """An integer operand widened to int64; refuses float operands, naming the input."""
    if x.dtype.kind not in "iu":
        raise InterpreterError(f"{node.describe()}: input '{what}' must be an integer tensor, got {x.dtype}")
    return x.astype(np.int64)


# -- requantization ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requant:
    """The requant attrs of a node: ``clip(y_zp + rq(acc, multiplier, shift), y_qmin, y_qmax)``."""

    multiplier: np.ndarray  # int64, 1 or C values
    shift: np.ndarray
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def of(cls, node: Node, channels: int | None = None) -> "Requant":
        """Read ``multiplier``, ``shift``, ``y_zero_point``, ``y_qmin``, ``y_qmax`` from ``node``."""
        m = per_channel(node, "multiplier", ints(node, "multiplier"), channels)
        s = per_channel(node, "shift", ints(node, "shift"), channels)
        return cls(m, s, one_int(node, "y_zero_point"), one_int(node, "y_qmin"), one_int(node, "y_qmax"))

    def apply(self, node: Node, acc: np.ndarray, axis: int | None = None) -> np.ndarray:
        """Requantize int64 ``acc`` (per-channel values along ``axis``) into the output's storage."""
        if axis is None:
            m, s = self.multiplier.reshape(()), self.shift.reshape(())
        else:
            m, s = along(self.multiplier, axis, acc.ndim), along(self.shift, axis, acc.ndim)
        return saturate(node, requantize_to(acc, m, s, self.zero_point, self.qmin, self.qmax), self.qmin, self.qmax)


def saturate(node: Node, y: np.ndarray, qmin: int, qmax: int, index: int = 0) -> np.ndarray:
    """``y`` (already clipped to ``[qmin, qmax]``) in the storage type of output ``index``."""
    return y.astype(storage_dtype(node, qmin, qmax, index))


# -- windows (conv and pools) --------------------------------------------------------------------
@dataclass(frozen=True)
class Windows:
    """Where the sliding windows of a conv / pool lie over the spatial dims.

    ``pads_begin`` / ``pads_end`` are the declared pads; ``extra_end`` the additional
    positions past the end pad that ``ceil_mode`` windows reach (no data, no pad).
    """

    out: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    extra_end: tuple[int, ...]

    def pad_width(self, lead: int) -> list[tuple[int, int]]:
        """``np.pad`` widths for a tensor with ``lead`` non-spatial leading dims."""
        return [(0, 0)] * lead + [(b, e + x) for b, e, x in zip(self.pads_begin, self.pads_end, self.extra_end)]

    def taps(self) -> Iterator[tuple[slice, ...]]:
        """For each kernel tap (row-major over ``kernel``), the spatial slices of the padded
        input it reads at every output position."""
        for offs in itertools.product(*(range(k) for k in self.kernel)):
            yield tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                        for o, d, s, n in zip(offs, self.dilations, self.strides, self.out))


def windows(node: Node, spatial: Sequence[int], kernel: Sequence[int], *, ceil_mode: bool = False) -> Windows:
    """Window geometry from ONNX Conv / pool attributes (``strides``, ``pads``, ``dilations``,
    ``auto_pad``) over the ``spatial`` input dims.

    ``ceil_mode`` keeps a last partial window only if it starts inside the input or the
    begin pad (the ONNX / ONNX Runtime / PyTorch rule).
    """
    nd = len(spatial)
    strides = tuple(int(s) for s in ints(node, "strides", [1] * nd))
    dilations = tuple(int(d) for d in ints(node, "dilations", [1] * nd))
    pads = [int(p) for p in ints(node, "pads", [0] * (2 * nd))]
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or len(kernel) != nd:
        raise InterpreterError(f"{node.describe()}: strides / dilations / pads / kernel_shape do not match "
                               f"{nd} spatial dims")
    auto_pad = node.attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + eff[i] - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad != "NOTSET":
        raise InterpreterError(f"{node.describe()}: unknown auto_pad '{auto_pad}'")
    begin, end = tuple(pads[:nd]), tuple(pads[nd:])
    out, extra = [], []
    for i in range(nd):
        span = spatial[i] + begin[i] + end[i] - eff[i]
        if span < 0:
            raise InterpreterError(f"{node.describe()}: the window ({eff[i]}) is larger than the padded input "
                                   f"({spatial[i] + begin[i] + end[i]}) along spatial dim {i}")
        n = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (n - 1) * strides[i] >= spatial[i] + begin[i]:
            n -= 1
        out.append(n)
        extra.append(max(0, (n - 1) * strides[i] + eff[i] - (spatial[i] + begin[i] + end[i])))
    return Windows(tuple(out), tuple(int(k) for k in kernel), strides, dilations, begin, end, tuple(extra))
