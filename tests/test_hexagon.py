"""qgraph.tvm.hexagon: L3 models compiled for Hexagon HVX (TVM's LLVM Hexagon backend, a
freestanding driver linked with clang / ld.lld) and run under qemu-hexagon equal the
reference interpreter bit for bit.

Skipped only where qemu-hexagon, clang or ld.lld is missing (.ci/run installs them).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from qgraph import targets
from qgraph.targets.hexagon import HEXAGON_SCHEME, TOOLS, is_hexagon
from qgraph.tvm.hexagon import toolchain

from test_tvm import GOLDEN, REPO, _compare, _data_stem, _test_feeds, quantized  # noqa: F401 (quantized: the fixture)

pytestmark = pytest.mark.skipif(not toolchain.available(), reason="needs qemu-hexagon, clang and ld.lld "
                                "(apt-get install qemu-user-static clang lld)")


def test_hexagon_targets_describe_hvx():
    t = targets.get("hexagon")
    assert t.tvm_dict == {"kind": "llvm", "mtriple": "hexagon-unknown-linux-musl", "mcpu": "hexagonv68",
                          "mattr": ["+hvxv68", "+hvx-length128b"]}
    assert is_hexagon(t) and is_hexagon(targets.get("hexagon-v73")) and not is_hexagon(targets.get("aarch64"))
    assert targets.get("hexagon-v73").tvm_dict["mcpu"] == "hexagonv73"
    assert t.runnable  # the tools are here (the module is skipped otherwise)
    assert set(TOOLS) == {"clang", "ld.lld", "qemu"}
    assert "int32 accumulation" in HEXAGON_SCHEME.describe()


@pytest.mark.parametrize("stem", GOLDEN)
def test_golden_model_bit_exact_on_hexagon(quantized, stem, tmp_path, capsys):
    """Every value of the program (graph outputs and intermediates) against the reference;
    then ``qgraph compile --target hexagon`` and ``qgraph run --backend hexagon`` (the exported
    ELF, loaded back) against ``--backend reference``, bit for bit."""
    from qgraph.cli.main import main
    from qgraph.reference import Interpreter

    import qgraph.tvm as qtvm

    q = quantized(stem)
    feeds = _test_feeds(q.integer, stem)
    batch = next(iter(feeds.values())).shape[0]
    if stem != "digits_cnn":  # digits: graph outputs only (the deployed fusion), through the CLI below
        outs = [v.name for v in q.integer.graph.outputs]
        names = [o.name for node in q.integer.graph for o in node.outputs if o is not None]
        compiled = qtvm.build(q.integer, "hexagon", batch_size=batch, outputs=outs + [n for n in names if n not in outs])
        got = compiled.run(feeds)
        ref = Interpreter(q.integer).run(feeds, outputs=list(got))
        _compare(q.integer, got, ref, list(got))
    base, out = _data_stem(stem), str(tmp_path / "out")
    data = os.path.join(REPO, "golden", "data", f"{base}_test.npz")
    assert main(["compile", os.path.join(REPO, "golden", "models", f"{stem}.onnx"), "--calib",
                 os.path.join(REPO, "golden", "data", f"{base}_calib.npz"), "-o", out, "--target", "hexagon",
                 "--batch-size", str(min(batch, 64))]) == 0
    for backend in ("hexagon", "reference"):
        assert main(["run", out, "--inputs", data, "-o", str(tmp_path / f"{backend}.npz"), "--backend", backend]) == 0
    assert "ran hexagon (hexagon" in capsys.readouterr().out
    got, ref = np.load(tmp_path / "hexagon.npz"), np.load(tmp_path / "reference.npz")
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


@pytest.mark.slow
def test_compile_run_cli_ppocr_cls_bit_exact(tmp_path, capsys):
    """PP-OCRv4 cls: ``qgraph compile --target hexagon`` then ``qgraph run --backend hexagon``
    equals ``--backend reference`` bit for bit (the exported ELF, loaded back). About 130
    kernels through LLVM's Hexagon backend: 287 s on the shared 2-core machine, so ``slow``;
    .ci/run runs it explicitly (``pytest -m slow tests/test_hexagon.py``)."""
    import onnx

    from qgraph.cli.main import main

    ocr = pytest.importorskip("qgraph.testing.ocr")
    root = os.path.dirname(ocr.rec_model_path())
    found = sorted(glob.glob(os.path.join(root, "*cls*.onnx")))
    if not found:
        pytest.skip("rapidocr_onnxruntime's cls model is not installed")
    model = onnx.load(found[0])
    for i in model.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = "N"
    onnx.save(model, str(tmp_path / "cls.onnx"))
    np.savez(tmp_path / "calib.npz", x=ocr.render_lines(ocr.sample_texts(8, seed=1), width=192))
    np.savez(tmp_path / "x.npz", x=ocr.render_lines(ocr.sample_texts(3, seed=5), width=192))
    out = str(tmp_path / "out")
    assert main(["compile", str(tmp_path / "cls.onnx"), "--calib", str(tmp_path / "calib.npz"), "-o", out,
                 "--target", "hexagon", "--input-shape", "x=1,3,48,192"]) == 0
    said = capsys.readouterr().out
    assert "TVM hexagon" in said
    import json

    with open(os.path.join(out, "report.json")) as f:
        rows = json.load(f)["placement"]
    assert rows and {r["runs_on"] for r in rows} == {"hexagon"}
    assert {"integer", "lookup"} <= {r["kind"] for r in rows}
    assert os.path.exists(os.path.join(out, "tvm", "model.elf"))
    for backend in ("hexagon", "reference"):
        assert main(["run", out, "--inputs", str(tmp_path / "x.npz"), "-o", str(tmp_path / f"{backend}.npz"),
                     "--backend", backend]) == 0
    got, ref = np.load(tmp_path / "hexagon.npz"), np.load(tmp_path / "reference.npz")
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


def test_backend_hexagon_needs_a_hexagon_build(quantized):
    from qgraph.errors import QGraphError

    q = quantized("op_gemm")
    q.compiled = None
    feeds = _test_feeds(q.integer, "op_gemm")
    with pytest.raises(QGraphError, match="--target hexagon"):
        q.run(feeds, backend="hexagon")


def test_v73_program_bit_exact(quantized):
    """``hexagon-v73`` (kernels for v73's HVX; Debian 12's qemu runs them with its v67 model)."""
    q = quantized("op_conv")
    feeds = _test_feeds(q.integer, "op_conv")
    compiled = q.build("hexagon-v73", batch_size=2)
    assert compiled.target.tvm_dict["mcpu"] == "hexagonv73"
    assert compiled.kernels.get("hvx_conv_matmul", 0) >= 1
    hexagon, reference = q.run(feeds, backend="hexagon"), q.run(feeds)
    for n in reference:
        assert np.array_equal(hexagon[n], reference[n]), n


def test_float_fallback_math_is_correctly_rounded():
    """The program's own libm (no libc on Hexagon): ``expf``, ``logf``, ``sqrtf``, ``erff`` give
    the float32 rounding of the float64 result (numpy's float32 ``exp`` / ``log`` are SIMD
    approximations that miss it for about half these inputs, by up to 2 ULP here)."""
    from onnx import TensorProto, helper

    import qgraph.tvm as qtvm
    from qgraph.reference import Interpreter
    from test_tvm import _onnx_model

    x = (np.random.default_rng(3).standard_normal((2, 4, 6, 6)) * 3).astype(np.float32)
    n = helper.make_node
    nodes = [n("Abs", ["x"], ["ax"]), n("Add", ["ax", "eps"], ["p"]), n("Exp", ["x"], ["e"]), n("Log", ["p"], ["l"]),
             n("Sqrt", ["p"], ["s"]), n("Erf", ["x"], ["r"])]
    model = _onnx_model(nodes, [("x", TensorProto.FLOAT, [2, 4, 6, 6])], ["e", "l", "s", "r"],
                        [("eps", np.float32(0.01))])
    got = qtvm.build(model, "hexagon").run({"x": x})
    ref = Interpreter(model).run({"x": x})
    p = (np.abs(x) + np.float32(0.01)).astype(np.float64)
    exact = {"e": np.exp(x.astype(np.float64)), "l": np.log(p), "s": np.sqrt(p)}
    for k, want in exact.items():
        assert np.array_equal(got[k], want.astype(np.float32)), k
        assert np.max(np.abs(got[k].view(np.int32) - ref[k].view(np.int32))) <= 3, k  # numpy: a few ULP
    assert np.array_equal(got["s"], ref["s"]) and np.array_equal(got["r"], ref["r"])
