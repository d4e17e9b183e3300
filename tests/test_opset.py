"""upgrade-opset from old opsets: attributes that became inputs keep their meaning."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qgraph.onnx import from_proto, to_proto
from qgraph.passes.opset import OpsetUpgradeError, upgrade_opset
from qgraph.testing.ort import run


def _model(nodes, opset, out_shape):
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=5)


CASES = {
    "clip": ([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)], 9, [1, 2, 4, 4]),
    "clip_max_only": ([helper.make_node("Clip", ["x"], ["y"], max=0.25)], 7, [1, 2, 4, 4]),
    "pad": ([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 0, 1, 0], value=0.5)], 9, [1, 2, 6, 6]),
    "slice": ([helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[4, 3], axes=[2, 3])], 9, [1, 2, 3, 3]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("target", [11, 13])
def test_upgrade_keeps_outputs(case, target):
    proto = _model(*CASES[case])
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    before = run(proto, {"x": x})
    model = from_proto(proto)
    assert upgrade_opset(model, target)
    upgraded = to_proto(model)
    onnx.checker.check_model(upgraded, full_check=True)
    assert upgraded.opset_import[0].version == target
    after = run(upgraded, {"x": x})
    np.testing.assert_array_equal(before[0], after[0])


def test_below_opset_7_is_refused():
    model = from_proto(_model(*CASES["clip"][:1], 6, [1, 2, 4, 4]))
    with pytest.raises(OpsetUpgradeError, match="opset 6"):
        upgrade_opset(model, 13)
