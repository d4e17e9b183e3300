"""Issue 6 acceptance check: real models quantized by qgraph compile and run on TVM (cpu),
bit-exact with the reference interpreter.

For each model: ``qgraph.api.quantize`` (default config, minmax, 8 calibration samples),
``qgraph.tvm.build`` for ``cpu`` with static shapes (batch 1), 2 inputs through TVM and through
the reference interpreter (``q.run``). Printed per model: compile seconds (``tvm.compile`` plus
the first VM creation, where LLVM emits code), run ms, whether the graph outputs are equal,
and (unless ``--intermediates auto`` and the outputs are equal) a second build returning every
value of the graph: the first L3 values that differ, by how many LSB, and whether a float
fallback op lies upstream of them (a float op may differ from numpy in the last bits, which
can flip a downstream Quantize by 1 LSB: allowed) or not (an integer bug).

Each model runs in its own subprocess with a timeout::

    python bench/check_tvm_models.py                     # all models
    python bench/check_tvm_models.py det light_resnet50  # some
    python bench/check_tvm_models.py --timeout 900 --json out.json
    python bench/check_tvm_models.py --static det        # input dims pinned before quantizing
    python bench/check_tvm_models.py --size 736 det      # PP-OCR inputs of another height / width

Models: PP-OCRv4 det / rec / cls (the rapidocr_onnxruntime wheel), ddddocr's captcha CRNN with a
bidirectional LSTM (``crnn``, the ddddocr wheel) and the ``light_*`` models of the onnx wheel's
backend test data (constant weights, random uniform inputs).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

PPOCR = {"det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 224, 224)),
         "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
         "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192))}
#: trained models with recurrent layers: ddddocr's captcha CRNN (conv stack, a bidirectional
#: LSTM of 512 units, an 8210-class Gemm), grayscale 64 high, 1 / 255 scaled
CRNN = {"crnn": ("common.onnx", (1, 1, 64, 192))}
CALIB_SAMPLES = 8
TEST_SAMPLES = 2


def light_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def model_names() -> list[str]:
    light = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(light_dir(), "light_*.onnx")))
    return list(PPOCR) + list(CRNN) + light


def model_path(name: str) -> str:
    if name in CRNN:
        import ddddocr

        return os.path.join(os.path.dirname(ddddocr.__file__), CRNN[name][0])
    if name in PPOCR:
        import rapidocr_onnxruntime

        return os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", PPOCR[name][0])
    return os.path.join(light_dir(), f"{name}.onnx")


def fed_inputs(path: str) -> list[tuple[str, list]]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return [(i.name, [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
            for i in m.graph.input if i.name not in init]


def load_model(name: str, static: bool = False):
    """The model's path, or with ``static`` its ``onnx.ModelProto`` with every fed input's dims
    set to the checked shape (batch 1): ``quantize`` then sees static spatial sizes, and
    ``lower-qdq`` folds the size into QGlobalAveragePool's multiplier; with symbolic dims (the
    PP-OCR exports) it makes the runtime-count QGlobalAveragePool (``qgraph.ir.l3``)."""
    path = model_path(name)
    if not static:
        return path
    import onnx

    proto = onnx.load(path)
    shapes = {k: v.shape for k, v in samples(name, path, 1, seed=5)[0].items()}
    for i in proto.graph.input:
        if i.name in shapes:
            for d, n in zip(i.type.tensor_type.shape.dim, shapes[i.name]):
                d.Clear()
                d.dim_value = int(n)
    return proto


def samples(name: str, path: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` single-sample feeds: rendered text for PP-OCR (det: a 224x224 page of lines),
    crnn: rendered lines as grayscale in [0, 1]; uniform [0, 1) for the light models."""
    if name in CRNN:
        from qgraph.testing import ocr

        shape = CRNN[name][1]
        lines = ocr.render_lines(ocr.sample_texts(n, seed=seed), height=shape[2], width=shape[3], font_size=40)
        gray = np.where(lines[:, :1] == 0, 1.0, lines[:, :1] * 0.5 + 0.5).astype(np.float32)  # padding: white
        return [{"input1": gray[i:i + 1]} for i in range(n)]
    if name in PPOCR:
        from qgraph.testing import ocr

        shape = PPOCR[name][1]
        texts = ocr.sample_texts(n * 4, seed=seed)
        if name == "det":
            rows = []
            for i in range(n):
                lines = ocr.render_lines(texts[4 * i:4 * i + 4], height=40, width=shape[3], font_size=18)
                page = np.zeros(shape[1:], np.float32)
                for k, line in enumerate(lines):
                    page[:, 16 + 48 * k:56 + 48 * k] = line
                rows.append(page)
            x = np.stack(rows)
        else:
            x = ocr.render_lines(texts[:n], height=shape[2], width=shape[3])
        return [{"x": x[i:i + 1]} for i in range(n)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append({nm: rng.uniform(0, 1, [1] + [d or 1 for d in dims[1:]]).astype(np.float32)
                    for nm, dims in fed_inputs(path)})
    return out


def _diff(r: np.ndarray, g: np.ndarray) -> dict:
    if r.dtype.kind in "iu":
        d = np.abs(r.astype(np.int64) - g.astype(np.int64))
        return {"kind": "int", "count": int((d > 0).sum()), "size": int(r.size), "max_lsb": int(d.max()),
                "over_1": int((d > 1).sum())}
    d = np.abs(r.astype(np.float64) - g.astype(np.float64))
    return {"kind": "float", "count": int((d > 0).sum()), "size": int(r.size), "max_abs": float(d.max()),
            "ref_max": float(np.abs(r).max())}


def check_one(name: str, intermediates: str = "always", first: int = 8, static: bool = False) -> dict:
    from qgraph import tvm as qtvm
    from qgraph.api import quantize
    from qgraph.ir import l3
    from qgraph.reference import Interpreter

    path = model_path(name)
    res: dict = {"model": name + (" (static)" if static else "")}
    t = time.perf_counter()
    q = quantize(load_model(name, static), samples(name, path, CALIB_SAMPLES, seed=1), method="minmax", report=False,
                 show_progress=False)
    res["quantize_s"] = round(time.perf_counter() - t, 2)
    shapes = {k: list(v.shape) for k, v in samples(name, path, 1, seed=5)[0].items()}
    tests = samples(name, path, TEST_SAMPLES, seed=5)
    res["input_shapes"] = shapes
    ops = {}
    for node in q.integer.graph:
        ops[node.op.op_type] = ops.get(node.op.op_type, 0) + 1
    res["l3_ops"] = ops

    outs = [v.name for v in q.integer.graph.outputs]
    c = qtvm.build(q.integer, "cpu", input_shapes=shapes)
    c.warm()
    res["compile_s"] = round(c.compile_seconds + c.load_seconds, 2)
    res["tvm_compile_s"], res["vm_load_s"] = round(c.compile_seconds, 2), round(c.load_seconds, 2)
    got, ref, times = [], [], []
    for feeds in tests:
        c.run(feeds)
        t = time.perf_counter()
        got.append(c.run(feeds))
        times.append(time.perf_counter() - t)
        ref.append(q.run(feeds))
    res["run_ms"] = round(1000 * min(times), 2)
    res["outputs"] = {}
    equal = True
    for n in outs:
        r = np.concatenate([x[n] for x in ref])
        g = np.concatenate([x[n] for x in got])
        if r.dtype != g.dtype or r.shape != g.shape:
            res["outputs"][n] = {"error": f"dtype/shape {g.dtype}{g.shape} vs reference {r.dtype}{r.shape}"}
            equal = False
            continue
        res["outputs"][n] = {"dtype": str(r.dtype), "equal": bool(np.array_equal(r, g)), **_diff(r, g)}
        equal &= bool(np.array_equal(r, g))
    res["outputs_equal"] = equal
    if intermediates == "never" or (intermediates == "auto" and equal):
        res["integer_exact"] = equal if all(res["outputs"][n].get("kind") == "int" for n in outs) else None
        return res

    # every value of the graph, compared with the reference
    names = [o.name for node in q.integer.graph for o in node.outputs if o is not None]
    everything = outs + [n for n in names if n not in outs]
    t = time.perf_counter()
    call = qtvm.build(q.integer, "cpu", input_shapes=shapes, outputs=everything).warm()
    res["all_values_compile_s"] = round(time.perf_counter() - t, 2)
    interp = Interpreter(q.integer)
    tainted = l3.after_float_ops(q.integer.graph)
    dtypes = {}
    stats = {"int_values": 0, "int_differ_clean": 0, "int_differ_after_float": 0, "flips_1lsb_after_float": 0,
             "elements_1lsb_after_float": 0, "over_1lsb_after_float": 0, "float_values": 0, "float_differ": 0}
    differing = []
    order = {n: i for i, n in enumerate(everything)}
    per_value: dict[str, list] = {}
    for feeds in tests:
        g = call.run(feeds)
        r = interp.run(feeds, outputs=list(g))
        for n in everything:
            per_value.setdefault(n, []).append((r[n], g[n]))
    for n in sorted(per_value, key=order.get):
        r = np.concatenate([np.asarray(a).reshape(-1) for a, _ in per_value[n]])
        g = np.concatenate([np.asarray(b).reshape(-1) for _, b in per_value[n]])
        dtypes[n] = str(r.dtype)
        if r.dtype.kind in "iu":
            stats["int_values"] += 1
        else:
            stats["float_values"] += 1
        if r.dtype != g.dtype or r.shape != g.shape:
            differing.append({"value": n, "error": f"{g.dtype}{g.shape} vs reference {r.dtype}{r.shape}"})
            continue
        if np.array_equal(r, g):
            continue
        d = _diff(r, g)
        d["value"] = n
        d["after_float_op"] = n in tainted
        producer = next((node for node in q.integer.graph if any(o is not None and o.name == n for o in node.outputs)),
                        None)
        d["op"] = producer.op.op_type if producer is not None else "?"
        differing.append(d)
        if d["kind"] == "int":
            if n in tainted:
                stats["int_differ_after_float"] += 1
                stats["elements_1lsb_after_float"] += d["count"] - d["over_1"]
                stats["over_1lsb_after_float"] += d["over_1"]
                if d["op"] == "Quantize" and d["max_lsb"] <= 1:
                    stats["flips_1lsb_after_float"] += d["count"]
            else:
                stats["int_differ_clean"] += 1
        else:
            stats["float_differ"] += 1
    # each differing node re-run by the reference on TVM's own inputs: a node that then agrees
    # only passes on a difference from upstream; one that does not is where a difference starts
    local = []
    steps = {o: st for st in interp._steps for o in st.outputs if o is not None}
    for d in differing:
        if "error" in d or d["value"] not in steps:
            continue
        st = steps[d["value"]]
        worst = None
        for (_, g_out), k in zip(per_value[d["value"]], range(len(tests))):
            args = [None if n is None else (per_value[n][k][1] if n in per_value else interp._value({}, n, st))
                    for n in st.inputs]
            mine = interp._call(st, args)[st.outputs.index(d["value"])]
            if np.array_equal(mine, g_out):
                continue
            e = _diff(np.asarray(mine), np.asarray(g_out))
            if worst is None or e.get("max_lsb", e.get("max_abs")) > worst.get("max_lsb", worst.get("max_abs")):
                worst = e
        if worst is not None:
            worst.update(value=d["value"], op=d["op"])
            if worst["kind"] == "float":
                worst["rel"] = worst["max_abs"] / max(worst["ref_max"], 1e-30)
            local.append(worst)
    stats["local_int_mismatch"] = sum(1 for e in local if e["kind"] == "int")
    stats["local_float_mismatch"] = sum(1 for e in local if e["kind"] == "float")
    res["local_mismatches"] = local
    res["values"] = stats
    res["first_differing"] = differing[:first]
    # the earliest integer value that differs with no float op upstream: a real integer bug
    bug = next((d for d in differing if d.get("kind") == "int" and not d["after_float_op"]), None)
    over = next((d for d in differing if d.get("kind") == "int" and d["after_float_op"] and d["max_lsb"] > 1), None)
    res["first_integer_bug"] = bug
    res["first_over_1lsb_after_float"] = over
    res["integer_exact"] = bug is None and not any("error" in d for d in differing)
    return res


def _summary(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:<22} FAILED: {r['error']}"
    outs = []
    for n, o in r["outputs"].items():
        if "error" in o:
            outs.append(f"{n}: {o['error']}")
        elif o["equal"]:
            outs.append(f"{n}: equal")
        elif o["kind"] == "int":
            outs.append(f"{n}: {o['count']}/{o['size']} differ, max {o['max_lsb']} LSB")
        else:
            outs.append(f"{n}: float max |diff| {o['max_abs']:.3g} (|ref| <= {o['ref_max']:.3g})")
    exact = {True: "yes", False: "NO", None: "n/a"}[r.get("integer_exact")]
    line = (f"{r['model']:<22} compile {r['compile_s']:7.1f} s  run {r['run_ms']:8.2f} ms  "
            f"integer bit-exact: {exact:<3}  outputs: {'; '.join(outs)}")
    if "values" in r:
        v = r["values"]
        line += (f"\n{'':<22} values: {v['int_values']} int, {v['float_values']} float; int differing with no float "
                 f"op upstream: {v['int_differ_clean']}; after a float op: {v['int_differ_after_float']} values "
                 f"({v['elements_1lsb_after_float']} elements 1 LSB, {v['over_1lsb_after_float']} > 1 LSB; "
                 f"Quantize flips {v['flips_1lsb_after_float']}); float values differing: {v['float_differ']}")
        for d in r["first_differing"]:
            if "error" in d:
                line += f"\n{'':<24}{d['value']}: {d['error']}"
            elif d["kind"] == "int":
                line += (f"\n{'':<24}{d['op']} -> {d['value']}: {d['count']}/{d['size']} differ, max {d['max_lsb']} "
                         f"LSB{' (after float op)' if d['after_float_op'] else ' (INTEGER PATH)'}")
            else:
                line += f"\n{'':<24}{d['op']} -> {d['value']}: float max |diff| {d['max_abs']:.3g}"
        floats: dict[str, list] = {}
        for e in r.get("local_mismatches", []):
            if e["kind"] == "int":
                line += (f"\n{'':<22} INTEGER op differs on TVM's own inputs: {e['op']} -> {e['value']}: "
                         f"{e['count']}/{e['size']} differ, max {e['max_lsb']} LSB")
            else:
                floats.setdefault(e["op"], []).append(e["rel"])
        if floats:
            line += (f"\n{'':<22} differences start at float ops only (on TVM's own inputs): "
                     + ", ".join(f"{op} x{len(v)} (max |diff| / max |ref| {max(v):.2g})" for op, v in floats.items()))
        elif "local_mismatches" in r and not r["local_mismatches"]:
            line += f"\n{'':<22} every node equals the reference on TVM's own inputs"
        if r.get("first_integer_bug"):
            line += f"\n{'':<22} first integer bug: {r['first_integer_bug']['op']} -> {r['first_integer_bug']['value']}"
    return line


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"default: all ({', '.join(model_names())})")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per model (default 1200)")
    ap.add_argument("--intermediates", choices=("auto", "always", "never"), default="always",
                    help="build with every value as an output: always (default), when the outputs differ (auto), never")
    ap.add_argument("--static", action="store_true",
                    help="set the models' symbolic input dims to the checked shapes before quantizing")
    ap.add_argument("--size", metavar="HxW",
                    help="PP-OCR input height and width, e.g. 736 or 48x320 (default: det 224, rec 48x320, cls 48x192)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size:
        try:
            hw = [int(v) for v in args.size.lower().split("x")]
        except ValueError:
            hw = []
        if len(hw) not in (1, 2) or min(hw) < 1:
            ap.error(f"--size {args.size}: give HxW (e.g. 48x320) or one size for both")
        for name, (file, shape) in list(PPOCR.items()):
            PPOCR[name] = (file, shape[:2] + (hw[0], hw[-1]))
    if args.worker:
        try:
            r = check_one(args.worker, args.intermediates, static=args.static)
        except Exception as e:  # reported by the parent
            import traceback

            r = {"model": args.worker, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                 "traceback": traceback.format_exc()[-3000:]}
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    names = args.models or model_names()
    results = []
    for name in names:
        start = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--intermediates", args.intermediates]
        cmd += ["--static"] if args.static else []
        cmd += ["--size", args.size] if args.size else []
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                r = {"model": name, "error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}"}
            else:
                r = json.loads(line[len("RESULT "):])
        except subprocess.TimeoutExpired:
            r = {"model": name, "error": f"timed out after {args.timeout:.0f} s"}
        r["wall_s"] = round(time.perf_counter() - start, 1)
        results.append(r)
        print(_summary(r), flush=True)
        if "traceback" in r:
            print(r["traceback"], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(r.get("integer_exact") is not False and "error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
