"""bench/profile_tvm.py: every kernel a run of the digits CNN calls is timed alone, with its calls."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("tvm")
from qgraph.tvm import x86  # noqa: E402
from qgraph.tvm.kernel_packages import kernel_package  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))


@pytest.mark.skipif(kernel_package(None) is not x86 and not isinstance(kernel_package(None), x86.VnniPackage),
                    reason="the x86 kernels need an x86-64 host with AVX2")
def test_profile_times_each_kernel_of_a_run():
    import profile_tvm

    compiled, feeds = profile_tvm.build("digits1", reduce_range=False)
    rows, whole = profile_tvm.profile(compiled, feeds, repeats=2, number=3)
    names = {sym.rstrip("0123456789") for _, _, sym, _ in rows}
    # a VNNI host runs every 8-bit conv and the matmul on VPDPBUSD; an AVX2 one the second conv
    # (8-bit weights: its pairs could saturate VPMADDUBSW) on int16 pairs
    vnni = isinstance(kernel_package(None), x86.VnniPackage)
    u8 = "qdirect_conv_vnni" if vnni else "qdirect_conv_ubsw"
    assert ({u8, "qmatmul_vnni"} if vnni else {u8, "qdirect_conv", "qmatmul_gemm"}) <= names, names
    # every qgraph kernel call site of the build is counted (shared kernels: several calls)
    counted = sum(n for _, n, sym, _ in rows if sym.rstrip("0123456789") in compiled.kernels)
    assert counted == sum(compiled.kernels.values()), (rows, compiled.kernels)
    assert all(t > 0 for t, _, _, _ in rows) and whole > 0
    # the conv's output of the digits CNN's first layer: 8 channels of 8 x 8
    assert any(sym.startswith(u8) and shape == (1, 8, 8, 8) for _, _, sym, shape in rows), rows
    assert compiled.run(feeds)["logits"].shape == (1, 10)  # the model still runs without the instrument
    # conv / matmul kernels declare their MACs: the digits CNN's first conv, 8 x 8 x 8 outputs of a 3 x 3 x 1 window
    macs = compiled.kernel_macs
    assert set(macs) >= {sym for _, _, sym, _ in rows if sym.startswith(("qdirect_conv", "qmatmul_gemm",
                                                                           "qmatmul_vnni"))}, macs
    first = next(sym for _, _, sym, shape in rows if sym.startswith(u8) and shape == (1, 8, 8, 8))
    assert macs[first] == 8 * 8 * 8 * 9
    peaks = {"u8 x s8": 4.608 if not vnni else 1.0, "int16 pairs": 1.0, "vpdpbusd": 4.608 if vnni else 1.0}
    assert profile_tvm.kernel_rate(first, 1e-6, macs, peaks) == ("4.6", "100%")  # against its form's peak


def test_family_summary_sums_time_and_macs_per_kernel_family():
    """profile_tvm.family_summary: per family, the MACs over the family's time, against the
    peak of its form (u8 x s8 for the _ubsw kernels, VPDPBUSD for _vnni), the families by time."""
    import profile_tvm

    rows = [(1e-3, 2, "qdirect_conv3", ()), (2e-3, 1, "qdirect_conv", ()), (1e-3, 1, "qdirect_conv_ubsw2", ()),
            (5e-4, 4, "qwino_conv1", ()), (1e-3, 9, "fused_add", ()), (5e-4, 1, "qdirect_conv_vnni4", ())]
    macs = {"qdirect_conv3": 4e7, "qdirect_conv": 6e7, "qdirect_conv_ubsw2": 5e7, "qwino_conv1": 1e8,
            "qdirect_conv_vnni4": 6e7}
    got = profile_tvm.family_summary(rows, macs, {"int16 pairs": 50.0, "u8 x s8": 100.0, "vpdpbusd": 160.0})
    assert [g[0] for g in got] == ["direct conv, int16", "Winograd conv (direct MACs)", "direct conv, u8 x s8",
                                   "direct conv, VNNI"]
    assert round(got[3][2], 6) == 120.0 and round(got[3][3], 6) == 75.0  # 6e7 in 0.5 ms against VPDPBUSD's 160
    wide = profile_tvm.family_summary(rows, macs, {"int16 pairs": 50.0, "vpdpbusd": 160.0, "vpdpbusd 512": 300.0})
    assert round(wide[3][3], 6) == 40.0  # an AVX-512 VNNI CPU: against the 512-bit peak
    fam, us, rate, share = got[0]
    assert (round(us), round(rate, 6), round(share, 6)) == (4000, 35.0, 70.0)  # (8e7 + 6e7) MACs in 4 ms
    assert round(got[1][2], 6) == 200.0 and round(got[1][3], 6) == 400.0  # 4e8 in 2 ms: over the int16 peak
    assert round(got[2][3], 6) == 50.0  # 50 GMAC/s against the u8 x s8 peak
    assert profile_tvm.family_summary(rows, macs, {})[0][3] is None


def test_mac_peak_measures_both_forms():
    import bench_mac_peak

    peaks = bench_mac_peak.peak(seconds=0.02, repeats=1)
    vnni = {"vpdpbusd"} if bench_mac_peak.vnni_form() else set()
    vnni |= {"vpdpbusd 512"} if bench_mac_peak.avx512_vnni() else set()
    assert set(peaks) == {"int16 pairs", "u8 x s8"} | vnni and all(v > 0.1 for v in peaks.values()), peaks


def test_saturation_counts_pairs_that_can_leave_int16():
    """bench_saturation.py: a pair (w0, w1) of one sign saturates VPMADDUBSW over [0, 255]
    activations iff 255 * (|w0| + |w1|) >= 2**15; reordering the channels pairs big with small."""
    import numpy as np

    import bench_saturation as b
    from qgraph.tvm.x86.conv import ubsw_exact

    w = np.zeros((2, 4, 1, 1), np.int64)
    w[0, :, 0, 0] = [127, 2, 100, 1]      # pairs (127, 2): 129 saturates; (100, 1) does not
    w[1, :, 0, 0] = [-64, -64, 1, -1]      # -128 exactly: 255 * 128 = 32640 fits; mixed signs fit
    assert b.pair_stats(w) == (1, 4)
    assert not ubsw_exact(w, 0, 255)
    order = b.balanced_order(w)  # channel peaks 127, 64, 100, 1 -> (127, 1), (100, 64)
    assert order.tolist() == [0, 3, 2, 1]
    assert b.pair_stats(w, order)[0] == 0 and ubsw_exact(w[:, order], 0, 255)
