"""A *launch plan*: a fused Relax module's ``main`` as the ordered TIR kernel calls a
freestanding program makes, with every tensor a statically sized buffer.

There is no TVM runtime for Hexagon here (no Relax VM, no ``export_library``), so the program
that runs under qemu-hexagon is generated: ``extract`` reads ``main`` after legalization and
fusion (``R.call_tir`` bindings only, static shapes: qgraph's TVM builds are static already)
and returns the buffers (inputs, constants, intermediates, outputs), the calls in order and
the buffers ``main`` returns. ``qgraph.tvm.hexagon.driver`` writes the C driver from it.

Buffers are not reused between calls (no memory planning): the golden models and PP-OCRv4
cls need a few MiB, which qemu's user mode maps without complaint.

(The GPU branch plans a target-independent extractor, ``qgraph/tvm/plan.py``; it did not
exist when this one was written. The two should become one at merge.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qgraph.tvm.context import LoweringError


@dataclass(frozen=True)
class Buffer:
    """One static tensor of the program.

    Attributes:
        index: its position in ``Plan.buffers``.
        kind: ``input``, ``const`` or ``temp`` (a kernel's output).
        dtype: the TVM / numpy dtype name (``bool`` is one byte).
        shape: the static shape.
        name: the graph input's name (``input``), else a readable label.
    """

    index: int
    kind: str
    dtype: str
    shape: tuple[int, ...]
    name: str = ""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Launch:
    """One kernel call: the PrimFunc's global symbol and its buffer arguments (inputs, then
    the outputs it writes: TVM's destination-passing style)."""

    symbol: str
    args: tuple[int, ...]


@dataclass
class Plan:
    """The program: ``buffers``, ``launches`` in order, and the buffers returned by ``main``.

    Attributes:
        constants: buffer index -> its bytes (the ``const`` buffers).
    """

    buffers: list[Buffer] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    constants: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, kind: str, dtype: str, shape, name: str = "") -> int:
        b = Buffer(len(self.buffers), kind, str(dtype), tuple(int(d) for d in shape), name)
        self.buffers.append(b)
        return b.index

    def kernel_calls(self) -> dict[str, int]:
        """``{qgraph kernel: calls}``: the calls to qgraph's own kernels (symbols starting
        with ``q``, their numeric suffix dropped), as ``qgraph.tvm.build.kernel_calls`` counts."""
        counts: dict[str, int] = {}
        for launch in self.launches:
            name = launch.symbol.rstrip("0123456789")
            if name.startswith("q"):
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))


def _tensor_type(ty, what: str):
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise LoweringError(f"{what}: a tensor of static shape was expected, got {ty}")
    try:
        shape = tuple(int(d) for d in ty.shape)
    except (TypeError, ValueError) as e:
        raise LoweringError(f"{what}: symbolic shape {ty.shape}; Hexagon builds need static shapes") from e
    return str(ty.dtype), shape


def extract(mod, input_names) -> Plan:
    """The launch plan of ``mod["main"]`` (after ``LegalizeOps``, ``FuseOps``, ``FuseTIR``).

    Args:
        mod: the fused IRModule.
        input_names: the graph input names, in the order of ``main``'s parameters.

    Raises:
        LoweringError: ``main`` holds a binding that is not a TIR call (or a tuple of their
            results), or a tensor of symbolic shape; the message names the binding.
    """
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    main = mod["main"]
    plan = Plan()
    env: dict = {}  # relax var -> buffer index, or a tuple of them

    for param, name in zip(main.params, input_names):
        dtype, shape = _tensor_type(param.ty, f"input '{name}'")
        env[param] = plan.add("input", dtype, shape, name)
        plan.inputs.append(env[param])

    def operand(expr, what: str):
        if isinstance(expr, tvm.ir.expr.Constant):
            arr = expr.value.numpy()
            index = plan.add("const", arr.dtype.name, arr.shape, f"const{len(plan.constants)}")
            plan.constants[index] = np.ascontiguousarray(arr)
            return index
        if isinstance(expr, relax.Tuple):
            return tuple(operand(f, what) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return operand(expr.tuple_value, what)[int(expr.index)]
        if expr in env:
            return env[expr]
        raise LoweringError(f"{what}: operand {expr} is not a tensor the plan knows")

    for block in main.body.blocks:
        for binding in block.bindings:
            value, what = binding.value, f"binding '{binding.var.name}'"
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                symbol = value.args[0].name_hint
                args = operand(value.args[1], what)
                args = args if isinstance(args, tuple) else (args,)
                if len(value.args) > 2:
                    raise LoweringError(f"{what}: a TIR call with symbolic shape arguments; Hexagon builds need "
                                        "static shapes")
                ty = binding.var.ty
                if isinstance(ty, relax.TupleType):
                    outs = tuple(plan.add("temp", *_tensor_type(t, what), f"{binding.var.name}.{i}")
                                 for i, t in enumerate(ty.fields))
                    env[binding.var] = outs
                else:
                    outs = (plan.add("temp", *_tensor_type(ty, what), binding.var.name),)
                    env[binding.var] = outs[0]
                if any(isinstance(a, tuple) for a in args):
                    raise LoweringError(f"{what}: a tuple argument to a TIR call")
                plan.launches.append(Launch(symbol, tuple(args) + outs))
            elif isinstance(value, (relax.Var, relax.Tuple, relax.TupleGetItem, tvm.ir.expr.Constant)):
                env[binding.var] = operand(value, what)
            else:
                raise LoweringError(f"{what}: {type(value).__name__} '{value}' is not a TIR call; the Hexagon "
                                    "program runs TIR kernels only")
    result = operand(main.body.body, "main's result")
    plan.outputs = list(result) if isinstance(result, tuple) else [result]
    if any(isinstance(o, tuple) for o in plan.outputs):
        raise LoweringError("main's result: a nested tuple")
    return plan
