"""Issue 18: the GPU target. ``qgraph compile --target opencl`` then ``qgraph run --backend
opencl`` (OpenCL C kernels + launch plan, run through pyopencl; PoCL on this CPU in CI) equals
``--backend reference`` bit for bit on every golden model and PP-OCRv4 cls; ``--target cuda``
writes CUDA C and PTX (nvcc, no GPU needed) for every golden model.

Skips only where pyopencl or an OpenCL device (Debian's pocl-opencl-icd) is missing; .ci/run
installs both.
"""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "golden")
MODELS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(GOLDEN, "models", "*.onnx")))


def _opencl_device() -> bool:
    try:
        from qgraph.tvm.gpu.launch import opencl_devices

        return bool(opencl_devices())
    except Exception:  # no pyopencl, or no ICD: pyopencl raises on get_platforms
        return False


needs_opencl = pytest.mark.skipif(not _opencl_device(), reason="pyopencl or an OpenCL device (pocl-opencl-icd) "
                                  "is missing")


def _data(name: str) -> tuple[str, str]:
    stem = name[:-4] if name.endswith("_cnn") and name != "example_cnn" else name  # digits_cnn -> digits_*
    calib = os.path.join(GOLDEN, "data", f"{stem}_calib.npz")
    test = os.path.join(GOLDEN, "data", f"{stem}_test.npz")
    return calib, test if os.path.exists(test) else calib


def _inputs(path: str, n: int = 2) -> dict:
    """The first ``n`` samples of each input of a golden .npz (``label`` is not an input)."""
    with np.load(path) as z:
        return {k: z[k][:n] for k in z.files if k != "label"}


@needs_opencl
@pytest.mark.parametrize("name", MODELS)
def test_golden_opencl_equals_reference(name, tmp_path):
    """compile --target opencl, then CompiledDir.run(backend="opencl") == reference, bit for bit,
    on 2 held-out samples (the CLI's own path: OUTDIR/tvm/kernels.cl + plan.json)."""
    from qgraph.cli.main import main
    from qgraph.compiled import CompiledDir

    calib, test = _data(name)
    out = str(tmp_path / name)
    assert main(["compile", os.path.join(GOLDEN, "models", f"{name}.onnx"), "--calib", calib, "-o", out,
                 "--target", "opencl"]) == 0
    assert os.path.exists(os.path.join(out, "tvm", "kernels.cl"))
    c = CompiledDir.load(out)
    feeds = _inputs(test)
    got, ref = c.run(feeds, "opencl"), c.run(feeds, "reference")
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert np.array_equal(got[k], ref[k]), (k, np.abs(got[k].astype(np.float64) - ref[k]).max())


@needs_opencl
def test_cli_run_backend_opencl(tmp_path, capsys):
    """``qgraph run --backend opencl --device 0`` writes the same .npz as ``--backend reference``,
    and ``qgraph verify`` compares the OpenCL build too."""
    from qgraph.cli.main import main

    calib, test = _data("op_conv")
    out = str(tmp_path / "m")
    assert main(["compile", os.path.join(GOLDEN, "models", "op_conv.onnx"), "--calib", calib, "-o", out,
                 "--target", "opencl"]) == 0
    a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert main(["run", out, "--inputs", test, "-o", a, "--backend", "opencl", "--device", "0"]) == 0
    assert main(["run", out, "--inputs", test, "-o", b, "--backend", "reference"]) == 0
    with np.load(a) as x, np.load(b) as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    assert "ran opencl" in capsys.readouterr().out
    assert main(["verify", out, "--inputs", test]) == 0
    assert "reference vs OpenCL: max 0 LSB, 100.00% exact" in capsys.readouterr().out


@needs_opencl
def test_readme_opencl_example_runs(monkeypatch, capsys):
    """README's --target opencl / --backend opencl commands run as written (in out_gpu/)."""
    import re
    import shlex

    from qgraph.cli.main import main

    monkeypatch.chdir(REPO)
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, re.S) for line in block.splitlines()
             if line.startswith(("qgraph compile golden/models/op_conv.onnx", "qgraph run out_gpu/"))]
    assert len(lines) == 2 and "--target opencl" in lines[0] and "--backend opencl" in lines[1]
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, line
    assert "ran opencl" in capsys.readouterr().out


@needs_opencl
def test_ppocr_cls_opencl_equals_reference():
    """PP-OCRv4 cls (rapidocr's ch_ppocr_mobile_v2.0_cls_infer.onnx, static 1x3x48x192) on the
    OpenCL backend: bit-exact with the reference on 2 inputs."""
    import importlib.util

    from qgraph.api import quantize
    from qgraph.reference import Interpreter

    spec = importlib.util.spec_from_file_location("check_tvm_models", os.path.join(REPO, "bench",
                                                                                 "check_tvm_models.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.model_path("cls")
    assert os.path.exists(path), f"{path} is not installed (the test extra installs it)"
    q = quantize(bench.load_model("cls", True), bench.samples("cls", path, 4, seed=1), method="minmax",
                 report=False, show_progress=False)
    tests = bench.samples("cls", path, 2, seed=5)
    c = q.build("opencl", input_shapes={k: list(v.shape) for k, v in tests[0].items()})
    interp = Interpreter(q.integer)
    for feeds in tests:
        got, ref = c.run(feeds), interp.run(feeds)
        for k in ref:
            assert np.array_equal(got[k], ref[k]), k


def test_launch_plan_round_trips(tmp_path):
    """The plan written next to the kernels reads back the same (no TVM needed to read it)."""
    from qgraph.api import quantize
    from qgraph.tvm.plan import LaunchPlan

    calib, _ = _data("op_gemm")
    q = quantize(os.path.join(GOLDEN, "models", "op_gemm.onnx"), calib, report=False, show_progress=False)
    c = q.build("opencl")
    c.export(str(tmp_path))
    p = LaunchPlan.load(str(tmp_path))
    assert p.to_json() == c.plan.to_json()
    assert p.launches and all(k.kernel in c.source for k in p.launches)
    assert all(0 < b[0] <= 1024 for b in (k.block for k in p.launches))


needs_nvcc = pytest.mark.skipif(not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")),
                                reason="nvcc is not installed")


@needs_nvcc
@pytest.mark.parametrize("name", MODELS)
def test_cuda_ptx_for_golden_models(name):
    """--target cuda: CUDA C and PTX (nvcc -ptx -arch=sm_80) with one .entry per kernel of the plan."""
    from qgraph.api import quantize

    calib, _ = _data(name)
    q = quantize(os.path.join(GOLDEN, "models", f"{name}.onnx"), calib, report=False, show_progress=False)
    c = q.build("cuda")
    assert c.ptx is not None and ".target sm_80" in c.ptx
    for k in c.plan.launches:
        assert f".entry {k.kernel}(" in c.ptx, k.kernel


def _ptx_entries(ptx: str) -> dict[str, str]:
    """``{kernel: its PTX body}``."""
    parts = ptx.split(".entry ")[1:]
    return {p.split("(", 1)[0].strip(): p for p in parts}


@needs_nvcc
@pytest.mark.parametrize("name", MODELS)
def test_cuda_conv_kernels_use_dp4a(name):
    """Every ungrouped integer conv of a golden model runs as a ``qdp4a_conv`` kernel, and every
    matmul by a constant as a ``qdp4a_matmul`` one, whose PTX has ``dp4a`` (the 4-way int8 dot
    product of sm_61+)."""
    from qgraph.api import quantize
    from qgraph.ir import l3

    calib, _ = _data(name)
    q = quantize(os.path.join(GOLDEN, "models", f"{name}.onnx"), calib, report=False, show_progress=False)
    convs = [n for n in q.integer.graph if n.op is l3.QConv and int(n.attr("group", 1)) == 1]
    c = q.build("cuda")
    entries = _ptx_entries(c.ptx)
    dp4a = [k.kernel for k in c.plan.launches if "qdp4a_conv" in k.kernel]  # a kernel may run twice
    assert len(dp4a) == len(convs), (dp4a, [n.name for n in convs])
    for k in set(dp4a):
        assert "dp4a.s32.s32" in entries[k], k
    mms = [n for n in q.integer.graph if n.op is l3.QMatMul and n.inputs[1].constant() is not None]
    dp4a_mm = [k.kernel for k in c.plan.launches if "qdp4a_matmul" in k.kernel]
    assert len(dp4a_mm) == len(mms), (dp4a_mm, [n.name for n in mms])
    assert all("dp4a.s32.s32" in entries[k] for k in dp4a_mm)
