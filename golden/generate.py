"""Regenerate the files under golden/ deterministically.

    python golden/generate.py [--check]

``--check`` regenerates into a temporary folder and exits 1 if any file would differ
(tests/test_golden.py runs it). Never edit the generated files by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


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
    import io

    rng = np.random.default_rng(20261124)
    coarse = rng.uniform(0, 1, (64, 1, 4, 4))
    images = np.clip(coarse.repeat(2, axis=2).repeat(2, axis=3) + rng.normal(0, 0.05, (64, 1, 8, 8)), 0, 1)
    buf = io.BytesIO()
    np.savez(buf, input=images.astype(np.float32))
    return buf.getvalue()


FILES = {
    "models/example_cnn.onnx": lambda: example_cnn().SerializeToString(),
    "data/example_cnn_calib.npz": example_calibration_data,
}


def generate(root: str) -> list[str]:
    written = []
    for rel, make in FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(make())
        written.append(rel)
    return written


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
                  if not os.path.exists(os.path.join(HERE, rel))
                  or not filecmp.cmp(os.path.join(tmp, rel), os.path.join(HERE, rel), shallow=False)]
    for rel in differ:
        print(f"golden/{rel} differs from what golden/generate.py produces; rerun it and commit", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
