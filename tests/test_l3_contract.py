"""The facts of the L3 contract that the reference and the TVM lowering both read
(``qgraph.ir.l3.storage_dtype``, ``qgraph.ir.l3_geometry.windows``), and how each side
reports a node that breaks them."""

from __future__ import annotations

import numpy as np
import pytest

from qgraph.ir import DType, Graph, Node, TensorType, Value, l3, ops
from qgraph.ir.l3_geometry import windows
from qgraph.reference import InterpreterError, Interpreter

from conftest import one_node_model


def _node(out_dtype=DType.UNDEFINED, **attrs) -> Node:
    g = Graph("g")
    node = Node(ops.MaxPool, [], [Value("y", TensorType(out_dtype, None))], attrs, name="p")
    g.append(node)
    return node


@pytest.mark.parametrize("lo, hi, want", [(-128, 127, np.int8), (0, 255, np.uint8), (-1, 255, np.int16),
                                          (0, 65535, np.uint16), (-1, 65535, np.int32)])
def test_undeclared_output_takes_the_smallest_storage(lo, hi, want):
    assert l3.storage_dtype(_node(), lo, hi) == np.dtype(want)


def test_declared_output_keeps_its_type_and_4_bit_values_live_in_bytes():
    assert l3.storage_dtype(_node(DType.INT16), 0, 1) == np.dtype(np.int16)
    assert l3.storage_dtype(_node(DType.INT4), -8, 7) == np.dtype(np.int8)
    assert l3.storage_dtype(_node(DType.UINT4), 0, 15) == np.dtype(np.uint8)
    with pytest.raises(l3.ContractError, match="'p'.*does not fit the declared type INT4 of 'y'"):
        l3.storage_dtype(_node(DType.INT4), -8, 8)
    with pytest.raises(l3.ContractError, match="declared FLOAT, not an integer type"):
        l3.storage_dtype(_node(DType.FLOAT), 0, 1)
    with pytest.raises(l3.ContractError, match="fits no integer storage type"):
        l3.storage_dtype(_node(), 0, 2**32)


def test_windows_ceil_mode_drops_a_window_starting_in_the_end_pad():
    # 5 wide, kernel 2, stride 2, end pad 1: ceil gives 3 windows, all starting inside the input
    win = windows(_node(strides=[2], pads=[0, 1]), [5], [2], ceil_mode=True)
    assert (win.out, win.extra_end) == ((3,), (0,))
    # 4 wide, kernel 1, stride 2, end pad 2: a 4th ceil window would start in the end pad
    assert windows(_node(strides=[2], pads=[0, 2]), [4], [1], ceil_mode=True).out == (3,)
    assert windows(_node(auto_pad="SAME_UPPER", strides=[2]), [5], [3]).pads_end == (1,)


def test_a_broken_window_is_each_sides_own_error_with_the_same_words():
    """The contract raises ContractError; the reference re-raises it as InterpreterError,
    the TVM lowering as LoweringError, both naming the node."""
    x = np.zeros((1, 1, 2, 2), np.int8)
    model = one_node_model(ops.MaxPool, {"x": x}, (), {"kernel_shape": [3, 3]}, DType.INT8, name="pool")
    with pytest.raises(l3.ContractError, match=r"'pool'.*window \(3\) is larger than the padded input \(2\)"):
        windows(next(iter(model.graph)), [2, 2], [3, 3])
    with pytest.raises(InterpreterError, match=r"'pool'.*window \(3\) is larger than the padded input \(2\)"):
        Interpreter(model).run({"x": x})
    qtvm = pytest.importorskip("qgraph.tvm")
    with pytest.raises(qtvm.LoweringError, match=r"'pool'.*window \(3\) is larger than the padded input \(2\)"):
        qtvm.lower(model)
