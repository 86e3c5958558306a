"""Statistics on raw samples: speedup with a bootstrap interval, accuracy intervals, regression verdicts.

All bootstraps are percentile bootstraps with a seeded ``numpy.random.Generator`` (same inputs and seed,
same interval). Two sample sets are resampled independently of each other, as two independent runs are.
Resampling runs in chunks so memory stays bounded (about ``chunk x n`` floats) whatever the sample count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

__all__ = [
    "RatioEstimate",
    "MeanEstimate",
    "RegressionVerdict",
    "ratio_of_medians",
    "speedup",
    "mean_ci",
    "mann_whitney",
    "regression_verdict",
]

N_BOOT = 2000
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 2_000_000  # floats per resampling chunk (16 MB)


@dataclass(frozen=True)
class RatioEstimate:
    """``ratio = median(numerator) / median(denominator)`` with a bootstrap interval."""

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int


@dataclass(frozen=True)
class MeanEstimate:
    """A mean (e.g. accuracy over per-example scores) with a bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    confidence: float
    n: int


@dataclass(frozen=True)
class RegressionVerdict:
    """Is ``new`` slower than ``base``? Both significance and effect size must say so.

    ``slowdown`` is ``median(new) / median(base) - 1`` (0.3 = 30% slower); its interval comes from the
    bootstrap of the ratio of medians; ``p_value`` is the one-sided Mann-Whitney U test (new > base).
    """

    regressed: bool
    slowdown: float
    slowdown_ci_low: float
    slowdown_ci_high: float
    p_value: float
    significant: bool
    max_slowdown: float
    alpha: float
    reason: str


def _as_samples(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: no samples")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: samples must be finite")
    return a


def _bootstrap_stat(
    a: np.ndarray, stat: Callable[..., np.ndarray], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_boot`` values of ``stat`` over resamples (with replacement) of ``a``, computed in chunks."""
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // a.size)
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        idx = rng.integers(0, a.size, size=(hi - lo, a.size))
        out[lo:hi] = stat(a[idx], axis=1)
    return out


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ratio_of_medians(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioEstimate:
    """``median(numerator) / median(denominator)`` with a percentile-bootstrap interval.

    Each sample set is resampled independently (with replacement, at its own size) ``n_boot`` times.
    """
    num = _as_samples(numerator, "numerator")
    den = _as_samples(denominator, "denominator")
    if np.median(den) <= 0:
        raise ValueError("denominator median must be positive")
    rng = np.random.default_rng(seed)
    boot_num = _bootstrap_stat(num, np.median, n_boot, rng)
    boot_den = _bootstrap_stat(den, np.median, n_boot, rng)
    with np.errstate(divide="ignore"):
        boot = boot_num / boot_den
    lo, hi = _interval(boot, confidence)
    return RatioEstimate(float(np.median(num) / np.median(den)), lo, hi, confidence, n_boot)


def speedup(
    baseline_samples: Sequence[float] | np.ndarray,
    candidate_samples: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioEstimate:
    """Speedup of the candidate over the baseline: ``median(baseline time) / median(candidate time)``.

    For DiDE: ``speedup(teacher.samples_s, student.samples_s)``; > 1 means the student is faster.
    Use samples measured interleaved in one process (``timing.measure_interleaved``).
    """
    return ratio_of_medians(
        baseline_samples, candidate_samples, n_boot=n_boot, confidence=confidence, seed=seed
    )


def mean_ci(
    scores: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MeanEstimate:
    """Mean of per-example scores (0/1 correctness, or VQA's soft 0..1 accuracy) with a bootstrap interval."""
    a = _as_samples(scores, "scores")
    rng = np.random.default_rng(seed)
    boot = _bootstrap_stat(a, np.mean, n_boot, rng)
    lo, hi = _interval(boot, confidence)
    return MeanEstimate(float(a.mean()), lo, hi, confidence, int(a.size))


def mann_whitney(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    alternative: str = "two-sided",
) -> tuple[float, float]:
    """Mann-Whitney U test of ``a`` against ``b``; returns ``(U statistic of a, p-value)``.

    ``alternative="greater"`` tests whether ``a`` tends to be larger than ``b`` (e.g. new slower than base).
    """
    res = _sps.mannwhitneyu(_as_samples(a, "a"), _as_samples(b, "b"), alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def regression_verdict(
    base_samples: Sequence[float] | np.ndarray,
    new_samples: Sequence[float] | np.ndarray,
    max_slowdown: float = 0.10,
    alpha: float = 0.01,
    *,
    use_ci_low: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> RegressionVerdict:
    """Flag a latency regression only if it is both significant and large enough.

    Significant: the one-sided Mann-Whitney U test says ``new`` tends to be slower, ``p < alpha``.
    Large enough: ``median(new) / median(base) - 1 > max_slowdown``; with ``use_ci_low=True`` the
    bootstrap interval's lower bound must exceed it instead (stricter: few false alarms on noisy CI).
    A bare threshold on one number flaps on a shared machine; a bare test flags tiny, real but
    irrelevant differences once there are many samples. Requiring both does neither.
    """
    base = _as_samples(base_samples, "base_samples")
    new = _as_samples(new_samples, "new_samples")
    _, p = mann_whitney(new, base, alternative="greater")
    est = ratio_of_medians(new, base, n_boot=n_boot, seed=seed)
    slowdown = est.ratio - 1.0
    lo, hi = est.ci_low - 1.0, est.ci_high - 1.0
    effect = lo if use_ci_low else slowdown
    significant = p < alpha
    large = effect > max_slowdown
    what = "CI lower bound of slowdown" if use_ci_low else "slowdown"
    if significant and large:
        reason = f"regressed: {what} {effect:+.1%} > {max_slowdown:.0%} and p={p:.2g} < {alpha}"
    elif significant:
        reason = f"not regressed: significant (p={p:.2g}) but {what} {effect:+.1%} <= {max_slowdown:.0%}"
    elif large:
        reason = f"not regressed: {what} {effect:+.1%} but not significant (p={p:.2g} >= {alpha})"
    else:
        reason = f"not regressed: {what} {effect:+.1%}, p={p:.2g}"
    return RegressionVerdict(
        regressed=bool(significant and large),
        slowdown=slowdown,
        slowdown_ci_low=lo,
        slowdown_ci_high=hi,
        p_value=p,
        significant=significant,
        max_slowdown=max_slowdown,
        alpha=alpha,
        reason=reason,
    )
