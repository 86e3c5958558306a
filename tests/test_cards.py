"""Suite and model cards: read once, validated, one home and one default per setting.

Every malformed card is one line naming the file and the key (exit 2) before any work starts, through the CLI;
the VQA answer-count setting is read in one place, so `train` and `run` build the same answer list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dde_bench.cards import ModelCard, SuiteCard, load_model_card, load_suite
from dde_bench.errors import UserError
from dde_bench.resources import list_names

GOOD = {"name": "s", "task": "nlvr2", "models": ["tiny-teacher"]}


def _cli(*args, cwd: Path | None = None, env_extra: dict | None = None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.parametrize("name", list_names("suites"))
def test_every_shipped_suite_card_validates(name):
    card = load_suite(name)
    assert card.name == name and card.split in card.raw.get("eval_split", card.split)
    assert card.to_dict()["data"]["answer_min_count"] == card.data.answer_min_count


@pytest.mark.parametrize("name", list_names("models"))
def test_every_shipped_model_card_validates(name):
    card = load_model_card(name)
    assert card.name == name and card.kind in ("teacher", "student", "hf-vilt")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_sizes": "32"}, "batch_sizes: input should be a valid list (got '32')"),
        ({"models": "tiny-teacher"}, "models: input should be a valid list (got 'tiny-teacher')"),
        ({"bach_sizes": [1, 8]}, "bach_sizes: unknown key; did you mean 'batch_sizes'?"),
        ({"data": [1, 2]}, "data: expected a mapping (got [1, 2])"),
        (
            {"data": {"answer_min_cont": 3}},
            "data.answer_min_cont: unknown key; did you mean 'answer_min_count'?",
        ),
        ({"batch_sizes": [1, 2.5]}, "batch_sizes[1]: input should be a valid integer (got 2.5)"),
        ({"batch_sizes": [8, 0]}, "batch_sizes[1]: input should be greater than 0 (got 0)"),
        ({"dtypes": ["fp64"]}, "dtypes[0]: input should be 'fp32', 'bf16' or 'fp16' (got 'fp64')"),
        ({"task": "gqa"}, "task: input should be 'nlvr2', 'vqa' or 'snli-ve' (got 'gqa')"),
        ({"eval_split": "val2014"}, "eval_split: 'val2014' is not a nlvr2 split (train, dev, test1)"),
        ({"data": {"source": "dir"}}, "data.data_dir: required when data.source is 'dir'"),
        ({"models": ["tiny-teacher", "no-such-model"]}, "models[1]: unknown model 'no-such-model'"),
        (
            {"teacher_gallery_budget_s": "3"},
            "teacher_gallery_budget_s: input should be a valid number (got '3')",
        ),
    ],
)
def test_bad_suite_card_is_one_line_naming_file_and_key(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(UserError) as e:
        load_suite(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    # the same through the CLI, before any data is generated: one line, exit 2, no traceback
    p = _cli("run", "--suite", str(path), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "reports").exists()  # nothing was written


@pytest.mark.parametrize(
    "card, message",
    [
        ({"kind": "teacher", "size": "huge"}, "size: unknown size 'huge'; known: b32, tiny"),
        ({"kind": "tutor"}, "kind: input should be 'teacher', 'student' or 'hf-vilt' (got 'tutor')"),
        ({"size": "tiny"}, "kind: required"),
        ({"kind": "hf-vilt"}, "same_weights_as: required for an hf-vilt reference card"),
        (
            {"kind": "teacher", "distill": {"soft": 1.0}},
            "distill: only a student card has distillation weights",
        ),
        ({"kind": "student", "distill": {"sof": 1.0}}, "distill.sof: unknown key; did you mean 'soft'?"),
        ({"kind": "student", "min_iters": "5"}, "min_iters: input should be a valid integer (got '5')"),
        ({"kind": "student", "batch_sizes": 8}, "batch_sizes: input should be a valid list (got 8)"),
    ],
)
def test_bad_model_card_is_one_line(tmp_path, card, message):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(UserError) as e:
        load_model_card(path)
    assert str(e.value) == f"{path}: {message}"


def test_non_utf8_card_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'name: x\ntask: nlvr2\ndescription: "\xe9"\n')
    with pytest.raises(UserError, match=rf"{path}:3: not UTF-8 text"):
        load_suite(path)


def test_unknown_names_suggest_the_closest(use_bench_env):
    with pytest.raises(UserError, match="unknown model 'tiny-teachr'; did you mean 'tiny-teacher'"):
        load_model_card("tiny-teachr")
    with pytest.raises(UserError, match="unknown suite 'nlvr'; did you mean 'nlvr2'"):
        load_suite("nlvr")


def test_defaults_live_in_the_card():
    s = SuiteCard.from_dict({"name": "vqa", "task": "vqa"})
    assert s.data.answer_min_count == 9 and s.split == "val2014" and s.batch_sizes == [1, 8, 32]
    assert s.raw == {
        "name": "vqa",
        "task": "vqa",
    }  # as written: cache keys do not move when a default is added
    assert SuiteCard.from_dict({"name": "snli-ve"}).task == "snli-ve"  # a suite named after its task
    m = ModelCard.from_dict({"name": "st", "kind": "student"})
    assert (m.distill.ground_truth, m.distill.soft, m.distill.attention) == (0.0, 1.0, 1.0)
    assert m.weights == "random" and not m.speed_only


# ------------------------------------------------------------------------ one home for answer_min_count
def _vqa_suite(tmp_path: Path, min_count: int | None) -> Path:
    data = {
        "source": "synthetic",
        "synth": {"seed": 5, "train2014": 20, "val2014": 16},
    }  # "yes" 6 times, most
    if min_count is not None:
        data["answer_min_count"] = min_count
    card = {"name": "vqa-small", "task": "vqa", "data": data, "models": ["ck-teacher"], "batch_sizes": [2]}
    path = tmp_path / f"vqa-small-{min_count}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.mark.slow
def test_answer_min_count_is_read_once_for_train_and_run(tmp_path):
    """A small VQA world whose answers occur fewer than 9 times: with the default (9) both `train` and `run` stop
    with the same one line; with data.answer_min_count 2 the trained head, the checkpoint's answer list and the
    run's scoring all use the same answers, and `run` reproduces the accuracy training stored."""
    from dde_bench.cards import load_suite as load
    from dde_bench.data.readers import build_vqa_answer_vocab
    from dde_bench.data.suite import load_suite_data
    from dde_bench.modeling import size_config

    env = {"DDE_BENCH_HOME": str(tmp_path / "home"), "DDE_BENCH_CACHE": str(tmp_path / "cache")}
    default = _vqa_suite(tmp_path, None)
    p = _cli(
        "train",
        "teacher",
        "--suite",
        str(default),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "t9"),
        env_extra=env,
    )
    assert p.returncode == 2 and "no VQA answer occurs 9 times" in p.stderr, p.stderr
    models = tmp_path / "models"
    models.mkdir()
    (models / "ck-teacher.yaml").write_text(
        yaml.safe_dump({"kind": "teacher", "size": "tiny", "weights": str(tmp_path / "t2")})
    )
    env["DDE_BENCH_MODELS"] = str(models)
    p = _cli("run", "--suite", str(default), "--quick", "--no-report", env_extra=env)
    assert p.returncode == 2 and "no VQA answer occurs 9 times" in p.stderr, p.stderr

    two = _vqa_suite(tmp_path, 2)
    p = _cli(
        "train", "teacher", "--suite", str(two), "--steps", "4", "--out", str(tmp_path / "t2"), env_extra=env
    )
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "t2" / "config.json").read_text())["meta"]
    data_dir = load_suite_data(
        load(two, check_models=False), tmp_path / "cache", size_config("tiny")
    ).data_dir
    expected = build_vqa_answer_vocab(data_dir, ("train2014",), 2)
    assert meta["answer_vocab"] == expected and len(expected) < len(
        build_vqa_answer_vocab(data_dir, ("train2014",), 1)
    )
    run_dir = tmp_path / "run"
    p = _cli(
        "run", "--suite", str(two), "--scenarios", "cached", "--min-iters", "2", "--min-time", "0",
        "--no-report", "--out", str(run_dir), env_extra=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    row = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])
    assert row["accuracy"] * 100 == pytest.approx(meta["metrics"]["accuracy"], abs=1e-9)
    answers = {r["answer"] for r in json.loads((run_dir / "predictions" / "ck-teacher.json").read_text())}
    assert answers <= set(expected)
    settings = json.loads((run_dir / "run.json").read_text())["settings"]
    assert settings["suite_card"]["data"]["answer_min_count"] == 2
