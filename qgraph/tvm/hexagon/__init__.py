"""The Hexagon kernel package: qgraph's L3 programs as freestanding Hexagon (HVX) programs.

``qgraph.tvm.kernel_packages`` gives this package to a Hexagon target (``qgraph.targets``:
``hexagon``, ``hexagon-v73``). Unlike the x86 one, it builds the whole program, since there is
no TVM runtime for Hexagon here:

- ``plan``: the fused Relax ``main`` as ordered TIR kernel calls on static buffers;
- ``driver``: the generated freestanding C driver and its tiny runtime (syscalls, TVM-FFI
  argument structs, workspace);
- ``toolchain``: clang, ld.lld and qemu-hexagon;
- ``schedules``: HVX schedules of the fused kernels;
- ``program``: ``build`` / ``load`` / ``HexagonCompiled`` (run under qemu-hexagon).

The package imports the target-independent modules it needs; none of those imports it.
"""

from qgraph.tvm.hexagon.program import HexagonCompiled, HexagonRunError, build, load

__all__ = ["HexagonCompiled", "HexagonRunError", "build", "load"]
