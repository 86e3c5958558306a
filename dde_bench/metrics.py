"""Task metrics, computed the way the official evaluation code computes them.

VQA v2 accuracy follows ``vqaEval.py`` of the official VQA PythonEvaluationTools (GT-Vision-Lab/VQA), quirks
included:

* the prediction is always normalised (``processPunctuation`` then ``processDigitArticle``);
* the ten ground-truth answers are only passed through ``processPunctuation``, and only when the annotators
  disagree (more than one distinct raw answer) -- number words and articles in ground truth are left alone;
* the score of a question is the mean, over the ten leave-one-annotator-out subsets of nine answers, of
  ``min(1, matches / 3)``. So 3 of 10 annotators saying "2" gives (3 * 2/3 + 7 * 1) / 10 = 0.9, not 1.0.

NLVR2: accuracy, and consistency = the share of sentences (identifier ``split-set-pair-sentence`` without the
``pair`` part) whose every image pair is classified correctly. SNLI-VE: accuracy.

Also: writers for official prediction files, a scorer for a VQA prediction file, and a bootstrap confidence
interval for a mean of per-example scores.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from dde_bench.errors import UserError

# --- VQA normalisation (tables copied from the official vqaEval.py) ---------------------------------------

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


def normalize_vqa_answer(s: str) -> str:
    """Full official normalisation of one answer string (what the prediction goes through)."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(s))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the (usually ten) annotator answers.

    Mean over leave-one-out subsets of ``min(1, #matches / 3)``; normalisation as in ``vqaEval.py``.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = normalize_vqa_answer(prediction)
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    n = len(gts)
    total_matches = sum(1 for a in gts if a == pred)
    acc = 0.0
    for a in gts:
        matches = total_matches - (1 if a == pred else 0)
        acc += min(1.0, matches / 3.0)
    return acc / n


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def score_vqa_predictions(
    predictions: Path | list[dict], annotations: Path | Mapping[int, Sequence[str]]
) -> dict:
    """Score a VQA prediction file (JSON list of ``{"question_id", "answer"}``) against annotations.

    ``annotations`` is either an official ``v2_mscoco_*_annotations.json`` or a mapping question_id -> answers.
    Every annotated question must have a prediction (as the official server requires). Returns
    ``{"accuracy": percent, "n": count, "per_answer_type": {...}, "per_question": {qid: score}}``.
    """
    pred_src = str(predictions) if isinstance(predictions, Path) else "predictions"
    preds = _load_json(predictions) if isinstance(predictions, Path) else predictions
    if not isinstance(preds, list):
        raise UserError(f"{pred_src}: expected a JSON list of {{question_id, answer}}")
    answer_types: dict[int, str] = {}
    if isinstance(annotations, Path):
        ann = _load_json(annotations)
        if not isinstance(ann, dict) or "annotations" not in ann:
            raise UserError(f"{annotations}: expected an object with key 'annotations'")
        gts = {}
        for a in ann["annotations"]:
            gts[int(a["question_id"])] = [x["answer"] for x in a["answers"]]
            answer_types[int(a["question_id"])] = a.get("answer_type", "other")
    else:
        gts = {int(k): list(v) for k, v in annotations.items()}
    by_qid: dict[int, str] = {}
    for i, p in enumerate(preds):
        if not isinstance(p, dict) or "question_id" not in p or "answer" not in p:
            raise UserError(f"{pred_src}: entry {i} is not an object with question_id and answer")
        by_qid[int(p["question_id"])] = str(p["answer"])
    missing = [q for q in gts if q not in by_qid]
    if missing:
        raise UserError(
            f"{pred_src}: no prediction for {len(missing)} annotated questions (e.g. {missing[0]})"
        )
    per_q = {q: vqa_accuracy(by_qid[q], ans) for q, ans in gts.items()}
    per_type: dict[str, list[float]] = defaultdict(list)
    for q, s in per_q.items():
        per_type[answer_types.get(q, "all")].append(s)
    n = len(per_q)
    return {
        "accuracy": 100.0 * sum(per_q.values()) / max(n, 1),
        "n": n,
        "per_answer_type": {t: 100.0 * sum(v) / len(v) for t, v in sorted(per_type.items())},
        "per_question": per_q,
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
