"""Hand-scheduled integer kernels (TIR) for x86 AVX2: exact int16 pair products, fused requantization.

No tuning happens at compile time: every kernel is written for the vector width, with
fixed register tiles, and built once per shape by ``tvm.compile``. The lowering
(``qgraph.tvm.x86.select``) calls them through ``relax.call_tir``; shapes and ops they do not
cover keep the default lowering.

The dot-product core is ``VPMADDWD``: 16 int16 x int16 products added in adjacent pairs
into 8 int32 lanes. Operands are zero-point-shifted 8-bit values widened to int16
(``|x - zp| <= 255``), so a pair sum is at most ``2 * 255 * 32767 < 2**31``: the
instruction is exact and the int32 accumulation wraps only where the contract's int32
accumulator would overflow anyway (two's complement sums are exact modulo ``2**32``, so a
final value that fits int32 is right). The saturating u8 x s8 form (``VPMADDUBSW``) appears
only in ``qgraph.tvm.x86.conv``'s conv, where a proof says it cannot saturate.

Layouts (``K2 = ceil(K / 2)``, pairs of the reduction axis; odd ``K`` is padded with a 0):

- the *broadcast* operand is int32 ``[..., K2]``: one int32 holds the int16 pair
  ``(v[2j], v[2j+1])`` (little endian) and is broadcast to the 8 lanes;
- the *vector* operand is int16 ``[..., K2, L * 2]``: lane ``l`` of pair ``j`` holds
  ``(v[2j, l], v[2j+1, l])`` adjacent, so one 256-bit load covers 8 lanes.

MatMul (``gemm_cols``): activations are the broadcast operand, weight columns the lanes
(packed ``[N / 32, K2, 64]``: column tiles, int8 when the weights fit). Convs have their own direct kernels
(``qgraph.tvm.x86.conv``, no im2col; the im2col GEMM that was here, off by default since the
direct conv replaced it, was removed). ``lookup`` is the activations' table lookup.

Accumulator tiles are ``global``-scope buffers of under 1 KiB declared inside the parallel
loop: TVM makes them stack allocas, which LLVM keeps in registers. ``local`` scope became a
``TVMBackendAllocWorkspace`` per task and a store per multiply-add.

Requantization is the epilogue of the tile, on the int32 accumulator held in registers (it
starts at the bias):
``clip(zp + ((sext(acc + bias) * m + half) >> shift), qmin, qmax)`` in int64
(``qgraph.quant.fixedpoint.requantize``; ``half = 2**(shift-1)`` or 0), then the narrowing
cast. Per-channel parameters are constant buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgraph.quant.fixedpoint import rounding_half

#: int32 lanes of one 256-bit vector.
LANES = 8
#: Register tiles of the matmul GEMM (RT rows x VT vectors of 8 columns), in order of preference
#: (``matmul_tile``). Kernel alone, 1 thread, the CRNN's 8210-class head (24 x 1024 x 8210, int8
#: weights): 6x2 2601 us (77.6 GMAC/s, this core's int16 peak), 4x2 2780, 2x4 2996, 4x3 4409 and
#: 3x4 4008 (spills): six broadcasts and two weight loads per 12 multiplies, against 2 + 4 per 8.
MATMUL_TILES = ((6, 2), (4, 2), (2, 4))
#: The 512-bit ``VPDPBUSD`` GEMM's tiles (rows x vectors of 8 columns, a pair of them one zmm
#: accumulator, an odd last one a ymm). Kernel alone, 1 thread, the CRNN head on a Sapphire
#: Rapids core: 12x2 898-933 us (216-225 GMAC/s), 6x4 968-977, 8x3 1033-1048, 4x4 1158, 8x2
#: 1150, 2x8 1228, 6x2 1366, 2x4 1863; 16x2, 24x2, 8x4, 12x4 (16 and more zmm accumulators)
#: 1548-2125. The 256-bit form: 12x2 1330 (152 GMAC/s, its peak), 6x2 1516; int16 6x2 3355.
VNNI_512_MATMUL_TILES = ((12, 2), (6, 4), (8, 3), (4, 4), (6, 2), (2, 8), (2, 4))


def least_padded_tile(tiles, rows: int | None, cols: int) -> tuple[int, int]:
    """The register tile (rows x vectors of 8 columns) of ``tiles``, in order of preference, with
    the least padded work (``rows`` to whole tiles, or 1 where None; ``cols`` to whole vectors):
    a less preferred tile only where it saves over 5%. The matmul GEMM's and the direct conv's."""
    def work(t):
        return (ceil_to(rows, t[0]) if rows else 1) * ceil_to(cols, LANES * t[1])

    best = tiles[0]
    for t in tiles[1:]:
        if work(t) < 0.95 * work(best):
            best = t
    return best


def matmul_tile(rows: int, cols: int, vnni_bits: int | None = None) -> tuple[int, int]:
    """The GEMM's register tile for ``rows`` x ``cols`` (``least_padded_tile`` of ``MATMUL_TILES``,
    or of ``VNNI_512_MATMUL_TILES`` for the 512-bit ``VPDPBUSD`` kernel)."""
    return least_padded_tile(VNNI_512_MATMUL_TILES if vnni_bits == 512 else MATMUL_TILES, rows, cols)


#: The AVX2 instructions the kernels call by name (here and in ``qgraph.tvm.x86.conv``).
PMADDWD = "llvm.x86.avx2.pmadd.wd"
PMADDUBSW = "llvm.x86.avx2.pmadd.ub.sw"
#: ``VPDPBUSD`` (AVX-512 VNNI with VL, or AVX-VNNI: LLVM picks the encoding from the target):
#: ``acc + sum of 4 u8 x s8 products`` per int32 lane, in int32, without an int16 step: exact.
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.256"
#: ... on 512-bit vectors (16 int32 lanes, AVX-512 VNNI): twice the MACs per instruction, which a
#: server core with two 512-bit FMA units issues as often as the 256-bit form.
VPDPBUSD_512 = "llvm.x86.avx512.vpdpbusd.512"
#: The kernels' ``vnni`` forms: the instruction, or its scalar emulation (the same packed
#: buffers and indices, each lane's 4 products summed in int32: checks the layout on a CPU
#: without VNNI, where the instruction cannot run).
VNNI_FORMS = ("vpdpbusd", "emulate")
PSHUFB = "llvm.x86.avx2.pshuf.b"
#: ``VPERMI2B`` (AVX-512 VBMI): each byte of an index vector picks one of 128 table bytes (two zmm).
VPERMI2B = "llvm.x86.avx512.vpermi2var.qi.512"
PBLENDVB = "llvm.x86.avx2.pblendvb"


def ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


#: Multiply-adds below which a GEMM / conv kernel's task loop stays serial, and elements below
#: which a data-movement kernel's does (``elementwise_schedule.PARALLEL_MIN``, the fused elementwise
#: kernels' threshold): waking the thread pool costs a few microseconds, as much as such a
#: kernel's whole work. Digits CNN at batch 1, 2 threads, whole model: 41 us with every
#: kernel parallel, 16 us with these thresholds (every layer serial), ORT fp32 19 us.
PARALLEL_MIN_MACS = 1 << 18


def task_loop(T, work: int, macs: bool = True):
    """``T.parallel`` for a kernel of ``work`` multiply-adds (``macs``) or elements moved, where
    that reaches the threshold; else ``T.serial``."""
    from qgraph.tvm.elementwise_schedule import PARALLEL_MIN

    return T.parallel if work >= (PARALLEL_MIN_MACS if macs else PARALLEL_MIN) else T.serial


@dataclass(frozen=True)
class Requant:
    """Per-channel requantization constants of an epilogue (arrays of the padded channel count).

    ``bias`` int32; ``multiplier`` int32 when every multiplier fits (``sext * sext``, which
    LLVM turns into ``vpmuldq``) else int64; ``half`` and ``shift`` int64.

    ``hi32``: every shift is at least 32, the multipliers fit int32 and the output is at most
    16 bits; the epilogue then shifts the high int32 half of the rounded product
    (``floor(floor(p / 2**32) / 2**(s - 32)) == floor(p / 2**s)``) and clamps in int32: AVX2 has
    no 64-bit arithmetic shift or min/max, so this saves most of the epilogue.
    """

    bias: np.ndarray
    multiplier: np.ndarray
    half: np.ndarray
    shift: np.ndarray
    zero_point: int
    qmin: int
    qmax: int
    out_dtype: str
    hi32: bool = False

    @classmethod
    def make(cls, channels: int, padded: int, bias, multiplier, shift, zero_point: int, qmin: int, qmax: int,
             out_dtype: str) -> "Requant":
        def per(a, dtype):
            a = np.broadcast_to(np.asarray(a, np.int64).reshape(-1), (channels,))
            out = np.zeros(padded, np.int64)
            out[:channels] = a
            return out.astype(dtype)

        b = per(0 if bias is None else bias, np.int64)
        m = per(multiplier, np.int64)
        s = per(shift, np.int64)
        m_dtype = np.int32 if (m.min() >= -(2**31) and m.max() < 2**31) else np.int64
        hi32 = bool(s[:channels].min() >= 32 and m_dtype == np.int32
                    and out_dtype in ("int8", "uint8", "int16", "uint16"))
        if hi32:
            s[channels:] = 32  # padded lanes: a valid shift (their results are never stored)
        half = rounding_half(s)
        return cls(b.astype(np.int32), m.astype(m_dtype), half, s, int(zero_point), int(qmin), int(qmax), out_dtype,
                   hi32)

    def arrays(self) -> list[np.ndarray]:
        return [self.bias, self.multiplier, self.half, self.shift]


def bias_fits_int32(bias) -> bool:
    b = np.asarray(bias, np.int64)
    return bool(b.size == 0 or (b.min() >= -(2**31) and b.max() < 2**31))


def vnni_dot(T, form: str, acc, xv, wv, lanes: int = 8):
    """``acc`` + ``VPDPBUSD`` of u8 bytes ``xv`` (``4 * lanes``) by s8 bytes ``wv`` (``4 * lanes``):
    each int32 lane sums its 4 products (exact). ``lanes`` 8 (ymm) or 16 (zmm). ``form``
    ``"emulate"`` (``VNNI_FORMS``) writes the products out: ``xv`` and ``wv`` are then callables,
    ``k`` -> the lanes' byte ``k`` as an int32 vector."""
    if form == "vpdpbusd":
        return T.call_llvm_pure_intrin(f"int32x{lanes}", VPDPBUSD if lanes == 8 else VPDPBUSD_512, acc, xv, wv)
    total = acc
    for k in range(4):
        total = total + xv(k) * wv(k)
    return total


def zmm_units(vt: int, wide: bool) -> tuple[int, int, int]:
    """How a tile row of ``vt`` 8-column vectors runs ``wide`` (512-bit ``VPDPBUSD``): (pairs of
    vectors as one 16-lane op, single 8-lane vectors after them, the pairs' lanes). The pairs'
    lanes are 8 where there are none: an empty loop's body is still parsed, so it must type-check."""
    pairs = vt // 2 if wide else 0
    return pairs, vt - 2 * pairs, 16 if pairs else 8


def pair_dot(T, pair, vec):
    """``VPMADDWD`` of one int32 ``pair`` (two int16, little endian) broadcast to the 8 lanes by
    the 16 int16 of ``vec``: 8 int32 lanes, each the sum of its two adjacent products (exact:
    module doc). The multiply of every int16-pair kernel here."""
    return T.call_llvm_pure_intrin("int32x8", PMADDWD, T.reinterpret("int16x16", T.broadcast(pair, 8)), vec)


def requant_expr(T, acc, bias, mult, half, shift, rq: Requant):
    """The epilogue on int32 ``acc`` (scalar or vector; the parameters of the same lanes).

    ``bias`` None: the kernel started the accumulator at the bias (the same int32 sum), so
    the product is ``sext(acc) * sext(mult)``, one ``vpmuldq``."""
    if bias is not None:
        acc = acc + bias
    if rq.hi32:
        p = T.Cast("int64", acc) * T.Cast("int64", mult) + half
        v = T.shift_right(T.Cast("int32", T.shift_right(p, T.int64(32))), T.Cast("int32", shift) - 32)
        # a bitcast round trip (free in LLVM) hides v from TIR's bound analysis, which takes this
        # variable shift to bound v inside the clamp and drops the clamp
        v = T.reinterpret("int32", T.reinterpret("float32", v))
        v = T.max(T.min(v, T.int32(rq.qmax - rq.zero_point)), T.int32(rq.qmin - rq.zero_point))
        return T.Cast(rq.out_dtype, v + T.int32(rq.zero_point))
    v = T.Cast("int64", acc) * T.Cast("int64", mult)
    v = T.shift_right(v + half, shift) + T.int64(rq.zero_point)
    v = T.max(T.min(v, T.int64(rq.qmax)), T.int64(rq.qmin))
    return T.Cast(rq.out_dtype, T.Cast("int32", v))


# -- weight packing (compile time, numpy) ----------------------------------------------------------
def pack_matmul_weights(bd: np.ndarray, lanes: int, group: int = 2) -> np.ndarray:
    """Zero-point-shifted weights ``[K, N]`` as ``[Np / lanes, KG, lanes * group]`` (``bd``'s
    dtype), ``group`` consecutive k of a column interleaved (2: int16 pairs for ``VPMADDWD``;
    4: byte quads for ``VPDPBUSD``): one column tile's weights contiguous over the whole
    reduction, so a task streams them in order (rows of the unblocked ``[K2, Np * 2]`` form lay
    16 KiB apart in the CRNN's 8210-column head: a new page every row)."""
    k, n = bd.shape
    kg, npad = -(-k // group), ceil_to(n, lanes)
    w = np.zeros((group * kg, npad), bd.dtype)
    w[:k, :n] = bd
    w = w.reshape(kg, group, npad).transpose(0, 2, 1).reshape(kg, npad // lanes, group * lanes)
    return np.ascontiguousarray(w.transpose(1, 0, 2))


# -- kernels ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    oh: int
    ow: int
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int]  # begin (top, left)

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def pixels(self) -> int:
        return self.oh * self.ow


def matmul_prep(rows: int, k: int, a_dtype: str, a_zp: int, quads: bool = False):
    """``a [rows, K]`` (8-bit) -> int16 ``[rows, 2 * K2]``: ``a - zp``, an odd K padded with 0.
    ``quads`` (the ``VPDPBUSD`` GEMM): -> uint8 ``[rows, 4 * K4]``, the raw bytes (int8 shifted
    by 128 to uint8; the zero point's share is in the GEMM's bias), K padded to quads with 0."""
    from tvm.script import tirx as T

    R, K = rows, k
    G = 4 if quads else 2
    KG = -(-K // G)
    zp = int(a_zp)

    loop = task_loop(T, R * KG * G, macs=False)

    def value(a, r, kk):
        x = a[r, T.min(kk, K - 1)]
        if not quads:
            return T.Cast("int16", x) - T.int16(zp)
        return T.Cast("uint8", T.Cast("int32", x) + 128) if a_dtype == "int8" else x

    odt = "uint8" if quads else "int16"

    @T.prim_func(check_well_formed=False)
    def qmatmul_prep(a: T.Buffer((R, K), a_dtype), ap: T.Buffer((R, KG * G), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for r in loop(R):
                for kk in T.vectorized(KG * G):
                    ap[r, kk] = T.if_then_else(kk < K, value(a, r, kk), T.Cast(odt, 0))

    return qmatmul_prep


def gemm_cols(rows: int, k2: int, cols: int, rq: Requant, tile: tuple[int, int], w_dtype: str = "int16",
              vnni: str | None = None, wide: bool = False):
    """MatMul GEMM: ``y[r, c] = requant(sum_j a[r, j] . w[j, c] + bias[c])``, ``a`` int16 pairs
    ``[rows, 2 * K2]``, ``w`` packed by ``pack_matmul_weights`` (column tiles of ``LANES * VT``);
    per-column requantization.

    ``w_dtype="int8"``: weights that fit int8 are stored as int8 and sign-extended on load
    (``vpmovsxbw``): half the weight traffic, which decides wide layers (a CTC head).

    ``vnni`` (``VNNI_FORMS``): ``a`` raw bytes ``[rows, 4 * K4]`` (``matmul_prep(..., quads=True)``;
    ``k2`` is then K4), ``w`` int8 quads (``pack_matmul_weights(..., group=4)``), each lane's
    4 u8 x s8 products summed in int32 by ``VPDPBUSD`` (exact for any int8 weights);
    ``rq.bias`` holds ``bias - zp * sum(w)``. ``wide``: pairs of the tile's 8-column vectors as
    one 512-bit ``VPDPBUSD`` (an odd last one 256-bit)."""
    from tvm.script import tirx as T

    if vnni is not None and vnni not in VNNI_FORMS:
        raise ValueError(f"vnni={vnni!r}: one of {VNNI_FORMS}")
    RT, VT = tile
    V = LANES * VT
    G = 2 if vnni is None else 4  # k per packed group
    R, K2, C = rows, k2, cols
    Cp = ceil_to(C, V)
    CT, RTs = Cp // V, -(-R // RT)
    mdt = str(rq.multiplier.dtype)
    odt = rq.out_dtype
    adt = "int16" if vnni is None else "uint8"
    wdt = w_dtype if vnni is None else "int8"

    def epi(acc, b, m, h, s):
        return requant_expr(T, acc, None, m, h, s, rq)  # the bias starts the accumulator

    def wvec(w, ct, j, v):
        vec = w[ct, j, T.ramp(v * 16, 1, 16)]
        return T.Cast("int16x16", vec) if wdt != "int16" else vec

    def product(acc, a, w, row, ct, j, v, lanes=8):  # acc + row's group j . the lanes columns from vector v
        group = T.reinterpret("int32", a[row, T.ramp(j * G, 1, G)])
        if vnni is None:
            return acc + pair_dot(T, group, wvec(w, ct, j, v))
        if vnni == "vpdpbusd":
            return vnni_dot(T, vnni, acc, T.reinterpret(f"int8x{4 * lanes}", T.broadcast(group, lanes)),
                            w[ct, j, T.ramp(v * 32, 1, 4 * lanes)], lanes)
        # emulate: lane l gets byte k of the row's quad times w[.., v * 32 + 4 l + k]
        return vnni_dot(T, vnni, acc, lambda k: T.broadcast(T.bitwise_and(T.shift_right(group, T.int32(8 * k)),
                                                                          T.int32(255)), lanes),
                        lambda k: T.Cast(f"int32x{lanes}", w[ct, j, T.ramp(v * 32 + k, 4, lanes)]), lanes)

    PAIRS, SINGLES, PAIR_LANES = zmm_units(VT, vnni is not None and wide)

    loop = task_loop(T, R * K2 * G * C)

    @T.prim_func(check_well_formed=False)
    def qmatmul_gemm(a: T.Buffer((R, K2 * G), adt), w: T.Buffer((CT, K2, V * G), wdt),
                     bias: T.Buffer((Cp,), "int32"), mult: T.Buffer((Cp,), mdt), half: T.Buffer((Cp,), "int64"),
                     shift: T.Buffer((Cp,), "int64"), y: T.Buffer((R, C), odt)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for t in loop(CT * RTs):
                acc = T.alloc_buffer((RT * V,), "int32", scope="global")
                for i in T.unroll(RT * VT):
                    acc[T.ramp(i * 8, 1, 8)] = bias[T.ramp(((t // RTs) * VT + i % VT) * 8, 1, 8)]
                for j in T.serial(K2):
                    for r in T.unroll(RT):
                        for p in T.unroll(PAIRS):
                            acc[T.ramp((r * VT + 2 * p) * 8, 1, PAIR_LANES)] = product(
                                acc[T.ramp((r * VT + 2 * p) * 8, 1, PAIR_LANES)], a, w,
                                T.min((t % RTs) * RT + r, R - 1), t // RTs, j, 2 * p, PAIR_LANES)
                        for v in T.unroll(SINGLES):
                            acc[T.ramp((r * VT + 2 * PAIRS + v) * 8, 1, 8)] = product(
                                acc[T.ramp((r * VT + 2 * PAIRS + v) * 8, 1, 8)], a, w,
                                T.min((t % RTs) * RT + r, R - 1), t // RTs, j, 2 * PAIRS + v)
                for r in T.unroll(RT):
                    for v in T.unroll(VT):
                        if (t % RTs) * RT + r < R:
                            if ((t // RTs) * VT + v) * 8 + 8 <= C:
                                for l in T.vectorized(8):
                                    y[(t % RTs) * RT + r, ((t // RTs) * VT + v) * 8 + l] = epi(
                                        acc[(r * VT + v) * 8 + l], bias[((t // RTs) * VT + v) * 8 + l],
                                        mult[((t // RTs) * VT + v) * 8 + l], half[((t // RTs) * VT + v) * 8 + l],
                                        shift[((t // RTs) * VT + v) * 8 + l])
                            else:
                                for l in T.serial(8):
                                    if ((t // RTs) * VT + v) * 8 + l < C:
                                        y[(t % RTs) * RT + r, ((t // RTs) * VT + v) * 8 + l] = epi(
                                            acc[(r * VT + v) * 8 + l], bias[((t // RTs) * VT + v) * 8 + l],
                                            mult[((t // RTs) * VT + v) * 8 + l], half[((t // RTs) * VT + v) * 8 + l],
                                            shift[((t // RTs) * VT + v) * 8 + l])

    return qmatmul_gemm


# -- table lookup ----------------------------------------------------------------------------------
#: Elements per parallel task of ``lookup``.
LOOKUP_CHUNK = 4096


def lookup(n: int, x_dtype: str, x_qmin: int, table_len: int, out_dtype: str):
    """``y[i] = table[clip(x[i] - x_qmin, 0, L - 1)]`` over ``n`` flattened elements: one byte
    load per element, the index computed in the loop. TVM's ``take`` after a separate int32
    cast of the indices was two kernels and a gather (PP-OCRv4 rec: 27 hard-swish lookups,
    ~3.7 ms of 24)."""
    from tvm.script import tirx as T

    N, L, CH = n, table_len, LOOKUP_CHUNK
    CHUNKS = -(-N // CH)
    qmin = int(x_qmin)

    loop = task_loop(T, N, macs=False)

    @T.prim_func(check_well_formed=False)
    def qlookup(x: T.Buffer((N,), x_dtype), table: T.Buffer((L,), out_dtype), y: T.Buffer((N,), out_dtype)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for o in loop(CHUNKS):
                for i in T.serial(T.min(CH, N - o * CH)):
                    y[o * CH + i] = table[T.max(T.min(T.Cast("int32", x[o * CH + i]) - qmin, L - 1), 0)]

    return qlookup


def shuffle_table(table: np.ndarray, x_dtype: str) -> np.ndarray | None:
    """``lookup_shuffle``'s constant: the 256-entry byte table as 16 rows of 16 entries, each
    twice (both 128-bit lanes of a ``VPSHUFB``), in the order of the raw input byte (an int8
    input's byte ``b`` is index ``b ^ 0x80``); None where the table is not one byte per
    input byte value."""
    t = vbmi_table(table, x_dtype)
    return None if t is None else np.ascontiguousarray(np.tile(t.reshape(16, 16), (1, 2)).reshape(-1))


def lookup_shuffle(n: int, x_dtype: str, out_dtype: str):
    """``lookup`` for a byte table over every byte value (``shuffle_table``), 32 elements per
    step: 16 ``VPSHUFB`` (one per high nibble, on the low nibble) and a tree of 15
    ``VPBLENDVB`` on the high nibble's bits (each moved to the byte's sign bit by a 16-bit
    shift). PP-OCRv4 rec spends a fifth of its time in hard-swish lookups of 100k-250k
    elements, at about one element per cycle as scalar loads. A tail under 32 stays scalar."""
    from tvm.script import tirx as T

    def step(x, tabs, base):
        idx = T.reinterpret("int8x32", x[T.ramp(base, 1, 32)])
        lo = idx & T.broadcast(T.int8(15), 32)
        r = [T.call_llvm_pure_intrin("int8x32", PSHUFB, T.reinterpret("int8x32", tabs[T.ramp(h * 32, 1, 32)]), lo)
             for h in range(16)]
        for k in range(4):  # bit 4 + k of the byte to its sign bit
            mask = T.reinterpret("int8x32", T.shift_left(T.reinterpret("int16x16", idx), T.broadcast(T.int16(3 - k), 16))) \
                if k < 3 else idx
            r = [T.call_llvm_pure_intrin("int8x32", PBLENDVB, r[2 * j], r[2 * j + 1], mask) for j in range(len(r) // 2)]
        return T.reinterpret(f"{out_dtype}x32", r[0])

    def scalar(x, tabs, i):  # the same table: row = high nibble, column = low nibble
        b = T.Cast("int32", T.reinterpret("uint8", x[i]))
        return T.reinterpret(out_dtype, tabs[b // 16 * 32 + b % 16])

    return _byte_lookup(n, x_dtype, out_dtype, 512, 32, step, scalar)


def _byte_lookup(n: int, x_dtype: str, out_dtype: str, tab_len: int, width: int, step, scalar):
    """The loop of the byte-table lookups: parallel chunks of ``LOOKUP_CHUNK`` elements,
    ``width`` per ``step(x, tab, base)`` (a vector), a tail under ``width`` by ``scalar(x, tab, i)``."""
    from tvm.script import tirx as T

    N, CH, W = n, LOOKUP_CHUNK, width
    CHUNKS = -(-N // CH)
    loop = task_loop(T, N, macs=False)

    @T.prim_func(check_well_formed=False)
    def qlookup_bytes(x: T.Buffer((N,), x_dtype), tab: T.Buffer((tab_len,), "uint8"), y: T.Buffer((N,), out_dtype)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for o in loop(CHUNKS):
                for v in T.serial(T.min(CH, N - o * CH) // W):
                    y[T.ramp(o * CH + v * W, 1, W)] = step(x, tab, o * CH + v * W)
                for i in T.serial(T.min(CH, N - o * CH) % W):
                    y[o * CH + T.min(CH, N - o * CH) // W * W + i] = scalar(x, tab, o * CH + T.min(CH, N - o * CH) // W * W + i)

    return qlookup_bytes


def lookup_vbmi(n: int, x_dtype: str, out_dtype: str):
    """``lookup`` for a byte table over every byte value on AVX-512 VBMI: 64 elements per step,
    two ``VPERMI2B`` (table bytes 0-127 and 128-255, on the index's low 7 bits) and a byte
    select on its high bit, where ``lookup_shuffle`` takes 16 ``VPSHUFB`` and 15 blends per 32.
    ``tab``: the 256 bytes in the order of the raw input byte (``vbmi_table``). A tail under 64
    stays scalar."""
    from tvm.script import tirx as T

    def half(tab, idx, at):  # table bytes at .. at + 127, indexed by idx's low 7 bits
        return T.call_llvm_pure_intrin("int8x64", VPERMI2B, T.reinterpret("int8x64", tab[T.ramp(at, 1, 64)]), idx,
                                       T.reinterpret("int8x64", tab[T.ramp(at + 64, 1, 64)]))

    def step(x, tab, base):
        idx = T.reinterpret("int8x64", x[T.ramp(base, 1, 64)])
        return T.reinterpret(f"{out_dtype}x64", T.Select(idx < T.broadcast(T.int8(0), 64), half(tab, idx, 128),
                                                         half(tab, idx, 0)))

    def scalar(x, tab, i):
        return T.reinterpret(out_dtype, tab[T.Cast("int32", T.reinterpret("uint8", x[i]))])

    return _byte_lookup(n, x_dtype, out_dtype, 256, 64, step, scalar)


def vbmi_table(table: np.ndarray, x_dtype: str) -> np.ndarray | None:
    """``lookup_vbmi``'s constant: the 256-entry byte table in the order of the raw input byte
    (an int8 input's byte ``b`` is index ``b ^ 0x80``); None where the table is not one byte per
    input byte value."""
    if x_dtype not in ("uint8", "int8") or table.size != 256 or np.dtype(table.dtype).itemsize != 1:
        return None
    t = table.view(np.uint8)
    return np.ascontiguousarray(t[np.arange(256) ^ 0x80] if x_dtype == "int8" else t)  # 0x80 ^ byte: its index


# -- float GEMV ------------------------------------------------------------------------------------
#: Output columns of one ``float_gemv`` task (4 AVX2 vectors held in registers), the first of
#: these that divides N: the weights are packed so that a task's columns are contiguous over
#: the whole reduction (``pack_gemv_weights``) and stream from cache in order.
GEMV_BLOCKS = (32, 16, 8)
#: Rows of one register tile (2 x 4 accumulators: each weight vector loaded once for both rows;
#: one row for a one-row GEMV).
GEMV_ROWS = 2
#: The most rows ``float_gemv`` takes: beyond this the weights are reused enough for a GEMM
#: (``float_matmul_schedule``) to be as good.
GEMV_MAX_ROWS = 32


def gemv_block(n: int) -> int | None:
    """``float_gemv``'s column block for ``n`` output columns, or None (``n`` not a multiple of 8)."""
    return next((b for b in GEMV_BLOCKS if n % b == 0), None)


def pack_gemv_weights(w: np.ndarray) -> np.ndarray:
    """``w`` ``[D, K, N]`` as ``[D, N / NB, K, NB]``: one task's ``NB`` columns, row after row."""
    d, k, n = w.shape
    nb = gemv_block(n)
    return np.ascontiguousarray(w.reshape(d, k, n // nb, nb).transpose(0, 2, 1, 3))


#: Rows of the 512-bit GEMV's register tile: 6 rows x 2 zmm vectors, 12 accumulators (enough to
#: cover the FMA's latency at 2 per cycle), for an input projection's rows (``float_gemv``'s ``wide``).
GEMV_WIDE_ROWS = 6


def float_gemv(d: int, m: int, k: int, n: int, dtype: str = "float32", wide: bool = False,
               weights: str | None = None):
    """``y[i] = x[i] @ w[i]`` for ``i < d``: ``x`` ``[d, m, k]`` (few rows: an LSTM step's hidden
    state, both directions at once, or its input projection), ``w`` packed ``[d, n / NB, k, NB]``
    (``pack_gemv_weights``), ``y`` ``[d, m, n]``. One task per ``NB`` columns of one ``i``, in
    parallel; 2 rows x 4 vectors of accumulators in registers, ``k`` innermost. A float sum in
    ``k`` order with fused multiply-adds (as TVM's own float kernels): the last bits differ from
    numpy's, whose BLAS sums in blocks.

    TVM's matmul schedule (``float_matmul_schedule``) on ``[1, 512] x [512, 2048]`` read the
    weights at 32 GB/s (a 256-column accumulator block in memory); this reads them at 57-74 GB/s,
    kernel alone, 1 thread (ddddocr's CRNN: an LSTM step of both directions 2 x 129.5 -> 139-143 us,
    116-129 us once ``rows`` / ``r0`` were inlined; an LSTM with the default activations now runs
    its whole loop in ``recurrent.float_lstm`` instead).

    ``wide`` (AVX-512; ``n`` a multiple of 16 and ``GEMV_WIDE_ROWS`` rows or more, an input
    projection's): 512-bit vectors on tiles of that many rows. Each output is the same ``k``-order
    chain of fused multiply-adds either way: the same bits. ddddocr's CRNN input projection
    (2 x 23 x 512 x 2048) on a Sapphire Rapids core, kernel alone, 1 thread (measured while the
    test suite ran): 1614 us on 2 rows x 4 ymm (6 loads per 8 FMAs), 787 us wide.

    ``weights``: the packed weights' type where it is not ``dtype``: ``"float16"`` for float32
    weights that hold float16 values (``qgraph.quant.float16``), widened in registers (exact).
    In a whole run the weights come from memory, not the cache: the CRNN's input projection
    (8 MB of float32) took 1402 us there against 776 us alone."""
    from tvm.script import tirx as T

    nb = gemv_block(n)
    wide = wide and nb % 16 == 0 and m >= GEMV_WIDE_ROWS
    L = 16 if wide else 8  # float32 lanes per vector
    NBL, V, MR = n // nb, nb // L, min(GEMV_WIDE_ROWS if wide else GEMV_ROWS, m)
    TT = -(-m // MR)  # row tiles; the last moved back to end at row m (rows computed twice: the same values)
    loop = task_loop(T, d * m * k * n)
    weights = weights or dtype

    def widen(v):
        return v if weights == dtype else T.Cast(f"{dtype}x{L}", v)

    @T.prim_func(check_well_formed=False)
    def fgemv(x: T.Buffer((d, m, k), dtype), w: T.Buffer((d, NBL, k, nb), weights), y: T.Buffer((d, m, n), dtype)):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            for o in loop(d * NBL):
                acc = T.alloc_buffer((MR * nb,), dtype, scope="global")
                for t in T.serial(TT):
                    r0 = T.meta_var(T.min(t * MR, m - MR))  # inlined (a bound name became a workspace per task)
                    for r in T.unroll(MR):
                        for v in T.unroll(V):
                            acc[T.ramp(r * nb + v * L, 1, L)] = T.broadcast(T.Cast(dtype, 0), L)
                    for kk in T.serial(k):
                        for r in T.unroll(MR):
                            for v in T.unroll(V):
                                acc[T.ramp(r * nb + v * L, 1, L)] = acc[T.ramp(r * nb + v * L, 1, L)] + T.broadcast(
                                    x[o // NBL, r0 + r, kk], L) * widen(w[o // NBL, o % NBL, kk, T.ramp(v * L, 1, L)])
                    for r in T.unroll(MR):
                        for v in T.unroll(V):
                            y[o // NBL, r0 + r, T.ramp(o % NBL * nb + v * L, 1, L)] = acc[T.ramp(r * nb + v * L, 1, L)]

    return fgemv
