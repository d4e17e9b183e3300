"""The x86 AVX2 kernel package: hand-scheduled integer kernels (TIR) for an x86-64 target with AVX2,
and two float kernels (the recurrent ops' GEMV, the LSTM time loop).

``qgraph.tvm.kernel_packages`` gives this package to the lowering of such a target
(``LowerContext.kernels``); the target-independent lowerings of ``qgraph.tvm.relax_integer``
call its hooks (``qgraph.tvm.context.KernelPackage``), each returning the node's output or None
(the default Relax lowering then runs):

- ``select``: which kernel covers a node, and the Relax calls to it (the hooks below);
- ``gemm``: the GEMM and lookup kernels, the float GEMV of the recurrent ops (``float_gemv``),
  with what every kernel here shares (the requantization epilogue ``Requant``, ``ConvGeometry``,
  the task loop);
- ``conv``: the direct (no im2col) and depthwise conv kernels;
- ``winograd``: exact integer Winograd F(2x2, 3x3) for 3x3 stride-1 convs;
- ``recurrent``: an LSTM's whole time loop as one kernel, the cell update in the GEMV's
  epilogue (``float_lstm``).

``VNNI`` is the package for a target with ``VPDPBUSD`` (``VnniPackage``).

The package imports the target-independent modules it needs (``context``, ``relax_integer``,
``elementwise_schedule``); none of those imports it.
"""

from qgraph.tvm.x86 import select as _select
from qgraph.tvm.x86.select import float_gemv, float_lstm, lookup, qconv, qmatmul


class VnniPackage:
    """The package for x86 targets with ``VPDPBUSD`` (AVX-512 VNNI with VL, or AVX-VNNI): the
    same kernels, and every 8-bit direct conv on the u8 x s8 form through ``VPDPBUSD``, which
    sums 4 products in int32 (exact for any int8 weights, where AVX2's ``VPMADDUBSW`` can
    saturate in int16). ``form``: ``"vpdpbusd"``, or ``"emulate"`` (the same layout with the
    products written out: what the tests run on a CPU without VNNI)."""

    def __init__(self, form: str = "vpdpbusd"):
        self.form = form

    def qconv(self, ctx):
        return _select.qconv(ctx, vnni=self.form)

    @staticmethod
    def qmatmul(ctx):
        return qmatmul(ctx)

    @staticmethod
    def lookup(ctx, table, storage):
        return lookup(ctx, table, storage)

    @staticmethod
    def float_gemv(ctx, x, w):
        return float_gemv(ctx, x, w)

    @staticmethod
    def float_lstm(ctx, *args):
        return float_lstm(ctx, *args)


#: ``kernel_packages.kernel_package``'s choice for a target with VNNI.
VNNI = VnniPackage()

__all__ = ["VNNI", "VnniPackage", "float_gemv", "float_lstm", "lookup", "qconv", "qmatmul"]
