"""Qualcomm Hexagon with HVX (128-byte vectors): what the target executes, and how qgraph runs it.

    from qgraph import targets
    t = targets.get("hexagon")        # v68, HVX 128 B; "hexagon-v73" for v73
    t.tvm_dict                        # {"kind": "llvm", "mtriple": "hexagon-unknown-linux-musl", ...}
    HEXAGON_SCHEME.executes(op)       # which L3 / float ops its programs run

TVM's LLVM Hexagon backend compiles for it (an ``llvm`` target with the Hexagon triple; TVM's
``kind=hexagon`` emits x86-64 code with the default host, so it is not used). The programs are
freestanding ELFs (``qgraph.tvm.hexagon``) that this machine runs under Debian's user-mode
``qemu-hexagon``: a Hexagon target is ``runnable`` where clang, ld.lld and qemu-hexagon are
installed. qemu gives results, not timing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

#: The CPUs ``target`` knows (qgraph target name -> LLVM mcpu, HVX feature).
VERSIONS = {"v68": ("hexagonv68", "+hvxv68"), "v73": ("hexagonv73", "+hvxv73")}


@dataclass(frozen=True)
class QuantScheme:
    """What a target executes, as quantization sees it.

    Attributes:
        activation_dtypes: integer storage types of activations its kernels take.
        weight_dtypes: storage types of conv / matmul weights.
        accumulator: the accumulator type of products.
        weight_symmetric: whether weights must have zero point 0 (False: any).
        activation_symmetric: whether activations must have zero point 0 (False: any).
        weight_axes: ``per-tensor`` and / or ``per-channel`` (the output-channel axis).
        runs_float: whether float ops that stay float (fallbacks) run on the target too.
    """

    activation_dtypes: frozenset[str]
    weight_dtypes: frozenset[str]
    accumulator: str
    weight_symmetric: bool
    activation_symmetric: bool
    weight_axes: frozenset[str]
    runs_float: bool

    def describe(self) -> str:
        """One line for reports."""
        return (f"activations {'/'.join(sorted(self.activation_dtypes))} "
                f"({'symmetric' if self.activation_symmetric else 'any zero point'}), weights "
                f"{'/'.join(sorted(self.weight_dtypes))} ({'symmetric' if self.weight_symmetric else 'any zero point'}, "
                f"{' or '.join(sorted(self.weight_axes))}), {self.accumulator} accumulation"
                f"{', float fallbacks on the target' if self.runs_float else ''}")


#: Hexagon HVX through qgraph's TVM kernels: every L3 op (integer kernels exact in int32,
#: requantization fused), float fallbacks as TVM float kernels on the scalar core. HVX's
#: vrmpy (u8 x s8 / u8 x u8 4-way products into int32) is exact, so no dtype is ruled out.
HEXAGON_SCHEME = QuantScheme(
    activation_dtypes=frozenset({"int8", "uint8", "int16", "uint16"}),
    weight_dtypes=frozenset({"int8", "uint8", "int16"}),
    accumulator="int32",
    weight_symmetric=False,
    activation_symmetric=False,
    weight_axes=frozenset({"per-tensor", "per-channel"}),
    runs_float=True,
)


def hexagon(version: str = "v68"):
    """The Hexagon target ``version`` (``v68`` / ``v73``), HVX 128-byte."""
    from qgraph.targets import Target

    mcpu, hvx = VERSIONS[version]
    name = "hexagon" if version == "v68" else f"hexagon-{version}"
    return Target(name, {"kind": "llvm", "mtriple": "hexagon-unknown-linux-musl", "mcpu": mcpu,
                         "mattr": [hvx, "+hvx-length128b"]}, _runnable(),
                  frozenset({"hvx", "hvx128b", hvx.lstrip("+")}))


#: The host tools a Hexagon program needs (candidate names, first found wins): clang compiles
#: the driver, ld.lld links, qemu-hexagon runs (Debian: clang, lld, qemu-user-static).
TOOLS = {
    "clang": ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"),
    "ld.lld": ("ld.lld", "ld.lld-19", "ld.lld-18", "ld.lld-17", "ld.lld-16", "ld.lld-15", "ld.lld-14"),
    "qemu": ("qemu-hexagon-static", "qemu-hexagon"),
}


def _runnable() -> bool:
    return all(any(shutil.which(n) for n in names) for names in TOOLS.values())


def is_hexagon(target) -> bool:
    """Whether ``target`` (a ``Target``) is a Hexagon one."""
    return str(target.tvm_dict.get("mtriple", "")).startswith("hexagon")
