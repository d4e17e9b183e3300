"""qgraph.tvm: L3 models compiled by TVM for the CPU equal the reference interpreter bit for bit.

Golden models: every value of the graph is returned by the compiled program and compared
with the reference (``Interpreter.run(keep=...)``). Integer values must be identical. Float
values computed by float fallback ops (Softmax, float Conv...) may differ from numpy in the
last bits (sums in another order, another ``exp``): they are compared with a relative
tolerance, and an integer value downstream of such a float op (a ``Quantize`` of it) may
be 1 LSB off; every other integer value must be exact.
"""

from __future__ import annotations

import glob
import os
import tarfile

import numpy as np
import pytest

from qgraph.ir import DType, l3, ops
from qgraph.ir.dtypes import from_numpy
from qgraph.reference import Interpreter

from conftest import one_node_model

import qgraph.tvm as qtvm
from qgraph import targets  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "golden", "models", "*.onnx"))
                if not p.endswith("example_cnn.onnx"))


def _data_stem(stem: str) -> str:
    return stem.replace("_cnn", "")


@pytest.fixture(scope="module")
def quantized():
    from qgraph.api import quantize

    cache = {}

    def get(stem):
        if stem not in cache:
            base = _data_stem(stem)
            cache[stem] = quantize(os.path.join(REPO, "golden", "models", f"{stem}.onnx"),
                                   os.path.join(REPO, "golden", "data", f"{base}_calib.npz"), report=False)
        return cache[stem]

    return get


def _test_feeds(model, stem):
    data = np.load(os.path.join(REPO, "golden", "data", f"{_data_stem(stem)}_test.npz"))
    return {v.name: data[v.name] for v in model.graph.inputs}


def _compare(model, got, ref, names):
    """Exact for integer values with no float op upstream; else <= 1 LSB / float tolerance."""
    tainted = l3.after_float_ops(model.graph)
    problems = []
    for n in names:
        r, g = ref[n], got[n]
        assert g.dtype == r.dtype and g.shape == r.shape, (n, g.dtype, r.dtype, g.shape, r.shape)
        if np.array_equal(r, g):
            continue
        if n not in tainted:
            diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
            problems.append(f"{n}: {int((r != g).sum())} of {r.size} differ (max {diff.max()})")
        elif r.dtype.kind in "iu":
            lsb = np.abs(r.astype(np.int64) - g.astype(np.int64)).max()
            if lsb > 1:
                problems.append(f"{n} (after a float op): {lsb} LSB")
        elif not np.allclose(g, r, rtol=1e-3, atol=1e-3 * float(np.abs(r).max())):
            # sums in another order and another exp: last-bit differences, amplified by
            # Softmax over ~6600 classes in PP-OCR rec to ~1e-4
            problems.append(f"{n} (float): max diff {np.abs(r - g).max()}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stem", GOLDEN)
def test_golden_model_bit_exact(quantized, stem):
    q = quantized(stem)
    feeds = _test_feeds(q.integer, stem)
    batch = next(iter(feeds.values())).shape[0]
    names = [o.name for node in q.integer.graph for o in node.outputs if o is not None]
    outs = [v.name for v in q.integer.graph.outputs]
    compiled = qtvm.build(q.integer, batch_size=batch, outputs=outs + [n for n in names if n not in outs])
    got = compiled.run(feeds)
    ref = Interpreter(q.integer).run(feeds, outputs=list(got))
    _compare(q.integer, got, ref, list(got))
    # the graph outputs as the user sees them: q.run, bit for bit
    final = q.run(feeds)
    for n in outs:
        assert np.array_equal(got[n], final[n]), n


def test_digits_deployed_form_equals_reference(quantized):
    """The deployed program (graph outputs only: other fusions) on all 500 test digits."""
    q = quantized("digits_cnn")
    feeds = _test_feeds(q.integer, "digits_cnn")
    got = qtvm.build(q.integer, batch_size=len(feeds["input"])).run(feeds)
    assert np.array_equal(got["logits"], q.run(feeds)["logits"])


# -- single-op models: the forms the golden models do not reach ----------------------------------
_one_node = one_node_model  # tests/conftest.py


def _same_as_reference(model, feeds):
    got = qtvm.build(model).run(feeds)
    ref = Interpreter(model).run(feeds)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype, ref[k].dtype)
        assert np.array_equal(got[k], ref[k]), (k, got[k], ref[k])


RNG = np.random.default_rng(7)


def test_qconv_grouped_dilated_int8_with_weight_zero_points():
    x = RNG.integers(-128, 128, (2, 6, 9, 7), dtype=np.int8)
    w = RNG.integers(-127, 128, (4, 3, 3, 2), dtype=np.int8)
    bias = RNG.integers(-5000, 5000, 4).astype(np.int32)
    attrs = {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [2, 1], "group": 2, "kernel_shape": [3, 2],
             "x_zero_point": -3, "w_zero_point": [0, 1, -2, 3], "multiplier": [1 << 30, 3 << 28, 5 << 27, 1],
             "shift": [40, 41, 39, 0], "y_zero_point": -5, "y_qmin": -128, "y_qmax": 127}
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": bias}, attrs, DType.INT8)
    _same_as_reference(model, {"x": x})


def test_qconv_depthwise_uint8():
    x = RNG.integers(0, 256, (1, 5, 8, 8), dtype=np.uint8)
    w = RNG.integers(-127, 128, (5, 1, 3, 3), dtype=np.int8)
    attrs = {"pads": [1, 1, 1, 1], "group": 5, "kernel_shape": [3, 3], "x_zero_point": 131, "w_zero_point": [0],
             "multiplier": [1518500250], "shift": [38], "y_zero_point": 128, "y_qmin": 128, "y_qmax": 255}
    _same_as_reference(_one_node(l3.QConv, {"x": x}, {"w": w}, attrs), {"x": x})


# (x shape, x dtype, w shape, attrs): what the reference's scatter form and TVM's phase conv
# must agree on: strides with gaps, pads that crop, output_padding past the last tap (bias
# only), groups, dilations, weight zero points, 1-D / 3-D, int16 activations, 4-bit weights
CONV_TRANSPOSE_CASES = {
    "db_head_u8": ((1, 8, 5, 7), "uint8", (8, 4, 2, 2), dict(strides=[2, 2])),
    "grouped_i8": ((2, 6, 4, 3), "int8", (6, 2, 3, 3), dict(group=3, strides=[2, 3], pads=[1, 0, 2, 1],
                                                             dilations=[1, 2], output_padding=[1, 2])),
    "depthwise_s2": ((1, 5, 6, 6), "uint8", (5, 1, 4, 4), dict(group=5, strides=[2, 2], pads=[1, 1, 1, 1])),
    "gaps_u8": ((1, 3, 4, 4), "uint8", (3, 2, 1, 2), dict(strides=[3, 2], output_padding=[2, 1])),
    "stride1_dilated": ((1, 4, 5, 6), "int8", (4, 3, 3, 2), dict(dilations=[2, 3], pads=[2, 1, 0, 3])),
    "int16_4bit": ((1, 4, 6, 5), "int16", (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                             output_padding=[1, 1])),
    "1d": ((2, 3, 7), "uint8", (3, 2, 3), dict(strides=[3], pads=[1, 2], dilations=[2], output_padding=[2])),
    "3d": ((1, 2, 3, 2, 3), "int8", (2, 2, 2, 2, 2), dict(strides=[2, 1, 2], pads=[0, 1, 0, 0, 0, 1],
                                                          output_padding=[1, 0, 0])),
}


@pytest.mark.parametrize("name", list(CONV_TRANSPOSE_CASES))
def test_qconv_transpose_bit_exact(name):
    xshape, xdt, wshape, geo = CONV_TRANSPOSE_CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    info = np.iinfo(xdt)
    lo, hi = (-2000, 2000) if xdt == "int16" else (int(info.min), int(info.max))
    x = rng.integers(lo, hi + 1, xshape).astype(xdt)
    w = rng.integers(-8, 8, wshape) if xdt == "int16" else rng.integers(-128, 128, wshape)
    m = wshape[1] * geo.get("group", 1)
    channels = 1 if name == "gaps_u8" else m  # per tensor / per output channel
    attrs = {**geo, "kernel_shape": list(wshape[2:]), "x_zero_point": int(rng.integers(lo, hi + 1) // 4),
             "w_zero_point": [0] if name == "db_head_u8" else [int(v) for v in rng.integers(-2, 3, channels)],
             "multiplier": [int(v) for v in rng.integers(1 << 30, 1 << 31, channels)],
             "shift": [int(v) for v in rng.integers(36 if xdt == "int16" else 40, 44, channels)],
             "y_zero_point": (lo + hi) // 2, "y_qmin": lo, "y_qmax": hi}
    consts = {"w": w.astype(np.int8)}
    if name != "gaps_u8":
        consts["b"] = rng.integers(-20000, 20000, m).astype(np.int32)
    model = _one_node(l3.QConvTranspose, {"x": x}, consts, attrs, from_numpy(np.dtype(xdt)))
    _same_as_reference(model, {"x": x})
    if name == "db_head_u8":  # the plain Relax conv too (the x86 kernels take this one)
        got = qtvm.build(model, kernels="default").run({"x": x})
        assert np.array_equal(got["y"], Interpreter(model).run({"x": x})["y"])


def test_db_head_quantized_by_qgraph_is_integer_and_bit_exact():
    """A DB-style detector head (PP-OCR: Conv -> BN -> Relu -> ConvTranspose(k 2, s 2) -> BN ->
    Relu -> ConvTranspose -> Sigmoid) through qgraph.quantize: both ConvTransposes integer
    (QConvTranspose, BN folded, Relu clamped), and every value of the compiled program equal to
    the reference (the float ConvTranspose of TVM and numpy differed in the last bits, and the
    Quantize after it flipped: up to 102 LSB on a PP-OCRv6-class detector)."""
    from onnx import TensorProto, helper, numpy_helper

    from qgraph.api import quantize

    rng = np.random.default_rng(21)

    def bn(name, c):
        return [numpy_helper.from_array(a.astype(np.float32), f"{name}_{k}") for k, a in
                (("s", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(0, 0.1, c)), ("m", rng.normal(0, 0.1, c)),
                 ("v", rng.uniform(0.5, 1.5, c)))]

    inits = [numpy_helper.from_array(rng.normal(0, 0.2, s).astype(np.float32), n) for n, s in
             (("w0", (8, 4, 3, 3)), ("w1", (8, 8, 2, 2)), ("w2", (8, 1, 2, 2)))]
    inits += bn("bn0", 8) + bn("bn1", 8)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c0"] + [f"bn0_{k}" for k in "sbmv"], ["b0"]),
             helper.make_node("Relu", ["b0"], ["r0"]),
             helper.make_node("ConvTranspose", ["r0", "w1"], ["t1"], strides=[2, 2], name="up1"),
             helper.make_node("BatchNormalization", ["t1"] + [f"bn1_{k}" for k in "sbmv"], ["b1"]),
             helper.make_node("Relu", ["b1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "w2"], ["t2"], strides=[2, 2], name="up2"),
             helper.make_node("Sigmoid", ["t2"], ["y"])]
    graph = helper.make_graph(nodes, "db_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    calib = [{"x": rng.normal(0, 1, (1, 4, 6, 5)).astype(np.float32)} for _ in range(4)]
    q = quantize(model, calib, report=False, show_progress=False)
    kinds = [n.op for n in q.integer.graph]
    assert kinds.count(l3.QConvTranspose) == 2 and ops.ConvTranspose not in kinds and ops.Relu not in kinds
    assert l3.after_float_ops(q.integer.graph) == set()
    names = [o.name for node in q.integer.graph for o in node.outputs if o is not None]
    compiled = qtvm.build(q.integer, outputs=names)
    for feeds in [{"x": rng.normal(0, 1.5, (1, 4, 6, 5)).astype(np.float32)} for _ in range(2)]:
        got = compiled.run(feeds)
        ref = Interpreter(q.integer).run(feeds, outputs=list(got))
        for n in names:
            assert got[n].dtype == ref[n].dtype and np.array_equal(got[n], ref[n]), n


@pytest.mark.parametrize("ceil_mode,include_pad", [(0, 0), (1, 0), (1, 1), (0, 1)])
def test_qaverage_pool_divisors(ceil_mode, include_pad):
    x = RNG.integers(0, 256, (2, 3, 10, 9), dtype=np.uint8)
    taps = 9
    mult = [0] + [int(round((1 << 34) / n)) for n in range(1, taps + 1)]
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 0], "ceil_mode": ceil_mode,
             "count_include_pad": include_pad, "x_zero_point": 100, "multiplier": mult, "shift": [34] * (taps + 1),
             "y_zero_point": 100, "y_qmin": 0, "y_qmax": 255}
    _same_as_reference(_one_node(l3.QAveragePool, {"x": x}, (), attrs), {"x": x})


def test_qmatmul_batched_activations_and_per_column_constant():
    a = RNG.integers(0, 256, (3, 4, 16), dtype=np.uint8)
    b = RNG.integers(0, 256, (3, 16, 5), dtype=np.uint8)
    attrs = {"a_zero_point": 120, "b_zero_point": [7], "multiplier": [1234567890], "shift": [42],
             "y_zero_point": 3, "y_qmin": 0, "y_qmax": 255}
    _same_as_reference(_one_node(l3.QMatMul, {"a": a, "b": b}, (), attrs), {"a": a, "b": b})
    w = RNG.integers(-127, 128, (16, 6), dtype=np.int8)
    attrs = {"a_zero_point": 120, "b_zero_point": [0] * 6, "multiplier": [1 << 30, 1 << 29, 3, 5, 7, (1 << 31) - 1],
             "shift": [36, 35, 0, 1, 2, 40], "y_zero_point": 0, "y_qmin": -128, "y_qmax": 127}
    bias = RNG.integers(-1000, 1000, 6).astype(np.int32)
    _same_as_reference(_one_node(l3.QMatMul, {"a": a}, {"w": w, "b": bias}, attrs, DType.INT8), {"a": a})


def test_qadd_qmul_requantize_lookup_broadcasting():
    a = RNG.integers(0, 256, (2, 4, 5), dtype=np.uint8)
    b = RNG.integers(-128, 128, (4, 1), dtype=np.int8)
    _same_as_reference(_one_node(l3.QAdd, {"a": a, "b": b}, (), {
        "a_zero_point": 128, "b_zero_point": -1, "a_multiplier": [1 << 30], "b_multiplier": [-(3 << 28)],
        "shift": [31], "y_zero_point": 128, "y_qmin": 0, "y_qmax": 255}), {"a": a, "b": b})
    _same_as_reference(_one_node(l3.QMul, {"a": a, "b": b}, (), {
        "a_zero_point": 128, "b_zero_point": 2, "multiplier": [1518500250], "shift": [38],
        "y_zero_point": 0, "y_qmin": -128, "y_qmax": 127}, DType.INT8), {"a": a, "b": b})
    _same_as_reference(_one_node(l3.Requantize, {"a": a}, (), {
        "x_zero_point": 128, "multiplier": [3], "shift": [0], "y_zero_point": 0, "y_qmin": -32768,
        "y_qmax": 32767}, DType.INT16), {"a": a})
    table = [int(v) for v in RNG.integers(-128, 128, 256)]
    _same_as_reference(_one_node(l3.Lookup, {"a": a}, (), {"table": table, "x_qmin": 0}, DType.INT8), {"a": a})


def test_elementwise_requant_high_half_form_is_exact():
    """Shifts of at least 32 requantize from the high int32 half of the rounded int64 product
    (then int32 arithmetic): every pair of byte values through a QMul (its product in int32),
    multipliers up to 2**31 - 1, a shift of exactly 32 (no second shift), shifts up to 62,
    int16 operands, and saturation at both ends."""
    a = np.arange(256, dtype=np.uint8).reshape(256, 1).repeat(256, 1)
    b = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 256).repeat(256, 0)
    for mult, shift in ((2**31 - 1, 32), (1518500250, 38), (1 << 30, 45)):
        model = _one_node(l3.QMul, {"a": a, "b": b}, (), {
            "a_zero_point": 3, "b_zero_point": -2, "multiplier": [mult], "shift": [shift],
            "y_zero_point": -7, "y_qmin": -128, "y_qmax": 127}, DType.INT8)
        text = qtvm.lower(model).script()
        # the product in int32; the high half: the clamp runs on int32 (the int64 form clamps int64)
        assert '"int32") = R.multiply' in text and '"int32") = R.clip(' in text, text
        _same_as_reference(model, {"a": a, "b": b})
    x = np.arange(-32768, 32768, 7, dtype=np.int64).astype(np.int16)
    for mult, shift in ((2**31 - 1, 33), (1234567890, 40), (7, 62)):
        model = _one_node(l3.Requantize, {"x": x}, (), {
            "x_zero_point": 100, "multiplier": [mult], "shift": [shift], "y_zero_point": 5,
            "y_qmin": -32768, "y_qmax": 32767}, DType.INT16)
        _same_as_reference(model, {"x": x})


def test_global_average_pool_sums_in_int32_where_it_fits():
    """The spatial sum of 8-bit values runs in int32 (then the high-half requant); int16 values
    over a large window could leave int32 and keep int64. Both equal the reference."""
    attrs = {"multiplier": [1518500250], "shift": [40], "y_zero_point": 3, "y_qmin": 0, "y_qmax": 255}
    x = RNG.integers(0, 256, (2, 5, 7, 9), dtype=np.uint8)
    x[0, 0] = 255  # a full channel: the largest sum
    model = _one_node(l3.QGlobalAveragePool, {"x": x}, (), {"x_zero_point": 0, **attrs})
    text = qtvm.lower(model).script()
    assert 'R.sum(' in text and '"int32") = R.sum' in text, text
    _same_as_reference(model, {"x": x})
    x16 = np.full((1, 2, 256, 256), 32767, np.int16)
    x16[0, 1] = -32768
    model = _one_node(l3.QGlobalAveragePool, {"x": x16}, (), {"x_zero_point": -5, **attrs, "shift": [52]})
    assert '"int64") = R.sum' in qtvm.lower(model).script()
    _same_as_reference(model, {"x": x16})


def test_quantize_ties_and_saturation():
    x = np.concatenate([np.arange(-300, 300, dtype=np.float32) * np.float32(0.5) * np.float32(0.02),
                        np.array([1e30, -1e30, 3.4e38, 0.0], np.float32)]).reshape(1, -1)
    attrs = {"scale": 0.02, "zero_point": 3, "qmin": -128, "qmax": 127}
    _same_as_reference(_one_node(l3.Quantize, {"x": x}, (), attrs, DType.INT8), {"x": x})


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_integer_max_pool_ceil_mode(dtype):
    """The pool pads integers itself (with the dtype's lowest value): border values at the
    lowest value and a window that ceil mode puts half outside."""
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, (1, 2, 7, 7)).astype(dtype)
    x[0, 0, 0, :] = info.min
    x[0, 1, :, -1] = info.min
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 0], "ceil_mode": 1}
    _same_as_reference(_one_node(ops.MaxPool, {"x": x}, (), attrs, from_numpy(np.dtype(dtype))), {"x": x})


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [13, 13], "strides": [1, 1], "pads": [6, 6, 6, 6]},               # YOLOX's SPP pool
    {"kernel_shape": [5, 4], "strides": [2, 3], "pads": [2, 1, 1, 2], "ceil_mode": 1},  # strides, odd pads, ceil
    {"kernel_shape": [4, 5], "strides": [1, 2], "pads": [0, 2, 3, 0], "dilations": [2, 1]},
])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_large_integer_max_pools_run_separably_and_equal_the_reference(attrs, dtype):
    """A 2-D integer max pool of >= ``SEPARABLE_POOL_MIN`` positions runs as a row pool then a
    column pool (two Relax pools) and still equals the reference: lowest-valued borders, pads,
    strides, dilations and ceil mode."""
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, (1, 3, 13, 15)).astype(dtype)
    x[0, 0, :2, :] = info.min
    x[0, 1, :, -3:] = info.min
    model = _one_node(ops.MaxPool, {"x": x}, (), attrs, from_numpy(np.dtype(dtype)))
    assert qtvm.lower(model).script().count("R.nn.max_pool2d") == 2
    _same_as_reference(model, {"x": x})


def _onnx_model(nodes, inputs, outputs, inits=(), opset=21):
    from onnx import helper, numpy_helper

    from qgraph.onnx import from_proto

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, dt, shape) for n, dt, shape in inputs],
        [helper.make_tensor_value_info(n, 0, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in inits])
    return from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def test_data_movement_ops_on_integers_exact():
    from onnx import TensorProto, helper

    x = RNG.integers(-128, 128, (2, 6, 5), dtype=np.int8)
    n = helper.make_node
    nodes = [
        n("Unsqueeze", ["x", "ax0"], ["u"]),                                  # [1, 2, 6, 5]
        n("Slice", ["u", "st", "en", "axs", "sp"], ["s"]),                   # reversed, strided
        n("Split", ["s", "parts"], ["p0", "p1"], axis=2),
        n("Concat", ["p1", "p0"], ["c"], axis=2),
        n("Gather", ["c", "idx"], ["g"], axis=3),
        n("Squeeze", ["g", "ax0"], ["q"]),
        n("Transpose", ["q"], ["t"], perm=[2, 0, 1]),
        n("Shape", ["t"], ["shp"]),
        n("Reshape", ["t", "shape"], ["r"]),
        n("Flatten", ["r"], ["f"], axis=2),
        n("MaxPool", ["u"], ["mp"], kernel_shape=[2, 2], pads=[1, 0, 0, 1], strides=[2, 2]),
        n("Identity", ["shp"], ["shape_out"]),
    ]
    inits = [("ax0", np.array([0], np.int64)), ("st", np.array([-1, 0], np.int64)),
             ("en", np.array([-100, 6], np.int64)), ("axs", np.array([1, 2], np.int64)),
             ("sp", np.array([-1, 2], np.int64)), ("parts", np.array([1, 2], np.int64)),
             ("idx", np.array([4, -1, 0], np.int64)), ("shape", np.array([0, -1, 1], np.int64))]
    model = _onnx_model(nodes, [("x", TensorProto.INT8, [2, 6, 5])], ["f", "mp", "shape_out"], inits)
    _same_as_reference(model, {"x": x})


def test_float_fallback_ops_close_to_reference():
    from onnx import TensorProto, helper

    x = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        n("HardSwish", ["c"], ["hs"]), n("HardSigmoid", ["hs"], ["hsig"], alpha=0.3),
        n("Sigmoid", ["c"], ["sg"]), n("Clip", ["c", "lo", "hi"], ["cl"]),
        n("Sub", ["cl", "sg"], ["d"]), n("Div", ["d", "two"], ["dv"]), n("Pow", ["dv", "two"], ["pw"]),
        n("Sqrt", ["pw"], ["sq"]), n("Add", ["sq", "hsig"], ["a"]), n("Mul", ["a", "hs"], ["m"]),
        n("LayerNormalization", ["m", "gamma", "beta"], ["ln"], axis=-1),
        n("Gelu", ["ln"], ["ge"]),
        n("ReduceMean", ["ge", "axes"], ["rm"], keepdims=1),
        n("Softmax", ["m"], ["sm"], axis=1),
        n("GlobalAveragePool", ["m"], ["gap"]),
        n("AveragePool", ["m"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Resize", ["ap", "", "scales"], ["rs"], mode="nearest"),
        n("Flatten", ["gap"], ["fl"]), n("Gemm", ["fl", "gw", "gb"], ["gm"], transB=1, alpha=0.5),
        n("MatMul", ["m", "mm"], ["mt"]), n("Cast", ["gm"], ["ci"], to=TensorProto.INT32),
    ]
    inits = [("w", w), ("b", np.float32([0.1, -0.2, 0.3, 0.0])), ("lo", np.float32(-1.0)), ("hi", np.float32(2.0)),
             ("two", np.float32(2.0)), ("gamma", np.full(6, 1.5, np.float32)), ("beta", np.full(6, 0.1, np.float32)),
             ("axes", np.array([2, 3], np.int64)), ("scales", np.float32([1, 1, 2, 2])),
             ("gw", RNG.standard_normal((3, 4)).astype(np.float32)), ("gb", np.float32([1, 2, 3])),
             ("mm", RNG.standard_normal((6, 2)).astype(np.float32))]
    outs = ["rm", "sm", "rs", "gm", "mt", "ci"]
    model = _onnx_model(nodes, [("x", TensorProto.FLOAT, [2, 4, 6, 6])], outs, inits)
    got = qtvm.build(model).run({"x": x})
    ref = Interpreter(model).run({"x": x})
    for k in outs:
        assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype, k
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)



def test_lrn_equals_reference():
    """LRN (AlexNet, ZFNet, GoogLeNet): the channel window summed in the reference's order."""
    from onnx import TensorProto, helper

    x = RNG.uniform(-5, 5, (1, 7, 5, 6)).astype(np.float32)
    for size in (1, 4, 5):
        nodes = [helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.01, beta=0.75, bias=2.0)]
        model = _onnx_model(nodes, [("x", TensorProto.FLOAT, list(x.shape))], ["y"])
        got = qtvm.build(model).run({"x": x})["y"]
        ref = Interpreter(model).run({"x": x})["y"]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0, err_msg=f"size {size}")

# (op, attributes, inputs beyond X / W / R as (index, name)): forms real CRNN / VAD / speech models use
RECURRENT_CASES = {
    "lstm_forward_bias_peephole_states": ("LSTM", {}, True, True, True),
    "lstm_reverse": ("LSTM", {"direction": "reverse"}, True, False, False),
    "lstm_bidirectional_layout1": ("LSTM", {"direction": "bidirectional", "layout": 1}, True, True, False),
    "gru_bidirectional": ("GRU", {"direction": "bidirectional"}, True, True, False),
    "gru_linear_before_reset": ("GRU", {"linear_before_reset": 1}, True, False, False),
    "rnn_forward": ("RNN", {}, True, True, False),
    "rnn_relu_no_bias": ("RNN", {"activations": ["Relu"]}, False, False, False),
    # both directions in one batch, peepholes per direction
    "lstm_bidirectional_peephole": ("LSTM", {"direction": "bidirectional"}, True, True, True),
    # directions with different activations run apart
    "rnn_bidirectional_two_activations": ("RNN", {"direction": "bidirectional", "activations": ["Tanh", "Relu"]},
                                          True, True, False),
    # gate widths (20, 18) no GEMV block divides: Relax's batched matmul instead
    "lstm_bidirectional_hidden5": ("LSTM", {"direction": "bidirectional", "hidden_size": 5}, True, True, False),
    "gru_bidirectional_hidden6": ("GRU", {"direction": "bidirectional", "hidden_size": 6}, True, False, False),
}


@pytest.mark.parametrize("name", list(RECURRENT_CASES))
def test_recurrent_ops_close_to_onnx_runtime(name):
    """LSTM / GRU / RNN stay float; TVM unrolls them over the static sequence length (a
    bidirectional op's directions as one batch; 8 hidden units: the x86 GEMV kernel takes the
    matmuls). Checked against ONNX Runtime, which implements every attribute (the onnx reference
    ignores some)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from qgraph.onnx import to_proto

    kind, attrs, bias, states, peep = RECURRENT_CASES[name]
    attrs = dict(attrs)
    seq, batch, inp, hid = 5, 3, 4, attrs.pop("hidden_size", 8)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal((batch, seq, inp) if layout else (seq, batch, inp)).astype(np.float32)
    inits = [("W", rng.standard_normal((dirs, gates * hid, inp)).astype(np.float32) * 0.5),
             ("R", rng.standard_normal((dirs, gates * hid, hid)).astype(np.float32) * 0.5)]
    ins = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(("B", rng.standard_normal((dirs, 2 * gates * hid)).astype(np.float32) * 0.3))
        ins[3] = "B"
    if states:
        shape = (batch, dirs, hid) if layout else (dirs, batch, hid)
        inits.append(("h0", rng.standard_normal(shape).astype(np.float32)))
        ins[5] = "h0"
        if kind == "LSTM":
            inits.append(("c0", rng.standard_normal(shape).astype(np.float32)))
            ins[6] = "c0"
    if peep:
        inits.append(("P", rng.standard_normal((dirs, 3 * hid)).astype(np.float32) * 0.3))
        ins[7] = "P"
    while ins[-1] == "":
        ins.pop()
    outs = ["y", "yh"] + (["yc"] if kind == "LSTM" else [])
    node = helper.make_node(kind, ins, outs, hidden_size=hid, **attrs)
    model = _onnx_model([node], [("x", TensorProto.FLOAT, list(x.shape))], outs, inits, opset=14)
    built = qtvm.build(model)
    got = built.run({"x": x})
    assert ("qfloat_gemv" in built.kernels) == (gates * hid % 8 == 0), sorted(built.kernels)
    # the whole LSTM loop is one kernel where the x86 package covers it (no peepholes, 8 | H)
    assert ("qfloat_lstm" in built.kernels) == (kind == "LSTM" and not peep and hid % 8 == 0), sorted(built.kernels)
    if layout:  # ONNX Runtime refuses layout=1: its reference is the same cell on transposed tensors
        node = helper.make_node(kind, ins, outs, hidden_size=hid, **dict(attrs, layout=0))
        inits = [(k, v.transpose(1, 0, 2) if k in ("h0", "c0") else v) for k, v in inits]
        model = _onnx_model([node], [("x", TensorProto.FLOAT, [seq, batch, inp])], outs, inits, opset=14)
    proto = to_proto(model)
    for o in proto.graph.output:
        o.type.tensor_type.elem_type = TensorProto.FLOAT
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    wants = sess.run(outs, {"x": x.transpose(1, 0, 2) if layout else x})
    if layout:
        wants = [wants[0].transpose(2, 0, 1, 3)] + [w.transpose(1, 0, 2) for w in wants[1:]]
    for k, want in zip(outs, wants):
        assert got[k].shape == want.shape, (k, got[k].shape, want.shape)
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("direction,seq,batch,hidden,states,half", [
    ("bidirectional", 7, 1, 16, False, False),  # the CRNN's form: batch 1, zero states
    ("reverse", 5, 3, 8, True, True),  # an odd batch: a one-row tile after a two-row one; float16 storage
    ("forward", 17, 2, 24, True, False),  # 34 rows of input projection: Relax's matmul, not the GEMV
])
def test_fused_lstm_loop_matches_the_unrolled_steps(monkeypatch, direction, seq, batch, hidden, states, half):
    """``x86.recurrent.float_lstm`` (the time loop in one kernel, the cell update in the GEMV's
    epilogue, a polynomial ``exp``) against the unrolled lowering of the same op (one kernel
    chain per step, TVM's ``exp``): the same values within a few float32 ulps, the states given
    as inputs (not constants) so neither lowering folds a step at build time. ``half``: weights
    that hold float16 values, which both lowerings store in 2 bytes."""
    from onnx import TensorProto, helper

    import qgraph.tvm.x86 as x86

    rng = np.random.default_rng(seq)
    dirs = 2 if direction == "bidirectional" else 1
    x = (rng.standard_normal((seq, batch, 8)) * 2).astype(np.float32)
    weight_type = np.float16 if half else np.float32
    inits = [("W", (rng.standard_normal((dirs, 4 * hidden, 8)) * 0.5).astype(weight_type).astype(np.float32)),
             ("R", (rng.standard_normal((dirs, 4 * hidden, hidden)) * 0.5).astype(weight_type).astype(np.float32)),
             ("B", rng.standard_normal((dirs, 8 * hidden)).astype(np.float32))]
    ins, feeds, graph_in = ["x", "W", "R", "B"], {"x": x}, [("x", TensorProto.FLOAT, list(x.shape))]
    if states:
        ins += ["", "h0", "c0"]
        for k in ("h0", "c0"):
            feeds[k] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
            graph_in.append((k, TensorProto.FLOAT, [dirs, batch, hidden]))
    outs = ["y", "yh", "yc"]
    node = helper.make_node("LSTM", ins, outs, hidden_size=hidden, direction=direction)
    model = _onnx_model([node], graph_in, outs, inits, opset=14)
    fused = qtvm.build(model)
    assert "qfloat_lstm" in fused.kernels, sorted(fused.kernels)
    lstm_kernel = next(f for gv, f in qtvm.lower(model).functions.items() if gv.name_hint == "qfloat_lstm")
    assert ('"float16")' in lstm_kernel.script()) == half
    got = fused.run(feeds)
    monkeypatch.setattr(x86, "float_lstm", lambda *a, **k: None)
    unrolled = qtvm.build(model)
    assert "qfloat_lstm" not in unrolled.kernels
    want = unrolled.run(feeds)
    for k in outs:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], rtol=4e-7, atol=4e-7, err_msg=k)
    feeds["x"] = x.copy()
    feeds["x"][seq // 2, 0, 3] = np.nan  # a NaN propagates as in the unrolled steps (not squashed to a number)
    got, want = fused.run(feeds), unrolled.run(feeds)
    for k in outs:
        assert np.array_equal(np.isnan(got[k]), np.isnan(want[k])) and np.isnan(got[k]).any(), k


def test_recurrent_weights_float16_build_streams_two_bytes_and_keeps_the_values():
    """A quantized model with ``recurrent_weights = "float16"``: its LSTM's recurrence and input
    weights hold float16 values, so x86's LSTM kernel and the input projection's GEMV take them
    as float16 constants (half the bytes); the build's output is the reference's within the
    fused loop's float ulps (that float16 storage gives float32 storage's bits is
    ``test_tvm_kernels.py``'s)."""
    import tvm
    from onnx import TensorProto, helper

    import qgraph

    rng = np.random.default_rng(9)
    inits = [("m", rng.standard_normal((8, 8)).astype(np.float32)),
             ("W", (rng.standard_normal((2, 64, 8)) * 0.4).astype(np.float32)),
             ("R", (rng.standard_normal((2, 64, 16)) * 0.4).astype(np.float32)),
             ("B", rng.standard_normal((2, 128)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "m"], ["h"]),
             helper.make_node("LSTM", ["h", "W", "R", "B"], ["y"], hidden_size=16, direction="bidirectional")]
    model = _onnx_model(nodes, [("x", TensorProto.FLOAT, [7, 1, 8])], ["y"], inits, opset=17)
    calib = [{"x": rng.standard_normal((7, 1, 8)).astype(np.float32)} for _ in range(4)]
    q = qgraph.quantize(model, calib, {"recurrent_weights": "float16"}, report=False, show_progress=False)
    lstm = next(n for n in q.integer.graph if n.op_type == "LSTM")
    for v in lstm.inputs[1:3]:
        data = v.constant().numpy()
        assert data.dtype == np.float32 and np.array_equal(data.astype(np.float16).astype(np.float32), data)
    mod = qtvm.lower(q.integer, target="cpu")
    stored = {gv.name_hint: '"float16")' in f.script() for gv, f in mod.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith(("qfloat_lstm", "qfloat_gemv"))}
    assert stored == {"qfloat_gemv": True, "qfloat_lstm": True}, stored  # a float16 buffer: the packed weights
    x = {"x": rng.standard_normal((7, 1, 8)).astype(np.float32)}
    got = qtvm.build(q.integer).run(x)["y"]
    np.testing.assert_allclose(got, q.run(x)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a_shape,b_shape", [((1, 64), (64, 512)), ((6, 40), (40, 24)), ((2, 3, 8, 32), (32, 48)),
                                             ((5, 7), (7, 3))])
def test_float_matmul_schedule_takes_products_only_and_keeps_values(a_shape, b_shape):
    """``float_matmul_schedule.matmul_rule`` schedules float MatMul (+ bias) kernels, GEMV
    and batched ones included, and refuses a column count no vector divides (3) and other
    reductions (ReduceSum); the built results agree with numpy to float tolerance."""
    import tvm
    from onnx import TensorProto, helper
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from qgraph.tvm.float_matmul_schedule import matmul_rule

    rng = np.random.default_rng(3)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    bias = rng.standard_normal(b_shape[-1]).astype(np.float32)
    n = helper.make_node
    model = _onnx_model([n("MatMul", ["a", "b"], ["m"]), n("Add", ["m", "bias"], ["y"]),
                         n("ReduceSum", ["a", "ax"], ["r"], keepdims=0)],
                        [("a", TensorProto.FLOAT, list(a_shape))], ["y", "r"],
                        [("b", b), ("bias", bias), ("ax", np.array([-1], np.int64))])
    got = qtvm.build(model).run({"a": a})
    np.testing.assert_allclose(got["y"], a @ b + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["r"], a.sum(-1), rtol=1e-5, atol=1e-5)

    tgt = targets.get("cpu").tvm_target()
    with tgt:
        mod = tvm.transform.Sequential(cpu.legalize_passes(tgt))(qtvm.lower(model))
    taken = {gv.name_hint: matmul_rule().apply(f, tgt, False) is not None
             for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    matmuls = [k for k in taken if "matmul" in k]
    assert matmuls and all(taken[k] == (b_shape[-1] != 3) for k in matmuls), taken
    assert not any(v for k, v in taken.items() if "sum" in k), taken


def test_recurrent_unsupported_attribute_names_node():
    from onnx import TensorProto, helper

    w = np.zeros((1, 8, 2), np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="enc", hidden_size=2, clip=3.0)
    model = _onnx_model([node], [("x", TensorProto.FLOAT, [3, 1, 2])], ["y"], [("W", w), ("R", w)], opset=14)
    with pytest.raises(qtvm.LoweringError, match="LSTM node 'enc'.*clip attribute is not supported"):
        qtvm.lower(model)


# -- API ----------------------------------------------------------------------------------------
def test_lower_gives_a_relax_main_with_graph_inputs_and_outputs(quantized):
    q = quantized("op_pool")
    mod = qtvm.lower(q.integer, batch_size=2)
    main = mod["main"]
    assert [p.name for p in main.params] == ["x"]
    assert len(main.ret_ty.fields) == 3  # avg, max, gap in graph order
    assert [int(d) for d in main.ret_ty.fields[1].shape] == [2, 4, 2, 2]


def test_symbolic_batch_needs_a_static_shape(quantized):
    with pytest.raises(qtvm.LoweringError, match="static shapes.*batch_size"):
        qtvm.lower(quantized("op_conv").integer)


def test_unsupported_op_names_node_and_op():
    x = np.zeros((1, 4), np.float32)
    model = _one_node(ops.op("NoSuchOp", "example.domain"), {"x": x}, (), {}, DType.FLOAT)
    with pytest.raises(qtvm.LoweringError, match=r"no TVM lowering for example\.domain::NoSuchOp \('n'\): .*--target qdq"):
        qtvm.lower(model)


def test_every_op_without_lowering_is_named_in_one_error(capfd):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Hardmax", ["r3"], ["y"], name="hm1"),
         helper.make_node("Unsqueeze", ["r", "ax"], ["r3"], name="unsq"),
         helper.make_node("Hardmax", ["r3"], ["y2"], name="hm2"),
         helper.make_node("Det", ["sq"], ["d"], name="det"), helper.make_node("Mul", ["r", "r"], ["sq"], name="sq")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y2", "d")],
        [helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
    g.node.sort(key=lambda n: ["relu", "unsq", "hm1", "hm2", "sq", "det"].index(n.name))
    from qgraph.onnx import from_proto

    model = from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(qtvm.LoweringError) as e:
        qtvm.lower(model)
    assert str(e.value).startswith("no TVM lowering for Hardmax ('hm1', 'hm2'); Det ('det'): ")
    del e  # the error is raised before TVM's BlockBuilder opens: nothing of it is left to warn on stderr
    import gc

    gc.collect()
    assert "BlockBuilder" not in capfd.readouterr().err


def test_run_checks_feeds(quantized):
    c = qtvm.build(quantized("op_gemm").integer, batch_size=2)
    with pytest.raises(qtvm.RunError, match=r"expects float32\[2, 16\]"):
        c.run({"x": np.zeros((3, 16), np.float32)})
    with pytest.raises(qtvm.RunError, match="missing feed"):
        c.run({})


def test_export_load_roundtrip(quantized, tmp_path):
    q = quantized("digits_cnn")
    feeds = {"input": _test_feeds(q.integer, "digits_cnn")["input"][:8]}
    c = qtvm.build(q.integer, batch_size=8)
    lib = c.export(str(tmp_path))
    assert os.path.basename(lib) == "model.so"
    loaded = qtvm.load(str(tmp_path))
    assert loaded.inputs == c.inputs and loaded.outputs == c.outputs
    assert np.array_equal(loaded.run(feeds)["logits"], q.run(feeds)["logits"])


def test_aarch64_cross_compile(quantized, tmp_path):
    c = qtvm.build(quantized("op_conv").integer, "aarch64", batch_size=1)
    with pytest.raises(qtvm.RunError, match="cannot run on this machine"):
        c.run({"x": np.zeros((1, 3, 16, 16), np.float32)})
    lib = c.export(str(tmp_path))
    if lib.endswith(".tar"):  # no cross linker here: the object files, for AArch64
        with tarfile.open(lib) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".o"))
            header = tar.extractfile(member).read(20)
    else:
        with open(lib, "rb") as f:
            header = f.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


# -- targets ------------------------------------------------------------------------------------
def test_targets_from_cpu_flags():
    assert targets.x86_mcpu(frozenset({"avx", "avx2", "fma"}))[0] == "core-avx2"
    mcpu, feats = targets.x86_mcpu(frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}))
    assert mcpu == "cascadelake" and "avx512vnni" in feats
    assert targets.cpu_flags("processor : 0\nflags : fpu sse4_2 avx2\n") == {"fpu", "sse4_2", "avx2"}
    host = targets.get("cpu")
    assert host.runnable and host.tvm_dict["kind"] == "llvm"
    assert host.tvm_target().kind.name == "llvm"
    assert not targets.get("aarch64").runnable or targets.get("aarch64").tvm_dict["mtriple"].startswith("aarch64")
    with pytest.raises(targets.UnknownTargetError, match="known targets: cpu, aarch64"):
        targets.get("tpu")


# -- PP-OCRv4 (slow) ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("which", ["cls", "rec"])
def test_ppocr_bit_exact(which, tmp_path):
    ocr = pytest.importorskip("qgraph.testing.ocr")
    from qgraph.api import quantize

    width = 320 if which == "rec" else 192
    calib = ocr.render_lines(ocr.sample_texts(8, seed=1), width=width)
    np.savez(tmp_path / "calib.npz", x=calib)
    path = ocr.rec_model_path() if which == "rec" else _cls_model(tmp_path)
    q = quantize(path, str(tmp_path / "calib.npz"), report=False)
    x = ocr.render_lines(ocr.sample_texts(2, seed=5), width=width)
    outs = [v.name for v in q.integer.graph.outputs]
    names = [o.name for node in q.integer.graph for o in node.outputs if o is not None]
    got = qtvm.build(q.integer, input_shapes={"x": x.shape}, outputs=outs + [n for n in names if n not in outs]
                     ).run({"x": x})
    ref = Interpreter(q.integer).run({"x": x}, outputs=list(got))
    _compare(q.integer, got, ref, list(got))


def _cls_model(tmp_path) -> str:
    """PP-OCRv4 cls with its fixed -1 batch dim made symbolic (calibration batches need it)."""
    import onnx

    from qgraph.testing import ocr

    root = os.path.dirname(ocr.rec_model_path())
    model = onnx.load(sorted(glob.glob(os.path.join(root, "*cls*.onnx")))[0])
    for i in model.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = "N"
    path = str(tmp_path / "cls.onnx")
    onnx.save(model, path)
    return path



@pytest.mark.parametrize("h,w", [(2, 2), (5, 4)])
def test_global_average_pool_runtime_count_equals_reference(h, w):
    """A model lowered with symbolic H, W (the runtime-count QGlobalAveragePool: int64
    floordiv / floormod, ties to even), built for two sizes: every value equals the reference,
    exact .5 cases included (qgraph.tvm builds for static input shapes: one build per size)."""
    from test_lower_qdq import gap_model, gap_tie_feeds, lower

    for scales in ((0.5, 128, 0.5, 128), (0.0173, 121, 0.0061, 130)):
        model, _ = lower(gap_model(*scales))
        gap = next(n for n in model.graph if n.op is l3.QGlobalAveragePool)
        assert gap.attr("runtime_count") == 1
        text = qtvm.lower(model, {"x": [1, 3, h, w]}).script()
        assert "R.floor_divide(" in text and "R.floor_mod(" in text, text
        compiled = qtvm.build(model, input_shapes={"x": [1, 3, h, w]},
                              outputs=[o.name for n in model.graph for o in n.outputs])
        interp = Interpreter(model)
        for feeds in (gap_tie_feeds(h, w, scales[0], scales[1])[0],
                      {"x": RNG.uniform(-2, 2, (1, 3, h, w)).astype(np.float32)}):
            got = compiled.run(feeds)
            ref = interp.run(feeds, outputs=list(got))
            for k in got:
                assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), (k, got[k], ref[k])
