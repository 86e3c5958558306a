"""Statistics: bootstrap intervals, Mann-Whitney, regression verdicts on synthetic samples."""

from __future__ import annotations

import numpy as np
import pytest

from dde_bench.bench.stats import mann_whitney, mean_ci, ratio_of_medians, regression_verdict, speedup


def lognormal(median: float, n: int, seed: int, sigma: float = 0.05) -> np.ndarray:
    return median * np.random.default_rng(seed).lognormal(0.0, sigma, size=n)


def test_speedup_interval_contains_the_true_ratio() -> None:
    teacher = lognormal(0.010, 400, seed=1)
    student = lognormal(0.0025, 400, seed=2)
    est = speedup(teacher, student)
    assert est.ci_low <= 4.0 <= est.ci_high
    assert est.ratio == pytest.approx(np.median(teacher) / np.median(student))
    assert est.ci_low < est.ratio < est.ci_high
    assert est.ci_high - est.ci_low < 0.2  # 5% noise, 400 samples each: a tight interval


def test_bootstrap_is_seeded_and_chunked_consistently() -> None:
    a, b = lognormal(2.0, 50, 3), lognormal(1.0, 60, 4)
    assert ratio_of_medians(a, b, seed=7) == ratio_of_medians(a, b, seed=7)
    assert ratio_of_medians(a, b, seed=7) != ratio_of_medians(a, b, seed=8)


def test_mean_ci_of_accuracy_scores() -> None:
    scores = np.random.default_rng(0).random(2000) < 0.7  # true accuracy 0.7
    est = mean_ci(scores.astype(float))
    assert est.mean == pytest.approx(scores.mean())
    assert est.ci_low < 0.7 < est.ci_high
    assert est.ci_high - est.ci_low == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 2000), rel=0.2)
    assert est.n == 2000


def test_mann_whitney_wrapper() -> None:
    a, b = lognormal(1.3, 100, 5), lognormal(1.0, 100, 6)
    _, p_greater = mann_whitney(a, b, alternative="greater")
    _, p_less = mann_whitney(a, b, alternative="less")
    assert p_greater < 1e-6 < 0.5 < p_less


def test_identical_distributions_are_not_a_regression() -> None:
    v = regression_verdict(lognormal(0.01, 200, 10), lognormal(0.01, 200, 11))
    assert not v.regressed
    assert abs(v.slowdown) < 0.03


def test_thirty_percent_slower_is_a_regression() -> None:
    v = regression_verdict(lognormal(0.01, 200, 12), lognormal(0.013, 200, 13))
    assert v.regressed and v.significant
    assert v.slowdown == pytest.approx(0.3, abs=0.03)
    assert v.slowdown_ci_low < v.slowdown < v.slowdown_ci_high
    assert regression_verdict(lognormal(0.01, 200, 12), lognormal(0.013, 200, 13), use_ci_low=True).regressed


def test_five_percent_slower_is_significant_but_below_the_threshold() -> None:
    v = regression_verdict(
        lognormal(0.01, 400, 14, 0.02), lognormal(0.0105, 400, 15, 0.02), max_slowdown=0.10
    )
    assert v.significant  # real, measurable ...
    assert not v.regressed  # ... but smaller than the allowed 10%
    assert "not regressed" in v.reason


def test_large_but_noisy_difference_needs_significance() -> None:
    base = np.array([1.0, 1.5, 0.7])
    new = np.array([1.3, 1.9, 0.9])
    v = regression_verdict(base, new)
    assert v.slowdown > 0.1 and not v.significant and not v.regressed


def test_bad_samples_are_rejected() -> None:
    with pytest.raises(ValueError):
        speedup([], [1.0])
    with pytest.raises(ValueError):
        speedup([1.0, float("nan")], [1.0])
