"""qgraph.tvm's hand-scheduled AVX2 kernels equal the reference interpreter bit for bit, and the
lowering picks them where they apply (and only there).

Random shapes, zero points and per-channel multipliers, with the edge cases of the kernels:
channel and pixel counts that are not multiples of the vector width or the register tile,
odd reductions (a padded pair), pads, strides, dilations, depthwise and grouped convs,
full-range 8-bit operands (the largest int16 pair products), tiny and large shifts.
"""

from __future__ import annotations

import numpy as np
import pytest

from qgraph.ir import DType, l3
from qgraph.ir.dtypes import from_numpy
from qgraph.reference import Interpreter

from conftest import one_node_model

tvm = pytest.importorskip("tvm")
qtvm = pytest.importorskip("qgraph.tvm")
from qgraph import targets  # noqa: E402
from qgraph.tvm import x86  # noqa: E402
from qgraph.tvm.kernel_packages import kernel_package  # noqa: E402

HOST = kernel_package(None)
#: A VNNI host runs the AVX2 kernels too: these tests build them for ``AVX2``, and the VNNI ones
#: with the instruction itself on a VNNI host, in their ``emulate`` form elsewhere (``VNNI_RUNS``).
HOST_VNNI = isinstance(HOST, x86.VnniPackage)
pytestmark = pytest.mark.skipif(HOST is not x86 and not HOST_VNNI, reason="the x86 kernels need an x86-64 host with AVX2")
#: This host without VNNI: the AVX2 kernels by name, whatever the host's VNNI
AVX2 = targets.Target("cpu-avx2-test", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "core-avx2"}, True,
                      frozenset({"avx2", "fma"}))


@pytest.fixture(autouse=True)
def _no_small_op_cutoff(monkeypatch):
    """The cases are small on purpose (fast tests): check the kernels, not the size cutoff."""
    monkeypatch.setattr(x86.select, "SMALL_MACS", 0)


_one_node = one_node_model  # tests/conftest.py


def _kernels(model) -> set[str]:
    mod = qtvm.lower(model, target=AVX2)
    return {gv.name_hint.rstrip("0123456789") for gv in mod.get_global_vars()} - {"main"}


def _check(model, feeds, expect: set[str]):
    assert expect <= _kernels(model), _kernels(model)
    got = qtvm.build(model, AVX2).run(feeds)
    ref = Interpreter(model).run(feeds)
    assert got["y"].dtype == ref["y"].dtype
    assert np.array_equal(got["y"], ref["y"]), int((got["y"] != ref["y"]).sum())


def _requant(rng, channels: int, out: str, small: bool = True) -> dict:
    """Random per-channel requantization; ``small=False``: every shift >= 32 (the kernels'
    high-half epilogue), else two channels with shifts 0 and 1 (the int64 epilogue)."""
    info = np.iinfo(out)
    mult = [int(m) for m in rng.integers(1 << 30, (1 << 31) - 1, channels)]
    shift = [int(s) for s in rng.integers(32, 44, channels)]
    if small and channels > 2:  # the small ones: shift 0 (no rounding term), 1, and a tiny multiplier
        mult[0], shift[0] = 1, 0
        mult[1], shift[1] = 3, 1
    zp = int(rng.integers(info.min, info.max + 1))
    return {"multiplier": mult, "shift": shift, "y_zero_point": zp, "y_qmin": int(info.min), "y_qmax": int(info.max)}


CONV_CASES = [
    # (N, C, H, W), (OC, C/g, KH, KW), strides, pads, dilations, group, x dtype
    ((1, 3, 11, 13), (16, 3, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1], 1, "uint8"),    # stem: odd K = 27
    ((2, 13, 7, 9), (11, 13, 1, 1), [1, 1], [0, 0, 0, 0], [1, 1], 1, "uint8"),    # 1x1, OC < tile, P % 8 != 0
    ((1, 8, 6, 17), (21, 8, 3, 2), [1, 2], [2, 0, 1, 1], [2, 1], 1, "int8"),     # asymmetric pads, dilation
    ((3, 5, 1, 40), (7, 5, 1, 3), [1, 1], [0, 1, 0, 1], [1, 1], 1, "int8"),      # rec's 1x3 neck conv shape
    ((1, 24, 12, 20), (24, 1, 5, 5), [2, 1], [2, 2, 2, 2], [1, 1], 24, "uint8"),  # depthwise 5x5, stride (2, 1)
    ((2, 9, 7, 5), (9, 1, 3, 3), [1, 2], [1, 1, 1, 1], [1, 1], 9, "int8"),       # depthwise, W < 8, stride (1, 2)
    # direct conv: odd channels (a padded pair), OC % 4 != 0, width past 3 vectors with a tail, W dilation
    ((2, 7, 9, 61), (10, 7, 3, 3), [1, 1], [1, 2, 0, 1], [1, 2], 1, "uint8"),
    ((1, 4, 12, 19), (6, 4, 5, 5), [2, 3], [2, 2, 2, 2], [1, 1], 1, "int8"),     # 5x5, column stride 3
    # depthwise: dilation (rows and columns), odd kernel height, stride in both axes, even kernel
    ((1, 10, 13, 27), (10, 1, 3, 5), [1, 1], [2, 2, 2, 2], [2, 2], 10, "uint8"),
    ((1, 6, 9, 19), (6, 1, 2, 2), [2, 2], [0, 0, 1, 1], [1, 1], 6, "int8"),
    ((1, 5, 11, 40), (5, 1, 5, 5), [2, 1], [2, 2, 2, 2], [1, 1], 5, "uint8"),    # rec's dw 5x5 (2, 1)
    ((1, 6, 8, 11), (6, 1, 4, 3), [1, 1], [1, 2, 2, 1], [1, 1], 6, "int8"),     # even kernel height, stride 1
    # direct conv on a folded batch (rows narrower than a vector): the digits CNN's 4x4 and 2x2
    # layers, a column stride of 3 with row dilation and asymmetric pads, a segment wider than OW + pads
    ((5, 8, 8, 8), (16, 8, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1], 1, "uint8"),
    ((3, 6, 4, 4), (10, 6, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1], 1, "int8"),
    ((4, 5, 7, 5), (7, 5, 2, 3), [1, 3], [0, 2, 1, 1], [2, 1], 1, "uint8"),
    ((2, 3, 5, 6), (9, 3, 3, 1), [1, 1], [1, 0, 1, 0], [1, 1], 1, "int8"),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_qconv_fast_kernels_bit_exact(case):
    xs, ws, strides, pads, dil, group, xdt = CONV_CASES[case]
    rng = np.random.default_rng(100 + case)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    x.reshape(-1)[:8] = info.min  # extremes: the largest pair products
    x.reshape(-1)[8:16] = info.max
    w = rng.integers(-128, 128, ws).astype(np.int8)
    w[0] = -128
    oc = ws[0]
    w_zp = [0] * oc if case % 2 == 0 else [int(z) for z in rng.integers(-3, 4, oc)]
    bias = rng.integers(-20000, 20000, oc).astype(np.int32)
    out = "int8" if case % 3 == 1 else "uint8"
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "group": group, "kernel_shape": list(ws[2:]),
             "x_zero_point": int(rng.integers(info.min, info.max + 1)), "w_zero_point": w_zp,
             **_requant(rng, oc, out, small=case % 2 == 0)}
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": bias}, attrs, from_numpy(np.dtype(out)))
    kind = "qdw_pconv" if group > 1 else "qdirect_conv"
    _check(model, {"x": x}, {kind})


IGEMM_CASES = [
    # (N, C, H, W), (OC, C, KH, KW), strides, pads, dilations, x dtype: strided, C >= 32 (conv.igemm_pays)
    ((2, 33, 13, 11), (21, 33, 3, 3), [2, 2], [1, 0, 1, 1], [1, 1], "uint8"),  # batch, odd C, OC % 16, P % 6 = 5
    ((1, 40, 9, 17), (16, 40, 3, 2), [1, 2], [2, 0, 1, 1], [2, 1], "int8"),    # stride in one axis, row dilation
    ((1, 32, 10, 10), (8, 32, 5, 5), [3, 3], [2, 2, 2, 2], [1, 1], "uint8"),   # 5x5 stride 3, OC < a vector pair
]


@pytest.mark.parametrize("case", range(len(IGEMM_CASES)))
def test_igemm_conv_bit_exact(case):
    """Strided convs with enough channels run as an implicit GEMM of pixels by channel vectors
    (``x86.conv.igemm_conv``) and equal the reference bit for bit: full-range operands, per-channel
    weight zero points, both epilogues, tiles that span rows and a last partial one."""
    xs, ws, strides, pads, dil, xdt = IGEMM_CASES[case]
    rng = np.random.default_rng(500 + case)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    x.reshape(-1)[:64] = info.min if case % 2 else info.max
    w = rng.integers(-128, 128, ws).astype(np.int8)
    w[0] = -128
    oc = ws[0]
    w_zp = [0] * oc if case % 2 == 0 else [int(z) for z in rng.integers(-3, 4, oc)]
    out = "int8" if case % 2 else "uint8"
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "kernel_shape": list(ws[2:]),
             "x_zero_point": int(rng.integers(info.min, info.max + 1)), "w_zero_point": w_zp,
             **_requant(rng, oc, out, small=case % 2 == 0)}
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": rng.integers(-20000, 20000, oc).astype(np.int32)}, attrs,
                      from_numpy(np.dtype(out)))
    _check(model, {"x": x}, {"qigemm_pack", "qigemm_conv"})


WINO_CASES = [
    # (N, C, H, W), OC, pads, x dtype: 3x3 stride 1 (winograd.applies)
    ((2, 17, 11, 37), 13, [1, 0, 0, 1], "int8"),    # batch (a folded one for the direct conv), odd C, asymmetric pads
    ((1, 16, 11, 13), 8, [1, 1, 1, 1], "uint8"),    # odd OH and OW: a last tile half outside; OC < one tile
    ((1, 24, 26, 26), 24, [1, 1, 1, 1], "uint8"),   # 13 tiles a row: the 8x1 tile, a partial last block
    ((1, 32, 15, 40), 19, [0, 0, 0, 0], "int8"),    # no pads (valid conv), OW 38 past two 16-tile blocks
]


@pytest.mark.parametrize("case", range(len(WINO_CASES)))
def test_winograd_conv_bit_exact(case):
    """3x3 stride-1 convs run exact integer Winograd F(2x2, 3x3) (``x86.winograd``) and equal
    the reference bit for bit: full-range activations and weights (the largest transformed
    values), per-channel weight zero points, both epilogues."""
    xs, oc, pads, xdt = WINO_CASES[case]
    rng = np.random.default_rng(300 + case)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    x[0, :, :4, :4] = info.max if case % 2 else info.min  # a patch at an extreme: |V| at its bound
    w = rng.integers(-128, 128, (oc, xs[1], 3, 3)).astype(np.int8)
    w[0] = -128
    w[1, :, :, :] = np.array([[127, -128, 127], [-128, 127, -128], [127, -128, 127]], np.int8)  # |U| at its bound
    w_zp = [0] * oc if case % 2 == 0 else [int(z) for z in rng.integers(-2, 3, oc)]
    out = "int8" if case % 2 else "uint8"
    attrs = {"pads": pads, "kernel_shape": [3, 3], "x_zero_point": int(rng.integers(info.min, info.max + 1)),
             "w_zero_point": w_zp, **_requant(rng, oc, out, small=case % 2 == 0)}
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": rng.integers(-20000, 20000, oc).astype(np.int32)}, attrs,
                      from_numpy(np.dtype(out)))
    _check(model, {"x": x}, {"qwino_input", "qwino_conv"})


def test_winograd_transforms_give_four_times_the_conv_sum():
    """The identity the kernels rest on, in numpy: ``A^T [(G' g G'^T) * (B^T d B)] A`` is 4x the
    2x2 valid correlation of the 4x4 patch ``d`` with ``g`` (integer, no rounding anywhere)."""
    from qgraph.tvm.x86 import winograd as W

    rng = np.random.default_rng(7)
    d = rng.integers(-255, 256, (50, 4, 4))
    g = rng.integers(-128, 128, (50, 1, 3, 3))
    u = W.transform_weights(g)[:, 0]
    y4 = np.einsum("ai,nij,bj->nab", W.AT, u * W.transform_input(d), W.AT)
    direct = np.array([[[(d[n, a:a + 3, b:b + 3] * g[n, 0]).sum() for b in range(2)] for a in range(2)]
                       for n in range(50)])
    assert np.array_equal(y4, 4 * direct)


def test_winograd_refuses_what_its_bounds_do_not_cover():
    """int16 activations (``|V|`` past int16), and geometries it does not take, keep the direct conv."""
    from qgraph.tvm.x86 import winograd as W
    from qgraph.tvm.x86.gemm import ConvGeometry

    w = np.full((4, 16, 3, 3), 127, np.int64)
    assert W.fits((-255, 255), w)
    assert not W.fits((-9000, 9000), w)  # 4 x 9000 > 32767
    assert not W.fits((0, 255), np.full((4, 16, 3, 3), 4000, np.int64))  # |U| = 36000
    g = ConvGeometry(1, 16, 20, 20, 8, 3, 3, 20, 20, (1, 1), (1, 1), (1, 1))
    assert W.applies(g)
    from dataclasses import replace
    assert not W.applies(replace(g, strides=(2, 2)))
    assert not W.applies(replace(g, dilations=(2, 2)))
    assert not W.applies(replace(g, c=8))
    assert not W.applies(replace(g, kh=5, kw=5))
    assert not W.applies(replace(g, oh=8, ow=8))  # 16 tiles


U8_CASES = [
    # (N, C, H, W), (OC, C, KH, KW), strides, pads, dilations: C % 4 != 0, OC % tile != 0, pads, tails
    ((2, 7, 9, 61), (10, 7, 3, 3), [1, 1], [1, 2, 0, 1], [1, 2]),
    ((1, 3, 11, 13), (16, 3, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1]),
    ((1, 16, 6, 17), (21, 16, 1, 1), [1, 1], [0, 0, 0, 0], [1, 1]),
    ((1, 4, 12, 19), (6, 4, 5, 5), [2, 3], [2, 2, 2, 2], [1, 1]),
    ((6, 8, 4, 4), (12, 8, 3, 3), [2, 2], [1, 1, 1, 1], [1, 1]),  # a folded batch
]


@pytest.mark.parametrize("xdt", [np.uint8, np.int8])
@pytest.mark.parametrize("case", range(len(U8_CASES)))
def test_qconv_u8s8_pairs_where_no_pair_can_saturate(case, xdt):
    """7-bit weights (``reduce_range``): every VPMADDUBSW pair sum of uint8 activations stays in
    int16, so the direct conv runs the u8 x s8 form (raw bytes, zero point in the pads, its
    share folded into the bias) and equals the reference bit for bit; one 8-bit weight pair
    that could saturate sends the layer back to the exact int16 form."""
    from qgraph.tvm.x86 import conv as D

    xs, ws, strides, pads, dil = U8_CASES[case]
    rng = np.random.default_rng(200 + case)
    info = np.iinfo(xdt)  # int8 activations run shifted to uint8 (x + 128, zero point + 128)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    x.reshape(-1)[:8], x.reshape(-1)[8:16] = info.min, info.max
    w = rng.integers(-64, 65, ws).astype(np.int8)
    w[0, :2] = 64  # the worst pair: 255 * (64 + 64) = 32640 < 2**15
    oc = ws[0]
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "kernel_shape": list(ws[2:]),
             "x_zero_point": int(rng.integers(info.min, info.max + 1)), "w_zero_point": [0] * oc,
             **_requant(rng, oc, "uint8")}
    bias = rng.integers(-20000, 20000, oc).astype(np.int32)
    assert D.ubsw_exact(w, 0, 255)
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": bias}, attrs, DType.UINT8)
    _check(model, {"x": x}, {"qdirect_conv_ubsw"})
    if ws[1] >= 2:
        w2 = w.copy()
        w2[1, 0, 0, 0], w2[1, 1, 0, 0] = 100, 100  # 255 * 200 > 2**15: a pair that can saturate
        assert not D.ubsw_exact(w2, 0, 255)
        model = _one_node(l3.QConv, {"x": x}, {"w": w2, "b": bias}, attrs, DType.UINT8)
        assert "qdirect_conv_ubsw" not in _kernels(model)
        _check(model, {"x": x}, {"qdirect_conv"})


#: A host-runnable target that declares VNNI: lowering picks the VNNI package, LLVM compiles for AVX2
VNNI_HOST = targets.Target("cpu-vnni-test", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "core-avx2"},
                           True, frozenset({"avx2", "fma", "avx512vnni", "avx512vl"}))
#: The VNNI kernels' form under test: the instruction on a VNNI host; elsewhere its emulation (the
#: same layout and indices, the products written out), which exists only for hosts without VNNI
#: (``test_vnni_conv_compiles_to_vpdpbusd`` compile-checks the instruction form there)
VNNI_RUNS = ["vpdpbusd" if HOST_VNNI else "emulate"]


def _vnni_target(form: str, monkeypatch):
    """The target that runs the VNNI kernels in ``form`` on this host: ``VNNI_HOST`` with the
    emulating package (AVX2 code), or the host itself (``VPDPBUSD``)."""
    if form == "emulate":
        monkeypatch.setattr(x86, "VNNI_512_NO_VBMI", x86.VnniPackage("emulate", bits=512))  # VNNI_HOST's
        return VNNI_HOST
    return targets.resolve("cpu")


@pytest.mark.parametrize("form", VNNI_RUNS)
@pytest.mark.parametrize("case", [0, 1, 2, 3, 6, 7, 12, 13, 14, 15])
def test_vnni_conv_equals_the_reference(case, form, monkeypatch):
    """With VNNI (VPDPBUSD sums 4 u8 x s8 products in int32) every 8-bit direct conv runs the
    u8 x s8 form, full-range int8 weights included. On a CPU without VNNI (Debian's qemu has
    none either) the package's ``emulate`` form runs: the same packed bytes, weights and
    indices, each lane's 4 products written out in int32; ``test_vnni_conv_compiles_to_vpdpbusd``
    checks the instruction form compiles. On a VNNI CPU the instruction runs instead. ``qgraph
    compile`` checks a build against the reference on the user's CPU, so a VNNI machine would
    refuse a wrong one."""
    xs, ws, strides, pads, dil, group, xdt = CONV_CASES[case]
    assert group == 1
    target = _vnni_target(form, monkeypatch)
    rng = np.random.default_rng(300 + case)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, xs).astype(xdt)
    x.reshape(-1)[:8], x.reshape(-1)[8:16] = info.min, info.max
    w = rng.integers(-128, 128, ws).astype(np.int8)
    w[0] = -128  # pairs that saturate VPMADDUBSW: 255 * 256 > 2**15
    w[-1] = 127
    oc = ws[0]
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "group": 1, "kernel_shape": list(ws[2:]),
             "x_zero_point": int(rng.integers(info.min, info.max + 1)), "w_zero_point": [0] * oc,
             **_requant(rng, oc, "uint8", small=case % 2 == 0)}
    bias = rng.integers(-20000, 20000, oc).astype(np.int32)
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": bias}, attrs, DType.UINT8)
    mod = qtvm.lower(model, target=target)
    assert "qdirect_conv_vnni" in {gv.name_hint.rstrip("0123456789") for gv in mod.get_global_vars()}
    got = qtvm.build(model, target).run({"x": x})["y"]
    ref = Interpreter(model).run({"x": x})["y"]
    assert np.array_equal(got, ref), int((got != ref).sum())


@pytest.mark.parametrize("form", VNNI_RUNS)
@pytest.mark.parametrize("case", range(5))
def test_vnni_matmul_equals_the_reference(case, form, monkeypatch):
    """With VNNI a matmul of 8-bit activations and int8 weights (after the zero point) runs
    ``VPDPBUSD`` on the raw bytes, the zero point's share in the bias: the ``MATMUL_CASES``
    (uint8 and int8 activations, per-column zero points, odd K, one row) and the CRNN head's
    shape (24 x 1024 x 8210: the 12x2 tile of 32 registers)."""
    ash, bsh, adt = (MATMUL_CASES + [((24, 1024), (1024, 8210), "uint8")])[case]
    target = _vnni_target(form, monkeypatch)
    rng = np.random.default_rng(400 + case)
    info = np.iinfo(adt)
    a = rng.integers(info.min, info.max + 1, ash).astype(adt)
    a.reshape(-1)[:4], a.reshape(-1)[4:8] = info.min, info.max
    n = bsh[1]
    zp = [0] if case in (0, 4) else [int(z) for z in rng.integers(-2, 3, n)]
    b = (rng.integers(-128, 128, bsh) if zp == [0] else rng.integers(-126, 126, bsh)).astype(np.int8)
    b[0, 0] = -128 if zp == [0] else -126  # -126 - 2: int8's extreme after a zero point of 2
    out = "uint8" if case != 1 else "int8"
    attrs = {"a_zero_point": int(rng.integers(info.min, info.max + 1)), "b_zero_point": zp,
             **_requant(rng, n, out, small=case != 2)}
    bias = rng.integers(-20000, 20000, n).astype(np.int32)
    model = _one_node(l3.QMatMul, {"a": a}, {"b": b, "bias": bias}, attrs, from_numpy(np.dtype(out)))
    built = qtvm.build(model, target)
    assert built.kernels.get("qmatmul_vnni") == 1, built.kernels
    got, ref = built.run({"a": a})["y"], Interpreter(model).run({"a": a})["y"]
    assert np.array_equal(got, ref), int((got != ref).sum())
    if zp != [0]:  # a weight of -129 after the zero point: not int8, the int16 GEMM instead
        b = b.copy()
        b[0, 0], attrs["b_zero_point"] = -128, [1] * n
        model = _one_node(l3.QMatMul, {"a": a}, {"b": b, "bias": bias}, attrs, from_numpy(np.dtype(out)))
        assert "qmatmul_vnni" not in {gv.name_hint.rstrip("0123456789")
                                      for gv in qtvm.lower(model, target=target).get_global_vars()}


def test_vnni_512_takes_zmm_tiles_of_32_registers():
    """AVX-512 VNNI: 512-bit VPDPBUSD (a pair of 8-column vectors per zmm accumulator) on tiles of
    32 registers: 12x2 on the CRNN head (24 rows), 2x8 on one row; AVX-VNNI: 256-bit, the int16
    form's 16-register tiles."""
    from qgraph.tvm.x86 import conv as D
    from qgraph.tvm.x86 import gemm

    assert gemm.matmul_tile(24, 8210, vnni_bits=512) == (12, 2)
    assert gemm.matmul_tile(24, 8210, vnni_bits=256) == gemm.matmul_tile(24, 8210) == (6, 2)
    assert gemm.matmul_tile(1, 40, vnni_bits=512) == (2, 8) and gemm.matmul_tile(1, 40) == (2, 4)
    assert D.direct_tile(52, oc=96, vnni_bits=512) == (4, 7)  # 56 columns where 12x2 computes 64
    assert D.direct_tile(48, oc=96, vnni_bits=512) == (12, 2) and D.direct_tile(48, oc=96) == (6, 2)
    # 104 columns: 12x2 computes 112 where 8x1 would compute 104, at a third of the speed
    assert D.direct_tile(104, oc=48, vnni_bits=512) == (12, 2) and D.direct_tile(104, oc=48) == (8, 1)
    assert kernel_package(targets.host_cpu("flags\t\t: fpu avx avx2 fma avx512f avx512bw avx512vl avx512_vnni\n")) \
        is x86.VNNI_512_NO_VBMI and x86.VNNI_512_NO_VBMI.bits == 512 and not x86.VNNI_512_NO_VBMI.vbmi
    icelake = targets.host_cpu("flags\t\t: fpu avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512vbmi\n")
    assert kernel_package(icelake) is x86.VNNI_512 and x86.VNNI_512.vbmi and x86.VNNI_512.bits == 512
    assert icelake.tvm_dict["mcpu"] == "cascadelake" and icelake.tvm_dict["mattr"] == ["+avx512vbmi"]
    assert kernel_package(targets.host_cpu("flags\t\t: fpu avx avx2 fma avx_vnni\n")) is x86.VNNI and x86.VNNI.bits == 256


def test_vnni_conv_compiles_to_vpdpbusd():
    """For a VNNI CPU (cascadelake: AVX-512 VNNI with VL) the direct conv and the matmul are
    VPDPBUSD on zmm, with no VPMADDUBSW nor VPMADDWD left; for AVX-VNNI (no AVX-512) the
    same on ymm; the host detection picks the VNNI package from /proc/cpuinfo flags."""
    from qgraph.tvm.kernel_packages import kernel_package

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (1, 16, 10, 20)).astype(np.uint8)
    w = rng.integers(-128, 128, (24, 16, 3, 3)).astype(np.int8)
    attrs = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "kernel_shape": [3, 3],
             "x_zero_point": 3, "w_zero_point": [0] * 24, **_requant(rng, 24, "uint8")}
    model = _one_node(l3.QConv, {"x": x}, {"w": w, "b": np.zeros(24, np.int32)}, attrs, DType.UINT8)
    flags = "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni\n"
    cascade = targets.host_cpu(flags)
    assert cascade.tvm_dict["mcpu"] == "cascadelake" and kernel_package(cascade) is x86.VNNI_512_NO_VBMI
    alder = targets.host_cpu("flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni\n")
    assert alder.tvm_dict.get("mattr") == ["+avxvnni"] and kernel_package(alder) is x86.VNNI
    vnni = targets.Target("vnni", dict(cascade.tvm_dict), False, cascade.features)
    built = qtvm.build(model, vnni)
    assert built.kernels.get("qdirect_conv_vnni") == 1

    asm = "\n".join(_asm(built.executable.mod))
    assert "vpdpbusd" in asm and "vpmaddubsw" not in asm
    a = rng.integers(0, 256, (24, 64)).astype(np.uint8)
    b = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    mm = _one_node(l3.QMatMul, {"a": a}, {"b": b}, {"a_zero_point": 9, "b_zero_point": [0], **_requant(rng, 40, "uint8")},
                   DType.UINT8)
    built = qtvm.build(mm, vnni)
    assert built.kernels.get("qmatmul_vnni") == 1 and "qmatmul_gemm" not in built.kernels
    asm = "\n".join(_asm(built.executable.mod))
    assert "vpdpbusd" in asm and "vpmaddwd" not in asm
    assert "zmm" in asm  # AVX-512: the 512-bit form
    # AVX-VNNI without AVX-512 (Alder Lake, Zen 5 client): the 256-bit VEX form, no zmm register
    for m in (model, mm):
        asm = "\n".join(_asm(qtvm.build(m, targets.Target("avxvnni", dict(alder.tvm_dict), False,
                                                           alder.features)).executable.mod))
        assert "vpdpbusd" in asm and "zmm" not in asm and "vpmaddwd" not in asm


def test_a_batch_of_narrow_rows_interleaves_into_one_row():
    """Where an output row is narrower than a vector, the batch's images share one packed row,
    column by column (``ow * N + n``): the digits CNN at batch 64 computes 128 columns per row
    of its 2x2 layer, every one wanted (a row per image: 8 lanes for 2); rows of one vector
    interleave at no loss (the 8x8 stem, so that its consumer reads its output as it is). A
    single image, or rows wider than a vector where that saves under 5%, keep a row per image. Two interleaved
    convs in a row: the second packs the first's ``[C, H, W, N]`` output as it is."""
    from qgraph.ir import Graph, Model, Node, TensorType, Value
    from qgraph.tvm.x86 import conv as D
    from qgraph.tvm.x86.gemm import ConvGeometry

    def geom(n, c, h, w, oc, k, oh, ow, s, p):
        return ConvGeometry(n, c, h, w, oc, k, k, oh, ow, (s, s), (1, 1), (p, p))

    conv3 = geom(64, 16, 4, 4, 32, 3, 2, 2, 2, 1)
    assert (D.batch_fold(conv3), D.row_cols(conv3, 64)) == (64, 128)
    assert D.direct_extent(conv3, 2, 64) == (5, 192)  # 128 columns + 1 more phase column per image
    assert D.batch_fold(geom(1, 16, 4, 4, 32, 3, 2, 2, 2, 1)) == 1          # one image
    assert D.batch_fold(geom(8, 64, 16, 16, 64, 3, 16, 16, 1, 1)) == 1      # 16 columns: whole vectors
    assert D.batch_fold(geom(8, 512, 7, 7, 512, 3, 7, 7, 1, 1)) == 8        # 56 columns in 7 vectors, not 8
    assert D.batch_fold(geom(2, 8, 63, 63, 8, 1, 63, 63, 1, 0)) == 1        # 128 against 128
    assert D.batch_fold(geom(64, 1, 8, 8, 8, 3, 8, 8, 1, 1)) == 64          # rows of one vector: no loss

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (6, 16, 4, 4)).astype(np.uint8)  # 6 images: 12 columns, a partial vector
    w = rng.integers(-128, 128, (32, 16, 3, 3)).astype(np.int8)
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "x_zero_point": 7,
             "w_zero_point": [0], **_requant(rng, 32, "uint8")}
    model = _one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.UINT8)
    text = qtvm.lower(model, target=AVX2)["main"].script()
    assert "R.permute_dims" in text and "(1, 32, 2, 12)" in text, text
    _check(model, {"x": x}, {"qdirect_conv"})

    # a chain: 16 -> 24 channels at stride 1 (int16), then 24 -> 8 at stride 2 (u8 x s8, 7-bit
    # weights) on 5 images of 5 x 3
    g = Graph("g")
    xv = Value("x", TensorType(DType.UINT8, (5, 16, 5, 3)))
    g.inputs.append(xv)
    h, y = Value("h", TensorType(DType.UINT8, None)), Value("y", TensorType(DType.UINT8, None))
    w1 = rng.integers(-128, 128, (24, 16, 3, 3)).astype(np.int8)
    w2 = rng.integers(-64, 64, (8, 24, 3, 2)).astype(np.int8)
    g.append(Node(l3.QConv, [xv, g.add_initializer("w1", w1)], [h],
                  {**attrs, "strides": [1, 1], "x_zero_point": 3, **_requant(rng, 24, "uint8")}, name="a"))
    g.append(Node(l3.QConv, [h, g.add_initializer("w2", w2)], [y],
                  {**attrs, "kernel_shape": [3, 2], "pads": [1, 0, 0, 1], "x_zero_point": 9,
                   **_requant(rng, 8, "uint8")}, name="b"))
    g.outputs.append(y)
    model = Model(g, {"": 21, "qgraph": 1})
    feeds = {"x": rng.integers(0, 256, (5, 16, 5, 3)).astype(np.uint8)}
    text = qtvm.lower(model, target=AVX2).script()
    assert 'x: T.Buffer((24, 5, 3, 5), "uint8")' in text, text  # the second pack reads [C, H, W, N]
    _check(model, feeds, {"qdirect_conv", "qdirect_conv_ubsw"})


def test_pointwise_convs_run_their_pixels_as_one_row():
    """A 1x1 stride-1 unpadded conv runs on ``[N, C, 1, H * W]`` (``select._ConvPlan.flat``):
    no per-row padding to whole vectors; its pack reads ``[N, C, H, W]`` as that row. In a chain of a folded (interleaved) batch, the
    pointwise conv's consumer reads its output in the ordinary layout, not the interleaved
    view of the flattened row."""
    from qgraph.ir import Graph, Model, Node, TensorType, Value

    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, (1, 12, 5, 13)).astype(np.uint8)  # 65 pixels: one row of 9 vectors
    w = rng.integers(-128, 128, (10, 12, 1, 1)).astype(np.int8)
    attrs = {"kernel_shape": [1, 1], "x_zero_point": 3, "w_zero_point": [0], **_requant(rng, 10, "int8")}
    model = _one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.INT8)
    text = qtvm.lower(model, target=AVX2).script()
    assert "(1, 10, 1, 65)" in text
    # the pack reads x as it comes (a Relax reshape before it fused into the producer, which then wrote
    # the flat row dividing by the width per element), and views it as the row
    assert 'x: T.Buffer((1, 12, 5, 13), "uint8")' in text and "R.reshape(x" not in text, text
    _check(model, {"x": x}, {"qdirect_conv"})

    # 6 images of 3x2 (folded for the 3x3 convs) through 3x3 -> 1x1 (4 pixels a row) -> 3x3
    g = Graph("g")
    xv = Value("x", TensorType(DType.UINT8, (6, 8, 3, 2)))
    g.inputs.append(xv)
    vals = [Value(n, TensorType(DType.UINT8, None)) for n in ("a", "b", "y")]
    shapes = [(16, 8, 3, 3), (16, 16, 1, 1), (8, 16, 3, 3)]
    src = xv
    for i, (v, ws) in enumerate(zip(vals, shapes)):
        k = ws[2]
        g.append(Node(l3.QConv, [src, g.add_initializer(f"w{i}", rng.integers(-128, 128, ws).astype(np.int8))], [v],
                      {"kernel_shape": [k, k], "pads": [k // 2] * 4, "x_zero_point": 5, "w_zero_point": [0],
                       **_requant(rng, ws[0], "uint8")}, name=f"c{i}"))
        src = v
    g.outputs.append(vals[-1])
    model = Model(g, {"": 21, "qgraph": 1})
    feeds = {"x": rng.integers(0, 256, (6, 8, 3, 2)).astype(np.uint8)}
    assert "(16, 1, 6, 6)" in qtvm.lower(model, target=AVX2).script()  # the producer's [C, H, W, N] view as one row
    got = qtvm.build(model, AVX2).run(feeds)["y"]
    assert np.array_equal(got, Interpreter(model).run(feeds)["y"])


def test_few_channel_convs_fold_their_row_taps_into_channels():
    """A conv on few channels (a stem) whose weights keep it on int16 pairs packs its row taps
    as channels: 3 channels x 3 taps are 5 pairs instead of 6 half-used ones. One that takes
    the u8 x s8 form anyway (a 1-channel stem: its pairs are one weight and a 0) does not
    fold. The CONV_CASES on 3, 5 and 7 channels check the values; here the choice and layout."""
    from qgraph.tvm.x86 import conv as D
    from qgraph.tvm.x86.gemm import ConvGeometry

    stem = ConvGeometry(1, 3, 224, 224, 64, 7, 7, 112, 112, (2, 2), (1, 1), (3, 3))
    assert D.tap_fold_pays(stem)
    rng = np.random.default_rng(3)
    w = rng.integers(-9, 10, (64, 3, 7, 7))
    g, wf = D.fold_taps(stem, w)
    assert (g.c, g.kh, g.kw, g.w, g.strides, g.pads) == (21, 7, 1, 112, (2, 1), (3, 0))
    assert np.array_equal(wf[:, 2 * 3 + 1, :, 0], w[:, 1, :, 2])  # tap kw=2 of channel 1
    assert not D.tap_fold_pays(ConvGeometry(1, 64, 56, 56, 64, 3, 3, 56, 56, (1, 1), (1, 1), (1, 1)))
    assert not D.tap_fold_pays(ConvGeometry(1, 2, 9, 9, 8, 3, 3, 9, 9, (1, 1), (1, 1), (1, 1)))  # 3 pairs either way

    x = rng.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    w3 = rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.int8)
    w3[:, :2] = 127  # channels 0 and 1 pair up at 255 * 254: not u8 x s8
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "x_zero_point": 3, "w_zero_point": [0],
             **_requant(rng, 8, "uint8")}
    model = _one_node(l3.QConv, {"x": x}, {"w": w3}, attrs, DType.UINT8)
    text = qtvm.lower(model, target=AVX2)["main"].script()
    assert "qtap_pack" in text and "(2, 9, 8, 8)" in text, text
    _check(model, {"x": x}, {"qdirect_conv"})
    w1 = rng.integers(-128, 128, (8, 1, 3, 3)).astype(np.int8)
    model = _one_node(l3.QConv, {"x": x[:, :1]}, {"w": w1}, attrs, DType.UINT8)
    assert "qtap_pack" not in qtvm.lower(model, target=AVX2)["main"].script()
    _check(model, {"x": x[:, :1]}, {"qdirect_conv_ubsw"})


def test_qconv_per_tensor_requant_no_bias_relu_bounds():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 6, 10, 10)).astype(np.uint8)
    w = rng.integers(-127, 128, (12, 6, 3, 3)).astype(np.int8)
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "x_zero_point": 0, "w_zero_point": [0],
             "multiplier": [1518500250], "shift": [40], "y_zero_point": 7, "y_qmin": 7, "y_qmax": 255}
    _check(_one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.UINT8), {"x": x}, {"qdirect_conv"})


MATMUL_CASES = [
    ((1, 40, 120), (120, 37), "uint8"),   # rec's FC shapes, columns not a multiple of 16
    ((2, 3, 5, 33), (33, 16), "int8"),    # batch dims, odd K, rows < tile
    ((7, 64), (64, 6625 // 25), "uint8"),  # the 4x2 tile (7 rows: 8 computed where 6x2 computes 12)
    ((1, 50), (50, 40), "uint8"),  # one row: the 2x4 tile
]


def test_matmul_tile_takes_the_least_padded_work():
    """``gemm.matmul_tile``: 6x2 (the fastest per multiply) unless another tile pads over 5% less."""
    from qgraph.tvm.x86 import gemm

    assert gemm.matmul_tile(24, 8210) == (6, 2)  # the CRNN head
    assert gemm.matmul_tile(40, 37) == (6, 2)  # 42 rows against 40: under 5%
    assert gemm.matmul_tile(30, 16) == (6, 2)
    assert gemm.matmul_tile(7, 265) == (4, 2)
    assert gemm.matmul_tile(8, 64) == (4, 2)
    assert gemm.matmul_tile(1, 40) == (2, 4)
    assert gemm.matmul_tile(2, 64) == (2, 4)


@pytest.mark.parametrize("case", range(len(MATMUL_CASES)))
def test_qmatmul_fast_kernel_bit_exact(case):
    ash, bsh, adt = MATMUL_CASES[case]
    rng = np.random.default_rng(200 + case)
    info = np.iinfo(adt)
    a = rng.integers(info.min, info.max + 1, ash).astype(adt)
    b = rng.integers(-128, 128, bsh).astype(np.int8)
    n = bsh[1]
    bias = rng.integers(-20000, 20000, n).astype(np.int32)
    out = "uint8" if case != 1 else "int8"
    attrs = {"a_zero_point": int(rng.integers(info.min, info.max + 1)),
             "b_zero_point": [0] if case == 0 else [int(z) for z in rng.integers(-2, 3, n)],
             **_requant(rng, n, out, small=case != 2)}
    model = _one_node(l3.QMatMul, {"a": a}, {"b": b, "bias": bias}, attrs, from_numpy(np.dtype(out)))
    _check(model, {"a": a}, {"qmatmul_gemm"})


def test_selection_falls_back_where_the_kernels_do_not_apply():
    rng = np.random.default_rng(9)
    x = rng.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)
    attrs = {"group": 2, "kernel_shape": [3, 3], "x_zero_point": 3, "w_zero_point": [0],
             "multiplier": [1 << 30], "shift": [38], "y_zero_point": 0, "y_qmin": 0, "y_qmax": 255}
    grouped = _one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.UINT8)
    assert _kernels(grouped) == set()  # grouped, not depthwise: the default lowering
    _check(grouped, {"x": x}, set())
    # activation x activation matmul: no constant to pack
    a = rng.integers(0, 256, (2, 4, 8)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 8, 3)).astype(np.uint8)
    mm = _one_node(l3.QMatMul, {"a": a, "b": b}, {}, {"a_zero_point": 1, "b_zero_point": [2], "multiplier": [1 << 30],
                                                     "shift": [40], "y_zero_point": 0, "y_qmin": 0, "y_qmax": 255},
                   DType.UINT8)
    assert _kernels(mm) == set()
    # 16-bit activations: int16 pair products could overflow int32
    x16 = rng.integers(-30000, 30000, (1, 4, 5, 5)).astype(np.int16)
    w4 = rng.integers(-127, 128, (4, 4, 1, 1)).astype(np.int8)
    c16 = _one_node(l3.QConv, {"x": x16}, {"w": w4}, {**attrs, "group": 1, "kernel_shape": [1, 1]}, DType.UINT8)
    assert _kernels(c16) == set()


@pytest.mark.parametrize("xshape, wshape, attrs, expect", [
    # PP-OCR's DB head (k = 2, s = 2): one 1x1 conv with 4 x M channels (u8 x s8 where its pairs
    # are proven, else the int16 form: either is a direct conv)
    ((1, 24, 9, 11), (24, 6, 2, 2), {"strides": [2, 2]}, "qdirect_conv"),
    # depthwise, stride 1: one phase, a depthwise conv of the flipped kernel
    ((1, 6, 7, 9), (6, 1, 3, 3), {"group": 6, "pads": [1, 1, 1, 1]}, "qdw_pconv"),
])
def test_conv_transpose_runs_on_the_conv_kernels(xshape, wshape, attrs, expect):
    """QConvTranspose lowers to one QConv over its stride phases, which these kernels take."""
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, xshape).astype(np.uint8)
    w = rng.integers(-127, 128, wshape).astype(np.int8)
    m = wshape[1] * attrs.get("group", 1)
    attrs = {**attrs, "kernel_shape": list(wshape[2:]), "x_zero_point": 7, "w_zero_point": [0],
             **_requant(rng, m, "uint8")}
    model = _one_node(l3.QConvTranspose, {"x": x}, {"w": w, "b": rng.integers(-9000, 9000, m).astype(np.int32)},
                      attrs, DType.UINT8)
    names = _kernels(model)
    assert any(n.startswith(expect) for n in names), names
    got = qtvm.build(model, AVX2).run({"x": x})
    assert np.array_equal(got["y"], Interpreter(model).run({"x": x})["y"])


def test_kernels_default_and_non_x86_targets_keep_the_default_lowering():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8)
    w = rng.integers(-127, 128, (8, 4, 1, 1)).astype(np.int8)
    attrs = {"kernel_shape": [1, 1], "x_zero_point": 3, "w_zero_point": [0], "multiplier": [1 << 30],
             "shift": [38], "y_zero_point": 0, "y_qmin": 0, "y_qmax": 255}
    model = _one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.UINT8)
    names = {gv.name_hint for gv in qtvm.lower(model, kernels="default").get_global_vars()}
    assert names == {"main"}
    names = {gv.name_hint for gv in qtvm.lower(model, target=targets.get("aarch64")).get_global_vars()}
    assert names == {"main"}
    with pytest.raises(qtvm.LoweringError, match="kernels"):
        qtvm.lower(model, kernels="fastest")


def test_tiny_layers_keep_the_default_lowering(monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, (1, 8, 4, 4)).astype(np.uint8)
    w = rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
    attrs = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "x_zero_point": 3, "w_zero_point": [0],
             "multiplier": [1 << 30], "shift": [38], "y_zero_point": 0, "y_qmin": 0, "y_qmax": 255}
    model = _one_node(l3.QConv, {"x": x}, {"w": w}, attrs, DType.UINT8)
    assert "qdirect_conv" in _kernels(model)  # 4 tiles of 2x2: under winograd.MIN_TILES
    monkeypatch.setattr(x86.select, "SMALL_MACS", 16 * 16 * 72 + 1)  # one more than this conv's MACs
    assert _kernels(model) == set()


# -- elementwise: QAdd in int32, the scheduled fused loops ------------------------------------------
@pytest.mark.parametrize("shape, b_shape, shift", [
    ((1, 4, 8, 16), None, 31),      # rows of whole 16-lane vectors
    ((1, 3, 5, 28), None, 31),      # 4-lane rows
    ((2, 3, 7, 7), None, 33),       # no lane divides a row: the fused loop
    ((1, 8, 4, 6), (1, 8, 1, 1), 30),  # a broadcast operand: parallel rows, no vector schedule
    ((1, 4, 8, 16), None, 50),      # a shift the int32 plan refuses: the int64 form
])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qadd_int32_form_and_schedule_equal_the_reference(shape, b_shape, shift, dtype):
    from qgraph.quant.fixedpoint import int32_sum_plan

    rng = np.random.default_rng(sum(shape) + shift)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    b = rng.integers(info.min, info.max + 1, b_shape or shape).astype(dtype)
    a[0, 0, 0, :2], b.reshape(-1)[:2] = info.min, info.max  # the extremes
    za, zb, zy = int(rng.integers(info.min, info.max)), int(rng.integers(info.min, info.max)), 0
    ma, mb = int(rng.integers(1 << 29, 1 << 31)), -int(rng.integers(1 << 29, 1 << 31))
    attrs = {"a_zero_point": za, "b_zero_point": zb, "a_multiplier": [ma], "b_multiplier": [mb], "shift": [shift],
             "y_zero_point": zy, "y_qmin": int(info.min) // 2, "y_qmax": int(info.max)}
    bound = max(abs(int(info.min) - min(za, zb)), abs(int(info.max) - min(za, zb)))
    assert (int32_sum_plan([ma, mb], shift, [bound, bound]) is None) == (shift == 50)
    model = _one_node(l3.QAdd, {"a": a, "b": b}, {}, attrs, from_numpy(np.dtype(dtype)))
    _check(model, {"a": a, "b": b}, set())


def test_fused_elementwise_kernels_are_scheduled():
    """After the pipeline, a fused elementwise kernel is marked scheduled by qgraph's rule
    (vectorized, parallel), and a hand-written kernel keeps its own schedule."""
    from qgraph.tvm.build import schedule_pass
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    x = np.zeros((1, 4, 128, 128), np.uint8)  # over PARALLEL_MIN elements
    attrs = {"a_zero_point": 3, "b_zero_point": 5, "a_multiplier": [1 << 30], "b_multiplier": [3 << 28],
             "shift": [31], "y_zero_point": 0, "y_qmin": 0, "y_qmax": 255}
    model = _one_node(l3.QAdd, {"a": x, "b": x}, {}, attrs, DType.UINT8)
    target = targets.resolve("cpu").tvm_target()
    mod = qtvm.lower(model, target=AVX2)
    with target:
        mod = tvm.transform.Sequential(cpu.legalize_passes(target) + [schedule_pass(target)])(mod)
    prims = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and all(int(f.attrs["tirx.is_scheduled"]) for f in prims)
    text = "\n".join(f.script() for f in prims)
    assert "T.vectorized(" in text and "T.parallel(" in text


def test_float_kernels_are_scheduled_only_when_correctly_rounded():
    """A Quantize (divide, round, clip: correctly rounded IEEE operations) is vectorized (vector
    rounding, no gathers) and still equals the reference bit for bit, ties and saturation
    included; a float kernel that calls a transcendental (Sigmoid's exp) keeps TVM's lowering."""
    from qgraph.ir import ops
    from qgraph.tvm.build import schedule_pass
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    rng = np.random.default_rng(11)
    x = (rng.standard_normal((1, 3, 16, 320)) * 3).astype(np.float32)  # rows of 20 vectors (YOLOv8n input rows)
    x.reshape(-1)[:600] = np.arange(-300, 300, dtype=np.float32) * np.float32(0.5) * np.float32(0.02)  # ties
    x.reshape(-1)[600:604] = [1e30, -1e30, 3.4e38, 0.0]
    quant = _one_node(l3.Quantize, {"x": x}, {}, {"scale": 0.02, "zero_point": 3, "qmin": -128, "qmax": 127},
                      DType.INT8)
    sigmoid = _one_node(ops.Sigmoid, {"x": x}, {}, {}, DType.FLOAT)
    target = targets.resolve("cpu").tvm_target()

    def scheduled(model):
        with target:
            mod = tvm.transform.Sequential(cpu.legalize_passes(target) + [schedule_pass(target)])(qtvm.lower(model, target=AVX2))
        prims = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        assert prims
        return all("tirx.is_scheduled" in f.attrs and int(f.attrs["tirx.is_scheduled"]) for f in prims)

    assert scheduled(quant)
    assert not scheduled(sigmoid)
    built = qtvm.build(quant, AVX2)
    assert np.array_equal(built.run({"x": x})["y"], Interpreter(quant).run({"x": x})["y"])
    # and vectorized: TVM 0.27 does not mark ``nearbyint`` vectorizable, so the loop was left scalar and
    # LLVM vectorized around it with gathers and a byte store per lane (``build.vector_rounding``)
    asm = "\n".join(_asm(built.executable.mod))
    assert "gather" not in asm and "vpextrb" not in asm
    assert any(f"{op}\t$12, %ymm" in asm or f"{op}\t$12, %zmm" in asm for op in ("vroundps", "vrndscaleps")), \
        "no vector round-to-nearest-even"
    assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None  # as TVM has it, after the build
    from qgraph.tvm.build import vector_rounding

    with vector_rounding():  # overlapping builds (threads): set by the first, reset by the last
        with vector_rounding():
            pass
        assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable")
    assert tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None


@pytest.mark.parametrize("shape, x_dtype, out_dtype, kernel", [
    ((1, 3, 7, 5), np.uint8, np.uint8, "qlookup_shuffle"),   # 105: 3 vectors of 32 and a tail of 9
    ((2, 4100), np.int8, np.int8, "qlookup_shuffle"),        # more than one parallel chunk, a tail
    ((1, 300), np.int8, np.uint8, "qlookup_shuffle"),
    ((1, 16, 9, 11), np.uint8, np.int16, "qlookup"),         # a wider table: scalar loads
])
def test_lookup_kernel_equals_the_reference(shape, x_dtype, out_dtype, kernel):
    """Byte tables over every byte value take the VPSHUFB kernel (every one of the 256 inputs
    appears), wider ones the scalar loop."""
    rng = np.random.default_rng(len(shape))
    xi, oi = np.iinfo(x_dtype), np.iinfo(out_dtype)
    x = rng.integers(xi.min, xi.max + 1, shape).astype(x_dtype)
    x.reshape(-1)[:2] = xi.min, xi.max
    table = rng.integers(oi.min, oi.max + 1, xi.max - xi.min + 1)
    table[0], table[-1] = oi.min, oi.max
    if x.size >= 256:
        x.reshape(-1)[:256] = np.arange(xi.min, xi.max + 1)
    attrs = {"table": [int(t) for t in table], "x_qmin": int(xi.min)}
    model = _one_node(l3.Lookup, {"x": x}, {}, attrs, from_numpy(np.dtype(out_dtype)))
    _check(model, {"x": x}, {kernel})


#: AVX-512 VBMI (Ice Lake and later): the host's, or a cross target where the host has none
HOST_VBMI = "avx512vbmi" in targets.resolve("cpu").features
VBMI = targets.Target("cpu-vbmi-test", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake",
                                        "mattr": ["+avx512vbmi"]}, HOST_VBMI,
                      frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512vbmi"}))


@pytest.mark.parametrize("shape, x_dtype, out_dtype", [((1, 3, 7, 5), np.uint8, np.uint8), ((2, 4100), np.int8, np.int8),
                                                       ((1, 300), np.int8, np.uint8)])
def test_vbmi_lookup_equals_the_reference(shape, x_dtype, out_dtype):
    """With AVX-512 VBMI a byte table takes two VPERMI2B and a select per 64 elements (the
    uint8 and int8 orders, a tail, several chunks): it compiles to VPERMI2B (VPERMT2B) with no
    VPSHUFB, and where this CPU has VBMI it runs and equals the reference."""
    rng = np.random.default_rng(len(shape) + 7)
    xi, oi = np.iinfo(x_dtype), np.iinfo(out_dtype)
    x = rng.integers(xi.min, xi.max + 1, shape).astype(x_dtype)
    if x.size >= 256:
        x.reshape(-1)[:256] = np.arange(xi.min, xi.max + 1)
    table = rng.integers(oi.min, oi.max + 1, 256)
    model = _one_node(l3.Lookup, {"x": x}, {}, {"table": [int(t) for t in table], "x_qmin": int(xi.min)},
                      from_numpy(np.dtype(out_dtype)))
    built = qtvm.build(model, VBMI)
    assert built.kernels == {"qlookup_vbmi": 1}, built.kernels
    asm = "\n".join(_asm(built.executable.mod))
    assert ("vpermi2b" in asm or "vpermt2b" in asm) and "vpshufb" not in asm
    if HOST_VBMI:
        assert np.array_equal(built.run({"x": x})["y"], Interpreter(model).run({"x": x})["y"])


def _asm(m) -> list[str]:
    """The assembly of a built module and its imports."""
    out = []
    try:
        out.append(m.inspect_source("asm"))
    except Exception:  # noqa: BLE001 - a module without assembly (the VM's own)
        pass
    return out + [s for i in m.imports for s in _asm(i)]


def test_float_kernels_with_a_select_are_scheduled_and_exact():
    """``elementwise_schedule.elementwise_rule`` schedules a float kernel whose only calls are
    exact, a select included (TVM 0.27 names it ``prim.if_then_else``): YOLOX's Focus input, four
    strided slices of the float input quantized and concatenated, was refused and ran as scalar
    loops. The scheduled kernel gives numpy's Quantize of the concatenation, bit for bit."""
    from tvm import relax

    from qgraph.tvm.build import pipeline
    from qgraph.tvm.elementwise_schedule import elementwise_rule, inexact_float

    shape = (1, 3, 32, 64)
    x = (np.random.default_rng(3).uniform(-2, 300, shape)).astype(np.float32)
    x[0, 0, 0, :4] = [0.25, 0.75, 2.5, np.nan]  # ties round to even; NaN's cast is the platform's: not compared
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            parts = [relax.op.strided_slice(xv, [2, 3], [i, j], [32, 64], [2, 2]) for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
            c = relax.op.concat(parts, axis=1)
            q = relax.op.clip(relax.op.round(relax.op.divide(c, relax.const(0.5, "float32"))) + relax.const(3.0, "float32"), 0, 255)
            o = bb.emit_output(bb.emit(relax.op.astype(q, "uint8")))
        bb.emit_func_output(o)
    mod = bb.get()
    tgt = targets.get("cpu").tvm_target()
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with tgt:
        fused = tvm.transform.Sequential(cpu.legalize_passes(tgt))(mod)
    funcs = [f for _, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "concat" in f.script()]
    assert funcs and all(not inexact_float(f) and elementwise_rule().apply(f, tgt, False) is not None for f in funcs)
    got = relax.VirtualMachine(tvm.compile(mod, tgt, relax_pipeline=pipeline(tgt)), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    cat = np.concatenate([x[:, :, i::2, j::2] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))], axis=1)
    want = np.clip(np.round(cat / np.float32(0.5)) + np.float32(3), 0, 255)
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok], want[ok].astype(np.uint8))


@pytest.mark.parametrize("shape,axes,dtype", [((1, 96, 20, 16), [2, 3], "int32"), ((2, 5, 7, 9), [2, 3], "int32"),
                                               ((3, 64), [1], "int64"), ((2, 3, 40, 40), [2, 3], "int64"),
                                               ((128,), [0], "int32")])
def test_integer_sums_are_vectorized_and_exact(shape, axes, dtype):
    """``elementwise_schedule.integer_sum_rule``: QGlobalAveragePool's spatial sum (its zero point
    subtracted on the way) in vector partial sums; the same integers as numpy, and the rule takes
    the sums it can split (whole vectors of at least 4) and leaves the rest to TVM."""
    from tvm import relax

    from qgraph.tvm.build import pipeline
    from qgraph.tvm.elementwise_schedule import LANES, integer_sum_rule

    rng = np.random.default_rng(len(shape))
    x = rng.integers(0, 256, shape).astype(np.uint8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            d = relax.op.subtract(relax.op.astype(xv, dtype), relax.const(np.array(131, dtype), dtype))
            o = bb.emit_output(bb.emit(relax.op.sum(d, axis=axes, keepdims=True)))
        bb.emit_func_output(o)
    mod = bb.get()
    tgt = targets.get("cpu").tvm_target()
    got = relax.VirtualMachine(tvm.compile(mod, tgt, relax_pipeline=pipeline(tgt)), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(got, (x.astype(np.int64) - 131).sum(axis=tuple(axes), keepdims=True))
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with tgt:
        legal = tvm.transform.Sequential(cpu.legalize_passes(tgt))(mod)
    funcs = [f for _, f in legal.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    size = int(np.prod([shape[a] for a in axes]))
    assert any(integer_sum_rule().apply(f, tgt, False) is not None for f in funcs) == \
        (size % LANES == 0 and size >= 4 * LANES)  # keepdims: a sum to one value still has its unit output axis


@pytest.mark.parametrize("d,m,k,n", [(2, 23, 40, 64), (1, 6, 16, 32), (1, 13, 9, 16)])
def test_wide_float_gemv_gives_the_same_bits(d, m, k, n):
    """``gemm.float_gemv(..., wide=True)`` (AVX-512: zmm vectors, 6-row tiles, the last tile moved
    back over rows the one before computed) against the 256-bit form: each output the same chain of fused
    multiply-adds in ``k`` order, so the same bits (the CRNN's input projection: 23 rows). On
    a host without AVX-512 LLVM splits the 512-bit vectors (the same arithmetic)."""
    from qgraph.tvm.x86 import gemm

    rng = np.random.default_rng(m)
    x = rng.standard_normal((d, m, k)).astype(np.float32)
    w = rng.standard_normal((d, k, n)).astype(np.float32)
    target = targets.resolve("cpu").tvm_target()
    outs = []
    for wide in (False, True):
        f = tvm.compile(gemm.float_gemv(d, m, k, n, wide=wide).with_attr("global_symbol", "f"), target)
        y = tvm.runtime.tensor(np.full((d, m, n), np.nan, np.float32))
        f(tvm.runtime.tensor(x), tvm.runtime.tensor(gemm.pack_gemv_weights(w)), y)
        outs.append(y.numpy())
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], x @ w, rtol=1e-4, atol=1e-4)
    assert ", 1, 16)]" in gemm.float_gemv(d, m, k, n, wide=True).script()  # 16-lane accumulators
    assert ", 1, 16)]" not in gemm.float_gemv(d, m, k, n).script()


def _float16_values(rng, shape, scale):
    """Float32 weights that hold float16 values, float16 subnormals among them."""
    w = (rng.standard_normal(shape) * scale).astype(np.float16)
    w.flat[::7] = np.float16(6e-8) * rng.integers(-1000, 1000, w.flat[::7].shape)  # subnormal float16s
    return w.astype(np.float32)


@pytest.mark.parametrize("wide", [False, True])
def test_float16_gemv_weights_give_the_same_bits(wide):
    """``gemm.float_gemv(..., weights="float16")``: weights that hold float16 values stored in
    2 bytes and widened in registers (exact) give the float32 kernel's bits."""
    from qgraph.tvm.x86 import gemm

    d, m, k, n = 2, 23, 40, 64
    rng = np.random.default_rng(11)
    x = rng.standard_normal((d, m, k)).astype(np.float32)
    w = _float16_values(rng, (d, k, n), 0.5)
    target = targets.resolve("cpu").tvm_target()
    outs = []
    for storage in ("float32", "float16"):
        f = tvm.compile(gemm.float_gemv(d, m, k, n, wide=wide, weights=storage).with_attr("global_symbol", "f"), target)
        y = tvm.runtime.tensor(np.full((d, m, n), np.nan, np.float32))
        f(tvm.runtime.tensor(x), tvm.runtime.tensor(gemm.pack_gemv_weights(w).astype(storage)), y)
        outs.append(y.numpy())
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], x @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch,hidden,forms", [
    (1, 32, (("float32", 8), ("float16", None))),  # the first form (8 units a task) against 16 units, float16
])
def test_lstm_kernel_float16_weights_and_task_width_keep_the_bits(batch, hidden, forms):
    """``recurrent.float_lstm``: float16 storage of weights that hold float16 values gives the
    float32 kernel's bits, and so does any task width (``lstm_units``: 16 units a task at batch
    1, 8 where the hidden size or the rows call for it): each output is the same ``k``-order
    chain of fused multiply-adds. (Batch 3 on float16 storage: ``test_tvm.py``'s fused-loop test.)"""
    from qgraph.tvm.x86 import recurrent as R

    d, seq = 2, 5
    rng = np.random.default_rng(hidden)
    r_t = _float16_values(rng, (d, hidden, 4 * hidden), 0.3)
    xw = rng.standard_normal((d, seq * batch, 4 * hidden)).astype(np.float32)
    bias = rng.standard_normal((d, 4 * hidden)).astype(np.float32)
    state = rng.standard_normal((2, d, batch, hidden)).astype(np.float32)
    target = targets.resolve("cpu").tvm_target()
    assert [R.lstm_units(h, b) for h, b in ((32, 1), (24, 1), (16, 3), (16, 2))] == [16, 8, 8, 8]
    outs = []
    for storage, units in forms:
        saved = R.lstm_units
        if units is not None:  # the first form: one vector of units a task
            R.lstm_units = lambda h, b: units
        try:
            f = tvm.compile(R.float_lstm(d, seq, batch, hidden, (False, True), storage).with_attr("global_symbol", "f"),
                            target)
            packed = R.pack_lstm_weights(r_t, R.lstm_units(hidden, batch)).astype(storage)
        finally:
            R.lstm_units = saved
        y = [np.zeros(s, np.float32) for s in ((seq, d, batch, hidden), (d, batch, hidden), (d, batch, hidden))]
        args = [tvm.runtime.tensor(a) for a in [xw, packed, bias, state[0], state[1]] + y]
        f(*args)
        outs.append([a.numpy() for a in args[5:]])
    for got in outs[1:]:
        for a, b in zip(outs[0], got):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("n", [64, 7, 130])
def test_lstm_task_order_reverses_each_threads_share(n):
    """``recurrent.task_order``: on odd steps, for every thread count, a permutation of the
    ``n`` tasks (so the same bits); for 2-4 threads it maps each thread's share of TVM's split
    (``ceil(n / threads)`` consecutive tasks) onto itself reversed, for 1 thread (or more than
    ``CHUNKED_THREADS``) the whole step; even steps run in order."""
    from types import SimpleNamespace

    from qgraph.tvm.x86 import recurrent as R

    # the TIR the kernel builds, evaluated on Python ints (TIR's // is floor division, as Python's)
    T = SimpleNamespace(if_then_else=lambda c, a, b: a if c else b, min=min)

    def order(s, threads):
        return [R.task_order(T, s, q, n, threads) for q in range(n)]

    for threads in range(1, 8):
        assert order(0, threads) == list(range(n))
        odd = order(1, threads)
        assert sorted(odd) == list(range(n))
        c = -(-n // threads) if threads in R.CHUNKED_THREADS else n
        for start in range(0, n, c):
            share = list(range(start, min(start + c, n)))
            assert odd[share[0]:share[-1] + 1] == share[::-1], (threads, start)


def test_lstm_kernel_exp_is_within_one_ulp():
    """``x86.recurrent.exp_expr`` (the LSTM kernel's ``exp`` in registers) on 2M arguments in
    ``[-90, 0]``: within 1.01 ulp of the exact value (float64) down to ``EXP_MIN`` (1.002 measured), where TVM's
    ``exp`` (a libm call per lane) is within 0.5 and numpy's float32 ``exp`` (the reference's)
    within 2.4; below it, ``exp(EXP_MIN)``, a normal float32 (no subnormal); a NaN stays a NaN."""
    from tvm.script import tirx as T

    from qgraph.tvm.x86 import recurrent

    n = 1 << 21
    rng = np.random.default_rng(5)
    x = -np.abs(np.concatenate([[0.0, -1e-30, recurrent.EXP_MIN], np.linspace(-90, 0, n // 2), rng.uniform(-20, 0, n // 2)]))
    x = np.resize(x.astype(np.float32), n)
    x[-8:] = [np.nan, -np.inf, -0.0, np.nan, -1.0, np.nan, -50.0, -np.nan]  # one vector with NaNs among values

    @T.prim_func
    def f(a: T.Buffer((n,), "float32"), y: T.Buffer((n,), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        for i in T.serial(n // 8):
            y[T.ramp(i * 8, 1, 8)] = recurrent.exp_expr(T, a[T.ramp(i * 8, 1, 8)])

    lib = tvm.compile(tvm.IRModule({"main": f}), target=targets.get("cpu").tvm_target())
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros(n, np.float32))]
    lib["main"](*args)
    got = args[1].numpy()
    nan = np.isnan(x)
    assert np.all(np.isnan(got[nan])) and not np.isnan(got[~nan]).any()  # a NaN stays a NaN, and only a NaN
    got, x = got[~nan], x[~nan]
    exact = np.exp(x.astype(np.float64))
    normal = x >= recurrent.EXP_MIN
    ulps = np.abs(got[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert ulps.max() <= 1.01, (ulps.max(), x[normal][ulps.argmax()])
    floor = got[x == np.float32(recurrent.EXP_MIN)]
    assert floor.size and floor[0] >= np.finfo(np.float32).tiny and (~normal).any()
    assert np.all(got[~normal] == floor[0])
    assert got[x == 0].size and np.all(got[x == 0] == 1.0)


@pytest.mark.parametrize("c,h,w,pads,wq,xdt", [
    (4, 5, 52, (1, 1), 33, "uint8"),  # a Winograd pack of a 52-wide row: 3 vector blocks, scalar ends
    (3, 4, 37, (1, 0), 24, "int8"),  # odd channels (a missing one), no left pad, int8
    (6, 3, 40, (2, 3), 22, "uint8"),  # an odd left pad: the first even padded column is input column 1
    (2, 2, 40, (0, 0), 12, "uint8"),  # fewer packed columns than the input has: one vector block (Wq), not two
    (2, 2, 15, (1, 1), 9, "uint8"),  # under 16 columns: scalar only
    (3, 3, 100, (1, 1), 51, "uint8"),  # a 3-channel stem's row: 3 blocks of 32 bytes, a missing channel
    (5, 2, 70, (1, 1), 36, "int8"),  # a full group of 4 and a short one of 1, int8
])
@pytest.mark.parametrize("ubsw", [False, True])
def test_column_stride_2_pack_layout(c, h, w, pads, wq, xdt, ubsw):
    """``conv.conv_pack`` at column stride 2 (the strided convs' and Winograd's phase split),
    whose interior runs in vector blocks split by parity (16 columns of int16 pairs; ``ubsw``: 32
    of 4-byte groups): every packed value is ``x - zp`` of its channel, row and column
    (``q * 2 + phase - left pad``), 0 in the pads and the missing channel; raw bytes for
    ``ubsw`` (int8 + 128), the zero point there."""
    from qgraph.tvm.x86 import conv as D
    from qgraph.tvm.x86.gemm import ConvGeometry

    zp = 7 if xdt == "uint8" else -3
    hp = h + 2 * pads[0]
    g = ConvGeometry(1, c, h, w, 8, 3, 3, (hp - 3) // 2 + 1, wq - 1, (2, 2), (1, 1), pads)
    rng = np.random.default_rng(w)
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, (1, c, h, w)).astype(xdt)
    G = 4 if ubsw else 2
    shift = 128 if xdt == "int8" and ubsw else 0  # the raw-byte form reads int8 as x + 128, and its zero point so
    func = D.conv_pack(g, xdt, zp + shift, hp, wq, ubsw=ubsw)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=targets.get("cpu").tvm_target())
    cg = -(-c // G)
    out = tvm.runtime.tensor(np.full((1, cg, hp, 2, wq * G), 123, np.uint8 if ubsw else np.int16))
    lib["main"](tvm.runtime.tensor(x), out)
    want = np.full((1, cg, hp, 2, wq, G), zp + shift if ubsw else 0, np.int64)
    for ch in range(c):
        for r in range(hp):
            for ph in range(2):
                for q in range(wq):
                    ih, iw = r - pads[0], q * 2 + ph - pads[1]
                    if 0 <= ih < h and 0 <= iw < w:
                        want[0, ch // G, r, ph, q, ch % G] = int(x[0, ch, ih, iw]) + shift if ubsw else int(x[0, ch, ih, iw]) - zp
    assert np.array_equal(out.numpy().reshape(want.shape), want)
