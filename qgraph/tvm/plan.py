"""A launch plan: a compiled model as buffers and device-kernel launches, for a runtime that is
not TVM's (pyopencl here; CuPy on a GPU machine without TVM; a Hexagon driver).

    plan = extract(relax_mod, lowered_tir)   # after legalization + scheduling, static shapes
    plan.save(folder)                         # plan.json + constants.npz
    plan = LaunchPlan.load(folder)

Target-independent: it reads two things any TVM device build has.

- The Relax ``main`` after legalization and fusion (``R.call_tir`` of scheduled PrimFuncs, plus
  ``R.reshape`` views, tuples and constants); read before memory planning, so each call's
  result is its own buffer (simple and safe; these models are small next to device memory).
- Each PrimFunc after ``SplitHostDevice``: its host part is a sequence of
  ``call_ffi_kernel(name, buffers..., extents..., launch_params=[blockIdx.x, threadIdx.x, ...])``
  whose extents are constants for static shapes; those become the launches (grid and block).

The plan is plain JSON and numpy, so a launcher needs neither TVM nor qgraph (``launch.py`` of
``qgraph.tvm.gpu`` runs it with pyopencl or CuPy).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgraph.tvm.context import LoweringError

PLAN_FILE = "plan.json"
CONSTANTS_FILE = "constants.npz"
PLAN_FORMAT = "qgraph.plan/1"

_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass
class Buffer:
    """One device buffer (``base`` None) or a view of one (a reshape: same bytes, new shape)."""

    id: int
    dtype: str
    shape: tuple[int, ...]
    base: int | None = None
    constant: str | None = None  # the key in constants.npz

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class Launch:
    """One device kernel launch: ``grid`` blocks of ``block`` threads (x, y, z), on ``args``
    (buffer ids, in the kernel's parameter order; static shapes leave no scalar argument)."""

    kernel: str
    args: list[int]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    func: str = ""  # the PrimFunc it belongs to


@dataclass
class LaunchPlan:
    """Buffers, the launches in order, and which buffers are the model's inputs and outputs."""

    buffers: list[Buffer]
    launches: list[Launch]
    inputs: list[tuple[str, int]]
    outputs: list[tuple[str, int]]
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def root(self, buf: int) -> int:
        """The id of the allocated buffer ``buf`` views (itself if it is one)."""
        b = self.buffers[buf]
        while b.base is not None:
            b = self.buffers[b.base]
        return b.id

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "buffers": [{"id": b.id, "dtype": b.dtype, "shape": list(b.shape), "base": b.base,
                         "constant": b.constant} for b in self.buffers],
            "launches": [{"kernel": k.kernel, "func": k.func, "args": k.args, "grid": list(k.grid),
                          "block": list(k.block)} for k in self.launches],
            "inputs": [[n, i] for n, i in self.inputs],
            "outputs": [[n, i] for n, i in self.outputs],
        }

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, PLAN_FILE), "w") as f:
            json.dump(self.to_json(), f, indent=1)
        np.savez(os.path.join(folder, CONSTANTS_FILE), **self.constants)

    @classmethod
    def load(cls, folder: str) -> "LaunchPlan":
        with open(os.path.join(folder, PLAN_FILE)) as f:
            d = json.load(f)
        if d.get("format") != PLAN_FORMAT:
            raise LoweringError(f"{folder}/{PLAN_FILE} is not a qgraph launch plan ({PLAN_FORMAT})")
        with np.load(os.path.join(folder, CONSTANTS_FILE)) as z:
            constants = {k: z[k] for k in z.files}
        return cls([Buffer(b["id"], b["dtype"], tuple(b["shape"]), b["base"], b["constant"]) for b in d["buffers"]],
                   [Launch(k["kernel"], list(k["args"]), tuple(k["grid"]), tuple(k["block"]), k.get("func", ""))
                    for k in d["launches"]],
                   [(n, i) for n, i in d["inputs"]], [(n, i) for n, i in d["outputs"]], constants)


def _int(e) -> int:
    if type(e).__name__ == "IntImm":
        return int(e.value)
    if isinstance(e, int):
        return e
    raise LoweringError(f"a kernel launch extent is not a constant ({e}); the GPU build needs static shapes")


def _walk(stmt, visit) -> None:
    """Call ``visit`` on ``stmt`` and every statement and call below it, in program order
    (TVM 0.27 exposes no TIR visitor to Python)."""
    from tvm import tirx

    visit(stmt)
    for key in ("seq",):
        for s in getattr(stmt, key, None) or ():
            _walk(s, visit)
    for key in ("body", "then_case", "else_case", "value"):
        child = getattr(stmt, key, None)
        if isinstance(child, tirx.Stmt) or type(child).__name__ == "Call":
            _walk(child, visit)


def _name(v) -> str:
    """A Relax variable's name (``name_hint`` before TVM 0.27, ``name`` since)."""
    return str(getattr(v, "name_hint", None) or getattr(v, "name", v))


def _data_name(e) -> str:
    """The name of the buffer whose data pointer ``e`` is (``X.data`` or the pointer var)."""
    if getattr(getattr(e, "op", None), "name", "") == "tirx.buffer_data":
        return _data_name(e.args[0])
    return str(getattr(e, "name", e))


def kernel_launches(lowered_tir) -> dict[str, tuple[list, list]]:
    """The device kernels each host PrimFunc launches, from a TIR module after ``SplitHostDevice``
    (host functions calling ``call_ffi_kernel``): ``{PrimFunc name: (launches, scratch)}``, a
    launch ``(kernel, [param index or ("scratch", k)], grid, block)``, a scratch buffer the host
    function allocates between its kernels ``(k, dtype, bytes)``."""
    from tvm import tirx

    out: dict[str, tuple[list, list]] = {}
    for gv, func in lowered_tir.functions.items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and "tirx.kernel_launch_params" in func.attrs):
            continue
        param = {str(p.name) if hasattr(p, "name") else str(p): i for i, p in enumerate(func.params)}
        alias: dict[str, str] = {}
        scratch: dict[str, tuple[int, str, int]] = {}
        calls: list = []

        def visit(node):
            buf = getattr(node, "buffer", None)
            if buf is not None and type(node).__name__ == "DeclBuffer":
                alias[buf.name] = _data_name(buf.data)
            elif buf is not None and type(node).__name__ in ("AllocBuffer", "Allocate"):
                n = int(np.prod([_int(e) for e in buf.shape])) * np.dtype(str(buf.dtype)).itemsize
                scratch[buf.name] = (len(scratch), str(buf.dtype), n)
            if type(node).__name__ == "Call" and getattr(node.op, "name", "") == "tirx.call_ffi_kernel":
                calls.append(node)

        _walk(func.body, visit)
        launches = []
        for call in calls:
            name = str(call.args[0].value)
            params = [str(p) for p in call.attrs.launch_params]
            if any("dyn_shared" in p for p in params):
                raise LoweringError(f"{gv.name_hint}: kernel {name} uses dynamic shared memory, which the launch "
                                    "plan does not size")
            n_ext = len(params)
            buf_args, ext = call.args[1:len(call.args) - n_ext], call.args[len(call.args) - n_ext:]
            grid, block = [1, 1, 1], [1, 1, 1]
            for p, e in zip(params, ext):
                kind, _, axis = p.rpartition(".")
                (grid if kind == "blockIdx" else block)[_AXES[axis]] = _int(e)
            args: list = []
            for a in buf_args:
                nm = _data_name(a)
                while nm in alias and alias[nm] != nm:
                    nm = alias[nm]
                if nm in param:
                    args.append(param[nm])
                elif nm in scratch:
                    args.append(("scratch", scratch[nm][0]))
                else:
                    raise LoweringError(f"{gv.name_hint}: kernel {name} takes {a}, which is neither a buffer of "
                                        "the function nor one it allocates (a scalar argument?)")
            launches.append((name, args, tuple(grid), tuple(block)))
        out[gv.name_hint] = (launches, sorted(scratch.values()))
    return out


def extract(relax_mod, lowered_tir) -> LaunchPlan:
    """The launch plan of ``relax_mod``'s ``main`` (legalized: ``call_tir`` to scheduled
    PrimFuncs, ``reshape`` views; static shapes) with the kernels of ``lowered_tir`` (the same
    PrimFuncs after ``SplitHostDevice``).

    Raises:
        LoweringError: something in ``main`` a plan cannot express (names the binding).
    """
    from tvm import relax
    from tvm.ir.expr import Constant

    launches_of = kernel_launches(lowered_tir)
    buffers: list[Buffer] = []
    constants: dict[str, np.ndarray] = {}
    plan_launches: list[Launch] = []

    def new(sinfo, base=None, constant=None) -> int:
        b = Buffer(len(buffers), str(sinfo.dtype), tuple(int(d) for d in sinfo.shape.values), base, constant)
        buffers.append(b)
        return b.id

    def tensors(sinfo) -> Any:
        if isinstance(sinfo, relax.TupleType):
            return tuple(tensors(f) for f in sinfo.fields)
        if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
            raise LoweringError(f"a value of type {sinfo} in the plan: only static tensors are supported")
        return new(sinfo)

    env: dict = {}
    main = relax_mod["main"]
    inputs = []
    for p in main.params:
        env[p] = tensors(p.ty)
        inputs.append((_name(p), env[p]))

    def value(e) -> Any:
        if isinstance(e, relax.Var):
            return env[e]
        if isinstance(e, Constant):
            key = f"c{len(constants)}"
            constants[key] = e.value.numpy()
            return new(e.ty, constant=key)
        if isinstance(e, relax.Tuple):
            return tuple(value(f) for f in e.fields)
        if isinstance(e, relax.TupleGetItem):
            return value(e.tuple_value)[e.index]
        raise LoweringError(f"cannot plan the expression {type(e).__name__}: {e}")

    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            v, e = binding.var, binding.value
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.call_tir":
                gv, args = e.args[0], value(e.args[1])
                if len(e.args) > 2:
                    raise LoweringError(f"{_name(v)}: call_tir with symbolic tir_vars: static shapes only")
                out = tensors(e.ty)
                flat = list(args) + (list(out) if isinstance(out, tuple) else [out])
                if gv.name_hint not in launches_of:
                    raise LoweringError(f"{_name(v)}: {gv.name_hint} has no device kernels")
                kernels, scratch = launches_of[gv.name_hint]
                scratch_ids = [Buffer(len(buffers) + i, dt, (n // np.dtype(dt).itemsize,)) for i, (_, dt, n) in
                               enumerate(scratch)]
                buffers.extend(scratch_ids)
                for name, params, grid, block_ in kernels:
                    ids = [scratch_ids[p[1]].id if isinstance(p, tuple) else flat[p] for p in params]
                    plan_launches.append(Launch(name, ids, grid, block_, gv.name_hint))
                env[v] = out
            elif isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.reshape":
                src = value(e.args[0])
                env[v] = new(e.ty, base=src)
            elif isinstance(e, relax.Call):
                raise LoweringError(f"{_name(v)}: {getattr(e.op, 'name', e.op)} is not a kernel call; the launch "
                                    "plan takes call_tir and reshape only")
            else:
                env[v] = value(e)
    result = value(body.body)
    flat_out = list(result) if isinstance(result, tuple) else [result]
    return LaunchPlan(buffers, plan_launches, inputs, [(str(i), b) for i, b in enumerate(flat_out)], constants)
