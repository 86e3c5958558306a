"""Readers for the original NLVR2, VQA v2 and SNLI-VE files, all returning :class:`Example` lists.

Layouts (relative to the data folder):

* NLVR2: ``train.json`` / ``dev.json`` / ``test1.json`` (JSON lines). Images ``{split}-{set}-{pair}-img0.png``
  and ``-img1.png`` (prefix = identifier without its last ``-sentence`` part); train images under
  ``images/train/{directory}/``, dev and test1 under ``dev/`` and ``test1/`` (``images/dev/`` etc. accepted too).
* VQA v2: ``v2_OpenEnded_mscoco_{split}_questions.json`` + ``v2_mscoco_{split}_annotations.json``, images
  ``{split}/COCO_{split}_{image_id:012d}.jpg``. Test splits have no annotations: labels are then ``None``.
* SNLI-VE: ``snli_ve_{split}.jsonl`` with Flickr30K images ``flickr30k_images/{Flickr30K_ID}.jpg``;
  rows whose ``gold_label`` is ``-`` are dropped, as in the dataset's own setup.

Every bad input ends in a :class:`UserError` naming the file (and the line, for JSON lines).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dde_bench.errors import UserError
from dde_bench.metrics import normalize_vqa_answer
from dde_bench.tasks import SPLITS, TASKS, TRAIN_SPLIT  # noqa: F401 - re-exported: readers are where data code looks

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


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed lines raise a one-line UserError."""
    _require_file(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def load_json(path: Path) -> object:
    _require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _field(obj: dict, key: str, where: str) -> object:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    return obj[key]


def safe_join(root: Path, rel: str | Path, where: str) -> Path:
    """``root / rel`` that must stay inside ``root`` (no ``..`` escapes, no absolute paths)."""
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


def check_images(examples: Sequence[Example], decode: bool = False) -> int:
    """Check that every image exists (and, with ``decode``, that PIL can read it); returns the count checked."""
    seen: set[Path] = set()
    for ex in examples:
        for p in ex.image_paths:
            if p in seen:
                continue
            seen.add(p)
            where = ex.meta.get("source", ex.id)
            if not p.is_file():
                raise UserError(f"{where}: missing image {p}")
            if decode:
                from PIL import Image

                try:
                    with Image.open(p) as im:
                        im.verify()
                except Exception as e:  # PIL raises many types for corrupt files
                    raise UserError(f"{where}: unreadable image {p} ({type(e).__name__})") from None
    return len(seen)


# --- NLVR2 ----------------------------------------------------------------------------------------------


def read_nlvr2(data_dir: Path, split: str) -> list[Example]:
    """Read NLVR2 ``{split}.json`` (JSON lines) and resolve both images of every pair."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.json"
    out = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        ident = str(_field(obj, "identifier", where))
        parts = ident.split("-")
        if len(parts) != 4:
            raise UserError(f"{where}: identifier {ident!r} is not split-set-pair-sentence")
        sentence = str(_field(obj, "sentence", where))
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
            directory = str(_field(obj, "directory", where))
            folders = [safe_join(data_dir / "images" / "train", directory, where)]
        else:
            folders = [data_dir / split, data_dir / "images" / split]
        paths = tuple(
            safe_join(data_dir, _first_existing([f / n for f in folders]).relative_to(data_dir), where)
            for n in names
        )
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


def _vqa_annotations(path: Path) -> list[dict]:
    ann = load_json(path)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise UserError(f"{path}: expected an object with an 'annotations' list")
    return ann["annotations"]


def build_vqa_answer_vocab(
    data_dir: Path, splits: Sequence[str] = ("train2014",), min_count: int = 9
) -> list[str]:
    """Answers whose normalised ``multiple_choice_answer`` occurs at least ``min_count`` times, most frequent
    first (ties alphabetical). With ``min_count`` 9 on train2014 + val2014 this gives ViLT's 3,129 answers."""
    counts: Counter[str] = Counter()
    for split in splits:
        path = vqa_paths(data_dir, split)[1]
        for i, a in enumerate(_vqa_annotations(path)):
            if "multiple_choice_answer" not in a:
                raise UserError(f"{path}: annotation {i} has no 'multiple_choice_answer'")
            counts[normalize_vqa_answer(str(a["multiple_choice_answer"]))] += 1
    vocab = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    if not vocab:
        raise UserError(f"{data_dir}: no VQA answer occurs {min_count} times in {', '.join(splits)}")
    return vocab


def read_vqa(data_dir: Path, split: str, answer_vocab: Sequence[str] | None = None) -> list[Example]:
    """Read VQA v2 questions (+ annotations when the split has them) with soft targets over ``answer_vocab``."""
    data_dir = Path(data_dir)
    q_path, a_path = vqa_paths(data_dir, split)
    qs = load_json(q_path)
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise UserError(f"{q_path}: expected an object with a 'questions' list")
    anns: dict[int, dict] = {}
    if a_path.exists():
        for i, a in enumerate(_vqa_annotations(a_path)):
            if "question_id" not in a or not isinstance(a.get("answers"), list):
                raise UserError(f"{a_path}: annotation {i} lacks question_id or answers")
            anns[int(a["question_id"])] = a
    index = {a: i for i, a in enumerate(answer_vocab)} if answer_vocab is not None else None
    out = []
    for i, q in enumerate(qs["questions"]):
        where = f"{q_path}: question {i}"
        qid = int(_field(q, "question_id", where))
        image_id = int(_field(q, "image_id", where))
        rel = Path(split) / f"COCO_{split}_{image_id:012d}.jpg"
        ex = Example(
            id=str(qid),
            text=str(_field(q, "question", where)),
            image_paths=(safe_join(data_dir, rel, where),),
            meta={"source": where, "question_id": qid, "image_id": image_id},
        )
        a = anns.get(qid)
        if a is not None:
            answers = [str(x.get("answer", "")) for x in a["answers"]]
            ex.answers = answers
            ex.meta["multiple_choice_answer"] = a.get("multiple_choice_answer")
            ex.meta["question_type"] = a.get("question_type")
            ex.meta["answer_type"] = a.get("answer_type")
            if index is not None:
                counts = Counter(normalize_vqa_answer(x) for x in answers)
                ex.target = {index[w]: vqa_soft_score(c) for w, c in counts.items() if w in index}
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
        gold = str(_field(obj, "gold_label", where))
        if gold == "-":
            continue
        if gold not in SNLI_VE_LABELS:
            raise UserError(
                f"{where}: unknown gold_label {gold!r} (expected {', '.join(SNLI_VE_LABELS)} or -)"
            )
        fid = str(_field(obj, "Flickr30K_ID", where))
        rel = Path("flickr30k_images") / f"{fid}.jpg"
        out.append(
            Example(
                id=str(obj.get("pairID", f"{split}-{lineno}")),
                text=str(_field(obj, "sentence2", where)),
                image_paths=(safe_join(data_dir, rel, where),),
                label=SNLI_VE_LABELS.index(gold),
                meta={"source": where, "premise": obj.get("sentence1"), "captionID": obj.get("captionID")},
            )
        )
    return out


# --- entry point ----------------------------------------------------------------------------------------


def load_split(task: str, data_dir: Path, split: str, **opts) -> list[Example]:
    """Read one split of ``task`` from ``data_dir`` in its original format.

    Options: ``check_images`` (bool, default False: check every image exists), and for VQA
    ``answer_vocab`` (list of answers; default: built from train2014 with ``answer_min_count``, default 9).
    """
    check_split(task, split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such data folder")
    if task == "nlvr2":
        examples = read_nlvr2(data_dir, split)
    elif task == "vqa":
        vocab = opts.get("answer_vocab")
        if vocab is None and vqa_paths(data_dir, split)[1].exists():
            vocab = build_vqa_answer_vocab(data_dir, ("train2014",), int(opts.get("answer_min_count", 9)))
        examples = read_vqa(data_dir, split, vocab)
    else:
        examples = read_snli_ve(data_dir, split)
    if opts.get("check_images"):
        check_images(examples, decode=bool(opts.get("decode_images", False)))
    return examples
