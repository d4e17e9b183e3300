"""fold-qat-export: a QDQ model as PyTorch exports it after fake-quant training, in insert-qdq's form."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qgraph.ir import ops
from qgraph.ir.l2 import read_qdq
from qgraph.onnx import from_proto
from qgraph.ort import run_ort
from qgraph.passes import registry
from qgraph.pm import PassManager, Pipeline
from qgraph.quant.params import QuantParams, quantize, quantize_bias


def _exported() -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(W: Q/DQ of a float constant, float bias) -> Relu -> Q/DQ -> Flatten -> Gemm -> Q/DQ."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)
    ws = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    fc = rng.normal(0, 0.3, (3, 16)).astype(np.float32)
    fs = (np.abs(fc).reshape(3, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", w), ("ws", ws), ("wz", np.zeros(4, np.int8)), ("b", rng.normal(0, 0.1, 4).astype(np.float32)),
        ("fc", fc), ("fs", fs), ("fz", np.zeros(3, np.int8)), ("fb", rng.normal(0, 0.1, 3).astype(np.float32)),
        ("xs", np.array(0.01, np.float32)), ("xz", np.array(128, np.uint8)),
        ("rs", np.array(0.02, np.float32)), ("rz", np.array(0, np.uint8)),
        ("ys", np.array(0.05, np.float32)), ("yz", np.array(128, np.uint8))]]
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), n("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        n("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0), n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        n("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv"),
        n("Relu", ["c"], ["r"]),
        n("QuantizeLinear", ["r", "rs", "rz"], ["rq"]), n("DequantizeLinear", ["rq", "rs", "rz"], ["rd"]),
        n("Flatten", ["rd"], ["f"]),
        n("QuantizeLinear", ["fc", "fs", "fz"], ["fcq"], axis=0),
        n("DequantizeLinear", ["fcq", "fs", "fz"], ["fcd"], axis=0),
        n("Gemm", ["f", "fcd", "fb"], ["g"], transB=1, name="fc"),
        n("QuantizeLinear", ["g", "ys", "yz"], ["yq"]), n("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "exported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fold_qat_export_structure_and_numerics():
    proto = _exported()
    before = from_proto(proto)
    model = from_proto(proto)
    result = PassManager(Pipeline(registry().parse("fold-qat-export"))).run(model)
    g = model.graph
    assert not any(n.op is ops.QuantizeLinear and n.inputs[0].constant() is not None for n in g)  # weights folded
    conv = next(n for n in g if n.name == "conv")
    w_dq, b_dq = conv.inputs[1].producer(), conv.inputs[2].producer()
    assert w_dq.op is ops.DequantizeLinear and w_dq.inputs[0].constant().dtype.name == "INT8"
    w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w"))
    ws = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "ws"))
    assert np.array_equal(w_dq.inputs[0].constant().numpy(), quantize(w, QuantParams(ws, 0, "int8", 0)))
    # the float bias: int32 with scale x_scale * w_scale, as insert-qdq writes it
    b = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "b"))
    want_q, want_p = quantize_bias(b, np.float32(0.01), ws)
    assert b_dq.op is ops.DequantizeLinear and np.array_equal(b_dq.inputs[0].constant().numpy(), want_q)
    assert np.array_equal(read_qdq(b_dq).scale, want_p.scale)
    # Flatten's reader reads a Q -> DQ pair with the Flatten input's parameters
    gemm = next(n for n in g if n.name == "fc")
    dq = gemm.inputs[0].producer()
    assert dq.op is ops.DequantizeLinear and dq.inputs[0].producer().inputs[0].producer().op is ops.Flatten
    assert float(read_qdq(dq).scale) == np.float32(0.02)
    assert result.modified
    # numerics: what changed is the biases' int32 rounding, far below an output step (0.05)
    x = {"x": np.random.default_rng(1).uniform(-1, 1, (6, 2, 4, 4)).astype(np.float32)}
    a, b2 = run_ort(before, x, simulate=True)["y"], run_ort(model, x, simulate=True)["y"]
    assert np.abs(a - b2).max() <= 0.05 * 1.0001


def test_fold_qat_export_leaves_other_models_alone():
    from qgraph.api import _load

    import os

    model = _load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "models",
                               "digits_cnn.onnx"))
    assert not PassManager(Pipeline(registry().parse("fold-qat-export"))).run(model).modified


def test_exported_model_compiles_to_integer_ops():
    import qgraph

    path_free = _exported()
    calib = {"x": np.random.default_rng(2).uniform(-1, 1, (8, 2, 4, 4)).astype(np.float32)}
    q = qgraph.quantize(path_free, calib, report=False)
    names = [str(n.op) for n in q.integer.graph]
    assert "qgraph::QConv" in names and "qgraph::QMatMul" in names, names
