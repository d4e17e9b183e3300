"""Relax lowerings of ONNX's recurrent ops (LSTM, GRU, RNN), which stay float in a quantized
model (as in ONNX Runtime's and OpenVINO's static quantization).

TVM builds static shapes, so the time loop is unrolled: the input projection of every step is
one matmul, then each step is a ``[batch, hidden] x [hidden, gates * hidden]`` matmul and the
gate arithmetic. The equations are ONNX's (the operator documentation), in the order of the
ONNX reference implementation (``x W^T + h R^T + (Wb + Rb)``, then the activations), so the
results differ from it only in the last bits of sums and transcendental functions.

Supported: directions forward / reverse / bidirectional, ``layout`` 0 and 1, optional bias,
initial states and (LSTM) peepholes, GRU's ``linear_before_reset`` both ways, and the default
activations (LSTM: Sigmoid, Tanh, Tanh; GRU: Sigmoid, Tanh; RNN: Tanh, or Relu / Sigmoid for
RNN). Not supported, each refused with the node's name: other activations, ``clip``, LSTM's
``input_forget``, and ``sequence_lens`` that is not the full length for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgraph.tvm.context import LowerContext
from qgraph.tvm.relax_float import sigmoid_expr

#: The default activations of each op, one list per direction.
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
#: Gate blocks in W / R / B, in ONNX's order.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class _Weights:
    """One direction's weights: ``w_t`` ``[input, gates * H]``, ``r_t`` ``[H, gates * H]``,
    the biases ``wb`` / ``rb`` ``[gates * H]`` (None when absent) and LSTM peepholes ``p`` ``[3H]``."""

    w_t: object
    r_t: object
    wb: object
    rb: object
    p: object


def _activation(ctx: LowerContext, name: str, x):
    from tvm import relax

    if name == "Sigmoid":
        return sigmoid_expr(ctx, ctx.emit(x))  # its constants take x's type: x must be bound
    if name == "Tanh":
        return relax.op.tanh(x)
    if name == "Relu":
        return relax.op.nn.relu(x)
    raise ctx.error(f"activation {name} is not supported in the TVM lowering (Sigmoid, Tanh, Relu are)")


def _check(ctx: LowerContext, kind: str, seq: int, batch: int, dirs: int) -> list[str]:
    """The activations of each direction, flat; refuses the attributes the lowering does not cover."""
    direction = ctx.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.error(f"unknown direction '{direction}'")
    if dirs != (2 if direction == "bidirectional" else 1):
        raise ctx.error(f"direction '{direction}' needs {2 if direction == 'bidirectional' else 1} weight "
                        f"direction(s), W has {dirs}")
    if ctx.attr("clip") is not None:
        raise ctx.error("the clip attribute is not supported in the TVM lowering")
    if kind == "LSTM" and int(ctx.attr("input_forget", 0)):
        raise ctx.error("input_forget=1 is not supported in the TVM lowering")
    acts = ctx.attr("activations")
    per = len(_DEFAULT_ACTIVATIONS[kind])
    if acts is None:
        acts = _DEFAULT_ACTIVATIONS[kind] * dirs
    acts = [a.decode() if isinstance(a, bytes) else str(a) for a in acts]
    if len(acts) != per * dirs:
        raise ctx.error(f"{len(acts)} activations given, {kind} with {dirs} direction(s) needs {per * dirs}")
    allowed = {"LSTM": {("Sigmoid", "Tanh", "Tanh")}, "GRU": {("Sigmoid", "Tanh")},
               "RNN": {("Tanh",), ("Relu",), ("Sigmoid",)}}[kind]
    for d in range(dirs):
        if tuple(acts[d * per:(d + 1) * per]) not in allowed:
            raise ctx.error(f"activations {acts[d * per:(d + 1) * per]} are not supported in the TVM lowering "
                            f"(supported: {sorted(allowed)})")
    if ctx.has_input(4):
        lens = ctx.maybe_const(4)
        if lens is None or lens.shape != (batch,) or not np.all(lens == seq):
            raise ctx.error(f"sequence_lens must be a constant equal to the sequence length ({seq}) for every "
                            "sample in the TVM lowering (variable lengths are not supported)")
    return acts


def _direction_weights(ctx: LowerContext, d: int, gates: int, hidden: int) -> _Weights:
    """Direction ``d``'s weights, transposed for ``x @ w_t`` (numpy when constant, else Relax)."""
    from tvm import relax

    def pick(i):
        c = ctx.maybe_const(i)
        if c is not None:
            return c[d]
        e = ctx.expr(i)
        return ctx.emit(relax.op.squeeze(relax.op.strided_slice(e, axes=[0], begin=[d], end=[d + 1]), [0]))

    def transpose(m):
        return np.ascontiguousarray(m.T) if isinstance(m, np.ndarray) else ctx.emit(relax.op.permute_dims(m, [1, 0]))

    def part(v, lo, hi):
        if isinstance(v, np.ndarray):
            return v[lo:hi]
        return ctx.emit(relax.op.strided_slice(v, axes=[0], begin=[lo], end=[hi]))

    w_t, r_t = transpose(pick(1)), transpose(pick(2))
    wb = rb = p = None
    if ctx.has_input(3):
        b = pick(3)
        wb, rb = part(b, 0, gates * hidden), part(b, gates * hidden, 2 * gates * hidden)
    if ctx.has_input(7) and gates == 4:
        p = pick(7)
    return _Weights(w_t, r_t, wb, rb, p)


def _as_expr(ctx: LowerContext, v):
    return ctx.const(v) if isinstance(v, np.ndarray) else v


def _gate(g, k: int, hidden: int):
    """Block ``k`` of a ``[batch, gates * H]`` tensor."""
    from tvm import relax

    return relax.op.strided_slice(g, axes=[1], begin=[k * hidden], end=[(k + 1) * hidden])


def _initial(ctx: LowerContext, i: int, d: int, batch: int, hidden: int, dtype: str, layout: int):
    """Initial state input ``i`` for direction ``d`` as ``[batch, H]`` (zeros when absent)."""
    from tvm import relax

    if not ctx.has_input(i):
        return ctx.const(np.zeros((batch, hidden), dtype))
    c = ctx.maybe_const(i)
    if c is not None:
        return ctx.const(np.ascontiguousarray(c[:, d] if layout else c[d]))
    axis = 1 if layout else 0
    return ctx.emit(relax.op.squeeze(relax.op.strided_slice(ctx.expr(i), axes=[axis], begin=[d], end=[d + 1]),
                                     [axis]))


def _run_direction(ctx: LowerContext, kind: str, x, wt: _Weights, h, c, acts: list[str], seq: int, batch: int,
                   hidden: int, reverse: bool):
    """Unrolled steps of one direction over ``x`` ``[seq, batch, input]``; returns the list of
    ``[batch, H]`` outputs in time order, the last hidden state and (LSTM) the last cell state."""
    from tvm import relax

    gates = _GATES[kind]
    inputs = ctx.shape(x)[2]
    xw = ctx.emit(relax.op.matmul(relax.op.reshape(x, (seq * batch, inputs)), _as_expr(ctx, wt.w_t)))
    xw = ctx.emit(relax.op.reshape(xw, (seq, batch, gates * hidden)))
    split_r = kind == "GRU" and not int(ctx.attr("linear_before_reset", 0))
    r_t = None if split_r else _as_expr(ctx, wt.r_t)
    if split_r:
        # h's candidate reads (r * h) @ R_h^T: R's blocks are needed apart
        r_zr = (wt.r_t[:, :2 * hidden] if isinstance(wt.r_t, np.ndarray)
                else relax.op.strided_slice(wt.r_t, axes=[1], begin=[0], end=[2 * hidden]))
        r_h = (wt.r_t[:, 2 * hidden:] if isinstance(wt.r_t, np.ndarray)
               else relax.op.strided_slice(wt.r_t, axes=[1], begin=[2 * hidden], end=[3 * hidden]))
        r_zr, r_h = _as_expr(ctx, r_zr), _as_expr(ctx, r_h)
    bias = None  # Wb + Rb (GRU adds them apart: Rb_h sits inside the reset product)
    if wt.wb is not None and kind != "GRU":
        if isinstance(wt.wb, np.ndarray) and isinstance(wt.rb, np.ndarray):
            bias = ctx.const(wt.wb + wt.rb)
        else:
            bias = ctx.emit(relax.op.add(_as_expr(ctx, wt.wb), _as_expr(ctx, wt.rb)))
    outs = [None] * seq
    # the steps' projections apart in one kernel (a strided slice per step cost a kernel call each)
    steps_xw = ctx.emit(relax.op.split(xw, seq, axis=0)) if seq > 1 else relax.Tuple([xw])
    steps = range(seq - 1, -1, -1) if reverse else range(seq)
    for t in steps:
        x_t = relax.op.reshape(relax.TupleGetItem(steps_xw, t), (batch, gates * hidden))
        if kind == "LSTM":
            g = relax.op.add(x_t, relax.op.matmul(h, r_t))
            if bias is not None:
                g = relax.op.add(g, bias)
            g = ctx.emit(g)
            gi, go, gf, gc = (_gate(g, k, hidden) for k in range(4))
            if wt.p is not None:
                p = [_as_expr(ctx, wt.p[k * hidden:(k + 1) * hidden]) if isinstance(wt.p, np.ndarray)
                     else relax.op.strided_slice(wt.p, axes=[0], begin=[k * hidden], end=[(k + 1) * hidden])
                     for k in range(3)]
                gi = relax.op.add(gi, relax.op.multiply(p[0], c))
                gf = relax.op.add(gf, relax.op.multiply(p[2], c))
            i = _activation(ctx, acts[0], gi)
            f = _activation(ctx, acts[0], gf)
            cand = _activation(ctx, acts[1], gc)
            c = ctx.emit(relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, cand)))
            if wt.p is not None:
                go = relax.op.add(go, relax.op.multiply(p[1], c))
            o = _activation(ctx, acts[0], go)
            h = ctx.emit(relax.op.multiply(o, _activation(ctx, acts[2], c)))
        elif kind == "GRU":
            wb, rb = wt.wb, wt.rb
            xg = x_t if wb is None else relax.op.add(x_t, _as_expr(ctx, wb))
            xg = ctx.emit(xg)
            if not split_r:  # linear_before_reset: R_h applies before the reset gate
                hr = relax.op.matmul(h, r_t)
                if rb is not None:
                    hr = relax.op.add(hr, _as_expr(ctx, rb))
                hr = ctx.emit(hr)
                z = _activation(ctx, acts[0], relax.op.add(_gate(xg, 0, hidden), _gate(hr, 0, hidden)))
                r = _activation(ctx, acts[0], relax.op.add(_gate(xg, 1, hidden), _gate(hr, 1, hidden)))
                cand = _activation(ctx, acts[1], relax.op.add(_gate(xg, 2, hidden),
                                                              relax.op.multiply(r, _gate(hr, 2, hidden))))
            else:
                hzr = relax.op.matmul(h, r_zr)
                if rb is not None:
                    rb_zr = (_as_expr(ctx, rb[:2 * hidden]) if isinstance(rb, np.ndarray)
                             else relax.op.strided_slice(rb, axes=[0], begin=[0], end=[2 * hidden]))
                    hzr = relax.op.add(hzr, rb_zr)
                hzr = ctx.emit(hzr)
                z = _activation(ctx, acts[0], relax.op.add(_gate(xg, 0, hidden), _gate(hzr, 0, hidden)))
                r = ctx.emit(_activation(ctx, acts[0], relax.op.add(_gate(xg, 1, hidden),
                                                                    _gate(hzr, 1, hidden))))
                hh = relax.op.matmul(relax.op.multiply(r, h), r_h)
                if rb is not None:
                    rb_h = (_as_expr(ctx, rb[2 * hidden:]) if isinstance(rb, np.ndarray)
                            else relax.op.strided_slice(rb, axes=[0], begin=[2 * hidden], end=[3 * hidden]))
                    hh = relax.op.add(hh, rb_h)
                cand = _activation(ctx, acts[1], relax.op.add(_gate(xg, 2, hidden), hh))
            z = ctx.emit(z)
            one = ctx.const(np.ones((), ctx.dtype(h)))
            h = ctx.emit(relax.op.add(relax.op.multiply(relax.op.subtract(one, z), cand), relax.op.multiply(z, h)))
        else:
            g = relax.op.add(x_t, relax.op.matmul(h, r_t))
            if bias is not None:
                g = relax.op.add(g, bias)
            h = ctx.emit(_activation(ctx, acts[0], g))
        outs[t] = h
    return outs, h, c


def _recurrent(kind: str):
    def lower(ctx: LowerContext):
        from tvm import relax

        x = ctx.expr(0)
        layout = int(ctx.attr("layout", 0))
        if len(ctx.shape(x)) != 3:
            raise ctx.error(f"X must be 3-D, it is {list(ctx.shape(x))}")
        if layout:
            x = ctx.emit(relax.op.permute_dims(x, [1, 0, 2]))
        seq, batch, _ = ctx.shape(x)
        w_shape = ctx.shape(ctx.value(1))
        dirs = w_shape[0]
        gates = _GATES[kind]
        hidden = int(ctx.attr("hidden_size", w_shape[1] // gates))
        if w_shape[1] != gates * hidden:
            raise ctx.error(f"W is {list(w_shape)}; hidden_size {hidden} needs {gates * hidden} rows")
        acts = _check(ctx, kind, seq, batch, dirs)
        per = len(_DEFAULT_ACTIVATIONS[kind])
        dtype = ctx.dtype(x)
        ys, hs, cs = [], [], []
        reverse_only = ctx.attr("direction", "forward") == "reverse"
        for d in range(dirs):
            wt = _direction_weights(ctx, d, gates, hidden)
            h0 = _initial(ctx, 5, d, batch, hidden, dtype, layout)
            c0 = _initial(ctx, 6, d, batch, hidden, dtype, layout) if kind == "LSTM" else None
            outs, h, c = _run_direction(ctx, kind, x, wt, h0, c0, acts[d * per:(d + 1) * per], seq, batch, hidden,
                                        reverse=reverse_only or d == 1)
            ys.append(ctx.emit(relax.op.stack(outs, axis=0)))  # [seq, batch, H]
            hs.append(h)
            cs.append(c)
        y = ctx.emit(relax.op.stack(ys, axis=1))  # [seq, dirs, batch, H]
        y_h = ctx.emit(relax.op.stack(hs, axis=0))  # [dirs, batch, H]
        results = [y, y_h]
        if kind == "LSTM":
            results.append(ctx.emit(relax.op.stack(cs, axis=0)))
        if layout:
            results = [ctx.emit(relax.op.permute_dims(results[0], [2, 0, 1, 3]))] + \
                      [ctx.emit(relax.op.permute_dims(r, [1, 0, 2])) for r in results[1:]]
        return results

    lower.__doc__ = f"ONNX {kind}, float, its time loop unrolled (static sequence length)."
    return lower


lstm, gru, rnn = _recurrent("LSTM"), _recurrent("GRU"), _recurrent("RNN")
