import json

import pytest

from dde_bench.metrics import (
    bootstrap_ci,
    nlvr2_consistency,
    nlvr2_metrics,
    normalize_vqa_answer,
    score_vqa_predictions,
    vqa_accuracy,
    write_nlvr2_predictions,
    write_vqa_predictions,
)


def test_leave_one_out_three_of_ten_is_point_nine():
    answers = ["2", "2", "2", "3", "3", "3", "3", "4", "4", "1"]
    # the 3 annotators who said "2" leave 2 matches (2/3); the 7 others leave 3 (1.0): (3*2/3 + 7) / 10
    assert vqa_accuracy("2", answers) == pytest.approx(0.9)
    assert vqa_accuracy("two", answers) == pytest.approx(0.9)  # prediction "two" -> "2"
    assert vqa_accuracy("4", answers) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("5", answers) == 0.0
    assert vqa_accuracy("3", ["3"] * 10) == 1.0


def test_normalisation_cases():
    assert normalize_vqa_answer("two") == "2"
    assert normalize_vqa_answer("a dog") == "dog"
    assert normalize_vqa_answer("The Dog") == "dog"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("yes.") == "yes"
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("hot-dog") == "hot dog"
    assert normalize_vqa_answer("hot - dog") == "hot dog"
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer(" yes\n") == "yes"


def test_ground_truth_only_punctuation_processed_when_annotators_disagree():
    # official quirk: with disagreement gts get processPunctuation (so "hot-dog" -> "hot dog") ...
    assert vqa_accuracy("hot dog", ["hot-dog"] * 3 + ["pizza"] * 7) == pytest.approx(0.9)
    # ... but with unanimous answers nothing is normalised on the ground-truth side
    assert vqa_accuracy("hot dog", ["hot-dog"] * 10) == 0.0


def test_score_prediction_file(tmp_path):
    ann = {
        "annotations": [
            {
                "question_id": 1,
                "answer_type": "number",
                "answers": [{"answer": "2", "answer_id": i} for i in range(10)],
            },
            {
                "question_id": 2,
                "answer_type": "yes/no",
                "answers": [{"answer": "no", "answer_id": i} for i in range(10)],
            },
        ]
    }
    a_path = tmp_path / "ann.json"
    a_path.write_text(json.dumps(ann))
    p_path = write_vqa_predictions(tmp_path / "pred.json", [(1, "two"), (2, "yes")])
    res = score_vqa_predictions(p_path, a_path)
    assert res["accuracy"] == pytest.approx(50.0)
    assert res["per_answer_type"] == {"number": 100.0, "yes/no": 0.0}
    assert json.loads(p_path.read_text()) == [
        {"question_id": 1, "answer": "two"},
        {"question_id": 2, "answer": "yes"},
    ]


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
