"""Exact integer Winograd F(2x2, 3x3) for 3x3 stride-1 convs: 4 multiplies per output where
the direct conv spends 9.

Winograd's F(2x2, 3x3) computes a 2x2 output tile from a 4x4 input patch ``d`` and the 3x3
kernel ``g`` as ``Y = A^T [(G g G^T) * (B^T d B)] A`` (``*`` elementwise: 16 products per
tile and channel). Its transforms are integer except ``G``'s halves, so qgraph runs it on
``G' = 2 G`` and gets ``4 Y``:

- ``B^T d B`` (``B^T`` in {0, +-1}, two nonzeros per row): ``|V| <= 4 max|x - x_zp|``
  (1020 for 8-bit activations), int16;
- ``U = G' g G'^T`` (``G'`` rows ``[2,0,0], [1,1,1], [1,-1,1], [0,0,2]``): computed at
  compile time from the integer weights, ``|U| <= 9 max|w|`` (1152 for int8), int16;
- the 16 products summed over input channels in pairs by ``VPMADDWD`` (each pair sum
  ``<= 2 |V| |U| < 2**31``), then over channel pairs and through ``A^T . A`` (``A^T`` in
  {0, +-1}) in int32 with wrap-around: additions are exact modulo ``2**32``, so the result is
  ``4 S mod 2**32`` for the conv sum ``S``, and ``4 S`` itself wherever ``|4 S| < 2**31``,
  which ``fits`` proves per output channel from the weights and the activation range; then
  ``S = (4 S) >> 2`` exactly.

So the output is the direct conv's integer sum, bit for bit, and the requantization epilogue
is the direct conv's (``gemm.requant_expr``). The work: per 2x2 tile and input channel, 16
multiply-adds (``VPMADDWD`` lanes) where the direct conv does 36; the transforms are adds.

Kernels (``qgraph.tvm.x86.select`` emits them for a QConv that ``applies``):

- ``conv.conv_pack`` (the direct conv's pack, shared) on ``pack_geometry``: ``x - x_zp`` as
  int16 channel pairs with zero pads, the columns split by parity, ``[N, C2, Hp, 2, Wq * 2]``;
- ``input_transform``: ``V [N, TH, 16, C2, TWp * 2]`` (per tile row ``th``, per transform
  position, per channel pair: 8 tiles x 2 channels in one 256-bit vector), the tile columns
  vectorized (one contiguous load per patch column of 8 tiles, int16 lane arithmetic; a
  strided load per column instead took 1.1 ms where this takes 0.12 on 96 channels at 52x52);
- ``winograd_conv``: tasks ``(n, th, tile block, channel block)``, the channel block
  innermost (consecutive tasks reuse the ``V`` block from cache); per task, for each of the 16
  positions, an ``RT x VT`` register tile summed over channel pairs (the direct conv's inner
  loop with one tap), kept in a 16-position local buffer; then per channel and tile vector
  the output transform, ``>> 2``, the bias and the requantization, stored row by row (a
  row's last, partial tile block requantized as vectors too, then its valid columns copied:
  a scalar epilogue there took 40% of the kernel at 52 columns).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qgraph.tvm.x86.gemm import LANES, ConvGeometry, Requant, ceil_to, pair_dot, requant_expr, task_loop

#: ``G' = 2 G`` of F(2x2, 3x3): integer, so ``U = G' g G'^T`` is (4x the textbook transform).
G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)
#: ``B^T`` of F(2x2, 3x3).
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)
#: ``A^T`` of F(2x2, 3x3).
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.int64)

#: The register tiles, RT output channels x VT vectors of 8 tiles, in order of preference
#: (``tile_for``): the direct conv's 6x2, and 8x1 for rows of few tiles.
TILES = ((6, 2), (8, 1))
TILE = TILES[0]

#: Input channels below which the direct conv keeps a 3x3 conv, and output tiles (2x2) below
#: which it does: the transforms' extra kernel and per-channel adds cost what the products
#: save. Kernel pair alone, 1 thread, Winograd / direct time: 8 -> 8 channels at 32x32 1.03,
#: 16 -> 16 at 8x8 (16 tiles) 1.12, 32 -> 32 at 7x7 1.18; 64 -> 64 at 14x14 (49 tiles) 0.65,
#: 96 -> 96 at 52x52 0.49.
MIN_CHANNELS = 16
MIN_TILES = 32

_I16 = 2**15 - 1


def transform_weights(wd: np.ndarray) -> np.ndarray:
    """``U = G' g G'^T`` per (output channel, input channel): int64 ``[OC, C, 4, 4]``."""
    return np.einsum("ik,ockl,jl->ocij", G2, wd.astype(np.int64), G2)


def transform_input(d: np.ndarray) -> np.ndarray:
    """``B^T d B`` of 4x4 patches ``d [..., 4, 4]`` (the reference form ``input_transform`` computes)."""
    return np.einsum("iu,...uv,jv->...ij", BT, d.astype(np.int64), BT)


def fits(xr: tuple[int, int], wd: np.ndarray) -> bool:
    """Whether the F(2x2, 3x3) form is exact for activations ``x - x_zp`` in ``xr`` and
    zero-point-shifted weights ``wd [OC, C, 3, 3]`` (module doc): ``V`` and ``U`` in int16,
    ``VPMADDWD``'s pair sums in int32, and ``4 S`` in int32 for every output channel."""
    if wd.ndim != 4 or wd.shape[2:] != (3, 3) or wd.size == 0:
        return False
    xmax = max(abs(int(xr[0])), abs(int(xr[1])))
    vmax = 4 * xmax
    u = transform_weights(wd)
    umax = int(np.abs(u).max())
    if vmax > _I16 or umax > _I16 or 2 * vmax * umax >= 2**31:
        return False
    s_max = int(np.abs(wd.astype(np.int64)).reshape(wd.shape[0], -1).sum(axis=1).max()) * xmax
    return 4 * s_max < 2**31


def applies(g: ConvGeometry) -> bool:
    """The geometry F(2x2, 3x3) covers and pays on: 3x3, stride 1, dilation 1, at least
    ``MIN_CHANNELS`` input channels and ``MIN_TILES`` output tiles per image (a batch is a
    loop of the kernels: no interleaving, ``conv.batch_fold``, needed)."""
    return (g.kh, g.kw) == (3, 3) and g.strides == (1, 1) and g.dilations == (1, 1) \
        and g.c >= MIN_CHANNELS and -(-g.oh // 2) * -(-g.ow // 2) >= MIN_TILES


#: Flat tiles (``row_pitch``) where they compute this fraction of the row-aligned lanes or fewer:
#: a block across tile rows stores tile by tile. Kernel alone, 1 thread, flat / row-aligned time:
#: 96 channels at 52x52 (26 tiles a row, 16-tile blocks) 0.88, at 26x26 (13) 0.92; 192 at
#: 13x13 (7 tiles, 8-tile blocks: as many lanes either way) 1.09.
FLAT_TILES_MAX = 0.9


def row_pitch(g: ConvGeometry, v: int) -> int:
    """Tile slots per tile row in ``V`` for blocks of ``v`` tiles: ``TW`` (flat, rows back to
    back) where that saves lanes (``FLAT_TILES_MAX``), else ``TW`` rounded up to whole blocks
    (each block inside one row, its output rows stored as vectors)."""
    th, tw = -(-g.oh // 2), -(-g.ow // 2)
    return tw if ceil_to(th * tw, v) <= FLAT_TILES_MAX * th * ceil_to(tw, v) else ceil_to(tw, v)


def tile_for(g: ConvGeometry) -> tuple[int, int]:
    """The register tile with the least padded work (channels x tile slots, ``row_pitch``); a
    later one of ``TILES`` only where it saves over 5%."""
    th = -(-g.oh // 2)

    def work(t):
        v = LANES * t[1]
        return ceil_to(g.oc, t[0]) * ceil_to(th * row_pitch(g, v), v)

    best = TILES[0]
    for t in TILES[1:]:
        if work(t) < 0.95 * work(best):
            best = t
    return best


def extent(g: ConvGeometry, vt: int = TILE[1]) -> tuple[int, int, int, int, int, int]:
    """(TH, TWp, Hp, Wq, TWv, TT): tile rows, tile columns padded to whole 8-tile vectors (what
    ``input_transform`` computes per row), the packed input rows and per-phase columns
    (``conv.conv_pack``'s ``hp`` / ``wq`` on ``pack_geometry``) every tile's patch reads, the
    tile slots per row in ``V`` (``row_pitch``) and its tile slots (to whole ``8 * vt``
    blocks, and room for the last row's padded vector)."""
    th, tw = -(-g.oh // 2), -(-g.ow // 2)
    twp = ceil_to(tw, LANES)
    twv = row_pitch(g, LANES * vt)
    tt = ceil_to(max(th * twv, (th - 1) * twv + twp), LANES * vt)
    return th, twp, 2 * th + 2, twp + 1, twv, tt


def pack_geometry(g: ConvGeometry) -> ConvGeometry:
    """The geometry ``conv.conv_pack`` packs the input with: column stride 2, so the columns
    split by parity (``[N, C2, Hp, 2, Wq * 2]``, column ``2 q + p`` at phase ``p``, ``q``) and a
    tile's patch column ``2 tw + v`` of 8 consecutive tiles is one contiguous vector."""
    return replace(g, strides=(1, 2))


def pack_weights(wd: np.ndarray, rt: int = TILE[0]) -> np.ndarray:
    """``U`` as int32 pairs ``[OCp / rt, 16, C2, rt]`` (two input channels' int16 per int32)."""
    u = transform_weights(wd)  # [OC, C, 4, 4]
    oc, c = u.shape[:2]
    c2 = -(-c // 2)
    w = np.zeros((ceil_to(oc, rt), 2 * c2, 16), np.int16)
    w[:oc, :c] = u.reshape(oc, c, 16)
    w = w.reshape(-1, rt, c2, 2, 16).transpose(0, 4, 2, 1, 3)  # [OCB, 16, C2, rt, 2]
    return np.ascontiguousarray(w).view(np.int32).reshape(-1, 16, c2, rt)


def input_transform(g: ConvGeometry, hp: int, wq: int, th: int, twp: int, twv: int, tt: int):
    """``xp [N, C2, Hp, 2, Wq * 2]`` (int16 pairs, ``pack_geometry``'s phases) ->
    ``V [N, 16, C2, TT * 2]``: ``V[n, 4i + j, c2, 2 (t TWv + tw) + k] = (B^T d B)[i, j]`` of
    channel ``2 c2 + k``'s patch at rows ``2t ..``, columns ``2 tw ..`` of the padded input: the
    tiles row after row, ``TWv`` slots a row (``row_pitch``). A row is computed in whole vectors
    of 8 tiles; where ``TWv`` is ``TW`` (flat) the lanes past its end land on the next row's
    first tiles, which that row (later in the same task: tasks are ``(n, c2)``, rows in order)
    overwrites, or in the slack of ``TT``."""
    from tvm.script import tirx as T

    N, C2 = g.n, -(-g.c // 2)
    TH, TWp, Hp, Wq, TWv, TT = th, twp, hp, wq, twv, tt
    TB = TWp // LANES
    loop = task_loop(T, N * C2 * TH * TWp * 32, macs=False)

    def vpos(xp, n, c2, t, b, i, j):  # V at position (i, j) of 8 tiles x 2 channels, as int32x8
        def d(u, v):  # the patch value (u, v) of the 8 tiles (column 2 tw + v: phase v % 2): int16x16
            return T.reinterpret("int16x16", xp[n, c2, 2 * t + u, v % 2, T.ramp(b * LANES + v // 2, 1, LANES)])
        return T.reinterpret("int32x8", _bt_expr(i, j, d))

    @T.macro
    def position(vv, xp, nc, t, b, i, j):  # V at transform position (i, j) of 8 tiles x 2 channels (Python ints i, j)
        vv[nc // C2, i * 4 + j, nc % C2, T.ramp(t * TWv + b * LANES, 1, LANES)] = \
            vpos(xp, nc // C2, nc % C2, t, b, i, j)

    @T.prim_func(check_well_formed=False)
    def qwino_input(xp_: T.Buffer((N, C2, Hp, 2, Wq * 2), "int16"), v_: T.Buffer((N, 16, C2, TT * 2), "int16")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            xp = T.decl_buffer((N, C2, Hp, 2, Wq), "int32", data=xp_.data)
            vv = T.decl_buffer((N, 16, C2, TT), "int32", data=v_.data)
            for nc in loop(N * C2):
                for t in T.serial(TH):
                    for b in T.serial(TB):
                        position(vv, xp, nc, t, b, 0, 0)
                        position(vv, xp, nc, t, b, 0, 1)
                        position(vv, xp, nc, t, b, 0, 2)
                        position(vv, xp, nc, t, b, 0, 3)
                        position(vv, xp, nc, t, b, 1, 0)
                        position(vv, xp, nc, t, b, 1, 1)
                        position(vv, xp, nc, t, b, 1, 2)
                        position(vv, xp, nc, t, b, 1, 3)
                        position(vv, xp, nc, t, b, 2, 0)
                        position(vv, xp, nc, t, b, 2, 1)
                        position(vv, xp, nc, t, b, 2, 2)
                        position(vv, xp, nc, t, b, 2, 3)
                        position(vv, xp, nc, t, b, 3, 0)
                        position(vv, xp, nc, t, b, 3, 1)
                        position(vv, xp, nc, t, b, 3, 2)
                        position(vv, xp, nc, t, b, 3, 3)

    return qwino_input


def _bt_expr(i: int, j: int, d):
    """``(B^T d B)[i, j]`` as a sum of ``d(u, v)`` terms (``BT``'s nonzeros)."""
    total = None
    for u in range(4):
        for v in range(4):
            c = int(BT[i, u] * BT[j, v])
            if c == 0:
                continue
            term = d(u, v)
            total = term if total is None and c > 0 else (-term if total is None else
                                                          (total + term if c > 0 else total - term))
    return total


def winograd_conv(g: ConvGeometry, twv: int, tt: int, rq: Requant, tile=TILE):
    """``y[n, oc, oh, ow] = requant(S + bias[oc])`` with ``S`` the conv sum, from ``V``
    (``input_transform``, ``TWv`` tile slots a row) and ``U`` (``pack_weights``) (module doc).
    A block of ``8 * VT`` tiles inside one tile row stores its 2 output rows as vectors (past
    ``OW``: requantized as vectors, the valid columns copied); a block across rows (flat tiles,
    ``row_pitch``: no lane spent past a row's end, where YOLOX's 26-tile rows took 32 lanes) is
    requantized as vectors, then stored tile by tile."""
    from tvm.script import tirx as T

    RT, VT = tile
    V = LANES * VT
    N, C2, OC, OH, OW = g.n, -(-g.c // 2), g.oc, g.oh, g.ow
    TH, TW, TWv, TT = -(-g.oh // 2), -(-g.ow // 2), twv, tt
    NT = TH * TWv
    TB = -(-NT // V)  # tile blocks with work (TT may hold more)
    OCB = -(-OC // RT)
    OCp = OCB * RT
    mdt = str(rq.multiplier.dtype)
    odt = rq.out_dtype

    def n_(t):
        return t // (OCB * TB)

    def tb_(t):
        return t // OCB % TB

    def ob_(t):
        return t % OCB

    def m_at(m, xi, r, v, l):  # position xi's accumulator of channel r, tile lane (v, l)
        return m[((xi * RT + r) * VT + v) * LANES + l]

    def out_expr(m, r, v, l, a, b):  # (A^T M A)[a, b] of one tile lane: 4 S
        def t_row(jj):  # (A^T M)[a, jj]
            if a == 0:
                return m_at(m, 0 * 4 + jj, r, v, l) + m_at(m, 1 * 4 + jj, r, v, l) + m_at(m, 2 * 4 + jj, r, v, l)
            return m_at(m, 1 * 4 + jj, r, v, l) - m_at(m, 2 * 4 + jj, r, v, l) - m_at(m, 3 * 4 + jj, r, v, l)
        if b == 0:
            return t_row(0) + t_row(1) + t_row(2)
        return t_row(1) - t_row(2) - t_row(3)

    def epi(val, mult, half, shift, ch):
        return requant_expr(T, val, None, mult[ch], half[ch], shift[ch], rq)

    loop = task_loop(T, N * OC * OH * OW * g.c * 9)

    @T.macro
    def output(s, m, bias, t, r, v, a, b):  # s[a, 2 * lane + b] = 4 S >> 2 + bias of the vector's tiles (Python ints a, b)
        for l in T.vectorized(LANES):
            s[a * 2 * V + (v * LANES + l) * 2 + b] = T.shift_right(out_expr(m, r, v, l, a, b), T.int32(2)) + bias[ob_(t) * RT + r]

    @T.prim_func(check_well_formed=False)
    def qwino_conv(vin: T.Buffer((N, 16, C2, TT * 2), "int16"), w: T.Buffer((OCB, 16, C2, RT), "int32"),
                   bias: T.Buffer((OCp,), "int32"), mult: T.Buffer((OCp,), mdt), half: T.Buffer((OCp,), "int64"),
                   shift: T.Buffer((OCp,), "int64"), y: T.Buffer((N, OC, OH, OW), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for t in loop(N * TB * OCB):
                m = T.alloc_buffer((16 * RT * V,), "int32", scope="global")
                s = T.alloc_buffer((2 * 2 * V,), "int32", scope="global")
                o = T.alloc_buffer((2 * 2 * V,), odt, scope="global")
                for xi in T.serial(16):
                    acc = T.alloc_buffer((RT * V,), "int32", scope="global")
                    for i in T.unroll(RT * VT):
                        acc[T.ramp(i * LANES, 1, LANES)] = T.broadcast(T.int32(0), LANES)
                    for c2 in T.serial(C2):
                        for r in T.unroll(RT):
                            for v in T.unroll(VT):
                                acc[T.ramp((r * VT + v) * LANES, 1, LANES)] = \
                                    acc[T.ramp((r * VT + v) * LANES, 1, LANES)] + pair_dot(
                                        T, w[ob_(t), xi, c2, r],
                                        vin[n_(t), xi, c2, T.ramp((tb_(t) * V + v * LANES) * 2, 1, 2 * LANES)])
                    for i in T.unroll(RT * VT):
                        m[T.ramp((xi * RT * VT + i) * LANES, 1, LANES)] = acc[T.ramp(i * LANES, 1, LANES)]
                for r in T.unroll(RT):
                    if ob_(t) * RT + r < OC:
                        # 4 S of the 2x2 outputs of V tiles, (a, b) interleaved: s[a, 2 * lane + b]
                        for v in T.unroll(VT):
                            output(s, m, bias, t, r, v, 0, 0)
                            output(s, m, bias, t, r, v, 0, 1)
                            output(s, m, bias, t, r, v, 1, 0)
                            output(s, m, bias, t, r, v, 1, 1)
                        if tb_(t) * V % TWv + V <= TWv:  # the block inside one tile row
                            if (tb_(t) * V % TWv + V) * 2 <= OW:  # its output rows as vectors
                                for a in T.unroll(2):
                                    if tb_(t) * V // TWv * 2 + a < OH:
                                        for q in T.vectorized(2 * V):
                                            y[n_(t), ob_(t) * RT + r, tb_(t) * V // TWv * 2 + a,
                                              tb_(t) * V % TWv * 2 + q] = epi(s[a * 2 * V + q], mult, half, shift,
                                                                               ob_(t) * RT + r)
                            else:  # the row's last tiles: requantized as vectors, the columns < OW copied
                                for q in T.vectorized(4 * V):
                                    o[q] = epi(s[q], mult, half, shift, ob_(t) * RT + r)
                                for a in T.unroll(2):
                                    if tb_(t) * V // TWv * 2 + a < OH:
                                        for q in T.serial(T.max(OW - tb_(t) * V % TWv * 2, 0)):
                                            y[n_(t), ob_(t) * RT + r, tb_(t) * V // TWv * 2 + a,
                                              tb_(t) * V % TWv * 2 + q] = o[a * 2 * V + q]
                        else:  # across tile rows: requantized as vectors, then stored tile by tile
                            for q in T.vectorized(4 * V):
                                o[q] = epi(s[q], mult, half, shift, ob_(t) * RT + r)
                            for l in T.serial(T.min(V, NT - tb_(t) * V)):
                                for a in T.unroll(2):
                                    for b in T.unroll(2):
                                        if T.And((tb_(t) * V + l) // TWv * 2 + a < OH,
                                                 (tb_(t) * V + l) % TWv * 2 + b < OW):
                                            y[n_(t), ob_(t) * RT + r, (tb_(t) * V + l) // TWv * 2 + a,
                                              (tb_(t) * V + l) % TWv * 2 + b] = o[a * 2 * V + l * 2 + b]

    return qwino_conv
