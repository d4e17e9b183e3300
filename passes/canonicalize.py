"""Canonicalization: constants as initializers, constant folding, shape inference, current op forms.

``canonicalize`` is the alias that runs them, with identity and dead-code elimination,
to a fixed point.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.dtypes import from_numpy
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import TensorType
from qgraph.analysis.shapes import infer_shapes, pick_dims
from qgraph.pm.base import Pass, PassResult
from qgraph.rewrite import Match, RewritePass, RewriteRule, RuleSet, Var, constant_tensor, pat

log = logging.getLogger("qgraph.canonicalize")

# Ops whose result is not a function of their inputs, or that must not be folded.
_NEVER_FOLD = frozenset({
    ops.op("RandomNormal"), ops.op("RandomUniform"), ops.op("RandomNormalLike"), ops.op("RandomUniformLike"),
    ops.op("Bernoulli"), ops.op("Multinomial"), ops.QuantizeLinear, ops.DequantizeLinear,
})


def _replace_with_constant(g: Graph, old: Value, array: np.ndarray) -> Value:
    """Make ``old``'s readers (and graph-output slot) read a new initializer holding ``array``.

    The initializer takes ``old``'s name, so folded values keep their names.
    """
    name = old.name
    old.name = g.unique_name(name + "_folded")
    tensor = Tensor(np.require(array, requirements="C"), name=name)
    new = Value(name, TensorType(tensor.dtype, tensor.shape), tensor)
    g.register_initializer(new)
    old.replace_all_uses_with(new, outputs=True)
    return new


def _constant_node_value(node: Node) -> np.ndarray | None:
    """The value a Constant node produces (None for sparse values)."""
    for key, a in node.attrs.items():
        v = a.value
        if key == "value":
            return v.numpy()
        if key == "value_float":
            return np.array(v, np.float32)
        if key == "value_floats":
            return np.array(v, np.float32)
        if key == "value_int":
            return np.array(v, np.int64)
        if key == "value_ints":
            return np.array(v, np.int64)
        if key == "value_string":
            return np.array(v.encode() if isinstance(v, str) else v, dtype=object)
        if key == "value_strings":
            return np.array([s.encode() if isinstance(s, str) else s for s in v], dtype=object)
    return None


def _static_dims(v: Value | None) -> list[int | None] | None:
    shape = v.shape if v is not None else None
    if shape is None:
        return None
    return [d if isinstance(d, int) else None for d in shape]


class FoldConstants(Pass):
    """Fold everything computable at compile time into initializers.

    before => after:
        c = Constant(value=t)                          =>  initializer c = t
        s = ConstantOfShape(shape_const); y = Unsqueeze(s, axes)  =>  initializer y
        n = Shape(x) (x: f32[1,3,?,?]); c = Gather(n, 1)            =>  initializer c = 3

    A node folds when all its inputs are constants (non-overridable initializers or
    Constant outputs) and it is deterministic; ``Shape`` / ``Size`` and ``Gather`` /
    ``Slice`` of a ``Shape`` fold when the dims they read are static. Results larger
    than ``max_size`` elements stay computed at run time (the model would grow).
    Evaluation uses onnx's reference implementation at the model's opset; a node it
    cannot evaluate stays as it is (logged).
    """

    name = "fold-constants"

    def __init__(self, max_size: int = 1 << 24):
        self.max_size = max_size

    def run(self, model: Model, analyses) -> PassResult:
        folded = constants = 0
        opsets = dict(model.opset_imports)
        for g in list(model.graph.all_graphs()):
            for node in g:
                if node.op is ops.Constant:
                    value = _constant_node_value(node)
                    if value is None or node.output is None:
                        continue
                    _replace_with_constant(g, node.output, value)
                    g.remove(node)
                    constants += 1
                    continue
                values = self._fold(node, opsets)
                if values is None:
                    continue
                for o, array in zip(node.outputs, values):
                    if o is not None:
                        _replace_with_constant(g, o, array)
                g.remove(node)
                folded += 1
        return PassResult.of(bool(folded or constants), folded=folded, constants=constants)

    def _fold(self, node: Node, opsets: dict[str, int]) -> list[np.ndarray] | None:
        shape_value = self._fold_shape(node)
        if shape_value is not None:
            return [shape_value]
        if node.op in _NEVER_FOLD or node.op.domain not in ("", "ai.onnx") or any(True for _ in node.subgraphs()):
            return None
        if not node.inputs or any(o is None for o in node.outputs[:1]):
            return None
        tensors = [constant_tensor(v) if v is not None else None for v in node.inputs]
        if any(t is None for t, v in zip(tensors, node.inputs) if v is not None):
            return None
        if node.op is ops.ConstantOfShape:  # check the size before allocating it
            if math.prod(int(d) for d in tensors[0].numpy().ravel()) > self.max_size:
                return None
        from qgraph.onnx.evaluate import evaluate

        try:
            results = evaluate(node, [t.numpy() if t is not None else None for t in tensors], opsets)
        except Exception as e:  # the reference implementation could not run it: leave it to run time
            log.debug("not folding %s: %s: %s", node.describe(), type(e).__name__, e)
            return None
        if any(o is not None and (not isinstance(r, np.ndarray) or r.size > self.max_size)
               for r, o in zip(results, node.outputs)):
            return None  # sequences / optionals are not tensors; too-large results stay computed
        for r, o in zip(results, node.outputs):
            if r is not None and o is not None and o.dtype is not None and from_numpy(r.dtype) != o.dtype:
                return None  # the evaluator disagrees with the declared type: do not guess
        return results

    @staticmethod
    def _fold_shape(node: Node) -> np.ndarray | None:
        if node.op is ops.Shape:
            dims = _static_dims(node.inputs[0])
            if dims is None:
                return None
            start, end = node.attr("start", 0), node.attr("end", None)
            dims = dims[start:end] if end is not None else dims[start:]
            return np.array(dims, np.int64) if None not in dims else None
        if node.op is ops.Size:
            dims = _static_dims(node.inputs[0])
            return np.array(math.prod(dims), np.int64) if dims is not None and None not in dims else None
        if node.op in (ops.Gather, ops.Slice) and node.inputs and node.inputs[0] is not None:
            src = node.inputs[0].producer()
            if src is None or src.op is not ops.Shape or src.attr("start", 0) != 0 or src.attr("end") is not None:
                return None
            dims = _static_dims(src.inputs[0])
            if dims is None:
                return None
            picked = pick_dims(node, dims)
            if picked is None or any(d is None for d in np.asarray(picked, dtype=object).ravel()):
                return None
            return np.array(picked, np.int64)
        return None


class InferShapes(Pass):
    """Give every value a dtype and, where static, a shape.

    before => after:   %y = Relu(%x)   =>   %y: f32[1,8,16,16] = Relu(%x)

    Runs onnx's shape inference (with data propagation), then completes what it left
    unknown with qgraph's own rules (elementwise ops copy their input's type, binary ops
    broadcast, Cast takes its target dtype, qgraph-domain ops use their ONNX
    counterpart's rule) and reruns onnx's past the completed values. Existing types are
    only refined, never replaced by less specific ones.
    """

    name = "infer-shapes"

    def __init__(self, max_rounds: int = 4):
        self.max_rounds = max_rounds

    def run(self, model: Model, analyses) -> PassResult:
        changed = infer_shapes(model, self.max_rounds)
        return PassResult.of(bool(changed), typed=changed)


class SumToAdd(RewriteRule):
    """Sum(a, b, c, ...) -> Add(Add(a, b), c) ...; Sum(a) -> a"""

    pattern = pat.Sum(Var("first"), allow_extra_inputs=True)

    def check(self, m: Match) -> None:
        opset = m.model.opset("") if m.model is not None else None
        if opset is not None and opset < 7:
            self.fail(f"{m.root.describe()}: Add broadcasts only from opset 7 (model has {opset})", m.root)
        if len(m.root.inputs) == 1 and m.root.output.is_graph_output():
            self.fail(f"{m.root.describe()} forwards its only input to a graph output", m.root)

    def rewrite(self, m: Match, b):
        acc = m.root.inputs[0]
        for k, v in enumerate(m.root.inputs[1:]):
            acc = b.op(ops.Add, [acc, v], name=f"{m.root.name or 'sum'}_add{k}")
        if acc.type is None:
            acc.type = m.root.output.type
        return acc


class UpgradeOps(RewritePass):
    """Rewrite old op forms into the current ones later passes expect.

    before => after:
        y = Sum(a, b, c)   =>   t = Add(a, b); y = Add(t, c)

    Variadic Sum becomes a chain of two-input Adds (quantizers and fusion rules know Add;
    ONNX Runtime's quantizer leaves Sum in float). Needs opset >= 7 (broadcasting Add).
    """

    name = "upgrade-ops"
    rules = RuleSet([SumToAdd()])


class FoldConstantIf(Pass):
    """Inline the branch an If takes when its condition is a constant.

    before => after::

        c = initializer true; y = If(c, then={t = Mul(r, k) -> t}, else={...}); z = Conv(y, w)
            =>  y = Mul(r, k); z = Conv(y, w)

    The branch's nodes and initializers move into the graph that holds the If, right before
    it; they keep reading the outer values they read (the IR holds those as direct uses).
    A moved value whose name another value of the model uses is renamed; the branch
    outputs take the If outputs' names (a graph output keeps its name, through an Identity
    where the branch returns an outer value). Runs in subgraphs too. Constant folding
    usually makes the condition constant first (``Greater`` of constants, ``Shape`` of a
    static shape), hence its place in ``canonicalize``'s fixed point.
    """

    name = "fold-constant-if"

    def run(self, model: Model, analyses) -> PassResult:
        folded = 0
        while True:  # afresh after each fold: an inlined branch may hold a foldable If of its own
            found = next(((node, branch) for node in model.graph.all_nodes()
                          for branch in [_taken_branch(node)] if branch is not None), None)
            if found is None:
                return PassResult.of(bool(folded), folded=folded)
            node, branch = found
            _inline_branch(node.graph, node, branch)
            folded += 1


def _taken_branch(node: Node) -> Graph | None:
    """The branch ``node`` takes if it is an If with a constant one-element condition."""
    if node.op is not ops.If or not node.inputs:
        return None
    cond = constant_tensor(node.inputs[0])
    if cond is None or cond.size != 1:
        return None
    branch = node.attr("then_branch" if bool(np.asarray(cond.numpy()).reshape(-1)[0]) else "else_branch")
    return branch if isinstance(branch, Graph) and len(branch.outputs) == len(node.outputs) else None


def _inline_branch(g: Graph, node: Node, branch: Graph) -> None:
    """Move ``branch``'s nodes and initializers before ``node`` in ``g``, make ``node``'s readers
    read the branch outputs, and remove ``node``."""
    moved_graphs = {id(sub) for sub in branch.all_graphs()}
    # names of the model outside the branch (the other branch goes with the If: its names are free)
    others = {id(inner) for sub in node.subgraphs() for inner in sub.all_graphs()} - moved_graphs
    taken = {v.name for sub in g.root.all_graphs() if id(sub) not in moved_graphs | others for v in sub.values()}
    outs = list(branch.outputs)
    branch.outputs.clear()  # the branch outputs stop counting as graph outputs, so they can take names

    def fresh(v: Value) -> None:
        if v.name in taken or not v.name:
            v.name = g.unique_name(v.name or "v")
        taken.add(v.name)

    for init in list(branch.initializers.values()):
        branch.remove_initializer(init)
        fresh(init)
        g.register_initializer(init)
    for inner in list(branch):
        inputs = inner.inputs
        nested = [(n, n.inputs) for sub in inner.subgraphs() for n in sub.all_nodes()]
        branch.remove(inner, safe=False)  # detaches every input use, those of nested bodies too
        inner.set_inputs(inputs)
        for n, ins in nested:
            n.set_inputs(ins)
        for o in inner.outputs:
            if o is not None:
                fresh(o)
        g.insert_before(node, inner)
    renamed: set[int] = set()
    for o, v in zip(node.outputs, outs):
        if o is None:
            continue
        if v.type is None or v.shape is None and o.shape is not None and v.dtype == o.dtype:
            v.type = o.type  # bodies often declare outputs without shapes; the If output knows more
        if o.is_graph_output():
            g.replace_value(o, v)
            continue
        if id(v) not in renamed and g.can_take_output_name(v):
            name = o.name  # the If output's name is the one later passes and ranges know
            o.name = g.unique_name(name + "_replaced")
            v.name = name
            renamed.add(id(v))
        o.replace_all_uses_with(v)
    g.remove(node)


class RemoveInitializerInputs(Pass):
    """Stop listing initializers as graph inputs (as IR version < 4 required).

    before => after:   graph(%x, %w = init) -> ...   =>   graph(%x) -> ... with %w a constant

    An initializer that is also a graph input can be overridden at run time, so no pass
    may treat it as a constant; no deployed model feeds its own weights. The model's IR
    version becomes at least 4 (the first that allows initializers outside the inputs).
    """

    name = "remove-initializer-inputs"

    def run(self, model: Model, analyses) -> PassResult:
        g = model.graph
        moved = [v for v in g.inputs if v.is_initializer()]
        for v in moved:
            g.inputs.remove(v)
            v._graph = g  # still registered as an initializer
        if moved and model.ir_version < 4:
            model.ir_version = 4
        return PassResult.of(bool(moved), moved=len(moved))


PASSES = (RemoveInitializerInputs, FoldConstants, FoldConstantIf, InferShapes, UpgradeOps)

ALIASES = {
    "canonicalize": ("remove-initializer-inputs,fixed-point(upgrade-ops,fold-constants,fold-constant-if,"
                     "eliminate-identity,dead-code-elimination,infer-shapes)",
                     "fold constants and constant-condition Ifs, infer shapes, current op forms, no identities or "
                     "dead code"),
}

