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

``VNNI`` (AVX-VNNI), ``VNNI_512`` and ``VNNI_512_NO_VBMI`` (AVX-512 VNNI) are the packages for
a target with ``VPDPBUSD`` (``VnniPackage``).

The package imports the target-independent modules it needs (``context``, ``relax_integer``,
``elementwise_schedule``); none of those imports it.
"""

from qgraph.tvm.x86 import select as _select
from qgraph.tvm.x86.select import float_gemv, float_lstm, lookup, qconv, qmatmul


class VnniPackage:
    """The package for x86 targets with ``VPDPBUSD`` (AVX-512 VNNI with VL, or AVX-VNNI): the
    same kernels, and every 8-bit direct conv and matmul (int8 weights) on the u8 x s8 form
    through ``VPDPBUSD``, which sums 4 products in int32 (exact for any int8 weights, where
    AVX2's ``VPMADDUBSW`` can saturate in int16). ``form``: ``"vpdpbusd"``, or ``"emulate"``
    (the same layout with the products written out: what the tests run on a CPU without
    VNNI). ``bits``: 256 (AVX-VNNI: 16 ymm registers), or 512 (AVX-512 VNNI: ``VPDPBUSD`` on zmm,
    16 int32 lanes, and 32 vector registers for the register tiles). ``vbmi``: byte-table
    lookups on AVX-512 VBMI's ``VPERMI2B`` (``gemm.lookup_vbmi``)."""

    def __init__(self, form: str = "vpdpbusd", bits: int = 256, vbmi: bool = False):
        if bits not in (256, 512) or (vbmi and bits != 512):
            raise ValueError(f"bits={bits}, vbmi={vbmi}: 256, or 512 with or without VBMI")
        self.form = form
        self.bits = bits
        self.vbmi = vbmi

    def qconv(self, ctx):
        return _select.qconv(ctx, vnni=self.form, bits=self.bits)

    def qmatmul(self, ctx):
        return _select.qmatmul(ctx, vnni=self.form, bits=self.bits)

    def lookup(self, ctx, table, storage):
        return lookup(ctx, table, storage, vbmi=self.vbmi)

    def float_gemv(self, ctx, x, w):  # AVX-512 VNNI implies AVX-512F: 512-bit float vectors
        return float_gemv(ctx, x, w, wide=self.bits == 512)

    def float_lstm(self, ctx, *args):
        return float_lstm(ctx, *args, wide=self.bits == 512)


#: ``kernel_packages.kernel_package``'s choice for a target with AVX-VNNI (VEX, 256-bit).
VNNI = VnniPackage()
#: ... for a target with AVX-512 VNNI, VL and VBMI (EVEX: 512-bit, 32 registers; Ice Lake, Sapphire
#: Rapids, Zen 4 and later) ...
VNNI_512 = VnniPackage(bits=512, vbmi=True)
#: ... and with AVX-512 VNNI and VL without VBMI (Cascade Lake, Cooper Lake).
VNNI_512_NO_VBMI = VnniPackage(bits=512)

__all__ = ["VNNI", "VNNI_512", "VNNI_512_NO_VBMI", "VnniPackage", "float_gemv", "float_lstm", "lookup", "qconv",
           "qmatmul"]
