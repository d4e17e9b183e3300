"""Regenerate the files under golden/ deterministically.

    python golden/generate.py [--check]

``--check`` regenerates into a temporary folder and exits 1 if any file would differ
(tests/test_golden.py runs it). Never edit the generated files by hand.

Files (every ``.npz`` holds one array per input or output name, samples on axis 0):

- ``models/example_cnn.onnx``, ``data/example_cnn_calib.npz``: the bundled example (untrained).
- ``models/digits_cnn.onnx``: a small CNN trained on scikit-learn's digits, bit-reproducibly
  (``qgraph/testing/digits.py``); ``data/digits_calib.npz`` (``input``: 128 training images),
  ``data/digits_test.npz`` (``input``, ``label``: 500 held-out images).
- ``models/op_<ops>.onnx``: small float models covering the ops a quantizer lowers to integer
  ops (op_conv, op_gemm, op_matmul_act, op_add_mul, op_pool, op_concat, op_fallback), with
  ``data/op_<ops>_calib.npz`` (16 samples) and ``data/op_<ops>_test.npz`` (4 samples).
- ``ref/<model>.float.npz``: ONNX Runtime float outputs on the test inputs, by output name.
- ``ref/<model>.int.npz``: integer golden outputs on the test inputs (see ``integer_outputs``),
  only once the quantizer exists.
"""

from __future__ import annotations

import argparse
import filecmp
import io
import os
import sys
import tempfile

# Training uses exact integer products (see qgraph/testing/digits.py), so the BLAS thread count
# cannot change a bit; one thread is just faster for these tiny matrices on a busy machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # qgraph.testing.digits, without an install
    sys.path.insert(0, os.path.dirname(HERE))


def example_cnn() -> onnx.ModelProto:
    """A small float CNN as exporters write them: Conv / BatchNormalization / Relu blocks,
    Identity and inference Dropout nodes, and a dead branch, on 1x8x8 inputs, 10 classes.
    The bundled example for ``qgraph opt``."""
    rng = np.random.default_rng(20261123)

    def init(name: str, *shape: int, scale: float = 0.2) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("conv1.w", 8, 1, 3, 3), init("conv1.b", 8),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn1.scale"),
        init("bn1.bias", 8), init("bn1.mean", 8),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn1.var"),
        init("conv2.w", 16, 8, 3, 3), init("conv2.b", 16),
        init("fc.w", 16, 10), init("fc.b", 10),
    ]
    nodes = [
        helper.make_node("Identity", ["input"], ["input_copy"], name="input_identity"),
        helper.make_node("Conv", ["input_copy", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Exp", ["r2"], ["unused_exp"], name="dead_branch"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Dropout", ["flat"], ["drop"], name="dropout"),
        helper.make_node("MatMul", ["drop", "fc.w"], ["mm"], name="fc_matmul"),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"], name="fc_add"),
    ]
    graph = helper.make_graph(
        nodes, "example_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qgraph-golden")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def example_calibration_data() -> bytes:
    """64 calibration samples for the example CNN: smooth random 8x8 images in [0, 1]."""
    rng = np.random.default_rng(20261124)
    coarse = rng.uniform(0, 1, (64, 1, 4, 4))
    images = np.clip(coarse.repeat(2, axis=2).repeat(2, axis=3) + rng.normal(0, 0.05, (64, 1, 8, 8)), 0, 1)
    buf = io.BytesIO()
    np.savez(buf, input=images.astype(np.float32))
    return buf.getvalue()


# ----------------------------------------------------------------------------- helpers

def _npz(**arrays: np.ndarray) -> bytes:
    """``np.savez`` bytes (stored zip entries with numpy's fixed 1980 timestamps: reproducible)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _float_outputs(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime float outputs (CPU EP, one thread), keyed by output name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def integer_outputs(model_path: str, calib_path: str, inputs: dict[str, np.ndarray]) -> dict | None:
    """The integer golden outputs of a model for the fixed quantization recipe, or None.

    The hook for the quantizer: it calls ``qgraph.api.golden_integer_outputs(model_path,
    calib_path, inputs)``, which should quantize the float model at ``model_path`` with the
    calibration ``.npz`` at ``calib_path`` (one array per input name) using the fixed golden
    recipe, run the L3 integer program in the numpy reference interpreter on ``inputs`` (one
    array per input name, samples on axis 0) and return ``{output name: array}``.

    Returns None (and no ``ref/<name>.int.npz`` is written or checked) while ``qgraph.api`` or
    that function does not exist yet or cannot be imported.
    """
    try:
        import qgraph.api as api
    except ImportError:  # no quantizer (yet), or one of its modules is missing
        return None
    fn = getattr(api, "golden_integer_outputs", None)
    if fn is None:
        return None
    return {k: np.asarray(v) for k, v in fn(model_path, calib_path, inputs).items()}


class Golden:
    """Collects the files of one regeneration: ``rel path -> bytes``, written under ``root``."""

    def __init__(self, root: str):
        self.root = root
        self.files: dict[str, bytes] = {}

    def add(self, rel: str, data: bytes) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.files[rel] = data
        return path

    def model_set(self, name: str, model: onnx.ModelProto, calib: dict[str, np.ndarray],
                  test: dict[str, np.ndarray], extra_test: dict[str, np.ndarray] | None = None) -> None:
        """``models/<name>.onnx``, ``data/<calib>``, ``data/<test>``, ``ref/<name>.float.npz``
        (ONNX Runtime on the test inputs) and, when the quantizer exists, ``ref/<name>.int.npz``."""
        blob = model.SerializeToString()
        model_path = self.add(f"models/{name}.onnx", blob)
        stem = name[:-4] if name.endswith("_cnn") else name  # digits_cnn -> digits_calib.npz
        calib_path = self.add(f"data/{stem}_calib.npz", _npz(**calib))
        self.add(f"data/{stem}_test.npz", _npz(**test, **(extra_test or {})))
        self.add(f"ref/{name}.float.npz", _npz(**_float_outputs(blob, test)))
        ints = integer_outputs(model_path, calib_path, test)
        if ints is not None:
            self.add(f"ref/{name}.int.npz", _npz(**ints))


# ----------------------------------------------------------------------------- digits CNN

def digits(g: Golden) -> None:
    """The trained digits CNN (qgraph.testing.digits), 128 calibration and 500 held-out samples."""
    from qgraph.testing import digits as D

    x_train, y_train, x_test, y_test = D.load_split()
    params = D.train(x_train, y_train)
    g.model_set("digits_cnn", D.to_onnx(params), {"input": D.calibration_samples(x_train)},
                {"input": x_test}, {"label": y_test})


# ----------------------------------------------------------------------------- op models

def _op_model(name: str, nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qgraph-golden")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


class _Weights:
    """Seeded uniform weights (uniform draws are exact on every CPU; normal draws call libm)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.inits: list[TensorProto] = []

    def __call__(self, name: str, *shape: int, scale: float | None = None, low: float | None = None) -> str:
        if scale is None:  # He-uniform on the fan-in
            scale = float(np.sqrt(6.0 / max(1, int(np.prod(shape[1:])))))
        lo = -scale if low is None else low
        self.inits.append(numpy_helper.from_array(self.rng.uniform(lo, scale, shape).astype(np.float32), name))
        return name

    def data(self, n: int, *shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
        return self.rng.uniform(low, high, (n, *shape)).astype(np.float32)


N_CALIB_OP, N_TEST_OP = 16, 4


def _split(w: _Weights, **specs) -> tuple[dict, dict]:
    """Calibration (16) and test (4) samples per input: ``name=(shape, low, high)``."""
    calib = {k: w.data(N_CALIB_OP, *shape, low=lo, high=hi) for k, (shape, lo, hi) in specs.items()}
    test = {k: w.data(N_TEST_OP, *shape, low=lo, high=hi) for k, (shape, lo, hi) in specs.items()}
    return calib, test


def op_conv(g: Golden) -> None:
    """Conv (pads, stride 2) + Relu, depthwise Conv + Clip(0, 6), grouped 1x1 Conv."""
    w = _Weights(301)
    nodes = [
        helper.make_node("Conv", ["x", w("c1.w", 8, 3, 3, 3), w("c1.b", 8, scale=0.1)], ["c1"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", w("dw.w", 8, 1, 3, 3), w("dw.b", 8, scale=0.1)], ["c2"], name="depthwise",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "clip.min", "clip.max"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", w("gc.w", 8, 4, 1, 1), w("gc.b", 8, scale=0.1)], ["y"], name="grouped",
                         kernel_shape=[1, 1], group=2),
    ]
    w.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "clip.min"),
                numpy_helper.from_array(np.array(6.0, np.float32), "clip.max")]
    calib, test = _split(w, x=((3, 16, 16), -1.0, 1.0))
    g.model_set("op_conv", _op_model("op_conv", nodes, [_vi("x", 3, 16, 16)], [_vi("y", 8, 8, 8)], w.inits),
                calib, test)


def op_gemm(g: Golden) -> None:
    """Gemm (transB=1, bias) then MatMul with a weight and an Add of a bias."""
    w = _Weights(302)
    nodes = [
        helper.make_node("Gemm", ["x", w("fc1.w", 24, 16), w("fc1.b", 24, scale=0.1)], ["h"], name="gemm", transB=1),
        helper.make_node("MatMul", ["h", w("fc2.w", 24, 8, scale=0.3)], ["y"], name="matmul"),
    ]
    calib, test = _split(w, x=((16,), -2.0, 2.0))
    g.model_set("op_gemm", _op_model("op_gemm", nodes, [_vi("x", 16)], [_vi("y", 8)], w.inits), calib, test)


def op_matmul_act(g: Golden) -> None:
    """MatMul of two activations (batched: [N, 6, 8] x [N, 8, 5])."""
    w = _Weights(303)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="matmul")]
    calib, test = _split(w, a=((6, 8), -1.0, 1.0), b=((8, 5), -0.5, 3.0))
    g.model_set("op_matmul_act", _op_model("op_matmul_act", nodes, [_vi("a", 6, 8), _vi("b", 8, 5)],
                                           [_vi("y", 6, 5)], w.inits), calib, test)


def op_add_mul(g: Golden) -> None:
    """Add and Mul of two activations, then Add of a per-channel constant."""
    w = _Weights(304)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "b"], ["m"], name="mul"),
        helper.make_node("Add", ["m", w("bias", 4, 1, 1, scale=2.0)], ["y"], name="add_const"),
    ]
    calib, test = _split(w, a=((4, 6, 6), -1.0, 1.0), b=((4, 6, 6), 0.0, 4.0))
    g.model_set("op_add_mul", _op_model("op_add_mul", nodes, [_vi("a", 4, 6, 6), _vi("b", 4, 6, 6)],
                                        [_vi("y", 4, 6, 6)], w.inits), calib, test)


def op_pool(g: Golden) -> None:
    """AveragePool (3x3, stride 2, pads 1, count_include_pad=0), MaxPool 2x2, GlobalAveragePool."""
    w = _Weights(305)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["avg"], name="avgpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("MaxPool", ["avg"], ["max"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["max"], ["gap"], name="gap"),
    ]
    calib, test = _split(w, x=((4, 9, 9), -1.0, 3.0))
    g.model_set("op_pool", _op_model("op_pool", nodes, [_vi("x", 4, 9, 9)],
                                     [_vi("avg", 4, 5, 5), _vi("max", 4, 2, 2), _vi("gap", 4, 1, 1)], w.inits),
                calib, test)


def op_concat(g: Golden) -> None:
    """Concat of two conv branches whose ranges differ ~100x, then a 1x1 Conv."""
    w = _Weights(306)
    nodes = [
        helper.make_node("Conv", ["x", w("small.w", 4, 4, 3, 3, scale=0.02), w("small.b", 4, scale=0.01)], ["s"],
                         name="conv_small", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", w("big.w", 4, 4, 3, 3, scale=2.0), w("big.b", 4, scale=1.0)], ["b"],
                         name="conv_big", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["s", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", w("mix.w", 6, 8, 1, 1), w("mix.b", 6, scale=0.1)], ["y"], name="conv_mix",
                         kernel_shape=[1, 1]),
    ]
    calib, test = _split(w, x=((4, 8, 8), -1.0, 1.0))
    g.model_set("op_concat", _op_model("op_concat", nodes, [_vi("x", 4, 8, 8)], [_vi("y", 6, 8, 8)], w.inits),
                calib, test)


def op_fallback(g: Golden) -> None:
    """Sigmoid, Softmax (over channels) and HardSwish between convs: ops that stay float."""
    w = _Weights(307)

    def conv(i: int, x: str, y: str, cin: int, cout: int) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, w(f"c{i}.w", cout, cin, 3, 3), w(f"c{i}.b", cout, scale=0.1)], [y],
                                name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    nodes = [
        conv(1, "x", "c1", 4, 8),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid"),
        conv(2, "s1", "c2", 8, 8),
        helper.make_node("Softmax", ["c2"], ["s2"], name="softmax", axis=1),
        conv(3, "s2", "c3", 8, 8),
        helper.make_node("HardSwish", ["c3"], ["s3"], name="hardswish"),
        conv(4, "s3", "y", 8, 4),
    ]
    calib, test = _split(w, x=((4, 8, 8), -1.0, 1.0))
    g.model_set("op_fallback", _op_model("op_fallback", nodes, [_vi("x", 4, 8, 8)], [_vi("y", 4, 8, 8)], w.inits),
                calib, test)


OP_MODELS = [op_conv, op_gemm, op_matmul_act, op_add_mul, op_pool, op_concat, op_fallback]


def generate(root: str) -> list[str]:
    """Write every golden file under ``root``; return their paths relative to it."""
    g = Golden(root)
    g.add("models/example_cnn.onnx", example_cnn().SerializeToString())
    g.add("data/example_cnn_calib.npz", example_calibration_data())
    for make in OP_MODELS:
        make(g)
    digits(g)
    return list(g.files)


def same_file(new: str, old: str) -> bool:
    """Whether a regenerated file matches the committed one.

    Byte equality, except for ``ref/*.float.npz``: ONNX Runtime's float kernels (MLAS) are
    chosen by CPU (AVX2 / AVX-512 / FMA) and may change the last bits, so float references
    compare by key, dtype, shape and ``allclose(rtol=1e-4, atol=1e-5)``.
    """
    if not os.path.exists(old):
        return False
    if filecmp.cmp(new, old, shallow=False):
        return True
    if not new.endswith(".float.npz"):
        return False
    with np.load(new) as a, np.load(old) as b:
        if sorted(a.files) != sorted(b.files):
            return False
        return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                   and np.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a.files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if regenerating would change a file")
    args = ap.parse_args(argv)
    if not args.check:
        for rel in generate(HERE):
            print(f"wrote golden/{rel}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        differ = [rel for rel in generate(tmp)
                  if not same_file(os.path.join(tmp, rel), os.path.join(HERE, rel))]
    for rel in differ:
        print(f"golden/{rel} differs from what golden/generate.py produces; rerun it and commit", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
