"""Build an L3 model into a freestanding Hexagon program and run it under qemu-hexagon.

    c = qgraph.tvm.build(q.integer, "hexagon")   # lowers, then build() here: a HexagonCompiled
    y = c.run({"input": x})                       # qemu-hexagon, bit-exact with the reference
    c.export("out/tvm")                           # model.elf + model.json

The way: ``qgraph.tvm.lower`` (target-independent, with this package's hooks; called by
``qgraph.tvm.build``, which hands this module the lowered module and the specs, so that no
module of ``qgraph.tvm`` imports another in a cycle), TVM's CPU
legalization and fusion (``LegalizeOps``, ``FuseOps``, ``FuseTIR``) and this package's HVX
schedules (``schedules``), then the launch plan of ``main`` (``plan``), the PrimFuncs compiled by
TVM's LLVM Hexagon backend into one object file, a generated C driver (``driver``), and a
static link with clang / ld.lld (``toolchain``). Functional only: qemu gives no timing.

Why the whole Relax module rather than one small module per L3 node: the lowering, the
fusion (a requantization fused into its conv, pads into their consumers) and the constant
handling are the CPU build's own, so the Hexagon program runs the same kernels, and the plan is
one walk over ``main``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.progress import stage
from qgraph.tvm.hexagon import driver, toolchain
from qgraph.tvm.hexagon.plan import Plan, extract


class HexagonRunError(QGraphError):
    """Feeds that do not fit a Hexagon program, or output it did not write."""


@dataclass
class HexagonCompiled:
    """A model compiled into a Hexagon program (static shapes), run under qemu-hexagon.

    The same interface as ``qgraph.tvm.Compiled`` (``inputs``, ``outputs``, ``target``,
    ``run``, ``export``, ``kernels``), so ``qgraph.backends`` batches it alike.
    """

    elf: bytes
    inputs: tuple  # qgraph.tvm.TensorSpec, as qgraph.tvm.build gives them
    outputs: tuple
    target: object
    compile_seconds: float = 0.0
    load_seconds: float = 0.0
    kernels: dict = field(default_factory=dict)
    files: tuple[str, str] = ("model.elf", "model.json")  # (program, description): qgraph.tvm.build's names
    _path: str | None = field(default=None, repr=False)

    def _elf_path(self) -> str:
        if self._path is None or not os.path.exists(self._path):
            folder = tempfile.mkdtemp(prefix="qgraph-hexagon-")
            self._path = os.path.join(folder, self.files[0])
            with open(self._path, "wb") as f:
                f.write(self.elf)
            os.chmod(self._path, 0o755)
        return self._path

    def warm(self) -> "HexagonCompiled":
        self._elf_path()
        return self

    def _record(self, feeds: Mapping[str, np.ndarray]) -> bytes:
        unknown = [k for k in feeds if k not in {s.name for s in self.inputs}]
        if unknown:
            raise HexagonRunError(f"unknown input '{unknown[0]}'; the model's inputs are "
                           f"{', '.join(repr(s.name) for s in self.inputs)}")
        parts = []
        for spec in self.inputs:
            x = feeds.get(spec.name)
            if x is None:
                raise HexagonRunError(f"missing feed for input '{spec.name}' ({spec.dtype}{list(spec.shape)})")
            x = np.asarray(x)
            if x.dtype != np.dtype(spec.dtype) or x.shape != spec.shape:
                raise HexagonRunError(f"input '{spec.name}' expects {spec.dtype}{list(spec.shape)}, got "
                               f"{x.dtype}{list(x.shape)} (the model was compiled for static shapes)")
            parts.append(np.ascontiguousarray(x).tobytes())
        return b"".join(parts)

    def run_many(self, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run several input records in one qemu process; one result dict per record."""
        if not batches:
            return []
        out = toolchain.run(self._elf_path(), b"".join(self._record(f) for f in batches))
        sizes = [int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in self.outputs]
        per = sum(sizes)
        if len(out) != per * len(batches):
            raise HexagonRunError(f"the Hexagon program wrote {len(out)} bytes for {len(batches)} record(s) of {per}")
        results = []
        for k in range(len(batches)):
            at, res = k * per, {}
            for spec, n in zip(self.outputs, sizes):
                res[spec.name] = np.frombuffer(out[at:at + n], dtype=spec.dtype).reshape(spec.shape).copy()
                at += n
            results.append(res)
        return results

    def empty_outputs(self) -> dict[str, np.ndarray]:
        """Zero outputs of the compiled shapes (``qgraph.backends.run_batched`` lays out its
        batches with them before ``run_many`` runs them all)."""
        return {s.name: np.zeros(s.shape, s.dtype) for s in self.outputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one record (every input at its compiled shape) under qemu-hexagon."""
        return self.run_many([feeds])[0]

    def export(self, outdir: str) -> str:
        """Write the ELF and its description (``model.elf``, ``model.json``) into ``outdir``;
        returns the ELF's path."""
        os.makedirs(outdir, exist_ok=True)
        path = os.path.join(outdir, self.files[0])
        with open(path, "wb") as f:
            f.write(self.elf)
        os.chmod(path, 0o755)
        meta = {"format": "qgraph.tvm/1", "library": self.files[0], "target": self.target.name,
                "tvm_target": dict(self.target.tvm_dict), "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs], "kernels": self.kernels}
        with open(os.path.join(outdir, self.files[1]), "w") as f:
            json.dump(meta, f, indent=2)
        return path


def load(outdir: str, meta: Mapping, inputs: tuple, outputs: tuple, target, files: tuple[str, str]) -> HexagonCompiled:
    """The program ``HexagonCompiled.export`` wrote into ``outdir`` (``meta``: its description,
    read by ``qgraph.tvm.load``, with its specs and target)."""
    with open(os.path.join(outdir, files[0]), "rb") as f:
        elf = f.read()
    return HexagonCompiled(elf, inputs, outputs, target, kernels=dict(meta.get("kernels", {})), files=files)


def fuse(mod, tvm_target, counts: dict | None = None):
    """``mod`` legalized, fused and scheduled for Hexagon, every PrimFunc given its symbol
    (``counts``, if given, receives the kernels each HVX schedule took)."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from qgraph.tvm.hexagon.schedules import schedule_pass

    with tvm_target:
        passes = (cpu.library_dispatch_passes(tvm_target) + cpu.legalize_passes(tvm_target)
                  + [schedule_pass(tvm_target, counts=counts), relax.transform.AttachGlobalSymbol()])
        return tvm.transform.Sequential(passes)(mod)


def kernels_object(mod, plan: Plan, tvm_target, path: str) -> None:
    """Compile the PrimFuncs the plan calls with TVM's LLVM Hexagon backend into ``path``."""
    import tvm

    called = {launch.symbol for launch in plan.launches}
    funcs = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint in called}
    lib = tvm.tirx.build(tvm.IRModule(funcs), target=tvm_target)
    lib.write_to_file(path)


def build(mod, target, inputs: tuple, outputs: tuple, files: tuple[str, str]) -> HexagonCompiled:
    """Compile ``mod`` (``qgraph.tvm.lower``'s Relax module, static shapes) into a Hexagon
    program for ``target``; ``inputs`` / ``outputs``: its specs; ``files``: the names
    ``export`` writes.

    Raises:
        LoweringError: the fused module is not a plan of TIR calls.
        ToolchainError: clang / ld.lld is missing, or compiling / linking failed.
    """
    mcpu = str(target.tvm_dict.get("mcpu", "hexagonv68"))
    toolchain.require("clang")
    toolchain.require("ld.lld")
    start = time.perf_counter()
    tvm_target = target.tvm_target()
    with stage(f"TVM fuse and compile ({target.name})"):
        scheduled: dict[str, int] = {}
        fused = fuse(mod, tvm_target, scheduled)
        plan = extract(fused, [s.name for s in inputs])
        folder = tempfile.mkdtemp(prefix="qgraph-hexagon-build-")
        try:
            objects = [os.path.join(folder, n) for n in ("kernels.o", "runtime.o", "program.o", "constants.o")]
            kernels_object(fused, plan, tvm_target, objects[0])
            _, _, _, blob = driver.layout(plan)
            with open(os.path.join(folder, "constants.bin"), "wb") as f:
                f.write(blob)
            sources = {"runtime.c": driver.runtime_c(), "program.c": driver.program_c(plan),
                       "constants.S": driver.constants_s(os.path.join(folder, "constants.bin"))}
            for (name, text), obj in zip(sources.items(), objects[1:]):
                src = os.path.join(folder, name)
                with open(src, "w") as f:
                    f.write(text)
                toolchain.compile_c(src, obj, _driver_mcpu(mcpu))
            elf = os.path.join(folder, files[0])
            toolchain.link(objects, elf)
            with open(elf, "rb") as f:
                code = f.read()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - start
    kernels = {**plan.kernel_calls(), **scheduled,
               "default_schedule": sum(1 for f in fused.functions.values() if _tir(f)) - sum(scheduled.values())}
    return HexagonCompiled(code, inputs, outputs, target, seconds, kernels=kernels, files=files)


def _tir(func) -> bool:
    import tvm

    return isinstance(func, tvm.tirx.PrimFunc)


def _driver_mcpu(mcpu: str) -> str:
    """The CPU the driver is compiled for: the kernels' own (the driver uses no HVX, and
    clang-14 knows no ``hexagonv73``: v68 code runs on a v73)."""
    return "hexagonv68" if mcpu not in ("hexagonv68",) else mcpu
