"""The paper ablation (issue 20): caption pool, per-row negatives, keep_best, split halves, paired statistics,
claims, and the quick variant end to end."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dde_bench.bench.stats import paired_difference, paired_rows
from dde_bench.data import ensure_data
from dde_bench.data import load_tokenizer as load_text_tokenizer
from dde_bench.data.cache import ensure_pool
from dde_bench.data.images import ImageProcessor
from dde_bench.data.readers import read_coco_captions
from dde_bench.data.suite import split_part, split_spec
from dde_bench.data.synth import caption_negatives, parse_caption
from dde_bench.errors import UserError
from dde_bench.training.claims import INCONCLUSIVE, NOT_REACHED, REACHED, compute_claims, verdict
from dde_bench.training.pretrain import CaptionDataset

SYNTH = {
    "seed": 0,
    "train2014": 64,
    "val2014": 40,
    "families": ["exist", "attribute"],
    "colors": ["red", "green", "blue"],
    "shapes": ["circle", "square"],
    "objects": [2, 4],
}
SUITE = {"name": "vqa-ablation-test", "task": "vqa", "data": {"source": "synthetic", "synth": SYNTH}}


def _digests(folder: Path) -> set[str]:
    return {hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}


# --- the caption pool -------------------------------------------------------------------------------------


def test_caption_pool_layout_size_and_disjoint_from_the_task(tmp_path):
    pool = ensure_pool(SUITE, tmp_path, ratio=5.0, n_val=30)
    task_dir = ensure_data(SUITE, tmp_path)
    assert pool.parent == task_dir.parent and pool != task_dir
    for f in ("captions_train2014.json", "captions_val2014.json", "stats.json", "settings.json"):
        assert (pool / f).is_file(), f
    train = read_coco_captions(pool / "captions_train2014.json")
    val = read_coco_captions(pool / "captions_val2014.json")
    assert len(train) == 5 * 64 and len(val) == 30  # 5x the task's 64 training images
    assert all(name.startswith("train2014/") and (pool / name).is_file() for name, _ in train)
    assert all(parse_caption(c) is not None for _, c in train + val)
    pool_imgs = _digests(pool)
    assert len(pool_imgs) > 0.5 * (len(train) + len(val))
    assert not pool_imgs & _digests(task_dir)  # no task image (any split) is in the pool
    stats = json.loads((pool / "stats.json").read_text())
    assert stats["task_train_images"] == 64 and stats["images"] == {"train2014": 320, "val2014": 30}
    # cached, and deterministic: a second build elsewhere writes the same bytes
    assert ensure_pool(SUITE, tmp_path, ratio=5.0, n_val=30) == pool
    other = ensure_pool(SUITE, tmp_path / "again", ratio=5.0, n_val=30)
    assert (other / "captions_train2014.json").read_bytes() == (pool / "captions_train2014.json").read_bytes()
    assert _digests(other) == pool_imgs


def test_caption_pool_refuses_bad_settings(tmp_path):
    with pytest.raises(UserError, match="positive"):
        ensure_pool(SUITE, tmp_path, ratio=0)
    real = {**SUITE, "data": {"source": "dir", "data_dir": str(tmp_path)}}
    with pytest.raises(UserError, match="synthetic suites only"):
        ensure_pool(real, tmp_path)


# --- minimal-edit negatives, made per row ---------------------------------------------------------------


def _eager_batch(ds: CaptionDataset, idx, g, hard, mlm_prob=0.15):
    """The former eager implementation's ITM draws (every caption's negatives tokenised up front)."""
    colors, shapes, objects = ds._world()
    negs = [caption_negatives(c, colors, shapes, objects) for c in ds._captions]
    b = len(idx)
    ids, am = ds.input_ids[idx].clone(), ds.attention_mask[idx].clone()
    negative = torch.rand(b, generator=g) < 0.5
    torch.randperm(b, generator=g)
    pick, which = torch.rand(b, generator=g), torch.rand(b, generator=g)
    hard_rows = torch.zeros(b, dtype=torch.bool)
    for r in range(b):
        n = negs[int(idx[r])]
        if negative[r] and pick[r] < hard and n:
            text = n[min(int(which[r] * len(n)), len(n) - 1)]
            enc = ds._tok([text], padding="max_length", truncation=True, max_length=ds._max_len)
            ids[r], am[r] = torch.tensor(enc["input_ids"][0]), torch.tensor(enc["attention_mask"][0])
            hard_rows[r] = True
    return ids, am, hard_rows, negative


def test_negatives_per_row_match_the_eager_form_and_are_marked_by_kind(tmp_path):
    data_dir = ensure_pool(SUITE, tmp_path, ratio=1.0, n_val=4)
    tok = load_text_tokenizer(ensure_data(SUITE, tmp_path))
    ds = CaptionDataset(data_dir, tok, ImageProcessor(64, 64, 16), 24)
    assert ds._hard == {}  # nothing made before a batch needs it
    idx = torch.arange(32)
    b = ds.batch(idx, torch.Generator().manual_seed(3), hard=0.5, mlm_prob=0.0)
    assert 0 < len(ds._hard) <= 32  # only rows this batch drew as minimal-edit negatives
    ids, am, hard_rows, negative = _eager_batch(ds, idx, torch.Generator().manual_seed(3), 0.5)
    T = b["input_ids"].shape[1]
    assert torch.equal(b["hard_itm"], hard_rows)
    assert torch.equal(b["input_ids"], ids[:, :T]) and torch.equal(b["attention_mask"], am[:, :T])
    # kinds: matched / random image / minimal edit partition the rows
    matched = b["itm_labels"] == 1
    assert torch.equal(matched, ~negative)
    assert not (b["random_itm"] & b["hard_itm"]).any()
    assert torch.equal(b["random_itm"] | b["hard_itm"], ~matched)
    # a minimal-edit row keeps its own image and its caption is one of its negatives
    colors, shapes, objects = ds._world()
    for r in torch.nonzero(b["hard_itm"]).flatten().tolist():
        text = tok.decode(b["input_ids"][r], skip_special_tokens=True)
        negs = caption_negatives(ds._captions[r], colors, shapes, objects)
        assert text.replace(" ", "") in [n.replace(" ", "") for n in negs]


def test_evaluate_itm_counts_every_kind(tmp_path):
    from dde_bench.modeling.config import size_config
    from dde_bench.modeling.models import Teacher
    from dde_bench.training.pretrain import PretrainHeads
    from dde_bench.training.trainer import ITM_EVAL_CAPTIONS, PretrainLoss, evaluate_itm

    pool = ensure_pool(SUITE, tmp_path, ratio=1.0, n_val=40)
    tok = load_text_tokenizer(ensure_data(SUITE, tmp_path))
    vl = size_config("tiny")
    ds = CaptionDataset(
        pool, tok, ImageProcessor(64, 64, 16), vl.max_text_len, captions=pool / ITM_EVAL_CAPTIONS
    )
    torch.manual_seed(0)
    model = Teacher(vl, "vqa", 5)
    module = PretrainLoss(model, PretrainHeads(vl.hidden_size, len(tok), vl.layer_norm_eps, 0.02), None)
    m = evaluate_itm(module, ds, "cpu", hard=0.5, batch_size=16)
    assert sum(m[f"itm_n_{k}"] for k in ("matched", "random", "minimal")) == 40
    assert m["itm_n_minimal"] > 0 and m["itm_n_random"] > 0
    assert m == evaluate_itm(module, ds, "cpu", hard=0.5, batch_size=16)  # the same pairs every time


# --- splits and keep_best ---------------------------------------------------------------------------------


def test_split_spec_halves():
    assert split_spec("val2014") == ("val2014", None)
    assert split_spec("val2014:second-half") == ("val2014", "second-half")
    with pytest.raises(UserError, match="unknown part"):
        split_spec("val2014:third")
    xs = list(range(7))
    assert split_part(xs, "first-half") + split_part(xs, "second-half") == xs
    assert split_part(xs, "first-half") == [0, 1, 2]


def test_keep_best_keeps_the_best_evaluation(tmp_path):
    from dde_bench.data.suite import load_suite_data
    from dde_bench.evaluation import evaluate
    from dde_bench.modeling.checkpoint import load_teacher
    from dde_bench.training.trainer import TrainConfig, train

    kw = dict(kind="teacher", suite=SUITE, cache_root=str(tmp_path), init_std=0.1, batch_size=16, threads=1)
    kw.update(progress=False, eval_split="val2014:first-half", eval_every=5)
    out = train(TrainConfig(out=str(tmp_path / "t"), steps=30, keep_best=True, **kw))
    meta = json.loads((out / "config.json").read_text())["meta"]
    with open(out / "metrics.csv") as f:
        evals = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(f) if r["name"] == "accuracy"]
    assert [s for s, _ in evals] == [5, 10, 15, 20, 25, 30]
    best_step, best = max(evals, key=lambda e: (e[1], -e[0]))
    assert meta["best_step"] == best_step and meta["metrics"]["accuracy"] == pytest.approx(best)
    assert meta["eval_split"] == "val2014:first-half"
    model = load_teacher(out)
    data = load_suite_data(SUITE, tmp_path, model.config, ("val2014:first-half",), tokenizer=None)
    assert 100 * evaluate(model, data.datasets["val2014:first-half"], "cpu").accuracy == pytest.approx(best)
    assert len(data.datasets["val2014:first-half"]) == 20
    with pytest.raises(UserError, match="keep_best needs eval_every"):
        train(TrainConfig(out=str(tmp_path / "u"), steps=2, keep_best=True, **{**kw, "eval_every": 0}))


# --- paired statistics and claims -----------------------------------------------------------------------


def test_paired_rows_against_a_hand_computation():
    a = np.array([70.0, 72.0, 75.0, 71.0, 74.0])
    b = np.array([68.0, 71.0, 71.0, 70.0, 70.0])
    est = paired_difference(a, b, n_boot=500, seed=7)
    assert est.value == pytest.approx(np.mean(a - b))  # 2.4
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 5, size=(500, 5))  # one chunk: seed indices, the same for both rows
    boot = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert (est.ci_low, est.ci_high) == pytest.approx((lo, hi))
    assert est.n_seeds == 5 and est.n_examples == 0
    # what a seed shares across rows cancels: a constant difference has a zero-width interval
    c = paired_difference(a + 1.5, a, n_boot=200)
    assert (
        c.value == pytest.approx(1.5) and c.ci_low == pytest.approx(1.5) and c.ci_high == pytest.approx(1.5)
    )
    # [seeds, examples]: example indices resampled too, the same for every row
    s = np.random.default_rng(0).random((3, 40))
    two = paired_rows({"x": s + 2.0, "y": s}, lambda m: m["x"] - m["y"], n_boot=100)
    assert two.value == pytest.approx(2.0) and two.ci_high - two.ci_low < 1e-9 and two.n_examples == 40
    with pytest.raises(ValueError, match="shapes"):
        paired_difference(a, b[:3])


def test_verdicts():
    assert verdict(0.6, 0.9, 0.5, ">=") == REACHED
    assert verdict(0.1, 0.4, 0.5, ">=") == NOT_REACHED
    assert verdict(0.4, 0.6, 0.5, ">=") == INCONCLUSIVE
    assert verdict(0.1, 2.0, 0.0, ">") == REACHED
    assert verdict(-2.0, 0.0, 0.0, ">") == NOT_REACHED
    assert verdict(-0.5, 0.8, 1.0, "<=") == REACHED
    assert verdict(1.2, 3.0, 1.0, "<=") == NOT_REACHED
    assert verdict(float("nan"), 1.0, 1.0, "<=") == INCONCLUSIVE


def test_claims_on_constructed_scores():
    rng = np.random.default_rng(1)
    base = rng.random((5, 200)) * 10
    scores = {
        "teacher": np.tile(base[0] + 90, (5, 1)),  # 90 + noise, one teacher
        "gt": base + 70,
        "soft-attention": base + 85,  # closes 75% of a 20-point gap
        "pretrain-distill": base + 89.5,  # +4.5 over soft + attention, 0.5 below the teacher (mean)
        "control-pretrain-gt": base + 86,
        "control-more-steps": base + 95,  # more steps beat it
    }
    claims = {c["id"]: c for c in compute_claims(scores, n_boot=300)}
    gap = claims["gap-half"]
    t_minus_gt = scores["teacher"].mean() - scores["gt"].mean()
    assert gap["value"] == pytest.approx(15 / t_minus_gt, abs=1e-3) and gap["verdict"] == REACHED
    assert (
        claims["pretrain-adds"]["value"] == pytest.approx(4.5)
        and claims["pretrain-adds"]["verdict"] == REACHED
    )
    assert claims["pretrain-adds-vs-more-steps"]["verdict"] == NOT_REACHED
    within = claims["within-1-point"]
    assert within["value"] == pytest.approx(
        scores["teacher"].mean() - scores["pretrain-distill"].mean(), abs=1e-3
    )
    assert within["ci_low"] <= within["value"] <= within["ci_high"]
    # no gap: the share is undefined and says so
    flat = {**scores, "gt": scores["teacher"] + 1.0}
    g = {c["id"]: c for c in compute_claims(flat, n_boot=100)}["gap-half"]
    assert g["value"] is None and g["verdict"] == INCONCLUSIVE and "undefined" in g["note"]
    missing = {c["id"]: c for c in compute_claims({"gt": base, "teacher": base}, n_boot=50)}
    assert (
        missing["pretrain-adds"]["verdict"] == INCONCLUSIVE and "not run" in missing["pretrain-adds"]["note"]
    )


# --- the quick variant end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_paper_quick_ablation_end_to_end(tmp_path):
    from dde_bench.training.ablation import SLUGS, run_ablation
    from dde_bench.training.claims import read_claims

    out = tmp_path / "out"
    run_ablation(
        SUITE,
        out,
        seeds=2,
        recipe_name="paper-quick",
        cache_root=tmp_path / "cache",
        threads=1,
        progress=False,
        command="dde-bench reproduce --ablation paper --recipe paper-quick",
    )
    for f in (
        "results.csv",
        "scores.json",
        "claims.json",
        "README.md",
        "table.md",
        "curves.png",
        "run.json",
        "teacher_pretrain_itm.json",
    ):
        assert (out / f).is_file(), f
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["teacher", *SLUGS, *SLUGS]
    assert all(r["best_step"] not in ("", None) for r in rows)
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["gt"]["0"]) == 20  # the held-out half of val2014's 40 questions
    # students start from the pre-trained teacher, head fresh; the pre-training rows from their own stage
    ck = out / "checkpoints"
    cfg = json.loads((ck / "seed0" / "gt" / "config.json").read_text())["meta"]["training"]
    assert cfg["init"] == "pretrained-teacher" and cfg["head_init"] == "fresh"
    assert cfg["eval_split"] == "val2014:first-half" and cfg["keep_best"]
    pre = json.loads((ck / "seed0" / "pretrain-distill" / "pretrain" / "config.json").read_text())["meta"]
    assert pre["training"]["weights"]["soft"] == 1.0 and pre["training"]["weights"]["ground_truth"] == 0.0
    ctrl = json.loads((ck / "seed0" / "control-pretrain-gt" / "pretrain" / "config.json").read_text())["meta"]
    assert ctrl["training"]["weights"]["ground_truth"] == 1.0 and ctrl["training"]["weights"]["soft"] == 0.0
    more = json.loads((ck / "seed1" / "control-more-steps" / "config.json").read_text())["meta"]["training"]
    assert more["steps"] == 30 + 20
    itm = json.loads((out / "teacher_pretrain_itm.json").read_text())["itm"]
    assert {"itm_acc_matched", "itm_acc_random", "itm_acc_minimal"} <= set(itm)
    claims = read_claims(out)
    assert [c["id"] for c in claims][0] == "gap-half" and all(
        c["verdict"] in (REACHED, NOT_REACHED, INCONCLUSIVE) for c in claims
    )
    readme = (out / "README.md").read_text()
    assert "| claim | measured | 95% interval |" in readme and "paper-quick" in readme
    assert json.loads((out / "run.json").read_text())["seeds_done"] == [0, 1]
