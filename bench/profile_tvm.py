"""Per-kernel time of qgraph's TVM build of a bench model: where the latency goes.

    python bench/profile_tvm.py MODEL [--reduce-range] [--recurrent-weights float16] [--top 30]

MODEL is one of ``bench_tvm.py``'s (digits1, digits64, rec, cls, resnet50, det, crnn, yolox),
quantized and built the same way. One run records every kernel the VM calls with its arguments (VM
instrumentation); each distinct kernel is then called alone on copies of those arguments,
the best of 7 means of 20 calls (1 thread unless TVM_NUM_THREADS says otherwise). Printed:
microseconds per call, calls per model run, the output shape, and the sum against a plain
run of the whole model (the rest is the VM's own work: allocation, argument checks).
Kernel times are the floor of a noisy machine; compare them within one run. Conv and matmul
kernels also show GMAC/s (their MACs per call, ``Compiled.kernel_macs``) and the fraction of
this core's peak for their form (``bench_mac_peak.py``: int16 pairs, u8 x s8 for ``_ubsw``,
VPDPBUSD for ``_vnni``),
measured in the same run; a last table sums them per kernel family (``family_summary``:
Winograd kernels count the direct conv's MACs, so they can read over 100%).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np

from qgraph.quant.float16 import RECURRENT_WEIGHT_TYPES

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def build(name: str, reduce_range: bool, recurrent_weights: str = "float32"):
    import bench_tvm
    import qgraph.api
    from qgraph import tvm as qtvm

    spec = bench_tvm.model_spec(name)
    config = {"reduce_range": reduce_range, "recurrent_weights": recurrent_weights}
    q = qgraph.api.quantize(bench_tvm.quantize_source(name, spec), spec["calib"], config,
                            report=False, show_progress=False, input_shapes={spec["input"]: spec["shape"]})
    compiled = qtvm.build(q.integer, "cpu", input_shapes={spec["input"]: spec["shape"]}).warm()
    return compiled, {spec["input"]: spec["x"]}


def profile(compiled, feeds, repeats: int = 7, number: int = 20) -> tuple[list[tuple], float]:
    """([(seconds per call, calls per run, kernel, output shape)], whole-run seconds)."""
    import tvm

    compiled.run(feeds)
    vm = compiled._machine()
    args: dict[str, list] = {}
    calls: Counter = Counter()

    def record(func, sym, before, ret, *a):
        if before and not sym.startswith("vm."):
            calls[sym] += 1
            if sym not in args:  # copies: the run frees or reuses its tensors
                args[sym] = [tvm.runtime.tensor(x.numpy()) if hasattr(x, "numpy") else x for x in a]
        return 0

    vm.set_instrument(record)
    compiled.run(feeds)
    compiled._vm = compiled._call = None  # a fresh VM without the instrument for the whole run
    compiled.warm()
    lib = compiled.executable.mod
    rows = []
    for sym, a in args.items():
        fn = lib.get_function(sym, query_imports=True)
        for _ in range(3):
            fn(*a)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                fn(*a)
            best = min(best, (time.perf_counter() - t0) / number)
        shape = next((tuple(x.shape) for x in reversed(a) if hasattr(x, "shape")), ())
        rows.append((best, calls[sym], sym, shape))
    for _ in range(3):
        compiled.run(feeds)
    whole = []
    for _ in range(repeats * 3):
        t0 = time.perf_counter()
        compiled.run(feeds)
        whole.append(time.perf_counter() - t0)
    return sorted(rows, key=lambda r: -r[0] * r[1]), float(np.min(whole))


def mac_peak() -> dict[str, float]:
    """This core's int16-pair, u8 x s8 and (where the CPU has it) VPDPBUSD MAC peak
    (``bench_mac_peak.peak``); {} without gcc."""
    import bench_mac_peak

    try:
        return bench_mac_peak.peak(seconds=0.2, repeats=3)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"note: no MAC peak ({e})", file=sys.stderr)
        return {}


def peak_form(kernel: str) -> str:
    """The ``bench_mac_peak`` form a kernel (or kernel family) runs: ``_vnni`` kernels
    ``VPDPBUSD``, ``_ubsw`` ones u8 x s8, every other integer kernel int16 pairs."""
    if "VNNI" in kernel or "u8 x s8" in kernel:  # a family (``FAMILIES``)
        return "vpdpbusd" if "VNNI" in kernel else "u8 x s8"
    name = kernel.rstrip("0123456789")
    return "vpdpbusd" if name.endswith("_vnni") else "u8 x s8" if name.endswith("_ubsw") else "int16 pairs"


def form_peak(peaks: dict, form: str) -> float | None:
    """The peak of ``form``; for ``vpdpbusd`` the 512-bit one where it was measured (an AVX-512
    VNNI CPU, whose kernels run on zmm)."""
    return peaks.get("vpdpbusd 512", peaks.get(form)) if form == "vpdpbusd" else peaks.get(form)


def kernel_rate(sym: str, seconds: float, macs: dict, peaks: dict) -> tuple[str, str]:
    """(GMAC/s, % of the peak of its form, ``peak_form``) of one call of kernel ``sym``, or
    blanks when it declares no MACs."""
    if sym not in macs or seconds <= 0:
        return "", ""
    rate = macs[sym] / seconds / 1e9
    peak = form_peak(peaks, peak_form(sym))
    return f"{rate:.1f}", (f"{100 * rate / peak:.0f}%" if peak else "")


#: Kernel families of ``family_summary``: name prefix (digits stripped) -> family.
FAMILIES = {"qdirect_conv": "direct conv, int16", "qdirect_conv_ubsw": "direct conv, u8 x s8",
            "qdirect_conv_vnni": "direct conv, VNNI", "qwino_conv": "Winograd conv (direct MACs)",
            "qigemm_conv": "implicit-GEMM conv, int16", "qdw_pconv": "depthwise conv", "qmatmul_gemm": "matmul",
            "qmatmul_vnni": "matmul, VNNI"}


def family_summary(rows, macs: dict, peaks: dict) -> list[tuple[str, float, float, float | None]]:
    """Per kernel family with declared MACs: (family, us per run, GMAC/s over the family's
    time, % of the peak of its form or None), by time. ``rows``: ``profile``'s
    ``(seconds per call, calls, symbol, shape)``."""
    time_s: Counter = Counter()
    work: Counter = Counter()
    for t, n, sym, _ in rows:
        fam = FAMILIES.get(sym.rstrip("0123456789"))
        if fam is None or sym not in macs:
            continue
        time_s[fam] += t * n
        work[fam] += macs[sym] * n
    out = []
    for fam, t in time_s.most_common():
        rate = work[fam] / t / 1e9 if t > 0 else 0.0
        peak = form_peak(peaks, peak_form(fam))
        out.append((fam, t * 1e6, rate, 100 * rate / peak if peak else None))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights (the u8 x s8 kernels)")
    ap.add_argument("--recurrent-weights", default="float32", choices=RECURRENT_WEIGHT_TYPES,
                    help="the LSTM's weights as float16 values (bench_tvm.py's option)")
    ap.add_argument("--top", type=int, default=30, help="kernels to print (by total time per run)")
    ap.add_argument("--no-peak", action="store_true", help="skip the MAC-peak measurement (bench_mac_peak.py)")
    args = ap.parse_args(argv)
    compiled, feeds = build(args.model, args.reduce_range, args.recurrent_weights)
    rows, whole = profile(compiled, feeds)
    peaks = {} if args.no_peak else mac_peak()
    total = sum(t * n for t, n, _, _ in rows)
    if peaks:
        print("peak per core (bench_mac_peak.py): " + ", ".join(f"{k} {v:.1f} GMAC/s" for k, v in peaks.items()))
    print(f"{'us/call':>10} {'calls':>5} {'us/run':>10} {'GMAC/s':>7} {'% peak':>6}  kernel -> output")
    for t, n, sym, shape in rows[:args.top]:
        rate, share = kernel_rate(sym, t, compiled.kernel_macs, peaks)
        print(f"{t * 1e6:10.1f} {n:5d} {t * n * 1e6:10.1f} {rate:>7} {share:>6}  {sym} -> {list(shape)}")
    print(f"kernels: {total * 1e6:.1f} us per run ({sum(n for _, n, _, _ in rows)} calls); "
          f"whole run (best of {7 * 3}): {whole * 1e6:.1f} us")
    print(f"{'us/run':>10} {'GMAC/s':>7} {'% peak':>6}  kernel family")
    for fam, us, rate, share in family_summary(rows, compiled.kernel_macs, peaks):
        print(f"{us:10.1f} {rate:7.1f} {'' if share is None else f'{share:.0f}%':>6}  {fam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
