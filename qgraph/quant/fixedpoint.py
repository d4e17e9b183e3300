"""Fixed-point requantization: a real multiplier as an integer multiplier and a right shift.

An integer op accumulates ``acc`` (int32 for conv / matmul, wider sums elsewhere) in the
units ``scale_in``; its output needs units ``scale_out``. The real ratio
``r = scale_in / scale_out`` is written as ``r ~= multiplier * 2**-shift`` with an integer
``multiplier`` of at most ``bits`` bits (``2**(bits-1) <= multiplier < 2**bits`` when the
shift allows: the gemmlowp / TFLite normalization, where ``bits = 31`` gives a Q31 multiplier),
and applied with a single rounding, in int64::

    requantize(acc) = (acc * multiplier + 2**(shift - 1)) >> shift      (shift >= 1)
                    =  acc * multiplier                                (shift == 0)

``>>`` is the arithmetic (flooring) shift, so the rounding is half up (toward +inf).
qgraph uses one rounding instead of TFLite's two (``SaturatingRoundingDoublingHighMul``
then ``RoundingDivideByPOT``): the result is the correctly rounded ``acc * M / 2**shift``
(TFLite's can be off by one), and the formula is the same two integer ops in numpy, in the
reference interpreter and in generated kernels. It needs ``|acc| * multiplier < 2**63``:
``fixed_point_multiplier`` takes the bound on ``|acc|`` and narrows the multiplier to fit.

Every integer op of the L3 IR that changes scale stores ``multiplier`` and ``shift`` as
attributes (per output channel where the weights are per channel); this module is the only
place that computes or applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ``shift`` lies in ``[0, MAX_SHIFT]``: a shift of 63 or more is undefined for int64.
MAX_SHIFT = 62


@dataclass(frozen=True)
class FixedPointMultiplier:
    """``multiplier * 2**-shift``, per tensor (scalars) or per channel (1-D int64 arrays)."""

    multiplier: np.ndarray
    shift: np.ndarray

    @property
    def real(self) -> np.ndarray:
        """The real value represented (float64)."""
        return self.multiplier.astype(np.float64) * np.exp2(-self.shift.astype(np.float64))

    def to_attrs(self, prefix: str = "") -> dict[str, list[int]]:
        """``{prefix+"multiplier": [...], prefix+"shift": [...]}``, as L3 node attributes."""
        return {prefix + "multiplier": [int(m) for m in self.multiplier.reshape(-1)],
                prefix + "shift": [int(s) for s in self.shift.reshape(-1)]}


def _one(real: float, bits: int, max_shift: int = MAX_SHIFT) -> tuple[int, int]:
    if not (math.isfinite(real) and real >= 0):
        raise ValueError(f"a requantization multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    shift = bits - exponent
    m = round(mantissa * (1 << bits))  # in [2**(bits-1), 2**bits]
    if m == 1 << bits:  # rounding carried into the next power of two
        m >>= 1
        shift -= 1
    if shift > max_shift:  # a tiny ratio: keep the largest shift, lose low multiplier bits
        m = round(real * 2.0 ** max_shift)
        shift = max_shift
    if shift < 0:
        raise ValueError(f"requantization multiplier {real} is too large for a {bits}-bit fixed-point "
                         f"multiplier with a right shift; the output scale is far smaller than the input's")
    return int(m), int(shift)


def fixed_point_multiplier(real, *, acc_bound: int = 2**31 - 1, bits: int = 31,
                           max_shift: int = MAX_SHIFT) -> FixedPointMultiplier:
    """The fixed-point form of ``real`` (a scalar or a 1-D array of per-channel ratios).

    Args:
        real: the ratio(s) ``scale_in / scale_out``; finite and >= 0 (0 gives multiplier 0).
        acc_bound: the largest ``|acc|`` the multiplier will be applied to; the multiplier is
            narrowed so that ``acc_bound * multiplier < 2**62``.
        bits: the most multiplier bits wanted (31: the TFLite / gemmlowp Q31 form).
        max_shift: the largest shift allowed (a smaller ratio loses low multiplier bits).
    """
    headroom = 62 - max(int(acc_bound), 1).bit_length()
    bits = min(bits, headroom)
    if bits < 8:
        raise ValueError(f"accumulator bound {acc_bound} leaves only {bits} multiplier bits in int64")
    arr = np.asarray(real, dtype=np.float64)
    pairs = [_one(float(r), bits, max_shift) for r in arr.reshape(-1)]
    m = np.array([p[0] for p in pairs], np.int64).reshape(arr.shape)
    s = np.array([p[1] for p in pairs], np.int64).reshape(arr.shape)
    return FixedPointMultiplier(m, s)


def rounding_half(shift) -> np.ndarray:
    """The rounding term ``2**(shift - 1)`` (0 for shift 0) added before ``>> shift``, int64;
    the kernels that generate the shift take it from here too."""
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)


def rounding_shift(x, shift) -> np.ndarray:
    """``round_half_up(x / 2**shift)`` for int64 ``x`` and ``shift`` in [0, 62] (broadcasting)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if shift.size and (shift.min() < 0 or shift.max() > MAX_SHIFT):
        raise ValueError(f"shift must lie in [0, {MAX_SHIFT}]")
    return np.right_shift(x + rounding_half(shift), shift)


def requantize(acc, multiplier, shift) -> np.ndarray:
    """``(acc * multiplier + 2**(shift-1)) >> shift`` in int64 (see the module doc).

    ``multiplier`` and ``shift`` broadcast against ``acc`` (reshape per-channel ones first).
    The caller guarantees ``|acc * multiplier| < 2**63`` (``fixed_point_multiplier``'s
    ``acc_bound``); it is checked here, since a silent wrap would be a wrong answer.
    """
    acc = np.asarray(acc, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    if acc.size and multiplier.size:
        bound = float(np.abs(acc).max()) * float(np.abs(multiplier).max())
        if bound >= 2.0 ** 63:
            raise OverflowError(f"requantize: |acc| * multiplier reaches {bound:.3g}, beyond int64")
    return rounding_shift(acc * multiplier, shift)


def requantize_to(acc, multiplier, shift, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """``clip(zero_point + requantize(acc), qmin, qmax)`` (int64): an integer op's output."""
    return np.clip(requantize(acc, multiplier, shift) + np.asarray(zero_point, np.int64), qmin, qmax)


def shared_shift_multipliers(reals, *, acc_bound: int, bits: int = 31) -> tuple[np.ndarray, int]:
    """Integer multipliers with one common shift: ``reals[i] ~= multipliers[i] * 2**-shift``.

    For sums of differently scaled operands (QAdd): ``(m_a * a + m_b * b) >> shift`` rounds
    once. The largest ratio gets a full-width multiplier; ``acc_bound`` bounds each operand's
    ``|value|``, and the sum of all products stays below ``2**62``.
    """
    reals = np.asarray(reals, dtype=np.float64).reshape(-1)
    n = max(len(reals), 1)
    largest = fixed_point_multiplier(float(reals.max()), acc_bound=int(acc_bound) * n, bits=bits)
    shift = int(largest.shift)
    mults = np.array([round(r * 2.0 ** shift) for r in reals], np.int64)
    return mults, shift


# -- division by a count known only at run time ----------------------------------------------------
#: The most positions a runtime-count average may sum (``QGlobalAveragePool`` with
#: ``runtime_count``): 2**20, e.g. 1024 x 1024. Its multiplier and shift are chosen so that
#: every intermediate of ``rounding_divide(acc * M, count << S)`` fits int64 up to this count.
MAX_RUNTIME_COUNT = 2**20
#: The fewest multiplier bits a runtime-count average accepts (a relative error of 2**-16).
MIN_RUNTIME_COUNT_BITS = 16


def runtime_count_multiplier(real, *, x_bound: int, max_count: int = MAX_RUNTIME_COUNT) -> FixedPointMultiplier:
    """``M * 2**-S ~= real`` for ``y = round_half_even(acc * M / (count * 2**S))``, the average of
    ``count <= max_count`` values with ``|x| <= x_bound`` (so ``|acc| <= max_count * x_bound``).

    ``|acc * M| < 2**62`` (``fixed_point_multiplier``'s bound) and ``S <= 62 -
    max_count.bit_length()``, so the divisor ``count << S <= 2**61`` and ``2 * remainder``
    fit int64 too.

    Raises:
        ValueError: the bound leaves fewer than ``MIN_RUNTIME_COUNT_BITS`` multiplier bits
            (8-bit inputs keep 31 bits, 16-bit ones 26; wider inputs are refused).
    """
    bits = 62 - (int(max_count) * int(x_bound)).bit_length()
    if bits < MIN_RUNTIME_COUNT_BITS:
        raise ValueError(f"an average of up to {max_count} values of magnitude {x_bound} leaves {bits} "
                         f"multiplier bits in int64 (at least {MIN_RUNTIME_COUNT_BITS} needed)")
    max_shift = 62 - int(max_count).bit_length()
    return fixed_point_multiplier(real, acc_bound=int(max_count) * int(x_bound), max_shift=max_shift)


def rounding_divide(t, divisor) -> np.ndarray:
    """``round_half_even(t / divisor)`` for int64 ``t`` and ``0 < divisor <= 2**61``, exact:
    ``q = floor(t / divisor)``, ``r = t - q * divisor`` (``0 <= r < divisor``), then ``q + 1``
    when ``2 * r > divisor`` or (``2 * r == divisor`` and ``q`` is odd). The TVM lowering emits
    the same int64 floordiv / floormod / compare."""
    t = np.asarray(t, dtype=np.int64)
    divisor = np.asarray(divisor, dtype=np.int64)
    if divisor.size and (divisor.min() <= 0 or divisor.max() > 2**61):
        raise ValueError("rounding_divide: the divisor must lie in [1, 2**61]")
    q = np.floor_divide(t, divisor)
    twice = 2 * np.mod(t, divisor)
    up = (twice > divisor) | ((twice == divisor) & ((q & 1) == 1))
    return q + up.astype(np.int64)


# -- the same sum of products in int32 arithmetic ------------------------------------------------
#: The split point of ``int32_sum_plan``: ``m = hi * 2**SPLIT + lo``, ``0 <= lo < 2**SPLIT``.
SPLIT = 16


@dataclass(frozen=True)
class Int32SumPlan:
    """``(sum_i x_i * m_i + 2**(shift - 1)) >> shift`` evaluated in int32 only (``int32_sum_plan``).

    With ``m_i = hi_i * 2**16 + lo_i`` (``0 <= lo_i < 2**16``) and ``shift >= 17``::

        H = sum_i x_i * hi_i + 2**(shift - 17)
        L = sum_i x_i * lo_i
        result = (H + (L >> 16)) >> (shift - 16)

    is exact: the sum is ``2**16 * H + L``, and ``floor(floor(p / 2**16) / 2**(shift - 16))
    == floor(p / 2**shift)``. Vector units have 32-bit multiplies where 64-bit ones are
    missing (AVX2): a QAdd in this form vectorizes 8 lanes wide."""

    hi: tuple[int, ...]
    lo: tuple[int, ...]
    bias: int  # 2**(shift - 17)
    shift: int  # shift - 16, the final shift


def int32_sum_plan(multipliers, shift: int, bounds) -> Int32SumPlan | None:
    """The int32 form of ``(sum_i x_i * m_i + 2**(shift-1)) >> shift`` for ``|x_i| <= bounds[i]``,
    or None when some partial sum could leave int32 (or ``shift < 17``)."""
    ms = [int(m) for m in np.asarray(multipliers, np.int64).reshape(-1)]
    bs = [int(b) for b in np.asarray(bounds, np.int64).reshape(-1)]
    shift = int(shift)
    if len(ms) != len(bs) or shift < SPLIT + 1 or shift - SPLIT - 1 > 30:
        return None
    hi = tuple(m >> SPLIT for m in ms)
    lo = tuple(m & ((1 << SPLIT) - 1) for m in ms)
    bias = 1 << (shift - SPLIT - 1)
    lim = 2**31 - 1
    low = sum(b * l for b, l in zip(bs, lo))
    high = sum(b * abs(h) for b, h in zip(bs, hi)) + bias
    if low > lim or high + (low >> SPLIT) + 1 > lim:
        return None
    return Int32SumPlan(hi, lo, bias, shift - SPLIT)


def int32_sum(xs, plan: Int32SumPlan) -> np.ndarray:
    """``plan`` applied to the int arrays ``xs`` in int32 numpy arithmetic (a check of the plan:
    the generated kernels compute exactly this)."""
    xs = [np.asarray(x, np.int32) for x in xs]
    h = np.int32(plan.bias) + sum(x * np.int32(m) for x, m in zip(xs, plan.hi))
    low = sum(x * np.int32(m) for x, m in zip(xs, plan.lo))
    return np.right_shift(h + np.right_shift(low, SPLIT), plan.shift).astype(np.int32)
