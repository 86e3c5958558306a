"""Readers for the original NLVR2, VQA v2 and SNLI-VE files, all returning :class:`Example` lists.

Layouts (relative to the data folder):

* NLVR2: ``train.json`` / ``dev.json`` / ``test1.json`` (JSON lines). Images ``{split}-{set}-{pair}-img0.png``
  and ``-img1.png`` (prefix = identifier without its last ``-sentence`` part); train images under
  ``images/train/{directory}/``, dev and test1 under ``dev/`` and ``test1/`` (``images/dev/`` etc. accepted too).
* VQA v2: ``v2_OpenEnded_mscoco_{split}_questions.json`` + ``v2_mscoco_{split}_annotations.json``, images
  ``{split}/COCO_{split}_{image_id:012d}.jpg``. Test splits have no annotations: labels are then ``None``.
* SNLI-VE: ``snli_ve_{split}.jsonl`` with Flickr30K images ``flickr30k_images/{Flickr30K_ID}.jpg``;
  rows whose ``gold_label`` is ``-`` are dropped, as in the dataset's own setup.

Every bad input ends in a one-line :class:`UserError` naming the file and the line (JSON lines) or the record
(VQA's JSON files): wrong JSON types, missing fields, non-UTF-8 bytes, empty files, identifiers or file names
that would leave the data folder.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dde_bench.errors import UserError
from dde_bench.metrics import normalize_vqa_answer
from dde_bench.tasks import SPLITS, TASKS, TRAIN_SPLIT, VQA_ANSWER_MIN_COUNT  # noqa: F401 - re-exported

if TYPE_CHECKING:  # images.py imports torch; readers stay light for `dde-bench data validate`
    from dde_bench.data.images import BadImages

SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")
NLVR2_LABELS = {"False": 0, "True": 1}


@dataclass
class Example:
    """One example of any task.

    ``image_paths`` has two entries for NLVR2 (left, right) and one otherwise. ``label`` is the class index
    (NLVR2: 0 False / 1 True; SNLI-VE: index in :data:`SNLI_VE_LABELS`), ``None`` for VQA and unlabelled
    splits. VQA carries the raw annotator ``answers`` and ``target``: soft scores over the answer vocabulary.
    """

    id: str
    text: str
    image_paths: tuple[Path, ...]
    label: int | None = None
    answers: list[str] | None = None
    target: dict[int, float] | None = None
    meta: dict = field(default_factory=dict)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return task


def check_split(task: str, split: str) -> str:
    if split not in SPLITS[check_task(task)]:
        raise UserError(f"unknown {task} split {split!r}; known splits: {', '.join(SPLITS[task])}")
    return split


# --- helpers --------------------------------------------------------------------------------------------

_NLVR2_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+-[A-Za-z0-9_]+-[A-Za-z0-9_]+-[A-Za-z0-9_]+")


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def _decode_utf8(data: bytes, path: Path, lineno: int | None = None) -> str:
    """``data`` as UTF-8 text (a leading BOM allowed); otherwise a UserError naming the file and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = lineno if lineno is not None else data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason}, byte 0x{data[e.start]:02x})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a UTF-8 JSON-lines file.

    A malformed or non-UTF-8 line, a line that is not a JSON object, and a file without any line each raise a
    one-line UserError naming the file (and the line).
    """
    _require_file(path)
    seen = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_utf8(raw, path, lineno)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {_json_type(obj)}")
            seen = True
            yield lineno, obj
    if not seen:
        raise UserError(f"{path}: empty file (no JSON lines)")


def load_json(path: Path) -> object:
    """Parse a UTF-8 JSON file; missing, empty, non-UTF-8 and malformed files are one-line UserErrors."""
    data = _require_file(path).read_bytes()
    if not data.strip():
        raise UserError(f"{path}: empty file (expected JSON)")
    try:
        return json.loads(_decode_utf8(data, path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _field(obj: dict, key: str, where: str) -> object:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    return obj[key]


def _str_field(obj: dict, key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {_json_type(value)}")
    return value


def _int_field(obj: dict, key: str, where: str) -> int:
    value = _field(obj, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{where}: {key!r} must be an integer, got {_json_type(value)} {value!r}")
    return value


def _name_field(obj: dict, key: str, where: str) -> str:
    """A field naming one file or folder (a string or an integer): no separators, no ``..``, no NUL."""
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UserError(f"{where}: {key!r} must be a string or an integer, got {_json_type(value)}")
    name = str(value)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"{where}: {key!r} {name!r} is not a plain file or folder name")
    return name


def safe_join(root: Path, rel: str | Path, where: str) -> Path:
    """``root / rel`` that must stay inside ``root`` (no ``..`` escapes, no absolute paths)."""
    if "\0" in str(rel):
        raise UserError(f"{where}: image path {str(rel)!r} holds a NUL byte")
    root_r = root.resolve()
    p = (root / rel).resolve()
    if p != root_r and root_r not in p.parents:
        raise UserError(f"{where}: image path {str(rel)!r} escapes the data folder ({root})")
    return root / rel


def _first_existing(candidates: Sequence[Path]) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def check_images(examples: Sequence[Example], decode: bool = False, bad: BadImages | None = None) -> int:
    """Check that every image exists and, with ``decode``, that it decodes fully; returns the count checked.

    The first bad image raises a UserError naming the annotation record and the image. With ``bad``, every bad
    image is recorded there instead (``decode`` then decides only whether images are decoded).
    """
    seen: set[Path] = set()
    for ex in examples:
        for p in ex.image_paths:
            if p in seen:
                continue
            seen.add(p)
            if p.is_file() and not decode:
                continue
            from dde_bench.data.images import ImageError, decode_rgb

            try:
                if not p.exists():
                    raise ImageError(p, "no such file", missing=True)
                decode_rgb(p)  # also what names a folder standing where the image should be
            except ImageError as e:
                if bad is not None:
                    bad.add(e)
                    continue
                where = ex.meta.get("source", ex.id)
                if e.missing:
                    raise UserError(f"{where}: missing image {p}") from None
                raise UserError(f"{where}: unreadable image {p} ({e.reason})") from None
    return len(seen)


def drop_examples_with_bad_images(examples: Sequence[Example], bad: BadImages) -> list[Example]:
    """The examples none of whose images is recorded in ``bad``."""
    return [e for e in examples if not any(p in bad for p in e.image_paths)]


# --- NLVR2 ----------------------------------------------------------------------------------------------


def read_nlvr2(data_dir: Path, split: str) -> list[Example]:
    """Read NLVR2 ``{split}.json`` (JSON lines) and resolve both images of every pair."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.json"
    out = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        ident = _str_field(obj, "identifier", where)
        if not _NLVR2_IDENTIFIER.fullmatch(ident):
            raise UserError(
                f"{where}: identifier {ident!r} is not split-set-pair-sentence (letters, digits, _ between '-')"
            )
        parts = ident.split("-")
        sentence = _str_field(obj, "sentence", where)
        raw_label = obj.get("label")
        if raw_label is None:
            label = None
        elif str(raw_label) in NLVR2_LABELS:
            label = NLVR2_LABELS[str(raw_label)]
        else:
            raise UserError(f"{where}: unknown label {raw_label!r} (expected 'True' or 'False')")
        prefix = "-".join(parts[:3])
        names = (f"{prefix}-img0.png", f"{prefix}-img1.png")
        if split == "train":
            folders = [Path("images") / "train" / _name_field(obj, "directory", where)]
        else:
            folders = [Path(split), Path("images") / split]
        paths = tuple(_first_existing([safe_join(data_dir, f / n, where) for f in folders]) for n in names)
        meta = {"source": where, "sentence_key": f"{parts[0]}-{parts[1]}-{parts[3]}"}
        for k in ("synset", "query", "writer", "validation", "extra_validations", "directory"):
            if k in obj:
                meta[k] = obj[k]
        out.append(Example(id=ident, text=sentence, image_paths=paths, label=label, meta=meta))
    return out


# --- VQA v2 ---------------------------------------------------------------------------------------------

SOFT_SCORE = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}


def vqa_soft_score(count: int) -> float:
    """ViLT/BUTD soft score for an answer given by ``count`` annotators: 1->0.3, 2->0.6, 3->0.9, >=4->1.0."""
    return SOFT_SCORE.get(count, 1.0)


def vqa_paths(data_dir: Path, split: str) -> tuple[Path, Path]:
    return (
        Path(data_dir) / f"v2_OpenEnded_mscoco_{split}_questions.json",
        Path(data_dir) / f"v2_mscoco_{split}_annotations.json",
    )


def _records(path: Path, key: str) -> list[dict]:
    """The list under ``key`` of an official VQA file, every entry an object."""
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object holding the {key!r} list, got {_json_type(obj)}")
    records = _field(obj, key, str(path))
    if not isinstance(records, list):
        raise UserError(f"{path}: {key!r} must be a list, got {_json_type(records)}")
    if not records:
        raise UserError(f"{path}: {key!r} is empty")
    singular = key[:-1]
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{path}: {singular} {i} must be an object, got {_json_type(r)}")
    return records


def _vqa_annotations(path: Path) -> dict[int, dict]:
    """question_id -> annotation of an official ``v2_mscoco_{split}_annotations.json``, types checked."""
    out: dict[int, dict] = {}
    for i, a in enumerate(_records(path, "annotations")):
        where = f"{path}: annotation {i}"
        qid = _int_field(a, "question_id", where)
        answers = _field(a, "answers", where)
        if not isinstance(answers, list) or not answers:
            raise UserError(f"{where}: 'answers' must be a non-empty list, got {_json_type(answers)}")
        for k, x in enumerate(answers):
            if not isinstance(x, dict) or not isinstance(x.get("answer"), str):
                raise UserError(f"{where}: answers[{k}] must be an object with a string 'answer'")
        for key in ("multiple_choice_answer", "question_type", "answer_type"):
            if key in a and not isinstance(a[key], str):
                raise UserError(f"{where}: {key!r} must be a string, got {_json_type(a[key])}")
        if qid in out:
            raise UserError(f"{where}: question_id {qid} is annotated twice")
        out[qid] = a
    return out


def vqa_answer_counts(data_dir: Path, splits: Sequence[str] = ("train2014",)) -> Counter[str]:
    """How many questions of ``splits`` have each normalised ``multiple_choice_answer``."""
    counts: Counter[str] = Counter()
    for split in splits:
        path = vqa_paths(data_dir, split)[1]
        for qid, a in _vqa_annotations(path).items():
            if "multiple_choice_answer" not in a:
                raise UserError(f"{path}: question_id {qid}: missing field 'multiple_choice_answer'")
            counts[normalize_vqa_answer(a["multiple_choice_answer"])] += 1
    return counts


COCO_CAPTIONS = "captions_train2014.json"  # the pre-training captions, in COCO's annotation format


def read_coco_captions(path: Path) -> list[tuple[str, str]]:
    """(image file name, caption) pairs of a COCO captions annotation file (``captions_train2014.json``:
    ``images`` with ``id`` / ``file_name``, ``annotations`` with ``image_id`` / ``caption``), in annotation order.
    Every malformed part is one line naming the file and the record."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: expected a JSON object holding 'images' and 'annotations', got {_json_type(data)}"
        )
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: {key!r} must be a list, got {_json_type(data.get(key))}")
    files: dict[int, str] = {}
    for i, im in enumerate(data["images"]):
        if (
            not isinstance(im, dict)
            or not isinstance(im.get("id"), int)
            or not isinstance(im.get("file_name"), str)
        ):
            raise UserError(
                f"{path}: image {i} must be an object with an integer 'id' and a string 'file_name'"
            )
        name = im["file_name"]
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise UserError(f"{path}: image {i}: file_name {name!r} is not a path inside the image folder")
        files[im["id"]] = name
    pairs = []
    for i, a in enumerate(data["annotations"]):
        if (
            not isinstance(a, dict)
            or not isinstance(a.get("caption"), str)
            or not isinstance(a.get("image_id"), int)
        ):
            raise UserError(
                f"{path}: annotation {i} must be an object with an integer 'image_id' and a string 'caption'"
            )
        if a["image_id"] not in files:
            raise UserError(f"{path}: annotation {i}: image_id {a['image_id']} is not among the images")
        pairs.append((files[a["image_id"]], a["caption"]))
    return pairs


def write_coco_captions(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    """Write (image file name, caption) pairs as a COCO captions annotation file."""
    ids: dict[str, int] = {}
    for name, _ in pairs:
        ids.setdefault(name, len(ids))
    data = {
        "info": {"description": "dde-bench synthetic world: captions in COCO's annotation format"},
        "images": [{"id": i, "file_name": name} for name, i in ids.items()],
        "annotations": [{"id": j, "image_id": ids[name], "caption": c} for j, (name, c) in enumerate(pairs)],
    }
    Path(path).write_text(json.dumps(data), encoding="utf-8")


def build_vqa_answer_vocab(
    data_dir: Path, splits: Sequence[str] = ("train2014",), min_count: int = VQA_ANSWER_MIN_COUNT
) -> list[str]:
    """Answers whose normalised ``multiple_choice_answer`` occurs at least ``min_count`` times, most frequent
    first (ties alphabetical). With ``min_count`` 9 on train2014 + val2014 this gives ViLT's 3,129 answers.

    An empty vocabulary is a UserError: training and scoring need one (``data validate`` only reports it).
    """
    counts = vqa_answer_counts(data_dir, splits)
    vocab = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    if not vocab:
        raise UserError(f"{data_dir}: no VQA answer occurs {min_count} times in {', '.join(splits)}")
    return vocab


def vqa_target(answers: Sequence[str], index: dict[str, int]) -> dict[int, float]:
    """VQA's soft target of one question over an answer vocabulary (answer -> position): each normalised human
    answer in the vocabulary scores min(1, count / 3) (ViLT's ``vqa_soft_score``)."""
    counts = Counter(normalize_vqa_answer(x) for x in answers)
    return {index[w]: vqa_soft_score(c) for w, c in counts.items() if w in index}


def read_vqa(data_dir: Path, split: str, answer_vocab: Sequence[str] | None = None) -> list[Example]:
    """Read VQA v2 questions (+ annotations when the split has them) with soft targets over ``answer_vocab``."""
    data_dir = Path(data_dir)
    q_path, a_path = vqa_paths(data_dir, split)
    questions = _records(q_path, "questions")
    anns = _vqa_annotations(a_path) if a_path.exists() else {}
    index = {a: i for i, a in enumerate(answer_vocab)} if answer_vocab is not None else None
    out = []
    seen: set[int] = set()
    for i, q in enumerate(questions):
        where = f"{q_path}: question {i}"
        qid = _int_field(q, "question_id", where)
        if qid in seen:
            raise UserError(f"{where}: question_id {qid} appears twice")
        seen.add(qid)
        image_id = _int_field(q, "image_id", where)
        if image_id < 0:
            raise UserError(f"{where}: 'image_id' must not be negative, got {image_id}")
        rel = Path(split) / f"COCO_{split}_{image_id:012d}.jpg"
        ex = Example(
            id=str(qid),
            text=_str_field(q, "question", where),
            image_paths=(safe_join(data_dir, rel, where),),
            meta={"source": where, "question_id": qid, "image_id": image_id},
        )
        a = anns.get(qid)
        if a is not None:
            answers = [x["answer"] for x in a["answers"]]
            ex.answers = answers
            ex.meta["multiple_choice_answer"] = a.get("multiple_choice_answer")
            ex.meta["question_type"] = a.get("question_type")
            ex.meta["answer_type"] = a.get("answer_type")
            if index is not None:
                ex.target = vqa_target(answers, index)
        elif anns:
            raise UserError(f"{a_path}: no annotation for question_id {qid} of {q_path.name}")
        out.append(ex)
    return out


# --- SNLI-VE --------------------------------------------------------------------------------------------


def read_snli_ve(data_dir: Path, split: str) -> list[Example]:
    """Read ``snli_ve_{split}.jsonl``: the hypothesis (``sentence2``) is the text; ``-`` labels are dropped.

    The premise caption (``sentence1``) is kept in ``meta["premise"]``: in SNLI-VE the premise is the image.
    """
    data_dir = Path(data_dir)
    path = data_dir / f"snli_ve_{split}.jsonl"
    out = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        gold = _str_field(obj, "gold_label", where)
        if gold == "-":
            continue
        if gold not in SNLI_VE_LABELS:
            raise UserError(
                f"{where}: unknown gold_label {gold!r} (expected {', '.join(SNLI_VE_LABELS)} or -)"
            )
        fid = _name_field(obj, "Flickr30K_ID", where)
        rel = Path("flickr30k_images") / f"{fid}.jpg"
        out.append(
            Example(
                id=str(obj.get("pairID", f"{split}-{lineno}")),
                text=_str_field(obj, "sentence2", where),
                image_paths=(safe_join(data_dir, rel, where),),
                label=SNLI_VE_LABELS.index(gold),
                meta={"source": where, "premise": obj.get("sentence1"), "captionID": obj.get("captionID")},
            )
        )
    return out


# --- entry point ----------------------------------------------------------------------------------------


def load_split(task: str, data_dir: Path, split: str, **opts) -> list[Example]:
    """Read one split of ``task`` from ``data_dir`` in its original format.

    Options: ``check_images`` (bool, default False: check every image exists; ``decode_images`` also decodes
    them); ``skip_bad_images`` (a :class:`~dde_bench.data.images.BadImages`: decode every image, record each
    missing or undecodable one there and drop the examples that use it, instead of stopping at the first; an
    error if no example is left). For VQA: ``answer_vocab`` (list of answers; default: built from train2014 with
    ``answer_min_count``, default ``tasks.VQA_ANSWER_MIN_COUNT``) and ``vqa_targets`` (default True; False reads the answers without building
    a vocabulary or soft targets).
    """
    check_split(task, split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such data folder")
    if task == "nlvr2":
        examples = read_nlvr2(data_dir, split)
    elif task == "vqa":
        vocab = opts.get("answer_vocab")
        if vocab is None and opts.get("vqa_targets", True) and vqa_paths(data_dir, split)[1].exists():
            min_count = int(opts.get("answer_min_count", VQA_ANSWER_MIN_COUNT))
            vocab = build_vqa_answer_vocab(data_dir, (TRAIN_SPLIT["vqa"],), min_count)
        examples = read_vqa(data_dir, split, vocab)
    else:
        examples = read_snli_ve(data_dir, split)
    bad = opts.get("skip_bad_images")
    if bad is not None:
        before = len(bad)
        check_images(examples, decode=True, bad=bad)
        kept = drop_examples_with_bad_images(examples, bad)
        if examples and not kept:
            path, reason = list(bad.reasons.items())[before]
            raise UserError(
                f"{data_dir}: every {split} example has a bad image ({len(bad) - before} bad; e.g. {path}: {reason})"
            )
        examples = kept
    elif opts.get("check_images"):
        check_images(examples, decode=bool(opts.get("decode_images", False)))
    return examples
