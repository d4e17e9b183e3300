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
"""

from __future__ import annotations

from qgraph.tvm.gpu.select import DP4A_BLOCK

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


_DP4A = "qgraph_dp4a_s8s8s32_global"


def _dp4a_intrin() -> str:
    """The name of a ``__dp4a`` tensor intrinsic on global int8 operands and a local int32
    accumulator, registered on first use (TVM's own, in ``tvm.s_tir.tensor_intrin``, wants
    shared-memory operands, and importing that module takes ~48 s here)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(_DP4A)
        return _DP4A
    except Exception:  # noqa: BLE001 (not registered yet)
        pass

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "int8", offset_factor=1, align=4),
             B: T.Buffer((4,), "int8", offset_factor=1, align=4),
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
             B: T.Buffer((4,), "int8", offset_factor=1, align=4),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    TensorIntrin.register(_DP4A, desc, impl)
    return _DP4A


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
            cuda = str(target.kind.name) == "cuda"
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
                if not s_loops:
                    s_loops = [sch.add_unit_loop(block)]
                sch.reorder(*s_loops, *r_loops, *o_loops)
                extent = 1
                for loop in s_loops:
                    extent *= int(sch.get(loop).extent)
                threads = _threads(extent)
                exact = extent % threads == 0
                acc, tensorize = None, None
                if _name(sch.get(block)) == DP4A_BLOCK and r_loops:
                    # the 4 adjacent int8 channels of one product: the dp4a operand pair
                    rco, rci = sch.split(r_loops[-1], factors=[None, 4])
                    r_loops = r_loops[:-1] + [rco]
                    if cuda and exact:
                        # blockize while the spatial bindings are plain loops (it cannot divide
                        # them once fused and split); tensorized after decompose_reduction, when
                        # the update reads its accumulator as the intrinsic does
                        block = sch.blockize(rci)
                        tensorize = block
                    else:  # OpenCL (PoCL has no integer dot product extension): 4 multiply-adds
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
                        sch.tensorize(tensorize, _dp4a_intrin())
                    anchor = (tx, acc)
                elif r_loops:
                    sch.decompose_reduction(block, r_loops[0])
                    anchor = None
            return sch

    return IntegerReduction()


def rules(tvm_target) -> list:
    """The qgraph rules for ``tvm_target`` (tried in order, before dlight's)."""
    return [_integer_reduction_rule()]
