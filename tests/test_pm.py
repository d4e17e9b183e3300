"""Pass manager: text pipelines and options, analyses, context, instruments, fixed points."""

import os
from typing import Literal, Optional

import pytest

from qgraph.errors import PassContractError, PassError, PipelineError, RewriteCycleError
from qgraph.ir import Node, Value, ops
from qgraph.ir.text import parse_model
from qgraph.passes import registry
from qgraph.pm import (ALL_ANALYSES, Analysis, AnalysisManager, DataflowAnalysis, DumpIR, FixedPoint, Pass,
                       PassContext, PassManager, PassRegistry, PassResult, PassTimings)

TWO_RELU = """graph g(%x: f32[2]) -> (%y) {
  %a = Relu(%x)
  %y = Relu(%a)
}"""


class Configurable(Pass):
    """A pass with one option of every kind."""

    name = "configurable"

    def __init__(self, method: Literal["minmax", "entropy"] = "minmax", bins: int = 2048, p: float = 99.9,
                 strict: bool = False, label: Optional[str] = None):
        self.method, self.bins, self.p, self.strict, self.label = method, bins, p, strict, label

    def run(self, model, analyses):
        return PassResult.unchanged()


class SetAttr(Pass):
    """Sets attribute 'k' on every Relu to `value`; reports a change only when it made one."""

    name = "set-attr"

    def __init__(self, value: int = 1):
        self.value = value

    def run(self, model, analyses):
        changed = False
        for n in model.graph:
            if n.attr("k") != self.value:
                n.set_attr("k", self.value)
                changed = True
        return PassResult.of(changed)


class Liar(Pass):
    """Changes the IR but reports no change."""

    name = "liar"

    def run(self, model, analyses):
        next(iter(model.graph)).set_attr("k", 99)
        return PassResult.unchanged()


class Breaker(Pass):
    """Leaves a dangling use behind."""

    name = "breaker"

    def run(self, model, analyses):
        Node(ops.Relu, [model.graph.inputs[0]], [Value("orphan")])
        return PassResult.changed()


class Crasher(Pass):
    """Raises a plain Python error."""

    name = "crasher"

    def run(self, model, analyses):
        raise ZeroDivisionError("boom")


class NeedsConfigurable(Pass):
    """Must run after 'configurable'."""

    name = "needs-configurable"
    requires = ("configurable",)

    def run(self, model, analyses):
        return PassResult.unchanged()


def reg():
    r = registry()
    for cls in (Configurable, SetAttr, Liar, Breaker, Crasher, NeedsConfigurable):
        r.register(cls)
    return r


def test_parse_pipeline_with_options_and_groups():
    p = reg().parse("configurable(method=entropy, bins=128, p=99.5, strict=true, label=\"a,b\"),"
                    "fixed-point(set-attr(value=3),dead-code-elimination),cleanup")
    first = p.passes[0]
    assert (first.method, first.bins, first.p, first.strict, first.label) == ("entropy", 128, 99.5, True, "a,b")
    assert isinstance(p.passes[1], FixedPoint) and p.passes[1].passes[0].value == 3
    assert str(p.passes[2]) == "fixed-point(eliminate-identity,dead-code-elimination)"  # alias expanded
    assert str(first) == 'configurable(method=entropy,bins=128,p=99.5,strict=True,label=a,b)'


@pytest.mark.parametrize("text, message", [
    ("configurable(method=kl)", "must be one of minmax, entropy; got 'kl'"),
    ("configurable(bins=many)", "must be an integer; got 'many'"),
    ("configurable(strict=maybe)", "must be true or false"),
    ("configurable(nope=1)", "has no option 'nope' (its options: method"),
    ("dead-code-elimination(x=1)", "has no option 'x' (its options: none)"),
    ("cleanp", "unknown pass 'cleanp'; did you mean cleanup"),
    ("cleanup,", "unexpected end"),
    ("fixed-point(cleanup", "missing ')'"),
    ("", "empty pipeline"),
    ("configurable(method)", "expected '=' after option 'method'"),
    ("needs-configurable,configurable", "requires 'configurable' earlier"),
])
def test_bad_pipelines_are_named(text, message):
    with pytest.raises(PipelineError) as e:
        reg().parse(text)
    assert message in str(e.value)


def test_kebab_case_option_names():
    class TwoWords(Pass):
        """x"""
        name = "two-words"

        def __init__(self, max_iterations: int = 3):
            self.max_iterations = max_iterations

    r = PassRegistry([TwoWords])
    assert r.parse("two-words(max-iterations=5)").passes[0].max_iterations == 5


def test_registry_rejects_bad_and_duplicate_names():
    r = registry()

    class Bad(Pass):
        name = "Bad_Name"

    with pytest.raises(PipelineError, match="kebab-case"):
        r.register(Bad)
    with pytest.raises(PipelineError, match="already registered"):
        r.register(type("Dup", (Pass,), {"name": "dead-code-elimination"}))
    # registries are independent objects: nothing global changed
    assert "configurable" not in registry().names()


def test_pass_context_disables_by_name():
    m = parse_model(TWO_RELU)
    res = PassManager(reg().parse("set-attr"), PassContext(disabled=frozenset({"set-attr"}))).run(m)
    assert not res.modified and all(n.attr("k") is None for n in m.graph)


def test_verify_each_catches_a_pass_that_lies_about_changes():
    with pytest.raises(PassContractError, match="'liar' reported no change but modified the IR"):
        PassManager(reg().parse("liar"), PassContext(verify_each=True)).run(parse_model(TWO_RELU))
    # without debug verification the lie goes unnoticed (that is what the mode is for)
    PassManager(reg().parse("liar")).run(parse_model(TWO_RELU))


def test_verify_each_catches_broken_ir():
    with pytest.raises(PassContractError, match="'breaker' left invalid IR"):
        PassManager(reg().parse("breaker"), PassContext(verify_each=True)).run(parse_model(TWO_RELU))


def test_pass_errors_are_chained_and_name_the_pass():
    with pytest.raises(PassError, match="pass 'crasher' crashed: ZeroDivisionError: boom") as e:
        PassManager(reg().parse("crasher")).run(parse_model(TWO_RELU))
    assert isinstance(e.value.__cause__, ZeroDivisionError)


class Flip(Pass):
    """Toggles attribute 'k' between 0 and 1 on the first node (a two-state cycle)."""

    name = "flip"

    def run(self, model, analyses):
        n = next(iter(model.graph))
        n.set_attr("k", 1 - (n.attr("k") or 0))
        return PassResult.changed()


class Grow(Pass):
    """Adds a Relu every time (never converges)."""

    name = "grow"

    def run(self, model, analyses):
        g = model.graph
        out = g.outputs[0]
        n = Node(ops.Relu, [out], [Value(g.unique_name("grown"))])
        g.append(n)
        g.outputs[0] = n.output
        return PassResult.changed()


def test_fixed_point_reports_cycle():
    r = reg()
    r.register(Flip)
    with pytest.raises(RewriteCycleError, match=r"iteration 3 recreated the IR of iteration 1 \(a cycle\); passes that reported changes: flip"):
        PassManager(r.parse("fixed-point(flip)")).run(parse_model(TWO_RELU))


def test_fixed_point_reports_non_convergence():
    r = reg()
    r.register(Grow)
    m = parse_model(TWO_RELU)
    with pytest.raises(RewriteCycleError, match="did not converge in 32 iterations; still changing: grow"):
        PassManager(r.parse("fixed-point(grow)")).run(m)


def test_fixed_point_converges():
    m = parse_model(TWO_RELU)
    res = PassManager(reg().parse("fixed-point(set-attr(value=4))"), PassContext(verify_each=True)).run(m)
    assert res.modified
    assert [r.modified for r in res.records] == [True, False]


class Counting(Analysis):
    name = "counting"

    @classmethod
    def compute(cls, model, analyses):
        return len(model.graph)


class Reader(Pass):
    """Reads the counting analysis; preserves it iff preserve=true."""

    name = "reader"

    def __init__(self, change: bool = False, preserve: bool = False):
        self.change, self.preserve = change, preserve

    def run(self, model, analyses):
        analyses.get(Counting)
        if not self.change:
            return PassResult.unchanged()
        return PassResult.changed(preserved={Counting} if self.preserve else ())


def test_analyses_are_cached_and_invalidated():
    r = reg()
    r.register(Reader)
    m = parse_model(TWO_RELU)
    am = AnalysisManager(m)
    PassManager(r.parse("reader,reader,reader(change=true,preserve=true),reader"), PassContext(verify_each=True)).run(m, am)
    assert am.computations["counting"] == 1
    PassManager(r.parse("reader(change=true),reader"), PassContext(verify_each=True)).run(m, am)
    assert am.computations["counting"] == 2
    am.invalidate(ALL_ANALYSES)
    assert am.is_cached(Counting)


def test_dataflow_analysis_reachability():
    m = parse_model("""graph g(%x: f32[2]) -> (%y, %z) {
      %a = Relu(%x)
      %y = Relu(%a)
      %z = Neg(%x)
    }""")
    df = AnalysisManager(m).get(DataflowAnalysis)
    a, y, z = list(m.graph)
    assert df.reaches(a, y) and not df.reaches(y, a) and not df.reaches(a, z)


def test_instruments_time_and_dump(tmp_path):
    timings = PassTimings()
    ctx = PassContext(verify_each=True, instruments=[timings, DumpIR(str(tmp_path))])
    PassManager(reg().parse("set-attr,dead-code-elimination"), ctx).run(parse_model(TWO_RELU))
    assert [t.name for t in timings.runs] == ["set-attr", "dead-code-elimination"]
    assert "set-attr" in timings.report() and "total" in timings.report()
    assert sorted(os.listdir(tmp_path)) == [
        "001-set-attr-after.txt", "001-set-attr-before.txt",
        "002-dead-code-elimination-after.txt", "002-dead-code-elimination-before.txt"]
    after = (tmp_path / "001-set-attr-after.txt").read_text()
    assert "{k=1}" in after and "{k=1}" not in (tmp_path / "001-set-attr-before.txt").read_text()


def test_pass_must_return_a_pass_result():
    class NoResult(Pass):
        """x"""
        name = "no-result"

        def run(self, model, analyses):
            return None

    with pytest.raises(PassContractError, match="returned NoneType, expected a PassResult"):
        PassManager([NoResult()]).run(parse_model(TWO_RELU))
