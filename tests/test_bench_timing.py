"""Timing: the stopping rule, statistics against numpy, interleaving, CUDA events, harness overhead."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from dde_bench.bench.timing import Measurement, measure, measure_interleaved


def sleep_1ms() -> None:
    time.sleep(0.001)


def test_min_iters_dominates_when_time_is_short() -> None:
    m = measure(sleep_1ms, warmup_iters=1, warmup_s=0, min_iters=30, min_time_s=0.005)
    assert m.n == 30  # stops at the first call where both minimums hold
    assert m.stopped_by == "rule"
    assert np.all(m.samples_s >= 0.001)


def test_min_time_dominates_when_iters_are_few() -> None:
    m = measure(sleep_1ms, warmup_iters=1, warmup_s=0, min_iters=3, min_time_s=0.04)
    assert m.stopped_by == "rule"
    assert m.n >= 3
    assert m.wall_s is not None and m.wall_s >= 0.04
    assert m.n <= 41  # each call sleeps >= 1 ms, so 40 calls already pass 0.04 s
    assert m.total_s <= m.wall_s


def test_caps_win_over_minimums() -> None:
    m = measure(sleep_1ms, warmup_iters=0, warmup_s=0, min_iters=5, min_time_s=10, max_iters=7, max_time_s=20)
    assert (m.n, m.stopped_by) == (7, "max_iters")
    t0 = time.perf_counter()
    m = measure(sleep_1ms, warmup_iters=0, warmup_s=0, min_iters=1, min_time_s=5, max_time_s=0.02)
    assert m.stopped_by == "max_time"
    assert time.perf_counter() - t0 < 2


def test_warmup_calls_are_not_measured() -> None:
    calls = []
    m = measure(lambda: calls.append(1), warmup_iters=4, warmup_s=0, min_iters=10, min_time_s=0)
    assert (m.warmup_iters, m.n, len(calls)) == (4, 10, 14)


def test_bad_rule_is_rejected() -> None:
    with pytest.raises(ValueError):
        measure(sleep_1ms, min_iters=0)
    with pytest.raises(ValueError):
        measure(sleep_1ms, max_time_s=0)


def test_statistics_match_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(mean=-4, sigma=0.3, size=501)
    m = Measurement(samples_s=x, items_per_call=8)
    q25, q50, q75, q90, q99 = np.percentile(x, [25, 50, 75, 90, 99])
    assert m.median_s == pytest.approx(q50)
    assert m.iqr_s == pytest.approx(q75 - q25)
    assert m.p90_s == pytest.approx(q90)
    assert m.p99_s == pytest.approx(q99)
    assert m.mean_s == pytest.approx(x.mean())
    assert m.throughput_per_s == pytest.approx(8 * 501 / x.sum())
    row = m.to_row()
    assert row["latency_p50_ms"] == pytest.approx(q50 * 1e3)
    assert row["n_samples"] == 501
    assert m.samples_ms == pytest.approx((x * 1e3).tolist())


def test_measurement_rejects_empty_samples() -> None:
    with pytest.raises(ValueError):
        Measurement(samples_s=np.array([]), items_per_call=1)


def test_interleaving_order_and_equal_counts() -> None:
    log: list[str] = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    ms = measure_interleaved(
        fns, items_per_call={"a": 1, "b": 2, "c": 3}, warmup_iters=2, warmup_s=0, min_iters=5, min_time_s=0
    )
    assert log == ["a", "b", "c"] * 7  # 2 warm-up rounds + 5 measured rounds, A B C A B C ...
    assert [ms[k].n for k in "abc"] == [5, 5, 5]
    assert [ms[k].items_per_call for k in "abc"] == [1, 2, 3]
    assert ms["a"].label == "a" and ms["a"].metadata["interleaved_with"] == ["b", "c"]


def test_interleaved_ratio_of_known_work() -> None:
    ms = measure_interleaved(
        {"slow": lambda: time.sleep(0.004), "fast": sleep_1ms},
        warmup_iters=1,
        warmup_s=0,
        min_iters=8,
        min_time_s=0,
    )
    ratio = ms["slow"].median_s / ms["fast"].median_s
    assert 2.0 < ratio < 5.0


def test_harness_overhead_is_far_below_one_percent_of_10ms() -> None:
    """Per-call cost of measure()'s loop over a bare loop, as a median of repeats: robust on a busy machine."""

    def noop() -> None:
        return None

    n = 2000
    overheads = []
    for _ in range(7):
        m = measure(noop, warmup_iters=10, warmup_s=0, min_iters=n, min_time_s=0, max_iters=n)
        perf = time.perf_counter
        t0 = perf()
        for _ in range(n):
            noop()
        bare = (perf() - t0) / n
        assert m.wall_s is not None
        overheads.append(m.wall_s / m.n - bare)
    overhead = statistics.median(overheads)
    assert overhead < 100e-6  # 1% of a 10 ms call; typically ~0.5 us
    # what each sample itself carries (timer reads around an empty call) is tiny as well
    assert m.median_s < 50e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_event_timing_matches_synchronised_wall_time() -> None:
    dev = torch.device("cuda")
    a = torch.randn(2048, 2048, device=dev)

    def work() -> None:
        a @ a

    m = measure(work, device=dev, warmup_iters=5, warmup_s=0, min_iters=50, min_time_s=0)
    assert m.timer == "cuda_event" and m.n == 50
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        work()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / 50
    assert 0.5 * wall < m.median_s < 2.0 * wall
    ms = measure_interleaved(
        {"a": work, "b": work}, device=dev, warmup_iters=2, warmup_s=0, min_iters=20, min_time_s=0
    )
    assert ms["a"].n == ms["b"].n == 20
    assert 0.5 < ms["a"].median_s / ms["b"].median_s < 2.0


class _FakeEvent:
    """Stands in for torch.cuda.Event on a CPU machine: 'records' the host clock."""

    created = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        _FakeEvent.created += 1
        self.t: float | None = None

    def record(self, stream: object = None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _FakeEvent) -> float:
        assert self.t is not None and end.t is not None
        return (end.t - self.t) * 1e3  # milliseconds, like CUDA


def test_cuda_event_bookkeeping_with_fake_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's event handling (pairs, interleaving, one synchronize) checked without a GPU."""
    import contextlib

    syncs: list[object] = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    log: list[str] = []

    def slow() -> None:
        log.append("slow")
        time.sleep(0.003)

    def fast() -> None:
        log.append("fast")
        time.sleep(0.001)

    ms = measure_interleaved(
        {"slow": slow, "fast": fast}, device="cuda:0", warmup_iters=1, warmup_s=0, min_iters=70, min_time_s=0
    )
    assert log == ["slow", "fast"] * 71
    assert ms["slow"].timer == "cuda_event" and ms["slow"].n == ms["fast"].n == 70
    assert np.all(ms["slow"].samples_s >= 0.003) and np.all(ms["fast"].samples_s >= 0.001)
    assert len(syncs) == 2  # one after warm-up, one at read-out: none inside the measured loop
    assert _FakeEvent.created >= 2 * 70 * 2  # the pool grew past its first block of 64 rounds
    m = measure(fast, device="cuda:0", warmup_iters=0, warmup_s=0, min_iters=5, min_time_s=0)
    assert m.n == 5 and m.timer == "cuda_event" and m.wall_s is not None and m.wall_s >= m.total_s


def test_warm_up_of_slow_calls_is_capped() -> None:
    """Three warm-up calls of a slow model buy nothing the first did not: warmup_max_s ends it after one."""
    calls: list[int] = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.02)

    m = measure_interleaved(
        {"a": slow}, warmup_iters=3, warmup_s=0, warmup_max_s=0.01, min_iters=2, min_time_s=0
    )
    assert (m["a"].warmup_iters, m["a"].n, len(calls)) == (1, 2, 3)
    m = measure_interleaved({"a": slow}, warmup_iters=3, warmup_s=0, min_iters=2, min_time_s=0)
    assert m["a"].warmup_iters == 3  # no cap: the rule as before


def test_median_interval_is_distribution_free() -> None:
    from dde_bench.bench.timing import median_ci_halfwidth

    assert median_ci_halfwidth(np.full(50, 2.0)) == 0.0
    x = np.arange(1.0, 6.0)  # 5 samples: the interval is the whole range
    assert median_ci_halfwidth(x) == pytest.approx((5 - 1) / (2 * 3))
    x = np.arange(1.0, 101.0)  # 100 samples: ranks 50 -+ 9.8 -> x[40] .. x[60]
    assert median_ci_halfwidth(x) == pytest.approx((61 - 41) / (2 * 50.5))


def test_precision_target_spends_time_only_on_noisy_calls() -> None:
    """rel_ci: a steady pair stops at its minimums; a noisy member makes the group measure on (in chunks) until
    the target or the cap, and the rows say which ended it."""
    steady = measure_interleaved(
        {"a": lambda: None, "b": lambda: None},
        warmup_iters=1,
        warmup_s=0,
        min_iters=10,
        min_time_s=0,
        rel_ci=10.0,  # any interval is within 1000%
    )
    assert steady["a"].n == 10 and steady["a"].stopped_by == "rule"
    rng = np.random.default_rng(0)

    def noisy() -> None:
        time.sleep(rng.choice([0.0005, 0.004]))

    ms = measure_interleaved(
        {"noisy": noisy, "quiet": sleep_1ms},
        warmup_iters=1,
        warmup_s=0,
        min_iters=10,
        min_time_s=0,
        max_time_s=0.5,
        rel_ci=0.001,  # unreachable for a two-valued call: measures on to the cap
    )
    assert ms["noisy"].n == ms["quiet"].n > 10
    assert ms["noisy"].stopped_by == "max_time" and ms["noisy"].wall_s >= 0.45
    # the extension has its own budget: a noisy group costs at most rel_ci_max_s more, whatever the cap
    t0 = time.perf_counter()
    ms = measure_interleaved(
        {"noisy": noisy},
        warmup_iters=0,
        warmup_s=0,
        min_iters=10,
        min_time_s=0,
        max_time_s=30,
        rel_ci=0.001,
        rel_ci_max_s=0.3,
    )
    assert ms["noisy"].stopped_by == "max_time" and 0.3 <= ms["noisy"].wall_s < 5
    assert time.perf_counter() - t0 < 10
    waits = iter([0.0002, 0.008] * 5 + [0.002] * 10_000)  # wide at first, then steady

    def settles() -> None:
        time.sleep(next(waits))

    ms = measure_interleaved(
        {"s": settles}, warmup_iters=0, warmup_s=0, min_iters=10, min_time_s=0, max_time_s=30, rel_ci=0.3
    )
    assert (
        ms["s"].stopped_by == "precision" and 10 < ms["s"].n < 200
    )  # measured on, then stopped by the target
    with pytest.raises(ValueError, match="rel_ci"):
        measure_interleaved({"a": lambda: None}, rel_ci=-1)
