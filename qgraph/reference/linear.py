"""QConv and QMatMul: integer dot products, exact, at BLAS speed.

The dot products of L3 are sums of products of small integers (zero-point-shifted 8- or
16-bit values). A float sum of integers is exact while every partial sum, in whatever order
the BLAS adds them, is an integer of magnitude below ``2**24`` (float32) or ``2**53``
(float64). Every partial sum of ``sum_k x[k] * w[k]`` is bounded by
``max|x| * sum_k |w[k]|``; the kernels compute that bound from the actual operands and pick
float32, float64 or (when even float64 could round) int64 ``matmul``. The result is the
same int64 accumulator in every case, then checked against int32 (the L3 contract) and
requantized with ``qgraph.quant.fixedpoint``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from qgraph.ir.core import Node
from qgraph.reference.common import (
    AccumulatorOverflowError, InterpreterError, Requant, as_int64, ints, one_int, per_channel, transposed, windows,
)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def exact_dtype(bound: int) -> np.dtype:
    """The cheapest dtype whose sums of integers below ``bound`` in magnitude are exact."""
    if bound < 2**24:
        return np.dtype(np.float32)
    if bound < 2**53:
        return np.dtype(np.float64)
    return np.dtype(np.int64)


def check_int32(node: Node, acc: np.ndarray) -> None:
    """Raise ``AccumulatorOverflowError`` when ``acc`` leaves int32, naming the node and the extreme."""
    if acc.size == 0:
        return
    lo, hi = int(acc.min()), int(acc.max())
    if lo < _INT32_MIN or hi > _INT32_MAX:
        out = node.outputs[0].name if node.outputs and node.outputs[0] is not None else "?"
        raise AccumulatorOverflowError(
            f"{node.describe()}: the int32 accumulator of output '{out}' overflows (reaches "
            f"{lo if lo < _INT32_MIN else hi}); the L3 contract requires |acc| < 2**31: use narrower "
            "weights / activations or a smaller bias")


def _bias(node: Node, args: list, channels: int) -> np.ndarray | None:
    bias = args[2] if len(args) > 2 else None
    if bias is None:
        return None
    b = as_int64(node, bias, node.inputs[2].name).reshape(-1)
    if b.size not in (1, channels):
        raise InterpreterError(f"{node.describe()}: bias '{node.inputs[2].name}' has {b.size} values, "
                               f"expected {channels}")
    return b


# -- QConv ---------------------------------------------------------------------------------------
def _conv_weights(node: Node, w: np.ndarray, memo: dict) -> tuple[np.ndarray, int, dict]:
    """``w - w_zp`` as int64 ``[M, C/group * prod(k)]``, the bound ``max_m sum |.|`` and a
    per-dtype cache of the same values, memoized while ``w`` is the same array."""
    wzp = ints(node, "w_zero_point")
    key = (id(w), tuple(wzp.tolist()))
    hit = memo.get("w")
    if hit is not None and hit[0] == key:
        return hit[2], hit[3], hit[4]
    m = w.shape[0]
    wzp = per_channel(node, "w_zero_point", wzp, m)
    wd = as_int64(node, w, node.inputs[1].name).reshape(m, -1) - wzp.reshape(-1, 1)
    bound = int(np.abs(wd).sum(axis=1).max()) if wd.size else 0
    by_dtype: dict[Any, np.ndarray] = {}
    memo["w"] = (key, w, wd, bound, by_dtype)  # holds w, so its id cannot be reused meanwhile
    return wd, bound, by_dtype


def _x_w_kernel(node: Node, args: list, w_layout: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``x``, ``w`` and ``kernel_shape`` of a QConv / QConvTranspose, checked: both given, of one
    rank >= 3 (``w_layout`` names w's layout in the error), the kernel equal to w's."""
    x, w = args[0], args[1]
    if x is None or w is None:
        raise InterpreterError(f"{node.describe()}: {node.op_type} needs x and w")
    if x.ndim < 3 or w.ndim != x.ndim:
        raise InterpreterError(f"{node.describe()}: x '{node.inputs[0].name}' {x.shape} and w "
                               f"'{node.inputs[1].name}' {w.shape} must be [N, C, spatial...] and {w_layout}")
    kernel = tuple(int(k) for k in ints(node, "kernel_shape", list(w.shape[2:])))
    if kernel != tuple(w.shape[2:]):
        raise InterpreterError(f"{node.describe()}: kernel_shape {list(kernel)} differs from w's {list(w.shape[2:])}")
    return x, w, kernel


def qconv(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QConv(x, w, [bias])`` (see ``qgraph.ir.l3``): N-D, grouped, strided, dilated, padded."""
    x, w, kernel = _x_w_kernel(node, args, "[M, C/group, k...]")
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    group = int(node.attr("group", 1))
    if group < 1 or c != cg * group or m % group:
        raise InterpreterError(f"{node.describe()}: x has {c} channels, w is {list(w.shape)}, group={group}: "
                               f"expected C == w.shape[1] * group and M divisible by group")
    rq = Requant.of(node, m)
    wd, wbound, by_dtype = _conv_weights(node, w, memo)
    xs = as_int64(node, x, node.inputs[0].name) - one_int(node, "x_zero_point")
    xmax = int(np.abs(xs).max()) if xs.size else 0
    dt = exact_dtype(xmax * wbound)
    wt = by_dtype.get(dt)
    if wt is None:
        wt = by_dtype[dt] = wd.astype(dt)
    win = windows(node, x.shape[2:], kernel)
    # padding with the zero point adds 0 to every sum: pad the shifted values with 0
    xp = np.pad(xs.astype(dt), win.pad_width(2))
    mg = m // group
    ktot = int(np.prod(kernel))
    if cg == 1 and mg == 1:  # depthwise: one multiply-add pass per tap, no im2col
        acc = np.zeros((n, m) + win.out, dt)
        wk = wt.reshape(m, ktot)
        bshape = (1, m) + (1,) * len(kernel)
        for t, sl in enumerate(win.taps()):
            acc += xp[(slice(None), slice(None)) + sl] * wk[:, t].reshape(bshape)
    else:
        cols = np.empty((n, c, ktot) + win.out, dt)
        for t, sl in enumerate(win.taps()):
            cols[:, :, t] = xp[(slice(None), slice(None)) + sl]
        p = int(np.prod(win.out))
        cols = cols.reshape(n, group, cg * ktot, p)
        acc = np.matmul(wt.reshape(group, mg, cg * ktot), cols).reshape((n, m) + win.out)
    acc = acc.astype(np.int64)
    bias = _bias(node, args, m)
    if bias is not None:
        acc += bias.reshape((1, -1) + (1,) * len(kernel))
    check_int32(node, acc)
    return [rq.apply(node, acc, axis=1)]


# -- QConvTranspose ------------------------------------------------------------------------------
def qconv_transpose(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QConvTranspose(x, w, [bias])`` (see ``qgraph.ir.l3``), as the contract writes it: every
    input position times every tap, scattered to ``i * s + t * d`` and cropped by the pads (one
    channel matmul per tap). The TVM lowering computes it another way (one conv over the stride
    phases), so the two check each other."""
    x, w, kernel = _x_w_kernel(node, args, "[C, M/group, k...]")
    n, c = x.shape[:2]
    group = int(node.attr("group", 1))
    if group < 1 or w.shape[0] != c or c % group:
        raise InterpreterError(f"{node.describe()}: x has {c} channels, w is {list(w.shape)}, group={group}: "
                               "expected C == w.shape[0], divisible by group")
    mg = w.shape[1]
    m, cg = mg * group, c // group
    geo = transposed(node, x.shape[2:], kernel)
    rq = Requant.of(node, m)
    wzp = per_channel(node, "w_zero_point", ints(node, "w_zero_point"), m)
    # w - w_zp as [group, k..., M/group, C/group]: one [M/group, C/group] matrix per group and tap
    wd = (as_int64(node, w, node.inputs[1].name).reshape((group, cg, mg) + kernel)
          - np.broadcast_to(wzp, (m,)).reshape((group, 1, mg) + (1,) * len(kernel)))
    wd = np.moveaxis(wd, (1, 2), (-1, -2))
    xs = as_int64(node, x, node.inputs[0].name) - one_int(node, "x_zero_point")
    xmax = int(np.abs(xs).max()) if xs.size else 0
    # every partial sum is bounded by |x|max times one output channel's sum of |w - w_zp|
    dt = exact_dtype(xmax * int(np.abs(wd).sum(axis=tuple(range(1, wd.ndim - 2)) + (wd.ndim - 1,)).max(initial=0)))
    xg = xs.astype(dt).reshape((n, group, cg, -1))
    wt = wd.astype(dt)
    lead = (slice(None), slice(None))
    buf = np.zeros((n, m) + tuple(max(f, b + o) for f, b, o in zip(geo.full, geo.pads_begin, geo.out)), dt)
    for taps in itertools.product(*(range(k) for k in kernel)):
        part = np.matmul(wt[(slice(None),) + taps], xg).reshape((n, m) + geo.inp)
        buf[lead + tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                         for t, d, i, s in zip(taps, geo.dilations, geo.inp, geo.strides))] += part
    acc = buf[lead + tuple(slice(b, b + o) for b, o in zip(geo.pads_begin, geo.out))].astype(np.int64)
    bias = _bias(node, args, m)
    if bias is not None:
        acc += bias.reshape((1, -1) + (1,) * len(kernel))
    check_int32(node, acc)
    return [rq.apply(node, acc, axis=1)]


# -- QMatMul -------------------------------------------------------------------------------------
def qmatmul(node: Node, args: list, memo: dict) -> list[np.ndarray]:
    """``QMatMul(a, b, [bias])``: numpy matmul of zero-point-shifted operands, per-column requant."""
    a, b = args[0], args[1]
    if a is None or b is None:
        raise InterpreterError(f"{node.describe()}: QMatMul needs a and b")
    if a.ndim == 0 or b.ndim == 0:
        raise InterpreterError(f"{node.describe()}: QMatMul operands must have rank >= 1")
    cols = b.shape[-1] if b.ndim >= 2 else 1
    bzp = per_channel(node, "b_zero_point", ints(node, "b_zero_point"), cols)
    rq = Requant.of(node, cols)
    key = (id(b), tuple(bzp.tolist()))
    hit = memo.get("b")
    if hit is not None and hit[0] == key:
        bd, bbound, by_dtype = hit[2], hit[3], hit[4]
    else:
        bd = as_int64(node, b, node.inputs[1].name) - (bzp if b.ndim >= 2 else bzp.reshape(()))
        bbound = int(np.abs(bd).sum(axis=-2 if b.ndim >= 2 else 0).max()) if bd.size else 0
        by_dtype = {}
        memo["b"] = (key, b, bd, bbound, by_dtype)
    ad = as_int64(node, a, node.inputs[0].name) - one_int(node, "a_zero_point")
    amax = int(np.abs(ad).max()) if ad.size else 0
    dt = exact_dtype(amax * bbound)
    bt = by_dtype.get(dt)
    if bt is None:
        bt = by_dtype[dt] = bd.astype(dt)
    try:
        acc = np.matmul(ad.astype(dt), bt).astype(np.int64)
    except ValueError as e:
        raise InterpreterError(f"{node.describe()}: cannot multiply '{node.inputs[0].name}' {a.shape} by "
                               f"'{node.inputs[1].name}' {b.shape}") from e
    bias = _bias(node, args, cols)
    if bias is not None:
        acc += bias if b.ndim >= 2 else bias.reshape(())
    check_int32(node, acc)
    per_col = rq.multiplier.size > 1 or rq.shift.size > 1
    return [rq.apply(node, acc, axis=acc.ndim - 1 if per_col else None)]
