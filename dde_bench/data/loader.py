"""Batches for training steps, decoded ahead of the model by DataLoader workers on real data.

A training step's batch is a pure function of the step (the trainer's ``shard_indices`` draws the examples from
(seed, epoch), and every random draw inside a batch comes from a generator seeded by the step), so the batches of
steps ``start .. end - 1`` can be built in any process and in any order and still arrive as an uninterrupted run
would see them: deterministic for a seed, and a resumed run simply starts at ``start``.

:func:`step_batches` yields them in order. With ``workers`` > 0 a torch ``DataLoader`` builds them in worker
processes (each decodes and resizes its batch's images; ``pin_memory`` on CUDA); with 0 they are built in the
main process, which is right when the images are held in memory (:class:`~dde_bench.data.batching.TaskDataset`
keeps decoded uint8 images when they fit, see ``CACHE_MAX_BYTES`` there) and decoding costs nothing.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

MakeBatch = Callable[[int], dict]


class _Steps(Dataset):
    """Item i is the batch of step ``start + i``."""

    def __init__(self, make_batch: MakeBatch, start: int, end: int):
        self.make_batch, self.start, self.end = make_batch, start, end

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __getitem__(self, i: int) -> dict:
        return self.make_batch(self.start + i)


def _one_thread(_: int) -> None:
    torch.set_num_threads(
        1
    )  # workers decode images; torch ops inside them must not fight the trainer's threads


def default_workers(cached: bool) -> int:
    """0 when the images are in memory; else up to 4 workers, leaving a core to the trainer."""
    return 0 if cached else max(0, min(4, (os.cpu_count() or 1) - 1))


def step_batches(
    make_batch: MakeBatch, start: int, end: int, workers: int = 0, pin_memory: bool = False, prefetch: int = 2
) -> Iterator[dict]:
    """The batches of steps ``start .. end - 1``, in step order, built by ``make_batch(step)``."""
    if workers <= 0:
        return (make_batch(step) for step in range(start, end))
    # fork shares the dataset (tokenised text, image paths) with the workers instead of pickling it
    context = (
        multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    )
    loader = DataLoader(
        _Steps(make_batch, start, end),
        batch_size=None,  # every item is already a batch
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch,
        worker_init_fn=_one_thread,
        multiprocessing_context=context,
    )
    return iter(loader)
