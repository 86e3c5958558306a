"""A suite's data, loaded one way for training, reproduce and the benchmark harness.

:func:`load_suite_data` finds (or generates) the suite's data folder, loads its tokenizer, builds the VQA answer
vocabulary from the training split with the card's ``data.answer_min_count`` (the one place that setting is read)
and turns the requested splits into :class:`~dde_bench.data.batching.TaskDataset` objects sized for a model config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dde_bench.cards import SuiteCard
from dde_bench.errors import UserError
from dde_bench.tasks import TRAIN_SPLIT


@dataclass
class SuiteData:
    """What a suite's data folder gives a model: the tokenizer, the VQA answers and one dataset per split."""

    card: SuiteCard
    data_dir: Path
    tokenizer: object  # a transformers BertTokenizerFast
    answer_vocab: list[str] | None  # VQA: the answers the head predicts, most frequent first; else None
    datasets: dict = field(default_factory=dict)  # split -> TaskDataset

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def num_labels(self) -> int | None:
        """The head's size the data implies (VQA: its answer vocabulary); None = the task's fixed size."""
        return len(self.answer_vocab) if self.answer_vocab is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def image_processor_for(cfg):
    """The image sizes a model config implies: tiny worlds at their native size, paper sizes ViLT's resize."""
    from dde_bench.data.images import ImageProcessor

    if cfg.image_size <= 128:
        return ImageProcessor(cfg.image_size, cfg.image_size, cfg.patch_size)
    return ImageProcessor.vilt(cfg.image_size, cfg.patch_size)


def answer_vocab(card: SuiteCard, data_dir: Path) -> list[str] | None:
    """VQA: the answer vocabulary of the suite's training split (``data.answer_min_count``); None otherwise."""
    if card.task != "vqa":
        return None
    from dde_bench.data.readers import build_vqa_answer_vocab

    return build_vqa_answer_vocab(data_dir, (TRAIN_SPLIT["vqa"],), card.data.answer_min_count)


def load_suite_data(
    card: SuiteCard,
    cache_root: Path,
    model_cfg,
    splits: tuple[str, ...] = (),
    limits: tuple[int | None, ...] = (),
    progress: bool = False,
) -> SuiteData:
    """The suite's data for a model of config ``model_cfg``: tokenizer, answers and a dataset per split in
    ``splits`` (the first ``limits[i]`` examples of split i where a limit is given)."""
    from dde_bench.data.batching import TaskDataset
    from dde_bench.data.cache import ensure_data
    from dde_bench.data.readers import load_split
    from dde_bench.data.tokenize import load_tokenizer

    data_dir = ensure_data(card, Path(cache_root), progress=progress)
    tok = load_tokenizer(data_dir)
    if len(tok) > model_cfg.vocab_size:
        raise UserError(
            f"{data_dir}/vocab.txt has {len(tok)} tokens but the model's vocabulary holds {model_cfg.vocab_size}"
        )
    answers = answer_vocab(card, data_dir)
    proc = image_processor_for(model_cfg)
    out = SuiteData(card, data_dir, tok, answers)
    for i, split in enumerate(splits):
        examples = load_split(card.task, data_dir, split, answer_vocab=answers)
        limit = limits[i] if i < len(limits) else None
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            raise UserError(f"{data_dir}: split {split!r} has no examples")
        out.datasets[split] = TaskDataset(
            card.task, examples, tok, proc, model_cfg.max_text_len, answer_vocab=answers
        )
    return out
