"""Relax lowerings of ONNX's recurrent ops (LSTM, GRU, RNN), which stay float in a quantized
model (as in ONNX Runtime's and OpenVINO's static quantization).

TVM builds static shapes, so the time loop is unrolled: the input projection of every step is
one matmul, then each step is a ``[batch, hidden] x [hidden, gates * hidden]`` matmul and the
gate arithmetic. The directions of a bidirectional op run as one batch (every step tensor has
the directions as its first axis): one kernel chain of ``seq`` steps, not two. The matmuls by
constant weights go to the target's GEMV kernel where it has one (``KernelPackage.float_gemv``:
x86's packs the weights so that they stream in order). An LSTM with constant weights and the
default activations goes whole to the target's loop kernel where it has one
(``KernelPackage.float_lstm``: x86's runs every step in one call, the cell update in the
GEMV's epilogue). The equations are ONNX's (the operator
documentation), in the order of the ONNX reference implementation (``x W^T + h R^T + (Wb + Rb)``,
then the activations), so the results differ from it only in the last bits of sums and
transcendental functions.

Supported: directions forward / reverse / bidirectional, ``layout`` 0 and 1, optional bias,
initial states and (LSTM) peepholes, GRU's ``linear_before_reset`` both ways, and the default
activations (LSTM: Sigmoid, Tanh, Tanh; GRU: Sigmoid, Tanh; RNN: Tanh, or Relu / Sigmoid for
RNN). Not supported, each refused with the node's name: other activations, ``clip``, LSTM's
``input_forget``, and ``sequence_lens`` that is not the full length for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgraph.tvm.context import LowerContext, target_kernel
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
    """Block ``k`` of a ``[D, batch, gates * H]`` tensor."""
    from tvm import relax

    return relax.op.strided_slice(g, axes=[2], begin=[k * hidden], end=[(k + 1) * hidden])


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


def _stack(ctx: LowerContext, parts: list, axis: int = 0):
    """``parts`` stacked on a new ``axis``: numpy when every part is a constant, else Relax."""
    from tvm import relax

    if all(isinstance(p, np.ndarray) for p in parts):
        return np.ascontiguousarray(np.stack(parts, axis=axis))
    return ctx.emit(relax.op.stack([_as_expr(ctx, p) for p in parts], axis=axis))


def _last(v, lo: int, hi: int):
    """``v[..., lo:hi]`` of a 3-D numpy array or Relax tensor."""
    from tvm import relax

    if isinstance(v, np.ndarray):
        return np.ascontiguousarray(v[:, :, lo:hi])
    return relax.op.strided_slice(v, axes=[2], begin=[lo], end=[hi])


def _matmul(ctx: LowerContext, x, w):
    """``x @ w`` for ``x`` ``[D, M, K]`` and a weight ``w`` ``[D, K, N]``: the target's GEMV kernel
    (``KernelPackage.float_gemv``) where it has one and ``w`` is a constant, else Relax's matmul."""
    from tvm import relax

    if isinstance(w, np.ndarray):
        y = target_kernel(ctx, "float_gemv", x, w)
        if y is not None:
            return y
    return relax.op.matmul(x, _as_expr(ctx, w))


def _fused_lstm(ctx: LowerContext, x, wts: list[_Weights], h0s: list, c0s: list, acts: list[str],
                reverse: list[bool]):
    """The target's one-kernel LSTM loop (``KernelPackage.float_lstm``) where it covers the op:
    constant weights and biases, default activations, no peepholes; else None."""
    if acts != _DEFAULT_ACTIVATIONS["LSTM"] or any(wt.p is not None for wt in wts):
        return None
    arrays = [wt.w_t for wt in wts] + [wt.r_t for wt in wts]
    arrays += [b for wt in wts for b in (wt.wb, wt.rb) if b is not None]
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    bias = np.stack([wt.wb + wt.rb for wt in wts]) if wts[0].wb is not None else None
    return target_kernel(ctx, "float_lstm", x, np.stack([wt.w_t for wt in wts]), np.stack([wt.r_t for wt in wts]),
                         bias, _stack(ctx, h0s), _stack(ctx, c0s), reverse)


def _run_directions(ctx: LowerContext, kind: str, x, wts: list[_Weights], h0s: list, c0s: list, acts: list[str],
                    seq: int, batch: int, hidden: int, reverse: list[bool]):
    """Unrolled steps of ``D`` directions at once (their weights ``wts``, initial states, whether
    each runs in reverse; one activation list for all) over ``x`` ``[seq, batch, input]``: every
    tensor of a step carries the directions as its first axis, so a bidirectional layer is one
    step kernel chain of ``seq`` steps, not two (half the kernel calls; ``D`` times the work per
    call, which the GEMV kernel runs in parallel). Returns ``Y`` ``[seq, D, batch, H]`` in time
    order, the last hidden state ``[D, batch, H]`` and (LSTM) the last cell state."""
    from tvm import relax

    gates, d_n = _GATES[kind], len(wts)
    if kind == "LSTM":
        fused = _fused_lstm(ctx, x, wts, h0s, c0s, acts, reverse)
        if fused is not None:
            return fused
    inputs = ctx.shape(x)[2]
    x1 = ctx.emit(relax.op.reshape(x, (1, seq * batch, inputs)))
    xws = []
    for wt, rev in zip(wts, reverse):
        w_t = wt.w_t[None] if isinstance(wt.w_t, np.ndarray) else relax.op.expand_dims(wt.w_t, 0)
        xw = relax.op.reshape(_matmul(ctx, x1, w_t), (seq, batch, gates * hidden))
        xws.append(ctx.emit(relax.op.flip(xw, axis=0) if rev else xw))  # step s of a reverse direction: time seq-1-s
    xw = ctx.emit(relax.op.stack(xws, axis=1)) if d_n > 1 else ctx.emit(relax.op.expand_dims(xws[0], 1))
    split_r = kind == "GRU" and not int(ctx.attr("linear_before_reset", 0))
    r_t = _stack(ctx, [wt.r_t for wt in wts])  # [D, H, gates * H]
    if split_r:  # h's candidate reads (r * h) @ R_h^T: R's blocks are needed apart
        r_zr, r_h = _last(r_t, 0, 2 * hidden), _last(r_t, 2 * hidden, 3 * hidden)

    def per_direction(vs):  # [X] per direction -> [D, 1, X], broadcast over the batch
        st = _stack(ctx, vs)
        return st[:, None, :] if isinstance(st, np.ndarray) else ctx.emit(relax.op.expand_dims(st, 1))

    wb = per_direction([wt.wb for wt in wts]) if wts[0].wb is not None else None
    rb = per_direction([wt.rb for wt in wts]) if wts[0].rb is not None else None
    p = per_direction([wt.p for wt in wts]) if wts[0].p is not None else None
    bias = None  # Wb + Rb (GRU adds them apart: Rb_h sits inside the reset product)
    if wb is not None and kind != "GRU":
        bias = ctx.const(wb + rb) if isinstance(wb, np.ndarray) and isinstance(rb, np.ndarray) \
            else ctx.emit(relax.op.add(_as_expr(ctx, wb), _as_expr(ctx, rb)))
    h = _as_expr(ctx, _stack(ctx, h0s))
    c = _as_expr(ctx, _stack(ctx, c0s)) if kind == "LSTM" else None
    outs = []
    # the steps' projections apart in one kernel (a strided slice per step cost a kernel call each)
    steps_xw = ctx.emit(relax.op.split(xw, seq, axis=0)) if seq > 1 else relax.Tuple([xw])
    for t in range(seq):
        x_t = relax.op.reshape(relax.TupleGetItem(steps_xw, t), (d_n, batch, gates * hidden))
        if kind == "LSTM":
            g = relax.op.add(x_t, _matmul(ctx, h, r_t))
            if bias is not None:
                g = relax.op.add(g, bias)
            g = ctx.emit(g)
            gi, go, gf, gc = (_gate(g, k, hidden) for k in range(4))
            if p is not None:
                ps = [_as_expr(ctx, _last(p, k * hidden, (k + 1) * hidden)) for k in range(3)]
                gi = relax.op.add(gi, relax.op.multiply(ps[0], c))
                gf = relax.op.add(gf, relax.op.multiply(ps[2], c))
            i = _activation(ctx, acts[0], gi)
            f = _activation(ctx, acts[0], gf)
            cand = _activation(ctx, acts[1], gc)
            c = ctx.emit(relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, cand)))
            if p is not None:
                go = relax.op.add(go, relax.op.multiply(ps[1], c))
            o = _activation(ctx, acts[0], go)
            h = ctx.emit(relax.op.multiply(o, _activation(ctx, acts[2], c)))
        elif kind == "GRU":
            xg = x_t if wb is None else relax.op.add(x_t, _as_expr(ctx, wb))
            xg = ctx.emit(xg)
            if not split_r:  # linear_before_reset: R_h applies before the reset gate
                hr = _matmul(ctx, h, r_t)
                if rb is not None:
                    hr = relax.op.add(hr, _as_expr(ctx, rb))
                hr = ctx.emit(hr)
                z = _activation(ctx, acts[0], relax.op.add(_gate(xg, 0, hidden), _gate(hr, 0, hidden)))
                r = _activation(ctx, acts[0], relax.op.add(_gate(xg, 1, hidden), _gate(hr, 1, hidden)))
                cand = _activation(ctx, acts[1], relax.op.add(_gate(xg, 2, hidden),
                                                              relax.op.multiply(r, _gate(hr, 2, hidden))))
            else:
                hzr = _matmul(ctx, h, r_zr)
                if rb is not None:
                    hzr = relax.op.add(hzr, _as_expr(ctx, _last(rb, 0, 2 * hidden)))
                hzr = ctx.emit(hzr)
                z = _activation(ctx, acts[0], relax.op.add(_gate(xg, 0, hidden), _gate(hzr, 0, hidden)))
                r = ctx.emit(_activation(ctx, acts[0], relax.op.add(_gate(xg, 1, hidden),
                                                                    _gate(hzr, 1, hidden))))
                hh = _matmul(ctx, ctx.emit(relax.op.multiply(r, h)), r_h)
                if rb is not None:
                    hh = relax.op.add(hh, _as_expr(ctx, _last(rb, 2 * hidden, 3 * hidden)))
                cand = _activation(ctx, acts[1], relax.op.add(_gate(xg, 2, hidden), hh))
            z = ctx.emit(z)
            one = ctx.const(np.ones((), ctx.dtype(h)))
            h = ctx.emit(relax.op.add(relax.op.multiply(relax.op.subtract(one, z), cand), relax.op.multiply(z, h)))
        else:
            g = relax.op.add(x_t, _matmul(ctx, h, r_t))
            if bias is not None:
                g = relax.op.add(g, bias)
            h = ctx.emit(_activation(ctx, acts[0], g))
        outs.append(h)
    y = ctx.emit(relax.op.stack(outs, axis=0))  # [seq, D, batch, H], step order
    if any(reverse):
        parts = []
        for i, rev in enumerate(reverse):
            yi = relax.op.strided_slice(y, axes=[1], begin=[i], end=[i + 1]) if d_n > 1 else y
            parts.append(ctx.emit(relax.op.flip(yi, axis=0)) if rev else ctx.emit(yi))
        y = ctx.emit(relax.op.concat(parts, axis=1)) if d_n > 1 else parts[0]
    return y, h, c


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
        reverse_only = ctx.attr("direction", "forward") == "reverse"
        wts = [_direction_weights(ctx, d, gates, hidden) for d in range(dirs)]
        h0s = [_initial(ctx, 5, d, batch, hidden, dtype, layout) for d in range(dirs)]
        c0s = [_initial(ctx, 6, d, batch, hidden, dtype, layout) for d in range(dirs)] if kind == "LSTM" else []
        # directions with one activation list run as one batch of directions (``_run_directions``)
        same = dirs == 1 or acts[:per] == acts[per:]
        groups = [list(range(dirs))] if same else [[d] for d in range(dirs)]
        ys, hs, cs = [], [], []
        for grp in groups:
            y, h, c = _run_directions(ctx, kind, x, [wts[d] for d in grp], [h0s[d] for d in grp],
                                      [c0s[d] for d in grp] if kind == "LSTM" else [],
                                      acts[grp[0] * per:(grp[0] + 1) * per], seq, batch, hidden,
                                      [reverse_only or d == 1 for d in grp])
            ys.append(y)
            hs.append(h)
            cs.append(c)
        y = ctx.emit(relax.op.concat(ys, axis=1)) if len(ys) > 1 else ys[0]  # [seq, dirs, batch, H]
        y_h = ctx.emit(relax.op.concat(hs, axis=0)) if len(hs) > 1 else hs[0]  # [dirs, batch, H]
        results = [y, y_h]
        if kind == "LSTM":
            results.append(ctx.emit(relax.op.concat(cs, axis=0)) if len(cs) > 1 else cs[0])
        if layout:
            results = [ctx.emit(relax.op.permute_dims(results[0], [2, 0, 1, 3]))] + \
                      [ctx.emit(relax.op.permute_dims(r, [1, 0, 2])) for r in results[1:]]
        return results

    lower.__doc__ = f"ONNX {kind}, float, its time loop unrolled (static sequence length)."
    return lower


lstm, gru, rnn = _recurrent("LSTM"), _recurrent("GRU"), _recurrent("RNN")
