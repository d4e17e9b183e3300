"""How sparse are the saturating u8 x s8 weight pairs of trained models? The measurement before
building a "exact u8 x s8 plus a sparse int16 remainder" conv kernel (issue 16).

    python bench/bench_saturation.py [--models rec,cls,det,crnn,yolox,resnet50]

AVX2's ``VPMADDUBSW`` multiplies unsigned activation bytes by signed weight bytes and adds
adjacent pairs into int16, saturating. With activations anywhere in ``[0, 255]``, a pair of
weights ``(w0, w1)`` (adjacent input channels at one tap, qgraph's ``ubsw_weights`` order) can
saturate iff ``255 * (|w0| + |w1|) >= 2**15`` when both have one sign (``pair_sum_bounds``).
qgraph runs a conv on the u8 x s8 form only when no pair of it can saturate; otherwise on exact
int16 pairs (``VPMADDWD``), which ``bench_mac_peak.py`` measures at about 0.8-0.9x the u8 x s8
rate per core.

For each model (quantized by ``qgraph.api.quantize`` as ``bench/bench_tvm.py`` does) and each
non-grouped QConv, printed:

- ``convs exact``: convs with no saturating pair as quantized (they already run u8 x s8);
- ``pairs sat.``: the share of weight pairs that can saturate, over the MACs of all convs;
- ``after reorder``: the same after one permutation of each conv's input channels (channels
  sorted by their largest ``|w|``, the largest paired with the smallest), and the convs that
  become exact with it;
- ``MACs in exact convs``: the share of the model's conv MACs the u8 x s8 form could take, as
  quantized and after reordering.

A sparse remainder pays when ``pairs sat.`` is small but ``convs exact`` is not all: those convs
would run u8 x s8 on the safe pairs and int16 on the few others.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODELS = ("rec", "cls", "det", "crnn", "yolox", "resnet50")


def saturating(pairs_abs: np.ndarray, same_sign: np.ndarray) -> np.ndarray:
    """Pairs whose sum over ``[0, 255]`` activations can leave int16 (``|w0| + |w1| > 128``
    with one sign; opposite signs partly cancel: the larger one alone, at most 127 * 255, fits)."""
    return same_sign & (255 * pairs_abs.sum(-1) >= 2 ** 15)


def pair_stats(wd: np.ndarray, order: np.ndarray | None = None) -> tuple[int, int]:
    """(saturating pairs, all pairs) of int8 weights ``[OC, C, KH, KW]`` in ``ubsw_weights``'
    pair order, its input channels permuted by ``order`` first."""
    if order is not None:
        wd = wd[:, order]
    oc, c, kh, kw = wd.shape
    c2 = c + (c % 2)
    w = np.zeros((oc, kh, kw, c2), np.int64)
    w[..., :c] = wd.transpose(0, 2, 3, 1)
    pairs = w.reshape(oc, kh, kw, c2 // 2, 2)
    same = (pairs[..., 0] >= 0) == (pairs[..., 1] >= 0)
    return int(saturating(np.abs(pairs), same).sum()), int(pairs[..., 0].size)


def balanced_order(wd: np.ndarray) -> np.ndarray:
    """Input channels sorted by their largest ``|w|``, then interleaved largest with smallest."""
    peak = np.abs(wd).max(axis=(0, 2, 3))
    idx = np.argsort(-peak, kind="stable")
    out = np.empty_like(idx)
    half = (len(idx) + 1) // 2
    out[0::2] = idx[:half]
    out[1::2] = idx[half:][::-1][:len(idx) - half]
    return out


def model_convs(name: str):
    """``[(weights minus zero point int64 [OC, C, KH, KW], MACs)]`` of the non-grouped QConvs."""
    import bench_tvm
    import qgraph.api
    from qgraph.ir import l3

    spec = bench_tvm.model_spec(name)
    q = qgraph.api.quantize(bench_tvm.quantize_source(name, spec), spec["calib"], report=False, show_progress=False,
                            input_shapes={spec["input"]: spec["shape"]})
    from qgraph.analysis.shapes import infer_shapes

    infer_shapes(q.integer)  # static input shapes: every conv output's dims known
    out = []
    for node in q.integer.graph:
        if node.op is not l3.QConv or int(node.attr("group", 1)) != 1:
            continue
        w = node.inputs[1].constant()
        if w is None:
            continue
        w = w.numpy()
        zp = np.asarray(node.attr("w_zero_point", [0]), np.int64).reshape(-1)
        wd = w.astype(np.int64) - (zp.reshape(-1, 1, 1, 1) if zp.size > 1 else zp[0])
        y = node.outputs[0].shape
        dims = list(getattr(y, "dims", y) or [])
        pixels = int(np.prod(dims[2:])) if dims and all(isinstance(d, (int, np.integer)) for d in dims) else 1
        out.append((wd, pixels * int(np.prod(wd.shape))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    args = ap.parse_args(argv)
    print("| model | convs | convs exact | pairs sat. | after reorder | convs exact after | MACs in exact convs "
          "(as is / reordered) |")
    print("|---|---|---|---|---|---|---|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        convs = model_convs(name)
        total_macs = sum(m for _, m in convs) or 1
        sat = pairs = sat_r = 0
        exact = exact_r = 0
        macs_exact = macs_exact_r = 0
        for wd, macs in convs:
            s, p = pair_stats(wd)
            sr, _ = pair_stats(wd, balanced_order(wd))
            sat += s * macs / max(p, 1)
            sat_r += sr * macs / max(p, 1)
            pairs += macs
            exact += s == 0
            exact_r += sr == 0
            macs_exact += macs if s == 0 else 0
            macs_exact_r += macs if sr == 0 else 0
        print(f"| {name} | {len(convs)} | {exact} | {100 * sat / max(pairs, 1):.2f}% | {100 * sat_r / max(pairs, 1):.2f}% "
              f"| {exact_r} | {100 * macs_exact / total_macs:.0f}% / {100 * macs_exact_r / total_macs:.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
