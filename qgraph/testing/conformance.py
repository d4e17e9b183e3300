"""Lossless round trip on the ONNX operator conformance suite shipped in the onnx wheel.

For every case ONNX Runtime can run as given, ``save(load(case.model))`` must run and give
outputs identical to the original's (dtype, shape, values).

    python -m qgraph.testing.conformance [-v] [-k SUBSTRING]

prints pass / total (cases ORT cannot run are counted apart, with the reason).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import onnx

from qgraph.testing import ort as _ort


@dataclass
class Outcome:
    name: str
    status: str  # "pass", "fail", "not-runnable"
    detail: str = ""


def cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_testcases()


def _feeds(model: onnx.ModelProto, inputs: list) -> dict:
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    return dict(zip(names, inputs))


def check_case(case, transform: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Outcome:
    """Run ``case`` as given and after ``transform``; compare every data set's outputs."""
    model = case.model
    out_names = [o.name for o in model.graph.output]
    try:
        ref_sess = _ort.session(model)
        refs = [ref_sess.run(None, _feeds(model, list(inp))) for inp, _ in case.data_sets]
        again = [ref_sess.run(None, _feeds(model, list(inp))) for inp, _ in case.data_sets]
    except Exception as e:  # ORT cannot run the original: not part of the denominator
        return Outcome(case.name, "not-runnable", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    deterministic = all(_ort.compare_all(r, a, out_names) is None for r, a in zip(refs, again))
    try:
        new = transform(model)
        sess = _ort.session(new)
        for (inp, _), ref in zip(case.data_sets, refs):
            got = sess.run(None, _feeds(new, list(inp)))
            if not deterministic:  # random ops: compare kinds, dtypes and shapes only
                ref = [_shape_only(x) for x in ref]
                got = [_shape_only(x) for x in got]
            why = _ort.compare_all(ref, got, out_names)
            if why:
                return Outcome(case.name, "fail", why)
    except Exception as e:
        return Outcome(case.name, "fail", f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return Outcome(case.name, "pass", "" if deterministic else "non-deterministic op: compared dtypes/shapes")


def _shape_only(x):
    import numpy as np

    if isinstance(x, list):
        return [_shape_only(y) for y in x]
    if x is None:
        return None
    x = np.asarray(x)
    return np.zeros(x.shape, x.dtype)


def roundtrip(model: onnx.ModelProto) -> onnx.ModelProto:
    import qgraph

    return qgraph.to_proto(qgraph.load(model))


def run_suite(transform=roundtrip, selector: str = "") -> Iterator[Outcome]:
    for case in cases():
        if selector in case.name:
            yield check_case(case, transform)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="list every case that is not a pass")
    args = ap.parse_args(argv)
    counts = {"pass": 0, "fail": 0, "not-runnable": 0}
    for o in run_suite(selector=args.k):
        counts[o.status] += 1
        if o.status == "fail" or (args.v and o.status != "pass"):
            print(f"{o.status:13s} {o.name}: {o.detail}")
    runnable = counts["pass"] + counts["fail"]
    print(f"lossless round trip: {counts['pass']}/{runnable} runnable cases pass "
          f"({counts['not-runnable']} cases ONNX Runtime cannot run as given)")
    return 0 if counts["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
