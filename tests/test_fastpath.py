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


# ------------------------------------------------------------------------------------- feature store
from dde_bench.bench.featurestore import (  # noqa: E402
    build_store,
    finalize_store,
    model_hash,
    open_store,
    rank_shards,
    score_text_against_store,
)
from dde_bench.errors import UserError  # noqa: E402


def _tiny_student(task: str, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    cfg = size_config(
        "tiny", hidden_size=32, num_layers=1, num_heads=2, mlp_size=64, image_size=32, patch_size=16
    )
    return Student(cfg, task, TASK_LABELS[task]).eval()


def _pixels(task: str, n: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, 3, 32, 32) if task == "nlvr2" else (n, 3, 32, 32)
    return torch.randn(shape, generator=g)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["pooled", "fusion"])
def test_store_resume_is_byte_identical(tmp_path, kind):
    s = _tiny_student("vqa")
    px = _pixels("vqa", 23)
    whole = build_store(s, px, tmp_path / "whole", shard_size=5, batch_size=3, kind=kind, progress=False)

    def stop_after_two(k):
        if k == 1:
            raise _Stop

    part = tmp_path / "part"
    with pytest.raises(_Stop):
        build_store(
            s, px, part, shard_size=5, batch_size=3, kind=kind, progress=False, _after_shard=stop_after_two
        )
    assert sorted(p.name for p in part.glob("shard-*.safetensors")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert not (part / "manifest.json").exists()
    with pytest.raises(UserError, match="unfinished build"):
        open_store(part, s)
    built = []
    build_store(s, px, part, shard_size=5, batch_size=3, kind=kind, progress=False, _after_shard=built.append)
    assert built == [2, 3, 4]  # only the missing shards
    assert _files(part) == _files(whole)
    store = open_store(whole, s)
    assert store.count == 23 and len(store.shard_files) == 5 and store.kind == kind
    width = 32 if kind == "pooled" else 64
    assert store.load_all().shape == (23, width)


def test_store_from_stream_equals_tensor(tmp_path):
    s = _tiny_student("snli-ve")
    px = _pixels("snli-ve", 13)
    a = build_store(s, px, tmp_path / "a", shard_size=4, batch_size=4, progress=False)
    b = build_store(s, iter(px.split(4)), tmp_path / "b", shard_size=4, progress=False)
    assert _files(a) == _files(b)


def test_store_ranks_simulated(tmp_path):
    assert rank_shards(5, 0, 2) == [0, 2, 4] and rank_shards(5, 1, 2) == [1, 3]
    with pytest.raises(ValueError):
        rank_shards(5, 2, 2)
    s = _tiny_student("nlvr2")
    px = _pixels("nlvr2", 11)
    one = build_store(s, px, tmp_path / "one", shard_size=3, batch_size=2, progress=False)
    two = tmp_path / "two"
    built = {0: [], 1: []}
    for rank in (0, 1):
        build_store(
            s,
            px,
            two,
            shard_size=3,
            batch_size=2,
            progress=False,
            rank=rank,
            world_size=2,
            _after_shard=built[rank].append,
        )
        assert (two / "manifest.json").exists() == (rank == 1)  # the last rank to finish writes it
    assert built == {0: [0, 2], 1: [1, 3]}
    assert _files(two) == _files(one)
    assert finalize_store(two)


def test_store_refuses_other_model(tmp_path):
    s = _tiny_student("vqa", seed=0)
    other = _tiny_student("vqa", seed=1)
    assert model_hash(s) != model_hash(other)
    build_store(s, _pixels("vqa", 4), tmp_path, shard_size=4, progress=False, model_name="student-a")
    with pytest.raises(
        UserError, match=r"built with model 'student-a' \(hash [0-9a-f]{12}\), not with 'student-b'"
    ):
        open_store(tmp_path, other, model_name="student-b")
    with pytest.raises(UserError, match="cannot resume"):
        build_store(s, _pixels("vqa", 4), tmp_path, shard_size=2, progress=False, model_name="student-a")


@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
@pytest.mark.parametrize("kind", ["pooled", "fusion"])
@torch.no_grad()
def test_score_against_store(tmp_path, task, kind):
    s = _tiny_student(task)
    px = _pixels(task, 17)
    store = open_store(build_store(s, px, tmp_path, shard_size=5, kind=kind, progress=False), s)
    ids = torch.randint(5, 900, (1, 9))
    am = torch.ones_like(ids)
    feats = s.encode_images(px)
    ref = s.score(s.encode_text(ids, am).expand(17, -1), feats)
    got = score_text_against_store(s, ids, am, store, batch=4)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    one = score_text_against_store(s, ids[0], am[0], store, label=1)
    torch.testing.assert_close(one, ref[:, 1], atol=1e-5, rtol=0)
    v, i = score_text_against_store(s, ids, am, store, batch=3, label=1, topk=4)
    rv, ri = ref[:, 1].topk(4)
    torch.testing.assert_close(v, rv, atol=1e-5, rtol=0)
    assert i.tolist() == ri.tolist()


def test_cache_cli_info(tmp_path):
    from typer.testing import CliRunner

    from dde_bench.cli import app

    s = _tiny_student("snli-ve")
    build_store(
        s, _pixels("snli-ve", 6), tmp_path, shard_size=4, kind="fusion", progress=False, model_name="m"
    )
    res = CliRunner().invoke(app, ["cache", "info", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    for word in ("fusion", model_hash(s), "2 x up to 4", "6"):
        assert word in res.output
    res = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "no such feature store" in str(res.exception)


def test_fastpath_with_autograd_chunked():
    s = _student("vqa")
    h = s.config.hidden_size
    t, i = torch.randn(1, h), torch.randn(9, h)
    got = score_precomputed(s, precompute_text(s, t), precompute_image(s, i), chunk_size=4)
    got.sum().backward()  # no in-place / out= trouble with gradients
    torch.testing.assert_close(got.detach(), s.score(t.expand(9, -1), i).detach(), atol=1e-5, rtol=0)


def test_cache_build_with_two_processes_equals_one(use_bench_env, tmp_path):
    """`dde-bench cache build --nproc 2` (torch.distributed.run, gloo) writes the same bytes as one process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **use_bench_env, "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        "-m",
        "dde_bench.cli",
        "cache",
        "build",
        "--suite",
        "nlvr2",
        "--model",
        "rt-student",
    ]
    base += ["--shard-size", "10", "--batch-size", "4", "--device", "cpu", "--kind", "fusion"]
    one = subprocess.run([*base, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [*base, "--out", str(tmp_path / "two"), "--nproc", "2"], env=env, capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "5 x up to 10" in two.stdout  # 48 dev examples, printed once, by rank 0
    assert two.stdout.count("model hash") == 1
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    m = open_store(tmp_path / "two").manifest
    assert m["count"] == 48 and m["feature_shape"] == [2, 256] and m["model"] == "rt-student"


@pytest.mark.parametrize("task", ["nlvr2", "vqa"])
@torch.no_grad()
def test_one_class_score_equals_the_logit(task):
    """label=k computes only class k's score: equal to that logit column, chunked or not, both paths."""
    from dde_bench.modeling.fastpath import score_pooled

    s = _student(task)
    h = s.config.hidden_size
    t, i = torch.randn(1, h), _feats(task, 37, h)
    full = s.score(t.expand(37, -1), i)
    pooled = score_pooled(s, t.expand(37, -1), i, label=1)
    assert pooled.shape == (37,)
    torch.testing.assert_close(pooled, full[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(score_pooled(s, t.expand(37, -1), i), full, atol=1e-5, rtol=0)
    tp, ip = precompute_text(s, t), precompute_image(s, i)
    for chunk in (None, 8):
        got = score_precomputed(s, tp, ip, chunk_size=chunk, label=1)
        torch.testing.assert_close(got, full[:, 1], atol=1e-5, rtol=0)
