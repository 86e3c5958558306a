"""Synthetic world: determinism, readability by the real readers, pairing and balance; batching; cache."""

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from dde_bench.data.batching import TaskDataset
from dde_bench.data.cache import ensure_data
from dde_bench.data.images import ImageProcessor, resize_shape
from dde_bench.data.readers import build_vqa_answer_vocab, load_split
from dde_bench.data.synth import synthesize
from dde_bench.data.tokenize import encode, load_tokenizer
from dde_bench.resources import list_names

SIZES = {
    "nlvr2": {"train": 16, "dev": 8, "test1": 4},
    "vqa": {"train2014": 24, "val2014": 8},
    "snli-ve": {"train": 18, "dev": 6, "test": 3},
}
ANN = {
    "nlvr2": ["train.json", "dev.json"],
    "vqa": ["v2_mscoco_train2014_annotations.json"],
    "snli-ve": ["snli_ve_train.jsonl"],
}


@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
def test_deterministic_and_readable(tmp_path, task):
    a = tmp_path / "a"
    b = tmp_path / "b"
    synthesize(task, a, seed=3, sizes=SIZES[task])
    synthesize(task, b, seed=3, sizes=SIZES[task])
    for name in ANN[task] + ["captions_train2014.json", "vocab.txt"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for split, n in SIZES[task].items():
        exs = load_split(task, a, split, check_images=True, decode_images=True, answer_min_count=1)
        assert len(exs) == n
    stats = json.loads((a / "stats.json").read_text())
    assert set(stats["splits"]) == set(SIZES[task])


def test_nlvr2_sentences_paired_true_and_false(tmp_path):
    synthesize("nlvr2", tmp_path, sizes={"train": 40, "dev": 2, "test1": 2})
    exs = load_split("nlvr2", tmp_path, "train")
    by_sentence = defaultdict(list)
    for e in exs:
        by_sentence[e.meta["sentence_key"]].append((e.text, e.label, e.image_paths))
    assert len(by_sentence) == 20
    for pairs in by_sentence.values():
        assert len(pairs) == 2 and pairs[0][0] == pairs[1][0]
        assert sorted(p[1] for p in pairs) == [0, 1]
        assert pairs[0][2] != pairs[1][2]
    # text-only: every distinct sentence text is True exactly as often as False
    counts = defaultdict(int)
    for e in exs:
        counts[e.text] += 1 if e.label else -1
    assert all(v == 0 for v in counts.values())


def test_balance_and_families(tmp_path):
    st = synthesize("snli-ve", tmp_path / "s", sizes={"train": 30, "dev": 0, "test": 0}, families=["exist"])
    assert st["splits"]["train"]["labels"] == {"contradiction": 10, "entailment": 10, "neutral": 10}
    assert st["splits"]["train"]["families"] == {"exist": 30}
    st = synthesize("vqa", tmp_path / "v", sizes={"train": 20, "val": 0}, families=["exist", "count"])
    assert st["splits"]["train2014"]["labels"]["yes"] == st["splits"]["train2014"]["labels"]["no"] == 5


def test_vqa_targets_and_batches(tmp_path):
    synthesize("vqa", tmp_path, sizes=SIZES["vqa"])
    vocab = build_vqa_answer_vocab(tmp_path, min_count=1)
    exs = load_split("vqa", tmp_path, "val2014", answer_vocab=vocab)
    assert all(e.target and max(e.target.values()) == 1.0 for e in exs)  # >= 6 of 10 agree
    tok = load_tokenizer(tmp_path)
    ds = TaskDataset("vqa", exs, tok, ImageProcessor(64, 64, 16), max_len=24, answer_vocab=vocab)
    b = next(ds.batches(4, shuffle=True, seed=1))
    assert b["pixel_values"].shape == (4, 3, 64, 64) and b["pixel_values"].dtype == torch.float32
    assert b["pixel_mask"].dtype == torch.long and bool(b["pixel_mask"].all())
    assert b["targets"].shape == (4, len(vocab))
    assert ds.answer_vocab == vocab and ds.num_answers == len(
        vocab
    )  # the metric maps indices back to answers
    with pytest.raises(ValueError, match="answer vocabulary"):
        TaskDataset("vqa", exs, tok, ImageProcessor(64, 64, 16), max_len=24)
    assert b["input_ids"].shape[1] <= 24 and b["input_ids"][:, 0].eq(tok.cls_token_id).all()
    assert next(ds.batches(4, shuffle=True, seed=1))["ids"] == b["ids"]


def test_nlvr2_batches(tmp_path):
    synthesize("nlvr2", tmp_path, sizes={"train": 8, "dev": 4, "test1": 2})
    tok = load_tokenizer(tmp_path / "vocab.txt")
    assert tok.pad_token_id == 0 and tok.unk_token_id is not None and tok.mask_token_id is not None
    ds = TaskDataset(
        "nlvr2", load_split("nlvr2", tmp_path, "dev"), tok, ImageProcessor(64, 64, 16), max_len=24
    )
    b = ds.batch([0, 1, 2])
    assert b["pixel_values"].shape == (3, 2, 3, 64, 64) and b["pixel_mask"].shape == (3, 2, 64, 64)
    assert b["labels"].tolist() == [e.label for e in ds.examples[:3]]
    ids, mask = encode(tok, ["the left image contains a red circle", "a"], max_len=5)
    assert ids.shape == (2, 5) and mask[1].tolist() == [1, 1, 1, 0, 0] and ids[1, 3] == 0


def test_image_processor_matches_vilt(tmp_path):
    from PIL import Image
    from transformers import ViltImageProcessor

    assert resize_shape(480, 640, 384, 640, 32) == (384, 512)
    assert resize_shape(100, 1000, 384, 640, 32) == (64, 640)
    img1 = Image.new("RGB", (640, 480), (200, 10, 30))
    img2 = Image.new("RGB", (300, 500), (0, 90, 255))
    ours = ImageProcessor.vilt(384, 32)([img1, img2])
    assert ImageProcessor(384, 640, 32)([img2])["pixel_values"].shape == (1, 3, 640, 384)
    ref = ViltImageProcessor(size={"shortest_edge": 384}, size_divisor=32)([img1, img2], return_tensors="pt")
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert torch.equal(ours["pixel_mask"], ref["pixel_mask"].long())
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=0.02)


def test_ensure_data_reuses_cache(tmp_path):
    card = {
        "name": "snli-ve",
        "task": "snli-ve",
        "data": {"source": "synthetic", "synth": {"seed": 0, "train": 6, "dev": 3, "test": 3}},
    }
    d1 = ensure_data(card, tmp_path)
    mtime = (d1 / "stats.json").stat().st_mtime_ns
    assert ensure_data(card, tmp_path) == d1 and (d1 / "stats.json").stat().st_mtime_ns == mtime
    card["data"]["synth"]["seed"] = 1
    assert ensure_data(card, tmp_path) != d1
    assert not [p for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".")]
    real = {"name": "x", "task": "snli-ve", "data": {"source": "dir", "data_dir": str(d1)}}
    assert ensure_data(real, tmp_path) == d1


def test_caption_parse_roundtrip_and_minimal_edit_negatives(tmp_path):
    """Every caption parses back to itself; its negatives are well-formed captions of the world that are false
    of the scene (counts differ, or the relation is reversed) and never the caption itself."""
    import random
    from collections import Counter

    from dde_bench.data.synth import (
        World,
        WorldSettings,
        caption,
        caption_negatives,
        format_caption,
        parse_caption,
    )

    colors, shapes = ("red", "blue", "green"), ("circle", "square")
    rng = random.Random(0)
    w = World(WorldSettings(task="nlvr2", colors=colors, shapes=shapes, objects=(2, 5)), rng)
    n_rel = n_negs = 0
    for _ in range(200):
        scene = w.scene()
        text = caption(scene, rng)
        groups, rel = parse_caption(text)
        assert format_caption(groups, rel) == text
        assert groups == dict(Counter((c, s) for _, _, c, s in scene.objects))
        negs = caption_negatives(text, colors, shapes, (2, 5))
        assert text not in negs and len(set(negs)) == len(negs)
        for neg in negs:
            g, r = parse_caption(neg)
            assert format_caption(g, r) == neg
            assert 2 <= sum(g.values()) <= 5
            assert (sum(v == 1 for v in g.values()) >= 2) == (r is not None)  # as caption() would write it
            if g == groups:  # same counts: the relation must be the reversed one
                n_rel += 1
                assert r[0] == rel[0] and r[2] == rel[2] and r[1] != rel[1]
                assert {r[1], rel[1]} in ({"left of", "right of"}, {"above", "below"})
        n_negs += len(negs)
    assert n_rel > 0 and n_negs > 400
    assert (
        parse_caption("an empty grid") is None
        and caption_negatives("not a caption", colors, shapes, (2, 5)) == []
    )


def test_family_of_recovers_every_family_from_the_text():
    """family_of (the per-family breakdown of `reproduce`) names the family each generator wrote, on every task
    and family, and refuses a text the world would not write."""
    import random

    from dde_bench.data.synth import (
        TASK_FAMILIES,
        World,
        WorldSettings,
        _nlvr2_statement,
        _snli_hypothesis,
        _vqa_question,
        family_of,
        known_families,
    )

    for task in TASK_FAMILIES:
        w = World(WorldSettings(task=task), random.Random(1))
        for family in known_families(task):
            for j in range(40):
                if task == "nlvr2":
                    text = _nlvr2_statement(w, family)[0]
                elif task == "vqa":
                    text = _vqa_question(w, family, j)[0]
                else:
                    text = _snli_hypothesis(w, family, ("entailment", "neutral", "contradiction")[j % 3])[0]
                assert family_of(text) == family, (task, family, text)
    assert family_of("a photo of a dog") is None


def test_vqa_region_answers_follow_the_scene(tmp_path):
    """The optional VQA region family: "yes" exactly when an object of the named colour and shape lies in the named
    half of the grid; negatives alternate between the type only in the other half and colour and shape present in
    the half on different objects; it stays out of the default mix, and an unknown family is one clear error."""
    import random

    from dde_bench.data.synth import TASK_FAMILIES, World, WorldSettings, _vqa_question, synthesize
    from dde_bench.errors import UserError

    w = World(WorldSettings(task="vqa", families=("region",)), random.Random(3))
    kinds = Counter()
    for j in range(200):
        q, ans, _, _, scene, near = _vqa_question(w, "region", j)
        words = q.rstrip("?").split(" ")  # is there a <col> <sh> in the <half> half
        col, sh, half = words[3], words[4], words[7]
        here = [o for o in scene.objects if w.in_region(o[:2], half)]
        anywhere = [o for o in scene.objects if o[2:] == (col, sh)]
        assert ans == ("yes" if any(o[2:] == (col, sh) for o in here) else "no"), (q, scene)
        assert near == ["no" if ans == "yes" else "yes"]
        if ans == "no":
            kind = "elsewhere" if anywhere else "split"
            if kind == "split":
                assert any(o[2] == col for o in here) and any(o[3] == sh for o in here), (q, scene)
            kinds[kind] += 1
        kinds[ans] += 1
    assert kinds["yes"] == kinds["no"] == 100 and kinds["elsewhere"] == kinds["split"] == 50
    assert "region" not in TASK_FAMILIES["vqa"]
    stats = synthesize("vqa", tmp_path / "v", sizes={"train": 8, "val": 4}, families=["exist", "region"])
    assert stats["splits"]["train2014"]["families"] == {"exist": 4, "region": 4}
    with pytest.raises(UserError, match="unknown nlvr2 families: region"):
        synthesize("nlvr2", tmp_path / "n", sizes={"train": 4}, families=["region"])


@pytest.mark.parametrize("name", list_names("suites"))
def test_every_shipped_suite_world_generates(tmp_path, name):
    """Each suites/*.yaml on the synthetic world names a task, families and world settings the generator accepts
    (a typo in a family or a colour fails here, not 30 minutes into a reproduction); 6 examples per split."""
    from dde_bench.cards import load_suite
    from dde_bench.data.cache import synth_settings

    card = load_suite(name)
    if not card.data.synthetic:
        pytest.skip("suite on a data folder")
    s = synth_settings(card)
    stats = synthesize(
        s["task"],
        tmp_path,
        seed=s["seed"],
        sizes={split: 6 for split in s["sizes"]},
        families=s["families"] or None,
        **s["world"],
    )
    assert {split: v["n"] for split, v in stats["splits"].items()} == {split: 6 for split in s["sizes"]}
    if s["families"]:
        assert set(stats["splits"][next(iter(s["sizes"]))]["families"]) <= set(s["families"])


def test_suite_eval_split_defaults_per_task():
    """One rule for every caller (training, reproduce, the run harness): the suite's eval_split, else the task's
    dev split (VQA: val2014, which a plain "dev" default got wrong)."""
    from dde_bench.cards import SuiteCard
    from dde_bench.errors import UserError
    from dde_bench.training.reproduce import EvalSplit

    assert SuiteCard.from_dict({"name": "v", "task": "vqa"}).split == "val2014"
    assert SuiteCard.from_dict({"name": "n", "task": "nlvr2"}).split == "dev"
    assert SuiteCard.from_dict({"name": "s", "task": "snli-ve"}).split == "dev"
    assert SuiteCard.from_dict({"name": "n", "task": "nlvr2", "eval_split": "test1"}).split == "test1"
    assert EvalSplit(SuiteCard.from_dict({"name": "v", "task": "vqa"}), Path("unused")).split == "val2014"
    with pytest.raises(UserError, match="task: input should be 'nlvr2', 'vqa' or 'snli-ve'"):
        SuiteCard.from_dict({"name": "x", "task": "gqa"})
