"""How qgraph's ONNX load / verify / save scale with graph size.

    python bench/bench_ir_scale.py [--sizes 10000 100000] [--repeat 3] [--no-gs]

Builds a synthetic ONNX graph of N nodes (deterministic: a long chain mixing Add / Mul /
Relu / Identity with small constant initializers, plus diamonds that fork the chain into
two or three branches and join them again), serializes it, and times, median of
``--repeat`` runs:

    load          qgraph.load(serialized bytes)   parse + import
    verify        qgraph.ir.verify.verify(model)
    save          qgraph.save(model, file)        export + serialize + write
    load_unsorted qgraph.load of the same graph with its node list reversed (the importer
                  then has to sort it topologically)

Every timed run starts after a ``gc.collect()`` (untimed) so that no stage pays for the
garbage a previous one left; the collections a stage triggers itself are timed.

For context it also times onnx-graphsurgeon on the same bytes (onnx parse + import_onnx,
export_onnx + serialize + write), and prints, per stage, time(largest) / time(smallest)
(≈ the size ratio when linear) and qgraph / graphsurgeon.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 16  # elements per tensor: the graph, not the arithmetic, is what is measured


def build_model(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A graph of exactly ``n_nodes`` nodes on a [1, WIDTH] float input."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    shared = [numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), f"shared_{k}") for k in range(4)]
    inits.extend(shared)
    counter = 0

    def fresh(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}_{counter}"

    def const() -> str:
        # Mostly a fresh small initializer, sometimes a shared one (several readers).
        if rng.random() < 0.2:
            return shared[int(rng.integers(len(shared)))].name
        t = numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), fresh("c"))
        inits.append(t)
        return t.name

    def node(op: str, inputs: list[str]) -> str:
        out = fresh("v")
        nodes.append(helper.make_node(op, inputs, [out], name=fresh(op.lower())))
        return out

    def step(x: str) -> str:
        r = rng.random()
        if r < 0.3:
            return node("Add", [x, const()])
        if r < 0.6:
            return node("Mul", [x, const()])
        if r < 0.85:
            return node("Relu", [x])
        return node("Identity", [x])

    cur = "x"
    skip = "x"  # a long-range edge: diamonds sometimes also read a value from far back
    while len(nodes) < n_nodes:
        left = n_nodes - len(nodes)
        if left >= 12 and rng.random() < 0.1:
            # Diamond: 2-3 branches of 1-3 nodes each, joined by Adds (and maybe the skip value).
            branches = []
            for _ in range(int(rng.integers(2, 4))):
                b = cur
                for _ in range(int(rng.integers(1, 4))):
                    b = step(b)
                branches.append(b)
            if rng.random() < 0.3:
                branches.append(skip)
            out = branches[0]
            for b in branches[1:]:
                out = node("Add", [out, b])
            skip = cur
            cur = out
            continue
        cur = step(cur)
    del nodes[n_nodes:]  # never needed, but keep the count exact
    graph = helper.make_graph(
        nodes, f"chain{n_nodes}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_ir_scale")
    return model


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        # Collect the previous run's garbage (a whole discarded model, full of reference
        # cycles) now, so that the run timed next does not pay for it.
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_size(n: int, repeat: int, with_gs: bool, folder: str) -> dict[str, float]:
    import qgraph
    from qgraph.ir.verify import verify

    proto = build_model(n)
    assert len(proto.graph.node) == n
    data = proto.SerializeToString()
    reversed_proto = onnx.ModelProto()
    reversed_proto.CopyFrom(proto)
    reversed_nodes = list(reversed_proto.graph.node)[::-1]
    del reversed_proto.graph.node[:]
    reversed_proto.graph.node.extend(reversed_nodes)
    reversed_data = reversed_proto.SerializeToString()
    del proto, reversed_proto, reversed_nodes

    out_path = os.path.join(folder, f"qgraph_{n}.onnx")
    model = qgraph.load(data)
    assert len(model.graph) == n
    res = {
        "load": median_time(lambda: qgraph.load(data), repeat),
        "verify": median_time(lambda: verify(model), repeat),
        "save": median_time(lambda: qgraph.save(model, out_path), repeat),
        "load_unsorted": median_time(lambda: qgraph.load(reversed_data), repeat),
    }
    res["qgraph_total"] = res["load"] + res["verify"] + res["save"]
    # The saved file is the same graph.
    saved = onnx.load(out_path)
    assert len(saved.graph.node) == n and len(saved.graph.initializer) == len(model.graph.initializers)

    if with_gs:
        import onnx_graphsurgeon as gs

        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
        gs_path = os.path.join(folder, f"gs_{n}.onnx")
        holder = {}

        def gs_import():
            holder["g"] = gs.import_onnx(onnx.load_from_string(data))

        def gs_export():
            with open(gs_path, "wb") as f:
                f.write(gs.export_onnx(holder["g"]).SerializeToString())

        res["gs_import"] = median_time(gs_import, repeat)
        res["gs_export"] = median_time(gs_export, repeat)
        res["gs_total"] = res["gs_import"] + res["gs_export"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="node counts (default 10000 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per stage; the median is reported (default 3)")
    ap.add_argument("--no-gs", action="store_true", help="skip the onnx-graphsurgeon comparison")
    args = ap.parse_args(argv)
    logging.getLogger("qgraph").setLevel(logging.WARNING)

    import onnx_graphsurgeon
    import qgraph

    print(f"python {sys.version.split()[0]}, onnx {onnx.__version__}, qgraph {qgraph.__version__}, "
          f"onnx-graphsurgeon {onnx_graphsurgeon.__version__}, median of {args.repeat}")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ir_scale_") as folder:
        for n in args.sizes:
            results[n] = r = bench_size(n, args.repeat, not args.no_gs, folder)
            line = " ".join(f"{k}={v:.3f}s" for k, v in r.items())
            print(f"N={n:>8}: {line}", flush=True)

    stages = list(next(iter(results.values())))
    if len(args.sizes) >= 2:
        lo, hi = min(args.sizes), max(args.sizes)
        print(f"\nscaling time(N={hi}) / time(N={lo})  (linear = {hi / lo:g})")
        for s in stages:
            a, b = results[lo][s], results[hi][s]
            print(f"  {s:14s} {b / a:7.2f}" if a > 0 else f"  {s:14s}     n/a")
    if not args.no_gs:
        print("\nqgraph / graphsurgeon  (load+verify+save vs import_onnx+export_onnx; < 1 = qgraph faster)")
        for n, r in results.items():
            print(f"  N={n:>8}: {r['qgraph_total'] / r['gs_total']:.2f}  "
                  f"(import {r['load'] / r['gs_import']:.2f}, export {r['save'] / r['gs_export']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
