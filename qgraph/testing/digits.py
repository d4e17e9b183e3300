"""The golden digits CNN: data split, bit-reproducible numpy training, ONNX export, accuracy.

scikit-learn's ``load_digits`` (1,797 8x8 grey images, values 0..16, shipped inside the
scikit-learn wheel) trains a small real CNN in pure numpy; ``golden/generate.py`` writes it as
``golden/models/digits_cnn.onnx`` with its calibration and held-out data. scikit-learn is only
needed for the data (the ``golden`` or ``test`` extra).

Architecture (opset 13, input ``input`` [N,1,8,8], output ``logits`` [N,10])::

    Conv(1->8, 3x3, pad 1, no bias) -> BatchNormalization -> Relu
    Conv(8->16, 3x3, pad 1, stride 2) -> Relu                      # 4x4
    Conv(16->32, 3x3, pad 1, stride 2) -> Relu                     # 2x2
    Flatten -> Gemm(128->10, transB=1)

(An AveragePool head, 2x2 -> 32 features, held out 97-97.8%: the flattened 2x2 map reads
better; pooling ops are covered by the ``op_pool`` golden model.)

Reproducibility: training must give the same bits on any x86-64 machine with the same numpy
wheel, but float BLAS picks its kernels by CPU (AVX2 / AVX-512 / FMA), so the summation order
and the rounding of every matmul change from machine to machine, and low-bit differences
compound over training. Transcendental functions (``np.exp``, ``np.log``, libm's ``pow``) also
have CPU-specific SIMD implementations that are not correctly rounded. So training uses only:

* **exact products**: every matmul and every sum (conv, Gemm, their gradients, BatchNorm
  statistics, bias gradients) first rounds its operands to fixed-point integers with a per-call
  power-of-two scale (block floating point) and a bit width chosen from the reduction length K
  so that ``K * 2**(bits_a + bits_b) <= 2**53``. The integers are held in float64, so every
  product and every partial sum is an integer below 2**53, exactly representable: any BLAS
  kernel, any summation order, with or without FMA, returns the same exact result. Scaling back
  by a power of two (``np.ldexp``) is exact too. Operands keep 20+ significant bits relative
  to the largest element of the block, plenty for training.
* **correctly rounded elementwise IEEE-754 operations** (+, -, *, /, sqrt, rint, floor,
  comparisons, max), which give the same bits on every CPU and SIMD width. ``exp`` for the
  softmax is written with them (range reduction + a Taylor polynomial); Adam's bias
  corrections use repeated multiplication, not ``pow``.
* **integer-only randomness**: ``np.random.default_rng(seed)`` permutations and ``uniform``
  (random bits times a power of two); no normal draws (their ziggurat tails call libm).

The float32 weights written to ONNX are the float64 training state rounded once. Checked:
the same model bytes with OpenBLAS's Prescott, SandyBridge and Zen kernels, 1 or 2 threads,
and numpy's AVX2 / FMA3 loops disabled, while a plain float dgemm changed bits between them
(``tests/test_golden.py::test_training_is_independent_of_blas_kernels``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SEED = 20261201
N_TEST = 500
N_CALIB = 128
EPOCHS = 30
BATCH = 64
BN_EPS = 1e-5

_LN2 = 0.6931471805599453
_INV_LN2 = 1.4426950408889634


# ----------------------------------------------------------------------------- data

def load_split(seed: int = SEED, n_test: int = N_TEST) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits data as a fixed seeded train / held-out split.

    Args:
        seed: Seed of the permutation that picks the held-out samples.
        n_test: Number of held-out samples.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images as float32 ``[N, 1, 8, 8]`` in [0, 1]
        (pixel / 16, exact in float32), labels as int64 ``[N]``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train], y[train], x[test], y[test]


def calibration_samples(x_train: np.ndarray, n: int = N_CALIB, seed: int = SEED) -> np.ndarray:
    """``n`` training images picked by a seeded permutation (float32 ``[n, 1, 8, 8]``)."""
    idx = np.sort(np.random.default_rng(seed + 1).permutation(len(x_train))[:n])
    return np.ascontiguousarray(x_train[idx], dtype=np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` ``[N, classes]`` against integer ``labels`` ``[N]``."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def run_onnx(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX digits model (path, bytes or ModelProto) in ONNX Runtime's CPU EP."""
    from qgraph.testing.ort import session

    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    return session(model).run(["logits"], {"input": np.asarray(x, np.float32)})[0]


# ----------------------------------------------------------------------------- exact arithmetic

def _fixed(a: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """``a`` as integers (held in float64) times ``2**-shift``, each ``|int| <= 2**bits``."""
    m = float(np.max(np.abs(a))) if a.size else 0.0
    if m == 0.0:
        return np.zeros_like(a, dtype=np.float64), 0
    shift = bits - int(np.frexp(m)[1])  # m < 2**e, so |a * 2**shift| < 2**bits
    return np.rint(np.ldexp(a, shift)), shift


def _bits_for(k: int) -> int:
    """Operand bit width for a reduction of length ``k``: ``k * 2**(2*bits) <= 2**53``."""
    return (53 - max(k - 1, 0).bit_length()) // 2


def xmatmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (2-D, float64) with exactly representable integer products and sums.

    The result is independent of the BLAS kernel and summation order (see the module doc).
    """
    bits = _bits_for(a.shape[1])
    ai, sa = _fixed(a, bits)
    bi, sb = _fixed(b, bits)
    return np.ldexp(ai @ bi, -(sa + sb))


def xsum(a: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """``a.sum(axis)`` with exactly representable integer partial sums (order-independent)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    k = int(np.prod([a.shape[i] for i in axes]))
    ai, s = _fixed(a, 52 - max(k - 1, 0).bit_length())
    return np.ldexp(ai.sum(axis=axes), -s)


def _exp_nonpos(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` for ``x <= 0`` with correctly rounded basic operations only."""
    x = np.maximum(x, -700.0)
    n = np.floor(x * _INV_LN2 + 0.5)
    r = x - n * _LN2
    p = np.ones_like(r)
    for k in range(14, 0, -1):  # Horner, Taylor series to r**14 / 14!; |r| <= 0.35
        p = 1.0 + p * r / k
    return np.ldexp(p, n.astype(np.int64))


# ----------------------------------------------------------------------------- layers

def _im2col(x: np.ndarray, stride: int) -> tuple[np.ndarray, int, int]:
    """3x3, pad 1 patches of ``x`` ``[N, C, H, W]`` as ``[N*Ho*Wo, C*9]`` (C-major, then kh, kw)."""
    n, c, h, w = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, ho, wo, c, 3, 3), np.float64)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride].transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * 9), ho, wo


def _col2im(dcols: np.ndarray, shape: tuple[int, ...], stride: int, ho: int, wo: int) -> np.ndarray:
    """Adjoint of ``_im2col``: a fixed-order loop of elementwise adds (deterministic)."""
    n, c, h, w = shape
    d = dcols.reshape(n, ho, wo, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2), np.float64)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:h + 1, 1:w + 1]


def _conv_fwd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int):
    cols, ho, wo = _im2col(x, stride)
    y = xmatmul(cols, w.reshape(w.shape[0], -1).T)
    if b is not None:
        y = y + b
    y = y.reshape(x.shape[0], ho, wo, w.shape[0]).transpose(0, 3, 1, 2)
    return y, (cols, x.shape, ho, wo)


def _conv_bwd(dy: np.ndarray, w: np.ndarray, cache, stride: int, need_dx: bool = True):
    cols, xshape, ho, wo = cache
    dym = dy.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = xmatmul(dym.T, cols).reshape(w.shape)
    db = xsum(dym, 0)
    dx = _col2im(xmatmul(dym, w.reshape(w.shape[0], -1)), xshape, stride, ho, wo) if need_dx else None
    return dx, dw, db


def init_params(seed: int = SEED) -> dict[str, np.ndarray]:
    """He-uniform initial weights (float64) from a seeded generator; biases 0, BN scale 1."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        lim = math.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)

    return {
        "conv1.w": he(8, 1, 3, 3),
        "bn1.scale": np.ones(8), "bn1.bias": np.zeros(8),
        "conv2.w": he(16, 8, 3, 3), "conv2.b": np.zeros(16),
        "conv3.w": he(32, 16, 3, 3), "conv3.b": np.zeros(32),
        "fc.w": he(10, 128), "fc.b": np.zeros(10),
    }


def forward(p: dict[str, np.ndarray], x: np.ndarray, bn_stats: tuple[np.ndarray, np.ndarray] | None = None):
    """Float64 forward pass. Batch statistics for BatchNorm unless ``bn_stats`` (mean, var) given.

    Returns:
        ``(logits, cache)``; the cache feeds ``backward``.
    """
    x = np.asarray(x, np.float64)
    c1, k1 = _conv_fwd(x, p["conv1.w"], None, 1)
    if bn_stats is None:
        m = c1.shape[0] * c1.shape[2] * c1.shape[3]
        mean = xsum(c1, (0, 2, 3)) / m
        var = xsum((c1 - mean[:, None, None]) ** 2, (0, 2, 3)) / m
    else:
        mean, var = bn_stats
    invstd = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (c1 - mean[:, None, None]) * invstd[:, None, None]
    b1 = xhat * p["bn1.scale"][:, None, None] + p["bn1.bias"][:, None, None]
    r1 = np.maximum(b1, 0.0)
    c2, k2 = _conv_fwd(r1, p["conv2.w"], p["conv2.b"], 2)
    r2 = np.maximum(c2, 0.0)
    c3, k3 = _conv_fwd(r2, p["conv3.w"], p["conv3.b"], 2)
    r3 = np.maximum(c3, 0.0)
    h = r3.reshape(len(r3), -1)  # Flatten (C, H, W order, as ONNX)
    logits = xmatmul(h, p["fc.w"].T) + p["fc.b"]
    return logits, (k1, xhat, invstd, b1, k2, c2, k3, c3, r3, h, mean, var)


def backward(p: dict[str, np.ndarray], cache, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of every parameter given d(loss)/d(logits) (batch-statistics BatchNorm)."""
    k1, xhat, invstd, b1, k2, c2, k3, c3, r3, h, _, _ = cache
    g = {"fc.w": xmatmul(dlogits.T, h), "fc.b": xsum(dlogits, 0)}
    dh = xmatmul(dlogits, p["fc.w"])
    dr3 = dh.reshape(r3.shape)
    dc3 = dr3 * (c3 > 0)
    dr2, g["conv3.w"], g["conv3.b"] = _conv_bwd(dc3, p["conv3.w"], k3, 2)
    dc2 = dr2 * (c2 > 0)
    dr1, g["conv2.w"], g["conv2.b"] = _conv_bwd(dc2, p["conv2.w"], k2, 2)
    db1 = dr1 * (b1 > 0)
    g["bn1.bias"] = xsum(db1, (0, 2, 3))
    g["bn1.scale"] = xsum(db1 * xhat, (0, 2, 3))
    dxhat = db1 * p["bn1.scale"][:, None, None]
    m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
    s1 = xsum(dxhat, (0, 2, 3))[:, None, None]
    s2 = xsum(dxhat * xhat, (0, 2, 3))[:, None, None]
    dc1 = (invstd[:, None, None] / m) * ((dxhat * m - s1) - xhat * s2)
    _, g["conv1.w"], _ = _conv_bwd(dc1, p["conv1.w"], k1, 1, need_dx=False)
    return g


def _softmax_xent_grad(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(mean softmax cross-entropy)/d(logits), summing the classes in a fixed order."""
    e = _exp_nonpos(logits - np.max(logits, axis=1, keepdims=True))
    total = e[:, 0].copy()
    for k in range(1, e.shape[1]):
        total = total + e[:, k]
    probs = e / total[:, None]
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)


def train(x: np.ndarray, y: np.ndarray, seed: int = SEED, epochs: int = EPOCHS, batch: int = BATCH,
          lr: float = 0.01) -> dict[str, np.ndarray]:
    """Train the digits CNN with Adam (linear learning-rate decay), bit-reproducibly.

    Args:
        x: Training images, ``[N, 1, 8, 8]`` in [0, 1].
        y: Training labels, ``[N]``.
        seed: Seed of the initial weights and the batch order.
        epochs: Passes over the training set.
        batch: Minibatch size (the last partial batch of each epoch is dropped).
        lr: Peak learning rate.

    Returns:
        The float64 parameters plus ``bn1.mean`` / ``bn1.var``: BatchNorm population
        statistics over the whole training set.
    """
    p = init_params(seed)
    rng = np.random.default_rng(seed + 2)
    m1 = {k: np.zeros_like(v) for k, v in p.items()}
    m2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    b1t = b2t = 1.0
    steps = epochs * (len(x) // batch)
    step = 0
    x = np.asarray(x, np.float64)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            idx = order[start:start + batch]
            logits, cache = forward(p, x[idx])
            grads = backward(p, cache, _softmax_xent_grad(logits, y[idx]))
            b1t, b2t = b1t * b1, b2t * b2
            rate = lr * (1.0 - step / steps)
            for k, gk in grads.items():
                m1[k] = b1 * m1[k] + (1.0 - b1) * gk
                m2[k] = b2 * m2[k] + (1.0 - b2) * (gk * gk)
                p[k] = p[k] - rate * (m1[k] / (1.0 - b1t)) / (np.sqrt(m2[k] / (1.0 - b2t)) + eps)
            step += 1
    c1, _ = _conv_fwd(x, p["conv1.w"], None, 1)
    m = c1.shape[0] * c1.shape[2] * c1.shape[3]
    p["bn1.mean"] = xsum(c1, (0, 2, 3)) / m
    p["bn1.var"] = xsum((c1 - p["bn1.mean"][:, None, None]) ** 2, (0, 2, 3)) / m
    return p


def predict(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Float64 logits with the BatchNorm population statistics (numpy, no ONNX)."""
    return forward(p, x, (p["bn1.mean"], p["bn1.var"]))[0]


# ----------------------------------------------------------------------------- export

def to_onnx(p: dict[str, np.ndarray]):
    """The trained parameters as an opset-13 ONNX model (float32 weights, dynamic batch ``N``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in sorted(p.items())]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"],
                         name="bn1", epsilon=BN_EPS),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "conv3.w", "conv3.b"], ["c3"], name="conv3", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="qgraph-golden")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
