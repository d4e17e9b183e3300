"""Sensitivity: how much the model's outputs change when one layer alone takes one format.

For unit ``u`` and format ``f`` the *probe model* is the float model with ``u``'s weights
replaced by their dequantized ``f`` form and ``u``'s output tensors fake-quantized with the
parameters ``insert-qdq`` gives them in ``f`` (``QuantizeLinear`` then ``DequantizeLinear``
written as the float ops they are: divide, round half to even, add the zero point, clip,
subtract, multiply). Everything else stays float, so the probe's outputs differ from the
float model's by exactly what ``u`` in ``f`` does, with nothing linearized. The damage is the
channel-normalized noise-to-signal ratio of each output (``qgraph.verify.metrics.channel_nsr``);
``float`` costs nothing by definition.

Each probe is one forward pass of the model over the sensitivity samples, independent of
every other: an executor (``qgraph.precision.executor``) runs them in this process or on a
Ray cluster. Results are cached on disk per (model, data, unit, format).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.precision.units import Effect, Unit
from qgraph.quant.params import QuantParams

CACHE_VERSION = 2  # 2: the channel axis is the shortest one


@dataclass
class Shared:
    """What every probe of one sweep reads: the float model (ONNX bytes, so it travels to
    other processes), the sensitivity feeds, the float outputs on them, their sample axes."""

    model_bytes: bytes
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    output_axes: dict[str, int]
    threads: int | None = None

    _model: Any = None
    _digest: str | None = None

    def model(self) -> Model:
        """The float model; imported from ``model_bytes`` at most once per process and model
        (a Ray worker unpickles a new ``Shared`` for every task it runs)."""
        global _imported
        if self._model is None:
            if _imported is None or _imported[0] != self.digest():
                from qgraph.onnx import from_proto
                import onnx

                _imported = (self.digest(), from_proto(onnx.load_model_from_string(self.model_bytes)))
            self._model = _imported[1]
        return self._model

    def digest(self) -> str:
        """SHA-256 of ``model_bytes``, computed once and pickled with the rest."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.model_bytes).hexdigest()
        return self._digest

    def __getstate__(self):
        self.digest()  # hash once here, not in every task that unpickles it
        state = dict(self.__dict__)
        state["_model"] = None  # a worker imports it from model_bytes (ONNX travels; the IR need not)
        return state


# The model the last ``Shared.model()`` imported in this process, by digest: one entry, so a
# long-lived process (a Ray worker, a notebook) holds one float model, not one per sweep. A
# probe clones it (``probe_model``) and never changes it.
_imported: tuple[str, Model] | None = None


@dataclass
class Task:
    unit: Unit
    format: str
    effect: Effect


def probe_model(model: Model, unit: Unit, eff: Effect) -> Model:
    """A copy of float ``model`` where only ``unit`` takes the effect of one format."""
    m = model.clone()
    g = m.graph
    by_name = {n.name: n for n in g if n.name}
    node = by_name[unit.name]
    for k, w in eff.weights.items():
        node.replace_input(k, g.add_initializer(f"{unit.name}/fq_input{k}", w))
    for (name, index), params in eff.outputs.items():
        n = by_name[name]
        if index < len(n.outputs) and n.outputs[index] is not None:
            _fake_quantize(g, n, n.outputs[index], params, m.opset("") or 13)
    return m


def _fake_quantize(g, producer: Node, t: Value, p: QuantParams, opset: int) -> Value:
    """Insert ``DequantizeLinear(QuantizeLinear(t))`` as float ops after ``producer``; every
    reader of ``t`` (a graph output too, by name) reads the result."""
    readers = t.uses()  # before the chain below reads t too
    base = g.unique_name(f"{t.name}/fq")
    scale = g.add_initializer(base + "_scale", np.asarray(p.scale, np.float32).reshape(()))
    zp = g.add_initializer(base + "_zero_point", np.asarray(p.zero_point, np.float32).reshape(()))
    lo, hi = float(p.dtype.qmin), float(p.dtype.qmax)
    div = Node(ops.Div, [t, scale], [Value(base + "_div")])
    rnd = Node(ops.op("Round"), [div.outputs[0]], [Value(base + "_round")])
    add = Node(ops.Add, [rnd.outputs[0], zp], [Value(base + "_shift")])
    if opset >= 11:
        clip = Node(ops.Clip, [add.outputs[0], g.add_initializer(base + "_qmin", np.float32(lo)),
                               g.add_initializer(base + "_qmax", np.float32(hi))], [Value(base + "_clip")])
    else:
        clip = Node(ops.Clip, [add.outputs[0]], [Value(base + "_clip")], {"min": lo, "max": hi})
    sub = Node(ops.Sub, [clip.outputs[0], zp], [Value(base + "_unshift")])
    out = Value(base + "_out", t.type)
    mul = Node(ops.Mul, [sub.outputs[0], scale], [out])
    g.insert_after(producer, [div, rnd, add, clip, sub, mul])
    for n, i in readers:
        n.replace_input(i, out)
    if t.is_graph_output():
        name = t.name
        t.name = g.unique_name(name + "/float")
        g.outputs.replace(t, out)
        out.name = name
    return out


def damage(reference: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
           output_axes: Mapping[str, int]) -> dict[str, float]:
    """Per output, ``channel_nsr`` of ``test`` against ``reference``."""
    from qgraph.verify.metrics import channel_nsr

    return {k: channel_nsr(reference[k], test[k], output_axes.get(k, 0)) for k in reference}


def evaluate(shared: Shared, task: Task) -> dict[str, float]:
    """One probe: the damage of ``task.unit`` in ``task.format`` (runs anywhere)."""
    from qgraph.ort import run_ort

    model = shared.model()
    probe = probe_model(model, task.unit, task.effect)
    out = run_ort(probe, shared.feeds, threads=shared.threads, probe=model,
                  what=f"the sensitivity probe of '{task.unit.name}' in {task.format}")
    return damage(shared.reference, out, shared.output_axes)


# -- cache -------------------------------------------------------------------------------------------

def cache_dir() -> str:
    """``$QGRAPH_CACHE_DIR`` or ``~/.cache/qgraph``, then ``sensitivity/``."""
    root = os.environ.get("QGRAPH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "qgraph")
    return os.path.join(root, "sensitivity")


def sweep_key(shared: Shared) -> str:
    """A digest of what every probe of a sweep shares: the float model and the feeds."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}".encode())
    h.update(hashlib.sha256(shared.model_bytes).digest())
    for k in sorted(shared.feeds):
        a = np.ascontiguousarray(shared.feeds[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(hashlib.sha256(a.tobytes()).digest())
    return h.hexdigest()[:24]


def task_key(task: Task) -> str:
    """A digest of one probe: the unit, the format and exactly what it changes."""
    h = hashlib.sha256(f"{task.unit.name}|{task.format}".encode())
    for k in sorted(task.effect.weights):
        h.update(str(k).encode() + hashlib.sha256(np.ascontiguousarray(task.effect.weights[k]).tobytes()).digest())
    for (name, i), p in sorted(task.effect.outputs.items()):
        h.update(f"{name}:{i}:{p.dtype.name}:{float(p.scale)!r}:{int(p.zero_point)}".encode())
    return h.hexdigest()[:24]


class Cache:
    """Damages by ``task_key``, one JSON file per ``sweep_key``; ``None`` key: no cache."""

    def __init__(self, key: str | None):
        self.path = None if key is None else os.path.join(cache_dir(), key + ".json")
        self.data: dict[str, dict[str, float]] = {}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    self.data = json.load(f)
            except (OSError, ValueError):
                self.data = {}

    def get(self, task: Task) -> dict[str, float] | None:
        return self.data.get(task_key(task))

    def put(self, task: Task, value: dict[str, float]) -> None:
        self.data[task_key(task)] = value

    def save(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)
