"""Canonicalization: constants as initializers, constant folding, shape inference, current op forms.

``canonicalize`` is the alias that runs them, with identity and dead-code elimination,
to a fixed point.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.dtypes import DType, from_numpy
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import TensorType
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
            picked = _pick(node, dims)
            if picked is None or any(d is None for d in np.asarray(picked, dtype=object).ravel()):
                return None
            return np.array(picked, np.int64)
        return None


def _pick(node: Node, dims: list[int | None]):
    """Apply a Gather (axis 0) or Slice (axis 0) with constant indices to a list of dims."""
    consts = [constant_tensor(v) if v is not None else None for v in node.inputs[1:]]
    if node.op is ops.Gather:
        if node.attr("axis", 0) != 0 or consts[0] is None:
            return None
        idx = consts[0].numpy()
        return np.vectorize(lambda i: dims[int(i)], otypes=[object])(idx) if idx.ndim else dims[int(idx)]
    if node.attrs:  # opset < 10 Slice: attributes
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes", (0,))
        steps = (1,)
    else:
        if any(c is None for c, v in zip(consts, node.inputs[1:]) if v is not None) or len(consts) < 2:
            return None
        starts, ends = consts[0].numpy().tolist(), consts[1].numpy().tolist()
        axes = consts[2].numpy().tolist() if len(consts) > 2 and consts[2] is not None else [0]
        steps = consts[3].numpy().tolist() if len(consts) > 3 and consts[3] is not None else [1]
    if list(axes) not in ([0], [-1]) or len(starts) != 1:
        return None
    n = len(dims)
    s, e, st = int(starts[0]), int(ends[0]), int(steps[0])
    s, e = max(min(s, n), -n - 1), max(min(e, n), -n - 1)
    return dims[slice(s, e, st)]


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


def infer_shapes(model: Model, max_rounds: int = 4) -> int:
    """Refine ``model``'s value types in place (what ``infer-shapes`` does); return how many
    changed. The graph utility behind the pass, for code that needs types (a pass does not
    run another pass)."""
    from qgraph.onnx._types import type_from_proto
    from qgraph.onnx.exporter import to_proto

    changed = 0
    for _ in range(max_rounds):
        round_changed = 0
        try:
            proto = to_proto(model, keep_data=_shape_like)
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            found = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        except Exception as e:  # onnx gives up on the whole model (unknown ops, bad shapes)
            log.debug("onnx shape inference failed: %s", e)
            found = {}
        for n in model.graph:
            for o in n.outputs:
                if o is None or o.name not in found:
                    continue
                t = type_from_proto(found[o.name])
                merged = _merge(o.type, t)
                if merged != o.type:
                    o.type = merged
                    round_changed += 1
        round_changed += _complete(model.graph)
        changed += round_changed
        if not round_changed:
            break
    return changed


def _shape_like(tensor: Tensor) -> bool:
    """Shape inference needs initializer shapes, and values only for small integer tensors."""
    return tensor.size <= 64 or tensor.dtype in (DType.INT64, DType.INT32) and tensor.size <= 4096


def _merge(old, new):
    """The more specific of two types for the same value (old wins on conflict)."""
    if new is None or not isinstance(new, TensorType):
        return old if old is not None else new
    if old is None:
        return new
    if not isinstance(old, TensorType) or old.dtype != new.dtype and old.dtype != DType.UNDEFINED:
        return old
    if old.shape is None:
        return TensorType(new.dtype, new.shape, old.denotation)
    if new.shape is None or len(new.shape) != len(old.shape):
        return old
    dims = tuple(a if isinstance(a, int) else b if isinstance(b, int) else a if a is not None else b
                 for a, b in zip(old.shape, new.shape))
    return TensorType(new.dtype, dims, old.denotation)


_SAME_TYPE = frozenset({
    ops.Relu, ops.Sigmoid, ops.Tanh, ops.Clip, ops.Neg, ops.Abs, ops.Exp, ops.Sqrt, ops.Reciprocal, ops.Erf,
    ops.HardSigmoid, ops.HardSwish, ops.LeakyRelu, ops.Elu, ops.Selu, ops.Softplus, ops.Mish, ops.Gelu,
    ops.Identity, ops.Softmax, ops.LayerNormalization, ops.BatchNormalization, ops.Dropout,
})
_BROADCAST = frozenset({ops.Add, ops.Sub, ops.Mul, ops.Div, ops.Pow, ops.Max, ops.Min, ops.Sum, ops.PRelu})


def _same_type_op(op) -> bool:
    return op in _SAME_TYPE or (op.domain == "qgraph" and ops.op(op.op_type) in _SAME_TYPE)


def _broadcast(shapes):
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        ints = {d for d in dims if isinstance(d, int) and d != 1}
        if len(ints) > 1:
            return None
        if ints:
            out.append(ints.pop())
        elif all(d == 1 for d in dims):
            out.append(1)
        else:
            syms = {d for d in dims if d != 1}
            out.append(syms.pop() if len(syms) == 1 else None)
    return tuple(out)


def _shape_vectors(g: Graph) -> dict[Value, list]:
    """Symbolic contents of small int64 shape vectors: [dim, ...] with dims int | str | None.

    Follows Shape, Gather, Slice, Concat, Unsqueeze, Squeeze and Cast over partially
    symbolic shapes, which onnx's data propagation gives up on (it needs every dim static).
    """
    vec: dict[Value, list] = {}
    scalar: set[Value] = set()

    def get(v):
        if v is None:
            return None
        if v in vec:
            return vec[v]
        t = constant_tensor(v)
        if t is not None and t.dtype in (DType.INT64, DType.INT32) and len(t.shape) <= 1 and t.size <= 16:
            data = t.numpy()
            if data.ndim == 0:
                scalar.add(v)
            return [int(x) for x in data.ravel()]
        return None

    for n in g:
        o = n.outputs[0] if n.outputs else None
        if o is None:
            continue
        ins = [get(v) for v in n.inputs]
        out = None
        if n.op is ops.Shape:
            dims = n.inputs[0].shape
            if dims is not None:
                start, end = n.attr("start", 0), n.attr("end", None)
                out = list(dims[start:end] if end is not None else dims[start:])
        elif n.op is ops.Cast and ins and ins[0] is not None:
            out = ins[0]
            if n.inputs[0] in scalar:
                scalar.add(o)
        elif n.op is ops.Gather and ins[0] is not None and len(ins) > 1 and ins[1] is not None and n.attr("axis", 0) == 0:
            try:
                out = [ins[0][i] for i in ins[1]]
            except IndexError:
                out = None
            if n.inputs[1] in scalar:
                scalar.add(o)
        elif n.op is ops.Slice and ins and ins[0] is not None:
            picked = _pick(n, ins[0])
            out = list(picked) if isinstance(picked, list) else None
        elif n.op is ops.Concat and ins and all(x is not None for x in ins):
            out = [d for x in ins for d in x]
        elif n.op in (ops.Unsqueeze, ops.Squeeze) and ins and ins[0] is not None:
            out = ins[0]
        if out is not None and len(out) <= 16:
            vec[o] = out
    return vec


def _reshape_dims(in_shape, target: list) -> tuple | None:
    dims = [in_shape[i] if d == 0 and in_shape is not None and i < len(in_shape) else d for i, d in enumerate(target)]
    dims = [None if d == 0 else d for d in dims]
    if -1 in dims:
        known = [d for d in dims if d != -1]
        if in_shape is not None and all(isinstance(d, int) for d in in_shape) and all(isinstance(d, int) for d in known):
            dims[dims.index(-1)] = math.prod(in_shape) // max(1, math.prod(known))
        else:
            dims[dims.index(-1)] = None
    return tuple(d if isinstance(d, (int, str)) and d != -1 else None for d in dims)


def _complete(g: Graph) -> int:
    """qgraph's own type rules for outputs onnx left untyped. Returns how many it typed."""
    typed = 0
    vectors = None
    for n in g:
        o = n.outputs[0] if n.outputs else None
        if o is None or isinstance(o.type, TensorType) and o.type.shape is not None:
            continue
        ins = [v for v in n.inputs if v is not None]
        t = None
        if _same_type_op(n.op) and ins and isinstance(ins[0].type, TensorType):
            t = ins[0].type
        elif n.op in _BROADCAST and ins and all(isinstance(v.type, TensorType) for v in ins):
            t = TensorType(ins[0].type.dtype, _broadcast([v.type.shape for v in ins]))
        elif n.op is ops.Cast and ins and isinstance(ins[0].type, TensorType):
            t = TensorType(DType(n.attr("to")), ins[0].type.shape)
        elif n.op is ops.Reshape and len(ins) > 1 and isinstance(ins[0].type, TensorType):
            vectors = _shape_vectors(g) if vectors is None else vectors
            target = vectors.get(ins[1])
            if target is not None:
                t = TensorType(ins[0].type.dtype, _reshape_dims(ins[0].type.shape, target))
        merged = _merge(o.type, t)
        if merged != o.type:
            o.type = merged
            typed += 1
    return typed


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

