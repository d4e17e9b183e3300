"""Fuzzing ``qgraph compile`` (``qgraph.testing.fuzz``): a fixed budget in CI, a longer one on demand.

The CI budget is a fixed range of seeds (the same cases every run, about 50 s on a
2-core machine); ``-m slow`` runs a deeper range, and ``python -m qgraph.testing.fuzz
--seconds N`` runs for as long as asked. A failure lists each finding with its seed:
``python -m qgraph.testing.fuzz --replay mutated:SEED`` reruns it in-process.
"""

import os

import pytest

from qgraph.testing import fuzz

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="each case runs in a forked child")

CI_MUTATED = range(0, 280)
CI_RANDOM = range(0, 48)


def _assert_no_findings(summary: fuzz.Summary) -> None:
    lines = [f"{t}:{s} [{o.kind}] {fuzz.describe(t, s)}\n    {o.detail.strip()[-800:]}" for t, s, o in summary.findings]
    assert not lines, f"{len(lines)} of {summary.cases} cases broke the CLI contract:\n" + "\n".join(lines)


def test_mutated_models_compile_or_fail_with_one_clear_line():
    s = fuzz.fuzz(["mutated"], CI_MUTATED)
    _assert_no_findings(s)
    # the budget exercises both outcomes: some mutations are harmless, most are refused
    assert s.kinds.get("ok", 0) > 0 and s.kinds.get("error", 0) > 0, s.kinds


def test_random_graphs_compile_and_their_exports_run():
    s = fuzz.fuzz(["random"], CI_RANDOM)
    _assert_no_findings(s)
    assert s.kinds.get("ok", 0) >= len(CI_RANDOM) // 2, s.kinds


@pytest.mark.slow
@pytest.mark.parametrize("target", ["mutated", "random"])
def test_fuzz_deeper(target):
    _assert_no_findings(fuzz.fuzz([target], range(100_000, 100_000 + 1500)))


def test_a_crash_a_hang_and_an_internal_error_are_findings():
    # the harness itself: what the child does is judged, and the parent survives it
    import signal
    import time

    def crash():
        os.kill(os.getpid(), signal.SIGSEGV)

    def hang():
        time.sleep(30)

    def internal():
        raise KeyError(0)

    crashed = fuzz.run_isolated(crash)
    assert crashed.kind == "crash", crashed.detail
    assert fuzz.run_isolated(hang, time_limit=0.5).kind == "hang"
    out = fuzz.run_isolated(internal)
    assert out.kind == "check" and "KeyError: 0" in out.detail


def test_a_crash_kills_the_child_whatever_handler_the_parent_holds():
    """A library may leave a SIGSEGV handler that returns (PoCL's OpenCL ICD does, once pyopencl
    has looked for devices): the child resets it, so a crash still reads as a crash."""
    import signal

    def crash():
        os.kill(os.getpid(), signal.SIGSEGV)

    previous = signal.signal(signal.SIGSEGV, lambda *_: None)
    try:
        assert fuzz.run_isolated(crash).kind == "crash"
    finally:
        signal.signal(signal.SIGSEGV, previous)
