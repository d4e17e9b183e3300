"""Run a launch plan (``qgraph.tvm.plan``: plan.json + constants.npz) on a GPU runtime that is
not TVM's: OpenCL through pyopencl (any OpenCL device: PoCL on a CPU, a real GPU), or CUDA
through CuPy with the PTX of ``qgraph compile --target cuda``.

This module imports only numpy (and pyopencl / cupy when a runner is made), nothing of qgraph
or TVM, so it can be copied next to a compiled folder and run where neither is installed
(``bench/gpu_device.sh`` does that on a GPU machine).

    r = OpenCLRunner(folder)                 # kernels.cl, plan.json, constants.npz
    outs = r.run([x])                        # one array per plan input, in order -> list of outputs
"""

from __future__ import annotations

import json
import os

import numpy as np

PLAN_FILE = "plan.json"
CONSTANTS_FILE = "constants.npz"
OPENCL_SOURCE = "kernels.cl"
CUDA_PTX = "kernels.ptx"


class LaunchError(RuntimeError):
    """A plan that does not fit its feeds, or a device that cannot run it."""


def read_plan(folder: str) -> tuple[dict, dict]:
    """``(plan.json as a dict, {constant key: array})``."""
    with open(os.path.join(folder, PLAN_FILE)) as f:
        plan = json.load(f)
    with np.load(os.path.join(folder, CONSTANTS_FILE)) as z:
        constants = {k: z[k] for k in z.files}
    return plan, constants


def _root(buffers: list[dict], i: int) -> int:
    while buffers[i]["base"] is not None:
        i = buffers[i]["base"]
    return i


def _nbytes(b: dict) -> int:
    return int(np.prod(b["shape"], dtype=np.int64)) * np.dtype(b["dtype"]).itemsize


def _check_feed(i: int, b: dict, x) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.dtype != np.dtype(b["dtype"]) or tuple(x.shape) != tuple(b["shape"]):
        raise LaunchError(f"input {i} expects {b['dtype']}{list(b['shape'])}, got {x.dtype}{list(x.shape)}")
    return x


def opencl_devices() -> list:
    """Every OpenCL device of every platform (pyopencl), in platform order."""
    import pyopencl as cl

    return [d for p in cl.get_platforms() for d in p.get_devices()]


class OpenCLRunner:
    """The plan's kernels (``kernels.cl``) on an OpenCL device through pyopencl.

    Args:
        folder: a folder with kernels.cl, plan.json and constants.npz.
        device: an index into ``opencl_devices()`` or a substring of a device name; None: the first.
    """

    def __init__(self, folder: str, device: "int | str | None" = None):
        import pyopencl as cl

        self.plan, constants = read_plan(folder)
        with open(os.path.join(folder, OPENCL_SOURCE)) as f:
            source = f.read()
        devices = opencl_devices()
        if not devices:
            raise LaunchError("no OpenCL device (install an ICD, e.g. Debian's pocl-opencl-icd)")
        if device is None:
            dev = devices[0]
        elif isinstance(device, int) or str(device).isdigit():
            dev = devices[int(device)]
        else:
            match = [d for d in devices if str(device).lower() in d.name.lower()]
            if not match:
                raise LaunchError(f"no OpenCL device named like '{device}'; devices: "
                                  f"{', '.join(d.name for d in devices)}")
            dev = match[0]
        self.device = dev
        self.context = cl.Context([dev])
        self.queue = cl.CommandQueue(self.context)
        # no -cl-fast-relaxed-math / -cl-mad-enable: float fallbacks must round as numpy does
        self.program = cl.Program(self.context, source).build()
        buffers = self.plan["buffers"]
        self.mem = {}
        mf = cl.mem_flags
        for b in buffers:
            if b["base"] is not None:
                continue
            if b["constant"] is not None:
                data = np.ascontiguousarray(constants[b["constant"]].astype(b["dtype"], copy=False))
                self.mem[b["id"]] = cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=data) \
                    if data.nbytes else cl.Buffer(self.context, mf.READ_WRITE, 1)
            else:
                self.mem[b["id"]] = cl.Buffer(self.context, mf.READ_WRITE, max(1, _nbytes(b)))
        self.kernels = []
        for k in self.plan["launches"]:
            kern = cl.Kernel(self.program, k["kernel"])
            for j, a in enumerate(k["args"]):
                kern.set_arg(j, self.mem[_root(buffers, a)])
            block = tuple(k["block"])
            glob = tuple(g * b for g, b in zip(k["grid"], block))
            self.kernels.append((kern, glob, block))

    def run(self, feeds: list) -> list[np.ndarray]:
        """Copy ``feeds`` (one array per plan input, in order) in, launch every kernel in order,
        and return the outputs (fresh arrays)."""
        import pyopencl as cl

        buffers = self.plan["buffers"]
        if len(feeds) != len(self.plan["inputs"]):
            raise LaunchError(f"{len(self.plan['inputs'])} inputs expected, {len(feeds)} given")
        for (_, i), x in zip(self.plan["inputs"], feeds):
            x = _check_feed(i, buffers[i], x)
            if x.nbytes:
                cl.enqueue_copy(self.queue, self.mem[_root(buffers, i)], x)
        for kern, glob, block in self.kernels:
            cl.enqueue_nd_range_kernel(self.queue, kern, glob, block)
        outs = []
        for _, i in self.plan["outputs"]:
            b = buffers[i]
            y = np.empty(b["shape"], b["dtype"])
            if y.nbytes:
                cl.enqueue_copy(self.queue, y, self.mem[_root(buffers, i)])
            outs.append(y)
        self.queue.finish()
        return outs


class CuPyRunner:
    """The plan's kernels (``kernels.ptx``, or a cubin) on an NVIDIA GPU through CuPy (no TVM).

    Args:
        folder: a folder with kernels.ptx (or ``module``), plan.json and constants.npz.
        module: the PTX / cubin file to load (default ``folder/kernels.ptx``).
    """

    def __init__(self, folder: str, module: str | None = None):
        import cupy as cp

        self.cp = cp
        self.plan, constants = read_plan(folder)
        self.module = cp.RawModule(path=module or os.path.join(folder, CUDA_PTX))
        buffers = self.plan["buffers"]
        self.mem = {}
        for b in buffers:
            if b["base"] is not None:
                continue
            if b["constant"] is not None:
                self.mem[b["id"]] = cp.asarray(constants[b["constant"]].astype(b["dtype"], copy=False).reshape(-1))
            else:
                self.mem[b["id"]] = cp.empty(max(1, _nbytes(b)), dtype=cp.uint8)
        self.kernels = []
        for k in self.plan["launches"]:
            fn = self.module.get_function(k["kernel"])
            args = tuple(self.mem[_root(buffers, a)] for a in k["args"])
            self.kernels.append((fn, tuple(k["grid"]), tuple(k["block"]), args))

    def launch(self) -> None:
        """Launch every kernel once, in order (inputs already copied in)."""
        for fn, grid, block, args in self.kernels:
            fn(grid, block, args)

    def run(self, feeds: list) -> list[np.ndarray]:
        cp = self.cp
        buffers = self.plan["buffers"]
        for (_, i), x in zip(self.plan["inputs"], feeds):
            x = _check_feed(i, buffers[i], x)
            if x.nbytes:  # inputs are raw byte buffers (only constants are typed)
                self.mem[_root(buffers, i)][:x.nbytes] = cp.asarray(x.reshape(-1).view(np.uint8))
        self.launch()
        outs = []
        for _, i in self.plan["outputs"]:
            b = buffers[i]
            src = self.mem[_root(buffers, i)]
            n = _nbytes(b)
            raw = src.view(cp.uint8)[:n] if n else cp.empty(0, cp.uint8)
            outs.append(cp.asnumpy(raw).view(b["dtype"]).reshape(b["shape"]))
        cp.cuda.Device().synchronize()
        return outs
