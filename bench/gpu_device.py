"""On an NVIDIA GPU machine (PyTorch, CuPy; no TVM, no qgraph install): run the folders of
``bench/gpu_prepare.py`` through CuPy (``launch.CuPyRunner``: the PTX of ``--target cuda`` and its
launch plan), check each against the reference's outputs bit for bit, and time qgraph int8
against PyTorch fp16 (cuDNN) and PyTorch int8 matmul (``torch._int_mm``) on the model's conv
layers, side by side in one run. Started by ``bench/gpu_device.sh``.

    python bench/gpu_device.py bench/gpu_build [--repeat 50]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np


def _launch(folder: str):
    spec = importlib.util.spec_from_file_location("qgraph_launch", os.path.join(folder, "launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _time_ms(fn, repeat: int) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (CUDA events)."""
    import cupy as cp

    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(times))


def _runner(launch, folder: str):
    """``CuPyRunner`` on the PTX; where this machine's driver cannot load it (a PTX ISA newer
    than the driver), on a cubin compiled here from kernels.cu by this machine's nvcc."""
    import shutil
    import subprocess

    import cupy as cp

    try:
        return launch.CuPyRunner(folder)
    except Exception as e:  # noqa: BLE001 (cupy's driver errors have no common base)
        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        cu = os.path.join(folder, "kernels.cu")
        if not os.path.exists(cu) or not os.path.exists(nvcc):
            raise
        major, minor = cp.cuda.Device().compute_capability[:1], cp.cuda.Device().compute_capability[1:]
        cubin = os.path.join(folder, "kernels.cubin")
        print(f"  PTX not loaded ({type(e).__name__}: {e}); compiling kernels.cu for sm_{major}{minor}", flush=True)
        subprocess.run([nvcc, "-cubin", f"-arch=sm_{major}{minor}", "-O3", "-o", cubin, cu], check=True)
        return launch.CuPyRunner(folder, module=cubin)


def torch_layers_ms(layers: list[dict], repeat: int) -> tuple[float, float | None]:
    """(fp16 cuDNN ms of every conv layer, int8 ``_int_mm`` ms of the im2col GEMM of every
    ungrouped conv, or None where torch has no int8 matmul)."""
    import torch

    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    fp16, int8 = [], []
    for l in layers:
        x = torch.randn(*l["x"], device=dev, dtype=torch.float16)
        w = torch.randn(*l["w"], device=dev, dtype=torch.float16)
        kw = dict(stride=tuple(l["strides"]), padding=tuple(l["pads"]), dilation=tuple(l["dilations"]),
                  groups=l["group"])
        fp16.append(lambda x=x, w=w, kw=kw: torch.nn.functional.conv2d(x, w, **kw))
        if l["group"] == 1:
            n, c, h, wd = l["x"]
            m, _, kh, kwd = l["w"]
            oh = (h + 2 * l["pads"][0] - l["dilations"][0] * (kh - 1) - 1) // l["strides"][0] + 1
            ow = (wd + 2 * l["pads"][1] - l["dilations"][1] * (kwd - 1) - 1) // l["strides"][1] + 1
            rows, k = max(32, n * oh * ow), -(-(c * kh * kwd) // 8) * 8
            cols = -(-m // 8) * 8
            a = torch.randint(-128, 127, (rows, k), device=dev, dtype=torch.int8)
            b = torch.randint(-128, 127, (cols, k), device=dev, dtype=torch.int8).t()  # column-major: cuBLASLt's
            int8.append(lambda a=a, b=b: torch._int_mm(a, b))

    def run(fns):
        for f in fns:
            f()

    def ms(fns):
        run(fns)
        torch.cuda.synchronize()
        t = []
        for _ in range(repeat):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run(fns)
            e.record()
            e.synchronize()
            t.append(s.elapsed_time(e))
        return float(np.median(t))

    try:
        i8 = ms(int8) if int8 else None
    except RuntimeError:
        i8 = None
    return ms(fp16), i8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default="bench/gpu_build")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    launch = _launch(args.build)
    names = sorted(d for d in os.listdir(args.build) if os.path.isdir(os.path.join(args.build, d)))
    failed = []
    for name in names:
        folder = os.path.join(args.build, name)
        start = time.perf_counter()
        try:
            r = _runner(launch, folder)
            with np.load(os.path.join(folder, "inputs.npz")) as z:
                feeds = [z[f"arr_{i}"] for i in range(len(z.files))]
            with np.load(os.path.join(folder, "reference.npz")) as z:
                ref = [z[f"arr_{i}"] for i in range(len(z.files))]
            got = r.run(feeds)
            with open(os.path.join(folder, "outputs.json")) as f:
                floated = [o["after_float_ops"] for o in json.load(f)]
            exact = all(g.dtype == e.dtype and g.shape == e.shape and np.array_equal(g, e) for g, e in zip(got, ref))
            worst = max((float(np.abs(g.astype(np.float64) - e).max()) for g, e in zip(got, ref) if g.size),
                        default=0.0)
            # bit-exactness is promised where no float fallback op is upstream; after one (rec's
            # LayerNorm / Softmax: the device sums in another order than numpy) it is not, as
            # on the CPU build (tests/test_tvm_models.py)
            promised = all(np.array_equal(g, e) for g, e, fl in zip(got, ref, floated) if not fl)
            if not promised:
                failed.append(name)
            q_ms = _time_ms(r.launch, args.repeat)
            with open(os.path.join(folder, "layers.json")) as f:
                layers = json.load(f)
            t16, t8 = torch_layers_ms(layers, args.repeat) if layers else (None, None)
        except Exception as e:  # one model's failure must not hide the others' numbers
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            failed.append(name)
            continue
        verdict = "bit-exact" if exact else f"differs after float fallback ops only (max {worst:.3g})" if promised \
            else f"DIFFERS (max {worst:.3g})"
        row = (f"{name}: {verdict}; qgraph int8 {q_ms:.3f} ms "
               f"({len(r.kernels)} kernels)")
        if t16:
            row += f"; torch fp16 convs {t16:.3f} ms (qgraph/fp16 {q_ms / t16:.2f}x)"
        if t8:
            row += f"; torch int8 _int_mm GEMMs {t8:.3f} ms (qgraph/int8mm {q_ms / t8:.2f}x)"
        print(row + f" [{time.perf_counter() - start:.1f} s]", flush=True)
    print(f"{len(names) - len(failed)} of {len(names)} match the reference"
          + (f"; not: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
