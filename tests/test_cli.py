"""The ``qgraph`` command line: ``passes``, ``inspect``, ``opt`` and its error contract.

Most cases call ``qgraph.cli.main.main(argv)`` in-process (fast, output through capsys); a
few run ``python -m qgraph.cli.main`` as a real subprocess to check exit codes and that no
traceback reaches the user. Every error a user can cause must give exit code 1 and exactly
one stderr line ``qgraph: error: ...`` naming the problem; ``--debug`` re-raises.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qgraph.cli.main import main
from qgraph.errors import QGraphError
from qgraph.passes import ALIASES, BUILTIN_PASSES
from qgraph.testing import ort as qort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "golden", "models", "example_cnn.onnx")
LIGHT_MODELS = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


def _ocr_models() -> list[str]:
    import rapidocr_onnxruntime

    return sorted(glob.glob(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", "*.onnx")))


OCR_MODELS = _ocr_models()
# Fixed shapes for the OCR models' symbolic dims (height / width must survive downsampling).
OCR_SHAPES = {"_det_": (1, 3, 64, 64), "_rec_": (1, 3, 48, 320), "_cls_": (1, 3, 48, 192)}
ALL_MODELS = [EXAMPLE, *LIGHT_MODELS, *OCR_MODELS]


def _id(path: str) -> str:
    return os.path.basename(path)[:-5]


# -- helpers ----------------------------------------------------------------------------------

def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything earlier
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def cli_subprocess(*argv: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qgraph.cli.main", *map(str, argv)],
                          capture_output=True, text=True, timeout=120, cwd=cwd or REPO)


def assert_clean_error(rc: int, err: str, *needles: str) -> str:
    """Exit 1, one stderr line ``qgraph: error: ...`` holding every needle, no traceback."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("qgraph: error:"), line
    assert rc == 1, f"exit code {rc}: {line}"
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in: {line}"
    return line


def _feeds(path: str) -> dict[str, np.ndarray]:
    proto = onnx.load(path)
    if path in OCR_MODELS:
        (shape,) = [s for key, s in OCR_SHAPES.items() if key in os.path.basename(path)]
        (inp,) = [vi.name for vi in proto.graph.input if vi.name not in {t.name for t in proto.graph.initializer}]
        return {inp: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return qort.random_feeds(proto)


def _save(graph: onnx.GraphProto, path, opsets=(("", 17),)) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    onnx.save(model, str(path))
    return str(path)


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])


def test_model_sets_found():
    assert os.path.isfile(EXAMPLE)
    assert len(LIGHT_MODELS) >= 9, LIGHT_MODELS
    assert len(OCR_MODELS) == 3, OCR_MODELS


# -- qgraph passes ----------------------------------------------------------------------------

def test_passes_lists_every_builtin_with_summary(capsys):
    rc, out, err = cli(capsys, "passes")
    assert rc == 0 and err == ""
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip() and line[0] != " "}
    for cls in BUILTIN_PASSES:
        summary = cls.summary()
        assert summary, f"{cls.__name__} has no one-line docstring summary"
        assert cls.name in rows, f"{cls.name} missing from `qgraph passes`:\n{out}"
        assert rows[cls.name] == summary, (cls.name, rows[cls.name])
    for alias, (text, _doc) in ALIASES.items():
        assert alias in rows and text in rows[alias], out
    assert "fixed-point" in rows


# -- qgraph inspect ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL_MODELS, ids=_id)
def test_inspect_json(path, capsys):
    rc, out, err = cli(capsys, "inspect", path, "--json")
    assert rc == 0, err
    assert err == ""
    s = json.loads(out)
    proto = onnx.load(path)

    nodes = s["nodes"]
    assert sum(s["ops"].values()) == nodes["total"] == nodes["main_graph"] + nodes["in_subgraphs"]
    assert nodes["main_graph"] == len(proto.graph.node)
    assert s["ops"] and all(isinstance(c, int) and c > 0 for c in s["ops"].values())
    assert s["ir_version"] == proto.ir_version
    assert s["opsets"] == {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    assert "ai.onnx" in s["opsets"]

    inits = {t.name for t in proto.graph.initializer}
    assert [i["name"] for i in s["inputs"]] == [vi.name for vi in proto.graph.input if vi.name not in inits]
    assert [o["name"] for o in s["outputs"]] == [vo.name for vo in proto.graph.output]
    for io in s["inputs"] + s["outputs"]:
        assert io["dtype"] == "f32", io
        assert isinstance(io["shape"], list) and io["shape"], io
    p = s["parameters"]
    if nodes["in_subgraphs"] == 0:  # initializers and Constant tensors, counted from the file
        tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node if n.op_type == "Constant"
                                                   for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
        arrays = [numpy_helper.to_array(t) for t in tensors]
        assert p["tensors"] == len(arrays)
        assert p["elements"] == sum(a.size for a in arrays)
        assert p["bytes"] == sum(a.nbytes for a in arrays)
    assert p["external_tensors"] == 0
    if path in OCR_MODELS or path == EXAMPLE:
        assert p["bytes"] > 0 and p["elements"] > 0 and p["tensors"] > 0, p
    if path in OCR_MODELS:
        assert s["inputs"][0]["shape"][1] == 3  # N x 3 x H x W, symbolic H / W as strings
    if path == EXAMPLE:
        assert nodes["total"] == 13
        assert s["ops"]["Conv"] == 2 and s["ops"]["Identity"] == 1 and s["ops"]["Dropout"] == 1
        assert s["inputs"] == [{"name": "input", "dtype": "f32", "shape": [s["inputs"][0]["shape"][0], 1, 8, 8]}]
        assert s["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize("path", [EXAMPLE, OCR_MODELS[0]], ids=_id)
def test_inspect_text(path, capsys):
    rc, out, err = cli(capsys, "inspect", path)
    assert rc == 0 and err == ""
    summary = json.loads(cli(capsys, "inspect", path, "--json")[1])
    assert out.startswith(f"model {path}")
    assert f"nodes: {summary['nodes']['total']}" in out
    for section in ("inputs:", "outputs:", "ops:", "parameters:", "opsets:"):
        assert section in out, out
    for op, count in summary["ops"].items():
        assert any(line.split() == [op, str(count)] for line in out.splitlines()), (op, out)
    for io in summary["inputs"]:
        assert f"  {io['name']}: {io['dtype']}[" in out


# -- qgraph opt -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL_MODELS, ids=_id)
def test_opt_cleanup_preserves_outputs(path, tmp_path, capsys):
    out_path = tmp_path / "out.onnx"
    rc, out, err = cli(capsys, "opt", path, "--passes", "cleanup", "-o", out_path)
    assert rc == 0, err
    assert err == ""
    assert f"wrote {out_path}" in out
    onnx.checker.check_model(str(out_path))
    optimized = onnx.load(str(out_path))
    original = onnx.load(path)
    assert len(optimized.graph.node) <= len(original.graph.node)
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]

    feeds = _feeds(path)
    ref = qort.run(path, feeds)
    got = qort.run(str(out_path), feeds)
    why = qort.compare_all(ref, got, [o.name for o in original.graph.output])
    assert why is None, why

    if path == EXAMPLE:
        assert "13 -> 10 nodes" in out, out
        assert len(optimized.graph.node) == 10
        assert not {"Identity", "Dropout"} & {n.op_type for n in optimized.graph.node}


def test_opt_dump_ir_time_passes_verify_each(tmp_path, capsys):
    out_path, dump = tmp_path / "out.onnx", tmp_path / "dump"
    rc, out, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", out_path,
                       "--dump-ir", dump, "--time-passes", "--verify-each")
    assert rc == 0 and err == "", err
    assert "13 -> 10 nodes" in out
    onnx.checker.check_model(str(out_path))

    files = sorted(os.listdir(dump))
    assert files and len(files) % 2 == 0, files
    befores = [f for f in files if f.endswith("-before.txt")]
    afters = [f for f in files if f.endswith("-after.txt")]
    assert [f.replace("-before", "") for f in befores] == [f.replace("-after", "") for f in afters]
    for f in files:
        assert (dump / f).read_text().startswith("model "), f
    first_before, first_after = (dump / befores[0]).read_text(), (dump / afters[0]).read_text()
    assert "eliminate-identity" in befores[0]
    assert "Identity(" in first_before and "Identity(" not in first_after
    assert "Dropout(" in first_before and "Dropout(" not in first_after
    assert any("dead-code-elimination" in f for f in files)

    # The timing table: a header, a row per pass, a total.
    table = out.splitlines()[1:]
    assert table[0].split()[0] == "pass" and "seconds" in table[0]
    names = {line.split()[0] for line in table[1:]}
    assert {"eliminate-identity", "dead-code-elimination", "total"} <= names, out


def test_opt_verify_each_on_ppocr(tmp_path, capsys):
    (det,) = [p for p in OCR_MODELS if "_det_" in p]
    rc, out, err = cli(capsys, "opt", det, "--passes", "fixed-point(eliminate-identity,dead-code-elimination)",
                       "-o", tmp_path / "det.onnx", "--verify-each", "--time-passes")
    assert rc == 0 and err == "", err
    assert "total" in out
    onnx.checker.check_model(str(tmp_path / "det.onnx"))


def test_opt_disable(tmp_path, capsys):
    rc, out, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", tmp_path / "o.onnx",
                       "--disable", "eliminate-identity")
    assert rc == 0 and err == "", err
    assert "13 -> 12 nodes" in out  # only the dead Exp goes
    assert "Identity" in {n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node}


def test_opt_output_dir_created(tmp_path, capsys):
    out_path = tmp_path / "new" / "deeper" / "o.onnx"
    rc, _, err = cli(capsys, "opt", EXAMPLE, "--passes", "eliminate-identity", "-o", out_path)
    assert rc == 0 and err == "", err
    onnx.checker.check_model(str(out_path))


# -- bad input: one clean line, exit 1 ---------------------------------------------------------

def _top_level_field_ends(data: bytes) -> list[int]:
    """Offsets at which a top-level protobuf field of ``data`` ends (cuts there still parse)."""

    def varint(pos: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            b = data[pos]
            value |= (b & 0x7F) << shift
            pos += 1
            shift += 7
            if not b & 0x80:
                return value, pos

    ends, pos = [], 0
    while pos < len(data):
        key, pos = varint(pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint(pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = varint(pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        ends.append(pos)
    assert ends[-1] == len(data)
    return ends[:-1]


def _parses(data: bytes) -> bool:
    try:
        onnx.ModelProto().ParseFromString(data)
    except Exception:
        return False
    return True


def _bad_model_files(tmp_path) -> dict[str, tuple[str, list[str]]]:
    """name -> (path, needles the error line must hold)."""
    cases: dict[str, tuple[str, list[str]]] = {}
    missing = str(tmp_path / "missing.onnx")
    cases["missing"] = (missing, [missing, "no such file"])
    text = tmp_path / "notes.txt"
    text.write_text("this is not an ONNX model\nat all\n")
    cases["text"] = (str(text), [str(text), "ONNX"])
    rand = tmp_path / "random.onnx"
    rand.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases["random-bytes"] = (str(rand), [str(rand), "ONNX"])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases["empty"] = (str(empty), [str(empty), "empty"])
    cases["directory"] = (str(tmp_path), [str(tmp_path), "directory"])

    cyc = helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                             helper.make_node("Relu", ["a"], ["b"], name="n2"),
                             helper.make_node("Identity", ["a"], ["y"], name="n3")], "loop", [X], [Y])
    path = _save(cyc, tmp_path / "cycle.onnx")
    cases["cycle"] = (path, [path, "cycle", "'n1'", "'n2'", "'loop'"])

    dom = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], name="foo_node", domain="com.acme")], "g", [X], [Y])
    path = _save(dom, tmp_path / "domain.onnx")
    cases["undeclared-domain"] = (path, [path, "com.acme", "foo_node", "does not import"])

    nodef = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu0")], "g", [X], [Y])
    path = _save(nodef, tmp_path / "no_default.onnx", opsets=(("com.acme", 1),))
    cases["default-domain-not-imported"] = (path, [path, "relu0", "ai.onnx", "does not import"])

    unk = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], name="frob")], "g", [X], [Y])
    path = _save(unk, tmp_path / "unknown_op.onnx")
    cases["unknown-op"] = (path, [path, "Frobnicate", "frob", "unknown op"])

    undef = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")], "g", [X], [Y])
    path = _save(undef, tmp_path / "undefined.onnx")
    cases["undefined-value"] = (path, [path, "ghost", "adder"])

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(2, np.float32).tobytes())
    for name, location in (("relative", "../secret.bin"), ("absolute", str(secret))):
        w = numpy_helper.from_array(np.ones(2, np.float32), "weights_w")
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "8")):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
        g = helper.make_graph([helper.make_node("Add", ["x", "weights_w"], ["y"], name="add")], "g", [X], [Y], [w])
        folder = tmp_path / f"model_{name}"
        folder.mkdir()
        path = _save(g, folder / "model.onnx")
        cases[f"external-{name}"] = (path, [path, "outside", "weights_w", location, str(folder)])

    data = open(EXAMPLE, "rb").read()
    cuts = {"half": len(data) // 2, "quarter": len(data) // 4, "3quarters": 3 * len(data) // 4,
            "10-bytes": 10, "1-byte": 1, "all-but-1": len(data) - 1}
    ends = _top_level_field_ends(data)
    cuts.update({f"field-end-{i}": end for i, end in enumerate(ends)})
    assert any(_parses(data[:n]) and n > len(data) // 2 for n in ends), "no cut point parses: weak test"
    for name, n in cuts.items():
        path = str(tmp_path / f"cut_{name}.onnx")
        with open(path, "wb") as f:
            f.write(data[:n])
        cases[f"truncated-{name}"] = (path, [path] + (["truncated"] if name == "half" else []))
    return cases


def test_bad_model_files(tmp_path, capsys):
    cases = _bad_model_files(tmp_path)
    failures = []
    for name, (path, needles) in cases.items():
        for argv in (["inspect", path], ["inspect", "--json", path],
                     ["opt", path, "--passes", "cleanup", "-o", tmp_path / "out" / "o.onnx"]):
            rc, out, err = cli(capsys, *argv)
            try:
                assert_clean_error(rc, err, *needles)
                assert out == "", out
            except AssertionError as e:
                failures.append(f"{name} {argv[0]}: {e}")
    assert not failures, "\n".join(failures)
    assert not os.path.exists(tmp_path / "out" / "o.onnx")


def test_truncated_ppocr_model(tmp_path, capsys):
    (det,) = [p for p in OCR_MODELS if "_det_" in p]
    data = open(det, "rb").read()
    ends = _top_level_field_ends(data)
    for n in sorted({len(data) // 2, len(data) // 3, len(data) - 1, *ends}):
        path = tmp_path / f"det_{n}.onnx"
        path.write_bytes(data[:n])
        rc, _, err = cli(capsys, "inspect", path)
        assert_clean_error(rc, err, str(path))


@pytest.mark.parametrize("pipeline, needles", [
    ("cleanp", ["unknown pass 'cleanp'", "did you mean cleanup"]),
    ("dead-code-elim", ["unknown pass 'dead-code-elim'", "dead-code-elimination"]),
    ("eliminate-identity,nosuchpass", ["unknown pass 'nosuchpass'", "qgraph passes"]),
    ("cleanup,", ["bad pipeline 'cleanup,'", "column", "trailing comma"]),
    ("fixed-point(cleanup", ["bad pipeline 'fixed-point(cleanup'", "missing ')'"]),
    ("", ["empty pipeline"]),
    ("cleanup)", ["bad pipeline", "unexpected ')'"]),
    ("fixed-point", ["fixed-point needs a parenthesized list"]),
    ("eliminate-identity(foo=1)", ["eliminate-identity", "no option 'foo'"]),
    ("eliminate-identity(foo)", ["expected '='", "foo"]),
    ("cleanup(x=1)", ["alias 'cleanup' takes no options"]),
])
def test_bad_pipeline(pipeline, needles, tmp_path, capsys):
    rc, out, err = cli(capsys, "opt", EXAMPLE, "--passes", pipeline, "-o", tmp_path / "o.onnx")
    assert_clean_error(rc, err, *needles)
    assert out == "" and not os.path.exists(tmp_path / "o.onnx")


def test_bad_pipeline_reported_before_the_model_is_read(tmp_path, capsys):
    rc, _, err = cli(capsys, "opt", tmp_path / "missing.onnx", "--passes", "cleanp", "-o", tmp_path / "o.onnx")
    assert_clean_error(rc, err, "cleanp")


@pytest.mark.parametrize("name, needles", [
    ("eliminate-identit", ["--disable eliminate-identit", "unknown pass", "did you mean eliminate-identity"]),
    ("nosuchpass", ["--disable nosuchpass", "unknown pass"]),
    ("cleanup", ["--disable cleanup", "alias"]),
])
def test_bad_disable(name, needles, tmp_path, capsys):
    rc, _, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", tmp_path / "o.onnx", "--disable", name)
    assert_clean_error(rc, err, *needles)


def test_unwritable_outputs(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, _, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", tmp_path)
    assert_clean_error(rc, err, str(tmp_path), "directory")
    rc, _, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", a_file / "o.onnx")
    assert_clean_error(rc, err, str(a_file))
    rc, _, err = cli(capsys, "opt", EXAMPLE, "--passes", "cleanup", "-o", tmp_path / "o.onnx", "--dump-ir", a_file)
    assert_clean_error(rc, err, "--dump-ir", str(a_file), "not a directory")


def test_debug_reraises_in_process(tmp_path, capsys):
    with pytest.raises(QGraphError, match="no such file"):
        main(["--debug", "inspect", str(tmp_path / "missing.onnx")])
    with pytest.raises(QGraphError, match="cleanp"):
        main(["--debug", "opt", EXAMPLE, "--passes", "cleanp", "-o", str(tmp_path / "o.onnx")])


# -- real subprocesses ------------------------------------------------------------------------

def test_subprocess_success(tmp_path):
    p = cli_subprocess("passes")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert all(cls.name in p.stdout for cls in BUILTIN_PASSES)
    out_path = tmp_path / "o.onnx"
    p = cli_subprocess("opt", EXAMPLE, "--passes", "cleanup", "-o", out_path, "--time-passes")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "13 -> 10 nodes" in p.stdout
    onnx.checker.check_model(str(out_path))


def test_subprocess_errors(tmp_path):
    data = open(EXAMPLE, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    p = cli_subprocess("inspect", cut)
    assert_clean_error(p.returncode, p.stderr, str(cut), "truncated")
    assert p.stdout == ""
    p = cli_subprocess("opt", EXAMPLE, "--passes", "cleanp", "-o", tmp_path / "o.onnx")
    assert_clean_error(p.returncode, p.stderr, "cleanup")
    p = cli_subprocess("opt", EXAMPLE, "--passes", "cleanup", "-o", tmp_path)
    assert_clean_error(p.returncode, p.stderr, "directory")
    p = cli_subprocess()  # no command: one line, rc 1, like every other error a user can make
    assert_clean_error(p.returncode, p.stderr, "COMMAND", "qgraph --help")


@pytest.mark.parametrize("argv, words", [
    (("compile", "m.onnx", "--calib", "c.npz", "-o", "out", "--method", "kl"), ("--method", "'kl'", "minmax")),
    (("compile", "m.onnx"), ("required", "--calib", "qgraph compile --help")),
    (("bogus",), ("'bogus'", "compile")),
    (("calibrate", "m.onnx", "--calib", "c.npz", "-o", "r.json", "--batch-size", "two"), ("--batch-size", "'two'")),
])
def test_argument_errors_are_one_line_rc_1(capsys, argv, words):
    rc, out, err = cli(capsys, *argv)
    assert_clean_error(rc, err, *words)
    assert out == "" and "usage" not in err


def test_passes_lists_options_with_defaults(capsys):
    rc, out, _ = cli(capsys, "passes")
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("fold-constants "))
    assert lines[at + 1].split() == ["max-size:", "int", "=", "16777216"]
    at = next(i for i, line in enumerate(lines) if line.startswith("calibrate "))
    block = "\n".join(lines[at + 1:at + 8])
    assert "method: minmax|percentile|entropy|mse = 'minmax'" in block and "percentile: float (optional) = None" in block


def test_subprocess_debug_shows_traceback(tmp_path):
    data = open(EXAMPLE, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    p = cli_subprocess("--debug", "inspect", cut)
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ModelLoadError" in p.stderr, p.stderr


def test_verbose_logs_each_stage_with_its_time(capsys, tmp_path):
    rc, out, err = cli(capsys, "-v", "compile", os.path.join(REPO, "golden/models/digits_cnn.onnx"), "--calib",
                       os.path.join(REPO, "golden/data/digits_calib.npz"), "-o", tmp_path / "o", "--target", "cpu")
    assert rc == 0, err
    stages = [line.split(": in ")[0] for line in err.splitlines() if ": in " in line]
    assert stages[-3:] == ["qgraph: lower to TVM Relax", "qgraph: tvm.compile (cpu)", "qgraph: export the TVM library"]
    assert re.search(r"^qgraph: calibrate: 128 samples in \d+\.\d\d s$", err, re.M), err
    rc, _, err = cli(capsys, "compile", os.path.join(REPO, "golden/models/digits_cnn.onnx"), "--calib",
                     os.path.join(REPO, "golden/data/digits_calib.npz"), "-o", tmp_path / "o")
    assert rc == 0 and "in 0." not in err and "calibrate:" not in err  # quiet without -v
