"""bench/profile_tvm.py: every kernel a run of the digits CNN calls is timed alone, with its calls."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("tvm")
from qgraph.tvm import x86  # noqa: E402
from qgraph.tvm.kernel_packages import kernel_package  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


@pytest.mark.skipif(kernel_package(None) is not x86, reason="the x86 kernels need an x86-64 host with AVX2")
def test_profile_times_each_kernel_of_a_run():
    import profile_tvm

    compiled, feeds = profile_tvm.build("digits1", reduce_range=False)
    rows, whole = profile_tvm.profile(compiled, feeds, repeats=2, number=3)
    names = {sym.rstrip("0123456789") for _, _, sym, _ in rows}
    assert {"qdirect_conv_ubsw", "qdirect_conv", "qmatmul_gemm"} <= names, names
    # every qgraph kernel call site of the build is counted (shared kernels: several calls)
    counted = sum(n for _, n, sym, _ in rows if sym.rstrip("0123456789") in compiled.kernels)
    assert counted == sum(compiled.kernels.values()), (rows, compiled.kernels)
    assert all(t > 0 for t, _, _, _ in rows) and whole > 0
    # the conv's output of the digits CNN's first layer: 8 channels of 8 x 8
    assert any(sym.startswith("qdirect_conv_ubsw") and shape == (1, 8, 8, 8) for _, _, sym, shape in rows), rows
    assert compiled.run(feeds)["logits"].shape == (1, 10)  # the model still runs without the instrument
