"""Shape inference over the IR: onnx's, with data propagation, completed by qgraph's own rules.

``infer_shapes`` is the graph utility behind the ``infer-shapes`` pass
(``passes/canonicalize.py``); calibration calls it too (which tensors are float is a type
question), so it lives here, below both the passes and ``qgraph.calib``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.dtypes import DType
from qgraph.ir.tensor import Tensor
from qgraph.ir.types import TensorType

log = logging.getLogger(__name__)


def pick_dims(node: Node, dims: list[int | None]):
    """Apply a Gather (axis 0) or Slice (axis 0) with constant indices to a list of dims."""
    consts = [v.constant() if v is not None else None for v in node.inputs[1:]]
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
            for vi in proto.graph.output:  # inferred, not the declaration onnx would keep
                if vi.type.HasField("tensor_type"):
                    vi.type.tensor_type.ClearField("shape")
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            found = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        except Exception as e:  # onnx gives up on the whole model (unknown ops, bad shapes)
            log.debug("onnx shape inference failed: %s", e)
            found = {}
        outputs = set(model.graph.outputs)
        for n in model.graph:
            for o in n.outputs:
                if o is None or o.name not in found:
                    continue
                t = type_from_proto(found[o.name])
                if o in outputs and _declared_rank_wrong(n, o, t):
                    merged = TensorType(o.type.dtype if t.dtype == DType.UNDEFINED else t.dtype, t.shape, o.type.denotation)
                else:
                    merged = _merge(o.type, t)
                if merged != o.type:
                    o.type = merged
                    round_changed += 1
        round_changed += _complete(model.graph)
        changed += round_changed
        if not round_changed:
            break
    return changed


def _declared_rank_wrong(node: Node, out: Value, inferred) -> bool:
    """Whether graph output ``out`` is declared with a rank that its node does not compute (a
    wrong declaration that ONNX Runtime only warns about when it runs the model, as ddddocr's CRNN
    has: ``[1, seqlen]`` for its ``[24, 1, 8210]``). Kept, the declaration would reach the QDQ
    export, which ONNX Runtime can then refuse; so the inferred type replaces it, with a warning."""
    declared = out.type
    if not (isinstance(declared, TensorType) and isinstance(inferred, TensorType)):
        return False
    if declared.shape is None or inferred.shape is None or len(declared.shape) == len(inferred.shape):
        return False

    def show(dims):
        return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

    log.warning("graph output '%s' is declared %s, but node '%s' (%s) computes %s: the computed shape is kept",
                out.name, show(declared.shape), node.name, node.op.op_type, show(inferred.shape))
    return True


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
        t = v.constant()
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
            picked = pick_dims(n, ins[0])
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


#: the ops whose work is multiply-accumulates (``macs``)
MAC_OPS = frozenset({ops.Conv, ops.ConvTranspose, ops.MatMul, ops.Gemm})


def elements(dims) -> int:
    """The product of ``dims``; a symbolic or unknown dim counts 1 (None: 1)."""
    return math.prod(d if isinstance(d, int) and d > 0 else 1 for d in (dims or ()))


def macs(node: Node, dims=lambda v: v.shape) -> int:
    """Multiply-accumulates of a Conv / ConvTranspose / MatMul / Gemm for the shapes ``dims(value)``
    gives (default the IR's; ``sample_shapes`` for one sample), 0 for other ops or an unknown
    weight shape. The reduction length is the activation's (``transA`` honoured), else the
    weight's (``transB`` honoured)."""
    if node.op not in MAC_OPS or len(node.inputs) < 2 or node.inputs[1] is None or node.outputs[0] is None:
        return 0
    w = dims(node.inputs[1])
    if not w:
        return 0
    if node.op is ops.Conv:
        return elements(dims(node.outputs[0])) * elements(w[1:])
    if node.op is ops.ConvTranspose:
        x = dims(node.inputs[0])
        return elements(x) * elements(w[1:]) if x else 0
    a = dims(node.inputs[0])
    gemm = node.op is ops.Gemm
    if a:
        k = a[0] if gemm and node.attr("transA", 0) else a[-1]
    else:
        k = w[-1] if gemm and node.attr("transB", 0) else (w[-2] if len(w) >= 2 and not gemm else w[0])
    return elements(dims(node.outputs[0])) * (k if isinstance(k, int) and k > 0 else 1)


def sample_shapes(model: Model, feeds, axes) -> dict[str, tuple[int, ...]]:
    """Every value's static shape for one sample of ``feeds`` (each input's sample axis ``axes``
    set to 1, other dims as fed): shape inference on a copy. A model declared with symbolic
    spatial dims (``[N, 3, 48, ?]``) otherwise counts its conv outputs as one pixel; values whose
    shape stays unknown are left out."""
    m = model.clone()
    by_name = {v.name: v for v in m.graph.inputs}
    for name, a in feeds.items():
        v = by_name.get(name)
        if v is None or not isinstance(v.type, TensorType):
            continue
        dims = list(np.shape(a))
        k = axes.get(name) if axes else None
        if k is not None and k < len(dims):
            dims[k] = 1
        v.type = TensorType(v.type.dtype, tuple(int(d) for d in dims))
    for g in m.graph.all_graphs():
        for n in g:
            for o in n.outputs:
                if o is not None and isinstance(o.type, TensorType):
                    o.type = TensorType(o.type.dtype, None)
    try:
        infer_shapes(m)
    except Exception:  # noqa: BLE001 - shapes are a refinement: unknown stays unknown
        log.debug("sample_shapes: shape inference failed", exc_info=True)
    out = {}
    for g in m.graph.all_graphs():
        for n in g:
            for o in n.outputs:
                s = o.shape if o is not None else None
                if s is not None and all(isinstance(d, int) and d >= 0 for d in s):
                    out[o.name] = tuple(s)
    for v in m.graph.inputs:
        if v.shape is not None and all(isinstance(d, int) for d in v.shape):
            out[v.name] = tuple(v.shape)
    for name, v in m.graph.initializers.items():
        out[name] = tuple(v.const_value.shape)
    return out
