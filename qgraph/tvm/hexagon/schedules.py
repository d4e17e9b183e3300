"""HVX schedules for the kernels of a Hexagon program (``schedule_pass``).

Fused elementwise chains (requantizations, QAdd / QMul, pads, Quantize) get
``qgraph.tvm.elementwise_schedule``'s rule with HVX-wide vectors and no thread pool: the chain
inlined into one loop nest, its innermost loop split into ``LANES``-element vectors. Left
unscheduled, TVM's lowering keeps one loop nest and one full-size scratch tensor per stage,
and LLVM's Hexagon backend then spent 17-33 s per QMul kernel of PP-OCRv4 cls (14 vectorized
loop nests each); inlined, a few seconds.
"""

from __future__ import annotations

#: Elements per vector of a fused elementwise loop: 128 int8 outputs fill one 128-byte HVX vector.
LANES = 128


def schedule_pass(target, lanes: int = LANES):
    """The module pass that schedules the fused PrimFuncs for HVX (every one a rule of this
    module covers; the rest keep TVM's default lowering)."""
    from tvm.s_tir import dlight

    from qgraph.tvm.elementwise_schedule import elementwise_rule

    return dlight.ApplyDefaultSchedule(elementwise_rule(lanes=lanes, parallel_min=None))
