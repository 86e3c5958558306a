"""`reproduce` end to end with a few steps per model (slow: trains 6 models and measures 5 speedups)."""

from __future__ import annotations

import csv
import json

import pytest

from dde_bench.training import recipes
from dde_bench.training.reproduce import run_reproduce, write_table

SUITE = {
    "name": "nlvr2-repro",
    "task": "nlvr2",
    "eval_split": "dev",
    "data": {
        "source": "synthetic",
        "synth": {"seed": 2, "train": 16, "dev": 8, "test1": 4, "families": ["exist"]},
    },
}


def test_table_aggregates_seeds(tmp_path):
    rows = [
        {
            "model": "teacher (fusion encoder)",
            "seed": 0,
            "accuracy": 70.0,
            "consistency": 40.0,
            "speedup": 1.0,
        },
        {
            "model": "teacher (fusion encoder)",
            "seed": 1,
            "accuracy": 74.0,
            "consistency": 44.0,
            "speedup": 1.0,
        },
        {"model": "student", "seed": 0, "accuracy": 60.0, "consistency": 30.0, "speedup": 3.0},
        {"model": "student", "seed": 1, "accuracy": 62.0, "consistency": 32.0, "speedup": 5.0},
    ]
    nodistill = [
        {"model": "student, no distillation", "seed": s, "accuracy": a, "speedup": 4.0}
        for s, a in ((0, 58.0), (1, 56.0))
    ]
    for r, spatial in zip(rows + nodistill, (50.0, 60.0, 40.0, 44.0, 30.0, 30.0), strict=True):
        r["accuracy_spatial"] = spatial
    csv_path, md_path = write_table(rows + nodistill, tmp_path, "nlvr2", "quick", 2)
    table = list(csv.DictReader(open(csv_path)))
    assert table[0]["accuracy"] == "72.0 ± 2.8"
    assert [t["spatial"] for t in table] == ["55.0 ± 7.1", "42.0 ± 2.8", "30.0 ± 0.0"]
    # (61 - 57) / (72 - 57) of the gap
    assert [t["teacher gap closed"] for t in table] == ["", "27%", ""]
    assert "statement family (spatial)" in md_path.read_text()
    assert table[1]["speedup (cached)"] == "4.00x"
    assert "| student | 61.0 ± 1.4 |" in md_path.read_text()


@pytest.mark.slow
def test_reproduce_runs_every_row(tmp_path, monkeypatch):
    tiny = recipes.Recipe(
        name="quick",
        teacher_pretrain_steps=2,
        teacher_steps=2,
        student_pretrain_steps=2,
        student_steps=2,
        batch_size=4,
        eval_limit=8,
    )
    monkeypatch.setitem(recipes.RECIPES, "quick", tiny)
    paths = run_reproduce(
        SUITE,
        tmp_path / "out",
        seeds=1,
        cache_root=tmp_path / "cache",
        device="cpu",
        progress=False,
        eval_every=1,
    )
    rows = list(csv.DictReader(open(paths[0])))
    assert len(rows) == 6
    assert all(float(r["speedup"]) > 0 for r in rows)
    assert (tmp_path / "out" / "table.md").is_file()
    # learning curves: every fine-tuning stage evaluated at step 1 and at its end (step 2), nothing else
    curves = list(csv.DictReader(open(tmp_path / "out" / "curves.csv")))
    assert sorted({c["model"] for c in curves}) == sorted(r["model"] for r in rows)
    assert sorted(int(c["step"]) for c in curves) == [1] * 6 + [2] * 6
    finals = {c["model"]: float(c["accuracy"]) for c in curves if c["step"] == "2"}
    assert finals == {r["model"]: float(r["accuracy"]) for r in rows}
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000
    # the world has one family (exist): its accuracy is the whole accuracy
    assert all(float(r["accuracy_exist"]) == float(r["accuracy"]) for r in rows)


@pytest.mark.parametrize("task", ["vqa", "snli-ve"])
def test_family_accuracy_adds_up_to_the_official_metric(tmp_path, task):
    """Per-family accuracy of a (random) checkpoint on a two-family world: both families present, and their
    example-weighted mean is the task's official accuracy (VQA: leave-one-out over the 10 answers)."""
    import torch

    from dde_bench.cards import SuiteCard
    from dde_bench.data.suite import load_suite_data
    from dde_bench.data.synth import family_of
    from dde_bench.evaluation import evaluate
    from dde_bench.modeling.checkpoint import save_model
    from dde_bench.modeling.config import size_config
    from dde_bench.modeling.models import Teacher
    from dde_bench.training.reproduce import EvalSplit, family_accuracy

    splits = {"vqa": {"train2014": 24, "val2014": 24}, "snli-ve": {"train": 24, "dev": 24, "test": 3}}[task]
    eval_split = "val2014" if task == "vqa" else "dev"
    suite = SuiteCard.from_dict(
        {
            "name": f"{task}-fam",
            "task": task,
            "eval_split": eval_split,
            "data": {
                "source": "synthetic",
                "synth": {"seed": 3, **splits, "families": ["exist", "spatial"]},
                "answer_min_count": 1,
            },
        }
    )
    cfg = size_config("tiny")
    loaded = load_suite_data(suite, tmp_path / "cache", cfg, (eval_split,))
    sets, vocab = loaded.datasets, loaded.answer_vocab
    torch.manual_seed(0)
    model = Teacher(cfg, task, num_labels=len(vocab) if vocab else None).eval()
    save_model(model, tmp_path / "ckpt")
    split_once = EvalSplit(suite, tmp_path / "cache")
    fam = family_accuracy(tmp_path / "ckpt", split_once, "cpu")
    assert split_once.get(cfg) is split_once.get(cfg)  # loaded once, shared by every row
    assert set(fam) == {"exist", "spatial"}
    data = sets[eval_split]
    counts = {f: sum(family_of(e.text) == f for e in data.examples) for f in fam}
    weighted = sum(fam[f] * counts[f] for f in fam) / sum(counts.values())
    assert weighted == pytest.approx(
        evaluate(model, data, torch.device("cpu")).percent()["accuracy"], abs=1e-9
    )


@pytest.mark.slow
def test_reproduce_without_captions_skips_the_rows_that_need_them(tmp_path, monkeypatch, capsys):
    """A data folder with no COCO captions file: no pre-training stage, the pre-training-distillation row is
    skipped and says why (stderr and skipped.json); the rows that need no captions run."""
    from dde_bench.cards import SuiteCard
    from dde_bench.data.synth import synthesize

    data = tmp_path / "data"
    synthesize("nlvr2", data, seed=2, sizes={"train": 32, "dev": 8, "test1": 4}, families=["exist"])
    (data / "captions_train2014.json").unlink()
    tiny = recipes.Recipe(
        name="quick", teacher_pretrain_steps=2, teacher_steps=2, student_steps=2, batch_size=4
    )
    monkeypatch.setitem(recipes.RECIPES, "quick", tiny)
    suite = SuiteCard.from_dict({"name": "nlvr2", "task": "nlvr2"}).with_data_dir(data)
    paths = run_reproduce(
        suite,
        tmp_path / "out",
        seeds=1,
        cache_root=tmp_path / "cache",
        device="cpu",
        progress=False,
        students=["nodistill", "soft-attention-pretrain"],
    )
    rows = list(csv.DictReader(open(paths[0])))
    assert [r["model"] for r in rows][0].startswith("teacher") and len(rows) == 2
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert set(skipped) == {"soft-attention-pretrain", "teacher pre-training"}
    assert "captions_train2014.json" in skipped["soft-attention-pretrain"]
    assert "skipped soft-attention-pretrain" in capsys.readouterr().err
