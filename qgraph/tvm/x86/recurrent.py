"""The LSTM time loop as one float kernel (TIR) for x86 AVX2: every step's hidden-state GEMV with
the cell update in its epilogue.

``relax_recurrent`` unrolls a recurrent op into ``seq`` steps of a GEMV kernel, two gate
kernels and their tensors: about 8 VM calls per step, and the gates apart from the GEMV that
made them. Here one kernel runs the whole loop. Step ``s`` is one parallel region of tasks,
one per (direction, ``U`` hidden units, ``lstm_units``: 16 at batch 1, else 8): a task's GEMV
computes the 4 gates of its units (the recurrence weights are packed ``[D, H / U, H, 4U]``: its
i, o, f, c columns, contiguous over the reduction), then updates their cell and hidden state in
registers. The hidden state is double-buffered between steps (every task of step ``s`` reads all
of ``h[s - 1]``); each task owns its cell-state lanes.

The arithmetic is ``relax_recurrent``'s, operation for operation: ``(x W^T + h R^T) + (Wb + Rb)``
(the input projection ``x W^T`` is ``gemm.float_gemv``'s, ``R^T``'s sum a fused multiply-add
chain in ``k`` order as that kernel's), Sigmoid in ``relax_float.sigmoid_expr``'s split form and
Tanh in TVM's own form (``tanh_expr``), except ``exp``: TVM's is a libm call per lane, this is
a polynomial in registers (``exp_expr``, within about 1 ulp), so the results differ from the unrolled
lowering's in the last bits (``tests/test_tvm.py`` bounds it), as both differ from numpy's.
"""

from __future__ import annotations

import numpy as np

from qgraph.tvm.x86.gemm import GEMV_MAX_ROWS, GEMV_ROWS, LANES, task_loop

#: Accumulator vectors of one task's row tile: its 4 gates (ONNX's order i, o, f, c) of
#: ``8 / rows`` vectors of hidden units each. Eight chains of fused multiply-adds cover their
#: latency, where four (one vector of units a task, the first form) left the batch-1 loop
#: waiting on it: ddddocr's CRNN shape, float16 weights, kernel alone, 1 thread, one process:
#: 3210 -> 2861 us (16 units a task; 32 units, or 512-bit vectors, 2837-2884 us).
TASK_VECTORS = 8


def lstm_units(hidden: int, batch: int) -> int:
    """Hidden units of one task of ``float_lstm``: ``TASK_VECTORS`` accumulators over the row
    tile's rows (1 or ``GEMV_ROWS``), where the hidden size is a multiple of them."""
    units = TASK_VECTORS // 4 // min(GEMV_ROWS, batch) * LANES
    return units if hidden % units == 0 else LANES


def lstm_fits(hidden: int, batch: int) -> bool:
    """Whether ``float_lstm`` covers a hidden size and batch: whole vectors of units, a GEMV's rows."""
    return hidden % LANES == 0 and 1 <= batch <= GEMV_MAX_ROWS


def pack_lstm_weights(r_t: np.ndarray, units: int = LANES) -> np.ndarray:
    """``R^T`` ``[D, H, 4H]`` (gate blocks i, o, f, c) as ``[D, H / U, H, 4U]`` for ``U = units``
    (``lstm_units``): task ``b``'s columns (units ``Ub .. Ub + U - 1`` of each gate, gate after
    gate), row after row."""
    d, h, g = r_t.shape
    blocks = r_t.reshape(d, h, 4, h // units, units).transpose(0, 3, 1, 2, 4)
    return np.ascontiguousarray(blocks.reshape(d, h // units, h, 4 * units))


#: Cephes ``expf``: ``ln 2`` in two parts (``n * LN2_HI`` exact for the ``n`` here) and the
#: polynomial of ``exp(r) - 1 - r`` over ``r^2`` on ``|r| <= ln 2 / 2``.
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
#: ``exp_expr``'s arguments are clamped here: its ``exp`` (1.18e-38) is a normal float32, so
#: no subnormal (slow on most x86 cores) reaches the arithmetic after it.
EXP_MIN = -87.33


def exp_expr(T, x):
    """``exp`` of a float32 vector ``x <= 0`` in registers: Cephes ``expf`` (``2^n`` times a
    degree-7 polynomial of the reduced argument), ``x`` clamped at ``EXP_MIN``, a NaN kept. Within 1.002 ulp
    of the exact value (0.27 on average), where glibc's ``expf`` is within 0.5 and numpy's
    float32 ``exp`` (the reference's) within 2.4 (``tests/test_tvm_kernels.py``, 2M arguments in
    ``[-90, 0]``). TVM's ``exp`` is an ``expf`` call per lane, the vector spilled around each
    call: the LSTM kernel's step took 142-164 us with it and 126-130 us with this (1 thread,
    ddddocr's CRNN shape, kernel alone; separate runs of a noisy machine)."""
    def f(v):
        return T.broadcast(T.float32(v), LANES)

    arg = x
    x = T.max(x, f(EXP_MIN))
    n = T.floor(x * f(1.4426950408889634) + f(0.5))
    r = x - n * f(LN2_HI) - n * f(LN2_LO)
    p = f(EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p = p * r + f(c)
    p = p * (r * r) + r + f(1.0)
    two_n = T.reinterpret(f"float32x{LANES}", T.shift_left(T.Cast(f"int32x{LANES}", n) + T.broadcast(T.int32(127), LANES),
                                                             T.broadcast(T.int32(23), LANES)))
    return T.Select(T.isnan(arg), arg, p * two_n)  # a NaN stays a NaN (the clamp would make it EXP_MIN)


def sigmoid_expr(T, x):
    """``relax_float.sigmoid_expr`` in TIR: ``1 / (1 + e)`` for ``x > 0``, else ``e / (1 + e)``,
    ``e = exp(-|x|)`` (``exp_expr``)."""
    one = T.broadcast(T.float32(1), LANES)
    e = exp_expr(T, -T.fabs(x))
    return T.Select(x > T.broadcast(T.float32(0), LANES), one / (one + e), e / (one + e))


def tanh_expr(T, x):
    """TVM's ``tanh`` (its LLVM legalization: ``(1 - exp(-2x)) / (1 + exp(-2x))`` for ``x >= 0``,
    ``(exp(2x) - 1) / (exp(2x) + 1)`` below) with one ``exp``: ``e = exp(-2|x|)`` is both sides'
    ``exp`` (``-2|x| == 2x`` exactly for ``x < 0``), and the negative side is ``-(1 - e) / (1 + e)``
    (negation is exact)."""
    one = T.broadcast(T.float32(1), LANES)
    e = exp_expr(T, T.broadcast(T.float32(-2), LANES) * T.fabs(x))
    t = (one - e) / (one + e)
    return T.Select(x >= T.broadcast(T.float32(0), LANES), t, -t)


#: Run every other step's tasks in reverse order. Each step streams all the recurrence weights
#: (the CRNN: 8 MB of float32, past any L2); in one order every step, none is left in L2 when the
#: next step wants it, where reversed the next step starts on the last ~L2-size of them. The
#: tasks of a step are independent (each its own units), so the results are the same bits.
#: Each thread reverses its own share (``task_order``).
ALTERNATE = True
#: Thread counts whose shares ``task_order`` reverses one by one (more threads: the whole step).
CHUNKED_THREADS = (2, 3, 4)


def task_order(T, s, q, n: int, threads):
    """The task that step ``s``'s ``q``-th iteration runs, of ``n``: ``q`` on even steps; on odd ones
    ``q`` reversed within its thread's share, so that every thread starts on the weights it
    ended the step before on, in its own L2. TVM's thread pool gives each of ``threads`` workers
    ``ceil(n / threads)`` consecutive iterations (one thread: the whole step reversed). Shares
    are constants per thread count (``CHUNKED_THREADS``, chosen by selects), as a division by the
    run-time count in every task cost more than the reuse saved. Any count is correct (the order
    is a permutation of the tasks); only its speed depends on the split. The CRNN's shape, kernel
    alone, 2 threads: the whole step reversed 2788-2945 us, shares reversed 2460-2478 (float16
    weights 1506-1557 -> 1251-1307); 1 thread unchanged (``bench/bench_lstm_order.py``)."""
    rev = n - 1 - q
    for k in CHUNKED_THREADS[::-1]:
        c = -(-n // k)
        start = q // c * c
        rev = T.if_then_else(threads == k, start + T.min(c, n - start) - 1 - (q - start), rev)
    return T.if_then_else(s % 2 == 0, q, rev)


def float_lstm(d: int, seq: int, batch: int, hidden: int, reverse: tuple[bool, ...], weights: str = "float32"):
    """The LSTM loop of ``d`` directions (``reverse[i]``: direction ``i`` runs back in time).

    Arguments, float32: ``xw`` ``[d, seq * batch, 4H]`` (``x W^T`` in time order, row
    ``t * batch + b``), ``w`` ``[d, H / U, H, 4U]`` (``pack_lstm_weights`` with
    ``U = lstm_units(hidden, batch)``; of type ``weights``: ``"float16"`` for recurrence weights
    that hold float16 values (``qgraph.quant.float16``), widened to float32 in registers, which
    is exact: the same sums in half the bytes), ``bias``
    ``[d, 4H]`` (``Wb + Rb``), ``h0`` / ``c0`` ``[d, batch, H]``; outputs ``y``
    ``[seq, d, batch, H]`` (time order), ``yh`` / ``yc`` ``[d, batch, H]`` (the last step's).
    Default activations only (Sigmoid, Tanh, Tanh), no peepholes."""
    from tvm.script import tirx as T

    L, U = LANES, lstm_units(hidden, batch)
    H, G, HB, NB = hidden, 4 * hidden, hidden // U, 4 * U
    MR = min(GEMV_ROWS, batch)
    MT = batch // MR  # full row tiles; an odd last row takes a tile whose second row repeats it
    S = d * batch * H  # one copy of the state
    loop = task_loop(T, d * batch * H * G)
    rev = tuple(bool(r) for r in reverse)
    if weights not in ("float32", "float16"):
        raise ValueError(f"float_lstm: weights of type {weights!r}; float32 or float16")

    def widen(v):
        """A vector of weights as float32 (VCVTPH2PS for float16: exact)."""
        return v if weights == "float32" else T.Cast(f"float32x{L}", v)

    def when(s, dd):
        """The time index of step ``s`` of direction ``dd``."""
        t = s
        for i, r in enumerate(rev):
            if r:
                t = T.if_then_else(dd == i, seq - 1 - s, t)
        return t

    @T.prim_func(check_well_formed=False)
    def flstm(xw: T.Buffer((d, seq * batch, G), "float32"), w: T.Buffer((d, HB, H, NB), weights),
              bias: T.Buffer((d, G), "float32"), h0: T.Buffer((d, batch, H), "float32"),
              c0: T.Buffer((d, batch, H), "float32"), y: T.Buffer((seq, d, batch, H), "float32"),
              yh: T.Buffer((d, batch, H), "float32"), yc: T.Buffer((d, batch, H), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        with T.sblock("root"):
            hs = T.alloc_buffer((2 * S,), "float32", scope="global")  # h[s - 1] and h[s], by parity
            h0f = T.decl_buffer((S,), "float32", data=h0.data)
            c0f = T.decl_buffer((S,), "float32", data=c0.data)
            ycf = T.decl_buffer((S,), "float32", data=yc.data)
            yhf = T.decl_buffer((S,), "float32", data=yh.data)
            for i in T.serial(S):
                hs[i] = h0f[i]
                ycf[i] = c0f[i]
            threads = T.call_packed("runtime.NumThreads", dtype="int32")  # the pool's workers
            for s in T.serial(seq):
                for q in loop(d * HB):
                    # every other step in reverse task order (``ALTERNATE``): each thread starts on the
                    # weights it ended the step before on, still in its core's L2. Bound once a task, not
                    # inlined: a run-time-dependent index in every load of the k loop tripled the time
                    o = task_order(T, s, q, d * HB, threads) if ALTERNATE else q
                    acc = T.alloc_buffer((MR * NB,), "float32", scope="global")
                    for t in T.serial(MT + batch % MR):
                        # meta_var: inlined expressions (a bound name became a workspace allocation per task)
                        rows = T.meta_var(T.if_then_else(t < MT, MR, 1))
                        r0 = T.meta_var(T.if_then_else(t < MT, t * MR, MT * MR + t - MT))
                        for r in T.unroll(MR):
                            for v in T.unroll(NB // L):
                                acc[T.ramp(r * NB + v * L, 1, L)] = T.broadcast(T.float32(0), L)
                        for kk in T.serial(H):
                            for r in T.unroll(MR):
                                for v in T.unroll(NB // L):
                                    acc[T.ramp(r * NB + v * L, 1, L)] = acc[T.ramp(r * NB + v * L, 1, L)] + T.broadcast(
                                        hs[s % 2 * S + (o // HB * batch + T.min(r0 + r, batch - 1)) * H + kk], L
                                    ) * widen(w[o // HB, o % HB, kk, T.ramp(v * L, 1, L)])
                        for r in T.serial(rows):
                            for u in T.unroll(U // L):  # the task's vectors of units
                                # gate k of these units: (x W^T + h R^T) + (Wb + Rb)
                                gate = T.meta_var(lambda k: (xw[o // HB, when(s, o // HB) * batch + r0 + r, T.ramp(k * H + o % HB * U + u * L, 1, L)]
                                                             + acc[T.ramp(r * NB + k * U + u * L, 1, L)]) + bias[o // HB, T.ramp(k * H + o % HB * U + u * L, 1, L)])
                                at = T.meta_var((o // HB * batch + r0 + r) * H + o % HB * U + u * L)  # the units in a state copy
                                ycf[T.ramp(at, 1, L)] = sigmoid_expr(T, gate(2)) * ycf[T.ramp(at, 1, L)] + sigmoid_expr(T, gate(0)) * tanh_expr(T, gate(3))
                                hs[T.ramp((s + 1) % 2 * S + at, 1, L)] = sigmoid_expr(T, gate(1)) * tanh_expr(T, ycf[T.ramp(at, 1, L)])
                                y[when(s, o // HB), o // HB, r0 + r, T.ramp(o % HB * U + u * L, 1, L)] = hs[T.ramp((s + 1) % 2 * S + at, 1, L)]
            for i in T.serial(S):
                yhf[i] = hs[seq % 2 * S + i]

    return flstm
