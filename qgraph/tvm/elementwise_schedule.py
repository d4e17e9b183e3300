"""Schedules for the kernels TVM's CPU pipeline leaves unscheduled: fused elementwise chains.

After ``FuseTIR`` an elementwise chain (a QAdd's multiplies, shifts and clamps, a
Requantize, a pad, a Quantize's divide and round) is one PrimFunc of nested scalar loops. TVM 0.27's CPU pipeline schedules
none of them, and LLVM did not vectorize the result (resnet50's residual QAdds ran at 3.5 ns
per element, 1 thread; 0.2-0.4 ns scheduled). ``elementwise_rule`` inlines the chain into one
block and then, by the shape of its loops:

- the innermost loop holds whole vectors (its extent divisible by 16, 8 or 4 lanes):
  ``parallel(outer loops fused) x serial(row / lanes) x vectorized(lanes)``; a vector never
  crosses a row, so every access is a plain vector load (fusing 56 x 56 rows into one loop
  instead left div / mod index arithmetic per lane: 2.2 ns per element);
- otherwise, for a pure elementwise block (every access at the loop indices): all loops
  fused, split into vectors, the outer part parallel;
- otherwise (a pad, a broadcast): the outer loops parallel, the row left to LLVM.

Loops under ``PARALLEL_MIN`` elements stay serial. Functions marked ``tir.is_scheduled``
(qgraph's hand-written kernels), anything that is not one injective block after inlining
(reductions: Softmax, LayerNorm, pools) and every float kernel that calls more than IEEE's
correctly rounded operations (``EXACT_FLOAT_CALLS``: a Quantize's divide, round and clip is
scheduled; a Sigmoid is not) keep TVM's default lowering: the schedule changes loop structure
only, so integer results and correctly rounded float results are the same bits, and float
fallback kernels are not given a chance to change theirs (a vectorized transcendental need not
round like the scalar one; the reference's float ops are numpy's).
"""

from __future__ import annotations

import math

#: Vector lanes of the fused loop (16 bytes of int8 output; 2 AVX2 vectors of int32 work).
LANES = 16
#: Elements below which the loop stays serial (a parallel launch costs a few microseconds).
PARALLEL_MIN = 1 << 15


def loop_extents(sch, loops) -> list[int] | None:
    """The constant extents of ``loops``, or None where one is symbolic."""
    from tvm import tirx

    out = []
    for lp in loops:
        ext = sch.get(lp).extent
        if not isinstance(ext, tirx.IntImm):
            return None
        out.append(int(ext))
    return out


#: Calls a float kernel may make and still be scheduled: correctly rounded in IEEE 754 (or
#: exact), so a vector lane computes the bits the scalar loop did. Arithmetic, comparisons,
#: min / max and casts are not calls. Anything else (exp, tanh, erf, pow ...) keeps TVM's lowering.
#: TVM 0.27 names the select ``prim.if_then_else`` (a Concat's or a pad's): without that name here,
#: every float kernel with one was refused, YOLOX's Focus input (4 strided slices, Quantize,
#: Concat) among them: 679 us unscheduled, 150-167 us scheduled (kernel alone, 1 thread).
EXACT_FLOAT_CALLS = frozenset(f"{ns}.{op}" for ns in ("tir", "tirx", "prim") for op in (
    "round", "nearbyint", "floor", "ceil", "trunc", "fabs", "sqrt", "if_then_else", "isnan", "isinf", "isfinite"))


def inexact_float(func) -> bool:
    """``func`` touches a float tensor and calls something outside ``EXACT_FLOAT_CALLS``."""
    import tvm_ffi

    floats, calls = [], set()

    def visit(node):
        buf = getattr(node, "buffer", None)  # a BufferLoad / BufferStore (tirx.BufferLoad is a function)
        if buf is not None and hasattr(node, "indices") and "float" in str(buf.dtype):
            floats.append(node)
        op = getattr(node, "op", None)
        name = getattr(op, "name", None)
        if name is not None and hasattr(node, "args"):
            calls.add(str(name))

    tvm_ffi.structural_walk(func.body, visit)
    return bool(floats) and not calls <= EXACT_FLOAT_CALLS



def is_scheduled(func) -> bool:
    """``func`` is marked scheduled (``tir.is_scheduled``: qgraph's hand-written kernels)."""
    return any(k in func.attrs and int(func.attrs[k]) for k in ("tir.is_scheduled", "tirx.is_scheduled"))


def inlined_blocks(func):
    """``(schedule, block infos)`` of ``func`` normalized and with what inlines inlined (dlight's
    ``normalize_prim_func`` then ``try_inline``: the start of every rule here, directly or
    through ``unscheduled_blocks``, and of the Hexagon package's), or None where it does not
    normalize."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return None if infos is None else (sch, try_inline(sch, infos))


def unscheduled_blocks(func):
    """``inlined_blocks(func)`` for a PrimFunc that no kernel package scheduled, else None:
    the common start of the integer-sum and float-matmul rules."""
    from tvm import tirx

    if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
        return None
    return inlined_blocks(func)


def elementwise_rule(lanes: int = LANES, parallel_min: int | None = PARALLEL_MIN):
    """The dlight rule (a ``ScheduleRule``) described in the module doc.

    Args:
        lanes: the widest vector (elements) of the fused loop; narrower ones (``lanes / 2``,
            ``lanes / 4``) where the loop does not hold it.
        parallel_min: elements from which the outer loop is parallel; None: never (a target
            whose program has no thread pool, such as Hexagon's freestanding one).
    """
    widths = (lanes, lanes // 2, lanes // 4)
    from tvm import tirx
    from tvm.s_tir.dlight import ScheduleRule

    def apply(func, target, _tunable):
        # float ops beyond IEEE's correctly rounded ones keep TVM's lowering
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func) or inexact_float(func):
            return None
        found = inlined_blocks(func)
        if found is None:
            return None
        sch, infos = found
        if len(infos) != 1 or not infos[0].is_injective():
            return None
        block = infos[0].block_rv
        loops = sch.get_loops(block)
        extents = loop_extents(sch, loops) if loops else None
        if not extents:
            return None
        n = math.prod(extents)
        # vectorize the innermost loop alone where it holds whole vectors (a vector of lanes
        # then never crosses a row: plain loads), else the fused loops
        lanes = next((v for v in widths if v > 1 and extents[-1] % v == 0), None)
        if lanes is not None and len(loops) > 1:
            outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            row, inner = sch.split(loops[-1], factors=[None, lanes])
            sch.vectorize(inner)
        elif not infos[0].is_elementwise(sch):
            # a pad, a broadcast: rows of another length; parallel rows, LLVM's own vectorizer
            outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        else:
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            lanes = next((v for v in widths if v > 1 and n % v == 0), None)
            outer = fused
            if lanes is not None and n >= lanes:
                outer, inner = sch.split(fused, factors=[None, lanes])
                sch.vectorize(inner)
        if parallel_min is not None and n >= parallel_min:
            sch.parallel(outer)
        return sch

    return ScheduleRule.from_callable("qgraph_elementwise")(apply)


def integer_sum_rule():
    """A dlight rule for integer sums over the trailing axes (QGlobalAveragePool's spatial sum,
    its zero point subtracted on the way): TVM's default is one scalar loop per output. The
    reduction is split into ``LANES`` partial sums (``rfactor``) that a vector accumulates, then
    added; integer addition is exact in any order (the accumulator's type is the lowering's,
    chosen wide enough), so the results are the same bits."""
    from tvm import tirx
    from tvm.s_tir.dlight import ScheduleRule

    def apply(func, target, _tunable):
        found = unscheduled_blocks(func)
        if found is None:
            return None
        sch, infos = found
        if len(infos) != 1 or not infos[0].is_reduction():
            return None
        kinds = [it.kind for it in infos[0].iters]
        block = infos[0].block_rv
        store = sch.get(block).body
        if "R" not in kinds or "S" not in kinds or kinds != sorted(kinds, key=lambda k: k == "R") or \
                not isinstance(store, tirx.BufferStore) or not str(store.buffer.dtype).startswith("int") or \
                type(store.value).__name__ != "Add":
            return None  # trailing reduction axes, an integer sum only
        loops = sch.get_loops(block)
        extents = loop_extents(sch, loops)
        if extents is None:
            return None
        n_red = kinds.count("R")
        red = sch.fuse(*loops[-n_red:]) if n_red > 1 else loops[-1]
        size = math.prod(extents[-n_red:])
        if size < 4 * LANES or size % LANES:
            return None
        outer = sch.fuse(*loops[:-n_red]) if len(loops) - n_red > 1 else loops[0]
        ro, ri = sch.split(red, factors=[None, LANES])
        rf = sch.rfactor(ri, 0)  # rf[..., lane] partial sums, then the sum of the lanes
        sch.vectorize(sch.get_loops(rf)[-1])  # (outer, ro, lane): the lanes innermost
        if math.prod(extents[:-n_red]) * size >= PARALLEL_MIN and math.prod(extents[:-n_red]) > 1:
            sch.parallel(outer)
        return sch

    return ScheduleRule.from_callable("qgraph_integer_sum")(apply)

