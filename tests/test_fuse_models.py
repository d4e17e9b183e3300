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
