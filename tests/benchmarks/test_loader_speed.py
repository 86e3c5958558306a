"""The training loader against what a training step consumes, on real-size JPEG files.

Excluded from the plain test run; run with

    pytest tests/benchmarks/test_loader_speed.py -m benchmark_suite --benchmark-enable -s

A folder of 640x480 JPEG files (COCO's usual size) decoded and resized the ViLT way (shorter side 384, longer
at most 640) by :func:`dde_bench.data.loader.step_batches`, in the main process and with worker processes; beside
it, the images per second one paper-size (ViLT-B/32) teacher training step consumes on this machine, forward and
backward at batch 4. The loader keeps up when its images/s exceed the step's.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from dde_bench.data.batching import TaskDataset
from dde_bench.data.images import ImageProcessor
from dde_bench.data.loader import step_batches
from dde_bench.data.readers import Example
from dde_bench.data.tokenize import load_tokenizer, train_wordpiece

pytestmark = pytest.mark.benchmark_suite

N_IMAGES, BATCH, STEPS = 64, 8, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    examples = []
    for i in range(N_IMAGES):
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = d / f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        examples.append(Example(id=str(i), text="is there a red circle", image_paths=(path,), label=0))
    tok = load_tokenizer(train_wordpiece(["is there a red circle"], d / "tok"))
    return TaskDataset("snli-ve", examples, tok, ImageProcessor.vilt(384, 32), 40, cache_images=False)


def _images_per_s(dataset, workers: int) -> float:
    def make(step: int) -> dict:
        idx = torch.arange(step * BATCH, (step + 1) * BATCH) % len(dataset)
        return dataset.batch(idx)

    t0 = time.perf_counter()
    for b in step_batches(make, 0, STEPS, workers=workers):
        assert b["pixel_values"].shape[-2:] == (384, 512)
    return STEPS * BATCH / (time.perf_counter() - t0)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_loader_images_per_second(benchmark, dataset, workers):
    rate = benchmark.pedantic(_images_per_s, args=(dataset, workers), rounds=2, iterations=1)
    print(f"\nloader, {workers} workers: {rate:.1f} images/s (384x512 from 640x480 JPEG)")


def test_b32_training_step_images_per_second(benchmark, dataset):
    from dde_bench.modeling import Teacher, size_config

    torch.manual_seed(0)
    model = Teacher(size_config("b32"), "snli-ve").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = dataset.batch(torch.arange(4))

    def step():
        logits = model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["pixel_mask"])
        torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    benchmark.pedantic(step, rounds=2, iterations=1)
    print(f"\nViLT-B/32 teacher training step, batch 4: {4 / benchmark.stats.stats.median:.2f} images/s")
