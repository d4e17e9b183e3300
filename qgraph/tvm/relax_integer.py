"""Relax lowerings of the L3 integer ops (``qgraph.ir.l3``): bit-exact with the reference.

Dot products (QConv, QMatMul) subtract the zero points first, in int16 where the shifted
values fit (8-bit operands) else int32, and accumulate in int32 (``out_dtype``: without it
Relax accumulates in the operand type). Padding is explicit: the zero-point-shifted input
is padded with 0, which is padding the input with its zero point. Everything after the
accumulator is int64: ``requantize`` emits the contract's ``(acc * m + 2**(s-1)) >> s``
(``qgraph.quant.fixedpoint.requantize``), adds the zero point and clips *before* the
narrowing cast (``astype`` wraps).
"""

from __future__ import annotations

import math

import numpy as np

from qgraph.ir import l3
from qgraph.ir.core import Node, Value
from qgraph.ir.l3_geometry import phase_weights
from qgraph.ir.types import TensorType
from qgraph.quant.fixedpoint import MAX_RUNTIME_COUNT, rounding_half
from qgraph.tvm.context import LowerContext, target_kernel

_INT16 = (-(2**15), 2**15 - 1)
_INT32_OR_LESS = ("int8", "uint8", "int16", "uint16", "int32")


def _ints(ctx: LowerContext, name: str, default=None) -> np.ndarray:
    value = ctx.node.attr(name, default)
    if value is None:
        raise ctx.error(f"missing attribute '{name}'")
    return np.atleast_1d(np.asarray(value, dtype=np.int64)).reshape(-1)


def _int(ctx: LowerContext, name: str, default=None) -> int:
    arr = _ints(ctx, name, default)
    if arr.size != 1:
        raise ctx.error(f"attribute '{name}' must hold one value, got {arr.size}")
    return int(arr[0])


def _per_channel(ctx: LowerContext, name: str, channels: int | None) -> np.ndarray:
    arr = _ints(ctx, name)
    if arr.size != 1 and arr.size != channels:
        raise ctx.error(f"attribute '{name}' has {arr.size} values; expected 1 or {channels}")
    return arr


def _along(arr: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A per-channel array shaped to broadcast along ``axis`` (one value: a scalar)."""
    if arr.size == 1 or axis is None:
        return arr.reshape(()) if arr.size == 1 else arr
    shape = [1] * ndim
    shape[axis] = arr.size
    return arr.reshape(shape)


def _is_int(dtype: str) -> bool:
    return dtype.startswith("int") or dtype.startswith("uint")


def _int_input(ctx: LowerContext, i: int):
    x = ctx.value(i)
    if not _is_int(ctx.dtype(x)):
        raise ctx.error(f"input '{ctx.node.inputs[i].name}' must be an integer tensor, got {ctx.dtype(x)}")
    return x


def shifted(ctx: LowerContext, x, zero_point, dtype: str):
    """``x - zero_point`` in ``dtype`` (a constant is shifted in numpy)."""
    from tvm import relax

    if isinstance(x, np.ndarray):
        return x.astype(np.int64) - np.asarray(zero_point, np.int64)
    x = ctx.astype(x, dtype)
    zp = np.asarray(zero_point, np.int64)
    if not zp.any():
        return x
    return ctx.emit(relax.op.subtract(x, ctx.const(zp, dtype)))


def requantize(ctx: LowerContext, acc, multiplier: np.ndarray, shift: np.ndarray, zero_point: int,
               qmin: int, qmax: int, axis: int | None = None):
    """``clip(zero_point + ((acc * m + 2**(s-1)) >> s), qmin, qmax)`` on int64 ``acc``, in the
    output's storage type (``multiplier`` / ``shift``: one value, one per channel along
    ``axis``, or arrays already shaped to broadcast against ``acc``)."""
    from tvm import relax

    ndim = len(ctx.shape(acc))
    m = _along(np.asarray(multiplier, np.int64), axis, ndim)
    s = _along(np.asarray(shift, np.int64), axis, ndim)
    if s.size and (s.min() < 0 or s.max() > 62):
        raise ctx.error("shift must lie in [0, 62]")
    if (s.size and s.min() >= 32 and not isinstance(acc, np.ndarray) and ctx.dtype(acc) in _INT32_OR_LESS
            and m.min() >= 0 and m.max() < 2**31):
        # floor(floor(p / 2**32) / 2**(s - 32)) == floor(p / 2**s): the high int32 half of the
        # rounded product (sext * sext: one vpmuldq per 4 lanes, no 64-bit shift or clamp,
        # which AVX2 lacks), then int32 arithmetic; p = acc * m + 2**(s-1) fits int64
        y = ctx.emit(relax.op.multiply(ctx.astype(acc, "int64"), ctx.const(m, "int64")))
        y = ctx.emit(relax.op.add(y, ctx.const(rounding_half(s), "int64")))
        y = ctx.astype(ctx.emit(relax.op.right_shift(y, ctx.const(32, "int64"))), "int32")
        if (s > 32).any():
            y = ctx.emit(relax.op.right_shift(y, ctx.const(s - 32, "int32")))
        return clip_to(ctx, y, zero_point, qmin, qmax)
    y = ctx.astype(acc, "int64")
    if not (m.size == 1 and int(m.reshape(-1)[0]) == 1):  # QAdd's sum is already multiplied
        y = ctx.emit(relax.op.multiply(y, ctx.const(m, "int64")))
    if s.any():
        half = rounding_half(s)
        y = ctx.emit(relax.op.add(y, ctx.const(half, "int64")))
        y = ctx.emit(relax.op.right_shift(y, ctx.const(s, "int64")))
    return clip_to(ctx, y, zero_point, qmin, qmax)


def clip_to(ctx: LowerContext, y, zero_point: int, qmin: int, qmax: int):
    """``clip(y + zero_point, qmin, qmax)`` cast to the output's storage type."""
    from tvm import relax

    if zero_point:
        y = ctx.emit(relax.op.add(y, ctx.const(zero_point, ctx.dtype(y))))
    y = ctx.emit(relax.op.clip(y, int(qmin), int(qmax)))
    return ctx.astype(y, ctx.storage(qmin, qmax))


def _requant_attrs(ctx: LowerContext, channels: int | None):
    return (_per_channel(ctx, "multiplier", channels), _per_channel(ctx, "shift", channels),
            _int(ctx, "y_zero_point"), _int(ctx, "y_qmin"), _int(ctx, "y_qmax"))


def shifted_range(ctx: LowerContext, x, zero_point, max_itemsize: int) -> tuple[int, int] | None:
    """[lo, hi] of ``x - zero_point``: from the values of a constant, from the storage type of a
    tensor (None for a tensor stored wider than ``max_itemsize`` bytes). Kernel packages read
    it too, to prove their narrower products exact."""
    zp = np.asarray(zero_point, np.int64)
    if isinstance(x, np.ndarray):
        d = x.astype(np.int64) - zp
        return (int(d.min()), int(d.max())) if d.size else (0, 0)
    dt = np.dtype(ctx.dtype(x))
    if dt.itemsize > max_itemsize:
        return None
    return int(np.iinfo(dt).min - zp.max()), int(np.iinfo(dt).max - zp.min())


def _operand_dtype(ctx: LowerContext, x, zero_point) -> str:
    """int16 when ``x - zero_point`` provably fits it (8-bit storage), else int32."""
    r = shifted_range(ctx, x, zero_point, 1)
    return "int16" if r is not None and _INT16[0] <= r[0] and r[1] <= _INT16[1] else "int32"


# -- float boundaries ----------------------------------------------------------------------------
def quantize(ctx: LowerContext):
    """``clip(round_half_even(x / scale) + zero_point, qmin, qmax)``, the division in float32."""
    from tvm import relax

    x = ctx.expr(0)
    if not ctx.dtype(x).startswith("float"):
        raise ctx.error(f"input '{ctx.node.inputs[0].name}' must be a float tensor, got {ctx.dtype(x)}")
    scale = ctx.attr("scale")
    if scale is None:
        raise ctx.error("missing attribute 'scale'")
    zp, qmin, qmax = _int(ctx, "zero_point"), _int(ctx, "qmin"), _int(ctx, "qmax")
    x = ctx.astype(x, "float32")
    q = ctx.emit(relax.op.round(relax.op.divide(x, ctx.const(np.float32(scale), "float32"))))
    # integers below 2**24 are exact in float32; beyond, the value saturates at qmin / qmax anyway
    wide = max(abs(qmin), abs(qmax), abs(zp)) >= 2**24
    if wide:
        q = ctx.astype(q, "float64")
    if zp:
        q = ctx.emit(relax.op.add(q, ctx.const(zp, ctx.dtype(q))))
    q = ctx.emit(relax.op.clip(q, float(qmin), float(qmax)))
    return [ctx.astype(q, ctx.storage(min(qmin, zp), max(qmax, zp)))]


def dequantize(ctx: LowerContext):
    """``(q - zero_point) * scale`` in float32 (the subtraction exact: int32, int64 for 32-bit q)."""
    from tvm import relax

    q = _int_input(ctx, 0)
    scale = ctx.attr("scale")
    if scale is None:
        raise ctx.error("missing attribute 'scale'")
    wide = np.dtype(ctx.dtype(q)).itemsize >= 4
    d = shifted(ctx, q, _int(ctx, "zero_point"), "int64" if wide else "int32")
    if isinstance(d, np.ndarray):
        return [d.astype(np.float32) * np.float32(scale)]
    f = ctx.astype(d, "float32")
    return [ctx.emit(relax.op.multiply(f, ctx.const(np.float32(scale), "float32")))]


# -- dot products --------------------------------------------------------------------------------
def _add_bias(ctx: LowerContext, acc, channels: int, axis: int):
    from tvm import relax

    acc = ctx.astype(acc, "int64")
    if not ctx.has_input(2):
        return acc
    b = ctx.const_input(2, "bias").astype(np.int64).reshape(-1)
    if b.size not in (1, channels):
        raise ctx.error(f"bias '{ctx.node.inputs[2].name}' has {b.size} values, expected {channels}")
    return ctx.emit(relax.op.add(acc, ctx.const(_along(b, axis, len(ctx.shape(acc))), "int64")))


def _conv_op(ndim: int):
    from tvm import relax

    ops = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}
    return ops.get(ndim)


def pad_spatial(ctx: LowerContext, x, begin, end, value=0.0):
    """``x`` padded on its spatial dims (after N, C) with ``value``."""
    from tvm import relax

    if not any(begin) and not any(end):
        return x
    widths = [0, 0, 0, 0] + [p for b, e in zip(begin, end) for p in (int(b), int(e))]
    return ctx.emit(relax.op.nn.pad(x, widths, pad_value=value))


def qconv(ctx: LowerContext):
    """``QConv(x, w, [bias])``: padded, strided, dilated, grouped; per-channel requantization."""
    y = target_kernel(ctx, "qconv")
    if y is not None:
        return [y]
    x, w = _int_input(ctx, 0), _int_input(ctx, 1)
    xs, ws = ctx.shape(x), ctx.shape(w)
    nd = len(xs) - 2
    conv = _conv_op(nd)
    if conv is None or len(ws) != len(xs):
        raise ctx.error(f"x {list(xs)} and w {list(ws)} must be [N, C, spatial...] / [M, C/group, k...] "
                        "with 1 to 3 spatial dims")
    m = ws[0]
    kernel = tuple(int(k) for k in _ints(ctx, "kernel_shape", list(ws[2:])))
    if kernel != tuple(ws[2:]):
        raise ctx.error(f"kernel_shape {list(kernel)} differs from w's {list(ws[2:])}")
    group = int(ctx.attr("group", 1))
    if group < 1 or xs[1] != ws[1] * group or m % group:
        raise ctx.error(f"x has {xs[1]} channels, w is {list(ws)}, group={group}")
    x_zp = _int(ctx, "x_zero_point")
    w_zp = _along(_per_channel(ctx, "w_zero_point", m), 0, len(ws))
    dt = "int16" if (_operand_dtype(ctx, x, x_zp) == "int16" and _operand_dtype(ctx, w, w_zp) == "int16") else "int32"
    xd = shifted(ctx, x, x_zp, dt)
    wd = shifted(ctx, w, w_zp, dt)
    wd = ctx.const(wd, dt) if isinstance(wd, np.ndarray) else wd
    win = ctx.windows(xs[2:], kernel)
    xd = pad_spatial(ctx, ctx.const(xd, dt) if isinstance(xd, np.ndarray) else xd, win.pads_begin,
                     [e + extra for e, extra in zip(win.pads_end, win.extra_end)])
    layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[nd]
    acc = ctx.emit(conv(xd, wd, strides=win.strides, padding=0, dilation=win.dilations, groups=group,
                        data_layout=layout[0], kernel_layout=layout[1], out_dtype="int32"))
    acc = _add_bias(ctx, acc, m, 1)
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, m)
    return [requantize(ctx, acc, mult, shift, zp, qmin, qmax, axis=1)]


def qconv_transpose(ctx: LowerContext):
    """``QConvTranspose(x, w, [bias])`` as one QConv over its stride phases, then a pixel shuffle.

    Tap ``t`` of a spatial dim with stride ``s`` adds into the outputs ``u = q * s + r`` of one
    phase ``r = (t * d) % s`` only, reading input ``q - (t * d) // s`` there
    (``qgraph.ir.l3_geometry.Phases``). So every phase is a stride-1 conv of ``x`` itself, and
    all of them one QConv with ``prod(strides) * M`` output channels (``phase_weights``), which
    the target's conv kernels take like any other (``qconv``: the x86 package's AVX2 kernels
    where they apply) and which requantizes per channel there (elementwise, so before the
    shuffle). A reshape and a transpose interleave the phases, a slice crops the pads. Against
    a conv of the zero-inserted input this does ``prod(strides)`` times fewer multiply-adds and
    builds no zero-inserted tensor; the DB head of PP-OCR (k = 2, s = 2) becomes one 1x1 conv
    with 4M channels. Positions no tap reaches get the bias (their phase rows hold zeros).
    """
    from tvm import relax

    x = _int_input(ctx, 0)
    w = ctx.const_input(1, "weight")
    xs = ctx.shape(x)
    nd = len(xs) - 2
    if _conv_op(nd) is None or w.ndim != len(xs) or w.dtype.kind not in "iu":
        raise ctx.error(f"x {list(xs)} and w {list(w.shape)} must be [N, C, spatial...] / integer [C, M/group, k...] "
                        "with 1 to 3 spatial dims")
    group = int(ctx.attr("group", 1))
    if group < 1 or w.shape[0] != xs[1] or xs[1] % group:
        raise ctx.error(f"x has {xs[1]} channels, w is {list(w.shape)}, group={group}")
    kernel = tuple(int(k) for k in _ints(ctx, "kernel_shape", list(w.shape[2:])))
    if kernel != tuple(w.shape[2:]):
        raise ctx.error(f"kernel_shape {list(kernel)} differs from w's {list(w.shape[2:])}")
    geo = ctx.transposed(xs[2:], kernel)
    phases = geo.phases()
    mg, cg = w.shape[1], xs[1] // group
    m, p_count = mg * group, math.prod(geo.strides)

    def per_phase(a: np.ndarray) -> np.ndarray:  # M per-channel values -> the phase conv's channels
        if a.size == 1:
            return a
        return np.broadcast_to(a.reshape(group, 1, mg), (group, p_count, mg)).reshape(-1)

    w_zp = _per_channel(ctx, "w_zero_point", m)
    wd = (w.astype(np.int64).reshape((group, cg, mg) + kernel)
          - np.broadcast_to(w_zp, (m,)).reshape((group, 1, mg) + (1,) * nd)).reshape(w.shape)
    wc = phase_weights(wd, group, phases)
    wc = wc.astype(next(dt for dt in (np.int8, np.int16, np.int32)
                        if not wc.size or np.iinfo(dt).min <= wc.min() and wc.max() <= np.iinfo(dt).max))
    mult, shift, y_zp, qmin, qmax = _requant_attrs(ctx, m)
    # phase rows q = 0 .. Q-1 cover the output through the end pad; the conv's end padding
    # reaches them where the input is shorter
    rows = [-(-(b + o) // s) for b, o, s in zip(geo.pads_begin, geo.out, geo.strides)]
    pad_end = [max(0, r - i) for r, i in zip(rows, geo.inp)]
    attrs = {"strides": [1] * nd, "pads": [ph.reach for ph in phases] + pad_end,
             "dilations": [ph.dilation for ph in phases], "group": group, "kernel_shape": [ph.span for ph in phases],
             "x_zero_point": _int(ctx, "x_zero_point"), "w_zero_point": [0],
             "multiplier": [int(v) for v in per_phase(mult)], "shift": [int(v) for v in per_phase(shift)],
             "y_zero_point": y_zp, "y_qmin": qmin, "y_qmax": qmax}
    real = ctx.node
    stem = f"{real.outputs[0].name}/phases"
    consts = {f"{stem}/w": wc}
    if ctx.has_input(2):
        b = ctx.const_input(2, "bias").astype(np.int64).reshape(-1)
        if b.size not in (1, m):
            raise ctx.error(f"bias '{real.inputs[2].name}' has {b.size} values, expected {m}")
        consts[f"{stem}/b"] = per_phase(np.broadcast_to(b, (m,)).copy()).astype(np.int32)
    out = real.outputs[0]
    standin = Node(l3.QConv, [Value(real.inputs[0].name)] + [Value(k) for k in consts],
                   [Value(stem, TensorType(out.dtype, None) if out.dtype is not None else None)], attrs,
                   name=real.name)
    (z,) = ctx.lower_as(standin, consts, qconv)
    span = [r + e for r, e in zip(geo.inp, pad_end)]  # phase rows the conv computed
    if p_count > 1:
        z = ctx.emit(relax.op.reshape(z, [xs[0], group] + list(geo.strides) + [mg] + span))
        axes = [0, 1, 2 + nd] + [i for k in range(nd) for i in (3 + nd + k, 2 + k)]
        z = ctx.emit(relax.op.permute_dims(z, axes))
        z = ctx.emit(relax.op.reshape(z, [xs[0], m] + [r * s for r, s in zip(span, geo.strides)]))
    full = [r * s for r, s in zip(span, geo.strides)]
    if any(b or b + o != f for b, o, f in zip(geo.pads_begin, geo.out, full)):
        z = ctx.emit(relax.op.strided_slice(z, list(range(2, 2 + nd)), list(geo.pads_begin),
                                            [b + o for b, o in zip(geo.pads_begin, geo.out)]))
    return [z]


def qmatmul(ctx: LowerContext):
    """``QMatMul(a, b, [bias])``: numpy matmul of shifted operands, per-column requantization."""
    from tvm import relax

    y = target_kernel(ctx, "qmatmul")
    if y is not None:
        return [y]
    a, b = _int_input(ctx, 0), _int_input(ctx, 1)
    ash, bsh = ctx.shape(a), ctx.shape(b)
    if not ash or not bsh:
        raise ctx.error("QMatMul operands must have rank >= 1")
    cols = bsh[-1] if len(bsh) >= 2 else 1
    a_zp = _int(ctx, "a_zero_point")
    b_zp = _per_channel(ctx, "b_zero_point", cols)
    b_zp = b_zp if len(bsh) >= 2 else b_zp.reshape(())
    dt = "int16" if (_operand_dtype(ctx, a, a_zp) == "int16" and _operand_dtype(ctx, b, b_zp) == "int16") else "int32"
    ad, bd = shifted(ctx, a, a_zp, dt), shifted(ctx, b, b_zp, dt)
    ad = ctx.const(ad, dt) if isinstance(ad, np.ndarray) else ad
    bd = ctx.const(bd, dt) if isinstance(bd, np.ndarray) else bd
    acc = ctx.emit(relax.op.matmul(ad, bd, out_dtype="int32"))
    out_ndim = len(ctx.shape(acc))
    acc = _add_bias(ctx, acc, cols, out_ndim - 1 if len(bsh) >= 2 else None)
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, cols)
    per_col = mult.size > 1 or shift.size > 1
    return [requantize(ctx, acc, mult, shift, zp, qmin, qmax, axis=out_ndim - 1 if per_col else None)]


# -- elementwise ---------------------------------------------------------------------------------
def _shifted_bound(ctx: LowerContext, x, zero_point) -> int | None:
    """A bound on ``|x - zero_point|`` (``shifted_range``; None for storage wider than 16 bits)."""
    r = shifted_range(ctx, x, zero_point, 2)
    return None if r is None else max(abs(r[0]), abs(r[1]))


def _qadd_int32(ctx: LowerContext, a, b):
    """QAdd in int32 arithmetic (``qgraph.quant.fixedpoint.int32_sum_plan``), or None where
    the plan is refused. The int64 form does not vectorize on AVX2 (no 64-bit multiply):
    resnet50's 16 residual QAdds took 18 ms of 120 in it."""
    from tvm import relax

    from qgraph.quant.fixedpoint import SPLIT, int32_sum_plan

    za, zb = _int(ctx, "a_zero_point"), _int(ctx, "b_zero_point")
    bounds = [_shifted_bound(ctx, a, za), _shifted_bound(ctx, b, zb)]
    shift = _ints(ctx, "shift")
    if None in bounds or shift.size != 1:
        return None
    plan = int32_sum_plan([_int(ctx, "a_multiplier"), _int(ctx, "b_multiplier")], int(shift[0]), bounds)
    if plan is None or not any(plan.hi + plan.lo):  # all-zero multipliers: no tensor term to shape the output
        return None
    xs = []
    for x, zp in ((a, za), (b, zb)):
        d = shifted(ctx, x, zp, "int32")
        xs.append(ctx.const(d, "int32") if isinstance(d, np.ndarray) else d)

    def dot(ms):
        terms = [x if m == 1 else relax.op.multiply(x, ctx.const(m, "int32")) for x, m in zip(xs, ms) if m]
        out = terms[0] if terms else None
        for t in terms[1:]:
            out = relax.op.add(out, t)
        return out

    high = dot(plan.hi)
    high = ctx.const(plan.bias, "int32") if high is None else relax.op.add(high, ctx.const(plan.bias, "int32"))
    low = dot(plan.lo)
    if low is not None:
        high = relax.op.add(high, relax.op.right_shift(low, ctx.const(SPLIT, "int32")))
    y = ctx.emit(relax.op.right_shift(high, ctx.const(plan.shift, "int32")))
    return clip_to(ctx, y, _int(ctx, "y_zero_point"), _int(ctx, "y_qmin"), _int(ctx, "y_qmax"))


def qadd(ctx: LowerContext):
    """``QAdd(a, b)``: ``(a_m * (a - a_zp) + b_m * (b - b_zp) + 2**(s-1)) >> s`` (one rounding),
    in int32 where ``_qadd_int32`` proves it exact, else in int64."""
    from tvm import relax

    fast = _qadd_int32(ctx, _int_input(ctx, 0), _int_input(ctx, 1))
    if fast is not None:
        return [fast]
    ad = shifted(ctx, _int_input(ctx, 0), _int(ctx, "a_zero_point"), "int64")
    bd = shifted(ctx, _int_input(ctx, 1), _int(ctx, "b_zero_point"), "int64")
    am, bm = _int(ctx, "a_multiplier"), _int(ctx, "b_multiplier")
    ad = ctx.const(ad, "int64") if isinstance(ad, np.ndarray) else ad
    bd = ctx.const(bd, "int64") if isinstance(bd, np.ndarray) else bd
    acc = ctx.emit(relax.op.add(relax.op.multiply(ad, ctx.const(am, "int64")),
                                relax.op.multiply(bd, ctx.const(bm, "int64"))))
    return [requantize(ctx, acc, np.ones(1, np.int64), _ints(ctx, "shift"), _int(ctx, "y_zero_point"),
                       _int(ctx, "y_qmin"), _int(ctx, "y_qmax"))]


def qmul(ctx: LowerContext):
    """``QMul(a, b)``: ``rq((a - a_zp) * (b - b_zp))``."""
    from tvm import relax

    a, b = _int_input(ctx, 0), _int_input(ctx, 1)
    za, zb = _int(ctx, "a_zero_point"), _int(ctx, "b_zero_point")
    ba, bb = _shifted_bound(ctx, a, za), _shifted_bound(ctx, b, zb)
    dt = "int32" if ba is not None and bb is not None and ba * bb < 2**31 else "int64"  # the product exact
    ad, bd = shifted(ctx, a, za, dt), shifted(ctx, b, zb, dt)
    ad = ctx.const(ad, dt) if isinstance(ad, np.ndarray) else ad
    bd = ctx.const(bd, dt) if isinstance(bd, np.ndarray) else bd
    acc = ctx.emit(relax.op.multiply(ad, bd))
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, None)
    return [requantize(ctx, acc, mult, shift, zp, qmin, qmax)]


def requantize_op(ctx: LowerContext):
    """``Requantize(x)``: ``rq(x - x_zp)``."""
    xd = shifted(ctx, _int_input(ctx, 0), _int(ctx, "x_zero_point"), "int64")
    xd = ctx.const(xd, "int64") if isinstance(xd, np.ndarray) else xd
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, None)
    return [requantize(ctx, xd, mult, shift, zp, qmin, qmax)]


def lookup(ctx: LowerContext):
    """``Lookup(x)``: ``take(table, x - x_qmin)``."""
    from tvm import relax

    table = _ints(ctx, "table")
    lo, hi = (int(table.min()), int(table.max())) if table.size else (0, 0)
    storage = ctx.storage(lo, hi)
    y = target_kernel(ctx, "lookup", table, storage)
    if y is not None:
        return [y]
    idx = shifted(ctx, _int_input(ctx, 0), _int(ctx, "x_qmin"), "int32")
    idx = ctx.const(idx, "int32") if isinstance(idx, np.ndarray) else idx
    return [ctx.emit(relax.op.take(ctx.const(table.astype(storage), storage), idx, axis=0, mode="clip"))]


# -- pools ---------------------------------------------------------------------------------------
def qaverage_pool(ctx: LowerContext):
    """``QAveragePool(x)``: window sums (a depthwise conv with ones) requantized by the
    multiplier of each output position's divisor (static: precomputed here)."""
    x = _int_input(ctx, 0)
    xs = ctx.shape(x)
    nd = len(xs) - 2
    kernel = tuple(int(k) for k in _ints(ctx, "kernel_shape"))
    if nd < 1 or len(kernel) != nd or _conv_op(nd) is None:
        raise ctx.error(f"kernel_shape {list(kernel)} does not fit input {list(xs)} (1 to 3 spatial dims)")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    include_pad = bool(ctx.attr("count_include_pad", 0))
    win = ctx.windows(xs[2:], kernel, ceil_mode=ceil_mode)
    taps = math.prod(kernel)
    mult, shift = _ints(ctx, "multiplier"), _ints(ctx, "shift")
    if mult.size != taps + 1 or shift.size != taps + 1:
        raise ctx.error(f"'multiplier' and 'shift' need prod(kernel_shape) + 1 = {taps + 1} entries, got "
                        f"{mult.size} and {shift.size}")
    # the divisor of every output position, counted as the reference does
    padded = [b + s + e + extra for b, s, e, extra in zip(win.pads_begin, xs[2:], win.pads_end, win.extra_end)]
    counted = np.zeros(padded, np.int64)
    counted[tuple(slice(0, b + s + e) if include_pad else slice(b, b + s)
                  for b, s, e in zip(win.pads_begin, xs[2:], win.pads_end))] = 1
    n = np.zeros(win.out, np.int64)
    for sl in win.taps():
        n += counted[sl]
    acc = window_sum(ctx, shifted(ctx, x, _int(ctx, "x_zero_point"), "int32"), xs[1], win)
    shape = (1, 1) + win.out
    return [requantize(ctx, acc, mult[n].reshape(shape), shift[n].reshape(shape), _int(ctx, "y_zero_point"),
                       _int(ctx, "y_qmin"), _int(ctx, "y_qmax"))]


def window_sum(ctx: LowerContext, x, channels: int, win):
    """Per-channel window sums of int32 ``x`` (padded with 0) as a depthwise conv with ones."""
    nd = len(win.kernel)
    x = pad_spatial(ctx, x, win.pads_begin, [e + extra for e, extra in zip(win.pads_end, win.extra_end)])
    ones = ctx.const(np.ones((channels, 1) + win.kernel, np.int32), "int32")
    layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[nd]
    return ctx.emit(_conv_op(nd)(x, ones, strides=win.strides, padding=0, dilation=win.dilations,
                                 groups=channels, data_layout=layout[0], kernel_layout=layout[1],
                                 out_dtype="int32"))


def qglobal_average_pool(ctx: LowerContext):
    """``QGlobalAveragePool(x)``: the spatial sum of ``x - x_zp`` (int32 where it provably fits,
    else int64), requantized, or (``runtime_count``) multiplied and divided by the count with
    the contract's rounding division."""
    from tvm import relax

    x = _int_input(ctx, 0)
    shape = ctx.shape(x)
    nd = len(shape)
    if nd < 3:
        raise ctx.error(f"input '{ctx.node.inputs[0].name}' {list(shape)} must be [N, C, spatial...]")
    zp = _int(ctx, "x_zero_point")
    bound = _shifted_bound(ctx, x, zp)
    try:
        size = int(np.prod([int(d) for d in shape[2:]]))
    except TypeError:  # a symbolic dim
        size = None
    narrow = bound is not None and size is not None and bound * size < 2**31
    xd = shifted(ctx, x, zp, "int32" if narrow else "int64")
    acc = ctx.emit(relax.op.sum(xd, axis=list(range(2, nd)), keepdims=True))
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, None)
    if not ctx.attr("runtime_count", 0):
        return [requantize(ctx, acc, mult, shift, zp, qmin, qmax)]
    # the runtime-count form: round_half_even(acc * m / (count << s)) in int64 floordiv / floormod
    # (qgraph.quant.fixedpoint.rounding_divide); qgraph.tvm builds for static input shapes, so the
    # count is known here
    if size is None:
        raise ctx.error(f"the spatial size of '{ctx.node.inputs[0].name}' {list(shape)} is symbolic; "
                        "build with static input_shapes")
    if not 1 <= size <= MAX_RUNTIME_COUNT:
        raise ctx.error(f"'{ctx.node.inputs[0].name}' has {size} spatial positions; a runtime-count "
                        f"QGlobalAveragePool takes 1 to {MAX_RUNTIME_COUNT}")
    m, s = int(mult.reshape(-1)[0]), int(shift.reshape(-1)[0])
    t = ctx.emit(relax.op.multiply(ctx.astype(acc, "int64"), ctx.const(np.int64(m), "int64")))
    d = ctx.const(np.int64(size) << np.int64(s), "int64")
    q = ctx.emit(relax.op.floor_divide(t, d))
    twice = ctx.emit(relax.op.multiply(ctx.emit(relax.op.floor_mod(t, d)), ctx.const(np.int64(2), "int64")))
    odd = ctx.emit(relax.op.equal(ctx.emit(relax.op.bitwise_and(q, ctx.const(np.int64(1), "int64"))),
                                  ctx.const(np.int64(1), "int64")))
    up = ctx.emit(relax.op.logical_or(ctx.emit(relax.op.greater(twice, d)),
                                      ctx.emit(relax.op.logical_and(ctx.emit(relax.op.equal(twice, d)), odd))))
    y = ctx.emit(relax.op.add(q, ctx.astype(up, "int64")))
    return [clip_to(ctx, y, zp, qmin, qmax)]
