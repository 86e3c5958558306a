"""Fusion-aware cache (dde_bench.modeling.fastpath) and the on-disk feature store (dde_bench.bench.featurestore)."""

from __future__ import annotations

import pytest
import torch

from dde_bench.modeling import Student, size_config
from dde_bench.modeling.fastpath import precompute_image, precompute_text, score_precomputed

TASK_LABELS = {"nlvr2": None, "vqa": 7, "snli-ve": None}


def _student(task: str, seed: int = 0, hidden: int = 32) -> Student:
    torch.manual_seed(seed)
    cfg = size_config("tiny", hidden_size=hidden, num_layers=1, num_heads=2, mlp_size=64)
    return Student(cfg, task, TASK_LABELS[task]).eval()


def _feats(task: str, n: int, h: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, h) if task == "nlvr2" else (n, h)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
@torch.no_grad()
def test_fastpath_equals_score_pairwise(task):
    s = _student(task)
    h = s.config.hidden_size
    t = torch.randn(5, h)
    i = _feats(task, 5, h)
    ref = s.score(t, i)
    got = score_precomputed(s, precompute_text(s, t), precompute_image(s, i))
    assert got.shape == ref.shape == (5, s.num_labels)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
@pytest.mark.parametrize("chunk", [None, 7])
@torch.no_grad()
def test_fastpath_one_text_many_images(task, chunk):
    s = _student(task)
    h = s.config.hidden_size
    t = torch.randn(1, h)
    i = _feats(task, 50, h)
    ref = s.score(t.expand(50, -1), i)
    tp = precompute_text(s, t)
    got = score_precomputed(s, tp, precompute_image(s, i), chunk_size=chunk)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(score_precomputed(s, tp[0], precompute_image(s, i)), ref, atol=1e-5, rtol=0)


def test_fastpath_rejects_bad_shapes():
    s = _student("nlvr2")
    h = s.config.hidden_size
    with pytest.raises(ValueError, match="nlvr2"):
        precompute_image(s, torch.randn(3, h))
    with pytest.raises(ValueError, match="last dimension"):
        precompute_text(s, torch.randn(3, h + 1))
    with pytest.raises(ValueError, match="rows"):
        score_precomputed(s, torch.randn(3, 2 * h), torch.randn(4, 2, 2 * h))


@torch.no_grad()
def test_fastpath_100k_tiny_matches_score():
    """The gallery size of the benchmark, at the real tiny size: same outputs as the plain path."""
    torch.manual_seed(0)
    s = Student(size_config("tiny"), "snli-ve").eval()
    h = s.config.hidden_size
    n = 100_000
    feats = torch.randn(n, h)
    t = torch.randn(1, h)
    ref = torch.cat([s.score(t.expand(c.shape[0], -1), c) for c in feats.split(16384)])
    got = score_precomputed(s, precompute_text(s, t), precompute_image(s, feats), chunk_size=16384)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
