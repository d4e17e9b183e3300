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


def kernel_package(target, kernels: str = "auto") -> KernelPackage | None:
    """The kernel package for ``target`` (a ``qgraph.targets.Target`` or name; None: this host):
    ``qgraph.tvm.x86`` for an x86-64 target with AVX2 and ``kernels="auto"``; None (the
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
    if _is_hexagon(t):
        from qgraph.tvm import hexagon

        return hexagon
    if str(t.tvm_dict.get("mtriple", "")).startswith("x86_64") and "avx2" in t.features:
        from qgraph.tvm import x86

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
