"""The GPU kernel package's hook: QConv on 8-bit operands as a 4-way int8 dot product.

The default lowering subtracts the zero points first and convolves int16 operands, which no
GPU has a 4-way instruction for. Here a 2-D ungrouped conv with 8-bit activations, int8
weights (zero point 0, as qgraph's per-channel weights are) is instead

    sum (x - zx) * w  =  sum xs * w  -  zs * sum w        xs = x - 128 (uint8) or x, zs likewise

with ``xs`` padded by ``zs`` (each pad tap then adds zs * w, which the correction removes: the
same sum as the reference's, exactly, in int32), in NHWC / OHWI so that the 4 channels of each
product are 4 adjacent bytes (channels padded to a multiple of 4: x by zs, w by 0): the
``qdp4a_conv`` block. The schedule (``schedules``) splits its
channel loop by 4 and, on CUDA, tensorizes it with ``__dp4a`` (PTX ``dp4a.s32.s32``); OpenCL runs
the same 4 products as int32 multiply-adds. The bias and the requantization are the default
lowering's Relax ops after it, which fusion puts in the same kernel's epilogue.
"""

from __future__ import annotations

import numpy as np

from qgraph.tvm.context import LowerContext
from qgraph.tvm.relax_integer import _add_bias, _int, _per_channel, _requant_attrs, pad_spatial, requantize


def _to_s8(ctx: LowerContext, x, zero_point: int):
    """``(x as int8, its zero point)``: uint8 shifted by -128 (exact), int8 as it is."""
    from tvm import relax

    if ctx.dtype(x) == "uint8":
        x = ctx.astype(ctx.emit(relax.op.subtract(ctx.astype(x, "int16"), ctx.const(128, "int16"))), "int8")
        return x, zero_point - 128
    return x, zero_point

#: The TE block names the schedule rule recognizes (their last reduction axis: 4-way int8).
DP4A_BLOCK = "qdp4a_conv"
DP4A_MATMUL = "qdp4a_matmul"


def dp4a_applies(ctx: LowerContext) -> bool:
    """Whether ``ctx.node`` (a QConv) takes the 4-way int8 form."""
    x = ctx.value(0)
    w = ctx.maybe_const(1)
    if w is None or isinstance(x, np.ndarray) or ctx.dtype(x) not in ("int8", "uint8"):
        return False
    xs = ctx.shape(x)
    if len(xs) != 4 or w.ndim != 4 or int(ctx.attr("group", 1)) != 1:
        return False
    if np.asarray(_per_channel(ctx, "w_zero_point", w.shape[0])).any():
        return False
    return bool(w.size) and -128 <= int(w.min()) and int(w.max()) <= 127


def qconv(ctx: LowerContext):
    """A QConv's output through the ``qdp4a_conv`` kernel, or None (the default lowering)."""
    if not dp4a_applies(ctx):
        return None
    from tvm import relax, te

    x, w = ctx.value(0), ctx.maybe_const(1).astype(np.int64)
    xs = ctx.shape(x)
    m, c, kh, kw = (int(d) for d in w.shape)
    x, zx = _to_s8(ctx, x, _int(ctx, "x_zero_point"))  # dp4a's signed form for both operands
    win = ctx.windows(xs[2:], (kh, kw))
    x = pad_spatial(ctx, x, win.pads_begin, [e + extra for e, extra in zip(win.pads_end, win.extra_end)], value=zx)
    x = ctx.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))  # NHWC: a product's 4 channels adjacent
    c4 = -(-c // 4) * 4
    if c4 != c:  # channels padded to a multiple of 4: x with zs, w with 0 (each adds zs * 0)
        x = ctx.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, c4 - c], pad_value=zx))
        w = np.concatenate([w, np.zeros((m, c4 - c, kh, kw), np.int64)], axis=1)
        c = c4
    n, hp, wp, _ = (int(d) for d in ctx.shape(x))
    (sh, sw), (dh, dw) = win.strides, win.dilations
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    wt = ctx.const(np.ascontiguousarray(w.transpose(0, 2, 3, 1)).astype(np.int8), "int8")  # OHWI

    def conv(xt, wt_):
        ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, c), "rc")
        return te.compute((n, m, oh, ow), lambda b, o, i, j: te.sum(
            xt[b, i * sh + ry * dh, j * sw + rx * dw, rc].astype("int32") * wt_[o, ry, rx, rc].astype("int32"),
            axis=[ry, rx, rc]), name=DP4A_BLOCK)

    acc = ctx.bb.emit_te(conv, x, wt, primfunc_name_hint=DP4A_BLOCK)
    correction = (zx * w.sum(axis=(1, 2, 3))).reshape(1, m, 1, 1)
    if correction.any():
        acc = ctx.emit(relax.op.subtract(acc, ctx.const(correction, "int32")))
    acc = _add_bias(ctx, acc, m, 1)
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, m)
    return requantize(ctx, acc, mult, shift, zp, qmin, qmax, axis=1)


def qmatmul(ctx: LowerContext):
    """A QMatMul's output as 4-way int8 dot products along K (``qdp4a_matmul``: ``b``
    transposed to [N, K] so a product's 4 terms are adjacent, K padded to a multiple of 4,
    ``a``'s zero point as a per-column correction), or None (the default lowering): for an
    8-bit activation ``a`` of rank >= 2 and a constant int8 ``b [K, N]`` with zero point 0."""
    from tvm import relax, te

    a, b = ctx.value(0), ctx.maybe_const(1)
    if b is None or isinstance(a, np.ndarray) or ctx.dtype(a) not in ("int8", "uint8") or b.ndim != 2:
        return None
    ash = [int(d) for d in ctx.shape(a)]
    k, cols = (int(d) for d in b.shape)
    if len(ash) < 2 or ash[-1] != k or not b.size or b.min() < -128 or b.max() > 127:
        return None
    if np.asarray(_per_channel(ctx, "b_zero_point", cols)).any():
        return None
    a, za = _to_s8(ctx, a, _int(ctx, "a_zero_point"))
    b = b.astype(np.int64)
    k4 = -(-k // 4) * 4
    if k4 != k:  # a padded with za, b with 0: each pad term adds za * 0
        a = ctx.emit(relax.op.nn.pad(a, [0, 0] * (len(ash) - 1) + [0, k4 - k], pad_value=za))
        b = np.concatenate([b, np.zeros((k4 - k, cols), np.int64)], axis=0)
    bt = ctx.const(np.ascontiguousarray(b.T).astype(np.int8), "int8")
    lead = ash[:-1]

    def matmul(at, bt_):
        r = te.reduce_axis((0, k4), "rk")
        return te.compute((*lead, cols), lambda *i: te.sum(
            at[(*i[:-1], r)].astype("int32") * bt_[i[-1], r].astype("int32"), axis=[r]), name=DP4A_MATMUL)

    acc = ctx.bb.emit_te(matmul, a, bt, primfunc_name_hint=DP4A_MATMUL)
    correction = za * b.sum(axis=0)
    if correction.any():
        acc = ctx.emit(relax.op.subtract(acc, ctx.const(correction.reshape([1] * (len(ash) - 1) + [cols]), "int32")))
    out_ndim = len(ash)
    acc = _add_bias(ctx, acc, cols, out_ndim - 1)
    mult, shift, zp, qmin, qmax = _requant_attrs(ctx, cols)
    per_col = mult.size > 1 or shift.size > 1
    return requantize(ctx, acc, mult, shift, zp, qmin, qmax, axis=out_ndim - 1 if per_col else None)
