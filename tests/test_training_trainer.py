"""The trainer on a tiny synthetic world: loss goes down, checkpoints and resume, pre-training, DDP, CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dde_bench.errors import UserError
from dde_bench.training.trainer import LossWeights, OptimConfig, TrainConfig, train

SUITE = {
    "name": "nlvr2-test",
    "task": "nlvr2",
    "eval_split": "dev",
    "data": {
        "source": "synthetic",
        "synth": {"seed": 0, "train": 64, "dev": 32, "test1": 8, "families": ["exist"]},
    },
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from dde_bench.data import ensure_data

    root = tmp_path_factory.mktemp("cache")
    ensure_data(SUITE, root)
    return root


def cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        kind="teacher",
        suite=SUITE,
        out=str(out),
        cache_root=str(cache),
        steps=8,
        batch_size=16,
        log_every=1,
        progress=False,
        device="cpu",
        optim=OptimConfig(lr=1e-3, warmup_ratio=0.0),
    )
    base.update(kw)
    return TrainConfig(**base)


def losses(out: Path, name: str = "loss") -> list[float]:
    with open(out / "metrics.csv") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["split"] == "train" and r["name"] == name]


@pytest.fixture(scope="module")
def teacher_dir(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    # memorise 16 examples: a few steps on one repeated batch must bring the loss down
    # (init std 0.1: the tiny model's default 0.02 sits on a plateau for hundreds of steps; see recipes.QUICK)
    train(cfg(cache, out, steps=10, train_limit=8, eval_limit=8, init_std=0.1, optim=OptimConfig(lr=3e-4)))
    return out


def test_teacher_trains_and_writes_everything(teacher_dir):
    ls = losses(teacher_dir)
    assert sum(ls[-3:]) < sum(ls[:3])
    meta = json.loads((teacher_dir / "config.json").read_text())["meta"]
    assert meta["training"]["steps"] == 10 and meta["training"]["kind"] == "teacher"
    assert set(meta["metrics"]) == {"accuracy", "consistency"}
    assert "git_commit" in meta
    assert list((teacher_dir / "tb").iterdir())
    assert (teacher_dir / "last" / "trainer.pt").is_file()


def test_student_distillation_decreases_the_loss(cache, teacher_dir, tmp_path):
    out = tmp_path / "student"
    train(
        cfg(
            cache,
            out,
            kind="student",
            teacher=str(teacher_dir),
            init="teacher",
            train_limit=16,
            eval_limit=16,
            steps=10,
            weights=LossWeights(ground_truth=1.0, soft=1.0, attention=1.0),
        )
    )
    ls = losses(out)
    assert sum(ls[-2:]) < sum(ls[:2])
    assert losses(out, "attention") and losses(out, "soft")
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "student"


def test_resume_gives_the_weights_of_an_uninterrupted_run(cache, tmp_path):
    full = tmp_path / "full"
    part = tmp_path / "part"
    kw = dict(steps=4, train_limit=16, eval_limit=8, optim=OptimConfig(lr=5e-4, warmup_ratio=0.3))
    train(cfg(cache, full, **kw))
    train(cfg(cache, part, stop_after=2, **kw))
    assert not (part / "model.safetensors").exists()  # interrupted: only the resumable state
    train(cfg(cache, part, resume=True, **kw))
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(part / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_loader_workers_give_the_weights_of_the_main_process(cache, tmp_path, monkeypatch):
    """Images not held in memory (as on real data): batches decoded by 2 DataLoader workers give bit-identical
    weights to batches built in the main process, and an interrupted worker run resumes to the same weights."""
    from dde_bench.data import batching

    monkeypatch.setattr(batching, "CACHE_MAX_BYTES", 0)  # nothing fits: decode per batch
    kw = dict(
        steps=4, train_limit=16, eval_limit=8, optim=OptimConfig(lr=5e-4, warmup_ratio=0.3), grad_accum=2
    )
    train(cfg(cache, tmp_path / "main", loader_workers=0, **kw))
    train(cfg(cache, tmp_path / "workers", loader_workers=2, **kw))
    train(cfg(cache, tmp_path / "part", loader_workers=2, stop_after=2, **kw))
    train(cfg(cache, tmp_path / "part", loader_workers=2, resume=True, **kw))
    a = load_file(str(tmp_path / "main" / "model.safetensors"))
    for other in ("workers", "part"):
        b = load_file(str(tmp_path / other / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{other}: {k}")


def test_student_starts_from_the_pretrained_or_finetuned_teacher(cache, tmp_path):
    """init="pretrained-teacher" puts the teacher's pre-training-stage encoder into both towers (the authors'
    start), "teacher" the fine-tuned one; head_init "fresh" leaves the task head new, "copy" takes the fine-tuned
    teacher's. lr 0 and one step: the saved weights are the initial ones."""
    from dde_bench.modeling.checkpoint import load_student, load_teacher

    t = tmp_path / "teacher"
    train(cfg(cache, t / "pretrain", stage="pretrain", steps=2, train_limit=16))
    train(cfg(cache, t, steps=2, train_limit=16, eval_limit=8, init=str(t / "pretrain")))
    still = dict(steps=1, train_limit=16, eval_limit=8, optim=OptimConfig(lr=0.0, warmup_ratio=0.0))
    weights = LossWeights(ground_truth=0.0, soft=1.0, attention=1.0)
    runs = {
        ("pretrained-teacher", "fresh"): tmp_path / "s-pre-fresh",
        ("teacher", "copy"): tmp_path / "s-tuned-copy",
        ("pretrained-teacher", "copy"): tmp_path / "s-pre-copy",
    }
    for (init, head), out in runs.items():
        train(
            cfg(
                cache,
                out,
                kind="student",
                teacher=str(t),
                init=init,
                head_init=head,
                weights=weights,
                **still,
            )
        )
    pre, tuned = load_teacher(t / "pretrain"), load_teacher(t)
    enc = lambda m: m.encoder.state_dict()  # noqa: E731

    def towers_equal(student, teacher) -> bool:
        sd = enc(teacher)
        return all(
            torch.equal(v, sd[k])
            for tower in (student.text_tower, student.image_tower)
            for k, v in tower.state_dict().items()
        )

    s = load_student(runs[("pretrained-teacher", "fresh")])
    assert towers_equal(s, pre) and not towers_equal(s, tuned)
    assert not torch.equal(s.head[0].weight, tuned.head[0].weight)
    s = load_student(runs[("teacher", "copy")])
    assert towers_equal(s, tuned) and torch.equal(s.head[0].weight, tuned.head[0].weight)
    s = load_student(runs[("pretrained-teacher", "copy")])
    assert towers_equal(s, pre) and torch.equal(s.head[0].weight, tuned.head[0].weight)
    meta = json.loads((runs[("pretrained-teacher", "fresh")] / "config.json").read_text())["meta"]["training"]
    assert (meta["init"], meta["head_init"]) == ("pretrained-teacher", "fresh")  # the row records its start
    plain = tmp_path / "teacher-without-pretraining"
    train(cfg(cache, plain, steps=1, train_limit=16, eval_limit=8))
    with pytest.raises(UserError, match="no teacher checkpoint"):
        train(
            cfg(
                cache,
                tmp_path / "x",
                kind="student",
                teacher=str(plain),
                init="pretrained-teacher",
                **still,
            )
        )


def test_pretraining_stage_and_student_pretrain_distillation(cache, tmp_path):
    t_pre = tmp_path / "teacher-pre"
    train(cfg(cache, t_pre, stage="pretrain", steps=3, train_limit=16))
    assert (t_pre / "pretrain_heads.safetensors").is_file()
    assert losses(t_pre, "mlm") and losses(t_pre, "itm")
    s_pre = tmp_path / "student-pre"
    train(
        cfg(
            cache,
            s_pre,
            kind="student",
            stage="pretrain",
            steps=3,
            train_limit=32,
            teacher=str(t_pre),
            init="teacher",
            weights=LossWeights(ground_truth=0.0, soft=1.0, attention=1.0),
        )
    )
    assert losses(s_pre, "attention")


def test_bad_inputs_are_user_errors(cache, tmp_path):
    from dde_bench.modeling.checkpoint import save_model
    from dde_bench.modeling.config import size_config
    from dde_bench.modeling.models import Teacher

    with pytest.raises(UserError, match="needs --teacher"):
        train(cfg(cache, tmp_path / "x", kind="student"))
    wrong_task = save_model(Teacher(size_config("tiny"), "snli-ve"), tmp_path / "snli-teacher")
    with pytest.raises(UserError, match="snli-ve teacher cannot teach task nlvr2"):
        train(cfg(cache, tmp_path / "y", kind="student", teacher=str(wrong_task), init="teacher"))
    wrong_size = save_model(Teacher(size_config("tiny", hidden_size=64), "nlvr2"), tmp_path / "small-teacher")
    with pytest.raises(UserError, match="not size 'tiny'"):
        train(cfg(cache, tmp_path / "z", kind="student", teacher=str(wrong_size), init="teacher"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            train(cfg(cache, tmp_path / "w", device="cuda"))
    with pytest.raises(UserError, match="data_dir"):
        train(cfg(cache, tmp_path / "v", suite={"name": "s", "task": "nlvr2", "data": {"source": "dir"}}))
    missing = {"name": "s", "task": "nlvr2", "data": {"data_dir": str(tmp_path / "none")}}
    with pytest.raises(UserError, match="no such data folder"):
        train(cfg(cache, tmp_path / "u", suite=missing))


def test_ensure_trained_trains_once_then_reuses(cache):
    from dde_bench.training.recipes import Recipe, ensure_trained

    recipe = Recipe(name="test", teacher_steps=2, student_steps=2, batch_size=4, eval_limit=4)
    card = {
        "name": "tiny-student",
        "kind": "student",
        "size": "tiny",
        "teacher": "tiny-teacher",
        "weights": "trained",
        "distill": {"ground_truth": 0.0, "soft": 1.0, "attention": 1.0},
    }
    path = ensure_trained(SUITE, card, cache, device="cpu", progress=False, recipe=recipe)
    meta = json.loads((path / "config.json").read_text())["meta"]
    assert meta["training"]["weights"]["attention"] == 1.0 and meta["training"]["steps"] == 2
    teacher = Path(meta["training"]["teacher"])
    assert (teacher / "config.json").is_file() and teacher.parent == path.parent
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    again = ensure_trained(SUITE, card, cache, device="cpu", progress=False, recipe=recipe)
    assert again == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="not 'trained'"):
        ensure_trained(SUITE, {**card, "weights": "random"}, cache, progress=False, recipe=recipe)


def test_training_leaves_the_thread_count_alone(cache, tmp_path):
    """A benchmark that trains its models first must measure with its own thread setting (a 2-thread trainer
    once leaked into a 1-thread gate run and changed the measured speedup)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg(cache, tmp_path / "t1", steps=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
