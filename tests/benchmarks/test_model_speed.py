"""Hot-path benchmarks (pytest-benchmark). Excluded from the plain test run; run with `make bench`:

    pytest tests/benchmarks -m benchmark_suite --benchmark-enable --benchmark-autosave
    pytest tests/benchmarks -m benchmark_suite --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10%

Paper size (ViLT-B/32, random weights), batch 8, 384x384 images, 40 text tokens, fp32 on CPU.
"""

from __future__ import annotations

import pytest
import torch

from dde_bench.env import native_bf16
from dde_bench.modeling import Student, Teacher, size_config
from dde_bench.modeling.hf import teacher_to_hf

pytestmark = pytest.mark.benchmark_suite

BATCH = 8


@pytest.fixture(scope="module")
def paper_models():
    torch.manual_seed(0)
    cfg = size_config("b32")
    teacher = Teacher(cfg, "vqa", num_labels=3129).eval()
    hf = teacher_to_hf(teacher).vilt.eval()
    student = Student(cfg, "vqa", num_labels=3129).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (BATCH, 40), generator=g)
    am = torch.ones(BATCH, 40, dtype=torch.long)
    pv = torch.randn(BATCH, 3, 384, 384, generator=g)
    pm = torch.ones(BATCH, 384, 384, dtype=torch.long)
    with torch.inference_mode():
        ours = teacher.encoder(ids, am, pv, pm).pooled
        theirs = hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm).pooler_output
    torch.testing.assert_close(
        ours, theirs, atol=1e-4, rtol=0
    )  # identical outputs, or the race is meaningless
    feats = student.encode_images(pv, pm)
    return teacher, hf, student, (ids, am, pv, pm), feats


@torch.inference_mode()
def test_teacher_forward_dde_bench(benchmark, paper_models):
    teacher, _, _, (ids, am, pv, pm), _ = paper_models
    benchmark.group = "teacher forward, b32, batch 8, fp32"
    benchmark.pedantic(lambda: teacher.encoder(ids, am, pv, pm), rounds=6, warmup_rounds=1)


@torch.inference_mode()
def test_teacher_forward_transformers_vilt(benchmark, paper_models):
    _, hf, _, (ids, am, pv, pm), _ = paper_models
    benchmark.group = "teacher forward, b32, batch 8, fp32"
    benchmark.pedantic(
        lambda: hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm),
        rounds=10,
        warmup_rounds=2,
    )


@torch.inference_mode()
def test_student_cached_forward(benchmark, paper_models):
    _, _, student, (ids, am, _, _), feats = paper_models
    benchmark.group = "student cached, b32, batch 8, fp32"
    benchmark.pedantic(lambda: student.forward_cached(ids, am, feats), rounds=20, warmup_rounds=2)


# --- bf16 (issue 19): ours against transformers' ViltModel on the same weights, both cast to bf16 -------------
needs_native_bf16 = pytest.mark.skipif(
    not native_bf16("cpu"),
    reason="this CPU has no native bf16 (no avx512_bf16 / AMX): torch emulates it (a matmul over 100x slower than fp32 here), so a "
    "bf16 race here would time the emulation",
)


@pytest.fixture(scope="module")
def paper_models_bf16(paper_models):
    import copy

    teacher, hf, student, (ids, am, pv, pm), _ = paper_models
    t16, h16, s16 = (copy.deepcopy(m).to(torch.bfloat16) for m in (teacher, hf, student))
    pv16 = pv.to(torch.bfloat16)
    with torch.inference_mode():
        ours = t16.encoder(ids, am, pv16, pm).pooled.float()
        theirs = h16(input_ids=ids, attention_mask=am, pixel_values=pv16, pixel_mask=pm).pooler_output.float()
    torch.testing.assert_close(ours, theirs, atol=3e-2, rtol=3e-2)  # the same model in bf16, up to rounding
    return t16, h16, s16, (ids, am, pv16, pm), s16.encode_images(pv16, pm)


@needs_native_bf16
@torch.inference_mode()
def test_teacher_forward_bf16_dde_bench(benchmark, paper_models_bf16):
    teacher, _, _, (ids, am, pv, pm), _ = paper_models_bf16
    benchmark.group = "teacher forward, b32, batch 8, bf16"
    benchmark.pedantic(lambda: teacher.encoder(ids, am, pv, pm), rounds=8, warmup_rounds=1)


@needs_native_bf16
@torch.inference_mode()
def test_teacher_forward_bf16_transformers_vilt(benchmark, paper_models_bf16):
    _, hf, _, (ids, am, pv, pm), _ = paper_models_bf16
    benchmark.group = "teacher forward, b32, batch 8, bf16"
    benchmark.pedantic(
        lambda: hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm),
        rounds=8,
        warmup_rounds=1,
    )


@needs_native_bf16
@torch.inference_mode()
def test_student_cached_forward_bf16(benchmark, paper_models_bf16):
    _, _, student, (ids, am, _, _), feats = paper_models_bf16
    benchmark.group = "student cached, b32, batch 8, bf16"
    benchmark.pedantic(lambda: student.forward_cached(ids, am, feats), rounds=20, warmup_rounds=2)
