"""``qgraph compile``, ``qgraph run`` and ``qgraph verify``.

``--target qdq`` writes the float, QDQ and integer (L3) models and the report; a TVM target
(``cpu``: this host, ``aarch64``: cross compiled) also builds L3 with TVM for static shapes
and exports the library into ``OUTDIR/tvm/``, which ``qgraph run --backend tvm`` and
``qgraph verify`` load. ``--target qnn`` quantizes by the Qualcomm HTP's rules
(``qgraph.targets.qnn``) and compiles the QDQ model into a QNN context binary
(``OUTDIR/model.qnn_ctx.onnx``) on the HTP emulator, recording where each op runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time

import numpy as np

from qgraph.backends import BACKENDS
from qgraph.errors import QGraphError
from qgraph.targets import NAMES as TVM_TARGETS
from qgraph.quant.float16 import RECURRENT_WEIGHT_TYPES

log = logging.getLogger("qgraph")

TARGETS = ("qdq",) + TVM_TARGETS


@contextlib.contextmanager
def _native_stderr_captured():
    """Keep what TVM's C++ runtime writes to file descriptor 2 (e.g. a "Scope Saving" warning
    per function on export and load) out of the command's output; replay it if the block
    fails, so that nothing that explains an error is lost. Python's own stderr (progress
    bars, ``-v`` log lines, warnings) still reaches the terminal: ``sys.stderr`` and the log
    handlers that wrote to it write to a copy of the original descriptor meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured or in-memory stderr: not fd 2, left alone
        on_fd2 = False
    visible = (os.fdopen(os.dup(saved), "w", buffering=1, errors="replace",
                         encoding=getattr(python_stderr, "encoding", None) or "utf-8") if on_fd2 else python_stderr)
    handlers = [h for h in logging.getLogger().handlers + logging.getLogger("qgraph").handlers
                if on_fd2 and isinstance(h, logging.StreamHandler) and h.stream is python_stderr]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = visible
        for h in handlers:
            h.setStream(visible)
        try:
            yield
        except BaseException:
            visible.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            python_stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            visible.flush()
            sys.stderr = python_stderr
            for h in handlers:
                h.setStream(python_stderr)
            if visible is not python_stderr:
                visible.close()
            os.dup2(saved, 2)
            os.close(saved)


def _input_shapes(items: list[str] | None) -> dict[str, list[int]] | None:
    """``NAME=D0,D1,...`` options as ``{name: [dims]}``."""
    if not items:
        return None
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            shape = [int(d) for d in dims.replace("x", ",").split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or min(shape) < 1:
            raise QGraphError(f"--input-shape {item}: expected NAME=D0,D1,... with positive dims "
                              "(e.g. x=1,3,48,320)")
        shapes[name] = shape
    return shapes


def _batch_axes(items: list[str] | None) -> dict | None:
    """``--batch-axis NAME=K`` options (``qgraph.batching``) as ``{name: axis or None}``."""
    from qgraph import batching

    return batching.parse_options(items) or None


def _laid_out(c, path: str, items: list[str] | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``--inputs`` read for the folder ``c`` (``verify.data.read_feeds``: the model's inputs
    and the labels, if any), whose models then run with the batch axes of the file's
    ``__batch_axes__`` and the ``--batch-axis`` options over the ones they record."""
    from qgraph import batching
    from qgraph.verify.data import read_feeds

    explicit = _batch_axes(items)
    feeds, labels = read_feeds(path, c.float_model, f"--inputs {path}")
    file_axes = batching.source_axes(path)
    c.set_batch_axes(batching.combine(None, file_axes, explicit, f"--inputs {path}"))
    batching.check_finite(feeds, batching.model_axes(c.integer), f"--inputs {path}")
    return feeds, labels


def cmd_compile(args: argparse.Namespace) -> int:
    from qgraph.api import quantize

    if args.target not in TARGETS:
        raise QGraphError(f"--target {args.target}: not available; choose one of {', '.join(TARGETS)}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise QGraphError(f"-o {args.output}: exists and is not a folder")
    if args.batch_size < 1:
        raise QGraphError(f"--batch-size {args.batch_size}: must be at least 1")
    shapes = _input_shapes(args.input_shape)  # a malformed option fails before the minutes of calibration
    axes = _batch_axes(args.batch_axis)
    options = {"percentile": args.percentile, "num_bins": args.num_bins}
    context, timings = _pass_context(args)
    start = time.perf_counter()
    precision = _precision_options(args)  # bad --accuracy / --budget fail before calibration
    q = quantize(args.model, args.calib, _target_config(args), method=args.method,
                 method_options={k: v for k, v in options.items() if v is not None},
                 report_samples=args.report_samples, input_shapes=shapes, batch_axes=axes, eval=args.eval,
                 context=context, **precision)
    q.report.summary["target"] = args.target
    if args.target == "qnn":
        _compile_qnn(q, args)
    if q.report is not None:
        from qgraph.verify.placement import placement

        q.report.placement = placement(q.integer, args.target)
    q.save(args.output)  # before the build: a stale tvm/ from an earlier compile goes
    _print_summary(q.report, args, time.perf_counter() - start)
    if q.precision is not None:
        print(_precision_line(q, args))
    if timings is not None:
        print(timings.report())
    if q.report.warnings and args.strict:
        raise QGraphError(f"--strict: {len(q.report.warnings)} warning(s) above; {args.output}/report.md and "
                          "report.html show them in context")
    if args.target in TVM_TARGETS and _target(args.target).builds_tvm:
        _compile_tvm(q, args)
    return 0


def _target(name: str):
    from qgraph.targets import get

    return get(name)


def _target_config(args: argparse.Namespace):
    """``--config`` as given; for a target with quantization rules (``qnn``), the config that
    names it (``QuantConfig.target``), so that insert-qdq follows its rules; with
    ``--recurrent-weights``, the config that says it."""
    rules = args.target in TVM_TARGETS and _target(args.target).quant is not None
    if not rules and args.recurrent_weights is None:
        return args.config
    from qgraph.api import _config

    cfg = _config(args.config)
    if rules:
        if cfg.target not in (None, args.target):
            raise QGraphError(f"--target {args.target}: the config {args.config} is for target '{cfg.target}'")
        cfg.target = args.target
    if args.recurrent_weights is not None:
        cfg.recurrent_weights = args.recurrent_weights
    return cfg


def _compile_qnn(q, args: argparse.Namespace) -> None:
    """The QNN context binary of the QDQ model (``OUTDIR/model.qnn_ctx.onnx``), compiled on the
    HTP emulator at static shapes, and where each op runs (into the report)."""
    from qgraph import qnn
    from qgraph.compiled import QNN_CONTEXT_FILE
    from qgraph.verify.qnn import annotate_report

    if not qnn.available():
        log.warning("--target qnn: no QNN environment, so no context binary (the QDQ model follows the HTP's "
                    "rules all the same); %s", qnn.HOW_TO_GET)
        return
    shapes = qnn.static_shapes(q.qdq, _input_shapes(args.input_shape), args.batch_size)
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, QNN_CONTEXT_FILE)
    start = time.perf_counter()
    placement = qnn.write_context(q.qdq, shapes, path)
    annotate_report(q.report, placement)
    cpu = placement.on_cpu()
    arch = qnn.provider_options()["htp_arch"]
    print(f"QNN HTP (htp_arch {arch}): {', '.join(f'{k} {list(v)}' for k, v in shapes.items())}; "
          f"{len(placement.where) - len(cpu)}/{len(placement.where)} nodes ({placement.htp_share:.1%}) on the HTP"
          + (f", on the CPU: {', '.join(cpu[:6])}" + (" ..." if len(cpu) > 6 else "") if cpu else "")
          + f"; compiled in {time.perf_counter() - start:.2f} s; wrote {path}")


def _precision_options(args: argparse.Namespace) -> dict:
    """``quantize``'s precision keywords from ``--precision`` / ``--accuracy`` / ``--budget`` /
    ``--executor`` / ``--formats`` / ``--cost`` (parsed here, so a typo fails at once)."""
    from qgraph.precision import parse_accuracy, parse_budget, parse_formats

    if args.precision is None:
        given = [f for f in ("accuracy", "budget", "executor", "formats") if getattr(args, f) is not None]
        if given:
            raise QGraphError(f"--{given[0]} applies to --precision auto")
        return {}
    parse_accuracy(args.accuracy)
    parse_budget(args.budget)
    opts: dict = {"cost_kind": args.cost}
    if args.formats is not None:
        opts["formats"] = [f.name for f in parse_formats(args.formats)]
    return {"precision": "auto", "accuracy": args.accuracy, "budget": args.budget, "executor": args.executor,
            "precision_options": opts}


def _precision_line(q, args: argparse.Namespace) -> str:
    r = q.precision
    counts: dict[str, int] = {}
    for f in r.assignment.values():
        counts[f] = counts.get(f, 0) + 1
    s = q.report.precision if q.report is not None else {}
    frac = s.get("mac_fraction_8bit")
    held = "held" if r.floor_met else "NOT met (the most accurate assignment tried is kept)"
    return (f"precision auto: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} layers; "
            f"floor {r.floor.describe()} {held} on {r.verify_samples} calibration samples; "
            + (f"{frac:.0%} of MACs on 8-bit operands; " if frac is not None else "")
            + f"{r.probes} probes ({r.cached} cached) on {r.executor} in {r.seconds:.1f} s; "
            f"the choice is {args.output}/config.json (reuse it with --config)")


def _pass_context(args: argparse.Namespace):
    """The ``PassContext`` of ``--verify-each`` / ``--time-passes`` / ``--dump-ir`` (as ``qgraph opt``
    gives them), and the ``PassTimings`` to print (None without ``--time-passes``)."""
    from qgraph.pm import DumpIR, PassContext, PassTimings

    if args.dump_ir and os.path.exists(args.dump_ir) and not os.path.isdir(args.dump_ir):
        raise QGraphError(f"--dump-ir {args.dump_ir}: exists and is not a directory")
    timings = PassTimings() if args.time_passes else None
    instruments = [i for i in (timings, DumpIR(args.dump_ir) if args.dump_ir else None) if i is not None]
    return PassContext(verify_each=args.verify_each, instruments=instruments), timings


def _print_summary(report, args: argparse.Namespace, seconds: float) -> None:
    """The summary line on stdout, each warning as a ``qgraph: warning:`` line on stderr."""
    from qgraph.verify.outputs import format_metrics

    s = report.summary
    outs = "; ".join(f"{k} {format_metrics(m)}" for k, m in report.outputs.items())
    print(f"{args.model}: {s['integer_ops']} integer ops, {s['lookups']} lookups, {s['float_ops']} float ops; "
          f"{outs} (vs float, {s['measured_on']}); wrote {args.output}/ in {seconds:.2f} s")
    for w in report.warnings:
        log.warning("%s", w.message)


def _compile_tvm(q, args: argparse.Namespace) -> None:
    """Build L3 with TVM for ``args.target`` and export it into ``OUTDIR/tvm/``."""
    from qgraph.compiled import TVM_DIR

    start = time.perf_counter()
    with _native_stderr_captured():
        compiled = q.build(args.target, batch_size=args.batch_size, input_shapes=_input_shapes(args.input_shape))
        built = time.perf_counter()
        library = q.export_build(args.output)
    done = time.perf_counter()
    shapes = ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in compiled.inputs)
    gpu = getattr(compiled, "kind", None)
    note = f"; run it with qgraph run --backend {gpu}" if gpu else \
        "" if compiled.target.runnable else "; cross compiled: link and run it on the device"
    print(f"TVM {args.target} ({', '.join(f'{k}={v}' for k, v in compiled.target.tvm_dict.items())}): {shapes}; "
          f"compiled in {done - start:.2f} s (lowering {built - start - compiled.compile_seconds:.2f} s, tvm.compile "
          f"{compiled.compile_seconds:.2f} s, code generation and "
          f"export {done - built:.2f} s); wrote {os.path.join(args.output, TVM_DIR, os.path.basename(library))}{note}")
    if compiled.kernels:
        print("qgraph kernels: " + ", ".join(f"{n} x{k}" for n, k in compiled.kernels.items()))
    if compiled.target.runnable:
        print(_check_build(q, args))
    int16 = compiled.kernels.get("qdirect_conv", 0)
    if int16:
        print(f"  {int16} conv(s) on exact int16 pairs: their 8-bit weights could saturate AVX2's u8 x s8 "
              "VPMADDUBSW; 7-bit weights ('reduce_range': true in --config) run the exact u8 x s8 form, "
              "about 1.35x faster per conv, at some accuracy (see bench/bench_tvm.py --reduce-range)")


#: Calibration samples ``compile`` runs through the TVM build and the reference to check it.
CHECK_SAMPLES = 2


def _check_build(q, args: argparse.Namespace) -> str:
    """The TVM build against the reference interpreter on the first ``CHECK_SAMPLES``
    calibration samples, as one line; raises where an output differs that no float fallback op
    precedes (a kernel that computes other integers than the L3 contract says, e.g. an
    instruction form that behaves differently on this CPU than where it was tested). Outputs
    after a float op may differ in the last bits (``qgraph.ir.l3.after_float_ops``): reported."""
    from qgraph import batching
    from qgraph.ir import l3
    from qgraph.verify.data import read_feeds
    from qgraph.verify.outputs import output_scales

    if not os.path.isfile(args.calib):
        return "TVM build vs reference: not checked here (--calib is not one .npz); run `qgraph verify`"
    feeds, _ = read_feeds(args.calib, q.float_model, f"--calib {args.calib}")
    n = min(CHECK_SAMPLES, batching.sample_count(q.float_model, feeds))
    part = batching.take(feeds, batching.model_axes(q.float_model), 0, n)
    ref = q.run(part)
    with _native_stderr_captured():
        got = q.run(part, backend="tvm")
    tainted = l3.after_float_ops(q.integer.graph)
    scales = output_scales(q.qdq)
    wrong, near = [], []
    for name, r in ref.items():
        g = got[name]
        if g.shape == r.shape and np.array_equal(g, r):
            continue
        diff = float(np.abs(g.astype(np.float64) - r.astype(np.float64)).max()) if g.shape == r.shape else None
        what = ("shape " + str(list(g.shape)) + " vs " + str(list(r.shape)) if diff is None
                else f"{diff / scales[name]:.0f} LSB" if name in scales else f"max |diff| {diff:.3g}")
        (near if name in tainted and diff is not None else wrong).append(f"{name} ({what})")
    if wrong:
        raise QGraphError(f"the TVM build differs from the reference interpreter on {n} calibration sample(s) "
                          f"with no float op upstream: {', '.join(wrong)}; this is a qgraph kernel bug on this CPU "
                          "(please report it with `qgraph inspect`'s output); --target qdq and `qgraph run "
                          "--backend reference` give the exact integer results meanwhile")
    if near:
        return (f"TVM build vs reference on {n} calibration sample(s): integer values exact; after float "
                f"fallback ops (last-bit float differences): {', '.join(near)}")
    return f"TVM build vs reference on {n} calibration sample(s): bit-exact"


def cmd_run(args: argparse.Namespace) -> int:
    from qgraph.compiled import CompiledDir

    c = CompiledDir.load(args.outdir)
    c.device = args.device
    feeds, _ = _laid_out(c, args.inputs, args.batch_axis)
    how = args.backend
    if args.backend in ("tvm", "hexagon"):
        with _native_stderr_captured():
            build = c.tvm_build()
        how = f"{args.backend} ({build.target.name}{_batching(build, feeds, c)})"
    outs = c.run(feeds, args.backend)
    np.savez(args.output, **outs)
    print(f"{args.outdir}: ran {how} on {args.inputs}; wrote {args.output} ({', '.join(outs)})")
    return 0


def _batching(build, feeds, c) -> str:
    """How ``run_batched`` splits ``feeds`` for ``build``, in words."""
    from qgraph import batching

    if not build.inputs or not feeds:
        return ""
    shapes = {s.name: s.shape for s in build.inputs}
    try:
        axes = batching.resolve(shapes, batching.declared_axes(c.integer))
        return ", " + batching.describe(shapes, axes, batching.sample_count(c.integer, feeds))
    except QGraphError:
        return ""  # the run itself says what does not fit


def cmd_verify(args: argparse.Namespace) -> int:
    from qgraph import batching
    from qgraph.compiled import CompiledDir
    from qgraph.verify.outputs import backend_line, format_verify, verify_outputs

    c = CompiledDir.load(args.outdir)
    feeds, labels = _laid_out(c, args.inputs, args.batch_axis)
    n = batching.sample_count(c.float_model, feeds) if feeds else 0
    backends, tvm_label, skipped, key = ("ort-sim", "ort"), None, None, "tvm"
    if c.has_build:
        info = c.build_info()
        gpu = info.get("tvm_target", {}).get("kind") if str(info.get("format", "")).startswith("qgraph.gpu") else None
        try:
            with _native_stderr_captured():
                c.gpu_build(gpu).check_runnable() if gpu else c.tvm_build()
            key = gpu or "tvm"
            label = {"opencl": "OpenCL", "cuda": "CUDA"}.get(gpu, "TVM")
            backends, tvm_label = backends + (key,), f"{label} {info.get('target')}" if gpu != "opencl" else label
        except QGraphError as e:
            skipped = f"TVM build not compared: {e}"
    qnn_lines = None
    if c.target == "qnn":  # the HTP emulator: outputs, then every layer and the placement
        from qgraph import qnn

        if qnn.available():
            backends, qnn_lines = backends + ("qnn",), _qnn_layer_lines(c, feeds)
        else:
            skipped = "; ".join(filter(None, [skipped, f"QNN HTP not compared: no QNN environment; {qnn.HOW_TO_GET}"]))
    from qgraph.verify.diagnose import check_labels

    result = verify_outputs(c, feeds, backends, labels=labels)
    lines = [f"{n} samples"]
    for name, m in result.items():
        lines += format_verify({name: m}, n).splitlines()[1:]
        if tvm_label:
            lines.append(backend_line(tvm_label, m[key]))
        if qnn_lines is not None:
            lines.append(backend_line("QNN HTP emulator", m["qnn"]))
    lines += qnn_lines or []
    if skipped:
        lines.append(skipped)
    print("\n".join(lines))
    for w in check_labels(result, labels, args.inputs):
        log.warning("%s", w.message)
    return 0


def _qnn_layer_lines(c, feeds) -> list[str]:
    """``qgraph verify``'s QNN lines: the placement and each layer's LSB distance on the HTP
    emulator, every layer from the reference's inputs (``qgraph.verify.qnn.layer_check``)."""
    from qgraph.verify.qnn import layer_check

    return layer_check(c, feeds).lines()


def add_parsers(sub) -> None:
    p = sub.add_parser("compile", help="quantize a float model: QDQ export, integer (L3) model and report")
    p.add_argument("model")
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data (.npz or folder)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    p.add_argument("--percentile", type=float, help="percentile method: the percentile kept")
    p.add_argument("--num-bins", type=int, help="histogram bins (percentile / entropy / mse)")
    p.add_argument("--config", metavar="FILE", help="quantization config JSON (dtypes, overrides, exclude)")
    p.add_argument("--target", default="qdq", help="qdq (standard QDQ ONNX + integer reference); cpu (also a TVM "
                   "build for this host, in OUTDIR/tvm/); aarch64 (a cross-compiled TVM build, not run here); qnn "
                   "(the QDQ model by the Qualcomm HTP's rules and a QNN context binary, OUTDIR/model.qnn_ctx.onnx); "
                   "opencl (OpenCL C kernels + launch plan in OUTDIR/tvm/, run by --backend opencl); cuda, cuda-sm89, "
                   "cuda-sm90 (CUDA C, PTX and a TVM library in OUTDIR/tvm/, run by --backend cuda on a GPU); hexagon / "
                   "hexagon-v73 (Hexagon HVX 128 B: the whole integer program as a static ELF, OUTDIR/tvm/model.elf, run "
                   "here under qemu-hexagon)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="TVM targets and qnn: the static batch size of inputs with a symbolic batch dim (default 1)")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="the static shape of an input with symbolic dims (repeatable): set before "
                   "quantization, so the QDQ model and the TVM build both have it")
    add_batch_axis_option(p)
    p.add_argument("--report-samples", type=int, default=8,
                   help="samples the per-layer SQNR runs (of the --eval data if given, else of the calibration data)")
    p.add_argument("--eval", metavar="DATA.npz", help="held-out data (inputs by name, optionally 'labels'): the "
                   "summary and report measure the outputs on it, as `qgraph verify` does; without it they are "
                   "in-sample, on calibration data")
    p.add_argument("--strict", action="store_true", help="warnings (few or constant calibration data, a layer at or "
                   "below 0 dB, inputs of very different ranges under one scale, ...) are errors: exit 1")
    p.add_argument("--recurrent-weights", choices=RECURRENT_WEIGHT_TYPES, help="the weights of the LSTM / GRU / "
                   "RNN layers (they stay float): float16 rounds them to float16 values, still computed in float32, "
                   "and the cpu target's LSTM kernel streams them in half the bytes (the report's SQNR includes "
                   "the rounding); default: the config's (float32)")
    p.add_argument("--precision", choices=["auto"], help="auto: each layer's format (W8A8, W8A16, W4A8, float) "
                   "chosen from its measured sensitivity under --accuracy (or within --budget); the choice is "
                   "written as OUTDIR/config.json")
    p.add_argument("--accuracy", metavar="FLOOR", help="with --precision auto: top1>=F, sqnr>=DB, cosine>=F or kl<=NATS "
                   "(mean KL of softmax rows) on the worst output (default: top1>=0.99 on classifier outputs, channel SQNR>=20 dB on others)")
    p.add_argument("--budget", metavar="KIND=N", help="with --precision auto: bytes=N (weight bytes, K/M suffixes) "
                   "or bops=N: the most accurate assignment within it, instead of a floor")
    p.add_argument("--cost", default="bops", choices=["bops", "bytes"], help="with --precision auto: what the floor "
                   "mode minimizes (operand bits per MAC, or weight bytes)")
    p.add_argument("--formats", metavar="F,F,...", help="with --precision auto: the candidate formats "
                   "(default W8A8,W8A16,W4A8,float)")
    p.add_argument("--executor", metavar="local|ray|ray=ADDRESS", help="with --precision auto: where the "
                   "sensitivity probes run (default: this process)")
    p.add_argument("--time-passes", action="store_true", help="print the time of every pass of the quantize "
                   "pipeline (canonicalize, fuse, calibrate, insert-qdq, lower-qdq)")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass (debug)")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR before and after every pass into DIR")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a compiled model on inputs")
    p.add_argument("outdir")
    p.add_argument("--inputs", required=True, metavar="X.npz")
    p.add_argument("-o", "--output", required=True, metavar="Y.npz")
    p.add_argument("--backend", default="reference", choices=list(BACKENDS),
                   help="reference (L3 in numpy), ort / ort-sim (the QDQ model in ONNX Runtime), tvm (the build in "
                   "OUTDIR/tvm/), qnn (the QDQ model on the Qualcomm HTP emulator, QGRAPH_QNN_PYTHON), opencl (the "
                   "kernels of --target opencl through pyopencl), cuda (the build of --target cuda on TVM's CUDA "
                   "runtime, on a machine with an NVIDIA GPU), hexagon (the Hexagon build in OUTDIR/tvm/ under "
                   "qemu-hexagon); every backend runs in batches of the model's batch size (a short last batch is "
                   "padded and the padding dropped)")
    p.add_argument("--device", metavar="N|NAME", help="backend opencl: the OpenCL device, by index or part of its "
                   "name (default: the first; PoCL's CPU device where no GPU is)")
    add_batch_axis_option(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="compare a compiled model with its float original and ONNX Runtime")
    p.add_argument("outdir")
    p.add_argument("--inputs", required=True, metavar="X.npz")
    add_batch_axis_option(p)
    p.set_defaults(func=cmd_verify)


def add_batch_axis_option(p) -> None:
    """``--batch-axis NAME=K`` (``qgraph compile / calibrate / run / verify``)."""
    p.add_argument("--batch-axis", action="append", metavar="NAME=K",
                   help="the axis of input NAME that holds its samples (and its batch in the model; default 0, "
                   "rank-0 inputs none), or none (-1): no sample axis, the same value for every sample (repeatable; "
                   "compile records it in OUTDIR for run / verify)")
