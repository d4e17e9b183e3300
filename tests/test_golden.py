"""Golden files: regeneration is byte-stable, the digits CNN is accurate, op models are valid."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from qgraph.testing import digits
from qgraph.testing.ort import session

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "golden")
OP_MODELS = ["op_conv", "op_gemm", "op_matmul_act", "op_add_mul", "op_pool", "op_concat", "op_fallback"]


def test_generate_check():
    pytest.importorskip("sklearn")
    proc = subprocess.run([sys.executable, os.path.join(GOLDEN, "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def test_digits_cnn_float_accuracy():
    path = os.path.join(GOLDEN, "models", "digits_cnn.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 1, 8, 8]
    with np.load(os.path.join(GOLDEN, "data", "digits_test.npz")) as t:
        x, y = t["input"], t["label"]
    assert x.shape == (500, 1, 8, 8) and x.dtype == np.float32 and y.shape == (500,)
    logits = digits.run_onnx(path, x)
    assert digits.accuracy(logits, y) >= 0.97
    with np.load(os.path.join(GOLDEN, "ref", "digits_cnn.float.npz")) as ref:
        np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)
    with np.load(os.path.join(GOLDEN, "data", "digits_calib.npz")) as c:
        assert c["input"].shape == (128, 1, 8, 8) and c["input"].dtype == np.float32


def test_digits_split_is_fixed():
    pytest.importorskip("sklearn")
    x_train, y_train, x_test, y_test = digits.load_split()
    assert len(x_test) == 500 and len(x_train) + len(x_test) == 1797
    with np.load(os.path.join(GOLDEN, "data", "digits_test.npz")) as t:
        assert np.array_equal(t["input"], x_test) and np.array_equal(t["label"], y_test)


@pytest.mark.parametrize("name", OP_MODELS)
def test_op_model_files(name):
    model = onnx.load(os.path.join(GOLDEN, "models", f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = [i.name for i in model.graph.input]
    with np.load(os.path.join(GOLDEN, "data", f"{name}_calib.npz")) as c, \
            np.load(os.path.join(GOLDEN, "data", f"{name}_test.npz")) as t:
        assert sorted(c.files) == sorted(inputs) == sorted(t.files)
        assert all(len(c[k]) == 16 and len(t[k]) == 4 for k in inputs)
        feeds = {k: t[k] for k in inputs}
    got = session(model).run(None, feeds)
    with np.load(os.path.join(GOLDEN, "ref", f"{name}.float.npz")) as ref:
        assert sorted(ref.files) == sorted(o.name for o in model.graph.output)
        for o, g in zip(model.graph.output, got):
            np.testing.assert_allclose(g, ref[o.name], rtol=1e-4, atol=1e-5)


def test_xmatmul_is_exact_and_order_independent():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-3, 3, (64, 700)), rng.uniform(-1e-3, 1e-3, (700, 9))
    got = digits.xmatmul(a, b)
    # the same products summed in another order, without BLAS, give the same bits
    bits = digits._bits_for(700)
    ai, sa = digits._fixed(a, bits)
    bi, sb = digits._fixed(b, bits)
    reverse = np.ldexp(np.einsum("ik,kj->ij", ai[:, ::-1], bi[::-1], optimize=False), -(sa + sb))
    exact = np.ldexp((ai.astype(np.int64) @ bi.astype(np.int64)).astype(np.float64), -(sa + sb))
    assert np.array_equal(got, reverse) and np.array_equal(got, exact)
    np.testing.assert_allclose(got, a @ b, rtol=0, atol=1e-6 * np.abs(a @ b).max())  # ~21 bits per operand
    s = rng.uniform(-1, 1, (4096, 8))
    assert np.array_equal(digits.xsum(s, 0), digits.xsum(s[::-1], 0))


def test_exp_matches_numpy():
    x = -np.linspace(0, 50, 1001)
    np.testing.assert_allclose(digits._exp_nonpos(x), np.exp(x), rtol=1e-14, atol=0)


_TRAIN_1_EPOCH = """
import hashlib, numpy as np
from qgraph.testing import digits
x, y, _, _ = digits.load_split()
p = digits.train(x, y, epochs=1)
print(hashlib.sha256(b"".join(np.ascontiguousarray(p[k]).tobytes() for k in sorted(p))).hexdigest())
"""


def test_training_is_independent_of_blas_kernels():
    """Training gives the same bits with other OpenBLAS kernels (Prescott: SSE3 dgemm, thread
    counts) and numpy's AVX2 / FMA3 loops disabled, although plain float dgemm changes bits."""
    pytest.importorskip("sklearn")
    hashes = set()
    for extra in ({"OPENBLAS_NUM_THREADS": "1"},
                  {"OPENBLAS_NUM_THREADS": "2", "OPENBLAS_CORETYPE": "Prescott",
                   "NPY_DISABLE_CPU_FEATURES": "AVX2,FMA3"}):
        env = {**os.environ, "PYTHONWARNINGS": "ignore", **extra}
        proc = subprocess.run([sys.executable, "-c", _TRAIN_1_EPOCH], capture_output=True, text=True, env=env,
                              timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        hashes.add(proc.stdout.strip().splitlines()[-1])
    assert len(hashes) == 1
