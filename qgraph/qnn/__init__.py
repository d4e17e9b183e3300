"""The Qualcomm HTP emulator (ONNX Runtime's QNN execution provider), in one place.

Every QNN session runs in a worker process (``worker.py``), one per configuration: QNN's
backend settings (``htp_arch``, the backend library) leak between sessions of one process,
and the HTP's libraries print to stdout. The worker's interpreter is ``$QGRAPH_QNN_PYTHON``,
else this one if ``onnxruntime_qnn`` is importable here, else there is none (``available()``
is False and the ``qnn`` backend says how to get one).

``onnxruntime-qnn`` 2.x (the ``qnn`` extra, 2.7.0) is a plugin EP: it ships only
``onnxruntime_qnn`` and runs on the plain ``onnxruntime``, so it can share qgraph's
environment; the 1.x wheels shipped an ``onnxruntime`` of their own, which would replace the
plain one: give those an environment of their own and name its Python in
``QGRAPH_QNN_PYTHON`` (the worker needs only numpy and onnxruntime there).

    from qgraph import qnn
    outs = qnn.run_qnn(qdq_model, feeds)                  # the QDQ export on the HTP emulator
    with qnn.QnnSession(qdq_model, shapes) as s: s.placement  # which ops run on the HTP
    qnn.write_context(qdq_model, shapes, "model.qnn_ctx.onnx")  # a QNN context binary

What the emulator needs of a model (static shapes, the target's quantization rules) is
prepared here (``static_model``); the rules themselves are ``qgraph.targets.qnn``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from qgraph import batching
from qgraph.errors import QGraphError

if TYPE_CHECKING:
    from qgraph.ir.core import Model

#: The environment variable naming the Python that has ``onnxruntime-qnn``.
PYTHON_ENV = "QGRAPH_QNN_PYTHON"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
#: What to do to get a QNN environment (errors and skips say it).
HOW_TO_GET = (f"install qgraph's qnn extra (pip install -e '.[qnn]': onnxruntime-qnn 2.7.0), or set {PYTHON_ENV} to "
              "a Python that has onnxruntime-qnn and numpy (e.g. python3 -m venv /opt/qnn && /opt/qnn/bin/pip install "
              "onnxruntime-qnn==2.7.0 numpy)")
#: Samples per run where the model's batch dim is symbolic (HTP graphs are static: one size per session).
QNN_BATCH = 16


class QnnError(QGraphError):
    """The QNN environment is missing, or the QNN EP refused or failed a model."""


def qnn_python() -> str | None:
    """The interpreter that runs ``worker.py``: ``$QGRAPH_QNN_PYTHON``, else this one where
    ``onnxruntime_qnn`` is importable, else None."""
    env = os.environ.get(PYTHON_ENV)
    if env:
        return env
    if importlib.util.find_spec("onnxruntime_qnn") is not None:
        return sys.executable
    return None


def available() -> bool:
    """Whether a QNN environment is configured and its interpreter exists."""
    py = qnn_python()
    return py is not None and os.path.exists(py)


def _require_python() -> str:
    py = qnn_python()
    if py is None:
        raise QnnError(f"backend 'qnn' needs onnxruntime-qnn, which is not installed here: {HOW_TO_GET}")
    if not os.path.exists(py):
        raise QnnError(f"{PYTHON_ENV}={py}: no such interpreter; {HOW_TO_GET}")
    return py


def provider_options(htp_arch: int | None = None, io: bool = True) -> dict[str, str]:
    """The QNN EP options of the ``qnn`` target: the HTP backend at its ``htp_arch``
    (explicit: the EP's default v68 is off by up to 23 LSB on 16-bit activations); ``io``:
    the graph's input Q and output DQ run on the HTP too (the EP leaves them to the CPU by
    default, ``offload_graph_io_quantization``)."""
    from qgraph.targets.qnn import HTP_ARCH

    opts = {"backend_type": "htp", "htp_arch": str(htp_arch or HTP_ARCH)}
    if io:
        opts["offload_graph_io_quantization"] = "0"
    return opts


# -- the model as the HTP takes it ------------------------------------------------------------
def static_model(model: "Model", shapes: Mapping[str, Sequence[int]]) -> bytes:
    """``model`` with its inputs given the static ``shapes``, its shape arithmetic folded
    (``Shape`` -> ``Slice`` -> ``Concat`` -> ``Reshape`` chains become constants: the HTP does
    not run int64 shape ops, which would stay on the CPU) and every value's shape inferred
    (the QNN EP refuses a node whose shapes it cannot get), serialized. Q / DQ of constants
    are never folded (``fold-constants``)."""
    import onnx

    from qgraph.ir.types import TensorType
    from qgraph.onnx import to_proto
    from qgraph.passes import registry
    from qgraph.pm import PassManager

    m = model.clone()
    for v in m.graph.inputs:
        if v.name in shapes:
            v.type = TensorType(v.type.dtype, tuple(int(d) for d in shapes[v.name]))
    PassManager(registry().parse("infer-shapes,fold-constants,dead-code-elimination,infer-shapes")).run(m)
    proto = to_proto(m)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as e:  # shape inference is best effort: the EP names what it still lacks
        raise QnnError(f"the QNN EP needs static shapes; ONNX shape inference failed: {str(e).splitlines()[0]}") from e
    return proto.SerializeToString()


# -- where each node ran ----------------------------------------------------------------------
_VERDICT = re.compile(r"Validation (PASSED|FAILED) for \d+ nodes in \w+")
_UNIT_NODE = re.compile(r"Operator type: (\S+) Node name: (.*) Node index")
_REASON = re.compile(r"REASON : (.*)")

HTP, CPU = "HTP", "CPU"


@dataclass
class Placement:
    """Where the QNN EP put each node of the QDQ model: node name -> ``HTP`` or ``CPU``.

    Read from the session's verbose log: the EP validates every node unit (a DQ -> op -> Q
    group, or a lone node) and says PASSED or FAILED with a reason; a node no unit names
    ran on ONNX Runtime's CPU EP. ``htp_share`` counts every node, Q / DQ included.
    """

    where: dict[str, str] = field(default_factory=dict)
    op_types: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)

    @property
    def htp_share(self) -> float:
        return sum(p == HTP for p in self.where.values()) / len(self.where) if self.where else 0.0

    def on_cpu(self) -> list[str]:
        return [n for n, p in self.where.items() if p != HTP]

    def to_json(self) -> dict:
        return {"htp_share": self.htp_share, "where": dict(self.where), "cpu_reasons": dict(self.reasons),
                "folded": list(self.folded)}


def parse_placement(log: str, node_types: Mapping[str, str]) -> Placement:
    """The placement of the nodes ``node_types`` (name -> op type) from a verbose ORT log."""
    out = Placement(where={n: CPU for n in node_types}, op_types=dict(node_types))
    verdict, members = None, []

    def close():
        for name in members:
            if name in out.where:
                out.where[name] = HTP if verdict == "PASSED" else CPU

    for line in log.splitlines():
        m = _VERDICT.search(line)
        if m is not None:
            close()
            verdict, members = m.group(1), []
            continue
        if verdict is None:
            continue
        m = _UNIT_NODE.search(line)
        if m is not None:
            members.append(m.group(2).strip())
            continue
        m = _REASON.search(line)
        if m is not None and verdict == "FAILED":
            for name in members:
                out.reasons[name] = m.group(1).strip()
            continue
        if line.strip() == "" or "]" in line[:60]:  # a blank line or the next log record ends the unit
            close()
            verdict, members = None, []
    close()
    for name in out.where:
        if out.where[name] == HTP:
            out.reasons.pop(name, None)
    return out


# -- a worker -----------------------------------------------------------------------------------
class QnnSession:
    """One worker process holding one QNN EP session of ``model`` at static input ``shapes``.

    Args:
        model: a QDQ qgraph ``Model``, or the path of an ONNX file to load as it is (a QNN
            context binary, ``write_context``; ``shapes`` is then unused).
        shapes: input name -> static shape.
        htp_arch: the HTP version (default ``qgraph.targets.qnn.HTP_ARCH``).
        fallback: let nodes the HTP does not take run on ONNX Runtime's CPU EP; False sets
            ``session.disable_cpu_ep_fallback`` (such a node is then an error).
        session_config: further session config entries (``ep.context_enable`` ...).
    """

    def __init__(self, model: "Model | str", shapes: Mapping[str, Sequence[int]], *, htp_arch: int | None = None,
                 fallback: bool = True, session_config: Mapping[str, str] | None = None, what: str = "backend 'qnn'"):
        self.what = what
        import onnx

        py = _require_python()
        if isinstance(model, (str, os.PathLike)):  # a saved model as it is (a context binary)
            with open(model, "rb") as f:
                data = f.read()
            model = None
        else:
            data = static_model(model, shapes)
        #: the nodes the EP sees (name -> op type); ``folded``: nodes of ``model`` computed at
        #: compile time (shape arithmetic on static shapes), which run nowhere
        self.node_types = {n.name: n.op_type for n in onnx.load_from_string(data).graph.node}
        self.folded = [n.name for n in model.graph if n.name not in self.node_types] if model is not None else []
        self._dir = tempfile.TemporaryDirectory(prefix="qgraph-qnn-")
        path = os.path.join(self._dir.name, "model.onnx")
        with open(path, "wb") as f:
            f.write(data)
        config = dict(session_config or {})
        if not fallback:
            config["session.disable_cpu_ep_fallback"] = "1"
        self._log = os.path.join(self._dir.name, "ort.log")
        req = {"model": path, "provider_options": provider_options(htp_arch, io=True), "session_config": config,
               "log": self._log}
        with open(os.path.join(self._dir.name, "request.json"), "w") as f:
            json.dump(req, f)
        self._proc = subprocess.Popen([py, WORKER, os.path.join(self._dir.name, "request.json")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      env=_worker_env())
        hello = self._proc.stdout.readline()
        try:
            info = json.loads(hello.decode() or "{}")
        except ValueError:
            info = {}
        if not info.get("ok"):
            self.failure_log = self.log()
            self.close()
            why = info.get("error") or f"the worker exited ({self._proc.returncode}) without a word; {HOW_TO_GET}"
            raise QnnError(f"{what}: the QNN EP cannot load the model: {why.splitlines()[0]}")
        self.outputs: list[str] = info["outputs"]
        self.placement = parse_placement(self.log(), self.node_types)
        self.placement.folded = list(self.folded)

    def log(self) -> str:
        try:
            with open(self._log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in feeds.items()})
        data = buf.getvalue()
        try:
            self._proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self._proc.stdin.flush()
            (n,) = struct.unpack("<Q", _read(self._proc.stdout, 8))
            payload = _read(self._proc.stdout, n)
        except (OSError, EOFError, struct.error) as e:
            raise QnnError(f"{self.what}: the QNN worker died (exit code {self._proc.poll()})") from e
        with np.load(io.BytesIO(payload)) as z:
            out = {k: z[k] for k in z.files}
        if "__error__" in out:
            raise QnnError(f"{self.what}: the QNN EP failed: {str(out['__error__']).splitlines()[0]}")
        return out

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(struct.pack("<Q", 0))
                self._proc.stdin.flush()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._dir.cleanup()

    def __enter__(self) -> "QnnSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_env() -> dict[str, str]:
    """This environment without ``PYTHONPATH`` / ``PYTHONHOME``: they point at qgraph's
    environment, whose packages must not shadow the QNN environment's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _read(stream, n: int) -> bytes:
    chunks = []
    while n:
        b = stream.read(n)
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


# -- running and exporting --------------------------------------------------------------------
def batch_shapes(model: "Model", feeds: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    """The shapes ``run_in_batches`` runs ``model`` at on ``feeds``: the model's fixed batch,
    else ``QNN_BATCH`` samples (fewer when fewer are given), other dims as fed."""
    axes = batching.model_axes(model)
    declared = batching.input_shapes(model)
    fixed = batching.fixed_batch(declared, axes)
    n = batching.sample_count(model, feeds)
    b = fixed or max(1, min(n, QNN_BATCH))
    out = {}
    for name, a in feeds.items():
        shape = list(np.shape(a))
        ax = axes.get(name)
        if ax is not None and ax < len(shape):
            shape[ax] = b
        out[name] = tuple(shape)
    return out


def static_shapes(model: "Model", given: Mapping[str, Sequence[int]] | None = None,
                  batch_size: int = 1) -> dict[str, list[int]]:
    """The static input shapes a context binary is compiled for: ``given`` (``--input-shape``),
    else the declared ones with a symbolic batch dim (at the input's sample axis) set to
    ``batch_size``.

    Raises:
        QnnError: another dim is symbolic and not given.
    """
    given = dict(given or {})
    axes = batching.model_axes(model)
    out = {}
    for v in batching.fed_inputs(model):
        if v.name in given:
            out[v.name] = list(given[v.name])
            continue
        dims = list(v.shape or ())
        k = axes.get(v.name)
        for i, d in enumerate(dims):
            if not batching.is_fixed(d):
                if i != k:
                    raise QnnError(f"--target qnn: input '{v.name}' {list(dims)} has a symbolic dim {i}; the HTP "
                                   f"compiles static shapes: give --input-shape {v.name}=D0,D1,...")
                dims[i] = batch_size
        out[v.name] = dims
    return out


def run_qnn(model: "Model", feeds: Mapping[str, np.ndarray], *, probe: "Model | None" = None,
            htp_arch: int | None = None, what: str = "backend 'qnn'") -> dict[str, np.ndarray]:
    """Run the QDQ ``model`` on the HTP emulator on any number of samples (one worker per
    input shape, batches padded to one size)."""
    shapes = batch_shapes(model, feeds)
    sessions: dict[tuple, QnnSession] = {}

    def run(batch: dict) -> dict:
        key = tuple(sorted((k, np.shape(v)) for k, v in batch.items()))
        s = sessions.get(key)
        if s is None:
            s = sessions[key] = QnnSession(model, {k: np.shape(v) for k, v in batch.items()}, htp_arch=htp_arch,
                                           what=what)
        return s.run(batch)

    try:
        return batching.run_model(model, run, feeds, what=what, shapes=shapes, probe=probe)
    finally:
        for s in sessions.values():
            s.close()


def write_context(model: "Model", shapes: Mapping[str, Sequence[int]], path: str, *,
                  htp_arch: int | None = None) -> Placement:
    """Compile ``model`` for the HTP at static ``shapes`` and write the QNN context binary,
    embedded in an ONNX wrapper (``EPContext`` nodes) at ``path`` (``ep.context_enable``);
    nodes the HTP does not take stay ONNX nodes there, for the CPU. Returns the placement."""
    config = {"ep.context_enable": "1", "ep.context_file_path": os.path.abspath(path), "ep.context_embed_mode": "1"}
    with QnnSession(model, shapes, htp_arch=htp_arch, session_config=config, what="--target qnn") as s:
        placement = s.placement
    if not os.path.exists(path):
        raise QnnError(f"--target qnn: the QNN EP wrote no context binary at {path}")
    return placement


__all__ = ["HOW_TO_GET", "PYTHON_ENV", "Placement", "QnnError", "QnnSession", "available", "batch_shapes",
           "parse_placement", "provider_options", "qnn_python", "run_qnn", "static_model", "static_shapes",
           "write_context"]
