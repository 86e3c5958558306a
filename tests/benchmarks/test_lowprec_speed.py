"""int8 and ONNX Runtime against our fp32 path (pytest-benchmark), paper size (ViLT-B/32, random weights), batch 8,
384x384 images, 40 text tokens, CPU. Excluded from the plain test run; run with `make bench`:

    pytest tests/benchmarks/test_lowprec_speed.py -m benchmark_suite --benchmark-enable

Each group holds our fp32 call and its variant (``--variants int8,ort`` of ``dde-bench run`` measures the same
calls interleaved, with bootstrap intervals; these are the quick per-call view). The variants are built by the
harness's own code (dde_bench/bench/variants.py, bench/ort.py) and checked against fp32 before they are timed.
"""

from __future__ import annotations

import pytest
import torch

from dde_bench.bench import variants
from dde_bench.modeling import Student, Teacher, size_config

pytestmark = pytest.mark.benchmark_suite

BATCH = 8


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    cfg = size_config("b32")
    teacher = Teacher(cfg, "vqa", num_labels=3129).eval()
    student = Student(cfg, "vqa", num_labels=3129).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (BATCH, 40), generator=g)
    am = torch.ones(BATCH, 40, dtype=torch.long)
    pv = torch.randn(BATCH, 3, 384, 384, generator=g)
    with torch.inference_mode():
        feats = student.encode_images(pv, None)
    return teacher, student, (ids, am, pv), feats


@pytest.fixture(scope="module")
def int8(paper):
    teacher, student, (ids, am, pv), feats = paper
    qt, qs = variants.int8_model(teacher), variants.int8_model(student)
    with torch.inference_mode():
        variants.check("int8", qt(ids, am, pv, None), teacher(ids, am, pv, None))
        variants.check("int8", qs.forward_cached(ids, am, feats), student.forward_cached(ids, am, feats))
    return qt, qs


@torch.inference_mode()
@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_student_cached_int8(benchmark, paper, int8, which):
    _, student, (ids, am, _), feats = paper
    model = student if which == "fp32" else int8[1]
    benchmark.group = "student cached, b32, batch 8: int8 vs fp32"
    benchmark.pedantic(lambda: model.forward_cached(ids, am, feats), rounds=10, warmup_rounds=2)


@torch.inference_mode()
@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_teacher_int8(benchmark, paper, int8, which):
    teacher, _, (ids, am, pv), _ = paper
    model = teacher if which == "fp32" else int8[0]
    benchmark.group = "teacher, b32, batch 8: int8 vs fp32"
    benchmark.pedantic(lambda: model(ids, am, pv, None), rounds=4, warmup_rounds=1)


@pytest.fixture(scope="module")
def ort_calls(paper, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from dde_bench.bench.ort import OrtModel

    teacher, student, (ids, am, pv), feats = paper
    cache = tmp_path_factory.mktemp("onnx")
    t = OrtModel(teacher, "bench-teacher", cache).bind("forward", ids, am, pv, None)
    s = OrtModel(student, "bench-student", cache).bind("forward_cached", ids, am, feats)
    with torch.inference_mode():
        variants.check("ort", t(), teacher(ids, am, pv, None))
        variants.check("ort", s(), student.forward_cached(ids, am, feats))
    return t, s


@torch.inference_mode()
@pytest.mark.parametrize("which", ["ours", "ort"])
def test_student_cached_ort(benchmark, paper, ort_calls, which):
    _, student, (ids, am, _), feats = paper
    fn = (lambda: student.forward_cached(ids, am, feats)) if which == "ours" else ort_calls[1]
    benchmark.group = "student cached, b32, batch 8: ONNX Runtime vs ours"
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2)


@torch.inference_mode()
@pytest.mark.parametrize("which", ["ours", "ort"])
def test_teacher_ort(benchmark, paper, ort_calls, which):
    teacher, _, (ids, am, pv), _ = paper
    fn = (lambda: teacher(ids, am, pv, None)) if which == "ours" else ort_calls[0]
    benchmark.group = "teacher, b32, batch 8: ONNX Runtime vs ours"
    benchmark.pedantic(fn, rounds=4, warmup_rounds=1)
