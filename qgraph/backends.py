"""The backends a quantized model runs on, and the one place they are dispatched.

``reference`` (L3 in the numpy integer interpreter), ``ort`` (the QDQ export in ONNX
Runtime as it runs by default), ``ort-sim`` (the QDQ export with Q/DQ fusion off: the float
simulation), ``tvm`` (a TVM build), ``qnn`` (the QDQ export on the Qualcomm HTP emulator,
ONNX Runtime's QNN EP in its own environment: ``qgraph.qnn``), ``opencl`` (a GPU build's OpenCL
kernels through pyopencl), ``cuda`` (a GPU build on TVM's CUDA runtime) and ``hexagon`` (a
Hexagon build, ``--target hexagon``: the whole integer program under qemu-hexagon).
``QuantizedModel.run``, ``CompiledDir.run`` and the CLI's ``--backend`` read ``BACKENDS`` from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from qgraph import batching
from qgraph.errors import QGraphError
from qgraph.ort import run_ort

if TYPE_CHECKING:
    from qgraph.ir.core import Model

BACKENDS = ("reference", "ort", "ort-sim", "tvm", "qnn", "opencl", "cuda", "hexagon")

#: The backends that run a GPU build (``qgraph compile --target opencl / cuda``).
GPU_BACKENDS = ("opencl", "cuda")


def interpreter(integer: "Model"):
    """The reference interpreter of the L3 model (``qgraph.reference.Interpreter``)."""
    from qgraph.reference import Interpreter

    return Interpreter(integer)


def run_backend(backend: str, feeds: Mapping[str, np.ndarray], *, float_model: "Model", qdq: "Model",
                integer: "Model", compiled: Any = None, reference: Any = None) -> dict[str, np.ndarray]:
    """Run one level of a quantized model on ``backend``, on any number of samples.

    Args:
        backend: one of ``BACKENDS``.
        feeds: one array per model input, samples on each input's sample axis.
        float_model: the float model, whose outputs tell their sample axes (the probe).
        qdq: the QDQ model (``ort``, ``ort-sim``, ``qnn``).
        integer: the L3 model (``reference``; its batch axes for ``tvm``).
        compiled: the TVM build (``tvm``), or None.
        reference: an ``interpreter(integer)`` to reuse, or None (one is made).

    Raises:
        QGraphError: unknown backend, ``tvm`` without a build, or feeds that do not fit
            (NaN / Inf included: ``batching.check_finite``).
    """
    if backend in BACKENDS:
        batching.check_finite(feeds, batching.model_axes(integer), f"backend '{backend}'")
    if backend == "reference":
        interp = reference if reference is not None else interpreter(integer)
        return batching.run_model(integer, interp.run, feeds, what="backend 'reference'", probe=float_model)
    if backend in ("ort", "ort-sim"):
        return run_ort(qdq, feeds, simulate=backend == "ort-sim", probe=float_model, what=f"backend '{backend}'")
    if backend in GPU_BACKENDS:
        if compiled is None:
            raise QGraphError(f"backend '{backend}': this model has no {backend} build; compile with --target {backend}")
        return run_batched(compiled, feeds, model=integer, probe=float_model)
    if backend == "tvm":
        if compiled is None:
            raise QGraphError("backend 'tvm': this model has no TVM build; call build(target='cpu') first")
        return run_batched(compiled, feeds, model=integer, probe=float_model)
    if backend == "qnn":
        from qgraph.qnn import run_qnn

        return run_qnn(qdq, feeds, probe=float_model, what="backend 'qnn'")
    if backend == "hexagon":
        if compiled is None or not str(compiled.target.tvm_dict.get("mtriple", "")).startswith("hexagon"):
            raise QGraphError("backend 'hexagon': this model has no Hexagon build; compile it with --target hexagon "
                              "(build(target='hexagon') in Python) first")
        return run_batched(compiled, feeds, model=integer, probe=float_model)
    raise QGraphError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def run_batched(compiled, feeds: Mapping[str, np.ndarray], model: Model | None = None,
                probe: Model | None = None) -> dict[str, np.ndarray]:
    """Run a TVM build (static shapes) on feeds of any number of samples.

    The samples (on each input's sample axis, as ``model`` records them; axis 0 without a
    model) are split into batches of the compiled batch size B (the compiled dim at the
    sample axes): ``qgraph.batching.run_in_batches``, which pads a short last batch and drops
    the padding's outputs.

    Args:
        compiled: a ``qgraph.tvm.Compiled`` that runs on this machine.
        feeds: one array per compiled input, each of the compiled shape but for the sample axis.
        model: the model the build was made from (its batch axes); default: axis 0 for every
            input of rank >= 1.
        probe: the float model whose outputs tell their sample axes (``probe_output_axes``).

    Raises:
        QGraphError: feeds that do not match the compiled inputs (names the input, its
            expected and given shapes), or outputs whose sample axis cannot be told.
    """
    shapes = {s.name: tuple(s.shape) for s in compiled.inputs}
    if not shapes:
        return compiled.run({})
    axes = batching.resolve(shapes, batching.declared_axes(model) if model is not None else None)
    extra = [k for k in feeds if k not in shapes]
    if extra:
        raise QGraphError(f"backend 'tvm': unknown input '{extra[0]}'; the compiled inputs are "
                          f"{', '.join(repr(n) for n in shapes)}")

    known: list[dict] = []

    def probed() -> dict:
        if not known:
            known.append(batching.probe_output_axes(probe, axes) if probe is not None else {})
        return known[0]

    def batches(run) -> dict[str, np.ndarray]:
        return batching.run_in_batches(run, feeds, shapes, axes, output_axes=probed, what="backend 'tvm'")

    many = getattr(compiled, "run_many", None)
    if many is None:
        return batches(compiled.run)
    # a build that runs every batch in one process (Hexagon: one qemu-hexagon start, not one per
    # batch): the batches are collected first, with placeholder outputs, then replayed
    records: list[dict] = []

    def record(batch):
        records.append({k: np.array(v) for k, v in batch.items()})
        return compiled.empty_outputs()

    batches(record)
    results = iter(many(records))
    return batches(lambda _batch: next(results))
