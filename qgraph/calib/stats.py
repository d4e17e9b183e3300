"""Streaming calibration statistics: per-tensor collectors and the range methods.

A collector sees each observed tensor batch by batch (``update``) and never keeps the
activations: it keeps, per tensor, the running min / max and, for the histogram methods, one
``StreamingHistogram`` of a fixed number of bins. ``compute`` turns that state into a range
per tensor.

    collector = make_collector("entropy")
    for batch in batches:
        for name, array in batch.items():
            collector.update(name, array)
    ranges = collector.compute()          # {tensor name: (lo, hi)}

Methods and their options (defaults are ONNX Runtime's ``create_calibrator`` defaults except
where noted; ``ORT`` below is ``onnxruntime.quantization.calibrate``):

``minmax`` (``symmetric=False``)
    The observed [min, max], or [-m, m] with m = max |x| when symmetric. Equal to ORT's
    MinMaxCalibrater to the last bit.
``percentile`` (``percentile=99.999``, ``symmetric=True``, ``num_bins=2048``)
    As ORT's PercentileCalibrater: symmetric takes the ``percentile`` of |x| as t and
    returns [-t, t] clipped to [min, max] (so a Relu output gets [0, t]); asymmetric cuts
    (100 - percentile) / 2 percent off each side. The threshold is interpolated inside its
    histogram bin (ORT takes the bin's lower edge); ``num_bins`` only sets the resolution
    floor (``hist_bins`` >= 4 * num_bins over the power-of-two range: at least ORT's).
``entropy`` (``num_bins=2048``, ``num_quantized_bins=128``, ``symmetric=False``)
    The KL-divergence threshold search of TensorRT's entropy calibrator: the histogram is
    laid out as ORT lays it (``num_bins`` over [-T, T], T = max |x|), each candidate
    clipping window is merged into ``num_quantized_bins`` levels and expanded back (q), and
    the window whose p loses the least information (KL(p || q)) wins; result clipped to
    [min, max]. Asymmetric (default) grows windows around zero, as ORT's EntropyCalibrater
    and MXNet do. Symmetric searches thresholds t on |x| as TensorRT's calibrator
    (pytorch-quantization) does: windows [0, t), the bin at zero counted as its neighbour,
    twice the levels for a tensor without negative values; result [-t, t] clipped.
    Differs from ORT on purpose, twice: ``num_bins`` defaults to 2048 (ORT's default, 128,
    equals ``num_quantized_bins`` and leaves one candidate, the full range: ORT's default
    "entropy" is min / max; ``num_bins=128`` reproduces that), and q is zero where p is zero
    (TensorRT's rule, kept by MXNet; ORT spreads each level over its empty bins too, and
    truncates q to integers, which alone changed nothing measurable). On a Relu output ORT's
    rule clips at 0.63 max where qgraph keeps 0.95 max, with 46x less 8-bit quantization
    error (tests/test_calib_stats.py).
``mse`` (``bits=8``, ``symmetric=False``, ``num_bins=1024``)
    The clipping range whose expected quantization error (rounding inside, clipping outside)
    on the histogram is least, for ``bits`` in 4 / 8 / 16 with qgraph.quant's conventions:
    symmetric int<bits> over [-t, t] (int8: levels -127..127), or uint<bits> over [lo, hi]
    with a zero point. The error is integrated exactly over each of ``num_bins`` bins over
    [min, max], the values taken uniform inside a bin. Asymmetric: the best common scale of
    [min, max], then each end on its own. Result clipped to [min, max].

Histogram layout (``StreamingHistogram``): ``hist_bins`` (a power of two, default
max(8192, 4 * num_bins)) equal bins over [-2^e, 2^e], e the smallest exponent that holds
every value seen. When a batch exceeds the range, e grows and every 2^k adjacent bins merge
into one. Narrow bins nest in the wide ones, so the merge is exact and the counts do not
depend on how the data was split into batches; memory is ``hist_bins`` int64 counts per
tensor whatever the number of samples. At ``compute`` the counts are redistributed (values
taken uniform inside a bin, and inside [min, max]) onto the layout the method works on.

NaN or Inf in a batch raises ``QGraphError`` naming the tensor; empty batches are skipped.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from qgraph.errors import QGraphError

METHODS = ("minmax", "percentile", "entropy", "mse")

_CHUNK = 1 << 18  # elements binned at a time: the temporaries stay in cache
_MIN_HIST_BINS = 8192


# -- the streaming histogram ----------------------------------------------------------------


def _ceil_log2(a: float) -> int:
    """The least integer e with 2**e >= a (a > 0)."""
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
    return e - 1 if m == 0.5 else e


class StreamingHistogram:
    """Counts of a tensor's values in ``bins`` equal bins over [-2**exp, 2**exp].

    ``exp`` is None until a nonzero value fixes the range; zeros seen before that wait in
    ``pending_zeros``. See the module docstring for why widening is exact.
    """

    __slots__ = ("counts", "exp", "pending_zeros")

    def __init__(self, bins: int):
        if bins < 4 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two >= 4, got {bins}")
        self.counts = np.zeros(bins, np.int64)
        self.exp: int | None = None
        self.pending_zeros = 0

    @property
    def bins(self) -> int:
        return self.counts.size

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes

    def edges(self) -> np.ndarray:
        """The bins + 1 bin edges (float64; exact, the width is a power of two)."""
        r = 0.0 if self.exp is None else math.ldexp(1.0, self.exp)
        return np.linspace(-r, r, self.bins + 1)

    def add(self, flat: np.ndarray, amax: float) -> None:
        """Count the values of a 1-D float array whose largest |value| is ``amax``."""
        n, half = self.bins, self.bins // 2
        if amax == 0.0:
            if self.exp is None:
                self.pending_zeros += flat.size
            else:
                self.counts[half] += flat.size
            return
        need = _ceil_log2(amax)
        if self.exp is None:
            self.exp = need
            self.counts[half] += self.pending_zeros
            self.pending_zeros = 0
        elif need > self.exp:
            self._widen(need - self.exp)
        # index = floor(x * scale) + half: scale is a power of two, so x * scale is exact and
        # a value lands in the same bin whatever range it was first binned at.
        shift = int(math.log2(half)) - self.exp
        if flat.dtype == np.float32 and not -120 < shift < 120:
            flat = flat.astype(np.float64)  # 2**shift would leave float32's range
        scale = math.ldexp(1.0, shift)
        counts = self.counts
        for i in range(0, flat.size, _CHUNK):
            tmp = np.multiply(flat[i:i + _CHUNK], scale)
            np.floor(tmp, out=tmp)
            idx = tmp.astype(np.intp)
            idx += half
            binned = np.bincount(idx, minlength=n + 1)
            counts += binned[:n]
            counts[n - 1] += binned[n]  # values equal to +2**exp close the last bin

    def _widen(self, k: int) -> None:
        """Grow the range by 2**k: every 2**k adjacent bins become one, centred on zero."""
        n, half = self.bins, self.bins // 2
        new = np.zeros(n, np.int64)
        if k < n.bit_length() - 1:  # 2**k < n
            grouped = self.counts.reshape(-1, 1 << k).sum(axis=1)
            new[half - (half >> k): half + (half >> k)] = grouped
        else:  # everything collapses onto the two bins next to zero
            new[half - 1] = self.counts[:half].sum()
            new[half] = self.counts[half:].sum()
        self.counts = new
        self.exp += k

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of |x|: bins/2 bins over [0, 2**exp]."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.edges()[half:]


def _redistribute(counts: np.ndarray, edges: np.ndarray, lo: float, hi: float, new_edges: np.ndarray,
                  integer: bool = False) -> np.ndarray:
    """Counts on ``new_edges``, taking the values uniform inside each old bin and inside [lo, hi].

    ``integer``: whole counts (the rounded cumulative counts' differences: the total is kept
    and each bin is within 1 of its share)."""
    cum = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64)))
    knots = np.clip(edges, lo, hi)  # repeated knots only where no values lie: interp stays exact
    at = np.interp(new_edges, knots, cum)
    return np.diff(np.rint(at) if integer else at)


# -- range methods on a histogram -----------------------------------------------------------


def _quantile(counts: np.ndarray, edges: np.ndarray, target: float) -> float:
    """The value below which ``target`` of the counted mass lies, interpolated in its bin."""
    cum = np.cumsum(counts, dtype=np.float64)
    j = min(int(np.searchsorted(cum, target, side="left")), counts.size - 1)
    below = cum[j] - counts[j]
    frac = (target - below) / counts[j] if counts[j] > 0 else 0.0
    return float(edges[j] + min(max(frac, 0.0), 1.0) * (edges[j + 1] - edges[j]))


def _kl_divergences(hist: np.ndarray, starts: np.ndarray, ends: np.ndarray, nq: int,
                    eps: float = 1e-4) -> np.ndarray:
    """KL(p || q) of every candidate window hist[start:end] (TensorRT's search, as ORT lays it out).

    ``hist`` holds integer counts. For a window of L >= 2 bins, p is the window with the
    mass left of it added to its first bin and the mass right of it to its last; q merges
    the window (without that outside mass) into ``nq`` levels of m = L // nq bins (the
    leftover bins' mass joins the last level) and spreads each level's mass evenly over
    the level's m bins where p is nonzero; q is zero elsewhere, leftover bins included (as
    ORT and MXNet's Python version). Both are smoothed as MXNet's ``_smooth_distribution``
    (zeros become ``eps``, the nonzeros give up as much, so the sums stay) and normalised.

    Computed in closed form from prefix sums, O(candidates x nq) rather than
    O(candidates x L): where p is zero so is q, both smooth to eps and add nothing; inside a
    level q is one constant c, so sum p_s log q_s is log(c - eps1_q) times the level's
    smoothed p mass; only sum (p - eps1_p) log(p - eps1_p) needs every bin, and it is a
    Taylor series in the small eps1_p over prefix sums of h log h, log h and 1 / h^k.
    """
    h = np.asarray(hist, np.float64)
    nz = h > 0
    hs = np.where(nz, h, 1.0)
    log_h = np.log(hs)

    def prefix(v):
        return np.concatenate(([0.0], np.cumsum(v)))

    cum_h, cum_nz = prefix(h), prefix(nz)
    taylor = [prefix(np.where(nz, h * log_h, 0.0)), prefix(np.where(nz, log_h + 1.0, 0.0)),
              prefix(nz / hs), prefix(nz / hs ** 2), prefix(nz / hs ** 3)]
    total = cum_h[-1]

    s, e = np.asarray(starts), np.asarray(ends)
    length = e - s
    merged = length // nq
    left_out, right_out = cum_h[s], total - cum_h[e]  # mass outside the window
    p_first, p_last = h[s] + left_out, h[e - 1] + right_out

    # columns 0 .. nq-1: the levels' m bins each; column nq: the leftover bins (q = 0 there)
    lo = s[:, None] + np.arange(nq + 1) * merged[:, None]
    hi = np.concatenate([lo[:, 1:], e[:, None]], axis=1)
    window_mass = cum_h[hi] - cum_h[lo]
    support = cum_nz[hi] - cum_nz[lo]  # bins where p != 0
    support[:, 0] += (p_first > 0) & (h[s] == 0)
    last = np.where(length > nq * merged, nq, nq - 1)  # the column holding the window's last bin
    rows = np.arange(s.size)
    support[rows, last] += (p_last > 0) & (h[e - 1] == 0)
    p_mass = window_mass.copy()
    p_mass[:, 0] += left_out
    p_mass[rows, last] += right_out
    level_mass = window_mass[:, :nq].copy()
    level_mass[:, -1] += window_mass[:, nq]

    nnz_p = support.sum(axis=1)
    eps1_p = eps * (length - nnz_p) / np.maximum(nnz_p, 1)
    lsup = support[:, :nq]
    c = np.divide(level_mass, lsup, out=np.zeros_like(level_mass), where=lsup > 0)
    nnz_q = np.where(c > 0, lsup, 0).sum(axis=1)
    q_total = np.where(lsup > 0, level_mass, 0.0).sum(axis=1)
    eps1_q = eps * (length - nnz_q) / np.maximum(nnz_q, 1)

    def plogp(v, a):  # (v - a) log(v - a) where v > 0
        w = np.maximum(v - a, eps * 1e-3)
        return np.where(v > 0, w * np.log(w), 0.0)

    a = eps1_p
    inner = [t[np.maximum(e - 1, s + 1)] - t[s + 1] for t in taylor]  # bins strictly inside
    s1 = (inner[0] - a * inner[1] + a ** 2 / 2 * inner[2] + a ** 3 / 6 * inner[3] + a ** 4 / 12 * inner[4]
          + plogp(p_first, a) + plogp(p_last, a))
    q_smooth = np.full(support.shape, eps)
    q_smooth[:, :nq] = np.where(c > 0, np.maximum(c - eps1_q[:, None], eps * 1e-3), eps)
    s2 = (np.log(q_smooth) * np.where(support > 0, p_mass - a[:, None] * support, 0.0)).sum(axis=1)
    with np.errstate(divide="ignore"):
        kl = (s1 - s2) / total + np.log(q_total / total)
    return np.where((nnz_q > 0) & (length >= 2), kl, np.inf)


def _grid(lo: np.ndarray | None, hi: np.ndarray, bits: int, symmetric: bool):
    """(step, lowest level, highest level) of the ``bits``-bit grids for ranges [lo, hi]
    (lo <= 0 <= hi; symmetric grids use hi only): int<bits> symmetric or uint<bits> with a
    zero point, with qgraph.quant's integer ranges and zero-point rule."""
    from qgraph.quant.params import int_type

    qmin, qmax = int_type(f"{'int' if symmetric else 'uint'}{bits}").qrange(symmetric=symmetric)
    if symmetric:
        step = 2.0 * hi / (qmax - qmin)
        zp = round((qmin + qmax) / 2.0)
    else:
        step = (hi - lo) / (qmax - qmin)
        zp = np.round(qmin - lo / step)
    return step, (qmin - zp) * step, (qmax - zp) * step


def _quant_error(counts: np.ndarray, edges: np.ndarray, step, low, high) -> np.ndarray:
    """Expected squared quantization error per value, for each grid (rows of step / low /
    high), with the values uniform inside each histogram bin: the exact integral of the
    rounding error inside [low, high] and of the clipping error outside it."""
    step, low, high = (np.asarray(a, np.float64).reshape(-1, 1) for a in (step, low, high))
    used = np.flatnonzero(counts > 0)
    points = np.union1d(used, used + 1)  # the edges of nonempty bins: empty ones add nothing
    x = edges[points][None, :]

    def saw(y):  # antiderivative of (y - step * round(y / step))**2
        k = np.floor(y / step + 0.5)
        r = y - k * step
        return k * step ** 3 / 12 + (r ** 3 + step ** 3 / 8) / 3

    g = saw(np.clip(x, low, high)) + np.minimum(x - low, 0.0) ** 3 / 3 + np.maximum(x - high, 0.0) ** 3 / 3
    left, right = np.searchsorted(points, used), np.searchsorted(points, used + 1)
    width = edges[used + 1] - edges[used]
    density = counts[used] / width
    return ((g[:, right] - g[:, left]) * density).sum(axis=1) / counts.sum()


def _argmin_scan(error, a: float, b: float, coarse: int = 64, fine: int = 32) -> float:
    """The x in (a, b] (a < b) minimising error(xs): a coarse scan, then a fine one around its best."""
    xs = np.linspace(a, b, coarse + 1)[1:]
    i = int(np.argmin(error(xs)))
    fine_xs = np.linspace(xs[i - 1] if i else a, xs[min(i + 1, coarse - 1)], fine + 1)[1:]
    return float(fine_xs[int(np.argmin(error(fine_xs)))])


# -- collectors ----------------------------------------------------------------------------


def _as_flat(name: str, array: Any) -> np.ndarray:
    """The batch as a 1-D array of real numbers (a view where possible)."""
    a = np.asarray(array)
    if a.dtype.kind not in "fiub":
        if a.dtype.kind in "cOSUM":
            raise QGraphError(f"tensor '{name}': cannot calibrate values of dtype {a.dtype}")
        a = a.astype(np.float32)  # e.g. ml_dtypes' bfloat16
    elif a.dtype.kind == "b":
        a = a.astype(np.uint8)
    return a.reshape(-1)


class Collector:
    """Per-tensor streaming statistics and the range method that reads them.

    ``update(name, array)`` takes one batch of one tensor (any shape; called many times per
    tensor); ``compute()`` returns {tensor name: (lo, hi)} as Python floats. A tensor that
    only ever had empty batches has no range.
    """

    method: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, symmetric: bool = False):
        self.symmetric = bool(symmetric)
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}

    def update(self, name: str, array: np.ndarray) -> None:
        flat = _as_flat(name, array)
        if flat.size:
            self._update_minmax(name, flat)

    def _update_minmax(self, name: str, flat: np.ndarray) -> float:
        """Fold the batch into the running min / max; returns the batch's max |x|."""
        lo, hi = flat.min(), flat.max()  # NaN propagates into both, Inf shows in one
        if not (math.isfinite(lo) and math.isfinite(hi)):
            what = "NaN" if np.isnan(lo) or np.isnan(hi) else "Inf"
            raise QGraphError(f"tensor '{name}' holds {what} values on this calibration data "
                              "(the model or its input overflows); check the data or the model")
        lo, hi = float(lo), float(hi)
        if name in self._min:
            self._min[name], self._max[name] = min(lo, self._min[name]), max(hi, self._max[name])
        else:
            self._min[name], self._max[name] = lo, hi
        return max(-lo, hi)

    @property
    def names(self) -> list[str]:
        return list(self._min)

    @property
    def nbytes(self) -> int:
        """Bytes of collected state (grows with the number of tensors, not of samples)."""
        return 16 * len(self._min)

    def observed(self) -> dict[str, tuple[float, float]]:
        """{tensor name: (min, max)} as seen, whatever the method clips."""
        return {name: (self._min[name], self._max[name]) for name in self._min}

    def compute(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name in self._min:
            lo, hi = self._min[name], self._max[name]
            out[name] = (lo, hi) if lo == hi else self._range(name, lo, hi)
        return out

    def _range(self, name: str, lo: float, hi: float) -> tuple[float, float]:
        raise NotImplementedError

    @staticmethod
    def _clipped(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
        return max(a, lo), min(b, hi)


class MinMaxCollector(Collector):
    """The observed [min, max] (``symmetric``: [-max|x|, max|x|]), as ORT's MinMaxCalibrater."""

    method = "minmax"
    OPTIONS = ("symmetric",)

    def _range(self, name, lo, hi):
        if self.symmetric:
            m = max(-lo, hi)
            return -m, m
        return lo, hi


class HistogramCollector(Collector):
    """Min / max and a ``StreamingHistogram`` per tensor; subclasses read the histogram."""

    def __init__(self, symmetric: bool = False, num_bins: int = 2048, hist_bins: int | None = None):
        super().__init__(symmetric)
        self.num_bins = int(num_bins)
        if self.num_bins < 2:
            raise QGraphError(f"{self.method}: num_bins must be at least 2, got {num_bins}")
        if hist_bins is None:  # at least 2 bins per num_bins bin over [-T, T] after widening
            hist_bins = max(_MIN_HIST_BINS, 1 << (4 * self.num_bins - 1).bit_length())
        if hist_bins < 4 or hist_bins & (hist_bins - 1):
            raise QGraphError(f"{self.method}: hist_bins must be a power of two >= 4, got {hist_bins}")
        self.hist_bins = int(hist_bins)
        self.histograms: dict[str, StreamingHistogram] = {}

    def update(self, name: str, array: np.ndarray) -> None:
        flat = _as_flat(name, array)
        if not flat.size:
            return
        if flat.dtype not in (np.float32, np.float64):  # float16 / bfloat16 / integers
            flat = flat.astype(np.float64 if flat.dtype.itemsize > 2 else np.float32)
        amax = self._update_minmax(name, flat)
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = StreamingHistogram(self.hist_bins)
        hist.add(flat, amax)

    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(h.nbytes for h in self.histograms.values())


class PercentileCollector(HistogramCollector):
    """ORT's PercentileCalibrater: the ``percentile`` of |x| (symmetric) or of each tail."""

    method = "percentile"
    OPTIONS = ("percentile", "symmetric", "num_bins", "hist_bins")

    def __init__(self, percentile: float = 99.999, symmetric: bool = True, num_bins: int = 2048,
                 hist_bins: int | None = None):
        super().__init__(symmetric, num_bins, hist_bins)
        self.percentile = float(percentile)
        if not 0.0 <= self.percentile <= 100.0:
            raise QGraphError(f"percentile must lie in [0, 100], got {percentile}")

    def _range(self, name, lo, hi):
        hist = self.histograms[name]
        if self.symmetric:
            counts, edges = hist.folded()
            amin = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
            edges = np.clip(edges, amin, max(-lo, hi))
            t = _quantile(counts, edges, counts.sum() * self.percentile / 100.0)
            return self._clipped(lo, hi, -t, t)
        edges = np.clip(hist.edges(), lo, hi)
        total = float(hist.counts.sum())
        cut = (100.0 - self.percentile) / 200.0
        return _quantile(hist.counts, edges, total * cut), _quantile(hist.counts, edges, total * (1.0 - cut))


class EntropyCollector(HistogramCollector):
    """KL-divergence (entropy) calibration, as TensorRT's calibrator; see the module docstring."""

    method = "entropy"
    OPTIONS = ("num_bins", "num_quantized_bins", "symmetric", "hist_bins")

    def __init__(self, num_bins: int = 2048, num_quantized_bins: int = 128, symmetric: bool = False,
                 hist_bins: int | None = None):
        super().__init__(symmetric, num_bins, hist_bins)
        self.num_quantized_bins = int(num_quantized_bins)
        if not 2 <= self.num_quantized_bins <= self.num_bins:
            raise QGraphError(f"entropy: num_quantized_bins must lie in [2, num_bins={self.num_bins}], "
                              f"got {num_quantized_bins}")

    def histogram(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The (counts, edges) the search runs on: ORT's layout, ``num_bins`` over [-T, T]
        (symmetric: over [0, T] of |x|), T = max |x|."""
        hist, lo, hi = self.histograms[name], self._min[name], self._max[name]
        t = max(-lo, hi)
        if self.symmetric:
            counts, edges = hist.folded()
            amin = 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi))
            new_edges = np.linspace(0.0, t, self.num_bins + 1)
            return _redistribute(counts, edges, amin, t, new_edges, integer=True), new_edges
        new_edges = np.linspace(-t, t, self.num_bins + 1)
        return _redistribute(hist.counts, hist.edges(), lo, hi, new_edges, integer=True), new_edges

    def _range(self, name, lo, hi):
        counts, edges = self.histogram(name)
        n, nq = counts.size, self.num_quantized_bins
        if self.symmetric:
            # TensorRT (pytorch-quantization's _compute_amax_entropy): windows [0, i) of |x|;
            # the bin at zero counts as its neighbour (exact zeros, e.g. from Relu, would
            # otherwise dominate the first level); an unsigned tensor gets twice the levels.
            counts = counts.copy()
            counts[0] = counts[1]
            if lo >= 0.0:
                nq = min(2 * nq, n)
            ends = np.arange(nq, n + 1)
            starts = np.zeros_like(ends)
        else:  # ORT / MXNet: windows grow around the zero bin, half-widths nq/2 .. n/2
            zero = n // 2
            widths = np.arange(nq // 2, zero + 1)
            starts, ends = zero - widths, np.minimum(zero + widths + 1, n)
            keep = ends - starts >= nq
            starts, ends = starts[keep], ends[keep]
        if starts.size == 0 or counts.sum() == 0:
            return lo, hi
        kl = _kl_divergences(counts, starts, ends, nq)
        if self.symmetric:  # ties go to the widest window, as TensorRT's
            best = kl.size - 1 - int(np.argmin(kl[::-1]))
            t = float(edges[ends[best]])
            return self._clipped(lo, hi, -t, t)
        best = int(np.argmin(kl))  # ties go to the narrowest, as ORT's
        return self._clipped(lo, hi, float(edges[starts[best]]), float(edges[ends[best]]))


class MseCollector(HistogramCollector):
    """The clipping range with the least expected ``bits``-bit quantization error."""

    method = "mse"
    OPTIONS = ("bits", "symmetric", "num_bins", "hist_bins")

    def __init__(self, bits: int = 8, symmetric: bool = False, num_bins: int = 1024, hist_bins: int | None = None):
        super().__init__(symmetric, num_bins, hist_bins)
        self.bits = int(bits)
        if self.bits not in (4, 8, 16):
            raise QGraphError(f"mse: bits must be 4, 8 or 16 (qgraph's integer types), got {bits}")

    def _range(self, name, lo, hi):
        hist = self.histograms[name]
        edges = np.linspace(lo, hi, self.num_bins + 1)
        counts = _redistribute(hist.counts, hist.edges(), lo, hi, edges)
        bits = self.bits
        if self.symmetric:
            t = _argmin_scan(lambda ts: _quant_error(counts, edges, *_grid(None, ts, bits, True)), 0.0, max(-lo, hi))
            return self._clipped(lo, hi, -t, t)

        def err(a, b):
            a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
            return _quant_error(counts, edges, *_grid(a, b, bits, False))

        lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
        alpha = _argmin_scan(lambda s: err(s * lo0, s * hi0), 0.0, 1.0)
        a, b = alpha * lo0, alpha * hi0
        # then each side with the other fixed (a second round changed nothing on the tests' data)
        if hi0 > 0.0:
            b = _argmin_scan(lambda bs: err(a, bs), 0.0, hi0)
        if lo0 < 0.0:
            a = -_argmin_scan(lambda ns: err(-ns, b), 0.0, -lo0)
        return self._clipped(lo, hi, a, b)


_COLLECTORS: dict[str, type[Collector]] = {
    c.method: c for c in (MinMaxCollector, PercentileCollector, EntropyCollector, MseCollector)
}


def make_collector(method: str, **options: Any) -> Collector:
    """A fresh collector for ``method`` (one of ``METHODS``); options left None take their default.

    Raises:
        QGraphError: unknown method, unknown option for the method, or an option out of range.
    """
    cls = _COLLECTORS.get(method)
    if cls is None:
        raise QGraphError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(cls.OPTIONS))
    if unknown:
        takes = ", ".join(cls.OPTIONS) or "no options"
        raise QGraphError(f"calibration method '{method}' has no option {', '.join(repr(u) for u in unknown)}; "
                          f"it takes: {takes}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise QGraphError(f"calibration method '{method}': bad option value: {e}") from e
