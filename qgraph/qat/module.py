"""A qgraph model (L1 float or L2 QDQ) as a differentiable ``torch.nn.Module``.

``QATModule(model, float_model=None)`` walks the graph once and builds:

- **weight quantizers**: each ``DequantizeLinear`` of a constant integer tensor becomes a
  latent float weight (``nn.Parameter``) fake-quantized with the node's scale, zero point,
  type and axis (``qgraph.ir.l2.read_qdq`` reads them). The latent weight starts from the
  float model's weight when ``float_model`` is given (the constant at the same input of the
  node with the same name), else from the dequantized integers: either way the module's
  first forward equals the PTQ model's, since the PTQ integers are ``quantize(float weight)``.
  A latent bias starts from the PTQ int32 bias (a float32 that ``quantize_bias`` maps back to
  the same integers): insert-qdq's bias correction moves it off the float model's bias.
- **activation quantizers**: each ``QuantizeLinear -> DequantizeLinear`` pair with the same
  parameters becomes one fake quantization.
- **biases**: ``DequantizeLinear`` of an int32 constant whose scale is (exactly) the product
  of the consuming node's input and weight scales becomes a latent float bias, fake-quantized
  with the product of the *learned* scales (as ``insert-qdq`` derives it); a bias scale that
  is not such a product stays fixed.
- **scales**: one learnable scale per scale initializer (Q and DQ of one pair, and the pairs
  ``insert-qdq`` makes share, read one initializer: they stay shared), as
  ``scale = s0 * exp(u)`` with ``u`` the ``nn.Parameter`` starting at 0. ``exp(0)`` is 1
  exactly, so the initial scales are the PTQ ones bit for bit; the scale stays positive; and
  AdamW's steps on ``u`` are relative changes of the scale, right for scales that differ by
  orders of magnitude between layers. Zero points are fixed, unless ``learn_zero_points``:
  then each activation pair's zero point (an initializer, shared as scales are) is a float
  ``nn.Parameter`` rounded in the forward (straight through) and clamped to the type's range;
  its gradient comes from the saturated values (LSQ+), and write back stores it rounded.
- other float constants stay buffers; every other node runs ``torch_ops.TORCH_OPS``.

``forward(feeds)`` takes ``{input name: tensor}`` and returns ``{output name: tensor}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from qgraph.errors import QGraphError
from qgraph.ir import Model
from qgraph.ir.l2 import DEQUANTIZE, QUANTIZE, QDQParamsError, read_qdq
from qgraph.qat.fake_quant import fake_quantize, fake_quantize_bias
from qgraph.qat.torch_ops import OPSET_AWARE, TORCH_OPS


class QATError(QGraphError):
    """A model cannot be turned into a training module (an op without a PyTorch form,
    a Q / DQ pattern qgraph.qat does not read); the message names the node."""


@dataclass
class Quantizer:
    """One learnable scale (``scale_name``: the scale initializer it writes back to)."""

    scale_name: str
    key: str  # the parameter's key in QATModule.log_scales


@dataclass
class WeightQuant:
    node_name: str  # the DequantizeLinear
    int_name: str  # its integer initializer
    param: str  # key in QATModule.weights
    scale: Quantizer
    zero_point: np.ndarray
    dtype: int
    qmin: int
    qmax: int
    axis: int | None


@dataclass
class BiasQuant:
    node_name: str
    int_name: str
    scale_name: str
    param: str
    act_scale: str | None  # keys of the two learned scales whose product is the bias scale
    weight_scale: str | None
    fixed_scale: np.ndarray


@dataclass
class ActQuant:
    scale: Quantizer
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: int | None
    zp_name: str | None = None  # the zero-point initializer (learned zero points write back to it)
    zp_key: str | None = None  # key in QATModule.zero_points when learned


def _key(name: str) -> str:
    return name.replace(".", "·")  # ParameterDict keys may not hold dots


def _scalar_or_vector(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


class QATModule(nn.Module):
    """See the module doc."""

    def __init__(self, model: Model, float_model: Model | None = None, *, learn_zero_points: bool = False):
        super().__init__()
        self.learn_zero_points = learn_zero_points
        self.zero_points = nn.ParameterDict()
        self.model = model
        self.opset = model.opset("")
        g = model.graph
        self.input_names = [v.name for v in g.inputs if not v.is_initializer()]
        self.output_names = [v.name for v in g.outputs]
        self.weights = nn.ParameterDict()
        self.log_scales = nn.ParameterDict()
        self._scale0: dict[str, torch.Tensor] = {}
        self.weight_quants: dict[str, WeightQuant] = {}  # DQ output value name ->
        self.bias_quants: dict[str, BiasQuant] = {}
        self.act_quants: dict[str, ActQuant] = {}  # DQ output value name (of a Q -> DQ pair) ->
        self._fused_q: set[str] = set()  # Q node names folded into a pair
        self._consts: dict[str, torch.Tensor] = {}
        float_consts = _float_constants(float_model) if float_model is not None else {}
        self._plan(float_consts)
        for k, v in self._consts.items():
            self.register_buffer("c_" + _key(k), v, persistent=False)

    # ----------------------------------------------------------------------------- planning
    def _scale(self, node, name: str, scale: np.ndarray) -> Quantizer:
        key = _key(name)
        if key not in self.log_scales:
            s0 = _scalar_or_vector(scale)
            self._scale0[key] = s0
            self.register_buffer("s0_" + key, s0, persistent=False)
            self.log_scales[key] = nn.Parameter(torch.zeros_like(s0))
        return Quantizer(name, key)

    def scale(self, key: str) -> torch.Tensor:
        """The learned scale ``s0 * exp(u)`` of quantizer ``key`` (float32)."""
        return getattr(self, "s0_" + key) * torch.exp(self.log_scales[key])

    def _plan(self, float_consts) -> None:
        g = self.model.graph
        for node in g:
            if any(True for _ in node.subgraphs()):
                raise QATError(f"{node.describe()}: control flow (subgraphs) is not supported by qgraph.qat")
            if node.op in DEQUANTIZE and node.inputs[0] is not None and node.inputs[0].constant() is not None:
                self._plan_constant_dq(node, float_consts)
            elif node.op in DEQUANTIZE:
                self._plan_pair(node)
            elif node.op not in QUANTIZE and node.op not in TORCH_OPS:
                raise QATError(f"{node.describe()}: op {node.op} has no PyTorch form in qgraph.qat.torch_ops "
                               f"(add it to TORCH_OPS)")
            for v in node.inputs:
                if v is not None and v.constant() is not None and v.name not in self._consts:
                    self._consts[v.name] = _tensor(v.constant().numpy())
        for v in g.initializers.values():
            if v.constant() is not None and v.name not in self._consts:
                self._consts[v.name] = _tensor(v.constant().numpy())

    def _params(self, node):
        try:
            p = read_qdq(node)
        except QDQParamsError as e:
            raise QATError(f"{node.describe()}: {e}") from e
        if p.block_size:
            raise QATError(f"{node.describe()}: block quantization is not supported by qgraph.qat")
        return p

    def _plan_constant_dq(self, node, float_consts) -> None:
        p = self._params(node)
        ints = node.inputs[0].constant().numpy().astype(np.int64)
        out = node.outputs[0]
        latent = None
        if p.dtype.name == "INT32":  # a bias: PTQ's own (bias correction may have moved it off the float one)
            latent = _bias_latent(ints, _bcast(p.scale, p.axis, ints.ndim))
        for user, i in out.uses() if latent is None else ():
            latent = float_consts.get((user.name, i))
            if latent is not None and latent.shape == ints.shape:
                break
            latent = None
        if latent is None:
            latent = ((ints - _bcast(p.zero_point, p.axis, ints.ndim)).astype(np.float32)
                      * _bcast(p.scale, p.axis, ints.ndim))
        pkey = _key(out.name)
        self.weights[pkey] = nn.Parameter(torch.from_numpy(np.array(latent, np.float32)))
        if p.dtype.name == "INT32":
            self.bias_quants[out.name] = self._plan_bias(node, p, pkey)
            return
        self.weight_quants[out.name] = WeightQuant(
            node.name, node.inputs[0].name, pkey, self._scale(node, node.inputs[1].name, p.scale),
            p.zero_point, int(p.dtype), p.qmin, p.qmax, p.axis)

    def _plan_bias(self, node, p, pkey) -> BiasQuant:
        out = node.outputs[0]
        act = wgt = None
        users = out.users()
        if len(users) == 1 and len(users[0].inputs) >= 3 and users[0].inputs[2] is out:
            x_dq, w_dq = (v.producer() if v is not None else None for v in users[0].inputs[:2])
            if x_dq is not None and w_dq is not None and x_dq.op in DEQUANTIZE and w_dq.op in DEQUANTIZE:
                xs, ws = read_qdq(x_dq).scale, read_qdq(w_dq).scale
                product = (np.asarray(xs, np.float32) * np.asarray(ws, np.float32)).astype(np.float32)
                if product.shape == p.scale.shape and np.array_equal(product, p.scale):
                    act, wgt = _key(x_dq.inputs[1].name), _key(w_dq.inputs[1].name)
        return BiasQuant(node.name, node.inputs[0].name, node.inputs[1].name, pkey, act, wgt, p.scale)

    def _plan_pair(self, node) -> None:
        q = node.inputs[0].producer() if node.inputs[0] is not None else None
        if q is None or q.op not in QUANTIZE:
            raise QATError(f"{node.describe()}: a DequantizeLinear of a computed tensor must read a QuantizeLinear")
        pq, pd = self._params(q), self._params(node)
        if not (np.array_equal(pq.scale, pd.scale) and np.array_equal(pq.zero_point, pd.zero_point)
                and pq.dtype == pd.dtype and pq.axis == pd.axis):
            raise QATError(f"{node.describe()}: its parameters differ from those of {q.describe()}")
        if any(u.op not in DEQUANTIZE for u in q.outputs[0].users()) or q.outputs[0].is_graph_output():
            raise QATError(f"{q.describe()}: its integer output is read by other than DequantizeLinear nodes")
        self._fused_q.add(q.name)
        zp_v = q.inputs[2] if len(q.inputs) > 2 else None
        zp_key = None
        if self.learn_zero_points and zp_v is not None and zp_v.is_initializer():
            zp_key = _key(zp_v.name)
            if zp_key not in self.zero_points:
                self.zero_points[zp_key] = nn.Parameter(_zp(pq.zero_point))
        self.act_quants[node.outputs[0].name] = ActQuant(self._scale(node, q.inputs[1].name, pq.scale),
                                                         pq.zero_point, pq.qmin, pq.qmax, pq.axis,
                                                         zp_v.name if zp_v is not None else None, zp_key)

    # ----------------------------------------------------------------------------- forward
    def forward(self, feeds: dict, features: Sequence[str] = ()) -> dict:
        """The graph outputs by name, plus the values named in ``features`` (any value of the
        graph: feature distillation reads the same names in the student and the float teacher)."""
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in feeds:
                raise QATError(f"no feed for model input '{name}'")
            env[name] = torch.as_tensor(feeds[name])
        for name in self._consts:
            env[name] = getattr(self, "c_" + _key(name))
        for node in self.model.graph:
            out = node.outputs[0].name if node.outputs else None
            if node.op in QUANTIZE and node.name in self._fused_q:
                continue
            if out in self.weight_quants:
                w = self.weight_quants[out]
                env[out] = fake_quantize(self.weights[w.param], self.scale(w.scale.key), _zp(w.zero_point),
                                         w.qmin, w.qmax, w.axis)
            elif out in self.bias_quants:
                env[out] = fake_quantize_bias(self.weights[self.bias_quants[out].param], self.bias_scale(out))
            elif out in self.act_quants:
                a = self.act_quants[out]
                x = env[node.inputs[0].producer().inputs[0].name]
                env[out] = fake_quantize(x, self.scale(a.scale.key), self.zero_point(a), a.qmin, a.qmax, a.axis)
            else:
                xs = [env[v.name] if v is not None else None for v in node.inputs]
                try:
                    fn = TORCH_OPS[node.op]
                    ys = fn(node, xs, self.opset) if node.op in OPSET_AWARE else fn(node, xs)
                except NotImplementedError as e:
                    raise QATError(f"{node.describe()}: qgraph.qat does not implement {e}") from e
                for v, y in zip(node.outputs, ys):
                    env[v.name] = y
        missing = [f for f in features if f not in env]
        if missing:
            raise QATError(f"no value named {', '.join(repr(f) for f in missing)} in the model (feature "
                           "distillation reads values by name: `qgraph inspect MODEL --json` lists them)")
        return {name: env[name] for name in list(self.output_names) + [f for f in features
                                                                         if f not in self.output_names]}

    def zero_point(self, a: ActQuant) -> torch.Tensor:
        """The zero point of activation pair ``a``: fixed, or the learned one rounded (straight
        through: the value is exactly ``round(z)``, the gradient reaches ``z``) and clamped."""
        if a.zp_key is None:
            return _zp(a.zero_point)
        z = self.zero_points[a.zp_key]
        return (torch.round(z).detach() + (z - z.detach())).clamp(a.qmin, a.qmax)

    def bias_scale(self, out: str) -> torch.Tensor:
        """The float32 scale of bias ``out``: the product of the learned input and weight scales."""
        b = self.bias_quants[out]
        if b.act_scale is None:
            return _scalar_or_vector(b.fixed_scale)
        return self.scale(b.act_scale) * self.scale(b.weight_scale)

    def parameter_groups(self) -> tuple[list, list, list]:
        """(weights, biases and zero points, log-scales): AdamW decays the first group only."""
        bias_keys = {b.param for b in self.bias_quants.values()}
        weights = [p for k, p in self.weights.items() if k not in bias_keys]
        biases = [p for k, p in self.weights.items() if k in bias_keys] + list(self.zero_points.values())
        return weights, biases, list(self.log_scales.values())


def _zp(zero_point: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(zero_point, np.float32))


def _bcast(a: np.ndarray, axis, ndim: int) -> np.ndarray:
    if axis is None:
        return a
    shape = [1] * ndim
    shape[axis] = a.size
    return a.reshape(shape)


def _bias_latent(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A float32 bias that ``quantize_bias`` (float64 ``round(b / s)``) turns back into ``q``:
    ``q * s`` rounded to float32, nudged by an ulp where that rounding crossed a half step.
    Biases beyond 2**23 steps may have no such float32 (then the nearest is kept: off by a step
    of the int32 accumulator, far below an output step)."""
    s64 = np.asarray(scale, np.float64)
    b = (q.astype(np.float64) * s64).astype(np.float32)
    for _ in range(4):
        r = np.round(b.astype(np.float64) / s64)
        if np.array_equal(r, q):
            break
        b = np.where(r < q, np.nextafter(b, np.float32(np.inf)),
                     np.where(r > q, np.nextafter(b, np.float32(-np.inf)), b)).astype(np.float32)
    return b


def _tensor(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return torch.from_numpy(np.array(a, np.float32))
    if a.dtype == np.bool_:
        return torch.from_numpy(np.array(a))
    return torch.from_numpy(np.array(a, np.int64))


def _float_constants(model: Model) -> dict:
    """(node name, input index) -> float constant array, for latent weights (module doc)."""
    found = {}
    for node in model.graph:
        for i, v in enumerate(node.inputs):
            c = v.constant() if v is not None else None
            if c is not None and np.asarray(c.numpy()).dtype.kind == "f":
                found[(node.name, i)] = np.asarray(c.numpy(), np.float32)
    return found
