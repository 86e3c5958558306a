"""The task table: the three understanding tasks and what each implies, in one place.

Everything else (readers, models, the harness, training) looks a task's facts up here instead of re-deriving them.
"""

from __future__ import annotations

TASKS = ("nlvr2", "vqa", "snli-ve")

# every split of a task's official layout; the first is the training split, the second the default evaluation split
SPLITS: dict[str, tuple[str, ...]] = {
    "nlvr2": ("train", "dev", "test1"),
    "vqa": ("train2014", "val2014"),
    "snli-ve": ("train", "dev", "test"),
}
TRAIN_SPLIT = {task: splits[0] for task, splits in SPLITS.items()}
DEFAULT_EVAL_SPLIT = {task: splits[1] for task, splits in SPLITS.items()}
# the paper ablation's splits (training/ablation.py): checkpoints are selected on the first and reported on the
# second, which nothing was tuned on. VQA has no labelled test split: its val split is cut in two halves in file
# order (data.suite.split_spec)
SELECTION_SPLIT = {"nlvr2": "dev", "vqa": "val2014:first-half", "snli-ve": "dev"}
HELDOUT_SPLIT = {"nlvr2": "test1", "vqa": "val2014:second-half", "snli-ve": "test"}

# classes of the fixed-size heads (VQA's head has one output per answer of its answer vocabulary)
NUM_LABELS = {"nlvr2": 2, "snli-ve": 3}
# VQA's answer vocabulary: answers whose normalised multiple_choice_answer occurs at least this often in the training
# split (9 gives ViLT's 3,129 answers on the real train2014 + val2014); a suite sets its own (data.answer_min_count)
VQA_ANSWER_MIN_COUNT = 9
# the real VQA v2 answer vocabulary's size (answers occurring >= 9 times, ViLT): paper-size random-weight heads
VQA_PAPER_NUM_ANSWERS = 3129

# The input shape of paper-size speed rows (random weights, random inputs): ViLT resizes the shorter side to 384 and
# the longer to at most 640, both multiples of 32. COCO (VQA v2) images are mostly 640x480 and Flickr30K (SNLI-VE)
# mostly 500x375 / 500x333, landscape 4:3 to 3:2, which gives 384x512 (12 x 16 patches + CLS = 193 image tokens).
# NLVR2's web images are mostly landscape too; 384x512 is assumed there (not measured on the download here).
# A suite sets its own with `paper_image: [height, width]`.
PAPER_IMAGE = {"nlvr2": (384, 512), "vqa": (384, 512), "snli-ve": (384, 512)}
PAPER_TEXT_LEN = 40  # ViLT's text length

# the class whose score ranks a gallery: NLVR2 True, SNLI-VE entailment, VQA the first (most frequent) answer
GALLERY_LABEL = {"nlvr2": 1, "snli-ve": 0, "vqa": 0}


def num_images(task: str) -> int:
    """Images per example: NLVR2 pairs two images with one statement; VQA and SNLI-VE have one."""
    return 2 if task == "nlvr2" else 1
