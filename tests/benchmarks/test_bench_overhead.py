"""The harness's own cost per call: measure() on a no-op, and on a ~10 ms call against the call alone.

Run with `make bench` (pytest-benchmark; excluded from the plain test run by the benchmark_suite marker).
The per-call overhead in microseconds is printed and stored in the benchmark's extra_info.
"""

from __future__ import annotations

import statistics
import time

import pytest

from dde_bench.bench.timing import measure

N_NOOP = 5000


def noop() -> None:
    return None


def ten_ms() -> None:
    time.sleep(0.01)


@pytest.mark.benchmark_suite
def test_measure_noop_overhead(benchmark) -> None:
    """Wall time of measure() over N no-op calls, per call, minus a bare loop's: the harness's cost."""

    def run() -> float:
        m = measure(noop, warmup_iters=0, warmup_s=0, min_iters=N_NOOP, min_time_s=0, max_iters=N_NOOP)
        assert m.wall_s is not None
        return m.wall_s / m.n

    per_call = benchmark(run)
    bare = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(N_NOOP):
            noop()
        bare.append((time.perf_counter() - t0) / N_NOOP)
    overhead_us = (per_call - statistics.median(bare)) * 1e6
    benchmark.extra_info["overhead_us_per_call"] = overhead_us
    print(f"\nmeasure() overhead on a no-op: {overhead_us:.3f} us per call")
    assert overhead_us < 100


@pytest.mark.benchmark_suite
def test_measure_10ms_overhead(benchmark) -> None:
    """Median of measure()'s samples and its per-call wall time against the 10 ms call timed alone."""
    n = 30
    m = benchmark.pedantic(
        measure,
        args=(ten_ms,),
        kwargs={"warmup_iters": 2, "warmup_s": 0, "min_iters": n, "min_time_s": 0, "max_iters": n},
        rounds=3,
        iterations=1,
    )
    alone = []
    for _ in range(n):
        t0 = time.perf_counter()
        ten_ms()
        alone.append(time.perf_counter() - t0)
    sample_overhead_us = (m.median_s - statistics.median(alone)) * 1e6
    wall_overhead_us = (m.wall_s / m.n - statistics.mean(alone)) * 1e6
    benchmark.extra_info["median_overhead_us"] = sample_overhead_us
    benchmark.extra_info["wall_overhead_us_per_call"] = wall_overhead_us
    print(
        f"\n10 ms call: median overhead {sample_overhead_us:.1f} us, wall overhead {wall_overhead_us:.1f} us/call"
    )
    assert abs(sample_overhead_us) < 1000  # sleep jitter dominates; the harness's own part is ~1 us
