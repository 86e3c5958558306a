"""Latency timing: raw per-call samples, lazy statistics, and a stopping rule shared by every measurement.

The rule (what torch.utils.benchmark, pytest-benchmark and nvbench agree on):

* warm up for at least ``warmup_iters`` calls *and* ``warmup_s`` seconds (JIT, caches, allocator, clocks);
* then measure until **both** ``min_iters`` calls and ``min_time_s`` seconds are reached;
* never beyond the caps ``max_iters`` / ``max_time_s`` (a capped run says so in ``Measurement.stopped_by``).

Two refinements spend time where it buys precision (both off unless asked for):

* ``warmup_max_s``: the warm-up also ends once it has run that long (at least one round): a call of several
  seconds pays its one-time costs (allocations, kernel selection, caches) in its first call;
* ``rel_ci``: after the minimums, measuring goes on (in chunks) until the 95% confidence interval of every
  callable's median (distribution-free, from order statistics) is within ``rel_ci`` of that median, for at most
  ``rel_ci_max_s`` more seconds (and never past ``max_time_s``), so a tight measurement stops at its minimums
  and a noisy one gets more samples, within a bounded budget (the shape of torch.utils.benchmark's
  ``adaptive_autorange``). ``stopped_by`` says "precision" when the target ended it, "max_time" when a time
  budget did before the target was met.

CPU calls are timed with ``time.perf_counter`` around each call. CUDA calls are timed with a pair of
``torch.cuda.Event(enable_timing=True)`` recorded on the current stream around each call and read out after
**one** ``torch.cuda.synchronize`` at the end: the host never waits inside the loop, so the GPU queue stays
full, and no GPU time is ever read without synchronising. Work the callable launches on other streams is
only covered if it joins the current stream before returning.

The loop does nothing per call but the two timestamps, an append and two comparisons (no logging, no
allocation beyond the sample list), so the harness adds on the order of a microsecond per call:
``tests/test_bench_timing.py`` checks it stays far below 1% of a 10 ms call, ``tests/benchmarks/`` reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

__all__ = ["Measurement", "measure", "measure_interleaved"]

# Defaults: enough samples for a stable median and p90 on a noisy machine, bounded run time.
WARMUP_ITERS = 3
WARMUP_S = 0.2
MIN_ITERS = 10
MIN_TIME_S = 1.0
MAX_ITERS = 100_000
MAX_TIME_S = 30.0
REL_CI_MAX_S = 10.0  # the precision extension's own budget per measurement (rel_ci)


@dataclass
class Measurement:
    """Raw per-call latency samples of one callable, with statistics computed on first use.

    ``samples_s`` holds one wall (CPU) or CUDA-event (GPU) time per call, in seconds, in call order.
    ``items_per_call`` is how many items (examples, image-text pairs) one call processes, for throughput.
    """

    samples_s: np.ndarray
    items_per_call: int
    device: str = "cpu"
    label: str = ""
    timer: str = "perf_counter"  # perf_counter | cuda_event
    threads: int | None = None  # torch.get_num_threads() while measuring
    warmup_iters: int = 0
    stopped_by: str = "rule"  # rule (minimums reached) | precision (rel_ci met) | max_iters | max_time
    wall_s: float | None = None  # wall time of the whole measuring loop (host clock; CUDA: to the final sync)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples_s = np.asarray(self.samples_s, dtype=np.float64)
        if self.samples_s.ndim != 1 or self.samples_s.size == 0:
            raise ValueError("a Measurement needs a non-empty 1-D array of samples")
        if self.items_per_call <= 0:
            raise ValueError(f"items_per_call must be positive, got {self.items_per_call}")

    # --- statistics (seconds), computed lazily and cached -------------------------------------------
    @property
    def n(self) -> int:
        """Number of measured calls."""
        return int(self.samples_s.size)

    @cached_property
    def total_s(self) -> float:
        """Sum of the measured call times (the denominator of throughput)."""
        return float(self.samples_s.sum())

    @cached_property
    def _quantiles(self) -> np.ndarray:
        return np.percentile(self.samples_s, [25.0, 50.0, 75.0, 90.0, 99.0])

    @property
    def median_s(self) -> float:
        return float(self._quantiles[1])

    @property
    def iqr_s(self) -> float:
        """Interquartile range (p75 - p25)."""
        return float(self._quantiles[2] - self._quantiles[0])

    @property
    def p90_s(self) -> float:
        return float(self._quantiles[3])

    @property
    def p99_s(self) -> float:
        return float(self._quantiles[4])

    @cached_property
    def mean_s(self) -> float:
        return float(self.samples_s.mean())

    @cached_property
    def std_s(self) -> float:
        return float(self.samples_s.std(ddof=1)) if self.n > 1 else 0.0

    @property
    def throughput_per_s(self) -> float:
        """Items per second: ``items_per_call * n / total measured time``."""
        return self.items_per_call * self.n / self.total_s if self.total_s > 0 else float("inf")

    @property
    def items(self) -> int:
        """Items processed in the measured window (for energy per item)."""
        return self.items_per_call * self.n

    @property
    def samples_ms(self) -> list[float]:
        """Raw samples in milliseconds, as stored in results.jsonl."""
        return (self.samples_s * 1e3).tolist()

    def to_row(self) -> dict[str, Any]:
        """The latency columns of a results row (see ``schema.COLUMNS``)."""
        return {
            "latency_p50_ms": self.median_s * 1e3,
            "latency_iqr_ms": self.iqr_s * 1e3,
            "latency_p90_ms": self.p90_s * 1e3,
            "latency_p99_ms": self.p99_s * 1e3,
            "latency_mean_ms": self.mean_s * 1e3,
            "n_samples": self.n,
            "throughput_per_s": self.throughput_per_s,
            "stopped_by": self.stopped_by,
        }

    def __repr__(self) -> str:
        return (
            f"Measurement({self.label or 'fn'}: median {self.median_s * 1e3:.3f} ms, "
            f"IQR {self.iqr_s * 1e3:.3f} ms, n={self.n}, {self.timer} on {self.device}, {self.stopped_by})"
        )


def _check_rule(
    warmup_iters: int, min_iters: int, max_iters: int, min_time_s: float, max_time_s: float
) -> None:
    """Reject impossible settings. A cap below a minimum is allowed: the cap wins (see ``stopped_by``)."""
    if warmup_iters < 0 or min_iters < 1 or max_iters < 1:
        raise ValueError("warmup_iters must be >= 0, min_iters and max_iters >= 1")
    if min_time_s < 0 or max_time_s <= 0:
        raise ValueError(f"need min_time_s >= 0 ({min_time_s}) and max_time_s > 0 ({max_time_s})")


def _warm_up(
    fns: list[Callable[[], Any]],
    device: torch.device,
    warmup_iters: int,
    warmup_s: float,
    warmup_max_s: float | None = None,
) -> int:
    """Call every fn (interleaved) until both ``warmup_iters`` rounds and ``warmup_s`` seconds are done, or (after
    at least one round) ``warmup_max_s`` seconds have passed.

    Capped at 100x ``warmup_iters`` + 1000 rounds so a no-op cannot spin for long; returns the round count.
    """
    cap = 100 * warmup_iters + 1000
    start = time.perf_counter()
    rounds = 0
    while rounds < cap and (rounds < warmup_iters or time.perf_counter() - start < warmup_s):
        if warmup_max_s is not None and rounds >= 1 and time.perf_counter() - start >= warmup_max_s:
            break
        for fn in fns:
            fn()
        rounds += 1
        if device.type == "cuda" and warmup_s > 0:
            torch.cuda.synchronize(device)  # warm-up time must be GPU time, not launch time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return rounds


def _stopped_by(n: int, elapsed: float, min_iters: int, min_time_s: float, max_iters: int) -> str:
    if n >= min_iters and elapsed >= min_time_s:
        return "rule"
    return "max_iters" if n >= max_iters else "max_time"


def median_ci_halfwidth(samples: np.ndarray) -> float:
    """Half the width of a distribution-free 95% confidence interval of the median, relative to the median:
    the order statistics at ranks n/2 -+ 0.98 sqrt(n) (the normal approximation of the binomial), clamped to the
    sample's extremes (so fewer than ~6 samples give the full range)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    med = float(np.median(x))
    if n == 0 or med <= 0:
        return float("inf")
    lo = max(int(np.floor(n / 2 - 0.98 * np.sqrt(n))), 0)
    hi = min(int(np.ceil(n / 2 + 0.98 * np.sqrt(n))), n - 1)
    return float(x[hi] - x[lo]) / (2 * med)


def measure(
    fn: Callable[[], Any],
    *,
    device: torch.device | str = "cpu",
    items_per_call: int = 1,
    warmup_iters: int = WARMUP_ITERS,
    warmup_s: float = WARMUP_S,
    min_iters: int = MIN_ITERS,
    min_time_s: float = MIN_TIME_S,
    max_iters: int = MAX_ITERS,
    max_time_s: float = MAX_TIME_S,
    window: AbstractContextManager[Any] | None = None,
    label: str = "",
) -> Measurement:
    """Time ``fn()`` (no arguments; close over the inputs) and return its raw samples.

    Warm-up as described in the module docstring, then measure until both ``min_iters`` calls and
    ``min_time_s`` seconds (wall time of the measuring loop) are reached, or a cap (``max_iters``,
    ``max_time_s``) is hit; the cap wins over the minimums, and ``stopped_by`` records which ended it.

    ``window`` is an optional context manager (e.g. an ``EnergyMeter``) entered after the warm-up and
    exited after the final synchronize, so it covers exactly the measured calls.
    On CUDA the stopping rule uses host wall time; the host may run ahead of the GPU by the launch
    queue's depth, which only lengthens the GPU work measured, never shortens it.
    """
    dev = torch.device(device)
    _check_rule(warmup_iters, min_iters, max_iters, min_time_s, max_time_s)
    rounds = _warm_up([fn], dev, warmup_iters, warmup_s)
    perf = time.perf_counter
    with window if window is not None else nullcontext():
        if dev.type == "cuda":
            samples, elapsed, wall = _loop_cuda({"fn": fn}, dev, min_iters, min_time_s, max_iters, max_time_s)
            samples_s = samples["fn"]
            timer = "cuda_event"
        else:
            out: list[float] = []
            append = out.append
            start = perf()
            n = 0
            elapsed = 0.0
            while True:
                t0 = perf()
                fn()
                t1 = perf()
                append(t1 - t0)
                n += 1
                elapsed = t1 - start
                if (n >= min_iters and elapsed >= min_time_s) or n >= max_iters or elapsed >= max_time_s:
                    break
            samples_s = np.asarray(out)
            wall = elapsed
            timer = "perf_counter"
    n = int(samples_s.size)
    return Measurement(
        samples_s=samples_s,
        items_per_call=items_per_call,
        device=str(dev),
        label=label,
        timer=timer,
        threads=torch.get_num_threads(),
        warmup_iters=rounds,
        stopped_by=_stopped_by(n, elapsed, min_iters, min_time_s, max_iters),
        wall_s=wall,
    )


def _loop_cuda(
    fns: Mapping[str, Callable[[], Any]],
    dev: torch.device,
    min_iters: int,
    min_time_s: float,
    max_iters: int,
    max_time_s: float,
) -> tuple[dict[str, np.ndarray], float, float]:
    """Interleaved CUDA-event loop: events recorded around each call, one synchronize at read-out.

    Returns per-name samples (seconds), the host time at which the rule stopped the loop, and the wall time
    of the loop up to the end of the final synchronize.
    """
    names = list(fns)
    calls = [fns[k] for k in names]
    k = len(calls)
    # Events are preallocated in blocks, between rounds. torch creates the CUDA event lazily on its first
    # record, so each one is recorded once here: no cudaEventCreate ever runs inside a timed span.
    block = max(64, min(min_iters, 4096))
    starts: list[torch.cuda.Event] = []
    ends: list[torch.cuda.Event] = []

    def grow() -> None:
        stream = torch.cuda.current_stream(dev)
        for _ in range(block * k):
            for events in (starts, ends):
                e = torch.cuda.Event(enable_timing=True)
                e.record(stream)
                events.append(e)

    perf = time.perf_counter
    with torch.cuda.device(dev):
        grow()
        stream = torch.cuda.current_stream(dev)
        start = perf()
        rounds = 0
        i = 0
        elapsed = 0.0
        while True:
            if i + k > len(starts):
                grow()
            for fn in calls:
                starts[i].record(stream)
                fn()
                ends[i].record(stream)
                i += 1
            rounds += 1
            elapsed = perf() - start
            if (
                (rounds >= min_iters and elapsed >= min_time_s)
                or rounds >= max_iters
                or elapsed >= max_time_s
            ):
                break
        torch.cuda.synchronize(dev)  # the one synchronize: every event below has completed
        wall = perf() - start  # the loop including the GPU draining its queue
        ms = np.fromiter((starts[j].elapsed_time(ends[j]) for j in range(i)), dtype=np.float64, count=i)
    per_fn = {name: ms[j::k] / 1e3 for j, name in enumerate(names)}
    return per_fn, elapsed, wall


def _loop_cpu(
    fns: Mapping[str, Callable[[], Any]],
    min_iters: int,
    min_time_s: float,
    max_iters: int,
    max_time_s: float,
) -> tuple[dict[str, np.ndarray], float, float]:
    """Interleaved perf_counter loop: rounds of one call each, a timestamp pair around every call."""
    names = list(fns)
    perf = time.perf_counter
    calls = [fns[k] for k in names]
    outs: list[list[float]] = [[] for _ in names]
    appends = [o.append for o in outs]
    pairs = list(zip(calls, appends, strict=True))
    start = perf()
    n = 0
    elapsed = 0.0
    while True:
        for fn, append in pairs:
            t0 = perf()
            fn()
            t1 = perf()
            append(t1 - t0)
        n += 1
        elapsed = perf() - start
        if (n >= min_iters and elapsed >= min_time_s) or n >= max_iters or elapsed >= max_time_s:
            break
    per_fn = {name: np.asarray(o) for name, o in zip(names, outs, strict=True)}
    return per_fn, elapsed, elapsed


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device | str = "cpu",
    items_per_call: int | Mapping[str, int] = 1,
    warmup_iters: int = WARMUP_ITERS,
    warmup_s: float = WARMUP_S,
    min_iters: int = MIN_ITERS,
    min_time_s: float = MIN_TIME_S,
    max_iters: int = MAX_ITERS,
    max_time_s: float = MAX_TIME_S,
    warmup_max_s: float | None = None,
    rel_ci: float = 0.0,
    rel_ci_max_s: float = REL_CI_MAX_S,
    window: AbstractContextManager[Any] | None = None,
) -> dict[str, Measurement]:
    """Time several callables in rounds, A B A B ..., in one process, and return one Measurement each.

    Every callable gets the same number of calls. The stopping rule counts *rounds* (one call of each):
    stop once ``min_iters`` rounds are done and the whole interleaved loop has run ``min_time_s``
    seconds, or at a cap. Slow drifts of the machine (thermal, other tenants) hit all callables alike,
    so ratios of their medians (see ``stats.speedup``) survive noise that absolute times do not.
    Warm-up is interleaved the same way. ``items_per_call`` may be one int or one per name.
    ``rel_ci`` > 0 goes on after the minimums, in chunks of a quarter of the rounds so far, until every median's
    95% interval is within ``rel_ci`` of it (:func:`median_ci_halfwidth`), for at most ``rel_ci_max_s`` more
    seconds and never past the caps; ``warmup_max_s`` bounds the warm-up of slow calls (module docstring).
    """
    if not fns:
        raise ValueError("measure_interleaved needs at least one callable")
    if not rel_ci >= 0:
        raise ValueError(f"rel_ci must be 0 (off) or a positive fraction, got {rel_ci}")
    dev = torch.device(device)
    _check_rule(warmup_iters, min_iters, max_iters, min_time_s, max_time_s)
    names = list(fns)
    items = (
        {name: int(items_per_call) for name in names}
        if isinstance(items_per_call, int)
        else {name: int(items_per_call[name]) for name in names}
    )
    rounds = _warm_up([fns[k] for k in names], dev, warmup_iters, warmup_s, warmup_max_s)

    def chunk(n_min: int, t_min: float, n_max: int, t_max: float):
        if dev.type == "cuda":
            return _loop_cuda(fns, dev, n_min, t_min, n_max, t_max)
        return _loop_cpu(fns, n_min, t_min, n_max, t_max)

    def precise(per: dict[str, np.ndarray]) -> bool:
        return all(median_ci_halfwidth(v) <= rel_ci for v in per.values())

    with window if window is not None else nullcontext():
        per_fn, elapsed, wall = chunk(min_iters, min_time_s, max_iters, max_time_s)
        stopped = None
        extended = False
        budget_end = min(max_time_s, wall + rel_ci_max_s)  # the extension's own time budget
        while rel_ci > 0:
            n = len(per_fn[names[0]])
            if precise(per_fn):
                stopped = "precision" if extended else None
                break
            if n >= max_iters:
                stopped = "max_iters"
                break
            if wall >= budget_end:
                stopped = "max_time"
                break
            k = min(max(n // 4, 1), max_iters - n)
            more, e2, w2 = chunk(k, 0.0, k, budget_end - wall)
            per_fn = {name: np.concatenate([per_fn[name], more[name]]) for name in names}
            elapsed, wall = wall + e2, wall + w2
            extended = True
    timer = "cuda_event" if dev.type == "cuda" else "perf_counter"
    threads = torch.get_num_threads()
    result: dict[str, Measurement] = {}
    for name in names:
        s = per_fn[name]
        result[name] = Measurement(
            samples_s=s,
            items_per_call=items[name],
            device=str(dev),
            label=name,
            timer=timer,
            threads=threads,
            warmup_iters=rounds,
            stopped_by=stopped or _stopped_by(int(s.size), elapsed, min_iters, min_time_s, max_iters),
            wall_s=wall,
            metadata={"interleaved_with": [k for k in names if k != name]},
        )
    return result
