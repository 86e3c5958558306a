"""Batches for training and evaluation.

:class:`TaskDataset` tokenises every text once and, when the decoded images fit in ``CACHE_MAX_BYTES`` (the small
synthetic worlds; ``cache_images`` forces either way), decodes every image once into uint8 tensors, so an epoch is a
few tensor indexing ops per batch. Otherwise (large real data) images are decoded per batch, by the training
loader's worker processes (:mod:`dde_bench.data.loader`).

A batch is a dict: ``input_ids`` / ``attention_mask`` (B, T) long, trimmed to the longest text in the batch;
``pixel_values`` float32 (B, 3, H, W) -- (B, 2, 3, H, W) for NLVR2 -- and ``pixel_mask`` long (B, H, W) /
(B, 2, H, W); ``labels`` (B,) long for NLVR2 and SNLI-VE; ``targets`` (B, num_answers) float for VQA;
``ids`` (list of example ids).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from dde_bench.data.images import ImageProcessor
from dde_bench.data.readers import Example, check_task

# decoded images are held in memory up to this many bytes (worst case: every image at the processor's largest size)
CACHE_MAX_BYTES = 2 * 10**9


class TaskDataset:
    """Examples of one task, pre-tokenised and (optionally) with decoded images held in memory."""

    def __init__(
        self,
        task: str,
        examples: Sequence[Example],
        tokenizer,
        image_processor: ImageProcessor,
        max_len: int,
        answer_vocab: Sequence[str] | None = None,
        cache_images: bool | None = None,
    ):
        self.task = check_task(task)
        self.examples = list(examples)
        self.processor = image_processor
        self.n_images = 2 if task == "nlvr2" else 1
        if task == "vqa" and not answer_vocab:
            raise ValueError(
                "VQA batches need the answer vocabulary (index -> answer, for targets and the metric)"
            )
        self.answer_vocab = list(answer_vocab) if answer_vocab is not None else None
        self.num_answers = len(self.answer_vocab) if self.answer_vocab is not None else None
        enc = tokenizer(
            [e.text for e in self.examples],
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        self.input_ids = enc["input_ids"].long()
        self.attention_mask = enc["attention_mask"].long()
        self.lengths = self.attention_mask.sum(1)
        if task in ("nlvr2", "snli-ve"):
            labels = [-100 if e.label is None else e.label for e in self.examples]
            self.labels = torch.tensor(labels, dtype=torch.long)
        if (
            task == "vqa"
        ):  # soft targets over this dataset's answer list (a model's may differ from the data's)
            from dde_bench.data.readers import vqa_target

            index = {a: i for i, a in enumerate(self.answer_vocab)}
            self.targets = torch.zeros(len(self.examples), self.num_answers, dtype=torch.float32)
            for i, e in enumerate(self.examples):
                for k, v in (vqa_target(e.answers, index) if e.answers else {}).items():
                    self.targets[i, k] = v
        # image index: every distinct path once
        self.paths: list[Path] = []
        where: dict[Path, int] = {}
        idx = []
        for e in self.examples:
            row = []
            for p in e.image_paths:
                if p not in where:
                    where[p] = len(self.paths)
                    self.paths.append(p)
                row.append(where[p])
            idx.append(row)
        self.image_index = torch.tensor(idx, dtype=torch.long).reshape(len(self.examples), self.n_images)
        self._images: list[torch.Tensor] | None = None
        self._stacked: torch.Tensor | None = None
        if cache_images is None:  # the largest resized image, 3 bytes a pixel, for every distinct image
            cache_images = (
                len(self.paths) * 3 * image_processor.shorter * image_processor.longer <= CACHE_MAX_BYTES
            )
        self.cached = bool(cache_images)
        if cache_images:
            self._images = [image_processor.load_uint8(p) for p in self.paths]
            shapes = {tuple(t.shape) for t in self._images}
            if len(shapes) == 1 and self._images:
                self._stacked = torch.stack(self._images)

    def __len__(self) -> int:
        return len(self.examples)

    def _pixels(self, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = image_ids.reshape(-1)
        if self._stacked is not None:
            raw = self._stacked[flat]
            mask = torch.ones(raw.shape[0], raw.shape[-2], raw.shape[-1], dtype=torch.long)
            values = ImageProcessor.normalize(raw)
        else:
            imgs = (
                [self._images[i] for i in flat.tolist()]
                if self._images is not None
                else [self.processor.load_uint8(self.paths[i]) for i in flat.tolist()]
            )
            raw, mask = ImageProcessor.pad(imgs)
            values = ImageProcessor.normalize(raw) * mask[:, None]  # padding is 0 after normalisation
        B = image_ids.shape[0]
        if self.n_images == 2:
            return values.reshape(B, 2, *values.shape[1:]), mask.reshape(B, 2, *mask.shape[1:])
        return values, mask

    def batch(self, indices: Sequence[int] | torch.Tensor, full_length: bool = False) -> dict:
        """The batch of the examples at ``indices`` (in that order); the text trimmed to its longest, or padded to
        the full text length with ``full_length``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if full_length:
            T = self.input_ids.shape[1]
        else:
            T = max(int(self.lengths[idx].max()), 1) if len(idx) else 1
        pixel_values, pixel_mask = self._pixels(self.image_index[idx])
        out = {
            "input_ids": self.input_ids[idx, :T],
            "attention_mask": self.attention_mask[idx, :T],
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "ids": [self.examples[i].id for i in idx.tolist()],
        }
        if self.task == "vqa":
            out["targets"] = self.targets[idx]
        else:
            out["labels"] = self.labels[idx]
        return out

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[dict]:
        """Iterate over the dataset in batches; with ``shuffle`` the order is a fixed permutation for ``seed``."""
        n = len(self)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        )
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)
