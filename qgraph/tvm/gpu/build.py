"""Build an L3 model for a GPU target (OpenCL, CUDA): one Relax module, scheduled for GPU
threads, turned into device source plus a launch plan (``qgraph.tvm.plan``).

    c = build_gpu(q.integer, targets.get("opencl"))   # kernels.cl + plan; runs through pyopencl
    y = c.run({"x": x})
    c.export("out/opencl")                           # kernels.cl, plan.json, constants.npz, model.json

CUDA writes the CUDA C, the PTX (``nvcc -ptx``, when nvcc is installed) and a TVM library
(``model.so``) that TVM's CUDA runtime runs on a machine with a GPU; the same plan runs the
PTX through CuPy where TVM is not installed (``launch.CuPyRunner``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph.errors import QGraphError
from qgraph.tvm.gpu import launch
from qgraph.tvm.plan import LaunchPlan, extract
from qgraph.tvm.specs import RunError, TensorSpec

META_FILE = "model.json"
GPU_FORMAT = "qgraph.gpu/1"
CUDA_SOURCE = "kernels.cu"
LIBRARY_FILE = "model.so"
#: Every file a GPU export may write besides model.json / model.so (``compiled.remove_build``).
GPU_FILES = (launch.OPENCL_SOURCE, CUDA_SOURCE, launch.CUDA_PTX, launch.PLAN_FILE, launch.CONSTANTS_FILE)

#: The OpenCL source's prelude. OpenCL C contracts a * b + c into one rounding by default
#: (FP_CONTRACT ON): the float fallbacks must round as numpy does, so the source opts out. And
#: the 4-way int8 product of the dp4a kernels (``schedules.OPENCL_DP4A``): the integer dot
#: product extension's ``dot`` where the device has it (exact: 4 products of int8 fit int32),
#: else 4 int32 multiply-adds (PoCL).
_OPENCL_PRELUDE = """#pragma OPENCL FP_CONTRACT OFF
#ifdef cl_khr_integer_dot_product
#pragma OPENCL EXTENSION cl_khr_integer_dot_product : enable
inline int qgraph_dp4a(char4 a, char4 b, int c) { return c + dot(a, b); }
#else
inline int qgraph_dp4a(char4 a, char4 b, int c) {
  return c + (int)a.s0 * (int)b.s0 + (int)a.s1 * (int)b.s1 + (int)a.s2 * (int)b.s2 + (int)a.s3 * (int)b.s3;
}
#endif
"""


def schedule_passes(tvm_target):
    """Legalization, fusion and GPU scheduling: TVM's generic GPU legalization
    (``relax.backend.gpu_generic``), with qgraph's integer schedules tried before dlight's
    generic rules (``qgraph.tvm.gpu.schedules``)."""
    import tvm
    from tvm.relax.backend.gpu_generic import pipeline as gpu
    from tvm.s_tir import dlight as dl

    from qgraph.tvm.gpu.schedules import rules

    return (gpu.library_dispatch_passes(tvm_target) + [
        tvm.relax.transform.LegalizeOps(),
        tvm.relax.transform.AnnotateTIROpPattern(),
        tvm.relax.transform.FoldConstant(),
        tvm.relax.transform.FuseOps(),
        tvm.relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(*rules(tvm_target), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
        tvm.relax.transform.RewriteDataflowReshape(),
    ])


def _lower_pipeline(tvm_target):
    import tvm
    from tvm.relax.backend.gpu_generic import pipeline as gpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with tvm_target:
            return tvm.transform.Sequential(gpu.dataflow_lower_passes(tvm_target)
                                            + gpu.finalize_passes(tvm_target))(mod)

    return _pipeline


def compile_scheduled(mod, tvm_target):
    """``tvm.compile`` a scheduled module; returns (executable, the TIR module after
    ``SplitHostDevice``, the device source)."""
    import tvm

    captured: dict = {}

    @tvm.ir.instrument.pass_instrument
    class _Capture:
        def run_after_pass(self, m, info):
            if info.name.endswith("SplitHostDevice"):
                captured["tir"] = m

    with tvm.transform.PassContext(instruments=[_Capture()]):
        ex = tvm.compile(mod, tvm_target, relax_pipeline=_lower_pipeline(tvm_target))
    device, todo = [], list(ex.mod.imports)
    while todo:  # the device module is imported by the host module
        m = todo.pop(0)
        if m.kind in ("opencl", "cuda"):
            device.append(m)
        todo.extend(m.imports)
    if not device:
        raise QGraphError(f"TVM produced no device module for {tvm_target}")
    source = device[0].inspect_source()  # CUDA C / OpenCL C (the compiled form is not kept as text)
    return ex, captured["tir"], source


#: A float literal as TVM's OpenCL codegen prints it (``std::scientific``: 7 significant
#: digits, too few to name every float32: 0.2560564f is not the scale 0.25605639815...); the
#: CUDA codegen prints hex already, with the decimal in a comment (``/*2.399400e-02*/``, skipped).
_FLOAT_LITERAL = re.compile(r"(?<![\w.*])(-?)(\d\.\d{6}e[+-]\d{2,3})(f?)(?![\w.])")
_SCRIPT_FLOAT = re.compile(r"T\.float(32|64)\(([^()]+)\)")


def exact_float_literals(source: str, tir) -> str:
    """Rewrite each float literal of the generated device ``source`` as the exact hexadecimal
    literal of the constant the TIR holds (C99 / OpenCL C / CUDA all read ``0x1.0619c6p-2f``).

    The values come from the device PrimFuncs of ``tir``, printed by TVMScript at full
    precision; a literal that names no such constant, or two, fails loudly instead of rounding.

    Raises:
        QGraphError: a literal matches no constant of the TIR, or is ambiguous.
    """
    by_text: dict[tuple[str, str], set[float]] = {}
    for _gv, func in tir.functions.items():
        for bits, text in _SCRIPT_FLOAT.findall(func.script()):
            v = float(text)
            if bits == "32":
                v = float(np.float32(v))
            key = (f"{abs(v):.6e}", "f" if bits == "32" else "")
            by_text.setdefault(key, set()).add(abs(v))

    def exact(m: re.Match) -> str:
        sign, digits, suffix = m.groups()
        if float(digits) == 0.0 or digits in ("1.000000e+00",):
            return m.group(0)
        values = by_text.get((digits, suffix)) or by_text.get((digits, "" if suffix else "f"), set())
        if len(values) != 1:
            if float(digits) == float(np.float32(float(digits))) and not values:
                return m.group(0)  # printed exactly (a short decimal such as 2.550000e+02)
            raise QGraphError(f"the generated device code has the float literal {m.group(0)}, which names "
                              f"{len(values)} constants of the TIR; it cannot be made exact")
        return f"{sign}{next(iter(values)).hex()}{suffix}"

    return _FLOAT_LITERAL.sub(exact, source)


def short_kernel_names(source: str, plan: LaunchPlan, limit: int = 48) -> str:
    """Rename kernels whose names exceed ``limit`` characters (a fused chain's name runs to
    hundreds; PoCL's linker fails on such names) to a prefix plus an index, in the source and
    the plan alike."""
    renames = {}
    for k in plan.launches:
        if len(k.kernel) > limit and k.kernel not in renames:
            renames[k.kernel] = f"{k.kernel[:limit - 8]}_q{len(renames)}_kernel"
    for old in sorted(renames, key=len, reverse=True):
        source = re.sub(rf"\b{re.escape(old)}\b", renames[old], source)
    for k in plan.launches:
        k.kernel = renames.get(k.kernel, k.kernel)
    return source


def ptx(source: str, arch: str, workdir: str) -> str | None:
    """``nvcc -ptx -arch=ARCH`` of the CUDA source (None where nvcc is missing)."""
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    if not nvcc:
        return None
    cu, out = os.path.join(workdir, CUDA_SOURCE), os.path.join(workdir, launch.CUDA_PTX)
    with open(cu, "w") as f:
        f.write(source)
    r = subprocess.run([nvcc, "-ptx", f"-arch={arch}", "-O3", "-o", out, cu], capture_output=True, text=True)
    if r.returncode:
        raise QGraphError(f"nvcc -ptx failed on the generated CUDA C ({cu}):\n{r.stderr[-4000:]}")
    with open(out) as f:
        return f.read()


def _load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime (``libtvm_runtime_cuda.so``, which needs the driver's
    libcuda.so.1): without it TVM neither sees a CUDA device nor loads a CUDA library."""
    try:
        from tvm.backend import cuda

        cuda.register_backend()
    except Exception:  # noqa: BLE001 (no driver here: the device check below says so)
        pass


@dataclass
class GpuCompiled:
    """A model built for a GPU target: device source, launch plan and (CUDA) TVM executable.

    ``run`` executes on this machine: OpenCL through pyopencl (``launch.OpenCLRunner``), CUDA
    through TVM's CUDA runtime (``tvm.cuda()``; a machine with an NVIDIA GPU).
    """

    inputs: tuple
    outputs: tuple
    target: Any
    plan: LaunchPlan
    source: str
    executable: Any = None
    ptx: str | None = None
    folder: str | None = None
    compile_seconds: float = 0.0
    device: "int | str | None" = None
    kernels: dict = field(default_factory=dict)
    _runner: Any = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return str(self.target.tvm_dict["kind"])

    def export(self, outdir: str) -> str:
        """Write the device source (kernels.cl / kernels.cu + kernels.ptx), plan.json,
        constants.npz, model.json and (CUDA) model.so into ``outdir``; returns the source path."""
        os.makedirs(outdir, exist_ok=True)
        self.plan.save(outdir)
        src = os.path.join(outdir, launch.OPENCL_SOURCE if self.kind == "opencl" else CUDA_SOURCE)
        with open(src, "w") as f:
            f.write(self.source)
        files = [os.path.basename(src), "plan.json", "constants.npz"]
        if self.ptx is not None:
            with open(os.path.join(outdir, launch.CUDA_PTX), "w") as f:
                f.write(self.ptx)
            files.append(launch.CUDA_PTX)
        if self.kind == "cuda" and self.executable is not None:
            self.executable.export_library(os.path.join(outdir, LIBRARY_FILE))
            files.append(LIBRARY_FILE)
        meta = {"format": GPU_FORMAT, "target": self.target.name, "tvm_target": dict(self.target.tvm_dict),
                "files": files, "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs],
                "launches": len(self.plan.launches)}
        with open(os.path.join(outdir, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        self.folder = outdir
        return src

    def _run_opencl(self, args: list) -> list:
        if self._runner is None:
            import tempfile

            folder = self.folder
            if folder is None:
                folder = tempfile.mkdtemp(prefix="qgraph-opencl-")
                self.export(folder)
            self._runner = launch.OpenCLRunner(folder, self.device)
        return self._runner.run(args)

    def check_runnable(self) -> "GpuCompiled":
        """Raise ``QGraphError`` when this machine cannot run the build (CUDA: no GPU; OpenCL:
        no device); returns self."""
        if self.kind == "opencl":
            try:
                found = bool(launch.opencl_devices())
            except Exception as e:  # noqa: BLE001 (no pyopencl, or no ICD)
                raise QGraphError(f"backend 'opencl': no OpenCL runtime here ({e}); install pyopencl and an ICD "
                                  "(Debian: pocl-opencl-icd)") from e
            if not found:
                raise QGraphError("backend 'opencl': no OpenCL device on this machine")
            return self
        import tvm

        _load_cuda_runtime()
        if not tvm.cuda(0).exist:
            raise QGraphError("backend 'cuda': no CUDA GPU on this machine (the PTX and model.so are for one)")
        return self

    def _run_cuda(self, args: list) -> list:
        import tvm
        from tvm import relax

        if self._runner is None:
            self.check_runnable()
            dev = tvm.cuda(0)
            module = self.executable if self.executable is not None else \
                tvm.runtime.load_module(os.path.join(self.folder, LIBRARY_FILE))
            self._runner = (relax.VirtualMachine(module, dev), dev)
        vm, dev = self._runner
        res = vm["main"](*[tvm.runtime.tensor(a, dev) for a in args])
        return [res[i].numpy() for i in range(len(self.outputs))]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (static shapes) and return ``{output name: array}``."""
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise RunError(f"missing feed for input '{missing[0]}'")
        args = []
        for s in self.inputs:
            x = np.asarray(feeds[s.name])
            if x.dtype != np.dtype(s.dtype) or tuple(x.shape) != tuple(s.shape):
                raise RunError(f"input '{s.name}' expects {s.dtype}{list(s.shape)}, got {x.dtype}{list(x.shape)} "
                               "(the model was compiled for static shapes)")
            args.append(x)
        outs = self._run_opencl(args) if self.kind == "opencl" else self._run_cuda(args)
        return {s.name: o for s, o in zip(self.outputs, outs)}


def build_gpu(mod, target, inputs: tuple, outputs: tuple, workdir: str | None = None) -> GpuCompiled:
    """Schedule and compile the lowered Relax module ``mod`` for the GPU ``target``
    (a ``qgraph.targets.Target`` of kind opencl or cuda) and extract its launch plan."""
    import tempfile

    import tvm

    from qgraph.progress import stage

    tvm_target = target.tvm_target()
    start = time.perf_counter()
    with stage(f"schedule for {target.name}"), tvm_target:
        scheduled = tvm.transform.Sequential(schedule_passes(tvm_target))(mod)
    with stage(f"tvm.compile ({target.name})"):
        ex, tir, source = compile_scheduled(scheduled, tvm_target)
    plan = extract(scheduled, tir)
    kind = str(target.tvm_dict["kind"])
    source = short_kernel_names(exact_float_literals(source, tir), plan)
    code = None
    if kind == "opencl":
        source = _OPENCL_PRELUDE + source
    else:
        with tempfile.TemporaryDirectory() as tmp:
            code = ptx(source, str(target.tvm_dict.get("arch", "sm_80")), workdir or tmp)
    seconds = time.perf_counter() - start
    counts: dict[str, int] = {}
    for k in plan.launches:
        name = k.func.rstrip("0123456789")
        if name.startswith("q"):
            counts[name] = counts.get(name, 0) + 1
    return GpuCompiled(inputs, outputs, target, plan, source, ex if kind == "cuda" else None, code,
                       compile_seconds=seconds, kernels=counts)


def load_gpu(folder: str, device: "int | str | None" = None) -> GpuCompiled:
    """A GPU build written by ``GpuCompiled.export`` (no TVM needed for OpenCL)."""
    from qgraph.targets import Target

    path = os.path.join(folder, META_FILE)
    if not os.path.exists(path):
        raise QGraphError(f"{folder}: no GPU build ({META_FILE}); compile with --target opencl or cuda")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != GPU_FORMAT:
        raise QGraphError(f"{path} is not a qgraph GPU build description")
    kind = meta["tvm_target"]["kind"]
    src = os.path.join(folder, launch.OPENCL_SOURCE if kind == "opencl" else CUDA_SOURCE)
    with open(src) as f:
        source = f.read()
    target = Target(meta["target"], meta["tvm_target"], False)
    return GpuCompiled(tuple(TensorSpec.from_json(d) for d in meta["inputs"]),
                       tuple(TensorSpec.from_json(d) for d in meta["outputs"]), target, LaunchPlan.load(folder),
                       source, folder=folder, device=device)
