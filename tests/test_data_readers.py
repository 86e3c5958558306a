"""Readers on small files in each original format, and every bad-input error through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dde_bench.data.readers import load_split
from dde_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)


def _nlvr2_row(ident, label="True", directory=None, **kw):
    row = {
        "identifier": ident, "sentence": "There are two dogs.", "label": label, "left_url": "http://x/l.jpg",
        "right_url": "http://x/r.jpg", "synset": "dog", "query": "dogs", "writer": "103", "validation": {},
        "extra_validations": {},
    }  # fmt: skip
    if directory is not None:
        row["directory"] = directory
    row.update(kw)
    return row


def make_nlvr2(d: Path) -> Path:
    rows = {
        "train": [_nlvr2_row("train-10-0-0", "True", "7"), _nlvr2_row("train-10-1-0", "False", "7")],
        "dev": [_nlvr2_row("dev-850-0-0", "False"), _nlvr2_row("dev-850-1-0", "True")],
        "test1": [_nlvr2_row("test1-3-0-1", "True")],
    }
    for split, rs in rows.items():
        (d / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rs))
        for r in rs:
            prefix = r["identifier"].rsplit("-", 1)[0]
            folder = d / "images" / "train" / r["directory"] if split == "train" else d / split
            for k in (0, 1):
                _png(folder / f"{prefix}-img{k}.png")
    return d


def make_vqa(d: Path) -> Path:
    for split, base in (("train2014", 1), ("val2014", 100)):
        qs, anns = [], []
        for i in range(3):
            image_id, qid = base + i, (base + i) * 10
            qs.append({"image_id": image_id, "question": "How many dogs?", "question_id": qid})
            raw = ["two", "2", "2", "2", "2", "3", "3", "2!", "2", "2"] if i == 0 else ["yes"] * 10
            anns.append({
                "question_id": qid, "image_id": image_id, "multiple_choice_answer": "2" if i == 0 else "yes",
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(raw)],
                "question_type": "how many", "answer_type": "number",
            })  # fmt: skip
            Image.new("RGB", (50, 40)).save(_mk(d / split) / f"COCO_{split}_{image_id:012d}.jpg")
        (d / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": qs}))
        (d / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": anns}))
    return d


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def make_snli(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = [
            {"Flickr30K_ID": "1000092795", "sentence1": "Two men.", "sentence2": "Two people outside.",
             "gold_label": "entailment", "pairID": "1000092795.jpg#0r1e", "captionID": "1000092795.jpg#0"},
            {"Flickr30K_ID": "1000092795", "sentence1": "Two men.", "sentence2": "Nobody.",
             "gold_label": "-", "pairID": "1000092795.jpg#0r1x", "captionID": "1000092795.jpg#0"},
            {"Flickr30K_ID": "1000092795", "sentence1": "Two men.", "sentence2": "Men are asleep.",
             "gold_label": "contradiction", "pairID": "1000092795.jpg#0r1c", "captionID": "1000092795.jpg#0"},
        ]  # fmt: skip
        (d / f"snli_ve_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Image.new("RGB", (30, 30)).save(_mk(d / "flickr30k_images") / "1000092795.jpg")
    return d


def test_nlvr2_reader(tmp_path):
    d = make_nlvr2(tmp_path)
    train = load_split("nlvr2", d, "train", check_images=True)
    assert [e.label for e in train] == [1, 0]
    assert train[0].image_paths[0] == d / "images/train/7/train-10-0-img0.png"
    assert train[0].meta["sentence_key"] == "train-10-0"
    dev = load_split("nlvr2", d, "dev", check_images=True)
    assert dev[0].id == "dev-850-0-0" and dev[0].label == 0
    assert dev[1].image_paths[1] == d / "dev/dev-850-1-img1.png"


def test_nlvr2_accepts_images_dev_layout(tmp_path):
    d = make_nlvr2(tmp_path)
    (d / "images" / "dev").parent.mkdir(exist_ok=True)
    (d / "dev").rename(d / "images" / "dev")
    dev = load_split("nlvr2", d, "dev", check_images=True)
    assert dev[0].image_paths[0] == d / "images/dev/dev-850-0-img0.png"


def test_vqa_reader_soft_targets(tmp_path):
    d = make_vqa(tmp_path)
    val = load_split("vqa", d, "val2014", answer_min_count=1)
    # vocabulary from train multiple_choice_answer: "yes" (2) then "2" (1)
    ex = val[0]
    assert ex.image_paths[0] == d / "val2014/COCO_val2014_000000000100.jpg"
    assert ex.answers[0] == "two"
    # normalised: "two"->"2", "2!"->"2": 8 x "2" -> 1.0; "3" is not in the vocabulary
    assert ex.target == {1: 1.0}
    assert val[1].target == {0: 1.0}


def test_snli_reader_drops_dash(tmp_path):
    d = make_snli(tmp_path)
    exs = load_split("snli-ve", d, "dev", check_images=True)
    assert [e.label for e in exs] == [0, 2]
    assert exs[0].text == "Two people outside." and exs[0].meta["premise"] == "Two men."


def test_load_split_errors_in_library(tmp_path):
    with pytest.raises(UserError, match="unknown nlvr2 split"):
        load_split("nlvr2", tmp_path, "val")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def _assert_one_line_error(res: subprocess.CompletedProcess, *needles: str):
    assert res.returncode != 0, res.stdout
    err = res.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_cli_validate_ok(tmp_path):
    res = run_cli("data", "validate", "--suite", "nlvr2", "--data-dir", str(make_nlvr2(tmp_path)))
    assert res.returncode == 0, res.stderr
    assert "nlvr2 dev: 2 examples (2 labelled), 4 images found" in res.stdout


def _bad_nlvr2(tmp_path: Path, mutate) -> Path:
    d = make_nlvr2(tmp_path)
    mutate(d)
    return d


@pytest.mark.parametrize(
    "mutate, needles",
    [
        (lambda d: (d / "dev.json").unlink(), ["dev.json", "no such file"]),
        (
            lambda d: (d / "dev.json").write_text(json.dumps(_nlvr2_row("dev-1-0-0")) + "\n{oops\n"),
            ["dev.json:2", "malformed JSON"],
        ),
        (
            lambda d: (d / "dev.json").write_text(json.dumps(_nlvr2_row("dev-1-0-0", "maybe")) + "\n"),
            ["dev.json:1", "unknown label"],
        ),
        (lambda d: (d / "dev" / "dev-850-1-img1.png").unlink(), ["dev.json:2", "missing image"]),
        (
            lambda d: (d / "dev" / "dev-850-1-img1.png").write_bytes(b"not a png"),
            ["dev.json:2", "unreadable image"],
        ),
        (
            lambda d: (d / "train.json").write_text(
                json.dumps(_nlvr2_row("train-1-0-0", "True", "../../etc")) + "\n"
            ),
            ["train.json:1", "'directory' '../../etc' is not a plain file or folder name"],
        ),
    ],
    ids=[
        "missing-file",
        "malformed-json",
        "unknown-label",
        "missing-image",
        "unreadable-image",
        "path-escape",
    ],
)
def test_cli_validate_errors(tmp_path, mutate, needles):
    d = _bad_nlvr2(tmp_path, mutate)
    _assert_one_line_error(
        run_cli("data", "validate", "--suite", "nlvr2", "--data-dir", str(d), "--decode"), *needles
    )


def test_cli_vqa_and_snli_errors(tmp_path):
    d = make_vqa(tmp_path / "vqa")
    (d / "v2_mscoco_val2014_annotations.json").write_text("{bad")
    _assert_one_line_error(
        run_cli("data", "validate", "--suite", "vqa", "--data-dir", str(d), "--answer-min-count", "1"),
        "v2_mscoco_val2014_annotations.json:1",
        "malformed JSON",
    )
    s = make_snli(tmp_path / "snli")
    (s / "snli_ve_test.jsonl").write_text(
        json.dumps({"Flickr30K_ID": "1", "sentence2": "x", "gold_label": "maybe"}) + "\n"
    )
    _assert_one_line_error(
        run_cli("data", "validate", "--suite", "snli-ve", "--data-dir", str(s)),
        "snli_ve_test.jsonl:1",
        "unknown gold_label",
    )
    _assert_one_line_error(
        run_cli("data", "validate", "--suite", "snli-ve", "--data-dir", str(tmp_path / "nope")),
        "no such data folder",
    )
