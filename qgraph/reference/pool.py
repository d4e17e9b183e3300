"""QAveragePool, QGlobalAveragePool and MaxPool (on integer or float tensors)."""

from __future__ import annotations

import numpy as np

from qgraph.ir.core import Node
from qgraph.quant.fixedpoint import MAX_RUNTIME_COUNT, requantize_to, rounding_divide
from qgraph.reference.common import InterpreterError, NotNative, Requant, as_int64, ints, one_int, saturate, windows


def _kernel(node: Node, x: np.ndarray) -> tuple[int, ...]:
    if x.ndim < 3:
        raise InterpreterError(f"{node.describe()}: input '{node.inputs[0].name}' {x.shape} must be "
                               "[N, C, spatial...]")
    kernel = tuple(int(k) for k in ints(node, "kernel_shape"))
    if len(kernel) != x.ndim - 2:
        raise InterpreterError(f"{node.describe()}: kernel_shape {list(kernel)} does not match the "
                               f"{x.ndim - 2} spatial dims of '{node.inputs[0].name}'")
    return kernel


def qaverage_pool(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QAveragePool(x)``: window sums of ``x - x_zp`` requantized by the divisor's multiplier.

    The divisor ``n`` of a window counts its taps inside the padded input
    ``[-pad_begin, size + pad_end)`` when ``count_include_pad``, else its taps inside the
    input; taps that ``ceil_mode`` adds past the end pad never count (ONNX Runtime and
    PyTorch divide the same way).
    """
    x = args[0]
    kernel = _kernel(node, x)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    include_pad = bool(node.attr("count_include_pad", 0))
    win = windows(node, x.shape[2:], kernel, ceil_mode=ceil_mode)
    taps = int(np.prod(kernel))
    mult, shift = ints(node, "multiplier"), ints(node, "shift")
    if mult.size != taps + 1 or shift.size != taps + 1:
        raise InterpreterError(f"{node.describe()}: 'multiplier' and 'shift' need prod(kernel_shape) + 1 = "
                               f"{taps + 1} entries (indexed by the divisor), got {mult.size} and {shift.size}")
    xs = as_int64(node, x, node.inputs[0].name) - one_int(node, "x_zero_point")
    xp = np.pad(xs, win.pad_width(2))
    counted = np.zeros(xp.shape[2:], np.int64)
    inside = tuple(slice(0, b + s + e) if include_pad else slice(b, b + s)
                   for b, s, e in zip(win.pads_begin, x.shape[2:], win.pads_end))
    counted[inside] = 1
    acc = np.zeros(x.shape[:2] + win.out, np.int64)
    n = np.zeros(win.out, np.int64)
    for sl in win.taps():
        acc += xp[(slice(None), slice(None)) + sl]
        n += counted[sl]
    # n == 0 (a window entirely in padding) has acc == 0 and multiplier[0] == 0: y = y_zero_point
    qmin, qmax = one_int(node, "y_qmin"), one_int(node, "y_qmax")
    y = requantize_to(acc, mult[n], shift[n], one_int(node, "y_zero_point"), qmin, qmax)
    return [saturate(node, y, qmin, qmax)]


def qglobal_average_pool(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QGlobalAveragePool(x)``: the spatial sum of ``x - x_zp``, requantized (the multiplier
    already holds the division by the spatial size), or with ``runtime_count`` divided by the
    count of this input's positions (``qgraph.ir.l3``)."""
    x = args[0]
    if x.ndim < 3:
        raise InterpreterError(f"{node.describe()}: input '{node.inputs[0].name}' {x.shape} must be "
                               "[N, C, spatial...]")
    xs = as_int64(node, x, node.inputs[0].name) - one_int(node, "x_zero_point")
    acc = xs.sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    if not node.attr("runtime_count", 0):
        return [Requant.of(node).apply(node, acc)]
    # the runtime-count form: round_half_even(acc * m / (count << s)), exact in int64
    count = int(np.prod(x.shape[2:]))
    if not 1 <= count <= MAX_RUNTIME_COUNT:
        raise InterpreterError(f"{node.describe()}: '{node.inputs[0].name}' has {count} spatial positions; "
                               f"a runtime-count QGlobalAveragePool takes 1 to {MAX_RUNTIME_COUNT}")
    mult, shift = one_int(node, "multiplier"), one_int(node, "shift")
    qmin, qmax = one_int(node, "y_qmin"), one_int(node, "y_qmax")
    if acc.size and float(np.abs(acc).max()) * abs(mult) >= 2.0 ** 63:
        raise InterpreterError(f"{node.describe()}: acc * multiplier leaves int64")
    y = rounding_divide(acc * np.int64(mult), np.int64(count) << np.int64(shift))
    y = np.clip(y + one_int(node, "y_zero_point"), qmin, qmax)
    return [saturate(node, y, qmin, qmax)]


def max_pool(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """ONNX MaxPool (the ``Y`` output only; with ``Indices`` the node goes to onnx's evaluator)."""
    if len(node.outputs) > 1 and node.outputs[1] is not None:
        raise NotNative("MaxPool Indices")
    x = args[0]
    kernel = _kernel(node, x)
    win = windows(node, x.shape[2:], kernel, ceil_mode=bool(node.attr("ceil_mode", 0)))
    if x.dtype.kind in "iu":
        lowest = np.iinfo(x.dtype).min
    elif x.dtype.kind == "f":
        lowest = -np.inf
    else:
        raise NotNative(f"MaxPool on {x.dtype}")
    xp = np.pad(x, win.pad_width(2), constant_values=lowest)
    y = None
    for sl in win.taps():
        tap = xp[(slice(None), slice(None)) + sl]
        y = tap.copy() if y is None else np.maximum(y, tap, out=y)
    return [y]
