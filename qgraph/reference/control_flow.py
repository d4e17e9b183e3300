"""If / Loop / Scan in the reference interpreter.

Control flow stays float in a quantized model (``insert-qdq`` puts no Q/DQ into bodies), so
these nodes carry no integer semantics; they are here so that a model containing them runs.
Each body runs in a nested ``Interpreter`` (built once per body, its plans cached across
iterations and runs) with the outer values it reads passed in by name: the IR holds such a
read as a direct use of the outer ``Value`` (``captured_values``).

The loop semantics are written here rather than taken from onnx's ``ReferenceEvaluator``:
in onnx 1.23 its Loop runs no iteration when the optional ``cond`` input is absent (the spec
and ONNX Runtime run ``M``), stacks scan outputs with ``np.vstack`` (wrong shape for scalar
and rank >= 2 slices), and its Scan refuses any axis or direction but the first.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from qgraph.ir import ops
from qgraph.ir.core import Graph, Model, Node, Value
from qgraph.ir.dtypes import to_numpy
from qgraph.ir.ops import OpId
from qgraph.onnx.evaluate import captured_values
from qgraph.reference.common import InterpreterError

#: The control-flow ops ``ControlFlowRunner`` runs.
CONTROL_FLOW: frozenset[OpId] = frozenset({ops.If, ops.Loop, ops.Scan})


class ControlFlowRunner:
    """Runs one If / Loop / Scan node: ``runner(node, args, memo) -> outputs``, where ``args``
    are the node's inputs followed by the values of ``captured`` (the outer values its bodies
    read)."""

    def __init__(self, node: Node, opsets: Mapping[str, int]):
        self.node = node
        self.opsets = dict(opsets)
        self.captured: list[Value] = captured_values(node)
        self._bodies: dict[str, object] = {}
        if node.op is ops.Scan and int(self.opsets.get("", self.opsets.get("ai.onnx", 21))) < 9:
            raise InterpreterError(f"{node.describe()}: Scan before opset 9 (batch axis and sequence_lens) is not "
                                   "run by the reference interpreter; upgrade the model's opset to 9 or later")

    # -- bodies ----------------------------------------------------------------------------------
    def _body(self, attr: str):
        interp = self._bodies.get(attr)
        if interp is None:
            from qgraph.reference.interpreter import Interpreter

            graph = self.node.attr(attr)
            if not isinstance(graph, Graph):
                raise InterpreterError(f"{self.node.describe()}: missing subgraph attribute '{attr}'")
            model = Model(graph, {("" if d == "ai.onnx" else d): v for d, v in self.opsets.items()})
            interp = self._bodies[attr] = Interpreter(model, outer_scope=[v.name for v in self.captured])
        return interp

    def _run_body(self, attr: str, feeds: list, outer: dict) -> list:
        interp = self._body(attr)
        graph = interp.model.graph
        if len(feeds) != len(graph.inputs):
            raise InterpreterError(f"{self.node.describe()}: its '{attr}' takes {len(graph.inputs)} inputs, "
                                   f"the node gives it {len(feeds)}")
        try:
            result = interp.run_body({v.name: x for v, x in zip(graph.inputs, feeds)}, outer)
        except InterpreterError as e:
            raise InterpreterError(f"{self.node.describe()}, in its '{attr}': {e}") from e
        return [result[v.name] for v in graph.outputs]

    # -- running ---------------------------------------------------------------------------------
    def __call__(self, node: Node, args: list, memo: dict) -> list:
        n = len(node.inputs)
        inputs, outer = args[:n], {v.name: x for v, x in zip(self.captured, args[n:])}
        if node.op is ops.If:
            return self._if(inputs, outer)
        if node.op is ops.Loop:
            return self._loop(inputs, outer)
        return self._scan(inputs, outer)

    def _if(self, inputs: list, outer: dict) -> list:
        cond = np.asarray(inputs[0]) if inputs and inputs[0] is not None else None
        if cond is None or cond.size != 1:
            raise InterpreterError(f"{self.node.describe()}: the condition must be one boolean, got "
                                   f"{'nothing' if cond is None else list(cond.shape)}")
        return self._run_body("then_branch" if bool(cond.reshape(-1)[0]) else "else_branch", [], outer)

    def _loop(self, inputs: list, outer: dict) -> list:
        node = self.node
        trips = inputs[0] if inputs else None
        cond = inputs[1] if len(inputs) > 1 else None
        state = list(inputs[2:])
        if trips is None and cond is None:
            raise InterpreterError(f"{node.describe()}: neither a trip count M nor a condition: the loop never ends")
        body = node.attr("body")
        k = len(body.outputs) - 1 - len(state)
        if k < 0:
            raise InterpreterError(f"{node.describe()}: the body has {len(body.outputs)} outputs for {len(state)} "
                                   "loop-carried values (it needs the condition, then one per value)")
        limit = None if trips is None else int(np.asarray(trips).reshape(-1)[0])
        # an absent cond input makes it a for loop: the body's cond output is ignored (the spec)
        go = np.array(True) if cond is None else np.asarray(cond, np.bool_).reshape(())
        scans: list[list] = [[] for _ in range(k)]
        i = 0
        while (limit is None or i < limit) and bool(go):
            outs = self._run_body("body", [np.array(i, np.int64), go, *state], outer)
            if cond is not None:
                go = np.asarray(outs[0], np.bool_).reshape(())
            state = outs[1:1 + len(state)]
            for acc, y in zip(scans, outs[1 + len(state):]):
                acc.append(y)
            i += 1
        stacked = [np.stack(acc) if acc else _empty_scan(v) for acc, v in zip(scans, body.outputs[1 + len(state):])]
        return state + stacked

    def _scan(self, inputs: list, outer: dict) -> list:
        node = self.node
        m = int(node.attr("num_scan_inputs", 0))
        n = len(inputs) - m
        if m < 1 or n < 0:
            raise InterpreterError(f"{node.describe()}: num_scan_inputs {m} does not fit its {len(inputs)} inputs")
        body = node.attr("body")
        k = len(body.outputs) - n
        state, xs = list(inputs[:n]), [np.asarray(x) for x in inputs[n:]]
        in_axes = list(node.attr("scan_input_axes", [0] * m))
        in_dirs = list(node.attr("scan_input_directions", [0] * m))
        out_axes = list(node.attr("scan_output_axes", [0] * k))
        out_dirs = list(node.attr("scan_output_directions", [0] * k))
        xs = [np.moveaxis(x, a, 0) for x, a in zip(xs, in_axes)]  # negative axes count from the end
        lengths = {x.shape[0] for x in xs}
        if len(lengths) != 1:
            raise InterpreterError(f"{node.describe()}: the scan inputs have different sequence lengths "
                                   f"{sorted(lengths)} along their scan axes")
        steps = lengths.pop()
        scans: list[list] = [[] for _ in range(k)]
        for t in range(steps):
            slices = [x[steps - 1 - t] if d else x[t] for x, d in zip(xs, in_dirs)]
            outs = self._run_body("body", [*state, *slices], outer)
            state = outs[:n]
            for acc, y in zip(scans, outs[n:]):
                acc.append(np.asarray(y))
        results = list(state)
        for acc, axis, d, v in zip(scans, out_axes, out_dirs, body.outputs[n:]):
            y = np.stack(acc[::-1] if d else acc) if acc else _empty_scan(v)
            results.append(np.moveaxis(y, 0, axis))
        return results


def _empty_scan(v: Value) -> np.ndarray:
    """The scan output of zero iterations: ``[0, *slice shape]`` when the body declares it."""
    dtype = to_numpy(v.dtype) if v.dtype is not None else np.float32
    dims = v.shape
    if dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
        return np.zeros((0, *dims), dtype)
    return np.zeros((0,), dtype)
