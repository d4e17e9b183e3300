"""The GPU kernel package (CUDA and OpenCL share it): qgraph's GPU schedules
(``schedules.py``), the GPU build (``build.py``: device source + launch plan) and the launchers
that run a plan without TVM's runtime (``launch.py``: pyopencl, CuPy).

As a ``context.KernelPackage`` it covers ``qconv`` and ``qmatmul`` (``select``: 8-bit convs and
matmuls as 4-way int8 dot products, ``__dp4a`` on CUDA); every other L3 op takes the default Relax lowering, and
the GPU schedules act after legalization (``schedules.rules``, tried before dlight's generic
GPU rules).
"""

from qgraph.tvm.gpu.select import qconv, qmatmul

__all__ = ["qconv", "qmatmul"]
