"""The fusion issue's acceptance: ``canonicalize,fuse`` on every light model and PP-OCRv4 model."""

import glob
import os

import numpy as np
import onnx
import pytest
import rapidocr_onnxruntime

import qgraph
from qgraph.cli.main import main as cli
from qgraph.testing.ort import max_rel_error, run
from tests.conftest import LIGHT_DIR, run_pipeline

OCR_DIR = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models")
# det at 224x224: on smaller random inputs its probability map is ~1e-6 everywhere, and a
# relative error against such a max|ref| measures float noise, not the rewrite.
OCR_SHAPES = {"det": (1, 3, 224, 224), "rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192)}
NO_BN_LEFT = {"light_resnet50", "light_densenet121", "light_inception_v2", "light_shufflenet"}
MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx"))) + sorted(glob.glob(os.path.join(OCR_DIR, "*.onnx")))


def _feeds(model: onnx.ModelProto, path: str) -> dict:
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        kind = [k for k in OCR_SHAPES if k in os.path.basename(path)]
        shape = OCR_SHAPES[kind[0]] if kind else [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("path", MODELS, ids=lambda p: os.path.basename(p).split(".")[0])
def test_canonicalize_fuse_keeps_outputs_and_shrinks(path, tmp_path):
    name = os.path.basename(path).split(".")[0]
    out = str(tmp_path / "fused.onnx")
    assert cli(["opt", path, "--passes", "canonicalize,fuse", "-o", out]) == 0
    original, fused = onnx.load(path), onnx.load(out)
    onnx.checker.check_model(fused)
    feeds = _feeds(original, path)
    err = max_rel_error(run(original, feeds), run(fused, feeds))
    assert err <= 1e-4, f"{name}: max|diff| / max|ref| = {err:.2e}"
    assert len(fused.graph.node) < len(original.graph.node)
    if name in NO_BN_LEFT:
        assert not [n for n in fused.graph.node if n.op_type == "BatchNormalization"]
    # a second run changes nothing (in memory: the export writes qgraph-domain fusions that the
    # model's opset lacks back as their decomposed ONNX form, which a reload would fuse again)
    m = qgraph.load(path)
    run_pipeline(m, "canonicalize,fuse")
    assert not run_pipeline(m, "canonicalize,fuse").modified


# -- property: random Conv / BN / Relu / Clip / Add / Mul / MatMul chains under the whole pipeline --
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@st.composite
def conv_chains(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    c = 1  # input channels
    nodes, inits = [], []
    cur, k = "x", 0

    def const(shape, lo=-1.0, hi=1.0):
        nonlocal k
        k += 1
        name = f"c{k}"
        inits.append(numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name))
        return name

    for i in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["conv", "bn", "relu", "clip", "add", "mul", "pad", "identity"]))
        out = f"t{i}"
        if kind == "conv":
            c_out = draw(st.integers(1, 4))
            ks = draw(st.sampled_from([1, 3]))
            ins = [cur, const((c_out, c, ks, ks))] + ([const((c_out,))] if draw(st.booleans()) else [])
            nodes.append(helper.make_node("Conv", ins, [out], pads=[ks // 2] * 4))
            c = c_out
        elif kind == "bn":
            nodes.append(helper.make_node("BatchNormalization", [cur, const((c,)), const((c,)), const((c,)),
                                                                 const((c,), 0.5, 2.0)], [out], epsilon=1e-3))
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif kind == "clip":
            nodes.append(helper.make_node("Clip", [cur, const(()), const((), 1.0, 6.0)], [out]))
        elif kind in ("add", "mul"):
            shape = draw(st.sampled_from([(c, 1, 1), (1, c, 1, 1), ()]))
            nodes.append(helper.make_node(kind.capitalize(), [cur, const(shape)], [out]))
        elif kind == "pad":
            pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
            inits.append(numpy_helper.from_array(pads, f"pads{i}"))
            nodes.append(helper.make_node("Pad", [cur, f"pads{i}"], [out]))
        else:
            nodes.append(helper.make_node("Identity", [cur], [out]))
        cur = out
    # a MatMul head: flatten and project
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("MatMul", ["flat", const((c, 3))], ["mm"]))
    nodes.append(helper.make_node("Add", ["mm", const((3,))], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conv_chains())
def test_pipeline_preserves_random_chains(chain):
    model = chain
    onnx.checker.check_model(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 1, 6, 6)).astype(np.float32)}
    m = qgraph.load(model)
    run_pipeline(m, "canonicalize,fuse")
    assert max_rel_error(run(model, feeds), run(qgraph.to_proto(m), feeds)) <= 1e-4
    assert not [n for n in m.graph if n.op_type in ("BatchNormalization", "Identity")]
    assert not run_pipeline(m, "canonicalize,fuse").modified
