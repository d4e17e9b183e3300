"""L3 model -> Relax IRModule.

``lower(model)`` writes one Relax function ``main`` whose parameters are the graph inputs
(static shapes) and whose result is the tuple of graph outputs, in graph order. Each node
goes through the lowering registered for its op in ``LOWERINGS``; a node whose inputs are
all known at lowering time (initializers, static shapes, folded arithmetic) is evaluated
here instead, with the reference interpreter's own kernels, so constant folding cannot
disagree with the reference.

Each L3 integer op is one lowering function emitting standard Relax ops; the default
pipeline legalizes them into TIR kernels (``relax.transform.LegalizeOps``), which a later
pass may replace by scheduled kernels op by op.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from qgraph.ir import l3, ops
from qgraph.ir.core import Model, Node
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.ir.ops import QGRAPH_DOMAIN, OpId, op
from qgraph.tvm import relax_float, relax_integer, relax_movement, relax_recurrent
from qgraph.tvm.context import LowerContext, Lowering, LoweringError
from qgraph.tvm.kernel_packages import kernel_package

#: The lowering of each op (standard ops in the default domain).
LOWERINGS: Mapping[OpId, Lowering] = MappingProxyType({
    # L3 integer ops
    l3.Quantize: relax_integer.quantize,
    l3.Dequantize: relax_integer.dequantize,
    l3.QConv: relax_integer.qconv,
    l3.QConvTranspose: relax_integer.qconv_transpose,
    l3.QMatMul: relax_integer.qmatmul,
    l3.QAdd: relax_integer.qadd,
    l3.QMul: relax_integer.qmul,
    l3.QAveragePool: relax_integer.qaverage_pool,
    l3.QGlobalAveragePool: relax_integer.qglobal_average_pool,
    l3.Requantize: relax_integer.requantize_op,
    l3.Lookup: relax_integer.lookup,
    # data movement and shapes
    ops.Identity: relax_movement.identity,
    ops.Dropout: relax_movement.identity,
    ops.Reshape: relax_movement.reshape,
    ops.Flatten: relax_movement.flatten,
    ops.Squeeze: relax_movement.squeeze,
    ops.Unsqueeze: relax_movement.unsqueeze,
    ops.Transpose: relax_movement.transpose,
    ops.Concat: relax_movement.concat,
    ops.Slice: relax_movement.slice_,
    ops.Split: relax_movement.split,
    ops.Gather: relax_movement.gather,
    ops.Shape: relax_movement.shape,
    ops.Size: relax_movement.size,
    ops.Expand: relax_movement.expand,
    ops.Tile: relax_movement.tile,
    ops.Pad: relax_movement.pad,
    ops.MaxPool: relax_movement.max_pool,
    # float fallback
    ops.Add: relax_float.add,
    ops.Sub: relax_float.sub,
    ops.Mul: relax_float.mul,
    ops.Div: relax_float.div,
    ops.Equal: relax_float.equal,
    op("Less"): relax_float.less,
    op("Greater"): relax_float.greater,
    ops.Sum: relax_float.sum_,
    ops.Max: relax_float.max_,
    ops.Min: relax_float.min_,
    ops.Relu: relax_float.relu,
    ops.Tanh: relax_float.tanh,
    ops.Exp: relax_float.exp,
    ops.Erf: relax_float.erf,
    ops.Sqrt: relax_float.sqrt,
    ops.Neg: relax_float.neg,
    ops.Abs: relax_float.abs_,
    op("Log"): relax_float.log,
    op("Floor"): relax_float.floor,
    op("Ceil"): relax_float.ceil,
    ops.Reciprocal: relax_float.reciprocal,
    ops.Sigmoid: relax_float.sigmoid,
    ops.HardSigmoid: relax_float.hard_sigmoid,
    ops.HardSwish: relax_float.hard_swish,
    op("HardSwish", QGRAPH_DOMAIN): relax_float.hard_swish,
    ops.LeakyRelu: relax_float.leaky_relu,
    ops.Clip: relax_float.clip,
    ops.Cast: relax_float.cast,
    ops.Pow: relax_float.pow_,
    ops.Where: relax_float.where,
    ops.Softmax: relax_float.softmax,
    op("LogSoftmax"): relax_float.log_softmax,
    ops.ReduceMean: relax_float.reduce_mean,
    op("ReduceSum"): relax_float.reduce_sum,
    op("ReduceMax"): relax_float.reduce_max,
    op("ReduceMin"): relax_float.reduce_min,
    ops.GlobalAveragePool: relax_float.global_average_pool,
    ops.AveragePool: relax_float.average_pool,
    ops.Conv: relax_float.conv,
    ops.ConvTranspose: relax_float.conv_transpose,
    ops.MatMul: relax_float.matmul,
    ops.Gemm: relax_float.gemm,
    ops.BatchNormalization: relax_float.batch_norm,
    ops.LayerNormalization: relax_float.layer_norm,
    ops.QGraphLayerNormalization: relax_float.layer_norm,
    ops.Gelu: relax_float.gelu,
    ops.QGraphGelu: relax_float.gelu,
    ops.Resize: relax_float.resize,
    op("LRN"): relax_float.lrn,
    # recurrent (float, unrolled over the static sequence length)
    op("LSTM"): relax_recurrent.lstm,
    op("GRU"): relax_recurrent.gru,
    op("RNN"): relax_recurrent.rnn,
})


def static_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]] | None = None,
                 batch_size: int | None = None) -> dict[str, tuple[int, ...]]:
    """The static shape of every graph input: ``shapes[name]`` where given, else the declared
    shape with a symbolic batch dim set to ``batch_size`` (the leading dim, or the one at the
    input's sample axis where the model records one: ``qgraph.batching``).

    Raises:
        LoweringError: an input has an unknown rank or a symbolic dim left unresolved.
    """
    shapes = dict(shapes or {})
    consts = model.graph.initializers
    names = {v.name for v in model.graph.inputs}
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise LoweringError(f"input_shapes names '{unknown[0]}', which is not a graph input; the inputs are "
                            f"{', '.join(repr(n) for n in names)}")
    from qgraph import batching

    axes = batching.model_axes(model)
    out: dict[str, tuple[int, ...]] = {}
    for v in model.graph.inputs:
        if v.name in consts and v.name not in shapes:
            continue
        if v.name in shapes:
            out[v.name] = tuple(int(d) for d in shapes[v.name])
            continue
        if v.shape is None:
            raise LoweringError(f"graph input '{v.name}' has an unknown shape; pass input_shapes={{'{v.name}': "
                                "[...]}")
        dims = [d if isinstance(d, int) and d >= 0 else None for d in v.shape]
        k = axes.get(v.name, 0)
        if k is not None and k < len(dims) and dims[k] is None and batch_size is not None:
            dims[k] = int(batch_size)
        if any(d is None for d in dims):
            raise LoweringError(f"graph input '{v.name}' has shape {v.type}; TVM kernels need static shapes: pass "
                                f"batch_size=... or input_shapes={{'{v.name}': [...]}}")
        out[v.name] = tuple(dims)
    return out


def input_dtype(model: Model, name: str) -> str:
    """The numpy dtype name of graph input ``name`` (4-bit types in 8-bit storage)."""
    v = next(v for v in model.graph.inputs if v.name == name)
    dt = v.dtype
    if dt is None or dt == DType.UNDEFINED:
        raise LoweringError(f"graph input '{name}' has no element type")
    storage = {DType.INT4: np.dtype(np.int8), DType.UINT4: np.dtype(np.uint8)}.get(dt)
    return (storage or np.dtype(to_numpy(dt))).name


def output_names(model: Model, outputs: Sequence[str] | None = None) -> list[str]:
    """``outputs`` (a name or names), or the graph outputs' names."""
    if outputs is None:
        return [v.name for v in model.graph.outputs]
    return [outputs] if isinstance(outputs, str) else list(outputs)


class _Folder:
    """Evaluates nodes on constant inputs (shape arithmetic, values computed from initializers)
    with onnx's reference implementation (``qgraph.onnx.evaluate``, as canonicalize's constant
    folding does).

    The L3 integer ops are not folded here (``folds``): their own lowering computes them, and
    TVM's ``FoldConstant`` evaluates the result at build time. The TVM side never borrows the
    reference interpreter's kernels, so a constant L3 node is judged like any other.
    """

    def __init__(self, opsets: Mapping[str, int]):
        self.opsets = dict(opsets)

    @staticmethod
    def folds(node: Node) -> bool:
        """Whether ``node``, once its inputs are all constants, is folded (else lowered)."""
        return node.op not in l3.INTEGER_OPS

    def __call__(self, node: Node, args: list) -> list:
        from qgraph.onnx.evaluate import evaluate

        return list(evaluate(node, args, self.opsets))


def lower(model: Model, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
          batch_size: int | None = None, outputs: Sequence[str] | None = None, target=None,
          kernels: str = "auto"):
    """The Relax ``IRModule`` of an L3 model.

    Args:
        model: an L3 (or float) model, nodes in topological order.
        input_shapes: static shapes for inputs whose declared shape has symbolic dims.
        batch_size: the leading dim of inputs whose declared leading dim is symbolic.
        outputs: the values ``main`` returns, by name (default: the graph outputs); any value
            of the graph may be asked for (per-layer comparisons).
        target: the ``qgraph.targets`` target (or name) the module is for (None: this host);
            it decides which kernels apply.
        kernels: ``"auto"``: the ops the target's kernel package covers on its hand-scheduled
            kernels (``qgraph.tvm.kernel_packages``: ``qgraph.tvm.x86`` on x86 AVX2), the
            default lowering elsewhere; ``"default"``: the default lowering everywhere.

    Returns:
        ``tvm.IRModule`` with ``main(inputs...) -> (outputs...)``.

    Raises:
        LoweringError: an op has no lowering, a shape is not static, or a node's attributes
            or inputs are malformed (the error names the node and its op).
    """
    from tvm import relax

    shapes = static_input_shapes(model, input_shapes, batch_size)
    opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
    check_lowerable(model)  # all missing lowerings in one error, before any Relax is built
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(shape, input_dtype(model, name))) for name, shape in shapes.items()]
    ctx = LowerContext(bb, opsets, kernels=kernel_package(target, kernels))
    fold = _Folder(opsets)
    try:
        return _lower_main(model, bb, params, ctx, fold, shapes, outputs)
    except BaseException:
        _close(bb)
        raise


def _close(bb) -> None:
    """End the block and scope an error left open in ``bb`` (what ``emit_func_output`` does
    on success): TVM warns "BlockBuilder destroyed with remaining blocks!" on stderr when it
    is freed, after the one-line error the user was given."""
    try:
        bb._end_block()
        bb.end_scope()
    except Exception:  # nothing was left open
        pass


def _lower_main(model: Model, bb, params, ctx: LowerContext, fold, shapes, outputs):
    """The body of ``lower``: ``main`` built in ``bb``."""
    from tvm import relax

    graph = model.graph
    with bb.function("main", params):
        with bb.dataflow():
            for name, tensor in graph.initializers.items():
                if name not in shapes:
                    ctx.env[name] = tensor.const_value.numpy()
            for name, p in zip(shapes, params):
                ctx.env[name] = p
            for node in graph:
                _lower_node(ctx, fold, node)
            outs = []
            for name in output_names(model, outputs):
                x = ctx.env.get(name)
                if x is None:
                    raise LoweringError(f"output '{name}' is not a value of the graph")
                outs.append(ctx.const(x) if isinstance(x, np.ndarray) else x)
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


#: what to do with control flow TVM does not lower (the tail of its error)
CONTROL_FLOW_ADVICE = ("control flow stays float in a quantized model, and TVM lowering of If / Loop / Scan is not "
                       "built; compile with --target qdq and run the QDQ export (model.qdq.onnx) in ONNX Runtime or "
                       "the L3 model in the reference interpreter (`qgraph run --backend reference`); an If whose "
                       "condition is a constant is folded by canonicalize (fold-constant-if) and then lowers")


def check_lowerable(model: Model) -> None:
    """Refuse, in one error that names them all, the nodes of ``model`` that have no TVM
    lowering and run on values known only at run time (a node of constants, shapes
    included, is folded instead). Control flow is left to ``_lower_node``, which inlines an If whose condition
    lowering finds constant.

    Raises:
        LoweringError: lists each such op with its nodes, and what to do.
    """
    known = set(model.graph.initializers)
    missing: dict[str, list[str]] = {}
    for node in model.graph:
        present = [v for v in node.inputs if v is not None]
        if (present and all(v.name in known for v in present) or not present and node.op is ops.Constant
                or node.op in (ops.Shape, ops.Size)):  # every shape is static when lowering
            known.update(o.name for o in node.outputs if o is not None)
        elif node.op not in LOWERINGS and not any(True for _ in node.subgraphs()):
            missing.setdefault(str(node.op), []).append(node.name or "unnamed")
    if missing:
        listed = "; ".join(f"{op} ({', '.join(repr(n) for n in names[:3])}{', ...' if len(names) > 3 else ''})"
                           for op, names in missing.items())
        raise LoweringError(f"no TVM lowering for {listed}: these ops stay float in the quantized model and TVM "
                            "lowering of them is not built; compile with --target qdq and run the QDQ export "
                            "(model.qdq.onnx) in ONNX Runtime or the L3 model in the reference interpreter "
                            "(`qgraph run --backend reference`)")


def _lower_node(ctx: LowerContext, fold: _Folder, node: Node) -> None:
    ctx.node = node
    if node.op is ops.If and node.inputs and node.inputs[0] is not None \
            and isinstance(ctx.env.get(node.inputs[0].name), np.ndarray):
        _inline_if(ctx, fold, node)
        return
    if any(True for _ in node.subgraphs()):
        why = ("its condition is computed at run time" if node.op is ops.If
               else "it has subgraphs" if node.op not in (ops.Loop, ops.Scan) else "it loops at run time")
        raise ctx.error(f"cannot lower to TVM: {why}; {CONTROL_FLOW_ADVICE}")
    present = [v for v in node.inputs if v is not None]
    for v in present:
        if v.name not in ctx.env:
            raise ctx.error(f"input '{v.name}' is defined by no input, initializer or earlier node")
    if all(isinstance(ctx.env[v.name], np.ndarray) for v in present) and fold.folds(node):
        try:
            results = fold(node, [None if v is None else ctx.env[v.name] for v in node.inputs])
        except Exception as e:
            raise ctx.error(f"constant folding failed: {type(e).__name__}: {e}") from e
        results = [np.asarray(r) if r is not None else None for r in results]
    else:
        fn = LOWERINGS.get(node.op)
        if fn is None:
            raise ctx.error(f"no TVM lowering for op {node.op}")
        try:
            results = list(fn(ctx))
        except LoweringError:
            raise
        except Exception as e:
            raise ctx.error(f"lowering failed: {type(e).__name__}: {e}") from e
    outs = node.outputs
    if len(results) < sum(1 for o in outs if o is not None):
        raise ctx.error(f"the lowering produced {len(results)} outputs, the node has {len(outs)}")
    for o, r in zip(outs, results):
        if o is not None:
            ctx.env[o.name] = r


def _inline_if(ctx: LowerContext, fold: _Folder, node: Node) -> None:
    """An If whose condition is known at lowering time (e.g. computed from static shapes):
    lower the nodes of the branch it takes in place of the If.

    Branch nodes read outer values by name and their own names are unique in the model, so
    they share the environment of the main graph.
    """
    cond = ctx.env[node.inputs[0].name]
    if cond.size != 1:
        raise ctx.error(f"the condition '{node.inputs[0].name}' has {cond.size} elements; If needs one")
    branch = node.attr("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch")
    if branch is None:
        raise ctx.error("missing then_branch / else_branch attribute")
    for inner in branch:
        _lower_node(ctx, fold, inner)
    ctx.node = node
    for o, v in zip(node.outputs, branch.outputs):
        if o is None:
            continue
        x = ctx.env.get(v.name)
        if x is None:
            raise ctx.error(f"branch output '{v.name}' is defined by no node of the branch nor an outer value")
        ctx.env[o.name] = x
