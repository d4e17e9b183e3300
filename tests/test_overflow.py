"""Overflow analysis: the bounds, the report, and evidence from ONNX Runtime's AVX2 kernels.

The evidence tests quantize small models the ORT way (``quantize_static``, QDQ, per-channel
int8 weights, uint8 activations, MinMax calibration), run them in ORT's default CPU session
(which fuses QDQ into u8 x s8 kernels) and in the QDQ simulation
(``session.disable_quant_qdq=1``), and check on a worst-case input and on random inputs that

- the difference is many LSB exactly when the analysis flags int16 pair saturation, and at
  most 1 LSB when it proves the pairs exact;
- an emulation of the kernel as the analysis models it (saturating adjacent pairs in the
  MLAS reduction order) predicts ORT's actual output within 1 LSB, everywhere.
"""

import os
import zlib

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import qgraph
from qgraph.calib import Interval, RangeMap
from qgraph.pm.analysis import AnalysisManager
from qgraph.quant import QuantParams, quantize
from qgraph.analysis.overflow import OverflowAnalysis, overflow_report
from qgraph.quant.overflow import OverflowScheme, accumulator_bounds, pair_sum_bounds


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
AVX2_NO_VNNI = "avx2" in FLAGS and not (FLAGS & {"avx512_vnni", "avx_vnni", "avx512vnni", "amx_int8"})


# -- the bounds ----------------------------------------------------------------------------------

def test_pair_and_accumulator_bounds_by_hand():
    w = np.array([[127, 127, -127, 5], [100, -100, 0, 0], [127, 127, 127, 0]])
    lo, hi = pair_sum_bounds(w, 0, 255)
    assert hi.tolist() == [[64770, 1275], [25500, 0], [64770, 32385]]
    assert lo.tolist() == [[0, -32385], [-25500, 0], [0, 0]]
    lo, hi = pair_sum_bounds(w[:, :3], 0, 128)  # odd K: padded with a zero weight
    assert hi[:, 1].tolist() == [0, 0, 16256] and hi[0, 0] == 32512
    # zero-point corrected accumulator: x - 128 in [-128, 127]
    acc_lo, acc_hi = accumulator_bounds(w, np.zeros(3), 0, 255, 128, bias=np.array([1, 0, -1]))
    # positive weights peak at x - 128 = 127, negative ones at -128
    assert acc_hi.tolist() == [2 * 127 * 127 + 127 * 128 + 5 * 127 + 1, 100 * 127 + 100 * 128, 3 * 127 * 127 - 1]
    assert acc_lo.tolist() == [-2 * 127 * 128 - 127 * 127 - 5 * 128 + 1, -(100 * 128 + 100 * 127), -3 * 127 * 128 - 1]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(0, 255), st.integers(0, 255), st.randoms(use_true_random=False))
def test_bounds_are_sound_and_attained(k, a, b, rnd):
    a, b = min(a, b), max(a, b)
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    w = rng.integers(-128, 128, (3, k))
    lo, hi = pair_sum_bounds(w, a, b)
    x = rng.integers(a, b + 1, (50, k))
    wp = np.pad(w, ((0, 0), (0, k % 2)))
    xp = np.pad(x, ((0, 0), (0, k % 2)))
    sums = xp[:, None, 0::2] * wp[None, :, 0::2] + xp[:, None, 1::2] * wp[None, :, 1::2]
    assert np.all(sums >= lo) and np.all(sums <= hi)
    corner = np.where(wp > 0, b, a)  # the maximizing input of every row
    assert np.array_equal(corner[:, 0::2] * wp[:, 0::2] + corner[:, 1::2] * wp[:, 1::2], hi)
    zp = int(rng.integers(a, b + 1))
    acc_lo, acc_hi = accumulator_bounds(w, np.zeros(3), a, b, zp)
    acc = (x - zp) @ w.T
    assert np.all(acc >= acc_lo) and np.all(acc <= acc_hi)
    assert np.array_equal(((np.where(w > 0, b, a) - zp) * w).sum(axis=1), acc_hi)


# -- models ---------------------------------------------------------------------------------------

def conv_model(w, b=None, pads=(1, 1, 1, 1), group=1, hw=5):
    cin = w.shape[1] * group
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], pads=list(pads), group=group, name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_model(w, b=None, op="Gemm", trans_b=0):
    k = w.shape[1] if trans_b else w.shape[0]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        inputs.append("b")
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    node = helper.make_node(op, inputs, ["y"], name="mm", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_report_fields_and_k_order(tmp_path):
    # Conv with 2 input channels: channel 0 all +1, channel 1 all -1. MLAS pairs the two channels
    # at each kernel position (+127, -127): exact. Cin-major pairs two taps of one channel: saturates.
    w = np.ones((16, 2, 3, 3), np.float32)
    w[:, 1] = -1.0
    model = _load(conv_model(w), tmp_path)
    ranges = RangeMap({"x": Interval(0.0, 1.0)})
    r = overflow_report(model, ranges)["conv"]
    assert r.status == "ok" and r.kernel == "u8s8-pairs" and r.channels == 16 and r.reduction == 18
    assert r.q_range == (0, 255) and r.kernel_x_range == (0, 255)
    assert r.avx2_u8s8_pairs and r.worst_pair_sum in (32385, -32385) and r.saturating_pairs == 0
    assert r.int32_accumulator and r.accumulator == (-9 * 127 * 255, 9 * 127 * 255) and r.ort_avx2_exact
    c = overflow_report(model, ranges, OverflowScheme(k_order="cin-major"))["conv"]
    # pairs (0,1)..(6,7) add +127s, (10,11)..(16,17) add -127s; (8,9) mixes the channels
    assert not c.avx2_u8s8_pairs and c.worst_pair_sum == 64770 and c.pair_range == (-64770, 64770)
    assert c.saturating_pairs == 16 * 8 and c.saturating_channels == tuple(range(16))
    d = r.as_dict()
    assert d["weight_params"]["dtype"] == "int8" and d["q_range"] == [0, 255]


def _load(onnx_model, folder) -> qgraph.Model:
    path = os.path.join(str(folder), "m.onnx")
    onnx.save(onnx_model, path)
    return qgraph.load(path)


def test_unknown_ranges_scale_ranges_and_the_analysis(tmp_path):
    w = np.ones((4, 3), np.float32)
    model = _load(gemm_model(w), tmp_path)
    r = overflow_report(model, {})["mm"]
    assert r.status == "unknown" and "no range for activation 'x'" in r.reason and not r.ort_avx2_exact
    r = overflow_report(model, {"x": Interval(-np.inf, np.inf)})["mm"]
    assert r.status == "unknown" and "unbounded" in r.reason
    # scale from calibration [0, 1], values proven in [0, 0.5]: x_q <= 127 (0.5 / float32(1/255)
    # is just below 127.5), and 2 * 127 * 127 < 32767
    r = overflow_report(model, {"x": (0.0, 0.5)}, scale_ranges={"x": (0.0, 1.0)})["mm"]
    assert r.q_range == (0, 127) and r.avx2_u8s8_pairs and r.worst_pair_sum == 2 * 127 * 127
    # unbounded values with a known scale: QuantizeLinear saturates, so the type's range holds
    r = overflow_report(model, {}, scale_ranges={"x": (0.0, 1.0)})["mm"]
    assert r.q_range == (0, 255) and not r.avx2_u8s8_pairs
    # reduce_range (7-bit weights, |w| <= 64): exact
    r = overflow_report(model, {"x": (0.0, 1.0)}, OverflowScheme(reduce_range=True))["mm"]
    assert r.avx2_u8s8_pairs and r.worst_pair_sum == 2 * 64 * 255
    # int8 activations enter the kernel as x + 128
    r = overflow_report(model, {"x": (0.0, 1.0)}, OverflowScheme(activation="int8"))["mm"]
    assert r.activation_params.zero_point == -128 and r.q_range == (-128, 127)
    assert r.kernel_x_range == (0, 255) and not r.avx2_u8s8_pairs
    # the analysis reads model.calibration
    am = AnalysisManager(model)
    assert am.get(OverflowAnalysis)["mm"].status == "unknown"
    model.calibration = RangeMap({"x": Interval(0.0, 1.0)})
    am = AnalysisManager(model)
    assert am.get(OverflowAnalysis)["mm"].worst_pair_sum == 64770


def test_padding_reads_the_zero_point(tmp_path):
    # input range [2, 6]: scale 6/255, zero point 0, q in [85, 255]; padded taps read 0
    w = np.ones((1, 1, 3, 3), np.float32)
    model = _load(conv_model(w, pads=(1, 1, 1, 1)), tmp_path)
    r = overflow_report(model, {"x": (2.0, 6.0)})["conv"]
    assert r.q_range == (85, 255) and r.kernel_x_range == (0, 255) and r.accumulator[0] == 0
    model = _load(conv_model(w, pads=(0, 0, 0, 0)), tmp_path)
    r = overflow_report(model, {"x": (2.0, 6.0)})["conv"]
    assert r.kernel_x_range == (85, 255) and r.accumulator[0] == 9 * 85 * 127
    assert r.kernel == "depthwise-int32" and r.ort_avx2_exact  # one channel in, one out


def conv_transpose_model(w, b=None, hw=4, **attrs):
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="deconv", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, w.shape[0], hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_transpose_is_bounded_per_stride_phase(tmp_path):
    """k = 2, s = 2 (PP-OCR's DB head): each output position is reached by one tap per input
    channel, so the accumulator is bounded by C terms, not C * 4; with s = 1 every tap reaches
    every position. ORT runs QDQ ConvTranspose in float: kernel "float", nothing saturates."""
    w = np.ones((8, 3, 2, 2), np.float32)  # [C, M, k, k]
    ranges = RangeMap({"x": Interval(0.0, 1.0)})
    r = overflow_report(_load(conv_transpose_model(w, strides=[2, 2]), tmp_path), ranges)["deconv"]
    assert r.status == "ok" and r.op_type == "ConvTranspose" and r.kernel == "float" and r.ort_avx2_exact
    assert r.channels == 3 * 4 and r.reduction == 8  # 3 output channels x 4 phases, one tap of 8 channels
    assert r.weight_params.axis == 1 and r.accumulator == (0, 8 * 127 * 255) and r.int32_accumulator
    r1 = overflow_report(_load(conv_transpose_model(w, strides=[1, 1]), tmp_path), ranges)["deconv"]
    assert r1.channels == 3 and r1.reduction == 8 * 4 and r1.accumulator == (0, 4 * 8 * 127 * 255)
    # k = 3, s = 2: phases of 1, 2, 2 and 4 taps; a bias per output channel adds to each of its phases
    w3 = np.ones((8, 2, 3, 3), np.float32)
    b = np.array([1.0, -1.0], np.float32)
    r3 = overflow_report(_load(conv_transpose_model(w3, b, strides=[2, 2], pads=[1, 1, 1, 1]), tmp_path),
                         ranges)["deconv"]
    assert r3.channels == 2 * 4 and r3.reduction == 8 * 4
    bias = -r3.accumulator[0]  # channel 1's -1.0 in int32 units; channel 0's +1.0 tops the widest phase
    assert bias > 0 and r3.accumulator[1] == 8 * 4 * 127 * 255 + bias
    # grouped: per tensor (axis 1 is the channel within a group), rows per group
    rg = overflow_report(_load(conv_transpose_model(np.ones((8, 3, 2, 2), np.float32), strides=[2, 2], group=2),
                               tmp_path), ranges)["deconv"]
    assert rg.weight_params.axis is None and rg.channels == 6 * 4 and rg.reduction == 4


def test_conv_transpose_in_a_qdq_model_reads_the_zero_point_between_inputs(tmp_path):
    """From the QDQ model (weights per channel on axis 1): input range [2, 6] is uint8 q in
    [85, 255] with zero point 0, and an output position between inputs reads the zero point
    (no tap reaches it), so the accumulator's low end is 0, not 85 * the weights."""
    from qgraph.api import quantize

    w = np.full((4, 2, 3, 3), 0.5, np.float32)
    model = _load(conv_transpose_model(w, strides=[2, 2]), tmp_path)
    feeds = [{"x": np.random.default_rng(i).uniform(2.0, 6.0, (1, 4, 4, 4)).astype(np.float32)} for i in range(4)]
    q = quantize(model, feeds, report=False, show_progress=False)
    (facts,) = overflow_report(q.qdq, {"x": (2.0, 6.0)}).values()
    assert facts.status == "ok" and facts.op_type == "ConvTranspose" and facts.weight_params.axis == 1
    assert facts.q_range == (85, 255) and facts.activation_params.zero_point == 0
    assert facts.accumulator == (0, 4 * 4 * 127 * 255)  # the widest phase: 2 x 2 taps of 4 channels


# -- ORT evidence ---------------------------------------------------------------------------------

import onnxruntime as ort
import onnxruntime.quantization as quantization


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, arrays):
        self._it = iter([{"x": a} for a in arrays])

    def get_next(self):
        return next(self._it, None)


def _init(model: onnx.ModelProto, name: str):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _im2col_mlas(xq: np.ndarray, kh: int, kw: int, pads, zp: int) -> np.ndarray:
    """[Ho*Wo, kh*kw*C] patches of one CHW image in MLAS order: kernel position major, channel minor."""
    pt, pl, pb, pr = pads[0], pads[1], pads[2], pads[3]
    xp = np.pad(xq, ((0, 0), (pt, pb), (pl, pr)), constant_values=zp)
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    cols = np.stack([xp[:, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)])  # [S, C, Ho, Wo]
    return cols.transpose(2, 3, 0, 1).reshape(ho * wo, -1)


def _emulate(x_u8: np.ndarray, w_rows: np.ndarray, x_zp_u8: int, bias, depthwise: bool) -> tuple:
    """(exact, as-AVX2-computes) int32 accumulators [P, N] for kernel-domain uint8 inputs [P, K]."""
    x = x_u8.astype(np.int64)
    w = w_rows.astype(np.int64)
    exact = (x - x_zp_u8) @ w.T + bias
    if depthwise:
        return exact, exact
    if w.shape[1] % 2:
        x, w = np.pad(x, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
    pairs = x[:, None, 0::2] * w[None, :, 0::2] + x[:, None, 1::2] * w[None, :, 1::2]
    loss = (pairs - np.clip(pairs, -32768, 32767)).sum(axis=2)
    return exact, exact - loss


def _requant(acc, sx, sw, sy, zy, t):
    m = (np.float32(sx) * sw.astype(np.float32) / np.float32(sy)).astype(np.float32)
    return np.clip(np.rint(acc.astype(np.float32) * m) + zy, t.qmin, t.qmax).astype(np.int64)


CASES = {
    # name: (kind, shape, weight pattern, scheme options, saturation expected)
    "conv3x3-cin3-saturates": ("conv", (8, 3, 3, 3), "same-sign", {}, True),
    "conv3x3-cin8-convsym-saturates": ("conv", (16, 8, 3, 3), "same-sign", {}, True),
    "conv3x3-cin8-reduce-range-exact": ("conv", (16, 8, 3, 3), "same-sign", {"reduce_range": True}, False),
    "conv3x3-cin4-alternating-exact": ("conv", (16, 4, 3, 3), "alternating-channels", {}, False),
    "conv3x3-cin1-cout8-saturates": ("conv", (8, 1, 3, 3), "same-sign", {}, True),
    "conv-depthwise-exact": ("depthwise", (8, 1, 3, 3), "same-sign", {}, False),
    "conv3x3-int8-activations-saturate": ("conv", (16, 4, 3, 3), "same-sign", {"activation": "int8"}, True),
    "conv3x3-cin8-values-in-half-the-range-exact": ("conv", (16, 8, 3, 3), "same-sign", {"values_hi": 0.5}, False),
    "gemm-saturates": ("gemm", (24, 10), "same-sign", {}, True),
    "gemm-gaussian-weights-saturates": ("gemm", (24, 10), "gaussian", {}, True),
    "gemm-gaussian-weights-reduce-range-exact": ("gemm", (24, 10), "gaussian", {"reduce_range": True}, False),
    "matmul-saturates": ("matmul", (24, 10), "same-sign", {}, True),
    "matmul-reduce-range-exact": ("matmul", (24, 10), "same-sign", {"reduce_range": True}, False),
}


def _weights(shape, pattern, rng):
    mag = rng.uniform(0.7, 1.0, shape)
    if pattern == "same-sign":  # large weights, mostly positive: adjacent pairs add up
        sign = np.where(rng.random(shape) < 0.85, 1.0, -1.0)
    elif pattern == "alternating-channels":  # input channels alternate sign: MLAS pairs never add up
        sign = np.ones(shape)
        sign[:, 1::2] = -1.0
        sign *= np.where(rng.random((shape[0], 1, 1, 1)) < 0.5, 1.0, -1.0)
    else:  # small gaussian weights: per-channel scaling puts one at +-127, the rest far below
        return rng.standard_normal(shape).astype(np.float32) * 0.1
    return (mag * sign).astype(np.float32)


def _build(kind, shape, pattern, rng):
    w = _weights(shape, pattern, rng)
    if kind in ("conv", "depthwise"):
        b = rng.uniform(-0.5, 0.5, shape[0]).astype(np.float32)
        group = shape[0] if kind == "depthwise" else 1
        return conv_model(w, b, group=group), w, group
    if kind == "gemm":
        return gemm_model(w, rng.uniform(-0.5, 0.5, shape[1])), w, 1
    return gemm_model(w, op="MatMul"), w, 1


def _worst_inputs(kind, w_q, group, lo, hi, shape_x, u_range, rng):
    """Inputs that drive the pairs of the channels that saturate most to their maxima / minima."""
    if kind in ("conv", "depthwise"):
        cout, cin_g = w_q.shape[:2]
        rows = w_q.reshape(cout, cin_g, -1).transpose(0, 2, 1).reshape(cout, -1)
    else:
        rows = w_q.T
    p_lo, p_hi = pair_sum_bounds(rows, *u_range)
    over = np.clip(p_hi - 32767, 0, None).sum(axis=1)
    under = np.clip(-32768 - p_lo, 0, None).sum(axis=1)
    picks = [(int(np.argmax(over)), 1), (int(np.argmax(under)), -1)]
    if kind in ("conv", "depthwise"):
        out = []
        for n, sign in picks:
            x = rng.uniform(lo, hi, shape_x).astype(np.float32)
            c0 = (n // (cout // group)) * cin_g
            x[0, c0:c0 + cin_g, 1:4, 1:4] = np.where(sign * w_q[n] > 0, hi, lo)  # output pixel (2, 2)
            out.append(x)
        return out
    xs = [np.where(sign * w_q[:, n] > 0, hi, lo) for n, sign in picks]
    return [np.stack(xs + [rng.uniform(lo, hi, w_q.shape[0]) for _ in range(2)]).astype(np.float32)]


def run_case(name, tmp_path):
    kind, shape, pattern, opts, _ = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    fmodel, w, group = _build(kind, shape, pattern, rng)
    lo, hi = (-1.0, 1.0) if opts.get("activation") == "int8" else (0.0, 1.0)
    values_hi = opts.get("values_hi", hi)  # inputs at run time may stay below the calibrated maximum
    shape_x = (1, shape[1] * group, 5, 5) if kind in ("conv", "depthwise") else (4, shape[0])
    scheme = OverflowScheme(activation=opts.get("activation", "uint8"), reduce_range=opts.get("reduce_range", False))

    # the analysis, from the float model: scales from the calibrated range, values in [lo, values_hi]
    model = _load(fmodel, tmp_path)
    report = overflow_report(model, RangeMap({"x": Interval(lo, values_hi)}), scheme,
                             scale_ranges=RangeMap({"x": Interval(lo, hi, "calibration")}))
    node = report["conv" if kind in ("conv", "depthwise") else "mm"]
    w_q = quantize(w, node.weight_params)

    # quantize the ORT way; calibration spans [lo, hi] exactly and includes the worst cases
    calib = [rng.uniform(lo, hi, shape_x).astype(np.float32) for _ in range(4)]
    calib[0].flat[0], calib[0].flat[1] = lo, hi
    randoms = [rng.uniform(lo, values_hi, shape_x).astype(np.float32) for _ in range(8)]
    worst = _worst_inputs(kind, w_q, group, lo, values_hi, shape_x, node.kernel_x_range, rng)
    fp, qp = os.path.join(tmp_path, "f.onnx"), os.path.join(tmp_path, "q.onnx")
    onnx.save(fmodel, fp)
    qt = quantization.QuantType
    quantization.quantize_static(
        fp, qp, _Reader(calib + randoms + worst), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=qt.QInt8 if opts.get("activation") == "int8" else qt.QUInt8,
        weight_type=qt.QInt8, reduce_range=opts.get("reduce_range", False))
    qmodel = onnx.load(qp)

    # the analysis read back from ORT's QDQ model agrees with the one from the float model
    l2 = overflow_report(qgraph.load(qp), {"x": (lo, values_hi)})
    (l2_node,) = l2.values()
    assert l2_node.weight_params == node.weight_params and l2_node.activation_params == node.activation_params
    assert (l2_node.accumulator, l2_node.pair_range, l2_node.saturating_pairs) == (
        node.accumulator, node.pair_range, node.saturating_pairs)
    np.testing.assert_array_equal(_init(qmodel, "w_quantized"), w_q)
    (no_ranges,) = overflow_report(qgraph.load(qp), {}).values()  # QDQ: the type's range bounds x
    assert no_ranges.status == "ok" and no_ranges.q_range == (node.activation_params.dtype.qmin,
                                                              node.activation_params.dtype.qmax)

    so = ort.SessionOptions()
    so.log_severity_level = 3
    real_sess = ort.InferenceSession(qp, so, providers=["CPUExecutionProvider"])
    so_sim = ort.SessionOptions()
    so_sim.log_severity_level = 3
    so_sim.add_session_config_entry("session.disable_quant_qdq", "1")
    sim_sess = ort.InferenceSession(qp, so_sim, providers=["CPUExecutionProvider"])

    ap, t = node.activation_params, node.activation_params.dtype
    sy, zy = float(_init(qmodel, "y_scale")), int(_init(qmodel, "y_zero_point"))
    yp = QuantParams(sy, zy, t)
    sw = node.weight_params.scale
    bias = _init(qmodel, "b_quantized")
    bias = np.zeros(w_q.shape[0] if kind != "gemm" and kind != "matmul" else w_q.shape[1], np.int64) \
        if bias is None else bias.astype(np.int64)
    shift = 128 if t.signed else 0
    stats = {"worst_lsb": 0, "random_lsb": 0, "emulation_lsb": 0, "sim_emulation_lsb": 0}
    for label, xs in (("worst", worst), ("random", randoms)):
        for x in xs:
            real_q = quantize(real_sess.run(None, {"x": x})[0], yp).astype(np.int64)
            sim_q = quantize(sim_sess.run(None, {"x": x})[0], yp).astype(np.int64)
            xq = quantize(x, ap).astype(np.int64) + shift
            if kind in ("conv", "depthwise"):
                cols = _im2col_mlas(xq[0], 3, 3, (1, 1, 1, 1), int(ap.zero_point) + shift)
                cin_g, cout_g = w_q.shape[1], w_q.shape[0] // group
                exact = np.zeros((cols.shape[0], w_q.shape[0]), np.int64)
                real_acc = np.zeros_like(exact)
                for g in range(group):  # each group reduces over its own input channels
                    sel = np.concatenate([np.arange(s * shape_x[1] + g * cin_g, s * shape_x[1] + (g + 1) * cin_g)
                                          for s in range(9)])
                    wg = w_q[g * cout_g:(g + 1) * cout_g]
                    rows = wg.reshape(cout_g, cin_g, 9).transpose(0, 2, 1).reshape(cout_g, -1)
                    e, r = _emulate(cols[:, sel], rows, int(ap.zero_point) + shift,
                                    bias[g * cout_g:(g + 1) * cout_g], kind == "depthwise")
                    exact[:, g * cout_g:(g + 1) * cout_g], real_acc[:, g * cout_g:(g + 1) * cout_g] = e, r
                predicted = _requant(real_acc, ap.scale, sw, sy, zy, t).T.reshape(real_q.shape)
                predicted_sim = _requant(exact, ap.scale, sw, sy, zy, t).T.reshape(real_q.shape)
            else:
                exact, real_acc = _emulate(xq, w_q.T, int(ap.zero_point) + shift, bias, False)
                predicted = _requant(real_acc, ap.scale, sw, sy, zy, t)
                predicted_sim = _requant(exact, ap.scale, sw, sy, zy, t)
            key = "worst_lsb" if label == "worst" else "random_lsb"
            stats[key] = max(stats[key], int(np.abs(real_q - sim_q).max()))
            stats["emulation_lsb"] = max(stats["emulation_lsb"], int(np.abs(real_q - predicted).max()))
            stats["sim_emulation_lsb"] = max(stats["sim_emulation_lsb"], int(np.abs(sim_q - predicted_sim).max()))
    return node, stats


@pytest.mark.skipif(not AVX2_NO_VNNI, reason="the saturating u8 x s8 kernel is ORT's choice on AVX2 without VNNI")
@pytest.mark.parametrize("name", list(CASES))
def test_ort_saturates_exactly_when_flagged(name, tmp_path):
    node, stats = run_case(name, tmp_path)
    expect_saturation = CASES[name][4]
    print(f"\n{name}: kernel={node.kernel} worst_pair_sum={node.worst_pair_sum} "
          f"saturating_pairs={node.saturating_pairs} ORT-vs-QDQ-sim LSB: worst-case input "
          f"{stats['worst_lsb']}, random {stats['random_lsb']}; kernel emulation vs ORT {stats['emulation_lsb']}")
    assert node.status == "ok" and node.int32_accumulator
    # the emulated kernel (the analysis' model) predicts what ORT really computes, and the exact
    # integer result predicts the QDQ simulation
    assert stats["emulation_lsb"] <= 1 and stats["sim_emulation_lsb"] <= 1
    if expect_saturation:
        assert not node.ort_avx2_exact and node.saturating_pairs > 0
        assert stats["worst_lsb"] >= 10  # many LSB on an input inside the calibrated range
    else:
        assert node.ort_avx2_exact
        assert stats["worst_lsb"] <= 1 and stats["random_lsb"] <= 1


@pytest.mark.skipif(not AVX2_NO_VNNI, reason="the saturating u8 x s8 kernel is ORT's choice on AVX2 without VNNI")
def test_ort_pairs_input_channels_not_kernel_taps(tmp_path):
    # Input channels alternate sign: the MLAS order pairs (c, c+1) at one kernel position, so no
    # pair adds up, and ORT is exact; the channels-first im2col order would pair taps of one
    # channel and saturate. ORT's exactness shows it packs the MLAS order.
    node, stats = run_case("conv3x3-cin4-alternating-exact", tmp_path)
    assert node.ort_avx2_exact and stats["worst_lsb"] <= 1
    fmodel = conv_model(np.where(np.arange(4)[None, :, None, None] % 2, -1.0, 1.0) * np.ones((16, 4, 3, 3)))
    cin_major = overflow_report(_load(fmodel, tmp_path), {"x": (0.0, 1.0)}, OverflowScheme(k_order="cin-major"))
    assert not cin_major["conv"].avx2_u8s8_pairs
