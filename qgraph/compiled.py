"""The compiled folder: what ``qgraph compile`` / ``QuantizedModel.save`` write, and its reader.

    OUTDIR/model.float.onnx   L1, the float model (the reference)
    OUTDIR/model.qdq.onnx     L2, standard QDQ ONNX
    OUTDIR/model.qgraph.onnx  L3, integer ops in the qgraph domain
    OUTDIR/ranges.json, config.json, report.json / .md / .html
    OUTDIR/tvm/               a TVM build (``qgraph compile --target cpu``), if any
    OUTDIR/model.qnn_ctx.onnx a QNN context binary (``qgraph compile --target qnn``), if any

The file names are defined here once; ``CompiledDir`` reads a folder back and runs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph import batching
from qgraph.backends import run_backend
from qgraph.errors import QGraphError
from qgraph.ir.core import Model
from qgraph.ort import run_ort

#: Files ``QuantizedModel.save`` writes into its folder.
FLOAT_FILE = "model.float.onnx"
QDQ_FILE = "model.qdq.onnx"
L3_FILE = "model.qgraph.onnx"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
RANGES_FILE = "ranges.json"
CONFIG_FILE = "config.json"
#: The QNN context binary ``qgraph compile --target qnn`` writes (an ONNX model of one EPContext node).
QNN_CONTEXT_FILE = "model.qnn_ctx.onnx"
#: The subfolder ``save`` exports a TVM build into (``qgraph.tvm.load`` reads it).
TVM_DIR = "tvm"


def remove_build(outdir: str) -> None:
    """Delete the files a TVM export wrote into ``outdir/tvm/`` (and the folder, if left empty)."""
    from qgraph.tvm.build import LIBRARY_FILE, META_FILE, OBJECTS_FILE, PROGRAM_FILE

    folder = os.path.join(outdir, TVM_DIR)
    if not os.path.isdir(folder):
        return
    from qgraph.tvm.gpu.build import GPU_FILES

    for name in (LIBRARY_FILE, OBJECTS_FILE, PROGRAM_FILE, META_FILE) + GPU_FILES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    if not os.listdir(folder):
        os.rmdir(folder)


def saved_batch_axes(path: str) -> dict:
    """The ``batch_axes`` of the folder's ``config.json`` (the models record the same in their
    metadata; the file wins, so that editing it is enough)."""
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config):
        return {}
    try:
        with open(config) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise QGraphError(f"{config}: not readable JSON ({e}); rerun `qgraph compile` into {path}") from e
    axes = saved.get("batch_axes") if isinstance(saved, dict) else None
    return batching.parse_mapping(axes, f"{config}: batch_axes") if axes else {}


@dataclass
class CompiledDir:
    """A folder written by ``qgraph compile`` / ``QuantizedModel.save``, read back.

    The TVM build (``tvm/``, written by ``qgraph compile --target cpu``) is loaded on first
    use (``tvm_build``).
    """

    path: str
    float_model: Model
    qdq: Model
    integer: Model
    report: dict | None
    _compiled: Any = field(default=None, repr=False)
    #: ``qgraph run --device``: the OpenCL device of backend ``opencl`` (index or name part).
    device: Any = None

    @classmethod
    def load(cls, path: str) -> "CompiledDir":
        from qgraph.onnx import load

        if not os.path.isdir(path):
            raise QGraphError(f"{path}: not a folder written by `qgraph compile`")
        missing = [f for f in (FLOAT_FILE, QDQ_FILE, L3_FILE) if not os.path.exists(os.path.join(path, f))]
        if missing:
            raise QGraphError(f"{path}: missing {', '.join(missing)}; rerun `qgraph compile` into this folder")
        report = None
        if os.path.exists(os.path.join(path, REPORT_JSON)):
            with open(os.path.join(path, REPORT_JSON)) as f:
                report = json.load(f)
        c = cls(path, load(os.path.join(path, FLOAT_FILE)), load(os.path.join(path, QDQ_FILE)),
                load(os.path.join(path, L3_FILE)), report)
        c.set_batch_axes(saved_batch_axes(path))
        return c

    @property
    def has_build(self) -> bool:
        """Whether the folder holds a TVM build (``tvm/model.json``)."""
        from qgraph.tvm.build import META_FILE

        return os.path.exists(os.path.join(self.path, TVM_DIR, META_FILE))

    def build_info(self) -> dict:
        """The TVM build's description (``tvm/model.json``: target, inputs, outputs, library)."""
        from qgraph.tvm.build import META_FILE

        if not self.has_build:
            raise QGraphError(self._no_build())
        with open(os.path.join(self.path, TVM_DIR, META_FILE)) as f:
            return json.load(f)

    def _no_build(self) -> str:
        return (f"{self.path}: no TVM build (no {TVM_DIR}/model.json); recompile with "
                f"`qgraph compile MODEL --calib DATA -o {self.path} --target cpu` to run backend 'tvm'")

    def tvm_build(self):
        """The TVM build, loaded (``qgraph.tvm.load``) once.

        Raises:
            QGraphError: no build in the folder, or one for a target that does not run here.
        """
        if self._compiled is None:
            if not self.has_build:
                raise QGraphError(self._no_build())
            from qgraph import tvm as qtvm
            from qgraph.tvm.build import LIBRARY_FILE, PROGRAM_FILE

            info = self.build_info()
            if info.get("library") not in (LIBRARY_FILE, PROGRAM_FILE):
                raise QGraphError(f"{self.path}: the TVM build is for target '{info.get('target')}' "
                                  f"({info.get('library')}: object files to link on the device); it does not run "
                                  "here; recompile with --target cpu to run it on this machine")
            if info.get("target") == "cpu":
                from qgraph.targets import get

                here = json.loads(json.dumps(dict(get("cpu").tvm_dict)))
                if info.get("tvm_target") != here:
                    raise QGraphError(f"{self.path}: the TVM build is for another CPU ({info.get('tvm_target')}; this "
                                      f"one is {here}); recompile here with --target cpu")
            self._compiled = qtvm.load(os.path.join(self.path, TVM_DIR))
            if not self._compiled.target.runnable:
                self._compiled = None
                raise QGraphError(f"{self.path}: the TVM build is for target '{info.get('target')}', which does not "
                                  "run on this machine (a Hexagon build needs qemu-hexagon, clang and ld.lld: "
                                  "apt-get install qemu-user-static clang lld); recompile with --target cpu")
        return self._compiled

    def set_batch_axes(self, axes: Mapping[str, int | None] | None) -> None:
        """Run with these sample axes (input name -> axis, or None: no sample axis) over the
        ones the folder's models record (``qgraph run --batch-axis``)."""
        for m in (self.float_model, self.qdq, self.integer):
            batching.set_model_axes(m, axes)

    def run(self, feeds: Mapping[str, np.ndarray], backend: str = "reference") -> dict[str, np.ndarray]:
        """Run the folder's models on any number of samples; ``backend`` as in
        ``QuantizedModel.run`` (``tvm`` runs the exported build)."""
        from qgraph.backends import GPU_BACKENDS

        compiled = self.tvm_build() if backend in ("tvm", "hexagon") else self.gpu_build(backend) \
            if backend in GPU_BACKENDS else None
        return run_backend(backend, feeds, float_model=self.float_model, qdq=self.qdq, integer=self.integer,
                           compiled=compiled)

    def gpu_build(self, backend: str):
        """The GPU build of ``qgraph compile --target opencl / cuda`` (``OUTDIR/tvm/``), loaded
        for ``backend`` (``opencl``: pyopencl on ``self.device``; ``cuda``: TVM's CUDA runtime).

        Raises:
            QGraphError: no GPU build in the folder, or one for the other backend.
        """
        from qgraph.tvm.gpu.build import load_gpu

        if self._compiled is None or getattr(self._compiled, "kind", None) != backend:
            build = load_gpu(os.path.join(self.path, TVM_DIR), self.device)
            if build.kind != backend:
                raise QGraphError(f"{self.path}: the build is for target '{build.target.name}' ({build.kind}); "
                                  f"run it with --backend {build.kind}, or recompile with --target {backend}")
            self._compiled = build
        return self._compiled

    @property
    def target(self) -> str | None:
        """The target the folder was compiled for (``config.json``'s, else the report's), or None."""
        config = os.path.join(self.path, CONFIG_FILE)
        try:
            with open(config) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        found = saved.get("target") if isinstance(saved, dict) else None
        return found or ((self.report or {}).get("summary") or {}).get("target")

    def run_float(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float model in ONNX Runtime, on any number of samples."""
        return run_ort(self.float_model, feeds, what="the float model (ONNX Runtime)")
