"""Build a lowered L3 model with TVM, run it, export it as a shared library, load it back.

    from qgraph import tvm as qtvm
    c = qtvm.build(q.integer, batch_size=1)          # target "cpu": this host
    y = c.run({"input": x})                          # {output name: numpy array}
    c.export("out/")                                 # model.so + model.json
    c2 = qtvm.load("out/")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.progress import stage
from qgraph.targets import Target, resolve
from qgraph.tvm import kernel_packages
from qgraph.tvm.lower import input_dtype, lower, output_names, static_input_shapes
from qgraph.tvm.specs import RunError, TensorSpec

#: Files ``Compiled.export`` writes.
LIBRARY_FILE = "model.so"
OBJECTS_FILE = "model.tar"
#: The program a whole-program target exports (Hexagon: a static ELF run under qemu-hexagon).
PROGRAM_FILE = "model.elf"
META_FILE = "model.json"


@dataclass
class Compiled:
    """A model compiled by TVM for one target (static shapes).

    Attributes:
        executable: the Relax VM executable (``tvm.compile``'s result) or a loaded module.
        inputs / outputs: the specs, in the order of ``main``'s parameters / results.
        target: the target it was built for.
        compile_seconds: the time ``tvm.compile`` took (0 for a loaded model).
        load_seconds: the time the first VM creation took (LLVM generates machine code then,
            lazily: for a model of a few hundred ops this is as long as ``tvm.compile``).
    """

    executable: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: Target
    compile_seconds: float = 0.0
    load_seconds: float = 0.0
    kernels: dict = field(default_factory=dict)  # qgraph kernel name -> call sites (``kernel_calls``)
    kernel_macs: dict = field(default_factory=dict)  # kernel function -> MACs per call (``kernel_macs``)
    _vm: Any = field(default=None, repr=False)
    _call: Any = field(default=None, repr=False)
    _args: Any = field(default=None, repr=False)

    def _machine(self):
        if self._vm is None:
            import tvm
            from tvm import relax

            if not self.target.runnable:
                raise RunError(f"code built for target '{self.target.name}' ({dict(self.target.tvm_dict)}) cannot "
                               "run on this machine; export it and run it there")
            start = time.perf_counter()
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
            self.load_seconds = time.perf_counter() - start
        return self._vm

    def _prepare(self) -> None:
        """Resolve ``main`` once and allocate one TVM tensor per input, with a numpy view of it
        (``run`` copies the feeds into these views: ``tvm.runtime.tensor`` per call costs
        more than the whole of a small model's kernels)."""
        import tvm

        vm = self._machine()
        args = []
        for spec in self.inputs:
            t = tvm.runtime.empty(spec.shape, spec.dtype, tvm.cpu())
            try:
                view = np.from_dlpack(t)
            except Exception:  # a dtype numpy's DLPack import does not take: copy per call
                view = None
            args.append((spec.name, np.dtype(spec.dtype), spec.shape, t, view))
        self._args = tuple(args)
        self._call = vm["main"]

    def warm(self) -> "Compiled":
        """Create the VM now (machine code is generated then), so that ``run`` times only
        run; returns self."""
        self._machine()
        return self

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (one array per input, of its dtype and static shape) and return
        ``{output name: array}`` (fresh arrays, owned by the caller).

        The feeds are copied into input tensors allocated once, so one ``Compiled`` must not
        run from two threads at once (neither may its VM).

        Raises:
            RunError: a feed is missing, unknown, or of the wrong dtype or shape.
        """
        if self._call is None:
            self._prepare()
        if len(feeds) != len(self._args) or any(k not in feeds for k, *_ in self._args):
            names = {s.name for s in self.inputs}
            unknown = [k for k in feeds if k not in names]
            if unknown:
                raise RunError(f"unknown input '{unknown[0]}'; the model's inputs are "
                               f"{', '.join(repr(s.name) for s in self.inputs)}")
        tensors = []
        for name, dtype, shape, t, view in self._args:
            x = feeds.get(name)
            if x is None:
                raise RunError(f"missing feed for input '{name}' ({dtype.name}{list(shape)})")
            if not isinstance(x, np.ndarray):
                x = np.asarray(x)
            if x.dtype != dtype or x.shape != shape:
                raise RunError(f"input '{name}' expects {dtype.name}{list(shape)}, got "
                               f"{x.dtype}{list(x.shape)} (the model was compiled for static shapes)")
            if view is not None:
                np.copyto(view, x, casting="no")
            else:
                t.copyfrom(np.ascontiguousarray(x))
            tensors.append(t)
        results = self._call(*tensors)
        out = {}
        for i, spec in enumerate(self.outputs):
            r = results[i]
            try:
                out[spec.name] = np.from_dlpack(r).copy()
            except Exception:  # a dtype numpy's DLPack import does not take
                out[spec.name] = r.numpy()
        return out

    def export(self, outdir: str) -> str:
        """Write the compiled code and ``model.json`` (inputs, outputs, target) into ``outdir``.

        The code is ``model.so`` (a shared library ``load`` reads) for a target that runs
        here, or where a cross linker for it is installed; otherwise ``model.tar``, the
        object files to link on the device. Returns the library path.
        """
        os.makedirs(outdir, exist_ok=True)
        lib, kwargs = os.path.join(outdir, LIBRARY_FILE), {}
        if not self.target.runnable:
            triple = str(self.target.tvm_dict.get("mtriple", ""))
            cross = shutil.which(f"{triple}-g++") if triple else None
            if cross:
                from tvm.contrib import cc

                kwargs["fcompile"] = cc.cross_compiler(cross)
            else:
                lib = os.path.join(outdir, OBJECTS_FILE)
        with stage("export the TVM library"):
            self.executable.export_library(lib, **kwargs)
        meta = {"format": "qgraph.tvm/1", "library": os.path.basename(lib), "target": self.target.name,
                "tvm_target": dict(self.target.tvm_dict), "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs]}
        with open(os.path.join(outdir, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        return lib


def schedule_pass(target):
    """The CPU kernel schedules as one module pass: ``float_matmul_schedule.matmul_rule``, else
    ``elementwise_schedule.integer_sum_rule``, else ``elementwise_schedule.elementwise_rule``,
    on every PrimFunc that no kernel package scheduled."""
    from tvm.s_tir import dlight

    from qgraph.tvm.elementwise_schedule import elementwise_rule, integer_sum_rule
    from qgraph.tvm.float_matmul_schedule import matmul_rule

    return dlight.ApplyDefaultSchedule(matmul_rule(), integer_sum_rule(), elementwise_rule())


#: TIR calls that TVM 0.27 does not mark vectorizable (``TVectorizable``) though LLVM has their
#: vector form: a vectorized loop with one is left scalar, and LLVM then vectorizes the loop around
#: it with gathers and one byte store per lane. Every Quantize of a float tensor rounds with
#: ``nearbyint``: the YOLOv8n input's (3 x 320 x 320, kernel alone, 1 thread) 322 -> 72 us.
VECTOR_CALLS = ("tirx.nearbyint", "tirx.isnan")


_VECTOR_LOCK = threading.Lock()
_vector_builds = 0  # CPU builds compiling now (threads): the attribute is set by the first, reset by the last


@contextlib.contextmanager
def vector_rounding():
    """``VECTOR_CALLS`` vectorizable while a CPU build compiles, then as TVM has them (GPU
    codegens are not asked to print their vector forms). The same bits: LLVM's vector
    ``nearbyint`` is the scalar one per lane (``vroundps`` / ``vrndscaleps`` in the default
    rounding mode, round half to even), and ``isnan`` a compare."""
    import tvm

    global _vector_builds
    with _VECTOR_LOCK:
        if _vector_builds == 0:
            for name in VECTOR_CALLS:
                tvm.ir.register_op_attr(name, "TVectorizable", True)
        _vector_builds += 1
    try:
        yield
    finally:
        with _VECTOR_LOCK:
            _vector_builds -= 1
            if _vector_builds == 0:
                for name in VECTOR_CALLS:
                    tvm.ir.Op.get(name).reset_attr("TVectorizable")


def pipeline(tvm_target):
    """The Relax pipeline ``build`` compiles with: TVM's CPU pipeline
    (``relax.backend.cpu_generic``), which is ``tvm.compile``'s default for CPU targets plus
    ``FoldConstant``, ``FuseOps`` and ``FuseTIR`` (``tvm.compile``'s default runs each Relax op
    as its own kernel with its own intermediate tensor: ~50 kernel calls for the digits CNN,
    where fused elementwise chains make 9), then ``qgraph.tvm.elementwise_schedule`` on the fused
    elementwise kernels (vectorized, parallel). Both keep the results bit-exact: an integer
    chain is the same arithmetic, and float ops are not contracted (no FMA) by TVM's LLVM
    codegen."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with tvm_target:
            passes = (cpu.library_dispatch_passes(tvm_target) + cpu.legalize_passes(tvm_target)
                      + [schedule_pass(tvm_target)]
                      + cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(model: Model, target: "str | Target" = "cpu", *, input_shapes: Mapping[str, Sequence[int]] | None = None,
          batch_size: int | None = None, outputs: Sequence[str] | None = None, kernels: str = "auto") -> Compiled:
    """Lower an L3 model to Relax and compile it with TVM (``pipeline``: the CPU pipeline,
    elementwise chains fused).

    Args:
        model: the L3 model (``QuantizedModel.integer``).
        target: a target name of ``qgraph.targets`` (``cpu``, ``aarch64``) or a ``Target``.
        input_shapes: static shapes for inputs whose declared shape has symbolic dims.
        batch_size: the leading dim of inputs whose declared leading dim is symbolic.
        outputs: the values to return, by name (default: the graph outputs).
        kernels: ``"auto"`` (the target's kernel package, hand-scheduled integer kernels, where
            they apply: ``qgraph.tvm.kernel_packages``) or ``"default"`` (``qgraph.tvm.lower``).

    Raises:
        LoweringError: the model cannot be lowered (names the node and op).
    """
    import tvm

    from qgraph.tvm.kernel_packages import device_builder

    tgt = resolve(target)
    shapes = static_input_shapes(model, input_shapes, batch_size)
    with stage("lower to TVM Relax"):
        mod = lower(model, shapes, outputs=outputs, target=tgt, kernels=kernels)
    inputs = tuple(TensorSpec(n, input_dtype(model, n), s) for n, s in shapes.items())
    ret = mod["main"].ret_ty
    specs = tuple(TensorSpec(n, str(t.dtype), tuple(int(d) for d in t.shape))
                  for n, t in zip(output_names(model, outputs), ret.fields))
    builder = device_builder(tgt)
    if builder is not None:  # a GPU target: device source + launch plan (qgraph.tvm.gpu)
        return builder(mod, tgt, inputs, specs)
    whole = kernel_packages.program_builder(tgt)
    if whole is not None:  # a target without a TVM runtime here (Hexagon): the package's own program
        return whole.build(mod, tgt, inputs, specs, (PROGRAM_FILE, META_FILE))
    start = time.perf_counter()
    tvm_target = tgt.tvm_target()
    with stage(f"tvm.compile ({tgt.name})"), vector_rounding():
        executable = tvm.compile(mod, tvm_target, relax_pipeline=pipeline(tvm_target))
    seconds = time.perf_counter() - start
    return Compiled(executable, inputs, specs, tgt, seconds, kernels=kernel_calls(mod), kernel_macs=kernel_macs(mod))


def kernel_calls(mod) -> dict[str, int]:
    """``{qgraph kernel: call sites}`` in a lowered module's ``main`` (``qdirect_conv`` int16
    pairs, ``qdirect_conv_ubsw`` u8 x s8, ``qdw_pconv``, ``qmatmul_gemm``, ``qlookup`` ...)."""
    from tvm import relax

    counts: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and call.args and isinstance(call.args[0], relax.GlobalVar):
                name = call.args[0].name_hint.rstrip("0123456789")
                if name.startswith("q"):
                    counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def kernel_macs(mod) -> dict[str, int]:
    """``{kernel function: multiply-adds per call}`` for the kernels of a lowered module that
    declare them (``context.MACS_ATTR``: the x86 conv and matmul kernels)."""
    from tvm import tirx

    from qgraph.tvm.context import MACS_ATTR

    return {gv.name_hint: int(f.attrs[MACS_ATTR]) for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and MACS_ATTR in f.attrs}


def load(outdir: str) -> Compiled:
    """Load a model written by ``Compiled.export``."""
    import tvm

    from qgraph.targets import Target

    with open(os.path.join(outdir, META_FILE)) as f:
        meta = json.load(f)
    if meta.get("format") != "qgraph.tvm/1":
        raise QGraphError(f"{os.path.join(outdir, META_FILE)} is not a qgraph TVM model description")
    library = meta.get("library", LIBRARY_FILE)
    if library == PROGRAM_FILE:  # a whole-program target's (Hexagon): its package loads it
        from qgraph.targets import get

        try:
            target = get(meta.get("target", ""))
        except QGraphError as e:
            raise RunError(f"{outdir}: a program for target '{meta.get('target')}', which qgraph does not know") from e
        whole = kernel_packages.program_builder(target)
        if whole is not None:
            return whole.load(outdir, meta, tuple(TensorSpec.from_json(d) for d in meta["inputs"]),
                              tuple(TensorSpec.from_json(d) for d in meta["outputs"]), target,
                              (PROGRAM_FILE, META_FILE))
    if library != LIBRARY_FILE:
        raise RunError(f"{outdir} holds object files ({library}) for target '{meta.get('target')}'; link them "
                       "on the device (tvm.contrib.cc) and load the shared library there")
    module = tvm.runtime.load_module(os.path.join(outdir, library))
    from qgraph.targets import get

    name = meta.get("target", "cpu")
    try:
        target = get(name)
    except QGraphError:
        target = Target(name, meta.get("tvm_target", {}), False)
    return Compiled(module, tuple(TensorSpec.from_json(d) for d in meta["inputs"]),
                    tuple(TensorSpec.from_json(d) for d in meta["outputs"]), target)
