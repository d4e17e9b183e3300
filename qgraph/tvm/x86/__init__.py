"""The x86 AVX2 kernel package: hand-scheduled integer kernels (TIR) for an x86-64 target with AVX2.

``qgraph.tvm.kernel_packages`` gives this package to the lowering of such a target
(``LowerContext.kernels``); the target-independent lowerings of ``qgraph.tvm.relax_integer``
call its hooks (``qgraph.tvm.context.KernelPackage``), each returning the node's output or None
(the default Relax lowering then runs):

- ``select``: which kernel covers a node, and the Relax calls to it (the hooks below);
- ``gemm``: the GEMM and lookup kernels, with what every kernel here shares (the requantization
  epilogue ``Requant``, ``ConvGeometry``, the task loop);
- ``conv``: the direct (no im2col) and depthwise conv kernels.

The package imports the target-independent modules it needs (``context``, ``relax_integer``,
``elementwise_schedule``); none of those imports it.
"""

from qgraph.tvm.x86.select import lookup, qconv, qmatmul

__all__ = ["lookup", "qconv", "qmatmul"]
