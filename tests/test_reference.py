"""The reference interpreter (qgraph.reference) against independent definitions of L3.

The ``naive_*`` functions below restate the contract of ``qgraph.ir.l3`` directly: Python
integers, explicit loops over output positions, the requantization written out as
``(acc * m + 2**(s-1)) >> s``. They share no code with the interpreter, so agreement checks
the kernels (im2col, float BLAS, padding, groups, per-channel broadcasting) and not a copy
of themselves. A second family of tests checks each integer op against the float QDQ
simulation in ONNX Runtime (``session.disable_quant_qdq`` = "1"): within 1 LSB.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from qgraph.ir import DType, l3, ops
from qgraph.quant.fixedpoint import fixed_point_multiplier, shared_shift_multipliers
from qgraph.quant.params import choose_params, choose_weight_params, quantize, quantize_bias
from qgraph.reference import AccumulatorOverflowError, Interpreter, InterpreterError, run

from conftest import one_node_model
from qgraph.testing.ort import session

U8, I8, I32, F32 = DType.UINT8, DType.INT8, DType.INT32, DType.FLOAT


build = one_node_model  # tests/conftest.py


def rq(acc: int, m: int, s: int) -> int:
    """The contract's requantization, in Python integers (``>>`` floors: half up)."""
    return (acc * m + (1 << (s - 1))) >> s if s > 0 else acc * m


def clip(v, lo, hi):
    return max(lo, min(hi, v))


# -- naive restatements of the contract -----------------------------------------------------------
def naive_qconv(x, w, bias, a):
    """QConv by loops over (n, m, output position, c, kernel tap), N-D."""
    nsp = x.ndim - 2
    strides, dil = a.get("strides", [1] * nsp), a.get("dilations", [1] * nsp)
    pads, group = a.get("pads", [0] * 2 * nsp), a.get("group", 1)
    m_all, cg = w.shape[:2]
    k = w.shape[2:]
    wzp = a["w_zero_point"] * (m_all if len(a["w_zero_point"]) == 1 else 1)
    mult = a["multiplier"] * (m_all if len(a["multiplier"]) == 1 else 1)
    shift = a["shift"] * (m_all if len(a["shift"]) == 1 else 1)
    out_sp = [(x.shape[2 + i] + pads[i] + pads[i + nsp] - (k[i] - 1) * dil[i] - 1) // strides[i] + 1
              for i in range(nsp)]
    y = np.zeros((x.shape[0], m_all, *out_sp), np.int64)
    mg = m_all // group
    for n, m in itertools.product(range(x.shape[0]), range(m_all)):
        g = m // mg
        for pos in itertools.product(*(range(o) for o in out_sp)):
            acc = int(bias[m]) if bias is not None else 0
            for c in range(cg):
                for tap in itertools.product(*(range(kk) for kk in k)):
                    idx = [pos[i] * strides[i] + tap[i] * dil[i] - pads[i] for i in range(nsp)]
                    if all(0 <= idx[i] < x.shape[2 + i] for i in range(nsp)):
                        xv = int(x[(n, g * cg + c, *idx)]) - a["x_zero_point"]
                    else:
                        xv = 0  # the pad holds x_zero_point
                    acc += xv * (int(w[(m, c, *tap)]) - wzp[m])
            y[(n, m, *pos)] = clip(a["y_zero_point"] + rq(acc, mult[m], shift[m]), a["y_qmin"], a["y_qmax"])
    return y


def naive_qavgpool(x, a):
    """QAveragePool by loops; the divisor counts taps in the padded input (count_include_pad)
    or in the input, never taps past the end pad that ceil_mode adds."""
    nsp = x.ndim - 2
    k, s, pads = a["kernel_shape"], a.get("strides", [1] * nsp), a.get("pads", [0] * 2 * nsp)
    out_sp = []
    for i in range(nsp):
        span = x.shape[2 + i] + pads[i] + pads[i + nsp] - k[i]
        o = (-(-span // s[i]) if a.get("ceil_mode") else span // s[i]) + 1
        if a.get("ceil_mode") and (o - 1) * s[i] >= x.shape[2 + i] + pads[i]:
            o -= 1
        out_sp.append(o)
    y = np.zeros(x.shape[:2] + tuple(out_sp), np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for pos in itertools.product(*(range(o) for o in out_sp)):
            acc = cnt = 0
            for tap in itertools.product(*(range(kk) for kk in k)):
                idx = [pos[i] * s[i] + tap[i] - pads[i] for i in range(nsp)]
                inside = all(0 <= idx[i] < x.shape[2 + i] for i in range(nsp))
                in_pad = all(-pads[i] <= idx[i] < x.shape[2 + i] + pads[i + nsp] for i in range(nsp))
                if inside:
                    acc += int(x[(n, c, *idx)]) - a["x_zero_point"]
                cnt += inside or (a.get("count_include_pad") and in_pad)
            y[(n, c, *pos)] = clip(a["y_zero_point"] + rq(acc, a["multiplier"][cnt], a["shift"][cnt]),
                                   a["y_qmin"], a["y_qmax"])
    return y


def requant_attrs(reals, y_zp=128, qmin=0, qmax=255, acc_bound=2**31 - 1):
    f = fixed_point_multiplier(np.asarray(reals, np.float64), acc_bound=acc_bound)
    return {"multiplier": [int(v) for v in np.atleast_1d(f.multiplier)],
            "shift": [int(v) for v in np.atleast_1d(f.shift)],
            "y_zero_point": y_zp, "y_qmin": qmin, "y_qmax": qmax}


# -- QConv ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    dict(x=(1, 4, 7, 6), w=(6, 2, 3, 3), group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
    dict(x=(2, 3, 5, 5), w=(3, 1, 3, 3), group=3, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]),
    dict(x=(1, 3, 9), w=(4, 3, 3), group=1, strides=[2], pads=[2, 1], dilations=[2]),
    dict(x=(1, 2, 4, 4), w=(4, 1, 2, 2), group=2, strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1]),
])
def test_qconv_matches_loops(case):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, case["x"]).astype(np.uint8)
    w = rng.integers(-127, 128, case["w"]).astype(np.int8)
    m = case["w"][0]
    bias = rng.integers(-3000, 3000, m).astype(np.int32)
    attrs = dict(strides=case["strides"], pads=case["pads"], dilations=case["dilations"], group=case["group"],
                 kernel_shape=list(case["w"][2:]), x_zero_point=131,
                 w_zero_point=[int(v) for v in rng.integers(-3, 4, m)],
                 **requant_attrs(rng.uniform(1e-4, 5e-3, m), y_zp=120, qmin=3, qmax=250))
    y = run(build(l3.QConv, {"x": x}, {"w": w, "b": bias}, attrs), {"x": x})["y"]
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, naive_qconv(x, w, bias, attrs))


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_qconv_property(data):
    """QConv equals the loop definition on random shapes, zero points and multipliers."""
    d = data.draw
    group = d(st.sampled_from([1, 2]))
    cg, mg = d(st.integers(1, 2)), d(st.integers(1, 2))
    kh, kw = d(st.integers(1, 3)), d(st.integers(1, 3))
    sh, sw = d(st.integers(1, 2)), d(st.integers(1, 2))
    dh, dw = d(st.integers(1, 2)), d(st.integers(1, 2))
    pads = [d(st.integers(0, 2)) for _ in range(4)]
    h = d(st.integers((kh - 1) * dh + 1, 6))
    wd = d(st.integers((kw - 1) * dw + 1, 6))
    signed = d(st.booleans())
    seed = d(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 127) if signed else (0, 255)
    x = rng.integers(lo, hi + 1, (d(st.integers(1, 2)), cg * group, h, wd)).astype(np.int8 if signed else np.uint8)
    m = mg * group
    w = rng.integers(-128, 128, (m, cg, kh, kw)).astype(np.int8)
    bias = rng.integers(-2**20, 2**20, m).astype(np.int32) if d(st.booleans()) else None
    per_channel = d(st.booleans())
    reals = rng.uniform(1e-5, 0.5, m if per_channel else 1)
    attrs = dict(strides=[sh, sw], pads=pads, dilations=[dh, dw], group=group, kernel_shape=[kh, kw],
                 x_zero_point=int(rng.integers(lo, hi + 1)),
                 w_zero_point=[int(v) for v in rng.integers(-10, 11, m if per_channel else 1)],
                 **requant_attrs(reals, y_zp=int(rng.integers(lo, hi + 1)), qmin=lo, qmax=hi))
    consts = {"w": w} if bias is None else {"w": w, "b": bias}
    y = run(build(l3.QConv, {"x": x}, consts, attrs, I8 if signed else U8), {"x": x})["y"]
    np.testing.assert_array_equal(y, naive_qconv(x, w, bias, attrs))


def test_qconv_large_operands_take_the_exact_int64_path():
    """int16 activations x int8 weights: partial sums beyond 2**24 (float32) still exact."""
    rng = np.random.default_rng(2)
    x = rng.integers(-30000, 30000, (1, 3, 5, 5)).astype(np.int16)
    w = rng.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], x_zero_point=0, w_zero_point=[0],
                 **requant_attrs([1e-4, 3e-4], y_zp=0, qmin=-32768, qmax=32767, acc_bound=2**31))
    y = run(build(l3.QConv, {"x": x}, {"w": w}, attrs, DType.INT16), {"x": x})["y"]
    assert y.dtype == np.int16
    np.testing.assert_array_equal(y, naive_qconv(x, w, None, attrs))


def test_dot_products_pick_an_exact_dtype():
    """float32 / float64 only where every partial sum is an exact integer; int64 beyond."""
    from qgraph.reference.linear import exact_dtype

    assert exact_dtype(2**24 - 1) == np.float32 and exact_dtype(2**24) == np.float64
    assert exact_dtype(2**53) == np.int64
    # huge cancelling partial sums (bound ~2**56), a small exact total: the int64 path
    a = np.array([[2**31 - 1, 2**31 - 1, 3]], np.int32)
    b = np.array([[2**24], [-(2**24)], [5]], np.int32)
    attrs = dict(a_zero_point=0, b_zero_point=[0], **requant_attrs(1.0, y_zp=0, qmin=-128, qmax=127, acc_bound=2**7))
    y = run(build(l3.QMatMul, {"a": a}, {"b": b}, attrs, I8), {"a": a})["y"]
    assert y.tolist() == [[15]]


def test_qconv_refuses_int32_overflow_naming_the_node():
    x = np.full((1, 64, 3, 3), 32767, np.int16)
    w = np.full((1, 64, 3, 3), 127, np.int8)
    attrs = dict(kernel_shape=[3, 3], x_zero_point=0, w_zero_point=[0],
                 **requant_attrs([1e-6], y_zp=0, qmin=-32768, qmax=32767, acc_bound=2**40))
    with pytest.raises(AccumulatorOverflowError, match=r"QConv node 'big'.*int32 accumulator of output 'y'"):
        run(build(l3.QConv, {"x": x}, {"w": w}, attrs, DType.INT16, name="big"), {"x": x})


# -- QConvTranspose -------------------------------------------------------------------------------
def naive_qconv_transpose(x, w, bias, a):
    """QConvTranspose by loops over (n, output channel, input position, tap, input channel):
    input ``i`` times tap ``t`` lands on ``i * s + t * d - pad_begin`` when that is inside the
    output (``(in - 1) * s + output_padding + (k - 1) * d + 1 - pads``), N-D."""
    nsp = x.ndim - 2
    s, dil = a.get("strides", [1] * nsp), a.get("dilations", [1] * nsp)
    pads, extra, group = a.get("pads", [0] * 2 * nsp), a.get("output_padding", [0] * nsp), a.get("group", 1)
    c, mg = w.shape[:2]
    k, m_all, cg = w.shape[2:], mg * group, c // group
    out_sp = [(x.shape[2 + i] - 1) * s[i] + extra[i] + (k[i] - 1) * dil[i] + 1 - pads[i] - pads[i + nsp]
              for i in range(nsp)]
    wzp = a["w_zero_point"] * (m_all if len(a["w_zero_point"]) == 1 else 1)
    mult = a["multiplier"] * (m_all if len(a["multiplier"]) == 1 else 1)
    shift = a["shift"] * (m_all if len(a["shift"]) == 1 else 1)
    acc = {}
    for n, o in itertools.product(range(x.shape[0]), range(m_all)):
        g, m = divmod(o, mg)
        for pos in itertools.product(*(range(v) for v in out_sp)):
            acc[(n, o) + pos] = int(bias[o]) if bias is not None else 0
        for i in itertools.product(*(range(v) for v in x.shape[2:])):
            for tap in itertools.product(*(range(v) for v in k)):
                pos = tuple(i[j] * s[j] + tap[j] * dil[j] - pads[j] for j in range(nsp))
                if all(0 <= pos[j] < out_sp[j] for j in range(nsp)):
                    for cc in range(cg):
                        acc[(n, o) + pos] += ((int(x[(n, g * cg + cc) + i]) - a["x_zero_point"])
                                              * (int(w[(g * cg + cc, m) + tap]) - wzp[o]))
    y = np.zeros((x.shape[0], m_all, *out_sp), np.int64)
    for idx, v in acc.items():
        y[idx] = clip(a["y_zero_point"] + rq(v, mult[idx[1]], shift[idx[1]]), a["y_qmin"], a["y_qmax"])
    return y


@pytest.mark.parametrize("case", [
    dict(x=(1, 4, 5, 4), w=(4, 3, 2, 2), strides=[2, 2]),  # PP-OCR's DB head
    dict(x=(2, 4, 4, 3), w=(4, 2, 3, 3), group=2, strides=[2, 3], pads=[1, 0, 2, 1], dilations=[1, 2],
         output_padding=[1, 2]),
    dict(x=(1, 3, 6), w=(3, 2, 3), strides=[3], pads=[1, 1], dilations=[2], output_padding=[1]),
    dict(x=(1, 4, 4, 4), w=(4, 1, 3, 3), group=4, pads=[1, 1, 1, 1]),  # depthwise, stride 1
    dict(x=(1, 2, 3, 3), w=(2, 2, 1, 1), strides=[3, 2], output_padding=[2, 1]),  # positions no tap reaches
    dict(x=(1, 2, 3, 2, 2), w=(2, 2, 2, 2, 2), strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1], output_padding=[1, 0, 0]),
])
def test_qconv_transpose_matches_loops(case):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, case["x"]).astype(np.uint8)
    w = rng.integers(-128, 128, case["w"]).astype(np.int8)
    m = case["w"][1] * case.get("group", 1)
    bias = rng.integers(-3000, 3000, m).astype(np.int32)
    nsp = len(case["x"]) - 2
    attrs = dict(strides=case.get("strides", [1] * nsp), pads=case.get("pads", [0] * 2 * nsp),
                 dilations=case.get("dilations", [1] * nsp), output_padding=case.get("output_padding", [0] * nsp),
                 group=case.get("group", 1), kernel_shape=list(case["w"][2:]), x_zero_point=131,
                 w_zero_point=[int(v) for v in rng.integers(-3, 4, m)],
                 **requant_attrs(rng.uniform(1e-4, 5e-3, m), y_zp=120, qmin=3, qmax=250))
    y = run(build(l3.QConvTranspose, {"x": x}, {"w": w, "b": bias}, attrs), {"x": x})["y"]
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, naive_qconv_transpose(x, w, bias, attrs))


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_qconv_transpose_property(data):
    """QConvTranspose equals the loop definition on random geometry, types and zero points."""
    d = data.draw
    nsp = d(st.integers(1, 2))
    group = d(st.sampled_from([1, 2]))
    cg, mg = d(st.integers(1, 2)), d(st.integers(1, 2))
    k = [d(st.integers(1, 3)) for _ in range(nsp)]
    strides = [d(st.integers(1, 3)) for _ in range(nsp)]
    dil = [d(st.integers(1, 2)) for _ in range(nsp)]
    extra = [d(st.integers(0, 2)) for _ in range(nsp)]
    sp = [d(st.integers(1, 4)) for _ in range(nsp)]
    full = [(i - 1) * s + e + (kk - 1) * dd + 1 for i, s, e, kk, dd in zip(sp, strides, extra, k, dil)]
    pads = [d(st.integers(0, (f - 1) // 2)) for f in full] + [d(st.integers(0, (f - 1) // 2)) for f in full]
    kind = d(st.sampled_from(["u8", "i8", "i16"]))
    rng = np.random.default_rng(d(st.integers(0, 2**32 - 1)))
    lo, hi = {"u8": (0, 255), "i8": (-128, 127), "i16": (-3000, 3000)}[kind]
    xdt = {"u8": np.uint8, "i8": np.int8, "i16": np.int16}[kind]
    x = rng.integers(lo, hi + 1, [d(st.integers(1, 2)), cg * group] + sp).astype(xdt)
    m = mg * group
    w = rng.integers(-8, 8, [cg * group, mg] + k).astype(np.int8)  # 4-bit values
    bias = rng.integers(-2**15, 2**15, m).astype(np.int32) if d(st.booleans()) else None
    per_channel = d(st.booleans())
    out_dtype = {"u8": U8, "i8": I8, "i16": DType.INT16}[kind]
    attrs = dict(strides=strides, pads=pads, dilations=dil, output_padding=extra, group=group, kernel_shape=k,
                 x_zero_point=int(rng.integers(lo, hi + 1)),
                 w_zero_point=[int(v) for v in rng.integers(-2, 3, m if per_channel else 1)],
                 **requant_attrs(rng.uniform(1e-5, 0.5, m if per_channel else 1), y_zp=int(rng.integers(lo, hi + 1)),
                                 qmin=lo, qmax=hi))
    consts = {"w": w} if bias is None else {"w": w, "b": bias}
    y = run(build(l3.QConvTranspose, {"x": x}, consts, attrs, out_dtype), {"x": x})["y"]
    np.testing.assert_array_equal(y, naive_qconv_transpose(x, w, bias, attrs))


def test_qconv_transpose_refuses_int32_overflow_and_malformed_attributes():
    x = np.full((1, 64, 3, 3), 32767, np.int16)  # the centre output: 9 taps x 64 channels x 32767 x 127
    w = np.full((64, 1, 3, 3), 127, np.int8)
    attrs = dict(kernel_shape=[3, 3], x_zero_point=0, w_zero_point=[0],
                 **requant_attrs([1e-6], y_zp=0, qmin=-32768, qmax=32767, acc_bound=2**40))
    with pytest.raises(AccumulatorOverflowError, match=r"QConvTranspose node 'big'.*int32 accumulator of output 'y'"):
        run(build(l3.QConvTranspose, {"x": x}, {"w": w}, attrs, DType.INT16, name="big"), {"x": x})
    with pytest.raises(InterpreterError, match=r"QConvTranspose node 'pad'.*auto_pad / output_shape are not L3"):
        run(build(l3.QConvTranspose, {"x": x}, {"w": w}, {**attrs, "auto_pad": "SAME_UPPER"}, DType.INT16,
                  name="pad"), {"x": x})
    with pytest.raises(InterpreterError, match=r"QConvTranspose node 'crop'.*the output \[-1, -1\].*is empty"):
        run(build(l3.QConvTranspose, {"x": x}, {"w": w}, {**attrs, "pads": [3, 3, 3, 3]}, DType.INT16,
                  name="crop"), {"x": x})


# -- pooling --------------------------------------------------------------------------------------
@pytest.mark.parametrize("include_pad,ceil_mode", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_qaverage_pool_matches_loops(include_pad, ceil_mode):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 2, 7, 6)).astype(np.uint8)
    table = [0.0] + [0.9 / n for n in range(1, 10)]
    f = fixed_point_multiplier(np.array(table))
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0], count_include_pad=include_pad,
                 ceil_mode=ceil_mode, x_zero_point=100, y_zero_point=90, y_qmin=0, y_qmax=255, **f.to_attrs())
    y = run(build(l3.QAveragePool, {"x": x}, attrs=attrs), {"x": x})["y"]
    np.testing.assert_array_equal(y, naive_qavgpool(x, attrs))


def test_qglobal_average_pool():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    attrs = dict(x_zero_point=-3, **requant_attrs(0.7 / 20, y_zp=5, qmin=-128, qmax=127))
    y = run(build(l3.QGlobalAveragePool, {"x": x}, attrs=attrs, out_dtype=I8), {"x": x})["y"]
    expected = np.zeros((2, 3, 1, 1), np.int64)
    for n, c in itertools.product(range(2), range(3)):
        acc = sum(int(v) + 3 for v in x[n, c].ravel())
        expected[n, c] = clip(5 + rq(acc, attrs["multiplier"][0], attrs["shift"][0]), -128, 127)
    np.testing.assert_array_equal(y, expected)


def test_max_pool_on_integers_matches_onnx_evaluator():
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (1, 2, 7, 7)).astype(np.int8)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    y = run(build(ops.MaxPool, {"x": x}, attrs=attrs, out_dtype=I8), {"x": x})["y"]
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    m = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, x.shape)],
                                            [helper.make_tensor_value_info("y", TensorProto.INT8, None)]),
                          opset_imports=[helper.make_opsetid("", 21)])
    np.testing.assert_array_equal(y, ReferenceEvaluator(m).run(None, {"x": x})[0])


# -- QMatMul and the elementwise ops --------------------------------------------------------------
def test_qmatmul_matches_loops():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (2, 3, 5)).astype(np.uint8)
    b = rng.integers(-127, 128, (5, 4)).astype(np.int8)
    bias = rng.integers(-500, 500, 4).astype(np.int32)
    bzp = [1, -2, 0, 3]
    attrs = dict(a_zero_point=128, b_zero_point=bzp, **requant_attrs(rng.uniform(1e-3, 1e-2, 4)))
    y = run(build(l3.QMatMul, {"a": a}, {"b": b, "bias": bias}, attrs), {"a": a})["y"]
    expected = np.zeros((2, 3, 4), np.int64)
    for i, j, n in itertools.product(range(2), range(3), range(4)):
        acc = int(bias[n]) + sum((int(a[i, j, k]) - 128) * (int(b[k, n]) - bzp[n]) for k in range(5))
        expected[i, j, n] = clip(128 + rq(acc, attrs["multiplier"][n], attrs["shift"][n]), 0, 255)
    np.testing.assert_array_equal(y, expected)


def test_qmatmul_of_two_activations_broadcasts_batches():
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (2, 1, 3, 6)).astype(np.int8)
    b = rng.integers(-128, 128, (4, 6, 5)).astype(np.int8)
    attrs = dict(a_zero_point=2, b_zero_point=[-1], **requant_attrs(2e-3, y_zp=0, qmin=-128, qmax=127))
    model = build(l3.QMatMul, {"a": a, "b": b}, attrs=attrs, out_dtype=I8)
    y = run(model, {"a": a, "b": b})["y"]
    acc = np.matmul(a.astype(object) - 2, b.astype(object) + 1)
    expected = np.vectorize(lambda v: clip(rq(int(v), attrs["multiplier"][0], attrs["shift"][0]), -128, 127))(acc)
    assert y.shape == (2, 4, 3, 5)
    np.testing.assert_array_equal(y, expected)


def test_qadd_qmul_requantize_lookup():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    b = rng.integers(0, 256, (3, 1)).astype(np.uint8)
    mults, shift = shared_shift_multipliers([0.6, 0.3], acc_bound=256)
    add = dict(a_zero_point=120, b_zero_point=130, a_multiplier=int(mults[0]), b_multiplier=int(mults[1]),
               shift=shift, y_zero_point=110, y_qmin=0, y_qmax=255)
    y = run(build(l3.QAdd, {"a": a, "b": b}, attrs=add), {"a": a, "b": b})["y"]
    aa, bb = np.broadcast_arrays(a.astype(np.int64), b.astype(np.int64))
    expected = [clip(110 + rq(int(mults[0]) * (int(p) - 120) + int(mults[1]) * (int(q) - 130), 1, shift), 0, 255)
                for p, q in zip(aa.ravel(), bb.ravel())]
    np.testing.assert_array_equal(y.ravel(), expected)

    mul = dict(a_zero_point=120, b_zero_point=130, **requant_attrs(4e-3, y_zp=7, qmin=7, qmax=255))  # fused Relu
    y = run(build(l3.QMul, {"a": a, "b": b}, attrs=mul), {"a": a, "b": b})["y"]
    expected = [clip(7 + rq((int(p) - 120) * (int(q) - 130), mul["multiplier"][0], mul["shift"][0]), 7, 255)
                for p, q in zip(aa.ravel(), bb.ravel())]
    np.testing.assert_array_equal(y.ravel(), expected)

    req = dict(x_zero_point=120, **requant_attrs(1.7, y_zp=-5, qmin=-128, qmax=127))
    y = run(build(l3.Requantize, {"a": a}, attrs=req, out_dtype=I8), {"a": a})["y"]
    assert y.dtype == np.int8
    expected = [clip(-5 + rq(int(p) - 120, req["multiplier"][0], req["shift"][0]), -128, 127) for p in a.ravel()]
    np.testing.assert_array_equal(y.ravel(), expected)

    table = [int(v) for v in rng.integers(-128, 128, 256)]
    xi = rng.integers(-128, 128, (3, 5)).astype(np.int8)
    y = run(build(l3.Lookup, {"x": xi}, attrs=dict(table=table, x_qmin=-128), out_dtype=I8), {"x": xi})["y"]
    np.testing.assert_array_equal(y, np.array(table)[xi.astype(int) + 128])


def test_quantize_dequantize():
    x = np.array([-1.0, -0.15, 0.0, 0.05, 0.15, 0.25, 3.0, 100.0], np.float32)
    attrs = dict(scale=0.1, zero_point=10, qmin=10, qmax=200)  # Relu-narrowed output range
    q = run(build(l3.Quantize, {"x": x}, attrs=attrs), {"x": x})["y"]
    expected = np.clip(np.rint(x / np.float32(0.1)) + 10, 10, 200)  # round half to even, float32 division
    np.testing.assert_array_equal(q, expected)
    assert q.dtype == np.uint8
    d = run(build(l3.Dequantize, {"q": q}, attrs=dict(scale=0.1, zero_point=10), out_dtype=F32), {"q": q})["y"]
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, (q.astype(np.float32) - 10) * np.float32(0.1))


# -- against the QDQ float simulation in ONNX Runtime ---------------------------------------------
def _qdq_session(nodes, inits, inputs, out_dtype=TensorProto.UINT8):
    graph = helper.make_graph(nodes, "qdq", inputs, [helper.make_tensor_value_info("y", out_dtype, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return session(model, **{"session.disable_quant_qdq": "1"})


def _within_one_lsb(ours, theirs):
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    assert diff.max() <= 1, f"max |diff| = {diff.max()}"
    assert (diff == 0).mean() > 0.9


def _scale(p):
    return np.float32(p.scale)


def test_qconv_within_one_lsb_of_qdq_conv():
    rng = np.random.default_rng(10)
    xf = rng.standard_normal((1, 8, 10, 9)).astype(np.float32)
    wf = (rng.standard_normal((6, 4, 3, 3)) * 0.2).astype(np.float32)
    bf = rng.standard_normal(6).astype(np.float32)
    conv = dict(strides=[2, 1], pads=[1, 1, 0, 1], group=2, kernel_shape=[3, 3])
    px = choose_params(xf.min(), xf.max(), "uint8")
    pw = choose_weight_params(wf, "int8", axis=0)
    xq, wq = quantize(xf, px), quantize(wf, pw)
    bq, _ = quantize_bias(bf, px.scale, pw.scale)
    sb = (_scale(px) * pw.scale).astype(np.float32)
    yf = session(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv)], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xf.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wf, "w"), numpy_helper.from_array(bf, "b")]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)).run(None, {"x": xf})[0]
    py = choose_params(yf.min(), yf.max(), "uint8")
    sess = _qdq_session(
        [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
         helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
         helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"], axis=0),
         helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], **conv),
         helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["y"])],
        dict(sx=_scale(px), zx=px.zero_point_stored, wq=wq, sw=pw.scale, zw=pw.zero_point_stored, bq=bq, sb=sb,
             zb=np.zeros(6, np.int32), sy=_scale(py), zy=py.zero_point_stored),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xf.shape)])
    theirs = sess.run(None, {"x": xf})[0]
    reals = _scale(px).astype(np.float64) * pw.scale.astype(np.float64) / _scale(py).astype(np.float64)
    attrs = dict(x_zero_point=int(px.zero_point), w_zero_point=[int(v) for v in pw.zero_point], **conv,
                 **requant_attrs(reals, y_zp=int(py.zero_point)))
    ours = run(build(l3.QConv, {"x": xq}, {"w": wq, "b": bq}, attrs), {"x": xq})["y"]
    _within_one_lsb(ours, theirs)


def test_qmatmul_within_one_lsb_of_qdq_matmul():
    rng = np.random.default_rng(11)
    af = rng.standard_normal((2, 3, 16)).astype(np.float32)
    bf = (rng.standard_normal((16, 7)) * 0.3).astype(np.float32)
    cf = rng.standard_normal(7).astype(np.float32)
    pa = choose_params(af.min(), af.max(), "uint8")
    pb = choose_weight_params(bf, "int8", axis=1)
    aq, bq = quantize(af, pa), quantize(bf, pb)
    cq, _ = quantize_bias(cf, pa.scale, pb.scale)
    yf = (af @ bf + cf)
    py = choose_params(yf.min(), yf.max(), "uint8")
    sess = _qdq_session(
        [helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
         helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"], axis=1),
         helper.make_node("DequantizeLinear", ["cq", "sc", "zc"], ["cd"], axis=0),
         helper.make_node("MatMul", ["ad", "bd"], ["mm"]),
         helper.make_node("Add", ["mm", "cd"], ["s"]),
         helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])],
        dict(sa=_scale(pa), za=pa.zero_point_stored, bq=bq, sb=pb.scale, zb=pb.zero_point_stored, cq=cq,
             sc=(_scale(pa) * pb.scale).astype(np.float32), zc=np.zeros(7, np.int32),
             sy=_scale(py), zy=py.zero_point_stored),
        [helper.make_tensor_value_info("aq", TensorProto.UINT8, aq.shape)])
    theirs = sess.run(None, {"aq": aq})[0]
    reals = float(_scale(pa)) * pb.scale.astype(np.float64) / float(_scale(py))
    attrs = dict(a_zero_point=int(pa.zero_point), b_zero_point=[int(v) for v in pb.zero_point],
                 **requant_attrs(reals, y_zp=int(py.zero_point)))
    ours = run(build(l3.QMatMul, {"aq": aq}, {"b": bq, "bias": cq}, attrs), {"aq": aq})["y"]
    _within_one_lsb(ours, theirs)


def test_qadd_within_one_lsb_of_qdq_add():
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, (2, 3, 4, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (3, 1, 5)).astype(np.uint8)
    sa, za, sb, zb, sy, zy = 0.031, 120, 0.017, 97, 0.04, 110
    sess = _qdq_session(
        [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
         helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
         helper.make_node("Add", ["ad", "bd"], ["s"]),
         helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])],
        dict(sa=np.float32(sa), za=np.uint8(za), sb=np.float32(sb), zb=np.uint8(zb), sy=np.float32(sy), zy=np.uint8(zy)),
        [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape),
         helper.make_tensor_value_info("b", TensorProto.UINT8, b.shape)])
    theirs = sess.run(None, {"a": a, "b": b})[0]
    reals = [float(np.float32(sa)) / float(np.float32(sy)), float(np.float32(sb)) / float(np.float32(sy))]
    mults, shift = shared_shift_multipliers(reals, acc_bound=256)
    attrs = dict(a_zero_point=za, b_zero_point=zb, a_multiplier=int(mults[0]), b_multiplier=int(mults[1]),
                 shift=shift, y_zero_point=zy, y_qmin=0, y_qmax=255)
    ours = run(build(l3.QAdd, {"a": a, "b": b}, attrs=attrs), {"a": a, "b": b})["y"]
    _within_one_lsb(ours, theirs)


@pytest.mark.parametrize("include_pad,ceil_mode", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("shape,kernel,pads", [
    ((1, 3, 7, 8), [3, 3], [1, 1, 1, 1]),  # ceil_mode: the last column window hangs past the end pad
    ((1, 2, 3, 4), [2, 3], [1, 2, 1, 2]),  # ceil_mode: a window starting in the end pad is dropped
])
def test_qaverage_pool_within_one_lsb_of_qdq_pool(include_pad, ceil_mode, shape, kernel, pads):
    """Also pins the divisor of partial windows and the output size to ONNX Runtime's."""
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    sx, zx, sy, zy = 0.02, 100, 0.015, 90
    pool = dict(kernel_shape=kernel, strides=[2, 2], pads=pads, count_include_pad=include_pad,
                ceil_mode=ceil_mode)
    sess = _qdq_session(
        [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xd"]),
         helper.make_node("AveragePool", ["xd"], ["p"], **pool),
         helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["y"])],
        dict(sx=np.float32(sx), zx=np.uint8(zx), sy=np.float32(sy), zy=np.uint8(zy)),
        [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)])
    theirs = sess.run(None, {"x": x})[0]
    ratio = float(np.float32(sx)) / float(np.float32(sy))
    taps = int(np.prod(kernel))
    f = fixed_point_multiplier(np.array([0.0] + [ratio / n for n in range(1, taps + 1)]))
    attrs = dict(**pool, x_zero_point=zx, y_zero_point=zy, y_qmin=0, y_qmax=255, **f.to_attrs())
    ours = run(build(l3.QAveragePool, {"x": x}, attrs=attrs), {"x": x})["y"]
    _within_one_lsb(ours, theirs)


def test_qdq_model_with_float_fallback_runs_like_ort():
    """An L2 QDQ graph (QuantizeLinear / DequantizeLinear, float Sigmoid) runs in the interpreter."""
    from qgraph.onnx.importer import from_proto

    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32) * 3
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Sigmoid", ["d"], ["sg"]),
             helper.make_node("Transpose", ["sg"], ["t"], perm=[0, 2, 1]),
             helper.make_node("QuantizeLinear", ["t", "s2", "z2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z"),
                               numpy_helper.from_array(np.float32(1 / 255), "s2"), numpy_helper.from_array(np.uint8(0), "z2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    theirs = session(proto, **{"session.disable_quant_qdq": "1"}).run(None, {"x": x})[0]
    interp = Interpreter(from_proto(proto))
    outs = interp.run({"x": x}, keep=["d"])
    assert set(outs) == {"y", "d"}
    _within_one_lsb(outs["y"], theirs)
    again = interp.run({"x": x}, keep=True)  # evaluators are reused; every value comes back
    assert set(again) == {"y", "q", "d", "sg", "t"}
    np.testing.assert_array_equal(again["y"], outs["y"])
    only = interp.run({"x": x}, outputs=["q"])
    assert set(only) == {"q"} and only["q"].dtype == np.uint8


# -- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_node_and_tensor():
    x = np.zeros((1, 2), np.uint8)
    attrs = dict(x_zero_point=0, **requant_attrs(0.5))
    model = build(l3.Requantize, {"x": x}, attrs=attrs, name="rq1")
    interp = Interpreter(model)
    with pytest.raises(InterpreterError, match="missing feed for input 'x'"):
        interp.run({})
    with pytest.raises(InterpreterError, match=r"input 'x' expects uint8 .*got float32"):
        interp.run({"x": x.astype(np.float32)})
    with pytest.raises(InterpreterError, match="unknown input 'z'"):
        interp.run({"x": x, "z": x})
    with pytest.raises(InterpreterError, match="no value named 'nope'"):
        interp.run({"x": x}, outputs=["nope"])
    bad = build(l3.Requantize, {"x": x}, attrs=dict(x_zero_point=0, multiplier=[1], shift=[0]), name="rq2")
    with pytest.raises(InterpreterError, match=r"qgraph::Requantize node 'rq2': missing attribute 'y_zero_point'"):
        run(bad, {"x": x})
    with pytest.raises(InterpreterError, match=r"Requantize node 'rq1': input 'x' must be an integer tensor"):
        Interpreter(build(l3.Requantize, {"x": x.astype(np.float32)}, attrs=attrs, name="rq1")).run(
            {"x": x.astype(np.float32)})
    unknown = build(ops.op("Frobnicate", "qgraph"), {"x": x}, name="fr")
    with pytest.raises(InterpreterError, match=r"node 'fr'.*qgraph::Frobnicate"):
        Interpreter(unknown)
    unknown_std = build(ops.op("NotAnOnnxOp"), {"x": x}, name="na")
    with pytest.raises(InterpreterError, match=r"node 'na'.*NotAnOnnxOp"):
        Interpreter(unknown_std)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_across_channels_like_ort(size):
    """LRN sums squares over a window of channels (onnx's ReferenceEvaluator 1.23 sums over the
    batch axis instead: wrong for every channel >= the batch size)."""
    x = np.random.default_rng(size).uniform(-5, 5, (2, 7, 3, 4)).astype(np.float32)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.01, beta=0.75, bias=2.0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    from qgraph.onnx import from_proto

    got = run(from_proto(proto), {"x": x})["y"]
    want = session(proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", ["conv_transpose_group3", "pad_crop_constant", "pad_crop_reflect", "pad_crop_axes"])
def test_float_ops_onnx_evaluator_gets_wrong_equal_onnx_runtime(case):
    """Ops that onnx 1.23's evaluator fails on run natively (fuzz findings): a grouped
    ConvTranspose (it reshaped the weights wrongly) and Pad with negative pads (a crop)."""
    from onnx import TensorProto, helper, numpy_helper

    from qgraph.onnx import from_proto
    from qgraph.reference import Interpreter

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 7)).astype(np.float32)
    inits, opset = [], 18
    if case == "conv_transpose_group3":
        inits = [numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")]
        node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 1, 1], group=3)
    else:
        pads = {"pad_crop_constant": [0, 0, -2, 1, 0, 1, -1, -3], "pad_crop_reflect": [0, -1, 2, -2, 0, 0, -1, 1],
                "pad_crop_axes": [-1, 2, 1, -3]}[case]
        inits = [numpy_helper.from_array(np.array(pads, np.int64), "p")]
        ins = ["x", "p"]
        if case == "pad_crop_constant":
            inits.append(numpy_helper.from_array(np.array(1.5, np.float32), "v"))
            ins.append("v")
        if case == "pad_crop_axes":
            inits.append(numpy_helper.from_array(np.array([2, -1], np.int64), "a"))
            ins += ["", "a"]
        node = helper.make_node("Pad", ins, ["y"], mode="reflect" if case == "pad_crop_reflect" else "constant")
    g = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    want = session(proto).run(None, {"x": x})[0]
    got = Interpreter(from_proto(proto)).run({"x": x})["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constant_folding_gets_the_same_corrections():
    """Canonicalize's constant folding (and TVM lowering's) evaluates through the same
    ``NodeEvaluator``: a constant Pad with negative pads folds to what ONNX Runtime computes."""
    from onnx import TensorProto, helper, numpy_helper

    from qgraph.onnx import from_proto, to_proto
    from tests.conftest import run_pipeline

    c = np.arange(2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)
    g = helper.make_graph(
        [helper.make_node("Pad", ["c", "p"], ["cp"]), helper.make_node("Add", ["x", "cp"], ["y"])], "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(c, "c"), numpy_helper.from_array(np.array([0, 0, 2, -1, 0, 0, -1, -1], np.int64), "p")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = from_proto(proto)
    run_pipeline(m, "fold-constants")
    assert [n.op_type for n in m.graph] == ["Add"]
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(session(to_proto(m)).run(None, {"x": x})[0], session(proto).run(None, {"x": x})[0])
