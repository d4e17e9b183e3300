"""A schedule for the float matmuls TVM's CPU pipeline leaves as scalar loops.

Float MatMul / Gemm fallbacks and the recurrent ops' projections (``relax_recurrent``) are
legalized to a ``matmul`` PrimFunc (often fused with a bias add); TVM 0.27's CPU pipeline
schedules none of them: an LSTM step's ``[1, 512] x [512, 2048]`` took 4 ms, a model with one
bidirectional LSTM ten times ONNX Runtime's float time. ``matmul_rule`` tiles the output: with
rows to tile, 4 (or 2) rows x one column vector held in registers, the reduction inside the
tile; a GEMV (one row), up to 256 columns accumulated in a local buffer with the reduction
outside them, so that B streams row by row. It vectorizes over columns and runs the tiles in
parallel; an elementwise epilogue (the bias add)
is folded into the write-back.

Float sums change order: the results differ from numpy's in the last bits, as every float
sum of TVM's already does (the reference's float ops are numpy's; float values are compared
with a tolerance, and integer values after them may move by 1 LSB). Integer kernels are not
touched (qgraph's own are scheduled; this rule takes float accumulators only).
"""

from __future__ import annotations

import math

#: Vector width over output columns: the first of these that divides N (2 or 1 AVX2 vectors).
VECTOR_LANES = (16, 8)
#: Output columns of one tile: the first of these that divides N. A tile's accumulators
#: (``ROW_TILES`` x this, 4 KiB at most) stay in L1 while the reduction streams over B's rows:
#: each step of k reads ``cols`` contiguous floats of B (a GEMV, ``[1, K] x [K, N]``, reads B
#: once, row by row; a tile of one vector instead walked B down its columns, 8 KiB apart: 3x slower).
COLUMN_BLOCKS = (256, 128, 64, 32, 16, 8)
#: Output rows per tile: the first of these that divides M.
ROW_TILES = (4, 2, 1)
#: Output elements below which the tiles run serially.
PARALLEL_MIN = 1 << 12


def _is_product_sum(block) -> bool:
    """``block``'s body is ``C[...] = C[...] + A[...] * B[...]`` (a legalized MatMul / Gemm).

    In TVM 0.27 a load is a ``tvm.ir.expr.TensorLoad`` (its ``source`` the buffer) and ``Add`` /
    ``Mul`` are ``tvm.ir.prim.expr``'s classes, not ``tirx``'s: matched by class name."""
    from tvm import tirx

    def kind(e) -> str:
        return type(e).__name__

    store = block.body
    if not isinstance(store, tirx.BufferStore) or kind(store.value) != "Add":
        return False
    acc, prod = store.value.a, store.value.b
    if kind(acc) not in ("TensorLoad", "BufferLoad") or not getattr(acc, "source", getattr(acc, "buffer", None)) \
            .same_as(store.buffer):
        return False
    return kind(prod) == "Mul" and all(kind(t) in ("TensorLoad", "BufferLoad") for t in (prod.a, prod.b))


def matmul_rule():
    """The dlight rule (a ``ScheduleRule``) described in the module doc."""
    from tvm.s_tir.dlight import ScheduleRule

    from qgraph.tvm.elementwise_schedule import loop_extents, unscheduled_blocks

    def apply(func, target, _tunable):
        found = unscheduled_blocks(func)
        if found is None:
            return None
        sch, infos = found
        if not infos or not infos[0].is_reduction() or any(not b.is_injective() for b in infos[1:]):
            return None
        block = infos[0].block_rv
        if [it.kind for it in infos[0].iters][-1:] != ["R"] or \
                sum(it.kind == "R" for it in infos[0].iters) != 1 or len(infos[0].iters) < 2:
            return None
        if not _is_product_sum(sch.get(block)) or "float" not in str(sch.get(block).body.buffer.dtype):
            return None  # a float sum of products only: other reductions (softmax, pools) keep TVM's
        loops = sch.get_loops(block)
        extents = loop_extents(sch, loops)
        if extents is None or len(loops) != len(infos[0].iters):
            return None
        if len(loops) == 2:  # [1, K] x [K, N]: the unit row is not a loop (a GEMV)
            (j, k), i, batch, m = loops, None, [], 1
        else:
            *batch, i, j, k = loops
            m = extents[-3]
        n = extents[-2]
        lanes = next((c for c in VECTOR_LANES if n % c == 0), None)
        if lanes is None:
            return None
        rows = next(r for r in ROW_TILES if m % r == 0)
        if i is not None and rows > 1:
            # a register tile: rows x one column vector (8 ymm accumulators at 4 x 16), the
            # reduction inside it, the row tiles inner so a column block of B is read from cache
            jo, ji = sch.split(j, factors=[None, lanes])
            io, ii = sch.split(i, factors=[None, rows])
            sch.reorder(*batch, jo, io, k, ii, ji)
            outer = sch.fuse(*batch, jo, io)
        else:
            # a GEMV (or rows no tile divides): a wide column block, B streamed row by row
            cols = next(c for c in COLUMN_BLOCKS if n % c == 0 and c % lanes == 0)
            jo, jm, ji = sch.split(j, factors=[None, cols // lanes, lanes])
            if i is None:
                sch.reorder(jo, k, jm, ji)
                outer = jo
            else:
                io, ii = sch.split(i, factors=[None, rows])
                sch.reorder(*batch, io, jo, k, ii, jm, ji)
                outer = sch.fuse(*batch, io, jo)
        # loop annotations go on while the update is still one reduction block (after
        # decompose_reduction it is neither complete nor a reduction: vectorize / parallel refuse)
        if math.prod(extents[:-1]) >= PARALLEL_MIN:
            sch.parallel(outer)
        sch.vectorize(ji)
        if rows > 1:
            sch.unroll(ii)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, outer)
        for epilogue in infos[1:]:
            try:
                sch.reverse_compute_inline(epilogue.block_rv)
            except Exception:  # noqa: BLE001 - an epilogue that is not elementwise in the output stays apart
                pass
        init = sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.split(sch.get_loops(acc)[-1], factors=[None, lanes])[1])
        return sch

    return ScheduleRule.from_callable("qgraph_float_matmul")(apply)
