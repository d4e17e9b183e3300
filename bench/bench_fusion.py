"""qgraph's fusion pipeline next to ONNX Runtime's quantization pre-processing, per model.

    python bench/bench_fusion.py [--passes "canonicalize,fuse"] [--repeat 3] [--models PATH ...]

Models: the light architectures that ship in the onnx wheel (``onnx/backend/test/data/light``)
and the three PP-OCRv4 models in ``rapidocr_onnxruntime/models``. For each it times, median
of ``--repeat`` runs taken side by side (qgraph, then ONNX Runtime, then qgraph again, ...):

    qgraph   what ``qgraph opt MODEL --passes PASSES -o OUT`` does: load, run the pipeline,
             verify, save
    ort      ``onnxruntime.quantization.shape_inference.quant_pre_process(MODEL, OUT)``
             (symbolic shape inference, ORT graph optimization, ONNX shape inference)

and prints node counts (before, after qgraph, after ort), the activations fuse-activation
marked (producer fusions + decomposed hard-swish groups), both times and qgraph / ort.
quant_pre_process fails on some models (its symbolic shape inference on all three
PP-OCRv4 models): the failure is printed and that row has no ratio.

``--passes`` takes any pipeline the registry parses, so the script runs with the passes that
exist, e.g. ``--passes cleanup,fuse-pad,fuse-activation``.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import onnx


def default_models() -> list[str]:
    light = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))
    try:
        import rapidocr_onnxruntime

        ocr = sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*.onnx")))
    except ImportError:
        ocr = []
    return light + ocr


def count_nodes(model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def run_qgraph(path: str, pipeline_text: str, out: str):
    """One ``qgraph opt``: returns (seconds, nodes before, nodes after, pairs fused, groups marked)."""
    import qgraph
    from qgraph.ir import fusion
    from qgraph.ir.verify import verify
    from qgraph.passes import registry
    from qgraph.pm import PassManager

    start = time.perf_counter()
    model = qgraph.load(path)
    before = count_nodes(model)
    PassManager(registry().parse(pipeline_text)).run(model)
    verify(model)
    qgraph.save(model, out)
    seconds = time.perf_counter() - start
    nodes = list(model.graph.all_nodes())
    pairs = sum(fusion.fused_producer(n) is not None for n in nodes)
    groups = sum(fusion.ACTIVATION_GROUP_KEY in n.metadata_props and fusion.activation_group(n) is not None
                 for n in nodes)
    return seconds, before, len(nodes), pairs, groups


def run_ort(path: str, out: str):
    """One ``quant_pre_process``: (seconds, nodes after) or (None, the failure's first line).

    Runs in ``out``'s folder: on failure ORT's symbolic shape inference writes
    ``sym_shape_infer_temp.onnx`` into the current directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path, out, cwd = os.path.abspath(path), os.path.abspath(out), os.getcwd()
    os.chdir(os.path.dirname(out))
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(path, out)
    except Exception as e:  # noqa: BLE001 - any failure is a result worth printing
        first = (str(e).strip().splitlines() or [""])[0][:90]
        if not first:  # e.g. a bare assert: say where it fired
            tb = traceback.extract_tb(e.__traceback__)[-1]
            first = f"(no message) at {os.path.basename(tb.filename)}:{tb.lineno}"
        return None, f"{type(e).__name__}: {first}"
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    return seconds, sum(1 for _ in onnx.load(out, load_external_data=False).graph.node)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", default="canonicalize,fuse", help="qgraph pipeline (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool and model; the median is printed")
    ap.add_argument("--models", nargs="*", help="model paths (default: onnx light models + PP-OCRv4)")
    args = ap.parse_args(argv)

    from qgraph.errors import PipelineError
    from qgraph.passes import registry

    try:
        registry().parse(args.passes)
    except PipelineError as e:
        print(f"--passes {args.passes!r}: {e}", file=sys.stderr)
        print("pass the pipeline that exists, e.g. --passes cleanup,fuse-pad,fuse-activation", file=sys.stderr)
        return 1
    # quant_pre_process logs through the root logger and ORT's; keep the table readable
    logging.getLogger().setLevel(logging.ERROR)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)

    models = args.models or default_models()
    print(f"qgraph --passes {args.passes}   vs   onnxruntime {onnxruntime.__version__} quant_pre_process   "
          f"(median of {args.repeat}, side by side)")
    head = (f"{'model':<36} {'nodes':>6} {'qgraph':>6} {'ort':>6} {'fused':>5} {'hswish':>6} "
            f"{'qgraph s':>9} {'ort s':>8} {'qgraph/ort':>10}")
    print(head)
    print("-" * len(head))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            name = os.path.basename(path)
            q_times, o_times, failure = [], [], None
            q_out, o_out = os.path.join(tmp, "qgraph.onnx"), os.path.join(tmp, "ort.onnx")
            for _ in range(args.repeat):
                seconds, before, after, pairs, groups = run_qgraph(path, args.passes, q_out)
                q_times.append(seconds)
                if failure is None:
                    o_seconds, o_info = run_ort(path, o_out)
                    if o_seconds is None:
                        failure = o_info
                    else:
                        o_times.append(o_seconds)
                        o_nodes = o_info
            q = statistics.median(q_times)
            if failure is None:
                o = statistics.median(o_times)
                ratios.append(q / o)
                print(f"{name:<36} {before:>6} {after:>6} {o_nodes:>6} {pairs:>5} {groups:>6} "
                      f"{q:>9.3f} {o:>8.3f} {q / o:>10.3g}")
            else:
                print(f"{name:<36} {before:>6} {after:>6} {'-':>6} {pairs:>5} {groups:>6} {q:>9.3f} {'-':>8} {'-':>10}")
                print(f"{'':<36} ort failed: {failure}")
    if ratios:
        print(f"qgraph / ort time, geometric mean over {len(ratios)} models where both ran: "
              f"{statistics.geometric_mean(ratios):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
