"""Gallery scoring: one text against 100,000 cached images, plain pooled cache vs fusion-aware cache.

Excluded from the plain test run; run with

    pytest tests/benchmarks/test_fastpath_speed.py -m benchmark_suite --benchmark-enable -s

Random weights, snli-ve head (3 labels), fp32 on CPU. The text is encoded once, outside the timed call;
the plain path runs ``student.score`` over chunks of the pooled features, the fusion-aware path
``score_precomputed`` over the precomputed ``W_i i + b``, both in memory. (`dde-bench run`'s gallery scenario
measures the same two paths reading an on-disk feature store, text tower included.)
Targets: tiny < 0.5 s per query; b32 fusion-aware >= 1.6x the plain throughput and < 10 s per query.
The interleaved tests print medians and the speedup with its bootstrap interval (one process, A B A B).
"""

from __future__ import annotations

import pytest
import torch

from dde_bench.bench import timing
from dde_bench.bench.stats import speedup
from dde_bench.modeling import Student, size_config
from dde_bench.modeling.fastpath import precompute_image, precompute_text, score_precomputed

pytestmark = pytest.mark.benchmark_suite

N = 100_000
CHUNK = 16384


def _setup(size: str):
    torch.manual_seed(0)
    s = Student(size_config(size), "snli-ve").eval()
    h = s.config.hidden_size
    with torch.inference_mode():
        feats = torch.randn(N, h)
        t = torch.randn(1, h)  # the encoded text (encoding it is the same for both paths)
        img = precompute_image(s, feats)
        tp = precompute_text(s, t)

    @torch.inference_mode()
    def plain():
        return torch.cat([s.score(t.expand(c.shape[0], -1), c) for c in feats.split(CHUNK)])

    @torch.inference_mode()
    def fusion():
        return score_precomputed(s, tp, img, chunk_size=CHUNK)

    torch.testing.assert_close(fusion(), plain(), atol=1e-4, rtol=0)
    return plain, fusion


@pytest.fixture(scope="module")
def tiny():
    return _setup("tiny")


@pytest.fixture(scope="module")
def b32():
    return _setup("b32")


def _interleaved(plain, fusion, rounds: int, label: str):
    m = timing.measure_interleaved(
        {"plain": plain, "fusion": fusion},
        items_per_call=N,
        warmup_iters=1,
        warmup_s=0.0,
        min_iters=rounds,
        min_time_s=0.0,
        max_time_s=600.0,
    )
    sp = speedup(m["plain"].samples_s, m["fusion"].samples_s)
    print(
        f"\n{label}, N={N:,}: plain median {m['plain'].median_s:.3f} s ({m['plain'].throughput_per_s:,.0f} img/s), "
        f"fusion-aware median {m['fusion'].median_s:.3f} s ({m['fusion'].throughput_per_s:,.0f} img/s), "
        f"speedup {sp.ratio:.2f}x [{sp.ci_low:.2f}, {sp.ci_high:.2f}], threads {m['plain'].threads}"
    )
    return m, sp


def test_tiny_plain(benchmark, tiny):
    benchmark.group = "gallery 100k, tiny, snli-ve, fp32"
    benchmark.pedantic(tiny[0], rounds=5, warmup_rounds=1)


def test_tiny_fusion_aware(benchmark, tiny):
    benchmark.group = "gallery 100k, tiny, snli-ve, fp32"
    benchmark.pedantic(tiny[1], rounds=5, warmup_rounds=1)


def test_tiny_interleaved(tiny):
    m, _ = _interleaved(*tiny, rounds=10, label="tiny")
    assert m["fusion"].median_s < 0.5


def test_b32_plain(benchmark, b32):
    benchmark.group = "gallery 100k, b32, snli-ve, fp32"
    benchmark.pedantic(b32[0], rounds=2, warmup_rounds=1)


def test_b32_fusion_aware(benchmark, b32):
    benchmark.group = "gallery 100k, b32, snli-ve, fp32"
    benchmark.pedantic(b32[1], rounds=2, warmup_rounds=1)


def test_b32_interleaved(b32):
    m, sp = _interleaved(*b32, rounds=3, label="b32")
    assert sp.ratio >= 1.6
    assert m["fusion"].median_s < 10.0
