"""The quantize pipeline: every step of ``qgraph.quantize`` / ``qgraph compile`` runs through the
pass manager under the caller's ``PassContext``; no pass runs another pass."""

import ast
import os
import re

import pytest

import qgraph
from qgraph.errors import PipelineError
from qgraph.ir.text import print_model
from qgraph.passes import BUILTIN_PASSES, QUANTIZE_STAGES, registry
from qgraph.pm import DumpIR, PassContext, PassManager, PassTimings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "golden", "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "golden", "data", "digits_calib.npz")
#: passes of every step: canonicalize's, fuse's, then calibrate, insert-qdq, lower-qdq
STEP_PASSES = ("infer-shapes", "fuse-conv-bn", "calibrate", "insert-qdq", "lower-qdq")


def test_quantize_runs_every_step_under_the_callers_context(monkeypatch):
    import qgraph.ir.verify as ir_verify

    verified = []
    real = ir_verify.verify
    monkeypatch.setattr(ir_verify, "verify", lambda m: verified.append(m) or real(m))
    timings = PassTimings()
    q = qgraph.quantize(MODEL, CALIB, report=False, show_progress=False,
                        context=PassContext(verify_each=True, instruments=[timings]))
    names = [r.name for r in timings.runs]
    assert [n for n in names if n in ("calibrate", "insert-qdq", "lower-qdq")] == ["calibrate", "insert-qdq", "lower-qdq"]
    assert set(STEP_PASSES) <= set(names)
    assert len(verified) == len(names)  # once after every pass
    # the three levels are three models, each verified after its own passes
    assert {id(m) for m in verified} == {id(q.float_model), id(q.qdq), id(q.integer)}


def test_quantize_alias_is_the_steps_of_quantize():
    """One list of steps: the ``quantize`` alias, ``QUANTIZE_STAGES`` and what ``qgraph.quantize`` runs."""
    from qgraph.api import quantize_pipelines
    from qgraph.pm.pipeline import _flat_names

    reg = registry()
    alias = _flat_names(reg.parse("quantize").passes)
    staged = [n for _, text in QUANTIZE_STAGES for n in _flat_names(reg.parse(text).passes)]
    run = [n for _, _, p in quantize_pipelines(None, CALIB) for n in _flat_names(p.passes)]
    assert alias == staged == run
    assert [level for level, _, _ in quantize_pipelines(None, CALIB)] == [level for level, _ in QUANTIZE_STAGES]


def test_quantize_alias_on_one_model_gives_the_integer_model():
    """``qgraph opt --passes quantize`` (one model, no copies) and ``qgraph.quantize`` (three levels)
    make the same L3 model; only node names may differ (one model keeps every name it ever used)."""
    from qgraph.cli.main import _with_calibration_data

    q = qgraph.quantize(MODEL, CALIB, report=False, show_progress=False)
    m = qgraph.load(MODEL)
    pipeline = registry().parse("quantize")
    _with_calibration_data(pipeline, CALIB)
    PassManager(pipeline, PassContext(verify_each=True)).run(m)

    def unnamed(model):
        return [re.sub(r" @\S+$", "", line) for line in print_model(model).splitlines()]

    assert unnamed(m) == unnamed(q.integer)


def test_requires_refuses_a_wrong_order_only():
    reg = registry()
    with pytest.raises(PipelineError, match="pass 'insert-qdq' requires 'calibrate' earlier"):
        reg.parse("insert-qdq,calibrate")
    with pytest.raises(PipelineError, match="pass 'lower-qdq' requires 'insert-qdq' earlier"):
        reg.parse("calibrate,lower-qdq,insert-qdq")
    reg.parse("insert-qdq")  # alone: model.calibration set by the caller
    reg.parse("lower-qdq")  # alone: an L2 model from any quantizer


def test_cli_compile_times_verifies_and_dumps_every_pass(tmp_path, capsys):
    from qgraph.cli.main import main

    dump = tmp_path / "ir"
    rc = main(["compile", MODEL, "--calib", CALIB, "-o", str(tmp_path / "out"), "--time-passes", "--verify-each",
               "--dump-ir", str(dump)])
    out = capsys.readouterr().out
    assert rc == 0
    table = {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert set(STEP_PASSES) <= table and "total" in table
    files = sorted(os.listdir(dump))
    for name in ("calibrate", "insert-qdq", "lower-qdq"):
        assert any(f.endswith(f"-{name}-before.txt") for f in files), files
        assert any(f.endswith(f"-{name}-after.txt") for f in files), files
    last_lower = max(f for f in files if f.endswith("-lower-qdq-after.txt"))
    assert "qgraph::QConv" in (dump / last_lower).read_text()


def test_cli_compile_dump_ir_must_be_a_folder(tmp_path, capsys):
    from qgraph.cli.main import main

    (tmp_path / "f").write_text("")
    assert main(["compile", MODEL, "--calib", CALIB, "-o", str(tmp_path / "out"), "--dump-ir", str(tmp_path / "f")]) == 1
    assert "--dump-ir" in capsys.readouterr().err


def _pass_class_names() -> set[str]:
    return {cls.__name__ for cls in BUILTIN_PASSES}


def _sources():
    for folder in ("passes", os.path.join("qgraph", "calib")):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _passes_run_directly(source: str, rel: str) -> list[str]:
    """Calls ``SomePass(...).run(...)`` and ``PassManager(...)`` in ``source``."""
    classes = _pass_class_names()
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "PassManager":
            found.append(f"{rel}:{node.lineno}: PassManager(...)")
        if isinstance(func, ast.Attribute) and func.attr == "run" and isinstance(func.value, ast.Call):
            callee = func.value.func
            name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
            if name in classes:
                found.append(f"{rel}:{node.lineno}: {name}(...).run(...)")
    return found


def test_no_pass_runs_another_pass():
    """A pass (or calibration) never calls ``OtherPass(...).run(...)`` or a pass manager: the
    order of passes is a pipeline's, where verify-each and the instruments see every step."""
    found = []
    for rel in _sources():
        with open(os.path.join(ROOT, rel)) as f:
            found += _passes_run_directly(f.read(), rel)
    assert not found, found


def test_the_check_finds_a_pass_running_another():
    source = ("from qgraph.passes import canonicalize, cleanup\n"
              "def run(self, model, analyses):\n"
              "    InferShapes().run(model, analyses)\n"
              "    cleanup.DeadCodeElimination().run(model, analyses)\n"
              "    PassManager([LowerQDQ()]).run(model)\n")
    assert len(_passes_run_directly(source, "x.py")) == 3


def test_dump_ir_numbering_runs_on_across_the_steps(tmp_path):
    dump = DumpIR(str(tmp_path))
    qgraph.quantize(MODEL, CALIB, report=False, show_progress=False, context=PassContext(instruments=[dump]))
    files = os.listdir(tmp_path)
    numbers = sorted({int(f.split("-")[0]) for f in files})
    assert numbers == list(range(1, len(numbers) + 1)) and len(files) == 2 * len(numbers)
