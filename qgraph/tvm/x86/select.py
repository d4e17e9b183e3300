"""Kernel selection: QConv / QMatMul / Lookup on the hand-scheduled AVX2 kernels of
``qgraph.tvm.x86.conv`` and ``qgraph.tvm.x86.gemm`` (the hooks of this kernel package).

``qconv`` / ``qmatmul`` return the node's output (a Relax expression) when a fast kernel
covers the node, else None and the default lowering runs. ``conv_kernel`` /
``matmul_kernel`` name the choice without emitting anything (tests and reports).

A fast kernel needs: an x86 target with AVX2 (``qgraph.tvm.kernel_packages`` chooses this
package for it), a constant weight, a non-constant activation of 8-bit storage,
zero-point-shifted operands whose int16 pair products are exact
(``|x - x_zp| * |w - w_zp| * 2 < 2**31``, both within int16), an int32 bias. QConv: 2-D,
``group == 1`` (``direct``) or depthwise (``depthwise``), at least ``SMALL_MACS``
multiply-adds. QMatMul: a 2-D constant ``b`` and an activation of rank >= 2.

A direct conv on 8-bit activations (int8 ones shifted to uint8) whose int8 weights keep
every ``VPMADDUBSW`` pair sum inside int16 for any input byte (``conv.ubsw_exact``; 7-bit
weights, ``reduce_range``, always do) runs the u8 x s8 form instead (``direct_u8``): half the
packed activation bytes, and 32 products per ``VPMADDUBSW`` + ``VPMADDWD`` against 16 per
``VPMADDWD``, so half the weight broadcasts per product. It is exact by that proof: the only
place qgraph uses the saturating instruction.

A 3x3 stride-1 conv of the int16 form with enough channels and tiles runs exact integer
Winograd F(2x2, 3x3) instead (``winograd``; ``winograd.fits`` proves its int32 sums exact,
else the direct conv runs). A 1x1 stride-1 unpadded conv runs on its pixels as one row. A
strided conv of the int16 form with enough input channels runs as an implicit GEMM of output
pixels by output channels instead (``igemm``, ``conv.igemm_pays``): no lane spent past the end of
a narrow output row.

Two layout choices of the direct conv, both decided from the geometry alone: a conv on few
input channels (a stem) packs its row taps as channels (``conv.fold_taps``, one
``qtap_pack`` kernel before the pack), and a batch whose output rows are narrower than a
vector shares one packed row, its images interleaved column by column (``conv.batch_fold``;
a Relax transpose puts the result back, or the next interleaved conv packs it as it is).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qgraph.quant.float16 import holds_float16
from qgraph.tvm.context import MACS_ATTR, LowerContext
from qgraph.tvm.relax_integer import shifted_range
from qgraph.tvm.x86 import conv as D
from qgraph.tvm.x86 import gemm as K
from qgraph.tvm.x86 import recurrent as R
from qgraph.tvm.x86 import winograd as W

_I16 = 2**15 - 1
#: Multiply-adds below which a node keeps the default lowering (a fast kernel is two calls,
#: pack and GEMM, where the default lowering fuses into one). 0: none does. Measured on the
#: digits CNN at batch 1 (layers of 1.3k-18k multiply-adds), 1 thread, whole model: 16.9 us
#: with a cutoff of 65536 (every layer default), 13.0 us with none; TVM's untuned conv runs
#: about 2 GMAC/s, so its saved call does not pay even there.
SMALL_MACS = 0
#: Matmul weights that fit int8 are stored as int8 and widened on load (half the traffic).
INT8_WEIGHTS = True
#: Direct convs on 8-bit activations whose ``VPMADDUBSW`` pair sums provably stay in int16
#: (``conv.ubsw_exact``: 7-bit weights, ``reduce_range``) run the u8 x s8 form.
UBSW = True
#: 3x3 stride-1 convs of the int16 form run exact Winograd F(2x2, 3x3) where it applies
#: (``winograd.applies`` / ``winograd.fits``).
WINOGRAD = True


def _range_fits(lo: int, hi: int) -> bool:
    return -_I16 <= lo and hi <= _I16


def _act_range(ctx: LowerContext, x, zp: int) -> tuple[int, int] | None:
    """[lo, hi] of ``x - zp`` for an activation of 8-bit integer storage, else None."""
    if np.dtype(ctx.dtype(x)).kind not in "iu":
        return None
    return shifted_range(ctx, x, zp, 1)


def _exact_pairs(xr: tuple[int, int], wd: np.ndarray) -> bool:
    if wd.size == 0:
        return False
    wlo, whi = int(wd.min()), int(wd.max())
    if not (_range_fits(*xr) and _range_fits(wlo, whi)):
        return False
    return 2 * max(abs(xr[0]), abs(xr[1])) * max(abs(wlo), abs(whi)) < 2**31


def _attr_ints(ctx: LowerContext, name: str, default=None) -> np.ndarray:
    value = ctx.node.attr(name, default)
    return np.atleast_1d(np.asarray(value, dtype=np.int64)).reshape(-1)


def _requant(ctx: LowerContext, channels: int, padded: int, bias) -> K.Requant | None:
    mult, shift = _attr_ints(ctx, "multiplier"), _attr_ints(ctx, "shift")
    if mult.size not in (1, channels) or shift.size not in (1, channels):
        return None
    if shift.min() < 0 or shift.max() > 62:
        return None
    zp = int(_attr_ints(ctx, "y_zero_point")[0])
    qmin, qmax = int(_attr_ints(ctx, "y_qmin")[0]), int(_attr_ints(ctx, "y_qmax")[0])
    if bias is not None and (bias.size not in (1, channels) or not K.bias_fits_int32(bias)):
        return None
    out = ctx.storage(qmin, qmax)
    if out not in ("uint8", "int8", "int16", "uint16", "int32"):
        return None
    return K.Requant.make(channels, padded, bias, mult, shift, zp, qmin, qmax, out)


def _raw_bytes(xdt: str, zp: int, bias, wsum: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(zero point, bias) of a u8 x s8 kernel on the raw input bytes (int8 shifted by 128 to
    uint8, its zero point with it), the zero point's share ``zp * sum(w)`` per output moved
    into the bias; None for an input that is not 8-bit, or where that bias leaves int32."""
    if xdt not in ("uint8", "int8"):
        return None
    u_zp = zp + (128 if xdt == "int8" else 0)
    moved = (np.zeros(wsum.size, np.int64) if bias is None else np.broadcast_to(bias, wsum.shape)) - u_zp * wsum
    return (u_zp, moved) if K.bias_fits_int32(moved) else None


# -- QConv ------------------------------------------------------------------------------------------
def conv_kernel(ctx: LowerContext, vnni: str | None = None, bits: int = 256) -> str:
    """``"direct"``, ``"direct_u8"``, ``"winograd"``, ``"igemm"``, ``"depthwise"`` or ``"default"``: the kernel
    ``qconv`` would emit for ``ctx.node``."""
    plan = _conv_plan(ctx, vnni, bits)
    return plan.kind if plan is not None else "default"


class _ConvPlan(NamedTuple):
    kind: str  # "direct", "direct_u8", "winograd", "igemm" or "depthwise"
    g: K.ConvGeometry  # the geometry the kernel runs (after a tap fold)
    wd: np.ndarray  # zero-point-shifted weights of ``g``
    rq: K.Requant
    x_zp: int  # the zero point the pack subtracts (u8 x s8: the uint8 one)
    taps: tuple | None  # (source geometry, storage zero point) where the row taps fold into channels
    fold: int = 1  # images per packed row (direct)
    tile: tuple[int, int] | None = None  # register tile (direct)
    vnni: str | None = None  # direct_u8 through VPDPBUSD (``gemm.VNNI_FORMS``), exact for any int8 weights
    #: a 1x1 stride-1 unpadded conv run on its pixels as one row ``[N, C, 1, H * W]`` (a free
    #: reshape each way): no vector padded per row (YOLOX's 52-wide rows computed 56 columns)
    #: and one task per column tile instead of per row
    flat: tuple[int, int] | None = None
    wide: bool = False  # the VPDPBUSD form on 512-bit vectors


def _conv_plan(ctx: LowerContext, vnni: str | None = None, bits: int = 256) -> _ConvPlan | None:
    x, w = ctx.value(0), ctx.value(1)
    if isinstance(x, np.ndarray) or not isinstance(w, np.ndarray):
        return None
    xs, ws = ctx.shape(x), w.shape
    if len(xs) != 4 or len(ws) != 4:
        return None
    oc = ws[0]
    group = int(ctx.attr("group", 1))
    kernel = tuple(int(k) for k in _attr_ints(ctx, "kernel_shape", list(ws[2:])))
    if kernel != tuple(ws[2:]) or xs[1] != ws[1] * group:
        return None
    x_zp = int(_attr_ints(ctx, "x_zero_point")[0])
    w_zp = _attr_ints(ctx, "w_zero_point")
    if w_zp.size not in (1, oc):
        return None
    xr = _act_range(ctx, x, x_zp)
    if xr is None:
        return None
    wd = w.astype(np.int64) - w_zp.reshape(-1, 1, 1, 1)
    if not _exact_pairs(xr, wd):
        return None
    bias = ctx.maybe_const(2)
    if ctx.has_input(2) and bias is None:
        return None
    bias = None if bias is None else bias.astype(np.int64).reshape(-1)
    win = ctx.windows(xs[2:], kernel)
    g = K.ConvGeometry(xs[0], xs[1], xs[2], xs[3], oc, kernel[0], kernel[1], win.out[0], win.out[1],
                       tuple(win.strides), tuple(win.dilations), tuple(win.pads_begin))
    if g.oh <= 0 or g.ow <= 0:
        return None
    if g.n * g.oc * g.pixels * g.k < SMALL_MACS:
        return None
    taps, fold, tile = None, 1, None
    flat = group == 1 and (g.kh, g.kw, g.strides, g.pads) == (1, 1, (1, 1), (0, 0)) and (g.oh, g.ow) == (g.h, g.w)
    if flat:  # a pointwise conv: its pixels as one row (``_ConvPlan.flat``)
        g = K.ConvGeometry(g.n, g.c, 1, g.h * g.w, oc, 1, 1, 1, g.h * g.w, (1, 1), (1, 1), (0, 0))
    if group == 1:
        kind = "direct"
        u8 = UBSW and ctx.dtype(x) in ("uint8", "int8")
        # VPDPBUSD sums 4 u8 x s8 products in int32: exact for any int8 weights (no int16 step)
        int8_w = bool(wd.size) and int(wd.min()) >= -128 and int(wd.max()) <= 127
        exact_u8 = u8 and (int8_w if vnni else D.ubsw_exact(wd, 0, 255))
        # exact Winograd F(2x2, 3x3) where it applies: 16 products per 2x2 tile and channel
        # where the direct conv does 36 (a tap fold saves at most a pair per kernel row)
        wino = WINOGRAD and not exact_u8 and W.applies(g) and W.fits(xr, wd)
        # fold the row taps where the u8 x s8 form does not already take the conv: on the
        # digits CNN's 1-channel stem (always u8 x s8: its pairs are one weight and a 0) the
        # fold's int16 form plus its two packs took 43 us at batch 64 against 27 us
        # a strided conv with enough channels: the implicit GEMM (``conv.igemm_pays``), unfolded
        igemm = not exact_u8 and not wino and D.igemm_pays(g)
        if D.tap_fold_pays(g) and not exact_u8 and not wino and not igemm:
            taps = (g, x_zp)
            g, wd = D.fold_taps(g, wd)
            exact_u8 = u8 and D.ubsw_exact(wd, 0, 255)
        raw = _raw_bytes(ctx.dtype(x), x_zp, bias, wd.reshape(oc, -1).sum(axis=1)) if exact_u8 else None
        if raw is not None:
            kind, (x_zp, bias) = "direct_u8", raw
        fold = D.batch_fold(g)
        # VPDPBUSD needs no ones vector nor int16 temporary: the int16 kernel's tiles fit
        tile = D.direct_tile(D.row_cols(g, fold), kind == "direct_u8" and not vnni, oc,
                             bits if vnni and kind == "direct_u8" else None)
        if wino:
            kind, tile, fold = "winograd", W.tile_for(g), 1
        elif igemm and kind == "direct":
            kind, tile, fold = "igemm", D.IGEMM_TILE, 1
        padded = K.ceil_to(oc, K.LANES * tile[1]) if kind == "igemm" else K.ceil_to(oc, tile[0])
    elif group == xs[1] and ws[1] == 1 and oc == group:
        kind = "depthwise"
        padded = oc
    else:
        return None
    rq = _requant(ctx, oc, padded, bias)
    if rq is None:
        return None
    vnni = vnni if kind == "direct_u8" else None
    return _ConvPlan(kind, g, wd, rq, x_zp, taps, fold, tile, vnni, (int(xs[2]), int(xs[3])) if flat else None,
                     vnni is not None and bits == 512)


def _call(ctx: LowerContext, func, name: str, args, shape, dtype, macs: int | None = None):
    from tvm import relax

    # the block builder names the function (unique) and shares structurally equal ones;
    # op_pattern 8 (kOpaque): FuseOps leaves the scheduled kernel as it is (its requant is inside)
    func = func.without_attr("global_symbol").with_attr("op_pattern", 8)
    if macs is not None:
        func = func.with_attr(MACS_ATTR, int(macs))
    gv = ctx.bb.add_func(func, name)
    return ctx.emit(relax.call_tir(gv, list(args), relax.TensorType(list(shape), dtype)))


def _unfold(ctx: LowerContext, y, g: K.ConvGeometry):
    """An interleaved conv's ``[1, OC, OH, OW * N]`` as ``[N, OC, OH, OW]`` (one Relax transpose:
    a fused copy, or part of the consumer's elementwise kernel); the ``[OC, OH, OW, N]`` view
    is kept for a consumer conv that packs it as it is (``ctx.lanes``)."""
    from tvm import relax

    lanes = ctx.emit(relax.op.reshape(y, (g.oc, g.oh, g.ow, g.n)))
    ctx.lanes[ctx.node.outputs[0].name] = lanes
    return ctx.emit(relax.op.permute_dims(lanes, [3, 0, 1, 2]))


def qconv(ctx: LowerContext, vnni: str | None = None, bits: int = 256):
    """The QConv output on a fast kernel, or None (see the module doc); ``vnni``: the target
    has VPDPBUSD (``gemm.VNNI_FORMS``), and every 8-bit direct conv runs the u8 x s8 form on it."""
    plan = _conv_plan(ctx, vnni, bits)
    if plan is None:
        return None
    g, flat, x = plan.g, plan.flat, ctx.value(0)
    if flat is None:
        return _conv_kernels(ctx, plan, x)
    from tvm import relax

    y = _conv_kernels(ctx, plan, x)  # the pack reads [N, C, H, W] as the row (``conv_pack(src_shape=)``)
    # an interleaved batch's [C, 1, H * W, N] view is not the [C, H, W, N] a consumer conv reads
    ctx.lanes.pop(ctx.node.outputs[0].name, None)
    return ctx.emit(relax.op.reshape(y, (g.n, g.oc) + flat))


def _conv_kernels(ctx: LowerContext, plan: _ConvPlan, x):
    """The kernel calls of ``plan`` on ``x`` (``qconv``)."""
    kind, g, wd, rq, x_zp, taps, fold, tile, vnni, flat, wide = plan
    xdt = ctx.dtype(x)
    if taps is not None:  # the row taps as channels (``conv.fold_taps``)
        src, src_zp = taps
        x = _call(ctx, D.tap_pack(src, xdt, src_zp), "qtap_pack", [x], (g.n, g.c, g.h, g.w), xdt)
    consts = [ctx.const(a) for a in rq.arrays()]
    if kind == "winograd":
        th, twp, hp, wq, twv, tt = W.extent(g, tile[1])
        xp = _call(ctx, D.conv_pack(W.pack_geometry(g), xdt, x_zp, hp, wq), "qdirect_pack", [x],
                   (g.n, -(-g.c // 2), hp, 2, wq * 2), "int16")
        v = _call(ctx, W.input_transform(g, hp, wq, th, twp, twv, tt), "qwino_input", [xp],
                  (g.n, 16, -(-g.c // 2), tt * 2), "int16")
        return _call(ctx, W.winograd_conv(g, twv, tt, rq, tile), "qwino_conv",
                     [v, ctx.const(W.pack_weights(wd, tile[0]))] + consts, (g.n, g.oc, g.oh, g.ow), rq.out_dtype,
                     macs=g.n * g.oc * g.oh * g.ow * int(np.prod(wd.shape[1:])))
    if kind == "igemm":
        hp, wp = D.igemm_extent(g)
        xp = _call(ctx, D.igemm_pack(g, xdt, x_zp, hp, wp), "qigemm_pack", [x], (g.n, hp, wp, 2 * -(-g.c // 2)),
                   "int16")
        return _call(ctx, D.igemm_conv(g, hp, wp, rq, tile), "qigemm_conv",
                     [xp, ctx.const(D.pack_igemm_weights(wd.astype(np.int16), tile[1]))] + consts,
                     (g.n, g.oc, g.oh, g.ow), rq.out_dtype, macs=g.n * g.oc * g.oh * g.ow * int(np.prod(wd.shape[1:])))
    if kind in ("direct", "direct_u8"):
        ubsw = kind == "direct_u8"
        hp, wq = D.direct_extent(g, tile[1], fold)
        cg, xpdt, suffix = (4, "uint8", "_ubsw") if ubsw else (2, "int16", "")
        # the producer an interleaved conv too: pack its [C, H, W, N] as it is
        src = ctx.lanes.get(ctx.node.inputs[0].name) if taps is None and fold > 1 else None
        if src is not None and flat is not None:  # [C, H, W, N] as the row [C, 1, H * W, N]
            from tvm import relax

            src = ctx.emit(relax.op.reshape(src, (g.c, 1, g.w, g.n)))
        shape = (g.n, g.c) + flat if flat is not None and src is None else None  # x as it comes: [N, C, H, W]
        xp = _call(ctx, D.conv_pack(g, xdt, x_zp, hp, wq, ubsw=ubsw, fold=fold, src_lanes=src is not None,
                                    src_shape=shape),
                   "qdirect_pack" + suffix, [x if src is None else src],
                   (g.n // fold, -(-g.c // cg), hp, g.strides[1], wq * cg), xpdt)
        wp = D.pack_direct_weights(wd.astype(np.int8 if ubsw else np.int16), tile[0], ubsw=ubsw)
        if vnni is not None:
            suffix = "_vnni"
        y = _call(ctx, D.direct_conv(g, hp, wq, rq, tile, ubsw=ubsw, fold=fold, vnni=vnni, wide=wide),
                  "qdirect_conv" + suffix,
                  [xp, ctx.const(wp)] + consts, (g.n // fold, g.oc, g.oh, D.row_cols(g, fold)), rq.out_dtype,
                  macs=g.n * g.oc * g.oh * g.ow * int(np.prod(wd.shape[1:])))
        return y if fold == 1 else _unfold(ctx, y, g)
    # depthwise
    vt = 2 if g.ow > K.LANES else 1
    hq, wq = D.dw_extent(g, vt)
    xp = _call(ctx, D.dw_pack(g, xdt, x_zp, hq, wq), "qdw_pack", [x], (g.n, g.c, hq, g.strides[1], wq * 2), "int16")
    w32 = ctx.const(D.pack_dw_weights(wd.astype(np.int16), D.dw_pairs(g)[0]))
    return _call(ctx, D.dw_conv(g, hq, wq, rq, vt), "qdw_pconv", [xp, w32] + consts,
                 (g.n, g.oc, g.oh, g.ow), rq.out_dtype, macs=g.n * g.oc * g.oh * g.ow * g.kh * g.kw)


# -- QMatMul ----------------------------------------------------------------------------------------
def matmul_kernel(ctx: LowerContext, vnni: str | None = None, bits: int = 256) -> str:
    """``"gemm"``, ``"gemm_vnni"`` or ``"default"``: the kernel ``qmatmul`` would emit for ``ctx.node``."""
    plan = _matmul_plan(ctx, vnni, bits)
    return "default" if plan is None else "gemm_vnni" if plan.vnni else "gemm"


class _MatmulPlan(NamedTuple):
    ash: tuple  # a's shape
    bd: np.ndarray  # zero-point-shifted weights [K, N]
    rq: K.Requant
    a_zp: int  # the zero point the prep subtracts (VNNI: the uint8 one, moved into the bias)
    tile: tuple[int, int]
    vnni: str | None  # through VPDPBUSD (``gemm.VNNI_FORMS``) on the raw bytes
    wide: bool  # ... on 512-bit vectors


def _matmul_plan(ctx: LowerContext, vnni: str | None = None, bits: int = 256) -> _MatmulPlan | None:
    a, b = ctx.value(0), ctx.value(1)
    if isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or b.ndim != 2:
        return None
    ash = ctx.shape(a)
    if len(ash) < 2 or ash[-1] != b.shape[0]:
        return None
    k, n = b.shape
    a_zp = int(_attr_ints(ctx, "a_zero_point")[0])
    b_zp = _attr_ints(ctx, "b_zero_point")
    if b_zp.size not in (1, n):
        return None
    ar = _act_range(ctx, a, a_zp)
    if ar is None:
        return None
    bd = b.astype(np.int64) - b_zp.reshape(1, -1)
    if int(np.prod(ash[:-1])) * k * n < SMALL_MACS or not _exact_pairs(ar, bd):
        return None
    bias = ctx.maybe_const(2)
    if ctx.has_input(2) and bias is None:
        return None
    bias = None if bias is None else bias.astype(np.int64).reshape(-1)
    # VPDPBUSD sums 4 u8 x s8 products in int32: exact for any int8 weights
    int8_w = int(bd.min()) >= -128 and int(bd.max()) <= 127
    raw = _raw_bytes(ctx.dtype(a), a_zp, bias, bd.sum(axis=0)) if vnni is not None and int8_w else None
    if raw is None:
        vnni = None
    else:
        a_zp, bias = raw
    tile = K.matmul_tile(int(np.prod(ash[:-1])), n, bits if vnni else None)
    rq = _requant(ctx, n, K.ceil_to(n, K.LANES * tile[1]), bias)
    if rq is None:
        return None
    return _MatmulPlan(tuple(ash), bd, rq, a_zp, tile, vnni, bits == 512 and vnni is not None)


def qmatmul(ctx: LowerContext, vnni: str | None = None, bits: int = 256):
    """The QMatMul output on the fast kernel, or None; ``vnni``: the target has VPDPBUSD
    (``gemm.VNNI_FORMS``) on ``bits``-wide vectors, and a matmul of 8-bit activations and int8
    weights runs on it."""
    from tvm import relax

    plan = _matmul_plan(ctx, vnni, bits)
    if plan is None:
        return None
    ash, bd, rq, a_zp, tile, vnni, wide = plan
    k, n = bd.shape
    rows = int(np.prod(ash[:-1]))
    group = 2 if vnni is None else 4  # k per packed int16 pair, or per VPDPBUSD byte quad
    kg = -(-k // group)
    a = ctx.value(0)
    a2 = ctx.emit(relax.op.reshape(a, (rows, k))) if len(ash) != 2 else a
    ap = _call(ctx, K.matmul_prep(rows, k, ctx.dtype(a), a_zp, quads=vnni is not None), "qmatmul_prep", [a2],
               (rows, group * kg), "int16" if vnni is None else "uint8")
    if vnni is not None:
        wp, wdt, name = K.pack_matmul_weights(bd.astype(np.int8), K.LANES * tile[1], group=4), "int8", "qmatmul_vnni"
    else:
        wp, wdt, name = K.pack_matmul_weights(bd.astype(np.int16), K.LANES * tile[1]), "int16", "qmatmul_gemm"
        if INT8_WEIGHTS and bd.min() >= -128 and bd.max() <= 127:
            wp, wdt = wp.astype(np.int8), "int8"
    y = _call(ctx, K.gemm_cols(rows, kg, n, rq, tile, wdt, vnni=vnni, wide=wide), name,
              [ap, ctx.const(wp)] + [ctx.const(z) for z in rq.arrays()],
              (rows, n), rq.out_dtype, macs=rows * k * n)
    return ctx.emit(relax.op.reshape(y, tuple(ash[:-1]) + (n,))) if len(ash) != 2 else y


# -- float GEMV -------------------------------------------------------------------------------------
def float_gemv(ctx: LowerContext, x, w: np.ndarray, wide: bool = False):
    """``x @ w`` for a float ``x`` ``[D, M, K]`` of few rows and a constant ``w`` ``[D, K, N]``
    (the recurrent ops' steps and input projections) on ``gemm.float_gemv``, or None; ``wide``:
    the target has AVX-512 (512-bit vectors, the same sums). Weights that hold float16 values
    are stored as float16 (``float_lstm``)."""
    if w.ndim != 3 or w.dtype != np.float32 or ctx.dtype(x) != "float32":
        return None
    shape = tuple(int(v) for v in ctx.shape(x))
    d, k, n = w.shape
    if len(shape) != 3 or shape[0] != d or shape[2] != k or shape[1] > K.GEMV_MAX_ROWS or K.gemv_block(n) is None:
        return None
    m = shape[1]
    storage = _float_storage(w)
    return _call(ctx, K.float_gemv(d, m, k, n, wide=wide, weights=storage), "qfloat_gemv",
                 [x, ctx.const(K.pack_gemv_weights(w).astype(storage), storage)], (d, m, n), "float32")


def _float_storage(w: np.ndarray) -> str:
    """How a float kernel stores constant float32 weights: ``"float16"`` where every value is a
    float16 value (``qgraph.quant.float16``: widening them in registers is exact), else ``"float32"``."""
    return "float16" if holds_float16(w) else "float32"


def float_lstm(ctx: LowerContext, x, w: np.ndarray, r: np.ndarray, bias: np.ndarray | None, h0, c0,
               reverse: list[bool], wide: bool = False):
    """An LSTM's whole time loop on ``recurrent.float_lstm`` (default activations, no
    peepholes: the caller checks), or None. ``x`` ``[seq, batch, I]`` float; constant ``w``
    ``[D, I, 4H]`` and ``r`` ``[D, H, 4H]`` (``W^T``, ``R^T``), ``bias`` ``[D, 4H]`` (``Wb + Rb``) or
    None; ``h0`` / ``c0`` ``[D, batch, H]`` (numpy or Relax). Returns ``(Y [seq, D, batch, H],
    Y_h, Y_c)``. The input projection of both directions is one ``float_gemv`` call (Relax's
    matmul for a sequence longer than its rows; ``wide``: on 512-bit vectors). Recurrence
    weights that hold float16 values (``QuantConfig.recurrent_weights``, or a model trained in
    half precision) are stored as float16: the loop streams all of them every step, and
    widening them is exact."""
    from tvm import relax

    if ctx.dtype(x) != "float32" or w.dtype != np.float32 or r.dtype != np.float32 or not _is_static(ctx.shape(x)):
        return None
    seq, batch, inputs = (int(v) for v in ctx.shape(x))
    d, hidden = r.shape[0], r.shape[1]
    if w.shape != (d, inputs, 4 * hidden) or not R.lstm_fits(hidden, batch):
        return None
    x1 = relax.op.reshape(x, (1, seq * batch, inputs))
    xs = ctx.emit(relax.op.broadcast_to(x1, (d, seq * batch, inputs)) if d > 1 else x1)
    xw = float_gemv(ctx, xs, w, wide)  # None past the GEMV's rows: a long sequence's projection is a GEMM
    if xw is None:
        xw = ctx.emit(relax.op.matmul(xs, ctx.const(w)))
    state = [ctx.const(np.ascontiguousarray(v, np.float32)) if isinstance(v, np.ndarray) else v for v in (h0, c0)]
    b = np.zeros((d, 4 * hidden), np.float32) if bias is None else np.asarray(bias, np.float32).reshape(d, 4 * hidden)
    storage = _float_storage(r)
    func = R.float_lstm(d, seq, batch, hidden, tuple(reverse), storage)
    gv = ctx.bb.add_func(func.without_attr("global_symbol").with_attr("op_pattern", 8), "qfloat_lstm")
    ts = relax.TensorType
    packed = ctx.const(R.pack_lstm_weights(r, R.lstm_units(hidden, batch)).astype(storage), storage)
    out = ctx.emit(relax.call_tir(gv, [xw, packed, ctx.const(b)] + state,
                                  [ts([seq, d, batch, hidden], "float32"), ts([d, batch, hidden], "float32"),
                                   ts([d, batch, hidden], "float32")]))
    return tuple(ctx.emit(relax.TupleGetItem(out, i)) for i in range(3))


# -- Lookup -----------------------------------------------------------------------------------------
def lookup(ctx: LowerContext, table: np.ndarray, storage: str, vbmi: bool = False):
    """The Lookup output on ``gemm.lookup`` (a tensor input of static shape), or None; ``vbmi``:
    the target has AVX-512 VBMI (``gemm.lookup_vbmi`` for a byte table)."""
    from tvm import relax

    x = ctx.value(0)
    if isinstance(x, np.ndarray) or not _is_static(ctx.shape(x)) or table.size == 0:
        return None
    shape = tuple(int(d) for d in ctx.shape(x))
    n = int(np.prod(shape))
    if n == 0:
        return None
    flat = ctx.emit(relax.op.reshape(x, (n,)))
    xdt, qmin = ctx.dtype(x), int(_attr_ints(ctx, "x_qmin")[0])
    byte = xdt in ("uint8", "int8") and qmin == np.iinfo(xdt).min
    tab = K.vbmi_table(table.astype(storage), xdt) if byte and vbmi else None
    tabs = K.shuffle_table(table.astype(storage), xdt) if byte and tab is None else None
    if tab is not None:  # a byte for every byte value: VPERMI2B lookups
        y = _call(ctx, K.lookup_vbmi(n, xdt, storage), "qlookup_vbmi", [flat, ctx.const(tab)], (n,), storage)
    elif tabs is not None:  # a byte for every byte value: VPSHUFB lookups (the index is the byte)
        y = _call(ctx, K.lookup_shuffle(n, xdt, storage), "qlookup_shuffle", [flat, ctx.const(tabs)], (n,), storage)
    else:
        func = K.lookup(n, xdt, qmin, table.size, storage)
        y = _call(ctx, func, "qlookup", [flat, ctx.const(table.astype(storage), storage)], (n,), storage)
    return ctx.emit(relax.op.reshape(y, shape))


def _is_static(shape) -> bool:
    try:
        return all(int(d) >= 0 for d in shape)
    except Exception:  # a symbolic dim (tir.Var) has no int value
        return False
