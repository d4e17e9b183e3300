"""The L2 reader (``qgraph.ir.l2.read_qdq``) and the one definition of a constant (``Value.constant``).

Small graphs in the text form, one per ONNX rule the reader implements, and the call sites
whose behaviour changed when they moved onto it (report, overflow analysis, lower-qdq).
"""

import numpy as np
import pytest

from qgraph.ir import DType
from qgraph.ir.l2 import QDQParamsError, int_range, read_qdq
from qgraph.ir.text import parse_model
from qgraph.quant import QuantParams
from qgraph.rewrite import constant_tensor

HEAD = 'model opset {"": 21}\n'


def _model(body: str, inputs: str = "%x: f32[1,3,2,2]", outputs: str = "%y"):
    return parse_model(HEAD + f"graph main({inputs}) -> ({outputs}) {{\n{body}\n}}")


def _node(model, name: str):
    return next(n for n in model.graph if n.name == name)


def _read(body: str, name: str = "q", **kw):
    return read_qdq(_node(_model(body, **kw), name))


# -- Value.constant: one definition ---------------------------------------------------------------

def test_constant_is_an_initializer_or_a_constant_node_not_an_overridable_default():
    m = _model("""  init %w: f32[2] = [1.0, 2.0]
  init %d: f32[2] = [3.0, 4.0]
  %c = Constant() {value=tensor<f32[2]> [5.0, 6.0]} @c
  %y = Sum(%x, %w, %d, %c)""", inputs="%x: f32[2]")
    g = m.graph
    g.inputs.append(g.initializers["d"])  # an ONNX initializer listed among the inputs too
    x, d, w = g.inputs[0], g.inputs[1], g.initializers["w"]
    c = _node(m, "c").output
    assert w.constant().numpy().tolist() == [1.0, 2.0]
    assert c.constant().numpy().tolist() == [5.0, 6.0]
    # an initializer that is also a graph input is a default a feed may override: not constant
    assert d.is_initializer() and d.is_graph_input() and d.constant() is None
    assert x.constant() is None
    # the rewrite engine's Const reads the same definition
    for v in (x, d, w, c):
        assert constant_tensor(v) is v.constant()
    assert constant_tensor(None) is None


# -- read_qdq ------------------------------------------------------------------------------------

def test_per_tensor_with_a_zero_point():
    p = _read("""  init %s: f32[] = 0.5
  init %z: i8[] = -3
  %y = QuantizeLinear(%x, %s, %z) @q""")
    assert p.dtype is DType.INT8 and (p.qmin, p.qmax) == (-128, 127)
    assert p.axis is None and p.per_tensor and not p.per_channel and p.block_size == 0
    assert p.scale.shape == () and p.scale.dtype == np.float32 and float(p.scale) == 0.5
    assert p.zero_point.shape == () and p.zero_point.dtype == np.int64 and int(p.zero_point) == -3
    assert not p.scale.flags.writeable and not p.zero_point.flags.writeable


def test_quantize_without_zero_point_is_uint8_unless_output_dtype_says():
    p = _read("""  init %s: f32[] = 0.5
  %y = QuantizeLinear(%x, %s) @q""")
    assert p.dtype is DType.UINT8 and int(p.zero_point) == 0 and p.zero_point.shape == ()
    p = _read(f"""  init %s: f32[] = 0.5
  %y = QuantizeLinear(%x, %s) {{output_dtype={int(DType.INT8)}}} @q""")
    assert p.dtype is DType.INT8 and (p.qmin, p.qmax) == (-128, 127)
    p = _read(f"""  init %s: f32[] = 0.5
  %y = QuantizeLinear(%x, %s) {{output_dtype={int(DType.UINT4)}}} @q""")
    assert p.dtype is DType.UINT4 and (p.qmin, p.qmax) == (0, 15)


def test_dequantize_without_zero_point_takes_its_input_type():
    p = _read("""  init %s: f32[] = 0.5
  %y = DequantizeLinear(%x, %s) @q""", inputs="%x: i16[4]")
    assert p.dtype is DType.INT16 and int(p.zero_point) == 0
    with pytest.raises(QDQParamsError, match="'q'.*type of its input 'x' is unknown"):
        _read("""  init %s: f32[] = 0.5
  %y = DequantizeLinear(%x, %s) @q""", inputs="%x")
    # an untyped edge from a QuantizeLinear carries that node's type
    p = _read(f"""  init %s: f32[] = 0.5
  %xq = QuantizeLinear(%x, %s) {{output_dtype={int(DType.INT4)}}}
  %y = DequantizeLinear(%xq, %s) @q""", inputs="%x: f32[4]")
    assert p.dtype is DType.INT4


@pytest.mark.parametrize("short, dtype, lo, hi", [
    ("i4", DType.INT4, -8, 7), ("u4", DType.UINT4, 0, 15), ("i8", DType.INT8, -128, 127),
    ("u8", DType.UINT8, 0, 255), ("i16", DType.INT16, -32768, 32767), ("u16", DType.UINT16, 0, 65535),
    ("i32", DType.INT32, -(1 << 31), (1 << 31) - 1),
])
def test_every_integer_type(short, dtype, lo, hi):
    p = _read(f"""  init %s: f32[] = 0.5
  init %z: {short}[] = 1
  %y = DequantizeLinear(%x, %s, %z) @q""", inputs=f"%x: {short}[4]")
    assert p.dtype is dtype and (p.qmin, p.qmax) == (lo, hi) == int_range(dtype)
    assert int(p.zero_point) == 1


def test_two_bit_types_have_a_range_but_no_quant_params():
    assert int_range(DType.INT2) == (-2, 1) and int_range(DType.UINT2) == (0, 3)


def test_float8_is_refused_by_name():
    with pytest.raises(QDQParamsError, match="'q' quantizes to FLOAT8E4M3FN.*integer"):
        _read(f"""  init %s: f32[] = 0.5
  %y = QuantizeLinear(%x, %s) {{output_dtype={int(DType.FLOAT8E4M3FN)}}} @q""")


def test_half_precision_scales_widen_exactly_and_double_is_refused():
    p = _read("""  init %s: f16[] = 0.1
  %y = QuantizeLinear(%x, %s) @q""", inputs="%x: f16[4]")
    assert p.scale.dtype == np.float32 and float(p.scale) == float(np.float16(0.1))
    assert p.scale_dtype is DType.FLOAT16
    with pytest.raises(QDQParamsError, match="'s' is DOUBLE"):
        _read("""  init %s: f64[] = 0.5
  %y = QuantizeLinear(%x, %s) @q""")


def test_per_axis_normalizes_a_negative_axis():
    p = _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  init %z: i8[3] = [0, 1, -1]
  %y = QuantizeLinear(%x, %s, %z) {axis=-3} @q""")
    assert p.axis == 1 and p.per_channel and p.scale.shape == (3,) and p.zero_point.tolist() == [0, 1, -1]
    p = _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  %y = QuantizeLinear(%x, %s) @q""")  # ONNX's default axis is 1
    assert p.axis == 1
    # the rank comes from the other side when this one is unknown, else the axis stays negative
    p = _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  %y: u8[2,3] = QuantizeLinear(%x, %s) {axis=-1} @q""", inputs="%x")
    assert p.axis == 1
    p = _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  %y = QuantizeLinear(%x, %s) {axis=-1} @q""", inputs="%x")
    assert p.axis == -1


def test_a_one_element_scale_is_per_tensor():
    p = _read("""  init %s: f32[1] = [0.5]
  init %z: u8[] = 7
  %y = QuantizeLinear(%x, %s, %z) {axis=0} @q""")
    assert p.axis is None and p.scale.shape == () and p.zero_point.shape == () and int(p.zero_point) == 7


def test_per_axis_shape_errors_name_the_node():
    with pytest.raises(QDQParamsError, match="'q': axis 4 is out of range for its rank-4"):
        _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  %y = QuantizeLinear(%x, %s) {axis=4} @q""")
    with pytest.raises(QDQParamsError, match="'q': 3 scales for axis 0 of size 1"):
        _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  %y = QuantizeLinear(%x, %s) {axis=0} @q""")
    with pytest.raises(QDQParamsError, match="'q': zero point 'z' has shape"):
        _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  init %z: u8[2] = [1, 2]
  %y = QuantizeLinear(%x, %s, %z) @q""")


def test_block_quantization():
    p = _read("""  init %w: i8[2,5] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  init %s: f32[2,3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  %y = DequantizeLinear(%w, %s) {axis=-1, block_size=2} @q""", inputs="")
    assert p.block_size == 2 and p.axis == 1 and not p.per_channel and not p.per_tensor
    assert p.scale.shape == (2, 3) and p.zero_point.shape == (2, 3) and p.dtype is DType.INT8
    with pytest.raises(ValueError, match="block"):
        QuantParams.from_qdq(p)
    with pytest.raises(QDQParamsError, match=r"'q': 2 blocks of 2 along axis 1 of size 5 \(expected 3\)"):
        _read("""  init %w: i8[2,5] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  init %s: f32[2,2] = [1.0, 2.0, 3.0, 4.0]
  %y = DequantizeLinear(%w, %s) {axis=1, block_size=2} @q""", inputs="")


def test_parameters_must_be_constants():
    with pytest.raises(QDQParamsError, match="QuantizeLinear node 'q': the scale 's' is not a constant;"):
        _read("  %y = QuantizeLinear(%x, %s) @q", inputs="%x: f32[4], %s: f32[]")
    # an initializer that is also a graph input: a feed may override it
    m = _model("""  init %s: f32[] = 0.5
  init %z: u8[] = 3
  %y = QuantizeLinear(%x, %s, %z) @q""", inputs="%x: f32[4]")
    m.graph.inputs.append(m.graph.initializers["z"])
    with pytest.raises(QDQParamsError, match="zero point 'z' is not a constant.*overridden by a feed"):
        read_qdq(_node(m, "q"))
    with pytest.raises(QDQParamsError, match="'q' has no scale input"):
        _read("  %y = QuantizeLinear(%x) @q", inputs="%x: f32[4]")
    with pytest.raises(QDQParamsError, match="Relu node 'q' is not a QuantizeLinear"):
        _read("  %y = Relu(%x) @q", inputs="%x: f32[4]")


def test_constant_node_parameters_and_the_microsoft_domain():
    m = parse_model("""model opset {"": 21, "com.microsoft": 1}
graph main(%x: u16[4]) -> (%y) {
  %s = Constant() {value=tensor<f32[]> [0.25]}
  %z = Constant() {value=tensor<u16[]> [300]}
  %y = com.microsoft::DequantizeLinear(%x, %s, %z) @q
}""")
    p = read_qdq(_node(m, "q"))
    assert p.dtype is DType.UINT16 and float(p.scale) == 0.25 and int(p.zero_point) == 300


def test_quant_params_from_qdq():
    p = _read("""  init %s: f32[3] = [0.5, 0.25, 1.0]
  init %z: u8[3] = [0, 1, 2]
  %y = QuantizeLinear(%x, %s, %z) {axis=-3} @q""")
    qp = QuantParams.from_qdq(p)
    assert qp == QuantParams(np.array([0.5, 0.25, 1.0], np.float32), np.array([0, 1, 2]), "uint8", 1)


# -- the call sites whose behaviour changed --------------------------------------------------------

def test_report_types_a_quantize_without_zero_point_by_its_output_dtype():
    from qgraph.verify.report import layer_rows

    m = _model(f"""  init %s: f32[] = 0.5
  init %zu: u8[] = 128
  init %s2: f32[] = 0.25
  %xq = QuantizeLinear(%x, %s, %zu)
  %xd = DequantizeLinear(%xq, %s, %zu)
  %a = Sigmoid(%xd) @sig
  %aq = QuantizeLinear(%a, %s2) {{output_dtype={int(DType.INT8)}}}
  %y = DequantizeLinear(%aq, %s2)""")
    (row,) = layer_rows(m)
    assert row["node"] == "sig" and row["inputs"] == ["uint8"]
    # ("y": the float model's name of a quantized graph output); was "uint8": a missing zero point defaulted to uint8 whatever output_dtype said
    assert row["output"] == {"tensor": "y", "q_tensor": "aq", "dtype": "int8", "scale": 0.25, "zero_point": 0}
    assert row["integer"] is True


def test_report_weights_axis_and_overridable_initializers():
    from qgraph.verify.report import layer_rows

    m = _model("""  init %s: f32[] = 0.5
  init %zu: u8[] = 128
  init %wq: i8[3,4] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
  init %ws: f32[4] = [0.1, 0.2, 0.3, 0.4]
  init %bq: i8[4] = [1, 2, 3, 4]
  %xq = QuantizeLinear(%x, %s, %zu)
  %xd = DequantizeLinear(%xq, %s, %zu)
  %wd = DequantizeLinear(%wq, %ws) {axis=-1}
  %bd = DequantizeLinear(%bq, %s)
  %m = MatMul(%xd, %wd) @mm
  %y = Add(%m, %bd) @add""", inputs="%x: f32[2,3]")
    m.graph.inputs.append(m.graph.initializers["bq"])
    rows = {r["node"]: r for r in layer_rows(m)}
    # the axis is normalized (was the attribute as written, -1)
    assert rows["mm"]["weight"]["axis"] == 1 and rows["mm"]["weight"]["channels"] == 4
    # 'bq' is an initializer a feed may override: an input, not a weight (was a weight)
    assert "weight" not in rows["add"] and rows["add"]["inputs"] == ["float", "int8"]


def test_report_leaves_out_a_per_axis_output():
    from qgraph.verify.report import layer_rows

    m = _model("""  init %s: f32[] = 0.5
  init %zu: u8[] = 128
  init %s3: f32[3] = [0.5, 0.25, 1.0]
  %xq = QuantizeLinear(%x, %s, %zu)
  %xd = DequantizeLinear(%xq, %s, %zu)
  %a = Sigmoid(%xd) @sig
  %aq = QuantizeLinear(%a, %s3) {axis=1}
  %y = DequantizeLinear(%aq, %s3) {axis=1}""")
    (row,) = layer_rows(m)
    # was the first channel's scale reported as the tensor's (and its SQNR computed with it)
    assert "output" not in row and row["integer"] is False


def test_output_scales_read_constant_per_tensor_dequantize():
    from qgraph.verify.outputs import output_scales

    m = _model("""  init %s: f32[] = 0.5
  %sc = Constant() {value=tensor<f32[]> [0.125]}
  %xq = QuantizeLinear(%x, %s)
  %y = DequantizeLinear(%xq, %s)
  %y2 = DequantizeLinear(%xq, %sc)
  %y3 = DequantizeLinear(%xq, %d)""", inputs="%x: f32[4], %d: f32[]", outputs="%y, %y2, %y3")
    assert output_scales(m) == {"y": 0.5, "y2": 0.125}


def test_overflow_reads_a_dequantize_without_zero_point_as_its_input_type():
    from qgraph.analysis.overflow import analyze_node

    m = _model("""  init %s: f32[] = 0.5
  init %wq: i8[3,2] = [1, 2, 3, 4, 5, 6]
  init %ws: f32[] = 0.1
  %xd = DequantizeLinear(%x, %s)
  %wd = DequantizeLinear(%wq, %ws)
  %y = MatMul(%xd, %wd) @mm""", inputs="%x: i8[2,3]")
    facts = analyze_node(_node(m, "mm"), {})
    assert facts.status == "ok"
    # was uint8 (range [0, 255]); ONNX: the input's type, int8, zero point 0
    assert facts.activation_params.dtype.name == "int8" and facts.q_range == (-128, 127)


def test_lower_qdq_says_why_it_cannot_read_a_boundary():
    from qgraph.passes.lower_qdq import LowerQDQ
    from qgraph.passes.lower_qdq_common import LoweringError

    m = _model("""  %xq = QuantizeLinear(%x, %s)
  %y = DequantizeLinear(%xq, %s)""", inputs="%x: f32[4], %s: f32[]")
    with pytest.raises(Exception) as info:
        LowerQDQ().run(m, None)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    assert any(isinstance(x, LoweringError) and "scale 's' is not a constant" in str(x) for x in chain)
