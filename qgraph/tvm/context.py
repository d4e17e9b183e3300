"""The state shared by the op lowerings: the Relax block builder, the values lowered so far
(Relax expressions, or numpy arrays for values known at lowering time) and helpers that
name the node in every error.

A lowering is ``fn(ctx) -> [output, ...]`` for the node ``ctx.node``; an output is a Relax
expression or a numpy array (a constant: shapes, folded arithmetic).

The lowerings here are target-independent (standard Relax ops). A target with kernels of its
own gives them through ``ctx.kernels``, its *kernel package* (``KernelPackage``: the x86 AVX2
one is ``qgraph.tvm.x86``), which ``qgraph.tvm.kernel_packages`` chooses from the target when
lowering starts; a lowering asks it first with ``target_kernel`` and falls back to its own
Relax ops where the package does not cover the node. So the target-independent modules never
import a kernel package.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from qgraph.errors import QGraphError
from qgraph.ir.core import Node
from qgraph.ir import l3, l3_geometry
from qgraph.ir.l3_geometry import Transposed, Windows


class LoweringError(QGraphError):
    """An L3 model cannot be lowered to Relax: names the node, its op and why."""


#: numpy dtypes as Relax dtype strings (Relax spells them the same).
def dtype_name(dt) -> str:
    """The Relax dtype string of a numpy dtype (``bool`` for booleans)."""
    return np.dtype(dt).name


class KernelPackage(Protocol):
    """A target's hand-written kernels, as the target-independent lowerings ask for them.

    Each hook takes the context of the node being lowered and returns the node's output (a
    Relax expression) when one of the package's kernels covers the node, else None (the
    default Relax lowering runs). A package may leave a hook out (``target_kernel`` treats
    a missing one as None). ``qgraph.tvm.x86`` is one.
    """

    def qconv(self, ctx: "LowerContext"):
        """A QConv node's output, or None."""

    def qmatmul(self, ctx: "LowerContext"):
        """A QMatMul node's output, or None."""

    def lookup(self, ctx: "LowerContext", table: np.ndarray, storage: str):
        """A Lookup node's output (``table`` already read, in ``storage``), or None."""

    def float_gemv(self, ctx: "LowerContext", x, w: np.ndarray):
        """``x @ w`` for a float Relax ``x`` ``[D, M, K]`` and a constant ``w`` ``[D, K, N]`` (the
        recurrent ops' matmuls), or None."""

    def float_lstm(self, ctx: "LowerContext", x, w: np.ndarray, r: np.ndarray, bias, h0, c0, reverse: list[bool]):
        """An LSTM's time loop (default activations, no peepholes) for a float Relax ``x``
        ``[seq, batch, I]``, constant ``W^T`` ``[D, I, 4H]`` and ``R^T`` ``[D, H, 4H]``, ``Wb + Rb``
        ``[D, 4H]`` or None, initial states ``[D, batch, H]`` and each direction's ``reverse``:
        ``(Y [seq, D, batch, H], Y_h, Y_c)``, or None."""


class LowerContext:
    """Values and helpers for lowering one node at a time.

    Args:
        bb: the Relax block builder, inside the dataflow block of ``main``.
        opsets: the model's opsets (``""`` for the default domain).
        kernels: the target's kernel package (``KernelPackage``), whose kernels replace the
            default lowering of the ops it covers; None: the default lowering everywhere.
    """

    def __init__(self, bb, opsets: Mapping[str, int], kernels: KernelPackage | None = None):
        self.bb = bb
        self.opsets = dict(opsets)
        self.kernels = kernels
        self.env: dict[str, object] = {}
        self.node: Node | None = None
        #: value name -> the same tensor in another layout a kernel may read instead (an
        #: interleaved conv's output as ``[C, H, W, N]``: ``qgraph.tvm.x86.select._unfold``)
        self.lanes: dict[str, object] = {}

    # -- errors ----------------------------------------------------------------------------------
    def error(self, message: str) -> LoweringError:
        """A ``LoweringError`` naming the current node and its op."""
        where = self.node.describe() if self.node is not None else "model"
        return LoweringError(f"{where}: {message}")

    @property
    def opset(self) -> int:
        """The default-domain opset of the model."""
        return int(self.opsets.get("", self.opsets.get("ai.onnx", 21)))

    # -- inputs ----------------------------------------------------------------------------------
    def has_input(self, i: int) -> bool:
        """Whether input ``i`` of the node is present (optional inputs may be absent)."""
        ins = self.node.inputs
        return i < len(ins) and ins[i] is not None

    def value(self, i: int):
        """Input ``i``: a Relax expression or a numpy array (a constant)."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        if v is None:
            raise self.error(f"input {i} is required")
        if v.name not in self.env:
            raise self.error(f"input '{v.name}' is defined by no input, initializer or earlier node")
        return self.env[v.name]

    def expr(self, i: int):
        """Input ``i`` as a Relax expression (a constant becomes a ``relax.const``)."""
        x = self.value(i)
        return self.const(x) if isinstance(x, np.ndarray) else x

    def const_input(self, i: int, what: str | None = None) -> np.ndarray:
        """Input ``i`` as a numpy array; raises when it is not known at lowering time."""
        x = self.value(i)
        if not isinstance(x, np.ndarray):
            name = self.node.inputs[i].name
            raise self.error(f"input '{name}'{' (' + what + ')' if what else ''} must be a constant (an "
                             "initializer, or computable from initializers and static shapes)")
        return x

    def maybe_const(self, i: int) -> np.ndarray | None:
        """Input ``i`` as a numpy array when it is a constant (else None; None when absent)."""
        if not self.has_input(i):
            return None
        x = self.value(i)
        return x if isinstance(x, np.ndarray) else None

    def attr(self, name: str, default=None):
        """Attribute ``name`` (strings decoded)."""
        value = self.node.attr(name, default)
        return value.decode() if isinstance(value, bytes) else value

    # -- building --------------------------------------------------------------------------------
    def emit(self, expr):
        """Bind ``expr`` to a fresh dataflow variable."""
        import tvm
        from tvm import relax

        if isinstance(expr, (relax.Var, tvm.ir.expr.Constant)):
            return expr
        return self.bb.emit(expr)

    @staticmethod
    def const(arr, dtype=None):
        """A Relax constant of ``arr`` in ``dtype`` (int64 stays int64: Relax would narrow it)."""
        from tvm import relax

        a = np.asarray(arr, dtype=dtype)
        # np.ascontiguousarray would make a scalar [1]: legalization turns only a 0-d constant
        # into an immediate (a [1] one is a buffer the kernel loads, and an int64 one then
        # costs 64-bit multiplies and shifts that AVX2 emulates)
        return relax.const(a if a.flags.c_contiguous else a.copy(order="C"), dtype_name(a.dtype))

    @staticmethod
    def shape(x) -> tuple[int, ...]:
        """The static shape of a Relax expression or numpy array."""
        if isinstance(x, np.ndarray):
            return tuple(x.shape)
        ty = x.ty
        if ty.shape is None:
            raise LoweringError(f"{x} has no static shape")
        return tuple(int(d) for d in ty.shape)

    @staticmethod
    def dtype(x) -> str:
        """The element type of a Relax expression or numpy array, as a string."""
        if isinstance(x, np.ndarray):
            return dtype_name(x.dtype)
        return str(x.ty.dtype)

    def astype(self, x, dtype: str):
        """``x`` converted to ``dtype`` (no op when it already is)."""
        from tvm import relax

        if self.dtype(x) == dtype:
            return x
        if isinstance(x, np.ndarray):
            return x.astype(dtype)
        return self.emit(relax.op.astype(x, dtype))

    # -- node helpers ----------------------------------------------------------------------------
    def storage(self, lo: int, hi: int, index: int = 0) -> str:
        """The output's integer storage type (its declared type, else the smallest holding
        ``[lo, hi]``): the L3 contract's rule (``qgraph.ir.l3.storage_dtype``)."""
        try:
            return dtype_name(l3.storage_dtype(self.node, lo, hi, index))
        except l3.ContractError as e:
            raise self.error(str(e).split(": ", 1)[-1]) from e

    def windows(self, spatial: Sequence[int], kernel: Sequence[int], *, ceil_mode: bool = False) -> Windows:
        """Window geometry of a conv / pool over ``spatial`` (the L3 contract's rule:
        ``qgraph.ir.l3_geometry.windows``)."""
        try:
            return l3_geometry.windows(self.node, spatial, kernel, ceil_mode=ceil_mode)
        except l3.ContractError as e:
            raise self.error(str(e).split(": ", 1)[-1]) from e


    def transposed(self, spatial: Sequence[int], kernel: Sequence[int]) -> Transposed:
        """Geometry of a transposed conv over ``spatial`` (the L3 contract's rule:
        ``qgraph.ir.l3_geometry.transposed``)."""
        try:
            return l3_geometry.transposed(self.node, spatial, kernel)
        except l3.ContractError as e:
            raise self.error(str(e).split(": ", 1)[-1]) from e

    def lower_as(self, node: Node, consts: Mapping[str, np.ndarray], fn: "Lowering") -> list:
        """The outputs of lowering ``node``, a stand-in that no graph holds (e.g. the QConv one
        QConvTranspose becomes), with ``fn``: its inputs are read by name from the values lowered
        so far plus ``consts``; the current node and the values are restored afterwards, so an
        error inside names the stand-in (give it the real node's name)."""
        taken = [k for k in consts if k in self.env]
        if taken:
            raise self.error(f"stand-in constant '{taken[0]}' would hide a value of the graph")
        real = self.node
        self.env.update(consts)
        self.node = node
        try:
            return list(fn(self))
        finally:
            self.node = real
            for k in consts:
                del self.env[k]


#: PrimFunc attribute a kernel package sets on its conv / matmul kernels: the multiply-adds one
#: call does (the model's own, not the padding's). ``Compiled.kernel_macs`` collects them, and
#: ``bench/profile_tvm.py`` turns them into GMAC/s per kernel against the machine's peak.
MACS_ATTR = "qgraph.macs"

#: ``fn(ctx) -> outputs``.
Lowering = Callable[[LowerContext], Sequence[object]]


def target_kernel(ctx: LowerContext, hook: str, *args):
    """The current node's output from hook ``hook`` of the target's kernel package
    (``ctx.kernels``), or None: no package, no such hook, or no kernel of it covers the node."""
    fn = getattr(ctx.kernels, hook, None) if ctx.kernels is not None else None
    return None if fn is None else fn(ctx, *args)
