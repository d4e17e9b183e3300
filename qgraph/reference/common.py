"""Shared pieces of the reference kernels: errors, attribute reading, output storage types,
the requantization step and the window geometry of convolutions and pools.

Storage types and window geometry are facts of the L3 contract (``qgraph.ir.l3``,
``qgraph.ir.l3_geometry``), read there by the TVM lowering too; the functions here only
turn a broken contract into an ``InterpreterError``.

The arithmetic of requantization is not here: ``Requant.apply`` calls
``qgraph.quant.fixedpoint.requantize_to``, the one implementation of the rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir import l3, l3_geometry
from qgraph.ir.core import Node
from qgraph.ir.l3_geometry import Transposed, Windows
from qgraph.quant.fixedpoint import requantize_to


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
    """The numpy storage type of integer output ``index`` (``qgraph.ir.l3.storage_dtype``, the
    contract's rule); raises ``InterpreterError`` where the contract is broken."""
    try:
        return l3.storage_dtype(node, lo, hi, index)
    except l3.ContractError as e:
        raise InterpreterError(str(e)) from e


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
def windows(node: Node, spatial: Sequence[int], kernel: Sequence[int], *, ceil_mode: bool = False) -> Windows:
    """Window geometry of a conv / pool (``qgraph.ir.l3_geometry.windows``, the contract's
    rule); raises ``InterpreterError`` where the attributes do not fit the input."""
    try:
        return l3_geometry.windows(node, spatial, kernel, ceil_mode=ceil_mode)
    except l3.ContractError as e:
        raise InterpreterError(str(e)) from e


def transposed(node: Node, spatial: Sequence[int], kernel: Sequence[int]) -> Transposed:
    """Geometry of a transposed conv (``qgraph.ir.l3_geometry.transposed``, the contract's rule);
    raises ``InterpreterError`` where the attributes do not fit the input."""
    try:
        return l3_geometry.transposed(node, spatial, kernel)
    except l3.ContractError as e:
        raise InterpreterError(str(e)) from e
