"""Direct (no im2col) AVX2 conv kernels: exact int16 ``VPMADDWD`` on pair-packed activations.

The activations are packed once per layer (zero point subtracted, widened to int16, 0 in the
pads) in a layout where the two int16 of a ``VPMADDWD`` pair are adjacent and 8 consecutive
output columns read one contiguous 256-bit vector, whatever the stride:

- conv (``conv_pack``): ``[N, C2, Hp, SW, Wq * 2]``, pairs of input channels
  ``(x[2c], x[2c + 1])``; the width is split by phase (``iw = q * SW + ph``) so a column
  stride becomes a contiguous read. Weights are packed at compile time as int32 pairs
  ``[OC / RT, C2, KH, KW, RT]`` (``pack_direct_weights``), broadcast per output channel.
  Register tile: ``RT`` output channels x ``VT`` vectors of 8 output columns of one row
  (``direct_tile``); tasks ``(n, oh, column tile, channel block)`` in parallel, the channel
  block innermost so consecutive tasks of a thread reuse the input window from L1.
- depthwise (``dw_pack``): ``[N, C, Hq, SW, Wq * 2]``, pairs of vertically adjacent input
  rows (``dw_pairs``), so one ``VPMADDWD`` does two taps (weight pairs per row phase, 0
  outside the kernel).

Batch interleaving (``batch_fold``): where an output row is narrower than a vector (the
digits CNN's 4x4 and 2x2 layers: 8 lanes for 4 or 2 columns), the batch's images share one
packed row, interleaved column by column: column ``q * N + n`` of a phase holds image ``n``'s
column ``q``. An output column ``u = ow * N + n`` then reads ``u + (kw * DW // SW) * N``, so
the kernel is the same with its tap offsets times ``N``, every lane computes a wanted column
(the row is ``OW * N`` long, padded once at its end), and a stride or a pad costs nothing
extra. The output ``[OC, OH, OW, N]`` goes back to ``[N, OC, OH, OW]`` by one Relax transpose
(``select._unfold``), or, where the consumer is another interleaved conv, is packed as it is
(``conv_pack(src_lanes=True)``: contiguous over ``n``, a vectorized copy). The earlier form
(segments of the padded width per image) filled 2 of 3 lanes in the 2x2 layer at
stride 2; storing only the valid columns from the kernel, lane by lane, made the 4x4 layer
slower than not folding (136 against 104 us).

The exactness argument is that of ``qgraph.tvm.x86.gemm``; requantization is the same fused
epilogue (``gemm.requant_expr``).

The conv has a second form (``ubsw=True``): raw bytes, 4 channels per column, ``VPMADDUBSW``
then ``VPMADDWD`` by ones. ``VPMADDUBSW`` saturates its int16 pair sums, so it is emitted only
where ``ubsw_exact`` proves that no pair can (7-bit weights always; 8-bit ones in practice
never).
"""

from __future__ import annotations

import math

import numpy as np

from qgraph.tvm.x86.gemm import (LANES, PMADDUBSW, PMADDWD, VNNI_FORMS, ConvGeometry, Requant, ceil_to,
                                 least_padded_tile, pair_dot, requant_expr, task_loop, vnni_dot,
                                 zmm_units)

#: Register tile of the direct conv: RT output channels x VT vectors of 8 output columns
#: (at most 16 ymm registers: RT * VT accumulators, VT input vectors, one broadcast weight).
DIRECT_TILE = (6, 2)


#: The u8 x s8 kernel's tile, whatever the width: its ``VPMADDWD`` by ones needs a register
#: for the ones and one for the int16 products, so 6 x 2 (12 accumulators) spills. Kernel
#: alone (``direct_conv(..., ubsw=True)`` on random data), 1 thread, GMAC/s for 6x2 / 5x2 /
#: 4x2 / 8x1 on resnet50 layers: 3x3 256ch 14x14 76.8 / 68.6 / 64.6 / 76.2, 3x3 64ch 56x56
#: 73.1 / 75.8 / 64.1 / 86.6, 3x3 512ch 7x7 72.4 / 70.6 / 72.9 / 76.8 (noise: about 10%).
UBSW_TILE = (8, 1)


#: The int16 kernel's tiles in order of preference (register reuse); (4, 3) measured 30% slower
#: than 6x2 and 8x1 on a 3x3 64-channel conv.
TILES = (DIRECT_TILE, (4, 2), (8, 1))


#: The 512-bit VPDPBUSD kernel's tiles (RT channels x VT vectors of 8 columns, a pair of them one
#: zmm accumulator, an odd last one a ymm), in order of preference: only tiles of 12 or more
#: accumulators, which it takes to cover the instruction's latency (5 cycles, 2 per cycle); a
#: smaller one that pads less loses more than it saves (YOLOX's 104-wide rows took 8x1 and ran
#: 75 GMAC/s). Kernel alone, 1 thread, GMAC/s on a Sapphire Rapids core (256-bit VPDPBUSD peak
#: 155, the 6x2 ymm kernel 90-124 in YOLOX and the CRNN) for 12x2 / 6x4 / 4x6 / 4x7 / 8x2 / 6x2:
#: 3x3 96ch 52x52 233 / 229 / - / 252 / 167 / 137; 48ch 104x104 217 / 198 / 177 / 213 / 170 / 143;
#: 96ch 26x26 228 / 223 / 169 / 170 / 164 / 136; 192ch 13x13 232 / 135 / 97 / 97 / 165 / 136;
#: 96 -> 192ch 16x48 276 / 221 / 281 / 281 / 206 / 172; 24 -> 48ch 208x208 stride 2 (with its
#: pack) 12x2 120, 4x7 120, 8x2 106, 6x2 95, 12x1 80. 16x2 and 8x4 (16 zmm accumulators) ran 95-120.
VNNI_512_TILES = ((12, 2), (4, 6), (6, 4), (4, 7))


def direct_tile(ow: int, ubsw: bool = False, oc: int | None = None, vnni_bits: int | None = None) -> tuple[int, int]:
    """The register tile for ``ow`` output columns (and ``oc`` channels): the least padded
    work (channels x columns), a less preferred tile only where it saves over 5% (the digits
    CNN's 16- and 32-channel layers: 4x2 where 6x2 computes 18 and 36 rows); ``UBSW_TILE``
    for the u8 x s8 kernel; ``VNNI_512_TILES`` for the 512-bit VPDPBUSD one (``vnni_bits``)."""
    if ubsw:
        return UBSW_TILE
    return least_padded_tile(VNNI_512_TILES if vnni_bits == 512 else TILES, oc, ow)


def tap_fold_pays(g: ConvGeometry) -> bool:
    """Whether a conv with few input channels packs fewer columns (pairs of int16) with its row
    taps folded into the channels (``fold_taps``): 1 channel x 3 taps is 3 half-empty pairs,
    and 2 pairs folded; a 7x7 stem on 3 channels is 14 pairs per kernel row, and 11 folded."""
    return g.kw > 1 and -(-g.c * g.kw // 2) < -(-g.c // 2) * g.kw


def fold_taps(g: ConvGeometry, wd: np.ndarray) -> tuple[ConvGeometry, np.ndarray]:
    """The conv on ``x`` with its row taps as channels: channel ``kw * C + c`` of the input
    ``[N, KW * C, H, OW]`` holds ``x[c]`` at column ``ow * SW + kw * DW - PL`` (the zero point
    outside), so the conv becomes ``KH x 1`` at column stride 1, without column pads; its
    weights ``w'[oc, kw * C + c, kh, 0] = w[oc, c, kh, kw]``."""
    folded = ConvGeometry(g.n, g.kw * g.c, g.h, g.ow, g.oc, g.kh, 1, g.oh, g.ow, (g.strides[0], 1),
                          (g.dilations[0], 1), (g.pads[0], 0))
    oc, c, kh, kw = wd.shape
    return folded, np.ascontiguousarray(wd.transpose(0, 3, 1, 2).reshape(oc, kw * c, kh, 1))


def tap_pack(g: ConvGeometry, x_dtype: str, x_zp: int):
    """``x [N, C, H, W]`` -> ``[N, KW * C, H, OW]`` of the same dtype (``fold_taps``): channel
    ``kw * C + c`` at column ``ow`` is ``x[c, ow * SW + kw * DW - PL]``, ``zp`` outside. Its own
    kernel: fused with the float Quantize before it, TVM recomputed the quantization per tap."""
    from tvm.script import tirx as T

    N, C, H, W, KW, OW = g.n, g.c, g.h, g.w, g.kw, g.ow
    SW, DW, PL = g.strides[1], g.dilations[1], g.pads[1]
    zp = int(x_zp)
    loop = task_loop(T, N * KW * C * H * OW, macs=False)

    def col(kc, ow):
        return ow * SW + kc // C * DW - PL

    @T.prim_func(check_well_formed=False)
    def qtap_pack(x: T.Buffer((N, C, H, W), x_dtype), xt: T.Buffer((N, KW * C, H, OW), x_dtype)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for nkh in loop(N * KW * C * H):
                for ow in T.serial(OW):
                    xt[nkh // (KW * C * H), nkh // H % (KW * C), nkh % H, ow] = T.if_then_else(
                        T.And(0 <= col(nkh // H % (KW * C), ow), col(nkh // H % (KW * C), ow) < W),
                        x[nkh // (KW * C * H), nkh // H % C, nkh % H,
                          T.max(T.min(col(nkh // H % (KW * C), ow), W - 1), 0)],
                        T.Cast(x_dtype, zp))

    return qtap_pack


def batch_fold(g: ConvGeometry) -> int:
    """Images per packed row: ``N`` (interleaved, ``OW * N`` columns per row) where that
    computes 5% fewer columns than a row per image padded to whole vectors, or as many where
    a row is one vector (the digits CNN's 8x8 stem: its 4x4 consumer then packs the
    interleaved output as it is, where it gathered each image's columns), else 1."""
    if g.n == 1:
        return 1
    return g.n if g.ow <= LANES or ceil_to(g.n * g.ow, LANES) < 0.95 * g.n * ceil_to(g.ow, LANES) else 1


def row_cols(g: ConvGeometry, fold: int) -> int:
    """Output columns the kernel computes per row: ``OW``, or ``OW * N`` interleaved."""
    return g.ow * fold


def direct_extent(g: ConvGeometry, vt: int, fold: int = 1) -> tuple[int, int]:
    """(Hp, Wq): the packed rows and per-phase columns the direct conv reads (``Wq`` a multiple
    of ``fold``: whole interleaved columns)."""
    ot = -(-row_cols(g, fold) // (LANES * vt))
    hp = (g.oh - 1) * g.strides[0] + (g.kh - 1) * g.dilations[0] + 1
    wq = ceil_to(ot * LANES * vt + ((g.kw - 1) * g.dilations[1]) // g.strides[1] * fold, fold)
    return hp, wq


def pack_direct_weights(wd: np.ndarray, rt: int, ubsw: bool = False) -> np.ndarray:
    """Zero-point-shifted weights ``[OC, C, KH, KW]`` (int16 values) as int32
    ``[OCp/rt, C2, KH, KW, rt]`` (a pair of int16 per int32); ``ubsw``: int8 values, 4
    channels' bytes per int32, ``[OCp/rt, C4, KH, KW, rt]``."""
    g, dt = (4, np.int8) if ubsw else (2, np.int16)
    oc, c, kh, kw = wd.shape
    cg = -(-c // g)
    w = np.zeros((ceil_to(oc, rt), g * cg, kh, kw), dt)
    w[:oc, :c] = wd
    w = w.reshape(-1, rt, cg, g, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(w).view(np.int32).reshape(-1, cg, kh, kw, rt)


def pack_dw_weights(wd: np.ndarray, aligned: bool) -> np.ndarray:
    """Zero-point-shifted depthwise weights ``[C, 1, KH, KW]`` as int32 pairs ``[C, P, KH2, KW]``.

    ``aligned`` (``dw_pairs``): ``P = 2`` row phases, phase ``f`` pairs ``(w[2j - f], w[2j + 1 - f])``
    (0 outside the kernel); else ``P = 1``, pairs ``(w[2j], w[2j + 1])``."""
    c, _, kh, kw = wd.shape
    phases = (0, 1) if aligned else (0,)
    kh2 = kh // 2 + 1 if aligned else -(-kh // 2)
    w = np.zeros((c, len(phases), 2 * kh2, kw), np.int16)
    for f in phases:
        w[:, f, f:f + kh] = wd[:, 0]
    w = w.reshape(c, len(phases), kh2, 2, kw).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(w).view(np.int32).reshape(c, len(phases), kh2, kw)


def _phase_bounds(T, ph, sw: int, pl: int, w: int, wq: int):
    """Per-phase column range ``[lo, hi)`` of ``q`` whose ``iw = q * SW + ph`` is inside the input."""
    lo = T.min(T.max((pl - ph + sw - 1) // sw, 0), wq)
    hi = T.max(T.min((pl + w - ph + sw - 1) // sw, wq), lo)
    return lo, hi


def conv_pack(g: ConvGeometry, x_dtype: str, x_zp: int, hp: int, wq: int, ubsw: bool = False, fold: int = 1,
              src_lanes: bool = False, src_shape: tuple | None = None):
    """``x [N, C, H, W]`` -> int16 ``[N, C2, Hp, SW, Wq * 2]``: ``x - zp`` at channel pairs, 0 around;
    ``ubsw``: uint8 ``x`` -> uint8 ``[N, C4, Hp, SW, Wq * 4]``: raw bytes of 4 channels per column
    (int8 ``x``: ``x + 128``, with ``x_zp`` given as the int8 zero point + 128),
    ``zp`` around and in the missing channels (``zp - zp = 0``: the bias correction
    ``-zp * sum(w)`` of the u8 x s8 conv then holds at every tap). ``fold`` images per row
    (``batch_fold``): ``[N / fold, ...]``, image ``n``'s column ``q`` of a phase at ``q * fold + n``.
    ``src_lanes``: ``x`` is ``[C, H, W, N]`` (an interleaved conv's output), read along ``n``.
    ``src_shape``: the shape ``x`` arrives in, the same bytes as ``g``'s (a pointwise conv's
    ``[N, C, H, W]``, which ``g`` reads as the row ``[N, C, 1, H * W]``): a Relax reshape there was
    fused into the producer, whose kernel then wrote the flat row with a division by the width per
    element (YOLOv8n's upsample-and-concat into a pointwise conv: gathers).

    Per packed row and phase: the left pad, the interior (the channel rows interleaved; where
    none is a pad row or a missing channel, a loop without conditions, which LLVM vectorizes
    reliably) and the right pad are separate loops."""
    from tvm.script import tirx as T

    G = 4 if ubsw else 2
    ODT = "uint8" if ubsw else "int16"
    N, C, H, W = g.n, g.c, g.h, g.w
    F = fold
    NB = N // F
    CG = -(-C // G)
    SW = g.strides[1]
    PT, PL = g.pads
    Hp, Wq = hp, wq
    Q = Wq // F  # per-phase columns of one image
    zp = int(x_zp)
    x_shape = (C, H, W, N) if src_lanes else (N, C, H, W)

    def lo(ph):
        return _phase_bounds(T, ph, SW, PL, W, Q)[0]

    def hi(ph):
        return _phase_bounds(T, ph, SW, PL, W, Q)[1]

    def ok(c, ih):
        return T.And(c < C, T.And(PT <= ih, ih < PT + H))

    def pad():
        return T.uint8(zp) if ubsw else T.int16(0)

    def val(x, n, c, ih, iw):
        c, ih = T.min(c, C - 1), T.max(T.min(ih - PT, H - 1), 0)
        v = x[c, ih, iw - PL, n] if src_lanes else x[n, c, ih, iw - PL]
        if ubsw:  # int8 as uint8: v + 128 (the caller passes zp + 128)
            return v if x_dtype == "uint8" else T.Cast("uint8", T.Cast("int32", v) + 128)
        return T.Cast("int16", v) - T.int16(zp)

    loop = task_loop(T, NB * CG * Hp * SW * Wq * G, macs=False)
    # column stride 2 (the strided and Winograd convs' phase split), int16 pairs, one image a row:
    # the interior runs in blocks of 16 input columns, both channels' rows loaded whole and split
    # by parity with two shuffles (the scalar form read every other byte: 0.5 ns per input byte)
    vec = SW == 2 and F == 1 and not src_lanes
    # the same for raw bytes (``ubsw``): 32 input columns of each of a group's 4 channels, one shuffle
    # per phase to 16 columns of 4-byte groups, a missing channel the zero point (the scalar form
    # took a condition per byte where the group was short, so every row of a 3-channel stem: YOLOv8n's
    # 320x320 stem pack 170 us, 2.5 GB/s, where an unstrided pack writes 28 GB/s)
    VQ = 16 if ubsw else 8  # columns of one phase a vector block writes
    a = PL % 2  # the first input column of an even padded column
    QV0 = (a + PL) // 2  # the first vector-written q (both phases)
    NV = 0
    if vec:
        his = [min(max((PL + W - ph + 1) // 2, 0), Q) for ph in (0, 1)]
        NV = max(0, min((W - a) // (2 * VQ), (min(his) - QV0) // VQ))
    QV1 = QV0 + VQ * NV

    def part(ph, i):  # the interior's scalar columns: [lo, QV0) and [QV1, hi), clamped (both of it: NV 0)
        if i == 0:
            return lo(ph), T.max(T.min(hi(ph), QV0), lo(ph))
        return T.min(T.max(lo(ph), QV1), hi(ph)), hi(ph)

    def split(v0, v1, ph):  # 16 columns of two channels -> phase ph's 8 (channel 0, channel 1) pairs
        return T.Shuffle([v0, v1], [i for j in range(ph, 16, 2) for i in (j, j + 16)])

    def row16(x, n, c, ih, k):  # 16 input columns of channel c, zero point off, int16
        return T.Cast("int16x16", x[n, c, ih - PT, T.ramp(a + 16 * k, 1, 16)]) - T.broadcast(T.int16(zp), 16)

    def row32(x, n, c, ih, k):  # 32 input columns of channel c as raw bytes (int8: + 128); the zero point past C
        v = x[n, T.min(c, C - 1), ih - PT, T.ramp(a + 32 * k, 1, 32)]
        if x_dtype != "uint8":
            v = T.Cast("uint8x32", T.Cast("int16x32", v) + T.broadcast(T.int16(128), 32))
        return v if C % G == 0 else T.if_then_else(c < C, v, T.broadcast(T.uint8(zp), 32))

    def quads(vs, ph):  # 32 columns of 4 channels -> phase ph's 16 columns of 4 bytes
        return T.Shuffle(vs, [t * 32 + j for j in range(ph, 32, 2) for t in range(4)])

    def first(ncr):  # packed row ncr holds input: not a pad row, its group's first channel there
        return ok(ncr // Hp % CG * G, ncr % Hp)

    def whole(ncr):  # ... and every channel of its group: no byte needs a check
        return T.And(first(ncr), ok(ncr // Hp % CG * G + G - 1, ncr % Hp))

    def short_vec(ncr):  # a row of a short channel group whose middle the byte vector blocks write
        return first(ncr) if ubsw and NV > 0 else T.bool(False)

    if ubsw:
        @T.macro
        def vector_blocks(x, xp, ncr):  # (vec) both phases from one load of each row; on rows with a first channel
            if first(ncr):
                for k in T.serial(NV):
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, 0, T.ramp((QV0 + 16 * k) * 4, 1, 64)] = quads(
                        [row32(x, ncr // (CG * Hp), ncr // Hp % CG * 4 + t, ncr % Hp, k) for t in range(4)], 0)
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, 1, T.ramp((QV0 + 16 * k) * 4, 1, 64)] = quads(
                        [row32(x, ncr // (CG * Hp), ncr // Hp % CG * 4 + t, ncr % Hp, k) for t in range(4)], 1)
    else:
        @T.macro
        def vector_blocks(x, xp, ncr):  # (vec) both phases from one load of each row; on rows with both channels
            if whole(ncr):
                for k in T.serial(NV):
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, 0, T.ramp((QV0 + 8 * k) * 2, 1, 16)] = split(
                        row16(x, ncr // (CG * Hp), ncr // Hp % CG * 2, ncr % Hp, k),
                        row16(x, ncr // (CG * Hp), ncr // Hp % CG * 2 + 1, ncr % Hp, k), 0)
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, 1, T.ramp((QV0 + 8 * k) * 2, 1, 16)] = split(
                        row16(x, ncr // (CG * Hp), ncr // Hp % CG * 2, ncr % Hp, k),
                        row16(x, ncr // (CG * Hp), ncr // Hp % CG * 2 + 1, ncr % Hp, k), 1)

    @T.macro
    def checked(x, xp, ncr, ph, q0, q1):  # columns [q0, q1) of a phase, each byte checked (pad rows, missing channels)
        for q in T.serial(q1 - q0):
            for i in T.serial(F):
                for t in T.unroll(G):
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, ph, ((q0 + q) * F + i) * G + t] = \
                        T.if_then_else(ok(ncr // Hp % CG * G + t, ncr % Hp),
                                       val(x, ncr // (CG * Hp) * F + i, ncr // Hp % CG * G + t,
                                           ncr % Hp, (q0 + q) * SW + ph), pad())

    @T.macro
    def interior(x, xp, ncr, ph, q0, q1):  # columns [q0, q1) of a phase: no pad row or missing channel
        for q in T.serial(q1 - q0):
            for i in T.serial(F):
                for t in T.unroll(G):
                    xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, ph, ((q0 + q) * F + i) * G + t] = \
                        val(x, ncr // (CG * Hp) * F + i, ncr // Hp % CG * G + t, ncr % Hp, (q0 + q) * SW + ph)

    @T.prim_func(check_well_formed=False)
    def qdirect_pack(x: T.Buffer(src_shape or x_shape, x_dtype), xp: T.Buffer((NB, CG, Hp, SW, Wq * G), ODT)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            xv = T.decl_buffer(x_shape, x_dtype, data=x.data)  # g's view of x (src_shape)
            for ncr in loop(NB * CG * Hp):
                for ph in T.serial(SW):
                    for q in T.serial(lo(ph) * F * G):
                        xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, ph, q] = pad()
                    if whole(ncr):
                        interior(xv, xp, ncr, ph, part(ph, 0)[0], part(ph, 0)[1])
                        interior(xv, xp, ncr, ph, part(ph, 1)[0], part(ph, 1)[1])
                    elif short_vec(ncr):  # a short group's row: the vector blocks write between
                        checked(xv, xp, ncr, ph, part(ph, 0)[0], part(ph, 0)[1])
                        checked(xv, xp, ncr, ph, part(ph, 1)[0], part(ph, 1)[1])
                    else:
                        checked(xv, xp, ncr, ph, lo(ph), hi(ph))
                    for q in T.serial((Q - hi(ph)) * F * G):
                        xp[ncr // (CG * Hp), ncr // Hp % CG, ncr % Hp, ph, hi(ph) * F * G + q] = pad()
                vector_blocks(xv, xp, ncr)

    return qdirect_pack


def direct_conv(g: ConvGeometry, hp: int, wq: int, rq: Requant, tile=DIRECT_TILE, ubsw: bool = False,
                fold: int = 1, vnni: str | None = None, wide: bool = False):
    """``y[n, oc, oh, ow] = requant(sum_{c2, kh, kw} w . xp + bias[oc])`` on the packed input
    (``fold`` images per packed row, ``conv_pack``'s: ``y`` is then ``[N / fold, OC, OH, OW * fold]``,
    column ``ow * fold + n`` image ``n``'s ``ow``: ``select._unfold`` transposes it back).

    ``ubsw``: the u8 x s8 form on ``conv_pack(..., ubsw=True)``'s raw bytes and
    ``pack_direct_weights(..., ubsw=True)``: per 8 output columns, ``VPMADDUBSW`` (4 channels
    x 8 columns of bytes by one channel's 4 weight bytes) then ``VPMADDWD`` by ones;
    ``rq.bias`` holds ``bias - x_zp * sum(w)``. Exact only where ``ubsw_exact`` holds.

    ``vnni`` (with ``ubsw``; ``VNNI_FORMS``): the same packed bytes through ``VPDPBUSD``, which
    sums each lane's 4 u8 x s8 products in int32: exact for any int8 weights, no proof needed.
    ``wide`` (with ``vnni``): pairs of the tile's 8-column vectors as one 512-bit ``VPDPBUSD``
    (an odd last one 256-bit)."""
    from tvm.script import tirx as T

    RT, VT = tile
    V = LANES * VT
    N, C, OC, KH, KW, OH, OW = g.n, g.c, g.oc, g.kh, g.kw, g.oh, g.ow
    G = 4 if ubsw else 2  # channels per packed column
    XDT = "uint8" if ubsw else "int16"
    C2 = -(-C // G)
    SH, SW = g.strides
    DH, DW = g.dilations
    Hp, Wq = hp, wq
    NB = N // fold
    U = row_cols(g, fold)  # output columns per computed row (interleaved: ow * N + n)
    OT = -(-U // V)
    OCB = -(-OC // RT)
    OCp = OCB * RT
    mdt = str(rq.multiplier.dtype)
    odt = rq.out_dtype

    def epi(acc, b, m, h, s):
        return requant_expr(T, acc, None, m, h, s, rq)  # the bias starts the accumulator

    # t = ((n * OH + oh) * OT + ot) * OCB + ob: consecutive tasks share the input window
    def n_(t):  # the packed row's batch index (images n_ * F ... n_ * F + F - 1)
        return t // (OCB * OT * OH)

    def oh_(t):
        return t // (OCB * OT) % OH

    def ot_(t):
        return t // OCB % OT

    def ob_(t):
        return t % OCB

    def product(wv, xv):  # 8 int32 lanes: one output channel's weights . 8 columns
        if ubsw:
            return T.call_llvm_pure_intrin(
                "int32x8", PMADDWD, T.call_llvm_pure_intrin(
                    "int16x16", PMADDUBSW, xv, T.reinterpret("int8x32", T.broadcast(wv, 8))),
                T.broadcast(T.int16(1), 16))
        return pair_dot(T, wv, xv)

    if vnni is not None and (not ubsw or vnni not in VNNI_FORMS):
        raise ValueError(f"vnni={vnni!r} needs ubsw=True and one of {VNNI_FORMS}")

    def accumulate(acc, wv, x_buf, n, c2, row, ph, base, lanes=8):  # acc + one channel's weights . lanes columns
        if vnni == "vpdpbusd":
            # LLVM 20+ types the byte operands as <32 x i8> (older LLVM: <8 x i32>; TVM 0.27 has the new form)
            return vnni_dot(T, vnni, acc, x_buf[n, c2, row, ph, T.ramp(base, 1, 4 * lanes)],
                            T.reinterpret(f"int8x{4 * lanes}", T.broadcast(wv, lanes)), lanes)
        if vnni == "emulate":  # lane j: bytes 4 j + k (k < 4) times the weight's byte k, summed in int32
            return vnni_dot(T, vnni, acc,
                            lambda k: T.Cast(f"int32x{lanes}", x_buf[n, c2, row, ph, T.ramp(base + k, 4, lanes)]),
                            lambda k: T.broadcast(T.Cast("int32", T.Cast("int8", T.shift_right(wv, T.int32(8 * k)))),
                                                  lanes), lanes)
        return acc + product(wv, x_buf[n, c2, row, ph, T.ramp(base, 1, 8 * G)])

    PAIRS, SINGLES, PAIR_LANES = zmm_units(VT, vnni is not None and wide)

    loop = task_loop(T, N * OC * OH * OW * C * KH * KW)

    @T.prim_func(check_well_formed=False)
    def qdirect_conv(xp: T.Buffer((NB, C2, Hp, SW, Wq * G), XDT), w: T.Buffer((OCB, C2, KH, KW, RT), "int32"),
                     bias: T.Buffer((OCp,), "int32"), mult: T.Buffer((OCp,), mdt), half: T.Buffer((OCp,), "int64"),
                     shift: T.Buffer((OCp,), "int64"), y: T.Buffer((NB, OC, OH, U), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for t in loop(NB * OH * OT * OCB):
                acc = T.alloc_buffer((RT * V,), "int32", scope="global")
                for i in T.unroll(RT * VT):
                    acc[T.ramp(i * 8, 1, 8)] = T.broadcast(bias[ob_(t) * RT + i // VT], 8)
                for c2 in T.serial(C2):
                    for kh in T.unroll(KH):
                        for kw in T.unroll(KW):
                            for r in T.unroll(RT):
                                for p in T.unroll(PAIRS):
                                    acc[T.ramp((r * VT + 2 * p) * 8, 1, PAIR_LANES)] = accumulate(
                                        acc[T.ramp((r * VT + 2 * p) * 8, 1, PAIR_LANES)], w[ob_(t), c2, kh, kw, r],
                                        xp, n_(t), c2, oh_(t) * SH + kh * DH, (kw * DW) % SW,
                                        (ot_(t) * V + 2 * p * 8 + (kw * DW) // SW * fold) * G, PAIR_LANES)
                                for v in T.unroll(SINGLES):
                                    acc[T.ramp((r * VT + 2 * PAIRS + v) * 8, 1, 8)] = accumulate(
                                        acc[T.ramp((r * VT + 2 * PAIRS + v) * 8, 1, 8)], w[ob_(t), c2, kh, kw, r],
                                        xp, n_(t), c2, oh_(t) * SH + kh * DH, (kw * DW) % SW,
                                        (ot_(t) * V + (2 * PAIRS + v) * 8 + (kw * DW) // SW * fold) * G)
                for r in T.unroll(RT):
                    for v in T.unroll(VT):
                        if ob_(t) * RT + r < OC:
                            if ot_(t) * V + v * 8 + 8 <= U:
                                for l in T.vectorized(8):
                                    y[n_(t), ob_(t) * RT + r, oh_(t), ot_(t) * V + v * 8 + l] = epi(
                                        acc[(r * VT + v) * 8 + l], bias[ob_(t) * RT + r], mult[ob_(t) * RT + r],
                                        half[ob_(t) * RT + r], shift[ob_(t) * RT + r])
                            else:
                                for l in T.serial(8):
                                    if ot_(t) * V + v * 8 + l < U:
                                        y[n_(t), ob_(t) * RT + r, oh_(t), ot_(t) * V + v * 8 + l] = epi(
                                            acc[(r * VT + v) * 8 + l], bias[ob_(t) * RT + r], mult[ob_(t) * RT + r],
                                            half[ob_(t) * RT + r], shift[ob_(t) * RT + r])

    return qdirect_conv


# -- implicit GEMM: output pixels x output-channel vectors --------------------------------------------
#: Register tile of ``igemm_conv``: RT output pixels x VT vectors of 8 output channels.
IGEMM_TILE = (6, 2)
#: Input channels from which a strided conv runs ``igemm_conv`` (fewer: the scalar stores of its
#: epilogue weigh against a short reduction; ddddocr YOLOX's 3x3 stride-2 convs, kernel pair
#: alone, 1 thread, igemm / direct time: C 96 at 52x52 0.71, C 192 at 26x26 0.73-0.77, C 48 at
#: 104x104 0.88, C 24 at 208x208 1.04).
IGEMM_MIN_CHANNELS = 32


def igemm_pays(g: ConvGeometry) -> bool:
    """Whether a conv runs ``igemm_conv`` rather than ``direct_conv``: strided, with enough input
    channels. The direct conv's vectors run along an output row, so a strided layer's narrow
    rows leave lanes empty (26 columns computed as 32, 13 as 16) and its phase-split reads
    cost; 1x1 and stride-1 convs keep the row form (and Winograd)."""
    return g.strides != (1, 1) and g.c >= IGEMM_MIN_CHANNELS and g.kh * g.kw > 1


def igemm_extent(g: ConvGeometry) -> tuple[int, int]:
    """(Hp, Wp): the padded input rows and columns ``igemm_conv`` reads."""
    return ((g.oh - 1) * g.strides[0] + (g.kh - 1) * g.dilations[0] + 1,
            (g.ow - 1) * g.strides[1] + (g.kw - 1) * g.dilations[1] + 1)


def igemm_pack(g: ConvGeometry, x_dtype: str, x_zp: int, hp: int, wp: int):
    """``x [N, C, H, W]`` -> int16 ``[N, Hp, Wp, C2 * 2]``: per padded pixel the channel pairs
    ``(x[2 c2] - zp, x[2 c2 + 1] - zp)`` adjacent (one int32 to broadcast), 0 in the pads and
    a missing odd channel."""
    from tvm.script import tirx as T

    N, C, H, W = g.n, g.c, g.h, g.w
    C2 = -(-C // 2)
    PT, PL = g.pads
    zp = int(x_zp)
    loop = task_loop(T, N * hp * wp * C2 * 2, macs=False)

    @T.prim_func(check_well_formed=False)
    def qigemm_pack(x: T.Buffer((N, C, H, W), x_dtype), xp: T.Buffer((N, hp, wp, C2 * 2), "int16")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for nr in loop(N * hp):
                for iw in T.serial(wp):
                    for c in T.serial(C2 * 2):
                        xp[nr // hp, nr % hp, iw, c] = T.if_then_else(
                            T.And(T.And(c < C, T.And(PT <= nr % hp, nr % hp < PT + H)), T.And(PL <= iw, iw < PL + W)),
                            T.Cast("int16", x[nr // hp, T.min(c, C - 1), T.max(T.min(nr % hp - PT, H - 1), 0),
                                             T.max(T.min(iw - PL, W - 1), 0)]) - T.int16(zp),
                            T.int16(0))

    return qigemm_pack


def pack_igemm_weights(wd: np.ndarray, vt: int) -> np.ndarray:
    """Zero-point-shifted weights ``[OC, C, KH, KW]`` (int16 values) as int16
    ``[OCp / V, KH, KW, C2, V * 2]`` (``V = 8 * vt`` output channels, each a pair of input
    channels): one channel block's weights contiguous over the whole reduction."""
    oc, c, kh, kw = wd.shape
    v = LANES * vt
    c2 = -(-c // 2)
    w = np.zeros((ceil_to(oc, v), 2 * c2, kh, kw), np.int16)
    w[:oc, :c] = wd
    w = w.reshape(-1, v, c2, 2, kh, kw).transpose(0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(w.reshape(-1, kh, kw, c2, v * 2))


def igemm_conv(g: ConvGeometry, hp: int, wp: int, rq: Requant, tile=IGEMM_TILE):
    """``y[n, oc, oh, ow] = requant(sum_{kh, kw, c2} xp . w + bias[oc])`` as a GEMM of output
    pixels by output channels with the im2col left implicit: ``xp`` is ``igemm_pack``'s, ``w``
    ``pack_igemm_weights``'. Register tile: RT consecutive pixels (row-major over ``OH x OW``, a
    tile may span rows) x VT vectors of 8 channels; per reduction step RT broadcast pairs and VT
    weight vectors (the direct conv's mix, transposed), so no lane is spent on a column past a
    row's end. Tasks ``(n, channel block, pixel tile)``, pixel tiles innermost: a block's weights
    stay in L1. The epilogue stores each lane apart (8 channels of one pixel are not adjacent in
    NCHW), which a strided layer's long reduction pays for. Exact as ``direct_conv``."""
    from tvm.script import tirx as T

    RT, VT = tile
    V = LANES * VT
    N, C, OC, KH, KW, OH, OW = g.n, g.c, g.oc, g.kh, g.kw, g.oh, g.ow
    C2 = -(-C // 2)
    SH, SW = g.strides
    DH, DW = g.dilations
    P = OH * OW
    PTS = -(-P // RT)
    OCB = -(-OC // V)
    OCp = OCB * V
    mdt = str(rq.multiplier.dtype)
    odt = rq.out_dtype

    def epi(acc, m, h, s):
        return requant_expr(T, acc, None, m, h, s, rq)  # the bias starts the accumulator

    def n_(t):
        return t // (OCB * PTS)

    def ob_(t):
        return t // PTS % OCB

    def p_(t, r):  # pixel r of the tile; a last partial tile recomputes the last pixel
        return T.min(t % PTS * RT + r, P - 1)

    loop = task_loop(T, N * OC * P * C * KH * KW)

    @T.prim_func(check_well_formed=False)
    def qigemm_conv(xp: T.Buffer((N, hp, wp, C2 * 2), "int16"), w: T.Buffer((OCB, KH, KW, C2, V * 2), "int16"),
                    bias: T.Buffer((OCp,), "int32"), mult: T.Buffer((OCp,), mdt), half: T.Buffer((OCp,), "int64"),
                    shift: T.Buffer((OCp,), "int64"), y: T.Buffer((N, OC, OH, OW), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for t in loop(N * OCB * PTS):
                acc = T.alloc_buffer((RT * V,), "int32", scope="global")
                for i in T.unroll(RT * VT):
                    acc[T.ramp(i * 8, 1, 8)] = bias[T.ramp(ob_(t) * V + i % VT * 8, 1, 8)]
                for kh in T.serial(KH):
                    for kw in T.serial(KW):
                        for c2 in T.serial(C2):
                            for r in T.unroll(RT):
                                for v in T.unroll(VT):
                                    acc[T.ramp((r * VT + v) * 8, 1, 8)] = acc[T.ramp((r * VT + v) * 8, 1, 8)] + \
                                        pair_dot(T, T.reinterpret("int32", xp[
                                            n_(t), p_(t, r) // OW * SH + kh * DH, p_(t, r) % OW * SW + kw * DW,
                                            T.ramp(c2 * 2, 1, 2)]), w[ob_(t), kh, kw, c2, T.ramp(v * 16, 1, 16)])
                for r in T.unroll(RT):
                    if t % PTS * RT + r < P:
                        for v in T.unroll(VT):
                            for l in T.serial(8):
                                if ob_(t) * V + v * 8 + l < OC:
                                    y[n_(t), ob_(t) * V + v * 8 + l, p_(t, r) // OW, p_(t, r) % OW] = epi(
                                        acc[(r * VT + v) * 8 + l], mult[ob_(t) * V + v * 8 + l],
                                        half[ob_(t) * V + v * 8 + l], shift[ob_(t) * V + v * 8 + l])

    return qigemm_conv


# -- depthwise, vertically paired taps ---------------------------------------------------------------
def dw_pairs(g: ConvGeometry) -> tuple[bool, int, int]:
    """(aligned, RS, PD): packed row ``r`` holds input rows ``(r * RS, r * RS + PD)``.

    Row dilation 1 (``aligned``): rows ``(2r, 2r + 1)``, every input row packed once; an
    output row whose first tap row is odd reads the pairs from the row above with the
    phase-1 weights ``(0, w[0]), (w[1], w[2]), ...``. Else the pairs ``(ih, ih + DH)`` the
    kernel reads, ``ih = oh * SH + 2 * j * DH``, every ``gcd(SH, 2 * DH)`` rows."""
    if g.dilations[0] == 1:
        return True, 2, 1
    return False, math.gcd(g.strides[0], 2 * g.dilations[0]), g.dilations[0]


def dw_kh2(g: ConvGeometry) -> int:
    """Row pairs per output row."""
    return g.kh // 2 + 1 if dw_pairs(g)[0] else -(-g.kh // 2)


def dw_extent(g: ConvGeometry, vt: int) -> tuple[int, int]:
    """(Hq, Wq): the packed rows and per-phase columns the kernel reads."""
    aligned, rs, _ = dw_pairs(g)
    ot = -(-g.ow // (LANES * vt))
    last = (g.oh - 1) * g.strides[0]
    hq = last // 2 + dw_kh2(g) if aligned else (last + 2 * (dw_kh2(g) - 1) * g.dilations[0]) // rs + 1
    wq = ot * LANES * vt + ((g.kw - 1) * g.dilations[1]) // g.strides[1]
    return hq, wq


def dw_pack(g: ConvGeometry, x_dtype: str, x_zp: int, hq: int, wq: int):
    """``x [N, C, H, W]`` -> int16 ``[N, C, Hq, SW, Wq * 2]``: ``(x[ih, iw] - zp, x[ih + PD, iw] - zp)``
    at ``ih = r * RS`` (``dw_pairs``), 0 outside (pads and loops as in ``conv_pack``)."""
    from tvm.script import tirx as T

    N, C, H, W = g.n, g.c, g.h, g.w
    SW = g.strides[1]
    _, RS, PD = dw_pairs(g)
    PT, PL = g.pads
    Hq, Wq = hq, wq
    zp = int(x_zp)

    def lo(ph):
        return _phase_bounds(T, ph, SW, PL, W, Wq)[0]

    def hi(ph):
        return _phase_bounds(T, ph, SW, PL, W, Wq)[1]

    def ok(ih):
        return T.And(PT <= ih, ih < PT + H)

    def val(x, n, c, ih, iw):
        return T.Cast("int16", x[n, c, T.max(T.min(ih - PT, H - 1), 0), iw - PL]) - T.int16(zp)

    loop = task_loop(T, N * C * Hq * SW * Wq * 2, macs=False)

    @T.prim_func(check_well_formed=False)
    def qdw_pack(x: T.Buffer((N, C, H, W), x_dtype), xp: T.Buffer((N, C, Hq, SW, Wq * 2), "int16")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for ncr in loop(N * C * Hq):
                for ph in T.serial(SW):
                    for q in T.serial(lo(ph) * 2):
                        xp[ncr // (C * Hq), ncr // Hq % C, ncr % Hq, ph, q] = T.int16(0)
                    if T.And(ok(ncr % Hq * RS), ok(ncr % Hq * RS + PD)):  # no pad row: no condition inside
                        for q in T.serial(hi(ph) - lo(ph)):
                            for t in T.unroll(2):
                                xp[ncr // (C * Hq), ncr // Hq % C, ncr % Hq, ph, (lo(ph) + q) * 2 + t] = val(
                                    x, ncr // (C * Hq), ncr // Hq % C, ncr % Hq * RS + t * PD, (lo(ph) + q) * SW + ph)
                    else:
                        for q in T.serial(hi(ph) - lo(ph)):
                            for t in T.unroll(2):
                                xp[ncr // (C * Hq), ncr // Hq % C, ncr % Hq, ph, (lo(ph) + q) * 2 + t] = T.if_then_else(
                                    ok(ncr % Hq * RS + t * PD), val(x, ncr // (C * Hq), ncr // Hq % C,
                                                                    ncr % Hq * RS + t * PD, (lo(ph) + q) * SW + ph),
                                    T.int16(0))
                    for q in T.serial((Wq - hi(ph)) * 2):
                        xp[ncr // (C * Hq), ncr // Hq % C, ncr % Hq, ph, hi(ph) * 2 + q] = T.int16(0)

    return qdw_pack


def dw_conv(g: ConvGeometry, hq: int, wq: int, rq: Requant, vt: int = 2):
    """Depthwise conv on the pair-packed input: one ``VPMADDWD`` per two vertical taps."""
    from tvm.script import tirx as T

    N, C, KW, OH, OW = g.n, g.c, g.kw, g.oh, g.ow
    KH2 = dw_kh2(g)
    ALIGNED, RS, _ = dw_pairs(g)
    P = 2 if ALIGNED else 1
    SH, SW = g.strides
    DH, DW = g.dilations
    Hq, Wq = hq, wq
    VT = vt
    V = LANES * VT
    OT = -(-OW // V)
    mdt = str(rq.multiplier.dtype)
    odt = rq.out_dtype

    def epi(acc, b, m, h, s):
        return requant_expr(T, acc, None, m, h, s, rq)  # the bias starts the accumulator

    def phase(nch):  # the weights' row phase: the first tap row is odd (aligned pairs)
        return nch % OH * SH % 2 if ALIGNED else 0

    def row(nch, j):  # the packed row of pair j
        return (nch % OH * SH) // 2 + j if ALIGNED else (nch % OH * SH + 2 * j * DH) // RS

    loop = task_loop(T, N * C * OH * OW * g.kh * KW)

    @T.prim_func(check_well_formed=False)
    def qdw_pconv(xp: T.Buffer((N, C, Hq, SW, Wq * 2), "int16"), w: T.Buffer((C, P, KH2, KW), "int32"),
                  bias: T.Buffer((C,), "int32"), mult: T.Buffer((C,), mdt), half: T.Buffer((C,), "int64"),
                  shift: T.Buffer((C,), "int64"), y: T.Buffer((N, C, OH, OW), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for nch in loop(N * C * OH):
                for ot in T.serial(OT):
                    acc = T.alloc_buffer((V,), "int32", scope="global")
                    for i in T.unroll(VT):
                        acc[T.ramp(i * 8, 1, 8)] = T.broadcast(bias[nch // OH % C], 8)
                    for j in T.unroll(KH2):
                        for kw in T.unroll(KW):
                            for v in T.unroll(VT):
                                acc[T.ramp(v * 8, 1, 8)] = acc[T.ramp(v * 8, 1, 8)] + pair_dot(
                                    T, w[nch // OH % C, phase(nch), j, kw],
                                    xp[nch // (C * OH), nch // OH % C, row(nch, j), (kw * DW) % SW,
                                       T.ramp((ot * V + v * 8 + (kw * DW) // SW) * 2, 1, 16)])
                    for v in T.unroll(VT):
                        if ot * V + v * 8 + 8 <= OW:
                            for l in T.vectorized(8):
                                y[nch // (C * OH), nch // OH % C, nch % OH, ot * V + v * 8 + l] = epi(
                                    acc[v * 8 + l], bias[nch // OH % C], mult[nch // OH % C], half[nch // OH % C],
                                    shift[nch // OH % C])
                        else:
                            for l in T.serial(8):
                                if ot * V + v * 8 + l < OW:
                                    y[nch // (C * OH), nch // OH % C, nch % OH, ot * V + v * 8 + l] = epi(
                                        acc[v * 8 + l], bias[nch // OH % C], mult[nch // OH % C], half[nch // OH % C],
                                        shift[nch // OH % C])

    return qdw_pconv


# -- u8 x s8 pairs (VPMADDUBSW), where no pair sum can saturate ------------------------------------------
def ubsw_weights(w: np.ndarray) -> np.ndarray:
    """int8 weights ``[OC, C, KH, KW]`` as ``[OC, KH * KW * C4]`` (C4: C padded to 4 with 0), the
    reduction order of ``direct_conv(..., ubsw=True)``: adjacent channels at one tap form a pair."""
    oc, c, kh, kw = w.shape
    c4 = -(-c // 4) * 4
    out = np.zeros((oc, kh, kw, c4), np.int64)
    out[..., :c] = w.transpose(0, 2, 3, 1)
    return out.reshape(oc, -1)


def ubsw_exact(w: np.ndarray, x_lo: int, x_hi: int) -> bool:
    """Every ``VPMADDUBSW`` pair sum of ``direct_conv(..., ubsw=True)`` (unsigned activations in
    ``[x_lo, x_hi]``, int8 weights ``w``) lies in int16: the instruction cannot saturate and
    the u8 x s8 form is exact (``qgraph.quant.overflow.pair_sum_bounds``)."""
    from qgraph.quant.overflow import pair_sum_bounds

    if w.size == 0 or w.min() < -128 or w.max() > 127 or x_lo < 0 or x_hi > 255:
        return False
    lo, hi = pair_sum_bounds(ubsw_weights(w), x_lo, x_hi)
    return bool(lo.min() >= -(2**15) and hi.max() < 2**15)
