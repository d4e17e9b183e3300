"""qgraph.qat: fake quantization == qgraph.quant bit for bit, the graph as a torch module ==
ONNX Runtime (float) and the QDQ float simulation (quantized), training, write back, the
digits result."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qgraph  # noqa: E402
from qgraph.ort import run_ort  # noqa: E402
from qgraph.qat import QATModule, TrainConfig, train, write_back  # noqa: E402
from qgraph.qat.fake_quant import fake_quantize_bias, fake_quantize_params  # noqa: E402
from qgraph.qat.train import predict  # noqa: E402
from qgraph.quant.params import INT_TYPES, QuantParams, choose_params, dequantize, quantize, quantize_bias  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "golden")
TYPES = [t for n, t in INT_TYPES.items() if n != "int32"]


def _golden(name: str) -> tuple[str, str]:
    stem = "digits" if name == "digits_cnn" else name
    return os.path.join(GOLDEN, "models", f"{name}.onnx"), os.path.join(GOLDEN, "data", f"{stem}_calib.npz")


def _with_ties(rng, x: np.ndarray, scale: np.ndarray, axis, params) -> np.ndarray:
    """``x`` with a third of its values put exactly on k.5 steps (ties) and some far outside the range."""
    s, _ = params.broadcast(x.ndim)
    k = rng.integers(params.dtype.qmin - 3, params.dtype.qmax + 3, x.shape).astype(np.float32)
    ties = ((k + np.float32(0.5)) * s).astype(np.float32)
    pick = rng.random(x.shape)
    x = np.where(pick < 0.33, ties, x)
    x = np.where(pick > 0.95, x * 1e3, x).astype(np.float32)
    x.flat[:4] = [-1e6, 1e6, 3e38, -3e38]  # saturated at both ends, x / scale overflowing to inf
    return x


@pytest.mark.parametrize("dtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_fake_quantize_equals_qgraph_quant_bit_for_bit(dtype, symmetric, axis):
    """QuantizeLinear then DequantizeLinear in torch == qgraph.quant's numpy, every bit: every
    integer type, per tensor and per channel on each axis, symmetric and asymmetric, at ties
    (k + 0.5 steps, where a multiply-by-reciprocal fake quantize can differ) and saturated."""
    rng = np.random.default_rng(hash((dtype.name, symmetric, axis)) % 2**32)
    x = rng.normal(0, 1, (3, 4, 5)).astype(np.float32)
    if axis is None:
        params = choose_params(np.float32(-1.3), np.float32(0.9), dtype, symmetric=symmetric)
    else:
        c = x.shape[axis]
        lo = -rng.uniform(0.1, 2, c).astype(np.float32)
        hi = rng.uniform(0.1, 2, c).astype(np.float32)
        params = choose_params(lo, hi, dtype, symmetric=symmetric, axis=axis % 3)
    x = _with_ties(rng, x, params.scale, axis, params)
    want = dequantize(quantize(x, params), params)
    got = fake_quantize_params(torch.from_numpy(x), params).numpy()
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    # the test data reached both ends of the range and ties
    q = quantize(x, params).astype(np.int64)
    assert (q == dtype.qmin).any() and (q == dtype.qmax).any()


def test_fake_quantize_divides_where_torch_multiplies_by_the_reciprocal():
    """A tie x = 2.5 * s that torch's own fake_quantize rounds the other way (it multiplies by
    1/s): ours agrees with QuantizeLinear, which is the point of restating it."""
    rng = np.random.default_rng(0)
    s = rng.uniform(0.001, 0.1, 20000).astype(np.float32)
    x = (np.float32(2.5) * s).astype(np.float32)
    mismatch = []
    for xi, si in zip(x, s):
        p = QuantParams(si, 128, "uint8")
        want = dequantize(quantize(xi, p), p)
        torch_own = torch.fake_quantize_per_tensor_affine(torch.tensor(xi), float(si), 128, 0, 255).item()
        if torch_own != want:
            mismatch.append((xi, si))
            got = fake_quantize_params(torch.tensor(xi), p).item()
            assert got == want
        if len(mismatch) > 3:
            break
    assert mismatch, "no tie found where torch's reciprocal form differs (the reason for our own forward)"


def test_fake_quantize_bias_equals_quantize_bias():
    rng = np.random.default_rng(1)
    b = rng.normal(0, 3, 16).astype(np.float32)
    a, w = np.float32(0.0123), rng.uniform(1e-4, 1e-2, 16).astype(np.float32)
    q, bp = quantize_bias(b, a, w)
    want = dequantize(q, bp)
    got = fake_quantize_bias(torch.from_numpy(b), torch.tensor(a) * torch.from_numpy(w)).numpy()
    assert np.array_equal(got, want)


def test_lsq_gradients():
    """Clipped straight-through for x; LSQ's step-size gradient for the scale."""
    from qgraph.qat.fake_quant import fake_quantize

    x = torch.tensor([0.26, 1.0, -5.0, 100.0], requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    zp = torch.tensor(0.0)
    y = fake_quantize(x, s, zp, -8, 7, grad_scale=1.0)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 0.0]  # 1.0/0.1 = 10 > 7 saturates
    # inside: round(2.6) - 2.6 = 0.4; saturated: qmax - zp = 7 (twice), qmin - zp = -8
    assert s.grad.item() == pytest.approx(0.4 + 7 - 8 + 7, abs=1e-5)


GOLDEN_MODELS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(GOLDEN, "models", "*.onnx")))


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_module_equals_ort_float_and_the_qdq_simulation(name):
    """Float graph: the module == ONNX Runtime within float op order (1e-5 relative: conv/gemm
    sums in another order). QDQ graph: == ``backend="ort-sim"`` bit for bit on the golden models
    (a different float summation order could flip a rounding by one step; none does here)."""
    model, calib = _golden(name)
    ptq = qgraph.quantize(model, calib, report=False)
    feeds = dict(np.load(calib))
    want = run_ort(ptq.float_model, feeds)
    got = predict(QATModule(ptq.float_model), feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * np.abs(want[k]).max())
    sim = ptq.run(feeds, backend="ort-sim")
    got_q = predict(QATModule(ptq.qdq, ptq.float_model), feeds)
    for k in sim:
        assert np.array_equal(got_q[k], sim[k]), k


def test_module_pp_ocr_cls_equals_ort():
    """PP-OCRv4 cls (Shape / Slice / Reshape arithmetic, HardSigmoid, MatMul, Softmax): float == ORT."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    path = os.path.join(os.path.dirname(rapidocr.__file__), "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
    from qgraph.api import _load
    from qgraph.passes import registry
    from qgraph.pm import PassManager, Pipeline

    m = _load(path)
    PassManager(Pipeline(registry().parse("canonicalize,fuse"))).run(m)
    x = {"x": np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)}
    want = run_ort(m, x)
    got = predict(QATModule(m), x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


LIGHT = ("densenet121", "inception_v1", "resnet50", "shufflenet", "squeezenet", "zfnet512")


@pytest.mark.parametrize("name", LIGHT)
def test_module_light_models_equal_ort(name):
    """The onnx wheel's light models (their opset-<13 Softmax, asymmetric AveragePool pads,
    ConstantOfShape, LRN, Concat ...) as float modules == ONNX Runtime. alexnet, vgg19 and
    inception_v2 pass too (checked once by hand; left out here for their size)."""
    import onnx

    from qgraph.api import _load
    from qgraph.passes import registry
    from qgraph.pm import PassManager, Pipeline

    m = _load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx"))
    PassManager(Pipeline(registry().parse("canonicalize,fuse"))).run(m)
    inp = [v for v in m.graph.inputs if not v.is_initializer()][0]
    x = {inp.name: np.random.default_rng(0).uniform(0, 1, [d if isinstance(d, int) else 1 for d in inp.shape])
         .astype(np.float32)}
    want = run_ort(m, x)
    got = predict(QATModule(m), x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * np.abs(want[k]).max())


def _digits(fmt: str = "W4A8"):
    from qgraph.precision.formats import W4A8
    from qgraph.quant.config import QuantConfig

    cfg = W4A8.config(QuantConfig()) if fmt == "W4A8" else QuantConfig()
    return qgraph.quantize(*_golden("digits_cnn"), cfg, report=False)


def _train_set(n: int = 200):
    """The first ``n`` non-test digits (golden/generate.py's split) with labels."""
    pytest.importorskip("sklearn")
    from qgraph.testing import digits as D

    x_tr, y_tr, _, _ = D.load_split()
    return {"input": x_tr[:n]}, y_tr[:n]


def test_training_is_deterministic_and_writes_back_what_it_trained():
    """Same seed, same bits; the written-back QDQ model in ORT's float simulation == the module
    bit for bit; the L3 reference within 1 LSB of the output (its fixed-point requantization
    rounds x * M * 2^-s where the simulation rounds a float32 product); TVM == the reference."""
    torch.set_num_threads(1)
    ptq = _digits()
    feeds, labels = _train_set(64)
    states = []
    for _ in range(2):
        m = QATModule(ptq.qdq, ptq.float_model)
        train(m, feeds, labels, config=TrainConfig(epochs=2, lr=1e-3, batch_size=16, seed=3))
        states.append({k: v.clone() for k, v in m.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in m.log_scales.values())  # scales moved
    result = write_back(ptq, m, report=False)
    test = dict(np.load(os.path.join(GOLDEN, "data", "digits_test.npz")))
    x = {"input": test["input"][:64]}
    mine = predict(m, x)["logits"]
    assert np.array_equal(result.run(x, backend="ort-sim")["logits"], mine)
    ref = result.run(x)["logits"]
    from qgraph.ir.l2 import read_qdq

    out_dq = result.qdq.graph.outputs[0].producer()
    step = float(read_qdq(out_dq).scale)
    assert np.abs(ref - mine).max() <= step * 1.0001
    assert (ref == mine).mean() > 0.9
    result.build("cpu", batch_size=1)
    assert np.array_equal(result.run({"input": x["input"][:8]}, backend="tvm")["logits"], ref[:8])


def test_feature_distillation_reads_values_by_name_and_closes_their_gap():
    """TrainConfig.features: the named values (the same names in the student and the float
    teacher) join the loss as their relative squared error; training on it alone (a loss_fn of
    0 for the outputs) brings the student's value closer to float's; an unknown name is named."""
    from qgraph.qat.module import QATError
    from qgraph.qat.train import feature_loss

    torch.set_num_threads(1)
    ptq = _digits()
    feeds, _ = _train_set(64)
    student, teacher = QATModule(ptq.qdq, ptq.float_model), QATModule(ptq.float_model)
    # the last conv's output (the first conv's: its 9 int4 weights per channel barely move at this lr)
    feature = [n for n in ptq.float_model.graph if n.op_type == "Conv"][-1].outputs[0].name
    batch = {"input": torch.from_numpy(feeds["input"])}

    def gap():
        with torch.no_grad():
            return float(feature_loss(student(batch, (feature,)), teacher(batch, (feature,)), (feature,)))

    before = gap()
    assert before > 0 and feature in student(batch, (feature,)) and "logits" in student(batch, (feature,))
    zero = lambda out, target: 0.0 * out["logits"].sum()  # noqa: E731 - the features alone train
    train(student, feeds, teacher=teacher, loss_fn=zero,
          config=TrainConfig(epochs=3, lr=1e-3, batch_size=16, seed=0, features=(feature,)))
    assert gap() < 0.8 * before, (before, gap())
    with pytest.raises(QATError, match="no value named 'nope'"):
        student(batch, ("nope",))
    with pytest.raises(ValueError, match="needs the float model as teacher"):
        train(student, feeds, np.zeros(64, np.int64), config=TrainConfig(epochs=1, features=(feature,)))


def test_learned_zero_points_write_back_what_the_module_used():
    """With learned zero points (uint4 activations, where they matter most) the written-back QDQ
    model still equals the module bit for bit in ORT's simulation; the zero points moved."""
    torch.set_num_threads(1)
    from qgraph.quant.config import QuantConfig

    ptq = qgraph.quantize(*_golden("digits_cnn"), QuantConfig.from_json({"weight": {"dtype": "int4"},
                                                                         "activation": {"dtype": "uint4"}}),
                          report=False)
    feeds, labels = _train_set(96)
    m = QATModule(ptq.qdq, ptq.float_model, learn_zero_points=True)
    start = {k: v.detach().clone() for k, v in m.zero_points.items()}
    assert start
    train(m, feeds, labels, config=TrainConfig(epochs=3, lr=1e-3, batch_size=16, seed=0, scale_lr=1e-2))
    assert any(not torch.equal(torch.round(v), torch.round(start[k])) for k, v in m.zero_points.items()) or \
        any(not torch.equal(v, start[k]) for k, v in m.zero_points.items())
    result = write_back(ptq, m, report=False)
    x = {"input": dict(np.load(os.path.join(GOLDEN, "data", "digits_test.npz")))["input"][:64]}
    assert np.array_equal(result.run(x, backend="ort-sim")["logits"], predict(m, x)["logits"])


def _digits_accuracies(fmt: str, epochs: int, lr: float, scale_lr: float | None, temperature: float):
    """(float, PTQ, QAT) top-1 on the 500 held-out digits; QAT distilled from the float model on
    the first 200 non-test digits (their labels unused), seed 0."""
    from qgraph.quant.config import QuantConfig

    torch.set_num_threads(1)
    cfg = {"W4A8": {"weight": {"dtype": "int4"}},
           "W4A4": {"weight": {"dtype": "int4"}, "activation": {"dtype": "uint4"}}}[fmt]
    ptq = qgraph.quantize(*_golden("digits_cnn"), QuantConfig.from_json(cfg), report=False)
    feeds, _ = _train_set(200)
    test = dict(np.load(os.path.join(GOLDEN, "data", "digits_test.npz")))
    x, y = {"input": test["input"]}, test["label"]
    acc = lambda out: float((out["logits"].argmax(1) == y).mean())  # noqa: E731
    m = QATModule(ptq.qdq, ptq.float_model)
    train(m, feeds, None, teacher=QATModule(ptq.float_model),
          config=TrainConfig(epochs=epochs, lr=lr, batch_size=32, seed=0, temperature=temperature, scale_lr=scale_lr))
    return acc(run_ort(ptq.float_model, x)), acc(ptq.run(x)), acc(write_back(ptq, m, report=False).run(x))


def test_digits_w4a8_qat_within_half_a_point_of_float():
    """The issue's W4A8 bar on 500 held-out digits with 200 training samples: QAT within 0.5
    points of float. Since insert-qdq's bias correction, PTQ W4A8 itself reads float's 98.4%,
    so there is no room above it here: QAT must not lose more than one digit (0.2 points) to it
    (before bias correction PTQ read 98.2% and this recipe 98.6%; bench/qat_digits.py)."""
    float_acc, ptq_acc, qat_acc = _digits_accuracies("W4A8", 10, 1e-3, None, 4.0)
    assert qat_acc >= float_acc - 0.005 and qat_acc >= ptq_acc - 0.002, (float_acc, ptq_acc, qat_acc)


def test_digits_w4a4_qat_beats_ptq():
    """W4A4 (uint4 activations), where PTQ loses 1.6 points: QAT wins back more than 0.6
    (96.8% -> 98.0% here; 97.6-98.6% over seeds in bench/qat_digits.py)."""
    float_acc, ptq_acc, qat_acc = _digits_accuracies("W4A4", 30, 3e-4, 1e-2, 4.0)
    assert qat_acc > ptq_acc + 0.006, (float_acc, ptq_acc, qat_acc)


def test_cli_qat_writes_the_compile_folder(tmp_path):
    """``qgraph qat`` writes what ``qgraph compile`` writes (and qat.json), loadable by ``run``."""
    from qgraph.cli.main import main

    feeds, labels = _train_set(48)
    train_npz = tmp_path / "train.npz"
    np.savez(train_npz, input=feeds["input"], labels=labels)
    model, calib = _golden("digits_cnn")
    out = tmp_path / "out"
    assert main(["qat", model, "--calib", calib, "--train", str(train_npz), "--epochs", "2", "--batch-size", "16",
                 "--threads", "1", "--eval", os.path.join(GOLDEN, "data", "digits_test.npz"), "--patience", "1",
                 "--distill-features", "c3", "--feature-weight", "0.5", "-o", str(out)]) == 0
    for f in ("model.qdq.onnx", "model.qgraph.onnx", "model.float.onnx", "report.json", "report.md", "config.json",
              "qat.json"):
        assert (out / f).exists(), f
    md = (out / "report.md").read_text()
    assert "## Quantization-aware training" in md and "| logits | PTQ |" in md and "| logits | QAT |" in md
    assert "Quantization-aware training" in (out / "report.html").read_text()
    import json

    trained = json.loads((out / "qat.json").read_text())["train"]
    assert trained["features"] == ["c3"] and trained["feature_weight"] == 0.5
    y = tmp_path / "y.npz"
    assert main(["run", str(out), "--inputs", os.path.join(GOLDEN, "data", "digits_test.npz"), "-o", str(y)]) == 0
    assert np.load(y)["logits"].shape == (500, 10)


class _TorchFakeQuantDigits(torch.nn.Module):
    """The digits CNN as a PyTorch user writes fake-quant QAT: torch's own fake_quantize ops
    (multiply by the reciprocal), float biases, uint8 activations, per-channel int8 weights."""

    def __init__(self, float_model, calib: np.ndarray):
        super().__init__()
        consts = {n.name: [v.constant().numpy() if v is not None and v.constant() is not None else None
                           for v in n.inputs] for n in float_model.graph}
        names = ("conv1", "conv2", "conv3", "fc")
        self.w = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(np.array(consts[k][1], np.float32)))
                                         for k in names])
        self.b = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(np.array(consts[k][2], np.float32)))
                                         for k in names])
        self.ws = [(w.detach().abs().reshape(len(w), -1).amax(1) / 127).clamp_min(1e-8) for w in self.w]
        self.act = [None] * 5
        with torch.no_grad():  # activation scales from the calibration data (min/max, uint8)
            self.forward(torch.from_numpy(calib), observe=True)

    def _aq(self, i: int, x, observe: bool):
        if observe:
            hi = float(x.max().clamp_min(0))
            lo = float(x.min().clamp_max(0))
            s = max((hi - lo) / 255, 1e-8)
            self.act[i] = (s, int(round(-lo / s)))
        s, zp = self.act[i]
        return torch.fake_quantize_per_tensor_affine(x, s, zp, 0, 255)

    def forward(self, x, observe: bool = False):
        import torch.nn.functional as F

        wq = [torch.fake_quantize_per_channel_affine(w, s, torch.zeros(len(w), dtype=torch.int32), 0, -128, 127)
              for w, s in zip(self.w, self.ws)]
        x = self._aq(0, x, observe)
        for i, stride in enumerate((1, 2, 2)):
            x = self._aq(i + 1, F.relu(F.conv2d(x, wq[i], self.b[i], stride, 1)), observe)
        return self._aq(4, F.linear(x.flatten(1), wq[3], self.b[3]), observe)


def test_pytorch_qat_export_compiles_with_its_own_scales(tmp_path):
    """A QDQ ONNX from ``torch.onnx.export`` after fake-quant training (Q of float weights, float
    biases, a Flatten between a DQ and the Gemm) compiles to integer ops through fold-qat-export
    with the scales it was trained with; its reference equals the PyTorch model within one output
    LSB (PyTorch's fake quantize multiplies by the reciprocal and adds a float bias, where the
    integer program divides and adds an int32 one); TVM == the reference bit for bit."""
    import onnx

    torch.manual_seed(0)
    torch.set_num_threads(1)
    ptq = _digits("W8A8")
    calib = dict(np.load(_golden("digits_cnn")[1]))["input"]
    m = _TorchFakeQuantDigits(ptq.float_model, calib)
    feeds, labels = _train_set(64)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for s in range(0, 64, 16):
        loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(feeds["input"][s:s + 16])),
                                                 torch.from_numpy(labels[s:s + 16]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    path = str(tmp_path / "torch_qat.onnx")
    torch.onnx.export(m, (torch.from_numpy(calib[:1]),), path, input_names=["input"], output_names=["logits"],
                      opset_version=13, dynamo=False, dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    exported = onnx.load(path)
    assert "QuantizeLinear" in {n.op_type for n in exported.graph.node}
    q = qgraph.quantize(path, _golden("digits_cnn")[1], report=False)
    integer_ops = [str(n.op) for n in q.integer.graph]
    assert integer_ops.count("qgraph::QConv") == 3 and integer_ops.count("qgraph::QMatMul") == 1, integer_ops
    from qgraph.ir.l2 import read_qdq

    weight_scales = [read_qdq(n).scale for n in q.qdq.graph
                     if n.op is qgraph.ops.DequantizeLinear and n.inputs[0].constant() is not None
                     and read_qdq(n).dtype.name == "INT8"]
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(weight_scales, m.ws)) and len(weight_scales) == 4
    test = dict(np.load(os.path.join(GOLDEN, "data", "digits_test.npz")))
    x = test["input"][:64]
    with torch.no_grad():
        mine = m(torch.from_numpy(x)).numpy()
    ref = q.run({"input": x})["logits"]
    step = float(read_qdq(q.qdq.graph.outputs[0].producer()).scale)
    assert np.abs(ref - mine).max() <= step * 1.0001 and (ref == mine).mean() > 0.9
    q.build("cpu", batch_size=1)
    assert np.array_equal(q.run({"input": x[:8]}, backend="tvm")["logits"], ref[:8])


@pytest.mark.slow
def test_pp_ocr_rec_w4a8_distillation_reaches_98_percent():
    """The issue's PP-OCRv4 rec bar, without labels: 4-bit weights everywhere (PTQ decodes
    nothing: 0% of the characters), distilled from the float model on 128 rendered lines,
    8 epochs, then written back and run on the integer reference: >= 98% of 64 held-out
    lines' characters (98.24% here; float 99.74%; ``bench/qat_ocr.py --format W4A8 --train 128
    --epochs 8 --lr 1e-4 --scale-lr 1e-3 --threads 1``, about 7 minutes on one core)."""
    import onnx

    from qgraph.quant.config import QuantConfig
    from qgraph.testing import ocr

    torch.set_num_threads(1)
    path = ocr.rec_model_path()
    name = onnx.load(path, load_external_data=False).graph.input[0].name
    train_x = ocr.render_lines(ocr.sample_texts(128, seed=11))
    texts = ocr.sample_texts(64, seed=12)
    x = ocr.render_lines(texts)
    ptq = qgraph.quantize(path, {name: train_x[:32]}, QuantConfig.from_json({"weight": {"dtype": "int4"}}), report=False)
    out = ptq.float_model.graph.outputs[0].name
    module = QATModule(ptq.qdq, ptq.float_model)
    train(module, {name: train_x}, None, teacher=QATModule(ptq.float_model),
          config=TrainConfig(epochs=8, lr=1e-4, scale_lr=1e-3, batch_size=8, seed=0))
    result = write_back(ptq, module, report=False)
    accuracy = ocr.char_agreement(ocr.ctc_decode(result.run({name: x})[out]), texts)
    assert accuracy >= 0.98, accuracy
