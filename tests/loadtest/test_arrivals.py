"""The arrival process: rate, exponential gaps (KS test), gamma mean and CV, and the bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from museserve_loadtest.arrivals import gamma_shape_for_cv, inter_arrivals, schedule


def ks_statistic(sample: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov D = sup |F_n(x) - F(x)|, checked on both sides of each step."""
    x = np.sort(sample)
    n = x.size
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(0, n) / n)))


def ks_critical(n: int, alpha: float = 0.001) -> float:
    # Asymptotic one-sample critical value: c(alpha) / sqrt(n), c = sqrt(-ln(alpha/2)/2).
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


def test_poisson_rate_and_exponential_gaps():
    rate = 50.0
    offsets = np.asarray(schedule(rate, duration_s=200.0, seed=7))
    assert offsets.size == pytest.approx(rate * 200, rel=0.05)  # 10,000 expected, sd 100
    gaps = np.diff(np.concatenate([[0.0], offsets]))
    d = ks_statistic(gaps, lambda x: 1 - np.exp(-rate * x))
    assert d < ks_critical(gaps.size)
    # The test has power: uniform gaps of the same mean fail it.
    assert ks_statistic(np.random.default_rng(1).uniform(0, 2 / rate, gaps.size), lambda x: 1 - np.exp(-rate * x)) > (
        ks_critical(gaps.size)
    )


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_keeps_the_mean_and_sets_the_cv(cv: float):
    rate = 20.0
    gaps = inter_arrivals(rate, 40_000, "gamma", gamma_shape_for_cv(cv), np.random.default_rng(3))
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_schedule_is_seeded_sorted_and_bounded_by_whichever_comes_first():
    a, b = schedule(10, 5, seed=1), schedule(10, 5, seed=1)
    assert a == b and a != schedule(10, 5, seed=2)
    assert all(0 < x < 5 for x in a) and a == sorted(a)
    assert len(schedule(100, 60, max_requests=25)) == 25  # the count bound first
    assert schedule(100, 60, max_requests=25) == schedule(100, 60)[:25]
    assert len(schedule(2, 1.0, max_requests=1000)) < 10  # the duration bound first


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="rate"):
        schedule(0, 5)
    with pytest.raises(ValueError, match="unknown arrival"):
        schedule(1, 5, arrival="uniform")
    with pytest.raises(ValueError, match="coefficient"):
        gamma_shape_for_cv(0)
