"""Hostile data: every malformed dataset file and every bad image is one UserError naming the culprit.

Dataset folders are written in the official layouts (tests/test_data_readers.py) with PIL-saved JPEG/PNG files,
then broken one way each. Every case is checked twice: in the library (the UserError a run or training would
get) and through ``dde-bench data validate --suite X --data-dir DIR --decode`` (exit 2, one line on stderr, no
traceback). The CLI runs in-process through ``dde_bench.cli.main`` (the console script's entry point); two cases
also run it as a separate process.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dde_bench.data.images import BadImages, ImageError, ImageProcessor, _to_rgb, decode_rgb
from dde_bench.data.readers import load_split
from dde_bench.errors import UserError
from dde_bench.report.load import load_run
from tests.test_data_readers import ROOT, _nlvr2_row, make_nlvr2, make_snli, make_vqa

# --- helpers -----------------------------------------------------------------------------------------------


def validate(
    capsys, monkeypatch, suite: str, data_dir: Path, *extra: str, min_count: int | None = 1
) -> tuple[int, str, str]:
    """``dde-bench data validate --suite SUITE --data-dir DIR --decode``: (exit code, stdout, stderr).

    VQA folders get ``--answer-min-count 1`` unless ``min_count`` is None (the fixture's three questions per split
    would otherwise add the empty-vocabulary warning to stderr).
    """
    from dde_bench import cli

    argv = [
        "dde-bench",
        "data",
        "validate",
        "--suite",
        suite,
        "--data-dir",
        str(data_dir),
        "--decode",
        *extra,
    ]
    if suite == "vqa" and min_count is not None:
        argv += ["--answer-min-count", str(min_count)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def assert_one_line(code: int, out: str, err: str, needles: list[str]) -> str:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dde-bench: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` greyscale pixels and holds one row: a decompression bomb's
    header, written without allocating the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def truncated(path: Path, fmt: str) -> None:
    Image.fromarray(noise()).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- item 3: images ----------------------------------------------------------------------------------------

VQA_VAL_IMAGE = "val2014/COCO_val2014_000000000100.jpg"  # the image of question 0 of val2014 (make_vqa)


def _folder_instead_of_file(p: Path) -> None:
    p.unlink()
    p.mkdir()


BAD_IMAGES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    # PIL raises DecompressionBombError (not an OSError) over 2 x MAX_IMAGE_PIXELS
    "bomb-error": (
        lambda p: png_header(p, 20000, 20000),
        ["refused as a decompression bomb", "400000000 pixels"],
    ),
    # over MAX_IMAGE_PIXELS (89,478,485) but under twice that: PIL only warns; made an error
    "bomb-warning": (
        lambda p: png_header(p, 10000, 10000),
        ["refused as a decompression bomb", "100000000 pixels"],
    ),
    "truncated-jpeg": (lambda p: truncated(p, "JPEG"), ["truncated or corrupt", "image file is truncated"]),
    "truncated-png": (lambda p: truncated(p, "PNG"), ["truncated or corrupt"]),
    "not-an-image": (
        lambda p: p.write_bytes(b"<html>404 Not Found</html>\n"),
        ["not an image format PIL can"],
    ),
    "zero-bytes": (lambda p: p.write_bytes(b""), ["empty file (0 bytes)"]),
    "missing": (lambda p: p.unlink(), ["missing image"]),
    "folder": (_folder_instead_of_file, ["a folder, not an image file"]),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_one_line_naming_it(tmp_path, capsys, monkeypatch, case):
    breaker, needles = BAD_IMAGES[case]
    d = make_vqa(tmp_path / "vqa")
    image = d / VQA_VAL_IMAGE
    breaker(image)
    # what a run or a training gets: the image processor's error names the image
    with pytest.raises(UserError) as e:
        ImageProcessor(64, 64, 16).load_uint8(image)
    assert str(e.value).startswith(f"{image}: ") and all(n in str(e.value) for n in needles), str(e.value)
    assert "\n" not in str(e.value)
    # what data validate prints: the annotation record and the image
    line = assert_one_line(*validate(capsys, monkeypatch, "vqa", d), [str(image), *needles])
    assert "v2_OpenEnded_mscoco_val2014_questions.json: question 0" in line


def test_decompression_bomb_through_the_console_script(tmp_path):
    d = make_vqa(tmp_path / "vqa")
    png_header(d / VQA_VAL_IMAGE, 20000, 20000)
    res = subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", "data", "validate", "--suite", "vqa", "--data-dir", str(d), "--decode",
         "--answer-min-count", "1"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "COCO_val2014_000000000100.jpg" in res.stderr and "decompression bomb" in res.stderr


def _cmyk(p: Path) -> None:
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)).save(p, format="JPEG", quality=100)  # magenta


def _grey16(p: Path) -> None:
    Image.fromarray(np.full((30, 40), 257 * 128, dtype=np.uint16)).save(p, format="PNG")


def _palette_transparent(p: Path) -> None:
    im = Image.new("P", (40, 30), 0)
    im.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    im.save(p, format="PNG", transparency=bytes([0] + [255] * 255))  # tRNS as bytes: PIL warns on P -> RGB


def _grey(p: Path) -> None:
    Image.new("L", (40, 30), 77).save(p, format="JPEG", quality=100)


def _rgba(p: Path) -> None:
    Image.new("RGBA", (40, 30), (10, 20, 30, 0)).save(p, format="PNG")


ODD_MODES = {
    # name: (writer, mode PIL opens it in, expected RGB at a pixel, tolerance (JPEG is lossy))
    "cmyk-jpeg": (_cmyk, "CMYK", (255, 0, 255), 3),
    "16-bit-grey-png": (_grey16, "I;16", (128, 128, 128), 0),  # 32896 / 257 = 128; PIL's convert clips to 255
    "palette-transparency-png": (_palette_transparent, "P", (200, 10, 10), 0),
    "grey-jpeg": (_grey, "L", (77, 77, 77), 1),
    "rgba-png": (_rgba, "RGBA", (10, 20, 30), 0),  # alpha dropped, as ViltImageProcessor's convert_rgb does
}


@pytest.mark.parametrize("case", list(ODD_MODES))
def test_unusual_modes_become_rgb(tmp_path, capsys, monkeypatch, case):
    writer, mode, rgb, tol = ODD_MODES[case]
    d = make_vqa(tmp_path / "vqa")
    image = d / VQA_VAL_IMAGE
    writer(image)
    with Image.open(image) as im:
        assert im.mode == mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's "Palette images with Transparency ... converted to RGBA"
        out = decode_rgb(image)
        pixels = ImageProcessor(32, 32, 16).load_uint8(image)
    assert out.mode == "RGB" and out.size == (40, 30)
    assert np.abs(np.asarray(out)[5, 5].astype(int) - rgb).max() <= tol
    assert pixels.shape == (3, 16, 32)  # 30x40 -> shorter side 32, longer capped at 32, multiples of 16
    code, out_text, err = validate(capsys, monkeypatch, "vqa", d)
    assert code == 0 and err == "", err
    assert "vqa val2014: 3 examples (3 labelled), 3 images found" in out_text


def test_mode_without_rgb_conversion_names_the_image(tmp_path):
    with pytest.raises(ImageError, match=r"x\.png: unreadable image \(image mode 'La' has no RGB conversion"):
        _to_rgb(Image.new("La", (4, 4)), tmp_path / "x.png")


def test_skip_bad_images_records_and_drops(tmp_path):
    d = make_vqa(tmp_path / "vqa")
    truncated(d / VQA_VAL_IMAGE, "JPEG")
    (d / "val2014" / "COCO_val2014_000000000101.jpg").unlink()
    with pytest.raises(UserError, match="question 0: unreadable image"):
        load_split("vqa", d, "val2014", check_images=True, decode_images=True, answer_min_count=1)
    bad = BadImages()
    kept = load_split("vqa", d, "val2014", answer_min_count=1, skip_bad_images=bad)
    assert [e.id for e in kept] == ["1020"]  # questions 1000 and 1010 used the two bad images
    summary = bad.summary()
    assert summary["count"] == 2 == len(bad)
    reasons = {Path(i["path"]).name: i["reason"] for i in summary["images"]}
    assert reasons["COCO_val2014_000000000101.jpg"] == "missing image"
    assert reasons["COCO_val2014_000000000100.jpg"].startswith("truncated or corrupt")
    json.dumps(summary)  # goes into run.json as it is
    # the per-batch variant: None and a record instead of an exception
    bad2 = BadImages()
    assert ImageProcessor(64, 64, 16).try_load_uint8(d / VQA_VAL_IMAGE, bad2) is None
    assert len(bad2) == 1 and d / VQA_VAL_IMAGE in bad2
    # nothing left: an error, not an empty split
    (d / "val2014" / "COCO_val2014_000000000102.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="every val2014 example has a bad image"):
        load_split("vqa", d, "val2014", answer_min_count=1, skip_bad_images=BadImages())


def test_validate_skip_bad_images_lists_them(tmp_path, capsys, monkeypatch):
    d = make_vqa(tmp_path / "vqa")
    (d / VQA_VAL_IMAGE).write_bytes(b"")
    code, out, err = validate(capsys, monkeypatch, "vqa", d, "--skip-bad-images")
    assert code == 0
    assert "vqa val2014: 3 examples (3 labelled), 3 images found, 1 bad" in out
    assert f"bad image: {d / VQA_VAL_IMAGE}: empty file (0 bytes)" in err


# --- item 4: dataset files ---------------------------------------------------------------------------------


def _jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _nlvr2_dev(*rows: object) -> Callable[[Path], None]:
    return lambda d: (d / "dev.json").write_text(_jsonl(*rows))


def _nlvr2_train_dir(directory: object) -> Callable[[Path], None]:
    return lambda d: (d / "train.json").write_text(_jsonl(_nlvr2_row("train-10-0-0", "True", directory)))


def _bytes(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


GOOD_NLVR2 = _nlvr2_row("dev-850-0-0", "False")

NLVR2_CASES = {
    "absolute-identifier": (
        _nlvr2_dev(_nlvr2_row("/etc/passwd-1-0-0")),
        ["dev.json:1", "identifier '/etc/passwd-1-0-0' is not split-set-pair-sentence"],
    ),
    "dotdot-identifier": (
        _nlvr2_dev(GOOD_NLVR2, _nlvr2_row("dev-../../../x-0-0")),
        ["dev.json:2", "identifier 'dev-../../../x-0-0' is not split-set-pair-sentence"],
    ),
    "absolute-directory": (
        _nlvr2_train_dir("/etc"),
        ["train.json:1", "'directory' '/etc' is not a plain file or folder name"],
    ),
    "dotdot-directory": (
        _nlvr2_train_dir(".."),
        ["train.json:1", "'directory' '..' is not a plain file or folder name"],
    ),
    "directory-list": (_nlvr2_train_dir([7]), ["train.json:1", "'directory' must be a string or an integer"]),
    "identifier-number": (
        _nlvr2_dev({**GOOD_NLVR2, "identifier": 12}),
        ["dev.json:1", "'identifier' must be a string, got a number"],
    ),
    "sentence-list": (
        _nlvr2_dev({**GOOD_NLVR2, "sentence": ["x"]}),
        ["dev.json:1", "'sentence' must be a string, got a list"],
    ),
    "missing-sentence": (
        _nlvr2_dev({k: v for k, v in GOOD_NLVR2.items() if k != "sentence"}),
        ["dev.json:1", "missing field 'sentence'"],
    ),
    "line-is-a-list": (
        _nlvr2_dev(GOOD_NLVR2, "[1, 2]"),
        ["dev.json:2", "expected a JSON object, got a list"],
    ),
    "bad-json-line": (_nlvr2_dev(GOOD_NLVR2, GOOD_NLVR2, "{oops"), ["dev.json:3", "malformed JSON line"]),
    "non-utf8-line": (
        _bytes("dev.json", (json.dumps(GOOD_NLVR2) + "\n").encode() + b'{"identifier": "caf\xe9"}\n'),
        ["dev.json:2", "not UTF-8 text", "0xe9"],
    ),
    "empty-file": (_bytes("dev.json", b""), ["dev.json", "empty file (no JSON lines)"]),
    "blank-lines-only": (_bytes("dev.json", b"\n\n  \n"), ["dev.json", "empty file (no JSON lines)"]),
}


def _vqa_json(name: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Load one official VQA file of the fixture, change it with ``edit`` (which may return a replacement)."""

    def mutate(d: Path) -> None:
        path = d / name
        obj = json.loads(path.read_text())
        new = edit(obj)
        path.write_text(json.dumps(obj if new is None else new))

    return mutate


VQ = "v2_OpenEnded_mscoco_val2014_questions.json"
VA = "v2_mscoco_val2014_annotations.json"
TA = "v2_mscoco_train2014_annotations.json"


def _set(path: list, value: object) -> Callable[[dict], None]:
    def edit(obj: dict) -> None:
        target = obj
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value

    return edit


def _drop(path: list) -> Callable[[dict], None]:
    def edit(obj: dict) -> None:
        target = obj
        for k in path[:-1]:
            target = target[k]
        del target[path[-1]]

    return edit


VQA_CASES = {
    "questions-file-is-a-list": (
        _vqa_json(VQ, lambda o: o["questions"]),
        [VQ, "expected a JSON object holding the 'questions' list, got a list"],
    ),
    "questions-is-an-object": (
        _vqa_json(VQ, _set(["questions"], {"0": 1})),
        [VQ, "'questions' must be a list, got an object"],
    ),
    "question-is-a-string": (
        _vqa_json(VQ, _set(["questions", 1], "How many dogs?")),
        [VQ, "question 1 must be an object, got a string"],
    ),
    "string-question-id": (
        _vqa_json(VQ, _set(["questions", 0, "question_id"], "1000")),
        [VQ, "question 0: 'question_id' must be an integer, got a string '1000'"],
    ),
    "missing-image-id": (
        _vqa_json(VQ, _drop(["questions", 2, "image_id"])),
        [VQ, "question 2: missing field"],
    ),
    "negative-image-id": (
        _vqa_json(VQ, _set(["questions", 0, "image_id"], -5)),
        [VQ, "question 0: 'image_id' must not be negative"],
    ),
    "question-text-number": (
        _vqa_json(VQ, _set(["questions", 0, "question"], 3)),
        [VQ, "question 0: 'question' must be a string, got a number"],
    ),
    "duplicate-question-id": (
        _vqa_json(VQ, _set(["questions", 1, "question_id"], 1000)),
        [VQ, "question 1: question_id 1000 appears twice"],
    ),
    "empty-questions": (_vqa_json(VQ, _set(["questions"], [])), [VQ, "'questions' is empty"]),
    "annotations-file-is-a-list": (
        _vqa_json(VA, lambda o: o["annotations"]),
        [VA, "expected a JSON object holding the 'annotations' list, got a list"],
    ),
    "missing-annotations-key": (_vqa_json(VA, _drop(["annotations"])), [VA, "missing field 'annotations'"]),
    "answers-not-a-list": (
        _vqa_json(VA, _set(["annotations", 0, "answers"], "two")),
        [VA, "annotation 0: 'answers' must be a non-empty list, got a string"],
    ),
    "answers-are-strings": (
        _vqa_json(VA, _set(["annotations", 1, "answers"], ["yes"] * 10)),
        [VA, "annotation 1: answers[0] must be an object with a string 'answer'"],
    ),
    "answer-is-a-number": (
        _vqa_json(VA, _set(["annotations", 0, "answers", 3, "answer"], 2)),
        [VA, "annotation 0: answers[3] must be an object with a string 'answer'"],
    ),
    "string-annotation-question-id": (
        _vqa_json(VA, _set(["annotations", 2, "question_id"], "1020")),
        [VA, "annotation 2: 'question_id' must be an integer, got a string"],
    ),
    "annotation-is-a-list": (
        _vqa_json(VA, _set(["annotations", 0], [1000])),
        [VA, "annotation 0 must be an object, got a list"],
    ),
    "missing-multiple-choice-answer": (
        _vqa_json(TA, _drop(["annotations", 0, "multiple_choice_answer"])),
        [TA, "question_id 10: missing field 'multiple_choice_answer'"],
    ),
    "multiple-choice-answer-number": (
        _vqa_json(TA, _set(["annotations", 0, "multiple_choice_answer"], 2)),
        [TA, "annotation 0: 'multiple_choice_answer' must be a string, got a number"],
    ),
    "duplicate-annotation": (
        _vqa_json(VA, lambda o: o["annotations"].append(o["annotations"][0])),
        [VA, "annotation 3: question_id 1000 is annotated twice"],
    ),
    "question-without-annotation": (
        _vqa_json(VA, _drop(["annotations", 2])),
        [VA, "no annotation for question_id 1020"],
    ),
    "non-utf8-questions": (
        _bytes(VQ, b'{"questions": [\n{"question": "caf\xe9"}]}'),
        [VQ + ":2", "not UTF-8 text", "0xe9"],
    ),
    "empty-annotations-file": (_bytes(VA, b""), [VA, "empty file (expected JSON)"]),
    "malformed-annotations": (_bytes(VA, b'{"annotations": [\n\n{]}'), [VA + ":3", "malformed JSON"]),
}


def _snli_test(*rows: object) -> Callable[[Path], None]:
    return lambda d: (d / "snli_ve_test.jsonl").write_text(_jsonl(*rows))


GOOD_SNLI = {
    "Flickr30K_ID": "1000092795", "sentence1": "Two men.", "sentence2": "Two people.", "gold_label": "entailment",
    "pairID": "1000092795.jpg#0r1e", "captionID": "1000092795.jpg#0",
}  # fmt: skip


def _without(key: str) -> dict:
    return {k: v for k, v in GOOD_SNLI.items() if k != key}


SNLI_CASES = {
    "missing-flickr-id": (
        _snli_test(GOOD_SNLI, _without("Flickr30K_ID")),
        ["test.jsonl:2", "'Flickr30K_ID'"],
    ),
    "missing-sentence2": (_snli_test(_without("sentence2")), ["test.jsonl:1", "missing field 'sentence2'"]),
    "missing-gold-label": (
        _snli_test(_without("gold_label")),
        ["test.jsonl:1", "missing field 'gold_label'"],
    ),
    "flickr-id-escapes": (
        _snli_test({**GOOD_SNLI, "Flickr30K_ID": "../../../etc/passwd"}),
        ["test.jsonl:1", "'Flickr30K_ID' '../../../etc/passwd' is not a plain file or folder name"],
    ),
    "flickr-id-absolute": (
        _snli_test({**GOOD_SNLI, "Flickr30K_ID": "/etc/passwd"}),
        ["test.jsonl:1", "'Flickr30K_ID' '/etc/passwd' is not a plain file or folder name"],
    ),
    "flickr-id-object": (
        _snli_test({**GOOD_SNLI, "Flickr30K_ID": {"id": 1}}),
        ["test.jsonl:1", "'Flickr30K_ID' must be a string or an integer, got an object"],
    ),
    "sentence2-null": (
        _snli_test({**GOOD_SNLI, "sentence2": None}),
        ["test.jsonl:1", "'sentence2' must be a string, got null"],
    ),
    "gold-label-number": (
        _snli_test({**GOOD_SNLI, "gold_label": 0}),
        ["test.jsonl:1", "'gold_label' must be a string, got a number"],
    ),
    "bad-json-line": (_snli_test(GOOD_SNLI, '{"Flickr30K_ID": '), ["test.jsonl:2", "malformed JSON line"]),
    "non-utf8-line": (
        _bytes("snli_ve_test.jsonl", (_jsonl(GOOD_SNLI, GOOD_SNLI)).encode() + b"\xff\xfe\n"),
        ["test.jsonl:3", "not UTF-8 text", "0xff"],
    ),
    "empty-file": (_bytes("snli_ve_test.jsonl", b""), ["snli_ve_test.jsonl", "empty file (no JSON lines)"]),
}

ALL_CASES = (
    [("nlvr2", k, *v) for k, v in NLVR2_CASES.items()]
    + [("vqa", k, *v) for k, v in VQA_CASES.items()]
    + [("snli-ve", k, *v) for k, v in SNLI_CASES.items()]
)
MAKERS = {"nlvr2": make_nlvr2, "vqa": make_vqa, "snli-ve": make_snli}
SPLIT_OF_FILE = {"train.json": "train", TA: "train2014", "snli_ve_test.jsonl": "test"}


@pytest.mark.parametrize(
    "suite, case, mutate, needles", ALL_CASES, ids=[f"{s}-{c}" for s, c, *_ in ALL_CASES]
)
def test_malformed_dataset_file_is_one_line(tmp_path, capsys, monkeypatch, suite, case, mutate, needles):
    (tmp_path / suite).mkdir()
    d = MAKERS[suite](tmp_path / suite)
    mutate(d)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    line = assert_one_line(*validate(capsys, monkeypatch, suite, d), needles)
    assert str(d) in line  # the file is named by its full path
    # the library raises the same one-line UserError (what `train` and `run` get)
    split = next((s for f, s in SPLIT_OF_FILE.items() if f in needles[0]), None)
    split = split or {"nlvr2": "dev", "vqa": "val2014", "snli-ve": "test"}[suite]
    with pytest.raises(UserError) as e:
        load_split(suite, d, split, check_images=True, answer_min_count=1)
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert before == {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}  # nothing was changed


def test_small_vqa_folder_validates_with_answer_counts(tmp_path, capsys, monkeypatch):
    # three questions per split: no answer occurs 9 times, which is a warning for validate, not an error
    d = make_vqa(tmp_path / "vqa")
    code, out, err = validate(capsys, monkeypatch, "vqa", d, min_count=None)
    assert code == 0, err
    assert (
        "vqa train2014 answers (normalised multiple_choice_answer): 2 distinct; >= 1: 2, >= 3: 0, >= 9: 0; "
        "vocabulary at --answer-min-count 9: 0 answers covering 0.0% of 3 questions"
    ) in out
    assert err.strip() == (
        "warning: no VQA answer occurs 9 times in train2014: training needs a lower answer_min_count in the suite "
        "(or more data)"
    )
    code, out, err = validate(capsys, monkeypatch, "vqa", d, min_count=2)
    assert code == 0 and err == ""
    assert ">= 2: 1" in out and "vocabulary at --answer-min-count 2: 1 answers covering 66.7% of 3" in out
    # training still needs a vocabulary: the library refuses an empty one
    with pytest.raises(UserError, match="no VQA answer occurs 9 times in train2014"):
        load_split("vqa", d, "val2014")


def test_non_utf8_run_folder_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(b'{"suite": "nlvr2",\n "note": "\xe9"}')
    (run / "results.jsonl").write_text("")
    with pytest.raises(UserError, match=r"run\.json:2: not UTF-8 text"):
        load_run(run)
    (run / "run.json").write_text("{}")
    # a bad line before the last one is an error (a last line cut mid-character reads as a truncated row instead)
    (run / "results.jsonl").write_bytes(b"{}\n{}\n\x80\n{}\n")
    with pytest.raises(UserError, match=r"results\.jsonl:3: "):
        load_run(run)
