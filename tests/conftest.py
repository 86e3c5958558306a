"""Shared fixtures: a small synthetic world and random-weight tiny model cards, so harness tests need no training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dde_bench.resources import REPO_ROOT

SMALL_SYNTH = {
    "nlvr2": {"seed": 0, "train": 64, "dev": 48, "test1": 16},
    "vqa": {"seed": 0, "train": 96, "val": 48},
    "snli-ve": {"seed": 0, "train": 64, "dev": 48, "test": 16},
}


@pytest.fixture(scope="session")
def bench_env(tmp_path_factory) -> dict:
    """Suites with small synthetic data and model cards with random weights (speed only, accuracy n/a),
    plus one 'trained' pair written as checkpoints so accuracy code paths run too. Returns env vars."""
    root = tmp_path_factory.mktemp("bench_env")
    suites, models, cache = root / "suites", root / "models", root / "cache"
    suites.mkdir()
    models.mkdir()
    for name, synth in SMALL_SYNTH.items():
        card = yaml.safe_load((REPO_ROOT / "suites" / f"{name}.yaml").read_text())
        card["data"]["synth"] = synth
        card["data"]["answer_min_count"] = 1
        card["models"] = ["rt-teacher", "rt-student", "rt-hf"]
        card["batch_sizes"] = [1, 4]
        card["gallery_sizes"] = [2, 5000]
        card["teacher_gallery_budget_s"] = 1.0  # 2 teacher passes fit, 5000 do not
        (suites / f"{name}.yaml").write_text(yaml.safe_dump(card))
    cards = {
        "rt-teacher": {"kind": "teacher", "size": "tiny", "weights": "random"},
        "rt-student": {"kind": "student", "size": "tiny", "weights": "random", "teacher": "rt-teacher"},
        "rt-hf": {"kind": "hf-vilt", "size": "tiny", "same_weights_as": "rt-teacher"},
    }
    for n, c in cards.items():
        (models / f"{n}.yaml").write_text(yaml.safe_dump(c))
    for p in (REPO_ROOT / "models").glob("*.yaml"):
        shutil.copy(p, models / p.name)
    return {"DDE_BENCH_SUITES": str(suites), "DDE_BENCH_MODELS": str(models), "DDE_BENCH_CACHE": str(cache)}


@pytest.fixture
def use_bench_env(bench_env, monkeypatch) -> dict:
    for k, v in bench_env.items():
        monkeypatch.setenv(k, v)
    return bench_env


def write_checkpoint_pair(env: dict, tmp_path: Path, prefix: str) -> tuple[str, str]:
    """A random tiny nlvr2 teacher and its student saved as checkpoints, with model cards PREFIX-teacher /
    PREFIX-student pointing at them, so accuracy code paths run without training. Returns the two card names."""
    import torch

    from dde_bench.bench.workload import Workload
    from dde_bench.cards import load_suite
    from dde_bench.modeling import Student, Teacher, save_model, size_config

    workload = Workload(load_suite("nlvr2"), Path(env["DDE_BENCH_CACHE"]))
    cfg = size_config("tiny", vocab_size=workload.data.vocab_size)
    torch.manual_seed(0)
    teacher = Teacher(cfg, "nlvr2")
    student = Student(cfg, "nlvr2")
    student.init_from_teacher(teacher)
    save_model(teacher, tmp_path / "t")
    save_model(student, tmp_path / "s")
    models = Path(env["DDE_BENCH_MODELS"])
    t, st = f"{prefix}-teacher", f"{prefix}-student"
    (models / f"{t}.yaml").write_text(
        yaml.safe_dump({"kind": "teacher", "size": "tiny", "weights": str(tmp_path / "t")})
    )
    (models / f"{st}.yaml").write_text(
        yaml.safe_dump({"kind": "student", "size": "tiny", "weights": str(tmp_path / "s"), "teacher": t})
    )
    return t, st


def pytest_configure(config):
    Path(REPO_ROOT / "reports").mkdir(exist_ok=True)
