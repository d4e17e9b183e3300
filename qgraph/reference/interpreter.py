"""The reference interpreter: runs a model node by node in numpy.

L3 integer ops run through the kernels of this package (the golden integer semantics of
``qgraph.ir.l3``); standard ONNX ops and float fallback regions through a few numpy kernels
and onnx's ``ReferenceEvaluator``. The same interpreter runs an L2 QDQ model (its
QuantizeLinear / DequantizeLinear go through ``qgraph.quant.params``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx

from qgraph.ir import l3, ops
from qgraph.ir.core import Model, Node, Value
from qgraph.ir.dtypes import DType, to_numpy
from qgraph.ir.ops import OpId, STANDARD_DOMAINS
from qgraph.onnx.decompose import DECOMPOSITIONS
from qgraph.reference import control_flow, linear, onnx_ops, pointwise, pool
from qgraph.reference.common import InterpreterError, NotNative

#: ``kernel(node, inputs, memo) -> outputs``; ``memo`` is a per-node dict kept across runs.
Kernel = Callable[[Node, list, dict], list]

#: The numpy kernel of each op the interpreter implements itself.
KERNELS: Mapping[OpId, Kernel] = MappingProxyType({
    l3.Quantize: pointwise.quantize_op,
    l3.Dequantize: pointwise.dequantize_op,
    l3.QConv: linear.qconv,
    l3.QConvTranspose: linear.qconv_transpose,
    l3.QMatMul: linear.qmatmul,
    l3.QAdd: pointwise.qadd,
    l3.QMul: pointwise.qmul,
    l3.QAveragePool: pool.qaverage_pool,
    l3.QGlobalAveragePool: pool.qglobal_average_pool,
    l3.Requantize: pointwise.requantize_op,
    l3.Lookup: pointwise.lookup,
    ops.QuantizeLinear: pointwise.quantize_linear,
    ops.DequantizeLinear: pointwise.dequantize_linear,
    ops.MaxPool: pool.max_pool,
    ops.Identity: onnx_ops.identity,
    ops.Reshape: onnx_ops.reshape,
    ops.Transpose: onnx_ops.transpose,
    ops.Flatten: onnx_ops.flatten,
    ops.Concat: onnx_ops.concat,
})


@dataclass
class _Step:
    node: Node
    kernel: Kernel | None  # None: onnx's evaluator
    fallback: onnx_ops.OnnxNodeRunner | None
    inputs: tuple[str | None, ...]
    outputs: tuple[str | None, ...]
    memo: dict = field(default_factory=dict)


def _fallback(node: Node, opsets: Mapping[str, int]):
    if node.op in control_flow.CONTROL_FLOW:
        return control_flow.ControlFlowRunner(node, opsets)
    if node.op.domain in STANDARD_DOMAINS:
        try:
            onnx.defs.get_schema(node.op.op_type, opsets.get(node.op.domain, 1_000), node.op.domain)
        except onnx.defs.SchemaError as e:
            raise InterpreterError(f"{node.describe()}: unknown op {node.op}; the reference interpreter has "
                                   "no kernel for it") from e
    elif node.op not in DECOMPOSITIONS:
        raise InterpreterError(f"{node.describe()}: the reference interpreter has no kernel for op {node.op}")
    return onnx_ops.OnnxNodeRunner(node, opsets)


class Interpreter:
    """Runs a model in numpy: the golden integer semantics of L3 (``qgraph.ir.l3``).

    Build one per model and call ``run`` for each sample: kernels keep per-node state
    (shifted weights, onnx evaluators) across runs. The model must not change meanwhile.

    If / Loop / Scan nodes run in float (``qgraph.reference.control_flow``): their bodies run
    in nested interpreters, which read the outer values a body uses by name.

    Args:
        model: an L3 (or L2 QDQ, or float) model whose nodes are in topological order.
        outer_scope: for a subgraph run on its own (an If / Loop / Scan body): the names of
            enclosing-graph values it reads, given to each ``run_body``.

    Raises:
        InterpreterError: a node uses an op with no kernel.
    """

    def __init__(self, model: Model, *, outer_scope: Iterable[str] = ()):
        self.model = model
        self._outer = frozenset(outer_scope)
        graph = model.graph
        opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
        self._steps: list[_Step] = []
        for node in graph:
            kernel = KERNELS.get(node.op)
            # standard ops keep onnx's evaluator for the forms their numpy kernel leaves out
            runner = _fallback(node, opsets) if kernel is None or node.op.domain in STANDARD_DOMAINS else None
            # an If / Loop / Scan also reads the outer values its bodies use: planning must
            # keep them alive until the node runs (and run them before it)
            captured = tuple(v.name for v in runner.captured) if runner is not None else ()
            self._steps.append(_Step(node, kernel, runner,
                                     tuple(v.name if v is not None else None for v in node.inputs) + captured,
                                     tuple(o.name if o is not None else None for o in node.outputs)))
        self._inputs: list[Value] = list(graph.inputs)
        self._consts = {name: v.const_value for name, v in graph.initializers.items()}
        self._produced = {o: i for i, s in enumerate(self._steps) for o in s.outputs if o is not None}
        self._plans: dict[tuple, tuple[list[int], dict[int, list[str]], frozenset[str]]] = {}

    # -- feeds -----------------------------------------------------------------------------------
    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = {}
        declared = {v.name for v in self._inputs}
        unknown = [k for k in feeds if k not in declared and k not in self._consts]
        if unknown:
            raise InterpreterError(f"unknown input '{unknown[0]}'; the model's inputs are "
                                   f"{', '.join(repr(n) for n in declared) or 'none'}")
        for v in self._inputs:
            if v.name not in feeds:
                if v.name in self._consts:
                    continue
                raise InterpreterError(f"missing feed for input '{v.name}' ({v.type})")
            x = feeds[v.name]
            if not isinstance(x, np.ndarray):
                x = np.asarray(x)
            if v.dtype is not None:
                expected = {DType.INT4: np.dtype(np.int8), DType.UINT4: np.dtype(np.uint8)}.get(v.dtype)
                allowed = {to_numpy(v.dtype)} | ({expected} if expected is not None else set())
                if x.dtype not in allowed:
                    raise InterpreterError(f"input '{v.name}' expects {to_numpy(v.dtype)} ({v.type}), got {x.dtype}")
            if v.shape is not None:
                ok = len(v.shape) == x.ndim and all(not isinstance(d, int) or d <= 0 or d == n for d, n in zip(v.shape, x.shape))
                if not ok:
                    raise InterpreterError(f"input '{v.name}' expects shape {v.type}, got {list(x.shape)}")
            env[v.name] = x
        return env

    # -- planning --------------------------------------------------------------------------------
    def _plan(self, wanted: tuple[str, ...], keep) -> tuple[list[int], dict[int, list[str]], frozenset[str]]:
        """The steps to run, the values each step is the last reader of, and the values to keep."""
        key = (wanted, keep if keep is True else tuple(sorted(keep or ())))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        known = set(self._produced) | set(self._consts) | {v.name for v in self._inputs} | self._outer
        kept = set() if keep in (None, False) else set(self._produced) if keep is True else set(keep)
        for name in (*wanted, *kept):
            if name not in known:
                raise InterpreterError(f"the model has no value named '{name}'")
        needed: set[int] = set()
        stack = [self._produced[n] for n in (*wanted, *kept) if n in self._produced]
        while stack:
            i = stack.pop()
            if i in needed:
                continue
            needed.add(i)
            stack.extend(self._produced[n] for n in self._steps[i].inputs if n in self._produced)
        order = sorted(needed)
        retain = frozenset(wanted) | frozenset(kept)
        last: dict[str, int] = {}
        for i in order:
            for n in self._steps[i].inputs:
                if n is not None:
                    last[n] = i
            for n in self._steps[i].outputs:
                if n is not None:
                    last.setdefault(n, i)  # never read: drop right away
        drop: dict[int, list[str]] = {}
        for n, i in last.items():
            if n not in retain:
                drop.setdefault(i, []).append(n)
        plan = self._plans[key] = (order, drop, retain)
        return plan

    # -- running ---------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None, *,
            keep: Iterable[str] | bool | None = None) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` and return ``{name: array}``.

        Args:
            feeds: an array per graph input (inputs that are also initializers may be omitted).
            outputs: the value names to return (default: the graph outputs); any value of the
                graph may be asked for, and only the nodes they need are run.
            keep: intermediate values to return as well (for per-layer reports), or ``True``
                for every node output.

        Raises:
            InterpreterError: a feed is missing, unknown or of the wrong dtype / shape, or a
                node fails (the error names it; the cause is chained).
        """
        if isinstance(outputs, str):
            outputs = (outputs,)
        if isinstance(keep, str):
            keep = (keep,)
        wanted = tuple(outputs) if outputs is not None else tuple(v.name for v in self.model.graph.outputs)
        keep = True if keep is True else (None if not keep else tuple(keep))
        order, drop, retain = self._plan(wanted, keep)
        return self._execute(self._check_feeds(feeds), wanted, order, drop, retain)

    def run_body(self, feeds: Mapping[str, np.ndarray], outer: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a subgraph (an If / Loop / Scan body) once: ``feeds`` for its inputs, ``outer``
        for the enclosing-graph values it reads (``outer_scope``). Feeds are not checked
        against the declared input types: bodies often declare looser or stale ones, and
        the caller builds the feeds. Returns the graph outputs by name."""
        wanted = tuple(v.name for v in self.model.graph.outputs)
        order, drop, retain = self._plan(wanted, None)
        env = dict(outer)
        env.update(feeds)
        return self._execute(env, wanted, order, drop, retain)

    def _execute(self, env: dict, wanted: tuple[str, ...], order: list[int], drop: dict[int, list[str]],
                 retain: frozenset[str]) -> dict[str, np.ndarray]:
        for i in order:
            step = self._steps[i]
            args = [None if n is None else self._value(env, n, step) for n in step.inputs]
            results = self._call(step, args)
            if len(results) != len(step.outputs):
                raise InterpreterError(f"{step.node.describe()}: produced {len(results)} outputs, the node has "
                                       f"{len(step.outputs)}")
            for name, r in zip(step.outputs, results):
                if name is not None:
                    env[name] = r
            for name in drop.get(i, ()):
                env.pop(name, None)
        result = {n: self._value(env, n, None) for n in wanted}
        for n in retain:
            if n not in result:
                result[n] = self._value(env, n, None)
        return result

    def _value(self, env: dict, name: str, step: _Step | None) -> np.ndarray:
        x = env.get(name)
        if x is None:
            const = self._consts.get(name)
            if const is None:
                where = f"{step.node.describe()} reads" if step is not None else "requested"
                raise InterpreterError(f"{where} value '{name}', which no input, initializer or earlier node "
                                       "defines")
            x = const.numpy()
        return x

    def _call(self, step: _Step, args: list) -> list:
        node = step.node
        try:
            if step.kernel is not None:
                try:
                    return step.kernel(node, args, step.memo)
                except NotNative:
                    if step.fallback is None:
                        raise
            return step.fallback(node, args, step.memo)
        except InterpreterError:
            raise
        except Exception as e:
            raise InterpreterError(f"{node.describe()} failed: {type(e).__name__}: {e}") from e


def run(model: Model, feeds: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None, *,
        keep: Iterable[str] | bool | None = None) -> dict[str, np.ndarray]:
    """``Interpreter(model).run(feeds, outputs, keep=keep)`` (for one-off runs)."""
    return Interpreter(model).run(feeds, outputs, keep=keep)
