"""A suite's data, loaded one way for training, reproduce and the benchmark harness.

:func:`load_suite_data` finds (or generates) the suite's data folder, picks its tokenizer, builds the VQA answer
vocabulary from the training split with the card's ``data.answer_min_count`` (the one place that setting is read)
and turns the requested splits into :class:`~dde_bench.data.batching.TaskDataset` objects sized for a model config.

The tokenizer, in order: the one a model brings (its checkpoint's ``vocab.txt`` or tokenizer files, passed in),
the data folder's ``vocab.txt`` (the synthetic world writes one), else a WordPiece vocabulary trained on the
training split's text (:func:`suite_tokenizer`; cached), so a dataset needs no file beyond its official ones.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dde_bench.cards import SuiteCard
from dde_bench.errors import UserError
from dde_bench.files import atomic_folder
from dde_bench.tasks import TRAIN_SPLIT


@dataclass
class SuiteData:
    """What a suite's data folder gives a model: the tokenizer, the VQA answers and the examples of each split."""

    card: SuiteCard
    data_dir: Path
    tokenizer: object  # a transformers BertTokenizerFast
    answer_vocab: list[str] | None  # VQA: the answers the head predicts, most frequent first; else None
    examples: dict = field(default_factory=dict)  # split -> [Example]
    bad_images: dict | None = (
        None  # data.skip_bad_images: {"count", "images": [{path, reason}]} of what was dropped
    )
    datasets: dict = field(default_factory=dict)  # split -> TaskDataset (the model config of load_suite_data)

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

    def dataset(self, split: str, model_cfg, tokenizer=None, answer_vocab=None):
        """The examples of ``split`` as a TaskDataset for a model of config ``model_cfg``, tokenised with
        ``tokenizer`` (default: the suite's) and, for VQA, indexed by ``answer_vocab`` (default: the suite's)."""
        from dde_bench.data.batching import TaskDataset

        tok = tokenizer or self.tokenizer
        if len(tok) > model_cfg.vocab_size:
            raise UserError(
                f"{self.data_dir}: the tokenizer has {len(tok)} tokens but the model's vocabulary holds "
                f"{model_cfg.vocab_size}"
            )
        answers = answer_vocab if answer_vocab is not None else self.answer_vocab
        return TaskDataset(
            self.task,
            self.examples[split],
            tok,
            image_processor_for(model_cfg),
            model_cfg.max_text_len,
            answers,
        )


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


def training_texts(task: str, data_dir: Path) -> list[str]:
    """The text of every training example (statements, questions, hypotheses), in file order."""
    from dde_bench.data.readers import load_split

    return [e.text for e in load_split(task, data_dir, TRAIN_SPLIT[task], vqa_targets=False)]


def suite_tokenizer(card: SuiteCard, data_dir: Path, cache_root: Path, vocab_size: int = 1000):
    """The data folder's ``vocab.txt``, else a WordPiece vocabulary of at most ``vocab_size`` tokens trained on
    the training split's text, cached under ``cache_root/tokenizers/`` (keyed by the training file's path, size
    and modification time)."""
    from dde_bench.data.commands import expected_files
    from dde_bench.data.tokenize import load_tokenizer, train_wordpiece

    data_dir = Path(data_dir)
    if (data_dir / "vocab.txt").is_file():
        return load_tokenizer(data_dir)
    train_files = [p for p in expected_files(card.task, data_dir) if TRAIN_SPLIT[card.task] in p.name]
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in train_files if p.exists()]
    key = hashlib.sha256(json.dumps([card.task, vocab_size, stamp]).encode()).hexdigest()[:16]
    folder = Path(cache_root) / "tokenizers" / f"{card.task}-{key}"
    texts = lambda: training_texts(card.task, data_dir)  # noqa: E731 - read only when not cached
    atomic_folder(folder, lambda tmp: train_wordpiece(texts(), tmp, vocab_size=vocab_size), done="vocab.txt")
    return load_tokenizer(folder)


SPLIT_PARTS = ("first-half", "second-half")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"val2014:second-half"`` -> ``("val2014", "second-half")``; a plain split name has no part. The halves
    cut a split in file order (the first ``n // 2`` examples and the rest): one half to select checkpoints on,
    the other held out to report on, where the task has no separate test split (VQA)."""
    name, _, part = str(spec).partition(":")
    if not part:
        return name, None
    if part not in SPLIT_PARTS:
        raise UserError(f"split {spec!r}: unknown part {part!r}; expected one of {', '.join(SPLIT_PARTS)}")
    return name, part


def split_part(examples: list, part: str | None) -> list:
    """The examples of one part of a split (:func:`split_spec`)."""
    if part is None:
        return list(examples)
    half = len(examples) // 2
    return list(examples[:half]) if part == "first-half" else list(examples[half:])


def load_suite_data(
    card: SuiteCard,
    cache_root: Path,
    model_cfg,
    splits: tuple[str, ...] = (),
    limits: tuple[int | None, ...] = (),
    progress: bool = False,
    tokenizer=None,
    answers: list[str] | None = None,
) -> SuiteData:
    """The suite's data for a model of config ``model_cfg``: tokenizer, answers and a dataset per split in
    ``splits`` (the first ``limits[i]`` examples of split i where a limit is given). ``tokenizer`` / ``answers``:
    the ones a model brings (its checkpoint's), used instead of the suite's."""
    from dde_bench.data.cache import ensure_data
    from dde_bench.data.readers import load_split

    card = SuiteCard.of(card)
    data_dir = ensure_data(card, Path(cache_root), progress=progress)
    tok = tokenizer or suite_tokenizer(card, data_dir, cache_root, vocab_size=model_cfg.vocab_size)
    vocab = answers if answers is not None else answer_vocab(card, data_dir)
    out = SuiteData(card, data_dir, tok, vocab)
    bad = None
    if card.data.skip_bad_images:
        from dde_bench.data.images import BadImages

        bad = BadImages()
    for i, split in enumerate(splits):
        name, part = split_spec(split)
        examples = split_part(
            load_split(card.task, data_dir, name, answer_vocab=vocab, skip_bad_images=bad), part
        )
        limit = limits[i] if i < len(limits) else None
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            raise UserError(f"{data_dir}: split {split!r} has no examples")
        out.examples[split] = examples
        out.datasets[split] = out.dataset(split, model_cfg)
    if bad is not None:
        out.bad_images = bad.summary()
        if len(bad):
            print(
                f"dde-bench: warning: skipped {len(bad)} bad images in {data_dir} (data.skip_bad_images)",
                file=sys.stderr,
            )
    return out
