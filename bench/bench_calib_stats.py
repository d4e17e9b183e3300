"""Throughput of qgraph's calibration collectors next to ONNX Runtime's HistogramCollector.

    python bench/bench_calib_stats.py [--batches 64] [--size 4000000] [--repeat 3]

Feeds the same ``--batches`` float32 arrays of ``--size`` values (normal, Laplace and
Relu(normal) in turn, scaled up a little every batch so that the observed range keeps
growing and every histogram has to widen) to, side by side, ``--repeat`` times:

    qgraph minmax     make_collector("minmax").update(name, batch)
    qgraph entropy    make_collector("entropy").update(name, batch)   (the histogram every
                      histogram method shares: percentile / entropy / mse update the same way)
    ort entropy       HistogramCollector(method="entropy", num_bins=2048).collect({name: batch})
    ort percentile    HistogramCollector(method="percentile", symmetric=True, num_bins=2048)

and prints the median seconds of each, values per second, the histogram size each ends with,
ort / qgraph time ratios, and the time of the final range computation for one tensor
(qgraph entropy ``compute()`` vs ORT's ``compute_collection_result()``, 2048 bins).
ORT's MinMaxCalibrater reduces inside the ONNX graph (ReduceMin / ReduceMax), so its
collector is not timed here; ``numpy min+max`` is shown as the floor for minmax.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np


def make_batches(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind = i % 3
        x = rng.standard_normal(size, dtype=np.float32) if kind != 1 else rng.laplace(size=size).astype(np.float32)
        if kind == 2:
            np.maximum(x, 0, out=x)
        x *= np.float32(1.0 + i / count)
        out.append(x)
    return out


def time_qgraph(method: str, batches) -> tuple[float, object]:
    from qgraph.calib.stats import make_collector

    c = make_collector(method)
    t0 = time.perf_counter()
    for b in batches:
        c.update("t", b)
    return time.perf_counter() - t0, c


def time_numpy_minmax(batches) -> tuple[float, None]:
    t0 = time.perf_counter()
    lo, hi = np.inf, -np.inf
    for b in batches:
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
    return time.perf_counter() - t0, None


def time_ort(method: str, batches) -> tuple[float, object]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    c = HistogramCollector(method=method, symmetric=method == "percentile", num_bins=2048, num_quantized_bins=128,
                           percentile=99.999, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per collect()
        t0 = time.perf_counter()
        for b in batches:
            c.collect({"t": b})
        return time.perf_counter() - t0, c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=64)
    ap.add_argument("--size", type=int, default=4_000_000, help="float32 values per batch")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    batches = make_batches(args.batches, args.size)
    runs = {
        "numpy min+max": time_numpy_minmax,
        "qgraph minmax": lambda b: time_qgraph("minmax", b),
        "qgraph entropy": lambda b: time_qgraph("entropy", b),
        "ort entropy": lambda b: time_ort("entropy", b),
        "ort percentile": lambda b: time_ort("percentile", b),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, object] = {}
    for _ in range(args.repeat):  # side by side: every tool once per round
        for name, run in runs.items():
            seconds, state = run(batches)
            times[name].append(seconds)
            last[name] = state

    values = args.batches * args.size
    print(f"{args.batches} batches x {args.size:,} float32 values, median of {args.repeat}")
    print(f"{'collector':16s} {'seconds':>9s} {'Mvalues/s':>10s} {'hist bins':>10s}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, seconds in med.items():
        state = last[name]
        if name.startswith("qgraph") and name != "qgraph minmax":
            bins = str(state.histograms["t"].counts.size)
        elif name.startswith("ort"):
            bins = str(state.histogram_dict["t"][0].size)
        else:
            bins = "-"
        print(f"{name:16s} {seconds:9.3f} {values / seconds / 1e6:10.1f} {bins:>10s}")
    print(f"ort entropy / qgraph entropy:    {med['ort entropy'] / med['qgraph entropy']:.2f}x")
    print(f"ort percentile / qgraph entropy: {med['ort percentile'] / med['qgraph entropy']:.2f}x")
    print(f"ort entropy / qgraph minmax:     {med['ort entropy'] / med['qgraph minmax']:.2f}x")
    print(f"qgraph minmax / numpy min+max:   {med['qgraph minmax'] / med['numpy min+max']:.2f}x")

    ours, theirs = last["qgraph entropy"], last["ort entropy"]
    t0 = time.perf_counter()
    r_ours = ours.compute()["t"]
    t_ours = time.perf_counter() - t0
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        r_theirs = theirs.compute_collection_result()["t"]
        t_theirs = time.perf_counter() - t0
    print(f"entropy range of one tensor: qgraph {t_ours * 1e3:.1f} ms -> [{r_ours[0]:.4f}, {r_ours[1]:.4f}], "
          f"ort {t_theirs * 1e3:.1f} ms -> [{float(r_theirs[0]):.4f}, {float(r_theirs[1]):.4f}] "
          f"(ort / qgraph {t_theirs / t_ours:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
