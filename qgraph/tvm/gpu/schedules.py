"""qgraph's own GPU schedule rules (dlight ``ScheduleRule``s), tried before dlight's generic
GPU rules in ``build.schedule_passes``.

``IntegerReduction`` takes every kernel whose reduction accumulates in an integer type (the
integer conv, matmul and pool sums of L3) and schedules it as one thread per output element:
the producers (zero-point subtraction, padding) inlined into the reduction's reads, the
requantization epilogue inlined after it (fused: one kernel, no int32 tensor in memory), the
accumulator in a register. Why not dlight's rules for these: ``dl.gpu.GeneralReduction`` gave
a grouped 1x1 conv (op_conv's third conv, 2 groups of 4 channels) a cross-thread reduction
whose local-buffer indices are wrong: up to 199 LSB off on OpenCL/PoCL (TVM 0.27); and the
integer reductions of these models are short (at most a few thousand terms), where one thread
per output is the schedule without shared state to get wrong.

The ``qdp4a_conv`` block (``select.py``: an 8-bit conv as 4-way int8 dot products) is tiled
instead (``_tile_dp4a``): thread blocks of ``DP4A_CHANNELS`` output channels (threadIdx.y) x up
to ``DP4A_PIXELS`` output pixels (threadIdx.x), one output per thread; per kernel tap the
block's weight tile (its channels x every input channel) is copied to shared memory by all its
threads together, and each product reads 4 adjacent channels (one 32-bit word) of activation
and weight: ``__dp4a`` on CUDA (``_dp4a_intrin``), 4 multiply-adds on OpenCL. No timing backs
these sizes yet (no GPU was lent while writing them): ``bench/gpu_device.sh`` measures them.
"""

from __future__ import annotations

from qgraph.tvm.gpu.select import DP4A_BLOCK, DP4A_MATMUL

#: The OpenCL function of a 4-way int8 product (``build._OPENCL_PRELUDE`` defines it).
OPENCL_DP4A = "qgraph_dp4a"

#: Threads per block of the integer reductions (a multiple of every GPU's warp / wavefront).
THREADS = 64


def _threads(extent: int) -> int:
    """Threads per block for ``extent`` outputs: the largest divisor of ``extent`` up to
    ``THREADS`` when it is at least 16 (exact tiles, no bound checks), else ``THREADS``."""
    for t in range(min(THREADS, extent), 15, -1):
        if extent % t == 0:
            return t
    return THREADS if extent > THREADS else max(1, extent)


def _name(block) -> str:
    return str(getattr(block, "name_hint", None) or getattr(block, "name", ""))


def _dp4a_intrin(b_scope: str = "global", fn: str = "__dp4a") -> str:
    """The name of a ``__dp4a`` tensor intrinsic on a global int8 activation, an int8 weight
    in ``b_scope`` and a local int32 accumulator, registered on first use (TVM's own, in
    ``tvm.s_tir.tensor_intrin``, wants both operands in shared memory, and importing that
    module takes ~48 s here)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name = f"qgraph_dp4a_s8s8s32_{b_scope}_{fn.strip('_')}"
    try:
        TensorIntrin.get(name)
        return name
    except Exception:  # noqa: BLE001 (not registered yet)
        pass

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "int8", offset_factor=1, align=4),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope=b_scope),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for i in range(0, 4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[0] = C[0] + T.cast(A[vi], "int32") * T.cast(B[vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "int8", offset_factor=1, align=4),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4, scope=b_scope),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern(fn, A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    TensorIntrin.register(name, desc, impl)
    return name


#: Output channels per block of the dp4a conv (threadIdx.y), and the most output pixels
#: (threadIdx.x): a block shares its channels' weight tile in shared memory.
DP4A_CHANNELS = (8, 4, 2)
DP4A_PIXELS = 32


def _buffer(region):
    return getattr(region, "buffer", None) or region.source


def _shape(buf) -> tuple[int, ...]:
    shape = getattr(buf, "shape", None)
    if shape is None:
        shape = buf.ty.shape
    return tuple(int(d) for d in shape)


def _tile_dp4a(sch, block, s_loops, r_loops, dp4a: str | None):
    """The ``qdp4a_conv`` block as thread blocks of (channels x pixels) outputs, one per thread,
    the block's weight tile (its channels, one tap, every input channel) staged in shared
    memory and read 4 bytes at a time by every thread; None where the sizes do not tile
    exactly (the generic schedule then runs). Returns the epilogue anchor (loop, accumulator)."""
    *batch, m, oh, ow = s_loops  # a unit batch loop is already gone
    ry, rx, rc = r_loops
    big_m = int(sch.get(m).extent)
    pixels = 1
    for loop in (*batch, oh, ow):
        pixels *= int(sch.get(loop).extent)
    tm = next((t for t in DP4A_CHANNELS if big_m % t == 0), None)
    tp = next((t for t in range(min(DP4A_PIXELS, pixels), 7, -1) if pixels % t == 0), None)
    if tm is None or tp is None:
        return None
    kh, kw, c = (int(sch.get(loop).extent) for loop in (ry, rx, rc))
    rco, rci = sch.split(rc, factors=[None, 4])
    if dp4a:
        inner = sch.blockize(rci)
    else:
        sch.unroll(rci)
        inner = block
    wbuf = [i for i, r in enumerate(sch.get(inner).reads) if _shape(_buffer(r)) == (big_m, kh, kw, c)]
    sch.reorder(m, *batch, oh, ow)
    p = sch.fuse(*batch, oh, ow)
    mo, mi = sch.split(m, factors=[None, tm])
    po, pi = sch.split(p, factors=[None, tp])
    sch.reorder(mo, po, mi, pi)
    sch.bind(sch.fuse(mo, po), "blockIdx.x")
    sch.bind(mi, "threadIdx.y")
    sch.bind(pi, "threadIdx.x")
    if wbuf:
        shared = sch.cache_read(inner, wbuf[0], "shared")
        sch.compute_at(shared, rx)
        loops = sch.get_loops(shared)
        at = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(rx)))
        copy = sch.fuse(*loops[at + 1:])  # the tile's copy loops, shared by the block's threads
        _, cy, cx = sch.split(copy, factors=[None, tm, tp])
        sch.bind(cy, "threadIdx.y")
        sch.bind(cx, "threadIdx.x")
    acc = sch.cache_write(inner, 0, "local")
    sch.reverse_compute_at(acc, pi)
    sch.decompose_reduction(inner, ry)
    if dp4a:
        sch.tensorize(inner, _dp4a_intrin("shared" if wbuf else "global", dp4a))
    return pi, acc


def _integer_reduction_rule():
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

    class IntegerReduction(GPUScheduleRule):
        """One thread per output element of an integer reduction, epilogue fused, accumulator
        in a register."""

        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            # the 4-way int8 product: CUDA's __dp4a; on OpenCL qgraph_dp4a, defined in the source's
            # prelude (build._OPENCL_PRELUDE) as dot() where cl_khr_integer_dot_product is, else
            # as 4 multiply-adds
            dp4a = {"cuda": "__dp4a", "opencl": OPENCL_DP4A}.get(str(target.kind.name))
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            reductions = [b for b in infos if b.is_reduction()]
            if not reductions:
                return None
            for b in reductions:
                region = sch.get(b.block_rv).writes[0]
                buf = getattr(region, "buffer", None) or region.source
                dtype = str(getattr(buf, "dtype", None) or buf.ty.dtype)
                if not (dtype.startswith("int") or dtype.startswith("uint")):
                    return None
            infos = try_inline(sch, infos)
            anchor = None  # (loop, extent) of the last exactly-tiled reduction: epilogues join it
            for info in infos:
                block = info.block_rv
                loops = sch.get_loops(block)
                if any(sch.get(loop).thread_binding is not None for loop in loops):
                    continue
                kinds = info.dom_kind()
                s_loops = [l for l, k in zip(loops, kinds) if k == "S"]
                r_loops = [l for l, k in zip(loops, kinds) if k == "R"]
                o_loops = [l for l, k in zip(loops, kinds) if k not in ("S", "R")]
                if not r_loops and anchor is not None:
                    try:  # the requantization epilogue, per thread, after its accumulator
                        sch.reverse_compute_at(block, anchor[0])
                        sch.set_scope(anchor[1], 0, "local")  # the int32 tensor: registers only
                        continue
                    except Exception:  # noqa: BLE001 (a block that does not follow it: bound on its own)
                        pass
                if _name(sch.get(block)) == DP4A_BLOCK and len(s_loops) in (3, 4) and len(r_loops) == 3 \
                        and not o_loops:
                    tiled = _tile_dp4a(sch, block, s_loops, r_loops, dp4a)
                    if tiled is not None:
                        anchor = tiled
                        continue
                if not s_loops:
                    s_loops = [sch.add_unit_loop(block)]
                sch.reorder(*s_loops, *r_loops, *o_loops)
                extent = 1
                for loop in s_loops:
                    extent *= int(sch.get(loop).extent)
                threads = _threads(extent)
                exact = extent % threads == 0
                acc, tensorize = None, None
                if _name(sch.get(block)) in (DP4A_BLOCK, DP4A_MATMUL) and r_loops:
                    # the 4 adjacent int8 channels of one product: the dp4a operand pair
                    rco, rci = sch.split(r_loops[-1], factors=[None, 4])
                    r_loops = r_loops[:-1] + [rco]
                    if dp4a and exact:
                        # blockize while the spatial bindings are plain loops (it cannot divide
                        # them once fused and split); tensorized after decompose_reduction, when
                        # the update reads its accumulator as the intrinsic does
                        block = sch.blockize(rci)
                        tensorize = block
                    else:  # a partial tile (no register accumulator to tensorize into): 4 multiply-adds
                        sch.unroll(rci)
                bx, tx = sch.split(sch.fuse(*s_loops), factors=[None, threads])
                sch.bind(bx, "blockIdx.x")
                sch.bind(tx, "threadIdx.x")
                if r_loops and exact:
                    # accumulator in a register; only for exact tiles: reverse_compute_at drops
                    # the bound check of a partial tile (the write-back ran past the buffer)
                    acc = sch.cache_write(block, 0, "local")
                    sch.reverse_compute_at(acc, tx)
                    sch.decompose_reduction(block, r_loops[0])
                    if tensorize is not None:
                        sch.tensorize(tensorize, _dp4a_intrin(fn=dp4a))
                    anchor = (tx, acc)
                elif r_loops:
                    sch.decompose_reduction(block, r_loops[0])
                    anchor = None
            return sch

    return IntegerReduction()


def rules(tvm_target) -> list:
    """The qgraph rules for ``tvm_target`` (tried in order, before dlight's)."""
    return [_integer_reduction_rule()]
