"""Fixed-point requantization (qgraph.quant.fixedpoint): multiplier choice and rounding."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qgraph.quant.fixedpoint import (
    MAX_RUNTIME_COUNT, rounding_divide, runtime_count_multiplier,
    MAX_SHIFT, fixed_point_multiplier, requantize, requantize_to, rounding_shift, shared_shift_multipliers,
)


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
@settings(max_examples=300, deadline=None)
def test_multiplier_is_normalized_and_close(real):
    f = fixed_point_multiplier(real)
    m, s = int(f.multiplier), int(f.shift)
    assert 0 <= s <= MAX_SHIFT
    if s < MAX_SHIFT:  # a full 31-bit mantissa: relative error at most 2**-31
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0**-s - real) <= real * 2.0**-31
    else:
        assert abs(m * 2.0**-s - real) <= 2.0**-63


def test_multiplier_narrows_to_the_accumulator_bound():
    f = fixed_point_multiplier(0.37, acc_bound=2**32)  # int16 x int16 products
    assert int(f.multiplier) * 2**32 < 2**62
    assert abs(float(f.real) - 0.37) < 0.37 * 2**-28


def test_zero_and_bad_multipliers():
    assert int(fixed_point_multiplier(0.0).multiplier) == 0
    with pytest.raises(ValueError, match="finite"):
        fixed_point_multiplier(float("nan"))
    with pytest.raises(ValueError, match="too large"):
        fixed_point_multiplier(2.0**40)


def test_per_channel_arrays():
    f = fixed_point_multiplier(np.array([0.5, 0.25, 3e-4]))
    assert f.multiplier.shape == (3,) and f.shift.shape == (3,)
    assert f.to_attrs()["shift"] == [31, 32, int(f.shift[2])]


@given(st.integers(-(2**31), 2**31 - 1), st.floats(min_value=1e-9, max_value=4.0))
@settings(max_examples=400, deadline=None)
def test_requantize_is_the_correctly_rounded_product(acc, real):
    """One rounding, half up: the exact rational acc * m / 2**s rounded to nearest."""
    f = fixed_point_multiplier(real)
    m, s = int(f.multiplier), int(f.shift)
    exact = Fraction(acc * m, 2**s)
    expected = int((exact + Fraction(1, 2)).__floor__())
    assert int(requantize(np.int64(acc), m, s)) == expected


def test_rounding_is_half_up():
    assert rounding_shift(np.array([-3, -2, -1, 1, 2, 3]), 1).tolist() == [-1, -1, 0, 1, 1, 2]
    assert rounding_shift(np.array([5]), 0).tolist() == [5]


def test_requantize_refuses_int64_overflow():
    with pytest.raises(OverflowError):
        requantize(np.array([2**40]), 2**30, 31)


def test_requantize_to_clamps():
    out = requantize_to(np.array([-1000, 0, 1000]), 2**30, 31, 10, 0, 255)
    assert out.tolist() == [0, 10, 255]


def test_shared_shift():
    mults, shift = shared_shift_multipliers([0.3, 0.01], acc_bound=2**16)
    assert abs(mults[0] / 2.0**shift - 0.3) < 0.3 * 2**-29
    assert abs(mults[1] / 2.0**shift - 0.01) < 2.0**-shift
    assert (abs(mults).sum() * 2**16) < 2**62


@given(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=3), st.integers(17, 46), st.data())
@settings(max_examples=300, deadline=None)
def test_int32_sum_plan_is_exact_or_refused(mults, shift, data):
    """The int32 form of a QAdd's sum equals the int64 formula on every operand in the bounds,
    or the plan is refused; with 9-bit operands (8-bit storage minus a zero point) and Q31
    multipliers at shift 31, it is never refused."""
    from qgraph.quant.fixedpoint import int32_sum, int32_sum_plan, rounding_shift

    signs = data.draw(st.lists(st.sampled_from([1, -1]), min_size=len(mults), max_size=len(mults)))
    mults = [m * s for m, s in zip(mults, signs)]
    bounds = data.draw(st.lists(st.integers(1, 2**12), min_size=len(mults), max_size=len(mults)))
    plan = int32_sum_plan(mults, shift, bounds)
    if plan is None:
        assert not (all(b <= 256 for b in bounds) and shift == 31 and len(mults) <= 2)
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    xs = [np.concatenate([rng.integers(-b, b + 1, 200), [-b, b, 0]]) for b in bounds]
    want = rounding_shift(sum(x.astype(np.int64) * m for x, m in zip(xs, mults)), shift)
    np.testing.assert_array_equal(int32_sum(xs, plan), want)


def _half_even(fr: Fraction) -> int:
    q, r = divmod(fr.numerator, fr.denominator)  # floor, 0 <= r < denominator
    return q + (2 * r > fr.denominator or (2 * r == fr.denominator and q % 2 == 1))


@settings(max_examples=300, deadline=None)
@given(st.integers(-2**61, 2**61), st.integers(1, 2**61))
def test_rounding_divide_is_round_half_even(t, d):
    assert int(rounding_divide(np.int64(t), np.int64(d))) == _half_even(Fraction(t, d))


def test_rounding_divide_ties_go_to_even():
    t = np.array([-7, -5, -3, -1, 1, 3, 5, 7, 6, -6], np.int64)
    assert rounding_divide(t, 2).tolist() == [-4, -2, -2, 0, 0, 2, 2, 4, 3, -3]
    assert rounding_divide(np.array([2, 6, 10, -2], np.int64), np.int64(4) << np.int64(30)).tolist() == [0, 0, 0, 0]
    assert rounding_divide(np.array([2, 6, 10, -2], np.int64) << 30, np.int64(4) << np.int64(30)).tolist() == \
        [0, 2, 2, 0]


def test_runtime_count_multiplier_bound():
    """8-bit inputs keep a 31-bit multiplier; the shift leaves room for the divisor
    count << shift (and twice the remainder) up to MAX_RUNTIME_COUNT; 32-bit inputs are refused."""
    fp = runtime_count_multiplier(0.37, x_bound=255)
    assert 2**30 <= int(fp.multiplier) < 2**31
    assert MAX_RUNTIME_COUNT * 255 * int(fp.multiplier) < 2**62
    tiny = runtime_count_multiplier(2.0**-30, x_bound=255)
    assert int(tiny.shift) == 62 - MAX_RUNTIME_COUNT.bit_length()
    assert (MAX_RUNTIME_COUNT << int(tiny.shift)) <= 2**61
    assert runtime_count_multiplier(0.37, x_bound=65535).multiplier < 2**26
    with pytest.raises(ValueError, match="multiplier bits"):
        runtime_count_multiplier(0.37, x_bound=2**31)
