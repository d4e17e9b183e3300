"""The op groups table (qgraph.ir.op_groups): one declaration used by every pass, and the
relations between groups that insert-qdq, lower-qdq and fusion rely on."""

from __future__ import annotations

import pytest

from qgraph.calib import intervals
from qgraph.ir import fusion, op_groups
from qgraph.ir.ops import OpId
from qgraph.passes import insert_qdq, lower_qdq_rules

GROUPS = {name: g for name, g in vars(op_groups).items() if name.isupper() and isinstance(g, frozenset)}


def test_table_holds_frozensets_of_op_ids():
    assert len(GROUPS) >= 11
    for name, g in GROUPS.items():
        assert g, name
        assert all(isinstance(o, OpId) for o in g), name


@pytest.mark.parametrize("user, name, group", [
    (insert_qdq, "QUANTIZED_OPS", op_groups.QUANTIZED_OPS),
    (insert_qdq, "PASS_THROUGH_OPS", op_groups.PASS_THROUGH_OPS),
    (insert_qdq, "SHARED_SCALE_OPS", op_groups.SHARED_SCALE_OPS),
    (insert_qdq, "CLAMPING_ACTIVATIONS", op_groups.CLAMPING_ACTIVATIONS),
    (insert_qdq, "UNARY_ACTIVATIONS", op_groups.UNARY_ACTIVATIONS),
    (lower_qdq_rules, "DATA_MOVEMENT", op_groups.DATA_MOVEMENT),
    (lower_qdq_rules, "UNARY", op_groups.UNARY_ELEMENTWISE),
    (lower_qdq_rules, "SCALAR_BINARY", op_groups.SCALAR_BINARY),
    (fusion, "FUSABLE_PRODUCERS", op_groups.FUSABLE_PRODUCERS),
    (fusion, "SINGLE_ACTIVATIONS", op_groups.SINGLE_ACTIVATIONS),
    (intervals, "_CHAIN_OPS", op_groups.CHAIN_ELEMENTWISE),
])
def test_passes_use_the_table_objects(user, name, group):
    # the same object, not an equal copy that could drift
    assert getattr(user, name) is group


def test_insert_qdq_shared_scale_ops_lower_as_data_movement():
    # an op insert-qdq quantizes with its input's scale must run on the integers in lower-qdq
    assert op_groups.PASS_THROUGH_OPS <= op_groups.SHARED_SCALE_OPS <= op_groups.DATA_MOVEMENT
    for op in op_groups.SHARED_SCALE_OPS:
        assert [r.plan for r in lower_qdq_rules.RULES.for_op(op)] == [lower_qdq_rules.plan_data_movement], op


def test_insert_qdq_activations_lower_as_lookup():
    # an activation insert-qdq quantizes alone (input DQ, output Q) must tabulate in lower-qdq
    acts = op_groups.CLAMPING_ACTIVATIONS | op_groups.UNARY_ACTIVATIONS
    assert acts <= op_groups.UNARY_ELEMENTWISE
    for op in acts:
        assert [r.plan for r in lower_qdq_rules.RULES.for_op(op)] == [lower_qdq_rules.plan_lookup], op
    assert not op_groups.UNARY_ELEMENTWISE & op_groups.DATA_MOVEMENT


def test_fused_activations_are_quantizable():
    # insert-qdq quantizes a fused producer with its activation as one unit (the producer must be
    # a quantized op); a fused activation that does not clamp gets its own Q/DQ pair (it must be
    # a unary activation insert-qdq quantizes)
    assert op_groups.FUSABLE_PRODUCERS <= op_groups.QUANTIZED_OPS
    assert op_groups.SINGLE_ACTIVATIONS <= op_groups.CLAMPING_ACTIVATIONS | op_groups.UNARY_ACTIVATIONS


def test_chain_ops_have_interval_rules():
    for op in op_groups.CHAIN_ELEMENTWISE:
        assert op in intervals._RULES, op
