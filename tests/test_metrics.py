"""Metrics on hand cases worked out with the official rules (each comment names the rule a case checks).

VQA: the current official vqaEval.py (GT-Vision-Lab/VQA, commit a013f00 "Fixed processing answers bug",
2021-03-11) and, with ``legacy_pre2021=True``, the version before it. The scores are the mean over the ten
leave-one-annotator-out subsets of min(1, matches / 3).
"""

import json

import pytest

from dde_bench.errors import UserError
from dde_bench.metrics import (
    bootstrap_ci,
    nlvr2_consistency,
    nlvr2_metrics,
    normalize_vqa_answer,
    official_round,
    process_punctuation,
    score_vqa_predictions,
    vqa_accuracy,
    write_nlvr2_predictions,
    write_vqa_predictions,
)


def both(pred, answers):
    """(current, pre-2021) accuracy of one prediction."""
    return vqa_accuracy(pred, answers), vqa_accuracy(pred, answers, legacy_pre2021=True)


# --- one question ------------------------------------------------------------------------------------------


def test_leave_one_out_three_of_ten_is_point_nine():
    answers = ["2", "2", "2", "3", "3", "3", "3", "4", "4", "1"]
    # the 3 annotators who said "2" leave 2 matches (2/3); the 7 others leave 3 (1.0): (3*2/3 + 7) / 10
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    # answers disagree, so the prediction is normalised: "two" -> "2"
    assert vqa_accuracy("two", answers) == pytest.approx(0.9)
    # "4": its 2 annotators leave 1 match (1/3), the 8 others leave 2 (2/3)
    assert vqa_accuracy("4", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("5", answers) == 0.0


def test_unanimous_answers_are_not_normalised_nor_the_prediction():
    # unanimous: exact string match after whitespace stripping only
    assert both("yes", ["yes"] * 10) == (1.0, 1.0)
    # the two versions disagree: current compares "Yes" with "yes" raw (0); pre-2021 lower-cased the prediction
    assert both("Yes", ["yes"] * 10) == (0.0, 1.0)
    # numbers as words, unanimous: current "two" != "2"; pre-2021 mapped the prediction to "2"
    assert both("two", ["2"] * 10) == (0.0, 1.0)
    # articles, unanimous: current "a dog" != "dog"; pre-2021 dropped the prediction's article
    assert both("a dog", ["dog"] * 10) == (0.0, 1.0)
    # unanimous answers with punctuation: neither side is touched in either version
    assert both("hot dog", ["hot-dog"] * 10) == (0.0, 0.0)


def test_whitespace_newlines_tabs():
    # current: newlines/tabs -> spaces and strip, on the prediction and every answer, even when unanimous
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("\tyes", ["yes"] * 10) == 1.0
    # an inner tab becomes a space: "hot\tdog" -> "hot dog"
    assert vqa_accuracy("hot\tdog", ["hot dog"] * 10) == 1.0
    # answers with stray whitespace: current strips them (1.0); pre-2021 never stripped answers (0.0)
    assert both("yes", ["yes "] * 10) == (1.0, 0.0)
    assert both("yes", ["yes\n"] * 9 + ["no"]) == pytest.approx((1.0, 0.0))


def test_numbers_as_words_when_answers_disagree():
    answers = ["two"] * 4 + ["2"] * 3 + ["3"] * 3
    # current: answers normalised too, so seven "2": every subset keeps >= 3 matches -> 1.0
    # pre-2021: answers only got processPunctuation, "two" stays: three "2" -> (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert both("2", answers) == pytest.approx((1.0, 0.9))
    assert both("two", answers) == pytest.approx((1.0, 0.9))
    # "none" and "zero" both map to "0"
    assert vqa_accuracy("0", ["none"] * 3 + ["zero"] * 3 + ["1"] * 4) == 1.0


def test_articles_when_answers_disagree():
    answers = ["a dog"] * 3 + ["cat"] * 7
    # current: "a dog" -> "dog" on the answers: three matches -> 0.9; pre-2021: "a dog" kept, no match -> 0.0
    assert both("dog", answers) == pytest.approx((0.9, 0.0))
    # "the dog" -> "dog" on the prediction in both versions
    assert both("the dog", answers) == pytest.approx((0.9, 0.0))
    # "an" is an article as well
    assert vqa_accuracy("apple", ["an apple"] * 3 + ["pear"] * 7) == pytest.approx(0.9)


def test_contractions():
    answers = ["dont"] * 2 + ["don't"] * 2 + ["no"] * 6
    # current: "dont" -> "don't" on the answers: four matches -> 1.0
    # pre-2021: two "don't": their annotators leave 1 (1/3), the 8 others leave 2 (2/3): (2/3 + 16/3) / 10
    assert both("don't", answers) == pytest.approx((1.0, 0.6))
    # the prediction "dont" gets its apostrophe in both versions
    assert both("dont", answers) == pytest.approx((1.0, 0.6))
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("Im") == "im"  # lower-cased before the table lookup: "Im" never matches


def test_punctuation():
    # a mark not next to a space becomes a space; next to a space it is dropped
    assert normalize_vqa_answer("hot-dog") == "hot dog"
    assert normalize_vqa_answer("hot - dog") == "hot dog"
    assert normalize_vqa_answer("yes!") == "yes"
    assert normalize_vqa_answer("red, white") == "red white"
    # "(a)" -> " a " -> the article is dropped: nothing left
    assert normalize_vqa_answer("(a)") == ""
    # the apostrophe is not in the official punctuation list
    assert process_punctuation("it's") == "it's"
    # disagreeing answers: "hot-dog" -> "hot dog" in both versions (processPunctuation on answers)
    assert both("hot dog", ["hot-dog"] * 3 + ["pizza"] * 7) == pytest.approx((0.9, 0.9))
    # answers "yes!" and "yes": current -> all "yes" (1.0); pre-2021 "yes!" -> "yes " (space kept, no match)
    # so its 2 annotators leave 8 matches and the 8 others leave 7: 1.0 either way
    assert both("yes", ["yes!"] * 2 + ["yes"] * 8) == (1.0, 1.0)
    # with the mark on most answers pre-2021 loses: "yes " != "yes", so only 2 matches: (2 * 1/3 + 8 * 2/3) / 10
    assert both("yes", ["yes!"] * 8 + ["yes"] * 2) == pytest.approx((1.0, 0.6))


def test_commas_in_numbers():
    # a digit-comma-digit anywhere: every punctuation mark is dropped, not spaced
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer("3,000-4,000") == "30004000"
    answers = ["1,000"] * 3 + ["1000"] * 3 + ["many"] * 4
    # current and pre-2021 both strip the comma on disagreeing answers: six "1000" -> 1.0
    assert both("1000", answers) == (1.0, 1.0)
    assert both("1,000", answers) == (1.0, 1.0)


def test_periods_not_in_decimals():
    # a period not followed by a digit is removed; one before a digit stays
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("3.5.") == "3.5"
    assert normalize_vqa_answer("yes.") == "yes"
    assert normalize_vqa_answer("5.") == "5"
    assert normalize_vqa_answer("e.g.") == "eg"
    assert normalize_vqa_answer("mr. t") == "mr t"
    assert both("3.5", ["3.5"] * 3 + ["3.5."] * 3 + ["4"] * 4) == (1.0, 1.0)


def test_empty_answers_is_an_error():
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


def test_official_round_is_half_away_from_zero():
    # 12.125 is exact in binary: Python 2's round (the official code's) gives 12.13, Python 3's 12.12
    assert official_round(12.125) == 12.13
    assert official_round(63.333333) == 63.33
    assert official_round(2 / 3 * 100) == 66.67


# --- one file ----------------------------------------------------------------------------------------------


def _official_files(tmp_path, anns, qids=None):
    a_path = tmp_path / "v2_mscoco_val2014_annotations.json"
    a_path.write_text(json.dumps({"annotations": anns}))
    q_path = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    qids = [a["question_id"] for a in anns] if qids is None else qids
    q_path.write_text(
        json.dumps({"questions": [{"question_id": q, "image_id": 1, "question": "?"} for q in qids]})
    )
    return a_path, q_path


def _ann(qid, answers, answer_type, question_type="what"):
    return {
        "question_id": qid,
        "image_id": 1,
        "answer_type": answer_type,
        "question_type": question_type,
        "multiple_choice_answer": answers[0],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
    }


def test_score_prediction_file(tmp_path):
    anns = [
        _ann(1, ["2"] * 10, "number", "how many"),
        _ann(2, ["no"] * 10, "yes/no", "is the"),
        _ann(3, ["hot-dog"] * 3 + ["pizza"] * 7, "other"),
    ]
    a_path, q_path = _official_files(tmp_path, anns)
    p_path = write_vqa_predictions(tmp_path / "pred.json", [(1, "two"), (2, "no"), (3, "hot dog")])
    res = score_vqa_predictions(p_path, a_path, q_path)
    # current: "two" against ten "2" is 0 (no normalisation when unanimous); 100; 90 -> 190 / 3 = 63.333...
    assert res["accuracy"] == 63.33
    assert res["accuracy_unrounded"] == pytest.approx(190 / 3)
    assert res["per_answer_type"] == {"number": 0.0, "other": 90.0, "yes/no": 100.0}
    assert res["per_question_type"] == {"how many": 0.0, "is the": 100.0, "what": 90.0}
    assert res["per_question"] == {1: 0.0, 2: 100.0, 3: 90.0}
    assert res["n"] == 3
    legacy = score_vqa_predictions(p_path, a_path, q_path, legacy_pre2021=True)
    # pre-2021: "two" -> "2" on the prediction: 100; (100 + 100 + 90) / 3 = 96.666... -> 96.67
    assert legacy["accuracy"] == 96.67 and legacy["per_answer_type"]["number"] == 100.0
    assert json.loads(p_path.read_text()) == [
        {"question_id": 1, "answer": "two"},
        {"question_id": 2, "answer": "no"},
        {"question_id": 3, "answer": "hot dog"},
    ]


@pytest.mark.parametrize(
    "preds, needle",
    [
        ({"question_id": 1, "answer": "2"}, "not a JSON list"),
        ([{"question_id": 1, "answer": "2"}], "no prediction for 1 annotated questions (e.g. 2)"),
        ([{"question_id": q, "answer": "2"} for q in (1, 2, 7)], "1 predictions for questions not in"),
        ([{"question_id": q, "answer": "2"} for q in (1, 2, 2)], "entry 2: question_id 2 is predicted twice"),
        ([{"question_id": "1", "answer": "2"}], "entry 0 is not an object with an integer question_id"),
        ([{"question_id": 1, "answer": 2}], "entry 0 is not an object with an integer question_id"),
    ],
    ids=["not-a-list", "missing", "extra", "duplicate", "string-qid", "number-answer"],
)
def test_score_prediction_file_refuses_what_the_official_code_refuses(tmp_path, preds, needle):
    a_path, q_path = _official_files(
        tmp_path, [_ann(1, ["2"] * 10, "number"), _ann(2, ["no"] * 10, "yes/no")]
    )
    p_path = tmp_path / "pred.json"
    p_path.write_text(json.dumps(preds))
    with pytest.raises(UserError, match="pred.json") as e:
        score_vqa_predictions(p_path, a_path, q_path)
    assert needle in str(e.value)


def test_score_prediction_file_bad_annotations_and_questions(tmp_path):
    a_path, q_path = _official_files(tmp_path, [_ann(1, ["2"] * 10, "number")], qids=[5])
    p_path = write_vqa_predictions(tmp_path / "pred.json", [(1, "2")])
    with pytest.raises(UserError, match="questions.json: 1 annotated question ids"):
        score_vqa_predictions(p_path, a_path, q_path)
    bad = _ann(1, ["2"] * 10, "number")
    bad["answers"] = "2"
    a_path.write_text(json.dumps({"annotations": [bad]}))
    with pytest.raises(UserError, match="annotation 0: 'answers' must be a non-empty list"):
        score_vqa_predictions(p_path, a_path)
    del bad["answer_type"]
    bad["answers"] = [{"answer": "2", "answer_id": 1}]
    a_path.write_text(json.dumps({"annotations": [bad]}))
    with pytest.raises(UserError, match="annotation 0: missing or non-string 'answer_type'"):
        score_vqa_predictions(p_path, a_path)
    a_path.write_bytes(b'{"annotations": [\xff]}')
    with pytest.raises(UserError, match="annotations.json: not UTF-8 text"):
        score_vqa_predictions(p_path, a_path)


def test_score_prediction_mapping():
    res = score_vqa_predictions([{"question_id": 1, "answer": "2"}], {1: ["2"] * 10})
    assert res["accuracy"] == 100.0 and res["per_answer_type"] == {"all": 100.0}


# --- NLVR2 and the rest --------------------------------------------------------------------------------------


def test_nlvr2_consistency_and_csv(tmp_path):
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-0-1", "dev-2-0-0", "dev-2-1-0"]
    labels = [1, 0, 1, 1, 0]
    preds = [1, 0, 0, 1, 1]
    # sentences: dev-1-0 (pairs 0,1: both right), dev-1-1 (wrong), dev-2-0 (one wrong)
    assert nlvr2_consistency(ids, preds, labels) == pytest.approx(1 / 3)
    m = nlvr2_metrics(ids, preds, labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    path = write_nlvr2_predictions(tmp_path / "p.csv", zip(ids, preds, strict=True))
    assert path.read_text().splitlines()[:2] == ["dev-1-0-0,True", "dev-1-1-0,False"]


def test_bootstrap_ci():
    mean, lo, hi = bootstrap_ci([1.0] * 70 + [0.0] * 30, n_boot=500)
    assert mean == pytest.approx(0.7)
    assert lo < 0.7 < hi and hi - lo < 0.25
