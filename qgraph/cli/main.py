"""``qgraph`` command line: ``passes``, ``inspect``, ``calibrate``, ``opt``, ``compile``, ``run``, ``verify``.

Errors a user can cause print one line (``qgraph: error: ...``) and exit 1; ``--debug``
shows the traceback. A qgraph bug prints ``qgraph: internal error`` and exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings

from qgraph.errors import PipelineError, QGraphError

log = logging.getLogger("qgraph")


def _one_line(text: object) -> str:
    """``text`` with control characters escaped: a name read from a corrupt file (a newline, a form
    feed, an escape sequence) must not break the one-line error or drive the terminal."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cmd_passes(args: argparse.Namespace) -> int:
    from qgraph.passes import registry

    rows = registry().describe_options()
    width = max(len(n) for n, _, _ in rows)
    for name, summary, options in rows:
        print(f"{name:{width}s}  {summary}")
        for option in options:
            print(f"{'':{width}s}    {option}")
    return 0


def _input_range(text: str | None):
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise QGraphError(f"--input-range {text}: expected LO,HI (e.g. 0,1)") from None
    if not lo <= hi:
        raise QGraphError(f"--input-range {text}: LO must not exceed HI")
    return lo, hi


def _with_calibration_data(pipeline, data: str | None) -> None:
    """``--calib`` fills in the data of calibrate passes that name none."""
    from qgraph.passes.calibrate import Calibrate
    from qgraph.pm.pipeline import FixedPoint

    for p in pipeline.passes if hasattr(pipeline, "passes") else pipeline:
        if isinstance(p, FixedPoint):
            _with_calibration_data(p.passes, data)
        elif isinstance(p, Calibrate) and p.data is None:
            p.data = data


def _cmd_inspect(args: argparse.Namespace) -> int:
    from qgraph.cli.inspect_cmd import format_ranges, format_text, summarize
    from qgraph.onnx import load

    model = load(args.model)
    summary = summarize(model, args.model)
    if args.ranges or args.ranges_file or args.input_range:
        from qgraph.calib.intervals import RangeAnalysis
        from qgraph.calib.ranges import Interval, RangeMap
        from qgraph.pm import AnalysisManager

        if args.input_range:
            lo, hi = _input_range(args.input_range)
            model.input_ranges = {v.name: Interval(lo, hi, "user") for v in model.graph.inputs if not v.is_initializer()}
        if args.ranges_file:
            model.calibration = RangeMap.load(args.ranges_file)
        summary["ranges"] = AnalysisManager(model).get(RangeAnalysis).to_json()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_text(summary))
        if "ranges" in summary:
            print(format_ranges(summary["ranges"]))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from qgraph.calib.calibrate import calibrate
    from qgraph.onnx import load
    from qgraph.passes import registry
    from qgraph.pm import PassContext, PassManager

    pipeline = registry().parse(args.passes) if args.passes else None
    if os.path.isdir(args.output):
        raise QGraphError(f"-o {args.output}: is a directory, expected a .json file path")
    model = load(args.model)
    if pipeline is not None:
        PassManager(pipeline, PassContext()).run(model)
    options = {"percentile": args.percentile, "num_bins": args.num_bins, "bits": args.bits}
    start = time.perf_counter()
    from qgraph.cli.compile_cmd import _batch_axes

    ranges = calibrate(model, args.calib, args.method, batch_size=args.batch_size,
                       batch_axes=_batch_axes(args.batch_axis), **{k: v for k, v in options.items() if v is not None})
    ranges.save(args.output)
    print(f"{args.model}: {args.method} ranges of {len(ranges)} tensors from {ranges.meta['samples']} samples "
          f"in {time.perf_counter() - start:.2f} s; wrote {args.output}")
    return 0


def _cmd_opt(args: argparse.Namespace) -> int:
    from qgraph.ir.verify import verify
    from qgraph.onnx import load, save
    from qgraph.passes import registry
    from qgraph.pm import DumpIR, PassContext, PassManager, PassTimings

    reg = registry()
    pipeline = reg.parse(args.passes)  # bad pipelines and paths fail before the model is read
    for name in args.disable or ():
        if name not in reg.names():
            if name in dict(reg.describe()):
                raise PipelineError(f"--disable {name}: '{name}' is an alias or group; --disable takes single pass names")
            try:
                reg.get(name)
            except PipelineError as e:  # unknown: suggests close names
                raise PipelineError(f"--disable {name}: {e}") from None
    if os.path.isdir(args.output):
        raise QGraphError(f"-o {args.output}: is a directory, expected an .onnx file path")
    if args.dump_ir and os.path.exists(args.dump_ir) and not os.path.isdir(args.dump_ir):
        raise QGraphError(f"--dump-ir {args.dump_ir}: exists and is not a directory")
    _with_calibration_data(pipeline, args.calib)
    model = load(args.model)
    before = sum(1 for _ in model.graph.all_nodes())
    timings = PassTimings()
    instruments = [timings]
    if args.dump_ir:
        instruments.append(DumpIR(args.dump_ir))
    ctx = PassContext(verify_each=args.verify_each, disabled=frozenset(args.disable or ()), instruments=instruments)
    start = time.perf_counter()
    result = PassManager(pipeline, ctx).run(model)
    verify(model)
    save(model, args.output)
    after = sum(1 for _ in model.graph.all_nodes())
    changed = sorted({r.name for r in result.records if r.modified})
    print(f"{args.model}: {before} -> {after} nodes in {time.perf_counter() - start:.2f} s "
          f"({'changed by ' + ', '.join(changed) if changed else 'no pass changed the model'}); wrote {args.output}")
    if args.time_passes:
        print(timings.report())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with qgraph's error contract: one line, ``qgraph: error: ...``, exit code 1
    (argparse itself prints its usage block and exits 2). Subcommand parsers are of this
    class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f"`qgraph {command} --help`" if command else "`qgraph --help`"
        print(f"qgraph: error: {command + ': ' if command else ''}{message} (see {hint})", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="qgraph", description="Quantization compiler for ONNX models.")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("passes", help="list the available passes")
    p.set_defaults(func=_cmd_passes)

    p = sub.add_parser("inspect", help="summarize a model: ops, inputs / outputs, parameters, opsets")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--ranges", action="store_true", help="show each tensor's range (static analysis)")
    p.add_argument("--input-range", metavar="LO,HI", help="declared range of every float input (implies --ranges)")
    p.add_argument("--ranges-file", metavar="JSON", help="calibrated ranges from `qgraph calibrate` (implies --ranges)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("calibrate", help="observed ranges of every float tensor on calibration data")
    p.add_argument("model")
    p.add_argument("--calib", required=True, metavar="DATA",
                   help=".npz (arrays keyed by input name, samples on axis 0 or --batch-axis) or a folder of .npz / "
                   ".npy files")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy", "mse"])
    p.add_argument("--percentile", type=float, help="percentile method: the percentile kept (default 99.999)")
    p.add_argument("--num-bins", type=int, help="histogram bins (percentile / entropy / mse)")
    p.add_argument("--bits", type=int, help="mse method: the target bit width (default 8)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per ONNX Runtime run (default 1: every intermediate tensor of a run is held at once)")
    p.add_argument("--passes", help="pipeline to run before calibrating (ranges are keyed by the result's names)")
    p.add_argument("-o", "--output", required=True, help="ranges .json")
    from qgraph.cli.compile_cmd import add_batch_axis_option

    add_batch_axis_option(p)
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("opt", help="run a pass pipeline on a model")
    p.add_argument("model")
    p.add_argument("--passes", required=True, help='pipeline, e.g. "eliminate-identity,dead-code-elimination"')
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--dump-ir", metavar="DIR", help="write the IR before and after every pass into DIR")
    p.add_argument("--time-passes", action="store_true", help="print time per pass")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass (debug)")
    p.add_argument("--disable", action="append", metavar="PASS", help="skip this pass (repeatable)")
    p.add_argument("--calib", metavar="DATA", help="calibration data for calibrate passes that name none")
    p.set_defaults(func=_cmd_opt)

    from qgraph.cli.compile_cmd import add_parsers
    from qgraph.cli.qat_cmd import add_parsers as add_qat_parser

    add_parsers(sub)
    add_qat_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _logging(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING):
        return _run(args)


class _Formatter(logging.Formatter):
    """``qgraph: warning: ...`` for warnings and worse, ``qgraph: ...`` for progress lines."""

    def format(self, record: logging.LogRecord) -> str:
        kind = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"qgraph: {kind}{record.getMessage()}"


@contextlib.contextmanager
def _logging(level: int):
    """The ``qgraph`` logger's lines on stderr (``qgraph: ...``) for one command: warnings
    always, each stage with its time under ``-v``, everything under ``--debug``. Set up here,
    not on import, and taken down after, so that in-process callers keep their own logging."""
    logger = logging.getLogger("qgraph")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _run(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings():
            if not (args.verbose or args.debug):  # numpy's "invalid value in divide" and kin: a second line
                warnings.simplefilter("ignore", RuntimeWarning)  # beside the error they lead to; shown with -v
            return args.func(args)
    except QGraphError as e:
        if args.debug:
            raise
        print(f"qgraph: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system refused: unwritable output, a file where a folder should be, disk full
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"qgraph: error: {_one_line(where)}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in qgraph, not the user's input
        if args.debug:
            raise
        print(f"qgraph: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
