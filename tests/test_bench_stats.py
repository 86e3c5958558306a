"""Statistics: bootstrap intervals (independent and paired over rounds), the tests and the regression rule on
synthetic samples."""

from __future__ import annotations

import numpy as np
import pytest

from dde_bench.bench.stats import (
    mann_whitney,
    mean_ci,
    ratio_of_medians,
    regression_verdict,
    speedup,
    wilcoxon_rounds,
)


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


# ------------------------------------------------------------------ paired rounds (interleaved A/B)


def drifting_rounds(
    median: float, rounds: int, calls: int, seed: int, drift: np.ndarray, sigma: float = 0.03
) -> np.ndarray:
    """rounds x calls samples whose round r runs ``drift[r]`` times slower (load shared by both sides)."""
    return lognormal(median, rounds * calls, seed, sigma).reshape(rounds, calls) * drift[:, None]


def shared_drift(rounds: int, seed: int, spread: float = 0.4) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0.0, spread, size=rounds))


def test_paired_no_difference_is_not_a_regression() -> None:
    drift = shared_drift(30, 0)
    base, new = drifting_rounds(0.01, 30, 10, 1, drift), drifting_rounds(0.01, 30, 10, 2, drift)
    v = regression_verdict(base, new, paired=True)
    assert v.verdict == "ok" and v.paired and v.test.startswith("wilcoxon")
    assert v.ci_low < 1.0 < v.ci_high and abs(v.slowdown) < 0.03
    assert v.n_base == v.n_new == 30  # rounds


def test_paired_thirty_percent_slower_is_a_regression() -> None:
    drift = shared_drift(30, 3)
    base, new = drifting_rounds(0.01, 30, 10, 4, drift), drifting_rounds(0.013, 30, 10, 5, drift)
    v = regression_verdict(base, new, paired=True)
    assert v.regressed and v.p_value < 1e-6
    assert v.ratio == pytest.approx(1.3, abs=0.03) and v.ci_low > 1.2
    assert regression_verdict(new, base, paired=True).improved  # the other way round: faster


def test_paired_noisy_but_unchanged_is_not_a_regression() -> None:
    """Per-call noise of 20% and load swinging 2x between rounds, no real difference, over many seeds."""
    alarms = 0
    for seed in range(20):
        drift = shared_drift(30, 100 + seed, spread=0.8)
        base = drifting_rounds(0.01, 30, 10, 200 + seed, drift, sigma=0.2)
        new = drifting_rounds(0.01, 30, 10, 300 + seed, drift, sigma=0.2)
        alarms += regression_verdict(base, new, paired=True).regressed
    assert alarms == 0


def test_pairing_narrows_the_interval_when_rounds_share_drift() -> None:
    drift = shared_drift(30, 6, spread=0.5)
    teacher, student = drifting_rounds(0.012, 30, 10, 7, drift), drifting_rounds(0.003, 30, 10, 8, drift)
    paired = ratio_of_medians(teacher, student, paired=True)
    independent = ratio_of_medians(teacher, student)
    assert paired.paired and not independent.paired
    assert paired.ratio == pytest.approx(independent.ratio)
    assert paired.ci_low <= 4.0 <= paired.ci_high
    assert (paired.ci_high - paired.ci_low) < 0.5 * (independent.ci_high - independent.ci_low)


def test_speedup_pairs_equal_length_interleaved_samples() -> None:
    drift = shared_drift(200, 9, spread=0.3)
    teacher = lognormal(0.01, 200, 10) * drift
    student = lognormal(0.0025, 200, 11) * drift
    s = speedup(teacher, student)
    assert s.paired and s == speedup(teacher, student, paired=True)
    i = speedup(teacher, student, paired=False)
    assert s.ci_high - s.ci_low < 0.6 * (i.ci_high - i.ci_low)
    assert not speedup(teacher, student[:150]).paired  # different lengths: independent resampling
    with pytest.raises(ValueError, match="rounds"):
        ratio_of_medians(teacher, student[:150], paired=True)


def test_independent_samples_get_the_same_interval_paired_or_not() -> None:
    """Pairing independent samples of equal length costs nothing: the intervals agree."""
    a, b = lognormal(0.01, 300, 12, 0.1), lognormal(0.005, 300, 13, 0.1)
    p, i = ratio_of_medians(a, b, paired=True), ratio_of_medians(a, b)
    assert (p.ci_high - p.ci_low) == pytest.approx(i.ci_high - i.ci_low, rel=0.25)


def test_wilcoxon_rounds_edge_cases() -> None:
    same = np.ones((5, 3))
    assert wilcoxon_rounds(same, same) == 1.0
    with pytest.raises(ValueError, match="same number"):
        regression_verdict([[1.0, 2.0], [1.0]], [[1.0, 2.0], [1.0, 2.0]], paired=True)
