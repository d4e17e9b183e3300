"""fuse-hardswish: structure (before / expected), every spelling, refusal reasons, numerics through
ONNX Runtime (HardSwish at opset 14, qgraph::HardSwish exported back before), PP-OCR det / rec / cls."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest

import qgraph
from qgraph.ir import ops
from qgraph.ir.text import parse_model
from qgraph.passes.fuse_hardswish import FuseHardSwish
from qgraph.rewrite import MatchTracer, apply_rules
from qgraph.testing.ort import max_rel_error, run
from tests.conftest import graph_text, run_pipeline, same_ir

CLIP_FORM = """graph g(%x: f32[1,4,3,3]) -> (%y) {
  init %three: f32[] = [3.0]
  init %zero: f32[] = [0.0]
  init %six: f32[] = [6.0]
  %a = Add(%x, %three)
  %c = Clip(%a, %zero, %six)
  %m = Mul(%x, %c)
  %y = Div(%m, %six) @div
}"""


def fuse(text: str, opset: int):
    m = parse_model(f'model opset {{"": {opset}}}\n' + text)
    return m, run_pipeline(m, "fuse-hardswish,dead-code-elimination")


def refusal(text: str, opset: int = 12) -> str:
    m = parse_model(f'model opset {{"": {opset}}}\n' + text)
    tracer = MatchTracer()
    assert not apply_rules(m, FuseHardSwish.rules, tracer=tracer)
    return tracer.closest("HardSwishRule").failure.reason


def test_old_opset_becomes_qgraph_hardswish():
    m, res = fuse(CLIP_FORM, opset=12)
    assert res.records[0].stats == {"fused": 1}
    assert m.opset_imports == {"": 12, "qgraph": 1}
    assert same_ir(m, """graph g(%x: f32[1,4,3,3]) -> (%y) {
  %y: f32[1,4,3,3] = qgraph::HardSwish(%x) @"div/HardSwish"
}"""), graph_text(m)
    assert not run_pipeline(m, "fuse-hardswish").modified


def test_opset14_becomes_onnx_hardswish():
    m, _ = fuse(CLIP_FORM, opset=14)
    assert m.opset_imports == {"": 14}
    assert same_ir(m, """graph g(%x: f32[1,4,3,3]) -> (%y) {
  %y: f32[1,4,3,3] = HardSwish(%x) @"div/HardSwish"
}"""), graph_text(m)


# -- every spelling, numerics through ONNX Runtime -------------------------------------------------
def _spelling(form: str, swap_mul: bool, swap_add: bool, clip: str) -> str:
    """A hard-swish of %x in ``form``; ``clip`` 'inputs' (opset >= 11) or 'attrs' (opset 10)."""
    add = "Add(%three, %x)" if swap_add else "Add(%x, %three)"
    gate = "Clip(%a, %zero, %six)" if clip == "inputs" else "Clip(%a) {max=6.0, min=0.0}"
    lines = [f"%a = {add}", f"%c = {gate}"]

    def mul(a, b, out):
        return f"%{out} = Mul({b}, {a})" if swap_mul else f"%{out} = Mul({a}, {b})"
    if form == "div_outside":
        lines += [mul("%x", "%c", "m"), "%y = Div(%m, %six)"]
    elif form == "div_inside":
        lines += ["%d = Div(%c, %six)", mul("%x", "%d", "y")]
    elif form == "sixth_outside":
        lines += [mul("%x", "%c", "m"), mul("%m", "%sixth", "y")]
    elif form == "sixth_inside":
        lines += [mul("%c", "%sixth", "d"), mul("%x", "%d", "y")]
    elif form == "hardsigmoid":
        lines = ["%h = HardSigmoid(%x) {alpha=0.1666667, beta=0.5}", mul("%x", "%h", "y")]
    body = "\n  ".join(lines)
    return f"""graph g(%x: f32[2,4,5]) -> (%y) {{
  init %three: f32[1] = [3.0]
  init %zero: f32[] = [0.0]
  init %six: f32[] = [6.0]
  init %sixth: f32[] = [0.16666667]
  {body}
}}"""


FORMS = ["div_outside", "div_inside", "sixth_outside", "sixth_inside", "hardsigmoid"]
SPELLINGS = [(f, m, a) for f in FORMS for m in (False, True) for a in (False, True)
             if not (f == "hardsigmoid" and a)]  # x * HardSigmoid(x) has no Add


@pytest.mark.parametrize("form, swap_mul, swap_add", SPELLINGS)
@pytest.mark.parametrize("opset", [10, 12, 14])
def test_every_spelling_fuses_and_keeps_the_numbers(form, swap_mul, swap_add, opset):
    text = _spelling(form, swap_mul, swap_add, "attrs" if opset < 11 else "inputs")
    before = qgraph.to_proto(parse_model(f'model opset {{"": {opset}}}\n' + text))
    m, _ = fuse(text, opset)
    assert [str(n.op) for n in m.graph] == ["HardSwish" if opset >= 14 else "qgraph::HardSwish"]
    after = qgraph.to_proto(m)
    onnx.checker.check_model(after)
    x = np.linspace(-5, 5, 40, dtype=np.float32).reshape(2, 4, 5)
    assert max_rel_error(run(before, {"x": x}), run(after, {"x": x})) <= 1e-6


def test_exported_qgraph_hardswish_is_x_times_hardsigmoid_and_fuses_again():
    m, _ = fuse(CLIP_FORM, opset=12)
    exported = qgraph.to_proto(m)
    assert [n.op_type for n in exported.graph.node] == ["HardSigmoid", "Mul"]
    assert {o.domain for o in exported.opset_import} == {""}
    again = qgraph.load(exported)
    run_pipeline(again, "fuse-hardswish,dead-code-elimination")
    assert [str(n.op) for n in again.graph] == ["qgraph::HardSwish"]


def test_upgrade_opset_makes_the_qgraph_op_standard():
    m, _ = fuse(CLIP_FORM, opset=12)
    res = run_pipeline(m, "upgrade-opset(version=14)")
    assert res.records[0].stats == {"from_opset": 12, "to_opset": 14}
    assert [str(n.op) for n in m.graph] == ["HardSwish"] and m.graph.outputs[0].name == "y"
    assert not run_pipeline(m, "upgrade-opset(version=13)").modified  # never lowered


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, reason", [
    (("init %three: f32[] = [3.0]", "init %three: f32[] = [3.1]"), "constant 'three' is 3.1, not 3"),
    (("%c = Clip(%a, %zero, %six)", "%c = Clip(%a, %zero, %three)"), "a hard-swish needs [0, 6]"),
    (("%y = Div(%m, %six) @div", "%y = Div(%m, %six) @div\n  %z = Exp(%m) @other"),
     "'m' (from unnamed Mul node) is also read by Exp node 'other'"),
    (("%m = Mul(%x, %c)", "%m = Mul(%x2, %c)"), "x must be the same value at every use"),
    (("init %three: f32[] = [3.0]", "init %three: f32[2] = [3.0, 3.0]"),
     "constant 'three' is a FLOAT tensor of shape [2], not 3"),
])
def test_refusals_name_the_reason(edit, reason):
    text = CLIP_FORM.replace("%x: f32[1,4,3,3]", "%x: f32[1,4,3,3], %x2: f32[1,4,3,3]").replace(*edit)
    if "Exp" in edit[1]:
        text = text.replace("-> (%y)", "-> (%y, %z)")
    assert reason in refusal(text)


def test_hardsigmoid_with_other_parameters_is_not_a_hardswish():
    text = _spelling("hardsigmoid", False, False, "inputs").replace("alpha=0.1666667", "alpha=0.2")
    assert "alpha=0.2, beta=0.5; a hard-swish needs 1/6 and 0.5" in refusal(text)


def test_a_rank_1_constant_needs_the_rank_of_x():
    # a [1]-shaped 3 would broadcast a rank-0 x to [1]: refused while x's rank is unknown
    text = CLIP_FORM.replace("init %three: f32[] = [3.0]", "init %three: f32[1] = [3.0]")
    assert "constant 'three' has rank 1 and the rank of 'x' is unknown" in refusal(
        text.replace("%x: f32[1,4,3,3]", "%x: f32[*]"))
    m, _ = fuse(text, opset=12)  # x's rank known: fused
    assert [str(n.op) for n in m.graph] == ["qgraph::HardSwish"]


def test_pass_is_registered_and_in_fuse_before_fuse_activation():
    from qgraph.passes import ALIASES, registry

    assert registry().get("fuse-hardswish") is FuseHardSwish and registry().get("upgrade-opset").name == "upgrade-opset"
    pipeline = ALIASES["fuse"][0]
    assert pipeline.index("fuse-hardswish") < pipeline.index("fold-scale") < pipeline.index("fuse-activation")


# -- PP-OCR det / rec / cls ---------------------------------------------------------------------------
def _ocr_models() -> list[str]:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return []
    return sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*.onnx")))


#: hard-swishes each model writes as x * Clip(x + 3, 0, 6) / 6
OCR_HARD_SWISHES = {"det": 24, "rec": 28, "cls": 18}
OCR_SHAPES = {"det": (1, 3, 224, 224), "rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192)}


@pytest.mark.skipif(not _ocr_models(), reason="rapidocr-onnxruntime (PP-OCR models) not installed")
@pytest.mark.parametrize("path", _ocr_models(), ids=lambda p: os.path.basename(p).split("_")[1])
def test_ppocr_hardswishes_fused_and_outputs_kept(path):
    kind = next(k for k in OCR_SHAPES if f"_{k}_" in os.path.basename(path))
    m = qgraph.load(path)
    run_pipeline(m, "canonicalize,fuse")
    names = [str(n.op) for n in m.graph]
    assert names.count("qgraph::HardSwish") == OCR_HARD_SWISHES[kind]
    assert "Clip" not in names and "Div" not in names
    exported = qgraph.to_proto(m)
    onnx.checker.check_model(exported)
    x = np.random.default_rng(0).standard_normal(OCR_SHAPES[kind]).astype(np.float32)
    assert max_rel_error(run(onnx.load(path), {"x": x}), run(exported, {"x": x})) <= 1e-4
    # every HardSwish follows a Conv (what insert-qdq then quantizes as QConv -> activation)
    assert all(n.inputs[0].producer().op is ops.Conv for n in m.graph if n.op is ops.QGraphHardSwish)
