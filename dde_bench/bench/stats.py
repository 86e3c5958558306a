"""Statistics on raw samples: ratios of medians with bootstrap intervals, accuracy intervals, and the
project's one regression rule.

All bootstraps are percentile bootstraps with a seeded ``numpy.random.Generator`` (same inputs and seed,
same interval). Resampling runs in chunks so memory stays bounded (about ``chunk x n`` floats).

Two sampling designs, one implementation each:

* **independent** samples (two separate runs): each side is resampled on its own, at its own size;
* **paired** samples from interleaved rounds (``timing.measure_interleaved`` in one process, or the speed
  gate's alternating processes): round ``i`` of one side was measured next to round ``i`` of the other, so
  *round indices* are resampled, the same indices for both sides. Drift shared by a round (another tenant,
  clocks, thermal) then moves both sides together and cancels in the ratio instead of widening the interval.
  Samples are 1-D (one call per round) or 2-D (rows are rounds, each row that round's calls).

The regression rule (``regression_verdict``, used by ``compare`` and by the speed gate): a latency has
regressed only when the slowdown is **significant** (a one-sided test on the raw samples, ``p < alpha``:
Mann-Whitney U for independent samples, Wilcoxon signed-rank on the per-round log ratios for paired rounds)
**and large** (the ratio ``new / base`` above ``1 + max_slowdown``: the ratio of medians for independent
samples, the median of the per-round ratios of medians for paired rounds; with ``use_ci_low`` the bootstrap
interval's lower end instead). Improvements mirror it.
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
    "median_round_ratio",
    "speedup",
    "mean_ci",
    "PairedEstimate",
    "paired_rows",
    "paired_difference",
    "mann_whitney",
    "wilcoxon_rounds",
    "regression_verdict",
    "MIN_ROUNDS_FOR_INTERVAL",
    "min_calls_for",
    "supports",
]

N_BOOT = 2000
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 2_000_000  # floats per resampling chunk (16 MB)

Samples = Sequence[float] | Sequence[Sequence[float]] | np.ndarray


@dataclass(frozen=True)
class RatioEstimate:
    """``ratio = median(numerator) / median(denominator)`` with a bootstrap interval.

    ``paired``: whether round indices were resampled jointly (interleaved rounds) or each side on its own.
    """

    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int
    paired: bool = False


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
    """Is ``new`` slower (or faster) than ``base``? Both significance and effect size must say so.

    ``ratio`` is ``new / base`` (independent runs: the ratio of medians; paired rounds: the median of the
    per-round ratios of medians), with its bootstrap interval ``[ci_low, ci_high]``; ``slowdown = ratio - 1``
    (0.3 = 30% slower). ``p_value`` is the one-sided test
    that ``new`` is slower, ``p_faster`` that it is faster (``test`` names which test). ``verdict`` is
    ``regressed``, ``improved`` or ``ok``.
    """

    verdict: str
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    p_faster: float
    significant: bool
    max_slowdown: float
    alpha: float
    paired: bool
    test: str
    n_base: int
    n_new: int
    reason: str

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    @property
    def improved(self) -> bool:
        return self.verdict == "improved"

    @property
    def slowdown(self) -> float:
        return self.ratio - 1.0

    @property
    def slowdown_ci_low(self) -> float:
        return self.ci_low - 1.0

    @property
    def slowdown_ci_high(self) -> float:
        return self.ci_high - 1.0


def _as_samples(x: Samples, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: no samples")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: samples must be finite")
    return a


def _as_rounds(x: Samples, name: str) -> np.ndarray:
    """Samples as a 2-D array, one row per round (1-D input: one call per round)."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name}: every round must hold the same number of samples") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name}: expected samples per round (1-D or rounds x calls), got shape {a.shape}")
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


def _bootstrap_paired_ratio(
    num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_boot`` ratios of medians over resampled round indices (the same rows for both sides)."""
    rounds = num.shape[0]
    out = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // (num.size + den.size))
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        idx = rng.integers(0, rounds, size=(hi - lo, rounds))
        bn = np.median(num[idx].reshape(hi - lo, -1), axis=1)
        bd = np.median(den[idx].reshape(hi - lo, -1), axis=1)
        with np.errstate(divide="ignore"):
            out[lo:hi] = bn / bd
    return out


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ratio_of_medians(
    numerator: Samples,
    denominator: Samples,
    *,
    paired: bool = False,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioEstimate:
    """``median(numerator) / median(denominator)`` with a percentile-bootstrap interval.

    ``paired=False``: independent sample sets, each resampled on its own (with replacement, at its size).
    ``paired=True``: both sides come from the same interleaved rounds (1-D: one call per round; 2-D: rows are
    rounds); round indices are resampled, the same for both sides (a block bootstrap when rounds hold
    several calls). Both sides need the same number of rounds.
    """
    if paired:
        num, den = _as_rounds(numerator, "numerator"), _as_rounds(denominator, "denominator")
        if num.shape[0] != den.shape[0]:
            raise ValueError(
                f"paired samples need as many rounds on each side ({num.shape[0]} vs {den.shape[0]})"
            )
    else:
        num, den = _as_samples(numerator, "numerator"), _as_samples(denominator, "denominator")
    point_den = float(np.median(den))
    if point_den <= 0:
        raise ValueError("denominator median must be positive")
    rng = np.random.default_rng(seed)
    if paired:
        boot = _bootstrap_paired_ratio(num, den, n_boot, rng)
    else:
        boot_num = _bootstrap_stat(num, np.median, n_boot, rng)
        boot_den = _bootstrap_stat(den, np.median, n_boot, rng)
        with np.errstate(divide="ignore"):
            boot = boot_num / boot_den
    lo, hi = _interval(boot, confidence)
    return RatioEstimate(float(np.median(num) / point_den), lo, hi, confidence, n_boot, paired)


def median_round_ratio(
    numerator: Samples,
    denominator: Samples,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioEstimate:
    """Median over paired rounds of ``median(numerator_i) / median(denominator_i)``, with a paired bootstrap
    interval (round indices resampled; the statistic recomputed on each resample).

    Each round's shared load cancels inside its own ratio, so load that swings between rounds does not move
    the estimate, as it can move a ratio of medians pooled over all rounds. Rows are rounds (1-D: one call
    per round); both sides need the same number of rounds.
    """
    num, den = _as_rounds(numerator, "numerator"), _as_rounds(denominator, "denominator")
    if num.shape[0] != den.shape[0]:
        raise ValueError(
            f"paired samples need as many rounds on each side ({num.shape[0]} vs {den.shape[0]})"
        )
    md = np.median(den, axis=1)
    if np.any(md <= 0):
        raise ValueError("denominator medians must be positive in every round")
    ratios = np.median(num, axis=1) / md
    rng = np.random.default_rng(seed)
    lo, hi = _interval(_bootstrap_stat(ratios, np.median, n_boot, rng), confidence)
    return RatioEstimate(float(np.median(ratios)), lo, hi, confidence, n_boot, True)


def speedup(
    baseline_samples: Samples,
    candidate_samples: Samples,
    *,
    paired: bool | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioEstimate:
    """Speedup of the candidate over the baseline: ``median(baseline time) / median(candidate time)``.

    For DiDE: ``speedup(teacher.samples_s, student.samples_s)``; > 1 means the student is faster.
    Meant for samples measured interleaved in one process (``timing.measure_interleaved``): sample ``i`` of
    both lists comes from round ``i``. ``paired=None`` (the default) therefore pairs the two lists when they
    have the same length, resampling round indices jointly (``ratio_of_medians(..., paired=True)``); lists of
    different lengths cannot be paired and are resampled independently. For independent samples of equal
    length the paired and the independent bootstrap agree (the shared indices carry no shared drift), so
    pairing costs nothing when there was no interleaving. ``paired=True`` / ``False`` forces either.
    """
    if paired is None:
        b, c = np.asarray(baseline_samples), np.asarray(candidate_samples)
        paired = b.shape == c.shape and b.ndim in (1, 2)
    return ratio_of_medians(
        baseline_samples, candidate_samples, paired=paired, n_boot=n_boot, confidence=confidence, seed=seed
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


@dataclass(frozen=True)
class PairedEstimate:
    """A statistic of several rows' mean scores, with a paired bootstrap interval (:func:`paired_rows`)."""

    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_seeds: int
    n_examples: int  # 0 when each seed has one value
    n_boot: int
    n_undefined: int = 0  # resamples where the statistic was not finite (e.g. a ratio over a zero gap)


def paired_rows(
    rows: dict[str, Samples],
    statistic: Callable[[dict[str, np.ndarray]], np.ndarray],
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedEstimate:
    """``statistic`` of rows trained in pairs (same seed, same data order), with a paired bootstrap interval.

    ``rows`` maps a row name to its scores: shape ``[seeds]`` (one value per seed) or ``[seeds, examples]``
    (per-example scores on one evaluation split, the same examples in the same order for every row and seed).
    Each resample draws seed indices and, for 2-D scores, example indices, *the same indices for every row*, so
    what a seed or an example shares across rows cancels in a difference. ``statistic`` receives each row's mean
    over the resampled cells (arrays, one entry per resample) and returns the statistic per resample, e.g.
    ``lambda m: m["a"] - m["b"]``; the point value is the statistic of the plain means. Interval: percentile,
    NaN when the point value is undefined or more than a tail's share of the resamples are (``n_undefined``)."""
    arrs = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    if not arrs:
        raise ValueError("paired_rows: no rows")
    shapes = {a.shape for a in arrs.values()}
    if len(shapes) != 1:
        raise ValueError(f"paired_rows: rows of different shapes {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) not in (1, 2) or shape[0] < 1 or (len(shape) == 2 and shape[1] < 1):
        raise ValueError(f"paired_rows: scores must be [seeds] or [seeds, examples], got shape {shape}")
    if not all(np.isfinite(a).all() for a in arrs.values()):
        raise ValueError("paired_rows: scores must be finite")
    n_s = shape[0]
    n_e = shape[1] if len(shape) == 2 else 0
    value = float(np.asarray(statistic({k: np.array([a.mean()]) for k, a in arrs.items()}))[0])
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // (n_s * max(n_e, 1)))
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        si = rng.integers(0, n_s, size=(hi - lo, n_s))
        if n_e:
            ei = rng.integers(0, n_e, size=(hi - lo, n_e))
            means = {k: a[si[:, :, None], ei[:, None, :]].mean(axis=(1, 2)) for k, a in arrs.items()}
        else:
            means = {k: a[si].mean(axis=1) for k, a in arrs.items()}
        boot[lo:hi] = np.asarray(statistic(means), dtype=np.float64)
    finite = np.isfinite(boot)
    # an interval only where (nearly) every resample defines the statistic: the undefined ones lie outside it
    if not np.isfinite(value) or (~finite).sum() > (1.0 - confidence) / 2.0 * n_boot:
        lo_ci = hi_ci = float("nan")
    else:
        lo_ci, hi_ci = _interval(boot[finite], confidence)
    return PairedEstimate(value, lo_ci, hi_ci, confidence, n_s, n_e, n_boot, int((~finite).sum()))


def paired_difference(a: Samples, b: Samples, **kw) -> PairedEstimate:
    """Mean of ``a`` minus mean of ``b`` for two paired rows (:func:`paired_rows`)."""
    return paired_rows({"a": a, "b": b}, lambda m: m["a"] - m["b"], **kw)


def mann_whitney(a: Samples, b: Samples, *, alternative: str = "two-sided") -> tuple[float, float]:
    """Mann-Whitney U test of ``a`` against ``b``; returns ``(U statistic of a, p-value)``.

    ``alternative="greater"`` tests whether ``a`` tends to be larger than ``b`` (e.g. new slower than base).
    Two constant, identical sample sets give p = 1.
    """
    x, y = _as_samples(a, "a"), _as_samples(b, "b")
    res = _sps.mannwhitneyu(x, y, alternative=alternative)
    p = float(res.pvalue)
    return float(res.statistic), 1.0 if np.isnan(p) else p


def wilcoxon_rounds(new: Samples, base: Samples, *, alternative: str = "greater") -> float:
    """One-sided Wilcoxon signed-rank p-value over paired rounds: is ``new`` slower (``greater``) or faster
    (``less``) than ``base``? Tested on ``log(median(new_i) / median(base_i))`` per round ``i`` (exact for
    up to 50 rounds). Rounds with no difference are dropped; none left gives p = 1.
    """
    n, b = _as_rounds(new, "new"), _as_rounds(base, "base")
    if n.shape[0] != b.shape[0]:
        raise ValueError(f"paired samples need as many rounds on each side ({n.shape[0]} vs {b.shape[0]})")
    mn, mb = np.median(n, axis=1), np.median(b, axis=1)
    if np.any(mn <= 0) or np.any(mb <= 0):
        raise ValueError("paired rounds need positive medians")
    d = np.log(mn / mb)
    if not np.any(d != 0):
        return 1.0
    p = float(_sps.wilcoxon(d, alternative=alternative).pvalue)
    return 1.0 if np.isnan(p) else p


def regression_verdict(
    base_samples: Samples,
    new_samples: Samples,
    max_slowdown: float = 0.10,
    alpha: float = 0.01,
    *,
    paired: bool = False,
    use_ci_low: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> RegressionVerdict:
    """The project's regression rule: a latency regressed only if the slowdown is significant *and* large.

    Significant: a one-sided test says ``new`` tends to be slower, ``p < alpha``: Mann-Whitney U on the raw
    samples when the two sides are independent runs, Wilcoxon signed-rank on the per-round log ratios when
    they are paired interleaved rounds (``paired=True``; 1-D: one call per round, 2-D: rounds x calls).
    Large: the ratio ``new / base`` above ``1 + max_slowdown``: for independent runs the ratio of medians
    (``ratio_of_medians``), for paired rounds the median of the per-round ratios (``median_round_ratio``,
    robust to load that swings between rounds); with ``use_ci_low=True`` the bootstrap interval's lower end
    must exceed it instead (stricter). Improved mirrors it: significantly faster and
    ``ratio < 1 / (1 + max_slowdown)`` (or the interval's upper end, with ``use_ci_low``).
    A bare threshold on one number flaps on a shared machine; a bare test flags tiny, real but irrelevant
    differences once there are many samples. Requiring both does neither.
    """
    if paired:
        est = median_round_ratio(new_samples, base_samples, n_boot=n_boot, seed=seed)
    else:
        est = ratio_of_medians(new_samples, base_samples, n_boot=n_boot, seed=seed)
    if paired:
        test = "wilcoxon signed-rank over rounds"
        p_slow = wilcoxon_rounds(new_samples, base_samples, alternative="greater")
        p_fast = wilcoxon_rounds(new_samples, base_samples, alternative="less")
        n_base, n_new = _as_rounds(base_samples, "base").shape[0], _as_rounds(new_samples, "new").shape[0]
    else:
        test = "mann-whitney u"
        _, p_slow = mann_whitney(new_samples, base_samples, alternative="greater")
        _, p_fast = mann_whitney(new_samples, base_samples, alternative="less")
        n_base, n_new = _as_samples(base_samples, "base").size, _as_samples(new_samples, "new").size
    slow_effect = est.ci_low if use_ci_low else est.ratio
    fast_effect = est.ci_high if use_ci_low else est.ratio
    bound = 1.0 + max_slowdown
    what = "ratio CI low" if use_ci_low else "ratio"
    if p_slow < alpha and slow_effect > bound:
        verdict = "regressed"
        reason = f"regressed: {what} {slow_effect:.3f} > {bound:.3f} and p={p_slow:.2g} < {alpha:g}"
    elif p_fast < alpha and fast_effect < 1.0 / bound:
        verdict = "improved"
        reason = f"improved: ratio {fast_effect:.3f} < {1 / bound:.3f} and p={p_fast:.2g} < {alpha:g}"
    elif p_slow < alpha:
        verdict = "ok"
        reason = f"not regressed: significant (p={p_slow:.2g}) but {what} {slow_effect:.3f} <= {bound:.3f}"
    elif slow_effect > bound:
        verdict = "ok"
        reason = f"not regressed: {what} {slow_effect:.3f} but not significant (p={p_slow:.2g} >= {alpha:g})"
    else:
        verdict = "ok"
        reason = f"not regressed: {what} {slow_effect:.3f}, p={p_slow:.2g}"
    return RegressionVerdict(
        verdict=verdict,
        ratio=est.ratio,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        p_value=p_slow,
        p_faster=p_fast,
        significant=p_slow < alpha,
        max_slowdown=max_slowdown,
        alpha=alpha,
        paired=paired,
        test=test,
        n_base=int(n_base),
        n_new=int(n_new),
        reason=reason,
    )


# ---------------------------------------------------------------- what a sample size supports
#
# The one rule for which statistics a row may print (the report follows it; the harness times enough calls for
# what it prints). A percentile q needs at least 1 / (1 - q) calls, so that at least one call lies beyond it
# (p90: 10 calls, p99: 100), and never fewer than 10 (the IQR: quartiles of fewer calls move with one call). A
# bootstrap interval needs at least 10 rounds: resampling fewer gives intervals that look tighter than they are.
# Below that, a row prints its median and how many calls were timed ("n=5 calls").

MIN_CALLS_FOR_QUANTILES = 10
MIN_ROUNDS_FOR_INTERVAL = 10


def min_calls_for(statistic: str) -> int:
    """Calls a statistic needs before it is printed: ``p50`` 1, ``iqr`` 10, ``pNN`` max(10, 1/(1 - NN/100)),
    ``interval`` (a bootstrap interval over rounds) 10 rounds."""
    if statistic in ("p50", "median", "mean"):
        return 1
    if statistic == "iqr":
        return MIN_CALLS_FOR_QUANTILES
    if statistic == "interval":
        return MIN_ROUNDS_FOR_INTERVAL
    if statistic.startswith("p") and statistic[1:].isdigit():
        q = int(statistic[1:]) / 100
        return max(MIN_CALLS_FOR_QUANTILES, round(1 / (1 - q)))
    raise ValueError(f"unknown statistic {statistic!r}")


def supports(statistic: str, n: int | float | None) -> bool:
    """Whether ``n`` timed calls (rounds, for ``interval``) support printing ``statistic``; unknown n: no."""
    if n is None or n != n:  # None or NaN
        return False
    return int(n) >= min_calls_for(statistic)
