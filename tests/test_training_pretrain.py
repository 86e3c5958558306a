"""The pre-training batches: ITM negatives (random images and minimal-edit captions), MLM masking, accuracies."""

from __future__ import annotations

import torch

from dde_bench.data import ensure_data
from dde_bench.data import load_tokenizer as load_text_tokenizer
from dde_bench.data.images import ImageProcessor
from dde_bench.training.pretrain import CaptionDataset
from dde_bench.training.trainer import itm_accuracies

SUITE = {
    "name": "nlvr2-pre",
    "task": "nlvr2",
    "data": {
        "source": "synthetic",
        "synth": {
            "seed": 1,
            "train": 40,
            "dev": 2,
            "test1": 2,
            "families": ["exist", "spatial"],
            "colors": ["red", "blue"],
            "shapes": ["circle", "square"],
            "objects": [2, 4],
        },
    },
}


def _dataset(tmp_path) -> CaptionDataset:
    data_dir = ensure_data(SUITE, tmp_path)
    tok = load_text_tokenizer(data_dir)
    return CaptionDataset(data_dir, tok, ImageProcessor(64, 64, 16), 24)


def test_hard_negatives_keep_the_image_and_change_the_caption(tmp_path):
    ds = _dataset(tmp_path)
    idx = torch.arange(32)
    plain = ds.batch(idx, torch.Generator().manual_seed(5))
    again = ds.batch(idx, torch.Generator().manual_seed(5), hard=0.0)
    for k in ("input_ids", "attention_mask", "pixel_values", "itm_labels", "mlm_labels"):
        assert torch.equal(plain[k], again[k]), k
    assert not plain["hard_itm"].any()
    b = ds.batch(idx, torch.Generator().manual_seed(5), hard=1.0, mlm_prob=0.0)
    hard = b["hard_itm"]
    assert hard.any() and bool((b["itm_labels"][hard] == 0).all())
    own = ImageProcessor.normalize(ds.images[idx])
    assert torch.equal(b["pixel_values"][hard], own[hard])  # the image is the caption's own ...
    T = b["input_ids"].shape[1]
    orig = ds.input_ids[idx, :T]
    changed = [not torch.equal(b["input_ids"][i], orig[i]) for i in torch.nonzero(hard).flatten()]
    assert all(changed)  # ... the caption is not
    # no MLM masking here: matched and random-image rows keep their captions
    assert torch.equal(b["input_ids"][~hard], orig[~hard])
    assert bool((b["mlm_labels"][hard] == -100).all())


def test_itm_accuracies_split_hard_and_easy():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # predicts 1, 0, 1, 1
    batch = {"itm_labels": torch.tensor([1, 0, 0, 0]), "hard_itm": torch.tensor([False, False, True, True])}
    acc = itm_accuracies(logits, batch)
    assert acc == {"itm_acc": 0.5, "itm_acc_hard": 0.0, "itm_acc_easy": 1.0}
    assert itm_accuracies(logits, {"itm_labels": batch["itm_labels"]}) == {"itm_acc": 0.5}


def test_vqa_captions_are_found(tmp_path):
    """VQA's synthetic captions carry the split name train2014; the pre-training stage must still find them."""
    suite = {
        "name": "vqa-pre",
        "task": "vqa",
        "data": {"source": "synthetic", "synth": {"train": 12, "val": 2}},
    }
    data_dir = ensure_data(suite, tmp_path)
    ds = CaptionDataset(data_dir, load_text_tokenizer(data_dir), ImageProcessor(64, 64, 16), 24)
    assert len(ds) == 12
