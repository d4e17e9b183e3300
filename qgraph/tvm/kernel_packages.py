"""Which kernel package a target's lowering uses: the one place that maps a target to the
package of hand-written kernels for it (``qgraph.tvm.context.KernelPackage``).

The target-independent lowering (``qgraph.tvm.lower``, ``relax_*``) reaches a kernel package
only through ``LowerContext.kernels``, set from ``kernel_package`` here; the package is
imported when a target chooses it, so no target-independent module imports it
(``tests/test_imports.py`` checks that). A new target's package (CUDA, OpenCL, Hexagon) is a
subpackage of ``qgraph.tvm`` with the hooks of ``KernelPackage`` and one more branch below.
"""

from __future__ import annotations

from qgraph.tvm.context import KernelPackage, LoweringError

#: ``kernels=`` choices of ``lower`` / ``build``: ``"auto"``, the target's kernel package where
#: it has one; ``"default"``, the default Relax lowering everywhere.
KERNEL_CHOICES = ("auto", "default")

#: TVM target kinds built by ``qgraph.tvm.gpu`` (device source + launch plan).
GPU_KINDS = ("opencl", "cuda")


def device_builder(target):
    """The build function of a target whose code runs outside TVM's CPU virtual machine
    (``qgraph.tvm.gpu.build.build_gpu`` for OpenCL and CUDA), or None (``build.build``'s own)."""
    from qgraph.targets import resolve

    if resolve(target).tvm_dict.get("kind") in GPU_KINDS:
        from qgraph.tvm.gpu.build import build_gpu

        return build_gpu
    return None


def kernel_package(target, kernels: str = "auto") -> KernelPackage | None:
    """The kernel package for ``target`` (a ``qgraph.targets.Target`` or name; None: this host):
    ``qgraph.tvm.x86`` for an x86-64 target with AVX2 and ``kernels="auto"`` (its ``VNNI_512``,
    ``VNNI_512_NO_VBMI`` or ``VNNI`` package where the target has ``VPDPBUSD``); None (the
    default lowering) otherwise.

    Raises:
        LoweringError: ``kernels`` is not one of ``KERNEL_CHOICES``.
    """
    from qgraph.targets import resolve

    if kernels not in KERNEL_CHOICES:
        raise LoweringError(f"unknown kernels='{kernels}'; choose one of {', '.join(KERNEL_CHOICES)}")
    if kernels == "default":
        return None
    t = resolve("cpu" if target is None else target)
    if t.tvm_dict.get("kind") in GPU_KINDS:
        from qgraph.tvm import gpu

        return gpu
    if _is_hexagon(t):
        from qgraph.tvm import hexagon

        return hexagon
    if str(t.tvm_dict.get("mtriple", "")).startswith("x86_64") and "avx2" in t.features:
        from qgraph.tvm import x86

        # VPDPBUSD: AVX-512 VNNI with VL (EVEX: zmm, 32 registers; VBMI's byte permutes where the
        # CPU has them), or AVX-VNNI (VEX: ymm, 16 registers)
        if {"avx512vnni", "avx512vl"} <= t.features:
            return x86.VNNI_512 if "avx512vbmi" in t.features else x86.VNNI_512_NO_VBMI
        if t.features & {"avx_vnni", "avxvnni"}:
            return x86.VNNI
        return x86
    return None


def _is_hexagon(target) -> bool:
    return str(target.tvm_dict.get("mtriple", "")).startswith("hexagon")


def program_builder(target):
    """The kernel package that builds whole programs for ``target`` (a ``Target``), or None
    (TVM's Relax VM build): ``qgraph.tvm.hexagon`` for a Hexagon target, which has no TVM
    runtime here (``build(mod, target, inputs, outputs, files)`` from the lowered module,
    ``load(outdir, meta, inputs, outputs, target, files)``)."""
    if _is_hexagon(target):
        from qgraph.tvm import hexagon

        return hexagon
    return None
