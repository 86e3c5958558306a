"""The paths real users bring: a dataset folder in its official layout with real JPEG files and nothing else (no
vocab.txt), pointed at with --data-dir; checkpoints that carry their tokenizer and answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dde_bench.data.synth import synthesize
from dde_bench.tasks import SPLITS

# the files of each official layout (the synthetic world also writes vocab.txt, captions and its own stats)
SIZES = {
    "nlvr2": {"train": 48, "dev": 24, "test1": 8},
    "vqa": {"train2014": 48, "val2014": 24},
    "snli-ve": {"train": 48, "dev": 24, "test": 8},
}
NOT_OFFICIAL = ("vocab.txt", "captions_train2014.json", "stats.json", "settings.json")


def official_folder(tmp_path: Path, task: str) -> Path:
    """A dataset folder in the task's official layout, images real JPEG (VQA, SNLI-VE) / PNG (NLVR2) files,
    nothing else in it."""
    d = tmp_path / f"{task}-data"
    synthesize(task, d, seed=3, sizes=SIZES[task])
    for name in NOT_OFFICIAL:
        (d / name).unlink(missing_ok=True)
    return d


def _cli(*args, env: dict, cwd: Path):
    """The CLI in a clean environment: no DDE_BENCH_* variable but those given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DDE_BENCH_")}
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=cwd,
        timeout=900,
    )


def test_official_folder_has_real_images_and_no_vocabulary(tmp_path):
    d = official_folder(tmp_path, "vqa")
    assert not (d / "vocab.txt").exists()
    jpg = next((d / "val2014").glob("*.jpg"))
    with Image.open(jpg) as im:
        assert im.format == "JPEG"


def test_trained_vocabulary_gives_bert_token_ids(tmp_path):
    """A folder without vocab.txt gets a WordPiece vocabulary trained on its training split; the ids our datasets
    hold equal transformers' BertTokenizerFast on that vocabulary, and the checkpoint carries it."""
    from transformers import BertTokenizerFast

    from dde_bench.cards import SuiteCard
    from dde_bench.data.suite import load_suite_data
    from dde_bench.modeling import size_config

    d = official_folder(tmp_path, "snli-ve")
    card = SuiteCard.from_dict({"name": "snli-ve", "task": "snli-ve"}).with_data_dir(d)
    data = load_suite_data(card, tmp_path / "cache", size_config("tiny"), ("dev",))
    vocab = next((tmp_path / "cache" / "tokenizers").glob("snli-ve-*/vocab.txt"))
    bert = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    texts = [e.text for e in data.examples["dev"]]
    ref = bert(texts, padding="max_length", truncation=True, max_length=24, return_tensors="pt")["input_ids"]
    assert (data.datasets["dev"].input_ids == ref).all()
    assert (ref != bert.unk_token_id).float().mean() > 0.9  # the words are in the vocabulary
    # the same vocabulary the next time (cached), and the same ids after a save / load round trip
    from dde_bench.data.tokenize import load_tokenizer, save_vocab, vocab_fingerprint

    again = load_suite_data(card, tmp_path / "cache", size_config("tiny"))
    assert vocab_fingerprint(again.tokenizer) == vocab_fingerprint(data.tokenizer)
    save_vocab(data.tokenizer, tmp_path)
    assert vocab_fingerprint(load_tokenizer(tmp_path)) == vocab_fingerprint(data.tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
def test_end_to_end_on_an_official_folder(tmp_path, task):
    """validate, train a teacher, train a student, run, report on a folder in the official layout with no
    vocab.txt, all through --data-dir from another working folder; the accuracy `run` reports for the trained
    teacher equals the one stored with its checkpoint, and every output lands under that folder."""
    data = official_folder(tmp_path, task)
    work = tmp_path / "work"
    work.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    env = {"DDE_BENCH_MODELS": str(models)}
    listing = sorted(p.relative_to(data) for p in data.rglob("*"))
    suite = tmp_path / f"{task}-real.yaml"
    card = {"name": f"{task}-real", "task": task, "models": ["my-teacher", "my-student"], "batch_sizes": [2]}
    if task == "vqa":
        card["data"] = {"answer_min_count": 2}
    suite.write_text(yaml.safe_dump(card))
    p = _cli(
        "data", "validate", "--suite", str(suite), "--data-dir", str(data), "--decode", env=env, cwd=work
    )
    assert p.returncode == 0 and "ok (" in p.stdout, p.stderr
    common = ["--suite", str(suite), "--data-dir", str(data), "--device", "cpu", "--threads", "1"]
    p = _cli(
        "train", "teacher", *common, "--steps", "6", "--batch-size", "8", "--out", "t", env=env, cwd=work
    )
    assert p.returncode == 0, p.stderr
    p = _cli(
        "train", "student", *common, "--teacher", "t", "--soft", "1", "--attention", "1",
        "--steps", "4", "--batch-size", "8", "--out", "s", env=env, cwd=work,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    for ck in ("t", "s"):
        assert (work / ck / "vocab.txt").is_file()  # the checkpoint carries its tokenizer
    (models / "my-teacher.yaml").write_text(yaml.safe_dump({"kind": "teacher", "weights": str(work / "t")}))
    (models / "my-student.yaml").write_text(
        yaml.safe_dump({"kind": "student", "weights": str(work / "s"), "teacher": "my-teacher"})
    )
    p = _cli(
        "run", "--suite", str(suite), "--data-dir", str(data), "--device", "cpu", "--threads", "1",
        "--scenarios", "online,cached", "--min-iters", "2", "--min-time", "0", "--out", "run", env=env, cwd=work,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in (work / "run" / "results.jsonl").read_text().splitlines()]
    teacher = [r for r in rows if r["model"] == "my-teacher"][0]
    meta = json.loads((work / "t" / "config.json").read_text())["meta"]
    assert 100 * teacher["accuracy"] == pytest.approx(meta["metrics"]["accuracy"], abs=1e-9)
    assert {r["status"] for r in rows} == {"ok"}
    assert (work / "run" / "report" / "report.html").is_file()
    settings = json.loads((work / "run" / "run.json").read_text())["settings"]
    assert (
        settings["suite_card"]["data"]["data_dir"] == str(data) and settings["eval_split"] == SPLITS[task][1]
    )
    # everything written lives under the working folder (runs, the tokenizer cache), nothing in the data folder
    assert (work / "reports" / "cache" / "tokenizers").is_dir()
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == listing


def test_bad_images_are_skipped_only_when_the_suite_says_so(tmp_path):
    """A dataset with one corrupt image: by default one line naming it; with data.skip_bad_images its examples
    are dropped and the image is listed (what run.json and the checkpoint record)."""
    from dde_bench.cards import SuiteCard
    from dde_bench.data.readers import load_split
    from dde_bench.data.suite import load_suite_data
    from dde_bench.errors import UserError
    from dde_bench.modeling import size_config

    d = official_folder(tmp_path, "snli-ve")
    victim = load_split("snli-ve", d, "dev")[0].image_paths[0]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    card = SuiteCard.from_dict({"name": "snli-ve", "task": "snli-ve"}).with_data_dir(d)
    with pytest.raises(UserError, match=str(victim)):
        load_suite_data(card, tmp_path / "cache", size_config("tiny"), ("dev",))
    skipping = SuiteCard.from_dict(
        {"name": "snli-ve", "task": "snli-ve", "data": {"skip_bad_images": True}}
    ).with_data_dir(d)
    data = load_suite_data(skipping, tmp_path / "cache", size_config("tiny"), ("dev",))
    assert data.bad_images["count"] == 1 and data.bad_images["images"][0]["path"] == str(victim)
    kept = data.examples["dev"]
    assert kept and all(victim not in e.image_paths for e in kept)
    assert len(kept) < len(load_split("snli-ve", d, "dev"))


@pytest.mark.slow
def test_a_transformers_vilt_folder_runs_with_its_own_tokenizer_and_answers(tmp_path):
    """A researcher's path: a transformers ViltForQuestionAnswering folder (model + tokenizer files, written with
    save_pretrained, as a hub download is) measured on an official-layout VQA folder. The harness feeds it text
    tokenised by its own tokenizer, images at its own geometry, and scores its predictions in its own answer list
    (id2label), with nothing hand-made."""
    import transformers

    from dde_bench.data.tokenize import load_tokenizer
    from dde_bench.modeling import size_config
    from dde_bench.modeling.hf import hf_config_from

    data = official_folder(tmp_path, "vqa")
    # the model's own vocabulary (not the suite's) and its own answers, in its folder
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "there", "a", "what", "color", "how", "many"]
    vocab = tmp_path / "tok"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(words + ["red", "blue", "circle", "square", "?"]) + "\n")
    answers = ["yes", "no", "2", "red", "blue"]
    cfg = hf_config_from(size_config("tiny").replace(vocab_size=64), num_labels=len(answers))
    cfg.id2label = dict(enumerate(answers))
    cfg.label2id = {a: i for i, a in enumerate(answers)}
    cfg.architectures = ["ViltForQuestionAnswering"]
    folder = tmp_path / "vilt-vqa"
    torch_model = transformers.ViltForQuestionAnswering(cfg).eval()
    torch_model.save_pretrained(folder)
    load_tokenizer(vocab).save_pretrained(folder)
    assert not (folder / "vocab.txt").exists() or (folder / "tokenizer.json").exists()
    models = tmp_path / "models"
    models.mkdir()
    (models / "vilt-vqa.yaml").write_text(yaml.safe_dump({"kind": "teacher", "weights": str(folder)}))
    suite = tmp_path / "vqa-real.yaml"
    suite.write_text(
        yaml.safe_dump(
            {"name": "vqa-real", "task": "vqa", "models": ["vilt-vqa"], "data": {"answer_min_count": 2}}
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    p = _cli(
        "run", "--suite", str(suite), "--data-dir", str(data), "--device", "cpu", "--threads", "1",
        "--scenarios", "online", "--batch-sizes", "2", "--min-iters", "2", "--min-time", "0", "--no-report",
        "--out", "run", env={"DDE_BENCH_MODELS": str(models)}, cwd=work,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "brings no tokenizer" not in p.stderr
    row = json.loads((work / "run" / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok" and 0.0 <= row["accuracy"] <= 1.0
    predicted = {
        r["answer"] for r in json.loads((work / "run" / "predictions" / "vilt-vqa.json").read_text())
    }
    assert predicted <= set(answers)  # the model's answer list, not the data's
