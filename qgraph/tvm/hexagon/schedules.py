"""HVX schedules for the kernels of a Hexagon program (``schedule_pass``).

Fused elementwise chains (requantizations, QAdd / QMul, pads, Quantize) get
``qgraph.tvm.elementwise_schedule``'s rule with HVX-wide vectors and no thread pool: the chain
inlined into one loop nest, its innermost loop split into ``LANES``-element vectors. Left
unscheduled, TVM's lowering keeps one loop nest and one full-size scratch tensor per stage,
and LLVM's Hexagon backend then spent 17-33 s per QMul kernel of PP-OCRv4 cls (14 vectorized
loop nests each); inlined, 1.6 s.

Gathers (a table lookup's ``take``: a load whose index is another load) keep TVM's lowering:
vectorized, TVM 0.27's Hexagon code generator emits ``vshuffb`` on a 4-byte vector, which
LLVM's verifier rejects.
"""

from __future__ import annotations

#: Elements per vector of a fused elementwise loop: 128 int8 outputs fill one 128-byte HVX vector.
LANES = 128


def gathers(func) -> bool:
    """Whether ``func`` loads at an index computed from another load (a gather)."""
    import tvm_ffi

    found = []

    def is_load(node) -> bool:  # a TensorLoad (TVM 0.27: ``source``) or a BufferLoad / Store
        return hasattr(node, "indices") and (hasattr(node, "source") or hasattr(node, "buffer"))

    def inner(node):
        if is_load(node):
            found.append(node)

    def visit(node):
        if is_load(node):
            for index in node.indices:
                tvm_ffi.structural_walk(index, inner)

    tvm_ffi.structural_walk(func.body, visit)
    return bool(found)


def _counted(sch, name: str, counts: dict | None):
    if sch is not None and counts is not None:
        counts[name] = counts.get(name, 0) + 1
    return sch


def hvx_rule(lanes: int = LANES, counts: dict | None = None):
    """``elementwise_rule`` for HVX (``lanes`` wide, serial), gathers left alone; each kernel
    it schedules counts once in ``counts["hvx_elementwise"]``."""
    from tvm.s_tir.dlight import ScheduleRule

    from qgraph.tvm.elementwise_schedule import elementwise_rule

    rule = elementwise_rule(lanes=lanes, parallel_min=None)

    def apply(func, target, tunable):
        if gathers(func):
            return None
        return _counted(rule.apply(func, target, tunable), "hvx_elementwise", counts)

    return ScheduleRule.from_callable("qgraph_hvx_elementwise")(apply)


#: int32 accumulators per vector of a conv / matmul kernel: one 128-byte HVX vector.
ACC_LANES = 32


def reduction_rule(lanes: int = ACC_LANES, counts: dict | None = None):
    """Integer conv / matmul kernels (one reduction block, its pad and requantization fused):
    the innermost output loop split into ``lanes`` int32 accumulators (one HVX vector), the
    reduction loops outside it, the requantization computed per vector tile, both vectorized.
    Integer sums in any order are the same bits; float kernels keep TVM's lowering (another
    summation order would change their bits)."""
    from tvm import tirx
    from tvm.s_tir.dlight import ScheduleRule

    from qgraph.tvm.elementwise_schedule import inexact_float, inlined_blocks

    def apply(func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or gathers(func) or inexact_float(func):
            return None
        found = inlined_blocks(func)
        if found is None:
            return None
        sch, infos = found
        reductions = [b for b in infos if b.is_reduction()]
        if len(reductions) != 1 or len(infos) > 2 or infos[0] is not reductions[0]:
            return None
        red = reductions[0]
        if any("int" not in str(getattr(w, "source", None) is not None and w.source.dtype or w.buffer.dtype)
               for w in sch.get(red.block_rv).writes):
            return None  # a float sum: another order, other bits
        kinds = red.dom_kind()
        loops = sch.get_loops(red.block_rv)
        if len(kinds) != len(loops) or "O" in kinds or kinds.rstrip("R") != kinds.replace("R", ""):
            return None  # spatial loops first, then reductions: the form normalize_prim_func gives
        spatial, reduce = loops[:kinds.count("S")], loops[kinds.count("S"):]
        if not spatial or not reduce:
            return None
        extent = sch.get(spatial[-1]).extent
        if not isinstance(extent, tirx.IntImm):
            return None
        width = next((v for v in (lanes, lanes // 2, lanes // 4) if int(extent) % v == 0), None)
        if width is None or width < 4:
            return None
        outer, inner = sch.split(spatial[-1], factors=[None, width])
        sch.reorder(*spatial[:-1], outer, *reduce, inner)
        if len(infos) == 2:  # the requantization, per tile of accumulators (before the init is split off)
            epilogue = infos[1].block_rv
            sch.reverse_compute_at(epilogue, outer)
            last = sch.get_loops(epilogue)[-1]
            ext = sch.get(last).extent
            if isinstance(ext, tirx.IntImm) and int(ext) == width:
                sch.vectorize(last)
        sch.vectorize(inner)  # the init stays in the block: a condition on the outer reduction loops
        return _counted(sch, "hvx_conv_matmul", counts)

    return ScheduleRule.from_callable("qgraph_hvx_reduction")(apply)


def schedule_pass(target, lanes: int = LANES, counts: dict | None = None):
    """The module pass that schedules the fused PrimFuncs for HVX (every one a rule of this
    module covers; the rest keep TVM's default lowering); ``counts`` (if given) receives the
    kernels each rule scheduled."""
    from tvm.s_tir import dlight

    return dlight.ApplyDefaultSchedule(hvx_rule(lanes, counts), reduction_rule(counts=counts))
