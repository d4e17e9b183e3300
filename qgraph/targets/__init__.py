"""Targets as data: what TVM compiles for, and whether this machine can run it.

    from qgraph import targets
    t = targets.get("cpu")          # llvm for this x86-64 host, its SIMD features detected
    t.tvm_target()                  # tvm.target.Target({"kind": "llvm", "mcpu": ..., ...})
    targets.get("aarch64").runnable # False: cross-compile only
    targets.get("qnn").quant        # the Qualcomm HTP's quantization rules (qgraph.targets.qnn)

TVM 0.27 rejects target strings with options (``"llvm -mcpu=x"``); a target is a dict
(``Target.tvm_dict``) turned into ``tvm.target.Target`` only when a build needs it, so this
module imports without TVM.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping

from qgraph.errors import QGraphError


class UnknownTargetError(QGraphError):
    """A target name that ``qgraph.targets`` does not describe."""


@dataclass(frozen=True)
class Target:
    """A compilation target.

    Attributes:
        name: the qgraph name (``cpu``, ``aarch64``).
        tvm_dict: the TVM target as a dict (``{"kind": "llvm", "mcpu": ...}``).
        runnable: whether code built for it runs on this machine.
        features: the SIMD features the target may use (e.g. ``avx2``, ``avx512vnni``, ``neon``).
        int_dtypes: integer storage types the integer kernels support.
        quant: the quantization it executes (``qgraph.targets.rules.QuantRules``), which
            ``insert-qdq`` honours; None: every scheme qgraph writes.
    """

    name: str
    tvm_dict: Mapping[str, Any]
    runnable: bool
    features: frozenset[str] = frozenset()
    int_dtypes: frozenset[str] = field(default_factory=lambda: frozenset(
        {"int8", "uint8", "int16", "uint16", "int32"}))
    quant: Any = None

    @property
    def builds_tvm(self) -> bool:
        """Whether ``qgraph compile --target`` builds it with TVM (a target such as ``qnn``
        hands the QDQ model to another compiler instead)."""
        return bool(self.tvm_dict)

    def tvm_target(self):
        """The ``tvm.target.Target`` (imports TVM)."""
        import tvm

        return tvm.target.Target(dict(self.tvm_dict))

    @property
    def has_vnni(self) -> bool:
        """Whether the target has an int8 dot-product instruction (AVX-512 VNNI / AVX-VNNI)."""
        return bool(self.features & {"avx512vnni", "avx_vnni", "avxvnni"})


#: x86 feature flags of /proc/cpuinfo that decide integer kernel choices.
_X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
              "avx_vnni", "avx512_vnni", "avx512vbmi")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of this machine (from ``/proc/cpuinfo``; empty where unreadable).

    Args:
        cpuinfo: the text of a ``/proc/cpuinfo`` (for tests); None reads this machine's.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def x86_mcpu(flags: frozenset[str]) -> tuple[str, frozenset[str]]:
    """The LLVM ``mcpu`` for x86-64 ``flags`` and the integer-relevant features it enables."""
    flags = frozenset("avx512vnni" if f == "avx512_vnni" else f for f in flags)
    features = frozenset(f for f in flags if f in _X86_FLAGS)
    if {"avx512f", "avx512bw", "avx512vl", "avx512vnni"} <= flags:
        return "cascadelake", features
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "skylake-avx512", features
    if {"avx2", "fma"} <= flags:
        return "core-avx2", features
    if "sse4_2" in flags:
        return "nehalem", features
    return "x86-64", features


def host_cpu(cpuinfo: str | None = None) -> Target:
    """The host CPU as an llvm target (x86-64: AVX2 / AVX-512 / VNNI as detected)."""
    machine = platform.machine().lower()
    flags = cpu_flags(cpuinfo)
    if machine in ("x86_64", "amd64"):
        mcpu, features = x86_mcpu(flags)
        tvm_dict = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
        if "avx_vnni" in features and mcpu == "core-avx2":  # AVX-VNNI without AVX-512 (Alder Lake, Zen 5 client)
            tvm_dict["mattr"] = ["+avxvnni"]
        if "avx512vbmi" in features and mcpu == "cascadelake":  # VBMI (Ice Lake and later): only what is detected
            tvm_dict["mattr"] = ["+avx512vbmi"]
        return Target("cpu", tvm_dict, True, features)
    if machine in ("aarch64", "arm64"):
        features = frozenset(f for f in ("asimd", "asimddp", "i8mm", "sve") if f in flags)
        attrs = ["+neon"] + (["+dotprod"] if "asimddp" in features else []) + (["+i8mm"] if "i8mm" in features else [])
        return Target("cpu", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": attrs}, True,
                      features | {"neon"})
    return Target("cpu", {"kind": "llvm"}, True, frozenset())


def aarch64() -> Target:
    """64-bit Arm Linux (NEON + dot product: Armv8.2-A, e.g. Cortex-A76 / Snapdragon CPUs);
    cross-compiled here, runnable only on an aarch64 host."""
    native = platform.machine().lower() in ("aarch64", "arm64")
    return Target("aarch64", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                              "mattr": ["+neon", "+dotprod"]}, native, frozenset({"neon", "asimddp"}))


def qnn() -> Target:
    """The Qualcomm HTP through ONNX Runtime's QNN EP (``qgraph.targets.qnn``)."""
    from qgraph.targets.qnn import htp

    return htp()


def opencl() -> Target:
    """OpenCL C kernels run through pyopencl on any OpenCL device (PoCL on this CPU, a GPU
    elsewhere); TVM's runtime has no OpenCL, so qgraph launches them (``qgraph.tvm.gpu``)."""
    return Target("opencl", {"kind": "opencl"}, False, frozenset({"opencl"}))


#: CUDA architectures ``--target cuda`` builds for (``cuda``: sm_80; ``cuda-sm89``, ``cuda-sm90``).
CUDA_ARCHS = ("sm_80", "sm_89", "sm_90")


def cuda(arch: str = "sm_80") -> Target:
    """NVIDIA CUDA for ``arch`` (sm_80 / sm_89 / sm_90: dp4a and int8 tensor cores): CUDA C and
    PTX written here, run where a GPU is (TVM's CUDA runtime, or the PTX through CuPy)."""
    if arch not in CUDA_ARCHS:
        raise UnknownTargetError(f"unknown CUDA arch '{arch}'; known: {', '.join(CUDA_ARCHS)}")
    name = "cuda" if arch == "sm_80" else f"cuda-{arch.replace('_', '')}"
    return Target(name, {"kind": "cuda", "arch": arch}, False, frozenset({"dp4a", "mma"}))


#: The GPU target names (``qgraph.tvm.gpu`` builds them).
GPU_NAMES = ("opencl", "cuda", "cuda-sm89", "cuda-sm90")

def _hexagon_v68() -> Target:
    from qgraph.targets.hexagon import hexagon

    return hexagon("v68")


def _hexagon_v73() -> Target:
    from qgraph.targets.hexagon import hexagon

    return hexagon("v73")


_FACTORIES = {"cpu": host_cpu, "aarch64": aarch64, "qnn": qnn, "opencl": opencl, "cuda": cuda,
              "cuda-sm89": lambda: cuda("sm_89"), "cuda-sm90": lambda: cuda("sm_90"),
              # Hexagon HVX 128 B (qgraph.targets.hexagon), run here under qemu-hexagon
              "hexagon": _hexagon_v68, "hexagon-v73": _hexagon_v73}

#: The target names ``get`` knows.
NAMES = tuple(_FACTORIES)


@functools.lru_cache(maxsize=None)
def get(name: str) -> Target:
    """The target called ``name`` (``cpu``: this host; ``aarch64``: Arm 64-bit, cross).

    Raises:
        UnknownTargetError: ``name`` is not one of ``NAMES``.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UnknownTargetError(f"unknown target '{name}'; known targets: {', '.join(NAMES)}")
    return factory()


def resolve(target: "str | Target") -> Target:
    """``target`` as a ``Target`` (a name goes through ``get``)."""
    return target if isinstance(target, Target) else get(target)


__all__ = ["CUDA_ARCHS", "GPU_NAMES", "NAMES", "Target", "UnknownTargetError", "aarch64", "cpu_flags", "cuda", "get",
           "host_cpu", "opencl", "qnn", "resolve", "x86_mcpu"]
