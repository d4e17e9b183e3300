"""Sensitivity: how much the model's outputs change when one layer alone takes one format.

For unit ``u`` and format ``f`` the *probe model* is the float model with ``u``'s weights
replaced by their dequantized ``f`` form and ``u``'s output tensors fake-quantized with the
parameters ``insert-qdq`` gives them in ``f`` (``QuantizeLinear`` then ``DequantizeLinear``
written as the float ops they are: divide, round half to even, add the zero point, clip,
subtract, multiply). Everything else stays float, so the probe's outputs differ from the
float model's by exactly what ``u`` in ``f`` does, with nothing linearized. The damage is the
channel-normalized noise-to-signal ratio of each output (``qgraph.verify.metrics.channel_nsr``);
``float`` costs nothing by definition.

Each probe is one forward pass over the sensitivity samples, independent of every other: an
executor (``qgraph.precision.executor``) runs them in this process or on a Ray cluster.
Results are cached on disk per (model, data, unit, format).

**Suffix probes.** A probe need not recompute what comes before its unit. A *cut* is a value
through which everything flows: after its producer, no node reads a non-constant value made
before it other than the cut itself (a backbone's stage output; a residual block's input is
not one inside the block). ``choose_cuts`` keeps a few cuts, spread by compute, and the sweep
runs the float model once with them as extra outputs. A unit's probe is then the *suffix*
after the last cut before it, fed that cut's float activations, and its damage is measured
against the unmodified suffix's outputs, so a probe that changes nothing measures 0 exactly.
On a chain-shaped model this halves a sweep's work. Cuts are used only where the
sensitivity samples run as one batch (``batching``'s rule) and the model has no subgraphs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Model, Node, Value
from qgraph.precision.units import Effect, Unit
from qgraph.quant.params import QuantParams

CACHE_VERSION = 3  # 2: the channel axis is the shortest one; 3: suffix probes

#: cuts kept per sweep: each holds its activations and its suffix's outputs on the samples
MAX_CUTS = 8


@dataclass
class Cut:
    """A single-value cut (see the module doc): the value, its producer's position in the
    float model's node order, its float activations on the sensitivity samples, and the
    outputs of the suffix after it run on them unmodified."""

    value: str
    position: int
    feed: np.ndarray
    reference: dict[str, np.ndarray]


@dataclass
class Shared:
    """What every probe of one sweep reads: the float model (ONNX bytes, so it travels to
    other processes), the sensitivity feeds, the float outputs on them, their sample axes."""

    model_bytes: bytes
    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    output_axes: dict[str, int]
    threads: int | None = None
    cuts: list[Cut] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)  # node name -> position, where cuts are

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

    what = f"the sensitivity probe of '{task.unit.name}' in {task.format}"
    cut = cut_for(shared, task)
    if cut is None:
        model = shared.model()
        probe = probe_model(model, task.unit, task.effect)
        out = run_ort(probe, shared.feeds, threads=shared.threads, probe=model, what=what)
        return damage(shared.reference, out, shared.output_axes)
    probe = probe_model(suffix(shared, cut), task.unit, task.effect)
    return damage(cut.reference, _run_suffix(probe, cut, shared.threads, what), shared.output_axes)


# -- suffix probes ------------------------------------------------------------------------------------

def _constant_values(model: Model) -> set[Value]:
    """Values that do not depend on the inputs: initializers, and the outputs of nodes that
    read only such values (a ``Constant``, a ``Shape`` of a constant...). A node without
    inputs other than ``Constant`` (a random generator) is not constant."""
    g = model.graph
    const: set[Value] = set(g.initializers.values())
    for n in g:
        ins = [v for v in n.inputs if v is not None]
        if (ins or n.op is ops.op("Constant")) and all(v in const for v in ins) and not any(True for _ in n.subgraphs()):
            const.update(o for o in n.outputs if o is not None)
    return const


def single_value_cuts(model: Model) -> list[tuple[int, str]]:
    """``(position, value name)`` of every single-value cut of ``model`` in node order: after
    the producer at ``position``, the value is the only non-constant one made at or before it
    that a later node reads (and it is not a graph output). None in a model with subgraphs
    (their captured values would need their own accounting)."""
    g = model.graph
    nodes = list(g)
    if any(any(True for _ in n.subgraphs()) for n in nodes):
        return []
    const = _constant_values(model)
    pos = {n: i for i, n in enumerate(nodes)}
    born: dict[Value, int] = {v: -1 for v in g.inputs}
    dies: dict[Value, int] = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o is not None and o not in const:
                born[o] = i
        for v in n.inputs:
            if v is not None and v not in const:
                dies[v] = max(dies.get(v, -1), i)
    for v in g.outputs:
        dies[v] = len(nodes)
    starts: dict[int, list[Value]] = {}
    ends: dict[int, list[Value]] = {}
    for v, b in born.items():
        d = dies.get(v, b)
        if d > b:
            starts.setdefault(b, []).append(v)
            ends.setdefault(d, []).append(v)
    live: set[Value] = set(starts.get(-1, ()))
    cuts = []
    for i, n in enumerate(nodes):
        live.difference_update(ends.get(i, ()))
        live.update(starts.get(i, ()))
        if len(live) == 1:
            (v,) = live
            if pos.get(v.producer()) == i and not v.is_graph_output() and v.name:
                cuts.append((i, v.name))
    return cuts


def choose_cuts(model: Model, shapes: Mapping[str, tuple], k: int | None = None) -> list[tuple[int, str]]:
    """At most ``k`` (default ``MAX_CUTS``) of ``single_value_cuts``, spread by compute: the
    last cut before each ``j / (k + 1)`` of the model's work (MACs, or output elements for
    other nodes, at one sample's ``shapes``)."""
    from qgraph.analysis.shapes import elements, macs

    k = MAX_CUTS if k is None else k

    cuts = single_value_cuts(model)
    if not cuts:
        return []
    dims = lambda v: shapes.get(v.name) if v is not None else None  # noqa: E731
    work = []
    for n in model.graph:
        w = macs(n, dims)
        if not w:
            w = sum(elements(dims(o)) for o in n.outputs if o is not None and dims(o))
        work.append(float(w))
    total = float(sum(work))
    if total <= 0.0:
        return []
    done = np.cumsum(work)
    chosen: list[tuple[int, str]] = []
    for j in range(1, k + 1):
        goal = total * j / (k + 1)
        best = None
        for c in cuts:
            if done[c[0]] <= goal:
                best = c
        if best is not None and best not in chosen:
            chosen.append(best)
    return chosen


def suffix_model(model: Model, position: int, value: str, example: np.ndarray) -> Model:
    """A copy of ``model`` that starts after the node at ``position``: its one input is the
    cut ``value`` (named as it is; typed as ``example``, its activations, where the model
    does not say), the nodes before it are gone (constant ones still read stay)."""
    from qgraph.ir.dtypes import from_numpy
    from qgraph.ir.types import TensorType

    m = model.clone()
    g = m.graph
    nodes = list(g)
    const = _constant_values(m)
    cut = next(o for o in nodes[position].outputs if o is not None and o.name == value)
    old_inputs = list(g.inputs)
    cut.name = g.unique_name(value + "/before_cut")
    inp = Value(value, cut.type if cut.type is not None else TensorType(from_numpy(example.dtype)))
    g.inputs.append(inp)
    cut.replace_all_uses_with(inp)
    for n in reversed(nodes[:position + 1]):
        if not any(o is not None and o in const for o in n.outputs):
            g.remove(n)
    for v in old_inputs:
        g.inputs.remove(v)
    for n in reversed(list(g)):  # constant nodes only the prefix read
        if all(o is None or (not o.has_uses() and not o.is_graph_output()) for o in n.outputs):
            g.remove(n)
    for v in list(g.initializers.values()):
        if not v.has_uses() and not v.is_graph_output():
            g.remove_initializer(v)
    return m


def make_cuts(model: Model, feeds: Mapping[str, np.ndarray], shapes: Mapping[str, tuple],
              threads: int | None = None) -> list[Cut]:
    """The chosen cuts with their activations (one run of ``model`` with the cuts as extra
    outputs) and their suffixes' outputs. Empty where the samples would run in more than one
    batch (the suffix runs them whole)."""
    from qgraph import batching
    from qgraph.ort import cpu_session

    axes = batching.model_axes(model)
    shaped = batching.input_shapes(model)
    n = batching.sample_count(model, feeds)
    batch = batching.fixed_batch(shaped, axes)
    if (batch is None and n > batching.CHUNK) or (batch is not None and n != batch):
        return []
    chosen = choose_cuts(model, shapes)
    if not chosen:
        return []
    m = model.clone()
    by_name = {o.name: o for node in m.graph for o in node.outputs if o is not None}
    for _, name in chosen:
        m.graph.outputs.append(by_name[name])
    try:
        sess = cpu_session(m, threads=threads)
        acts = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feeds))))
        cuts = []
        for position, name in chosen:
            cut = Cut(name, position, acts[name], {})
            cut.reference = _run_suffix(suffix_model(model, position, name, cut.feed), cut, threads,
                                        "a suffix of the float model")
            cuts.append(cut)
    except Exception:  # a cut ONNX Runtime will not take as an output or an input: whole-model probes
        return []
    return cuts


def cut_for(shared: Shared, task: Task) -> Cut | None:
    """The last cut before every node ``task`` changes; None where there is none."""
    if not shared.cuts:
        return None
    touched = [task.unit.name, *(name for name, _ in task.effect.outputs)]
    first = min((shared.positions.get(n, -1) for n in touched), default=-1)
    best = None
    for c in shared.cuts:
        if c.position < first:
            best = c if best is None or c.position > best.position else best
    return best


# The suffix models of the cuts of the last model ``suffix()`` served in this process.
_suffixes: dict[tuple[str, str], Model] = {}


def suffix(shared: Shared, cut: Cut) -> Model:
    """``suffix_model`` of the shared float model at ``cut``, built once per process."""
    key = (shared.digest(), cut.value)
    if key not in _suffixes:
        if any(k[0] != key[0] for k in _suffixes):
            _suffixes.clear()
        _suffixes[key] = suffix_model(shared.model(), cut.position, cut.value, cut.feed)
    return _suffixes[key]


def _run_suffix(model: Model, cut: Cut, threads: int | None, what: str) -> dict[str, np.ndarray]:
    from qgraph.errors import QGraphError
    from qgraph.ort import cpu_session

    try:
        sess = cpu_session(model, threads=threads)
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {cut.value: cut.feed})))
    except Exception as e:
        raise QGraphError(f"{what}: ONNX Runtime failed: {str(e).splitlines()[0]}") from e


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
    h.update("|".join(f"{c.position}:{c.value}" for c in shared.cuts).encode())
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
