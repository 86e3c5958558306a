"""Task metrics, computed the way the official evaluation code computes them.

VQA v2 accuracy follows the current ``vqaEval.py`` of the official VQA evaluation tools (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` since commit a013f00 of 2021-03-11, "Fixed processing answers
bug"), reimplemented from its rules:

* newlines and tabs become spaces and both ends are stripped, on the prediction and on every ground-truth answer;
* when the ten answers are not all identical (after that stripping), the answers *and* the prediction go through
  ``processPunctuation`` then ``processDigitArticle`` (lower case, number words to digits, no articles,
  contractions given their apostrophe); when they are all identical, neither does, so "Yes" or "two" against ten
  "yes" / "2" scores 0;
* the score of a question is the mean, over the ten leave-one-annotator-out subsets of nine answers, of
  ``min(1, matches / 3)``. So 3 of 10 annotators saying "2" gives (3 * 2/3 + 7 * 1) / 10 = 0.9, not 1.0.

``legacy_pre2021=True`` gives the version before that commit (used by papers evaluated before March 2021): the
prediction is always stripped and fully normalised; ground-truth answers are neither stripped nor given
``processDigitArticle``, only ``processPunctuation``, and only when the annotators disagree.

NLVR2: accuracy, and consistency = the share of sentences (identifier ``split-set-pair-sentence`` without the
``pair`` part) whose every image pair is classified correctly. SNLI-VE: accuracy.

Also: writers for official prediction files, the official per-file VQA evaluation (overall, per answer type and
per question type, on the official percent scale and rounding), and a bootstrap confidence interval for a mean of
per-example scores.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from dde_bench.errors import UserError

# --- VQA normalisation: the tables of the official vqaEval.py (its rules need them verbatim) ---------------

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]


def process_punctuation(text: str) -> str:
    """``VQAEval.processPunctuation``: drop or space out punctuation, strip periods not inside numbers."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official code passes re.UNICODE (32) positionally, i.e. as the *count* argument; kept for parity.
    return _PERIOD_STRIP.sub("", out, int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """``VQAEval.processDigitArticle``: lower-case, number words to digits, drop articles, add apostrophes."""
    words = []
    for word in text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _strip_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip both ends (done first, on prediction and answers alike)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(s: str) -> str:
    """Whitespace stripping, ``processPunctuation`` then ``processDigitArticle``: the full official normalisation.

    The current official code applies it to the prediction and to every answer of a question whose annotators
    disagree; the answer vocabulary and the soft training targets use it too.
    """
    return process_digit_article(process_punctuation(_strip_whitespace(s)))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, legacy_pre2021: bool = False) -> float:
    """Official VQA accuracy (0..1) of one predicted answer against the (usually ten) annotator answers.

    Current rule (default): strip whitespace on both sides; if the answers are not all identical, normalise
    answers and prediction (:func:`normalize_vqa_answer`), otherwise neither. ``legacy_pre2021=True``: the rule
    before the official fix of 2021-03-11 (prediction always normalised; answers raw, or only
    ``processPunctuation`` when they disagree). Then the mean over leave-one-annotator-out subsets of
    ``min(1, matches / 3)``. (The official code leaves out an answer record, which is distinct by its
    ``answer_id``; here it leaves out a position, the same thing for the official files.)
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    if legacy_pre2021:
        pred = normalize_vqa_answer(prediction)
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    else:
        pred = _strip_whitespace(prediction)
        gts = [_strip_whitespace(a) for a in answers]
        if len(set(gts)) > 1:
            gts = [normalize_vqa_answer(a) for a in gts]
            pred = normalize_vqa_answer(pred)
    total_matches = sum(1 for a in gts if a == pred)
    acc = 0.0
    for a in gts:
        matches = total_matches - (1 if a == pred else 0)
        acc += min(1.0, matches / 3.0)
    return acc / len(gts)


def official_round(value: float, ndigits: int = 2) -> float:
    """``round(value, ndigits)`` as the official (Python 2) vqaEval.py rounds: ties away from zero.

    Python 3's ``round`` rounds ties to even; both act on the exact binary value of the float.
    """
    q = Decimal(1).scaleb(-ndigits)
    return float(Decimal(value).quantize(q, rounding=ROUND_HALF_UP))


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _official_annotations(annotations: Path) -> dict[int, dict]:
    """question_id -> {"answers", "answer_type", "question_type"} from a ``v2_mscoco_*_annotations.json``."""
    ann = _load_json(annotations)
    if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
        raise UserError(f"{annotations}: expected an object with an 'annotations' list")
    out: dict[int, dict] = {}
    for i, a in enumerate(ann["annotations"]):
        where = f"{annotations}: annotation {i}"
        if not isinstance(a, dict):
            raise UserError(f"{where}: expected an object, got {type(a).__name__}")
        qid = a.get("question_id")
        if not _is_int(qid):
            raise UserError(f"{where}: question_id must be an integer, got {qid!r}")
        answers = a.get("answers")
        if not isinstance(answers, list) or not answers:
            raise UserError(f"{where}: 'answers' must be a non-empty list")
        if not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers):
            raise UserError(f"{where}: every entry of 'answers' must be an object with a string 'answer'")
        for key in ("answer_type", "question_type"):  # the official code reads both for every question
            if not isinstance(a.get(key), str):
                raise UserError(f"{where}: missing or non-string {key!r}")
        if qid in out:
            raise UserError(f"{where}: question_id {qid} is annotated twice")
        out[qid] = {
            "answers": [x["answer"] for x in answers],
            "answer_type": a["answer_type"],
            "question_type": a["question_type"],
        }
    return out


def _official_question_ids(questions: Path) -> set[int]:
    qs = _load_json(questions)
    if not isinstance(qs, dict) or not isinstance(qs.get("questions"), list):
        raise UserError(f"{questions}: expected an object with a 'questions' list")
    ids = set()
    for i, q in enumerate(qs["questions"]):
        if not isinstance(q, dict) or not _is_int(q.get("question_id")):
            raise UserError(f"{questions}: question {i} is not an object with an integer question_id")
        ids.add(q["question_id"])
    return ids


def score_vqa_predictions(
    predictions: Path | list[dict],
    annotations: Path | Mapping[int, Sequence[str]],
    questions: Path | None = None,
    *,
    legacy_pre2021: bool = False,
    ndigits: int = 2,
) -> dict:
    """The official per-file VQA evaluation (``VQA.loadRes`` + ``VQAEval.evaluate``) of a results file.

    ``predictions``: the official results format, a JSON list of ``{"question_id": int, "answer": str}`` (a path
    or the loaded list). ``annotations``: an official ``v2_mscoco_*_annotations.json`` (or a mapping
    question_id -> answers; answer and question types then read ``"all"``). ``questions``: optionally the
    matching ``v2_OpenEnded_mscoco_*_questions.json``; every annotated question must be in it.
    As the official code requires, the predictions cover exactly the annotated question ids (none missing, none
    extra); a question predicted twice is refused (the official code would silently keep the last).

    Returns, on the official percent scale (0..100) rounded to ``ndigits`` decimals with ties away from zero
    (the official ``n=2``, Python 2 ``round``): ``accuracy`` (``accuracy['overall']``), ``per_answer_type``
    (``perAnswerType``: yes/no, number, other), ``per_question_type`` (``perQuestionType``) and ``per_question``
    (``evalQA``, question_id -> percent); plus ``accuracy_unrounded`` (percent), ``n`` and ``metric``.
    """
    pred_src = str(predictions) if isinstance(predictions, Path) else "predictions"
    preds = _load_json(predictions) if isinstance(predictions, Path) else predictions
    if not isinstance(preds, list):
        raise UserError(f"{pred_src}: results is not a JSON list of {{question_id, answer}} objects")
    if isinstance(annotations, Path):
        gts = _official_annotations(annotations)
        ann_src = str(annotations)
    else:
        gts = {
            int(k): {"answers": list(v), "answer_type": "all", "question_type": "all"}
            for k, v in annotations.items()
        }
        ann_src = "annotations"
    if questions is not None:
        absent = sorted(set(gts) - _official_question_ids(questions))
        if absent:
            raise UserError(
                f"{questions}: {len(absent)} annotated question ids of {ann_src} are not in it (e.g. {absent[0]})"
            )
    by_qid: dict[int, str] = {}
    for i, p in enumerate(preds):
        if (
            not isinstance(p, dict)
            or not _is_int(p.get("question_id"))
            or not isinstance(p.get("answer"), str)
        ):
            raise UserError(
                f"{pred_src}: entry {i} is not an object with an integer question_id and a string answer"
            )
        if p["question_id"] in by_qid:
            raise UserError(f"{pred_src}: entry {i}: question_id {p['question_id']} is predicted twice")
        by_qid[p["question_id"]] = p["answer"]
    missing = sorted(set(gts) - set(by_qid))
    if missing:
        raise UserError(
            f"{pred_src}: no prediction for {len(missing)} annotated questions (e.g. {missing[0]})"
        )
    extra = sorted(set(by_qid) - set(gts))
    if extra:
        raise UserError(
            f"{pred_src}: {len(extra)} predictions for questions not in {ann_src} (e.g. {extra[0]})"
        )
    if not gts:
        raise UserError(f"{ann_src}: no annotated questions to score")
    per_q = {q: vqa_accuracy(by_qid[q], g["answers"], legacy_pre2021=legacy_pre2021) for q, g in gts.items()}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for q, s in per_q.items():
        by_answer_type[gts[q]["answer_type"]].append(s)
        by_question_type[gts[q]["question_type"]].append(s)

    def percent(scores: list[float]) -> float:
        return official_round(100.0 * sum(scores) / len(scores), ndigits)

    scores = list(per_q.values())
    return {
        "accuracy": percent(scores),
        "accuracy_unrounded": 100.0 * sum(scores) / len(scores),
        "n": len(scores),
        "per_answer_type": {t: percent(v) for t, v in sorted(by_answer_type.items())},
        "per_question_type": {t: percent(v) for t, v in sorted(by_question_type.items())},
        "per_question": {q: official_round(100.0 * s, ndigits) for q, s in per_q.items()},
        "metric": "vqaEval.py before 2021-03-11" if legacy_pre2021 else "vqaEval.py (2021-03-11, current)",
    }


# --- classification metrics -----------------------------------------------------------------------------


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of predictions equal to the labels (0..1). SNLI-VE and NLVR2 accuracy."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return float("nan")
    return sum(int(p) == int(y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def nlvr2_sentence_key(identifier: str) -> str:
    """``split-set-pair-sentence`` -> ``split-set-sentence``: the key consistency groups by."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(f"not an NLVR2 identifier (split-set-pair-sentence): {identifier!r}")
    return f"{parts[0]}-{parts[1]}-{parts[3]}"


def nlvr2_consistency(identifiers: Sequence[str], predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Share of unique sentences for which every image pair they appear with is classified correctly."""
    ok: dict[str, bool] = {}
    for ident, p, y in zip(identifiers, predictions, labels, strict=True):
        key = nlvr2_sentence_key(ident)
        ok[key] = ok.get(key, True) and int(p) == int(y)
    return sum(ok.values()) / len(ok) if ok else float("nan")


def nlvr2_metrics(identifiers: Sequence[str], predictions: Sequence[int], labels: Sequence[int]) -> dict:
    """``{"accuracy", "consistency"}`` (0..1) for NLVR2 predictions (1 = True)."""
    return {
        "accuracy": accuracy(predictions, labels),
        "consistency": nlvr2_consistency(identifiers, predictions, labels),
    }


def bootstrap_ci(
    scores: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-example scores with a percentile bootstrap (1 - alpha) interval: ``(mean, low, high)``."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


# --- official prediction files --------------------------------------------------------------------------


def write_vqa_predictions(path: Path, predictions: Iterable[tuple[int, str]]) -> Path:
    """Write the VQA server's result format: a JSON list of ``{"question_id": int, "answer": str}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in predictions]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_nlvr2_predictions(path: Path, predictions: Iterable[tuple[str, int | bool]]) -> Path:
    """Write NLVR2's evaluation CSV: one ``identifier,prediction`` row per example, prediction True/False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for ident, p in predictions:
            w.writerow([ident, "True" if bool(p) else "False"])
    return path
