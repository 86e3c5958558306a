"""Real properties of dde-bench's CUDA paths (``pytest -m cuda``; skipped without a CUDA device).

``make gpu-check`` runs these and names each in its summary (``scripts/gpu_check.py``, ``CUDA_PATHS``). They use
only public functions of ``dde_bench.bench.timing`` / ``memory`` / ``energy`` and ``dde_bench.modeling``. The
models are the paper-size ones (``size_config("b32")``, ViLT-B/32) with random weights, NLVR2 head, seed 0.

Tolerances, stated once:

* CUDA-event timing: over a GPU-bound loop (8192x8192 fp32 matmuls, ~20 ms each), the events' sum is within
  ``EVENT_VS_LOOP_TOL`` (5%) of the loop's wall time up to its final synchronize, and the median event time within
  ``EVENT_VS_HOST_TOL`` (10%) of the mean of a host-timed loop with a synchronize at its end.
* allocator: ``max_memory_allocated`` above what was allocated before the pass grows strictly over batch 1, 8, 32,
  and at least 2x from 8 to 32 (4x the batch; activations alone would give 4x).
* NVML energy: positive over ~1 s and ~3 s of the same work, the longer window at least 1.5x the energy (3x the
  work), its mean board power between 1 W and 2000 W.
* bf16 / fp16 against fp32: the largest logit difference over a batch of 8 (teacher, student online, student
  cached) at most ``LOW_PRECISION_TOL`` of the largest fp32 logit: 5% for bf16, 1% for fp16. Measured on a 2-core
  CPU (same weights, batch 4): 1.6% bf16 and 0.3% fp16 at worst, so the margin is about 3x.
* speed: the cached student (``forward_cached`` against ``encode_images`` features) over the teacher, ratio of
  medians measured interleaved at batch 32, above 1 (the FLOP bound for NLVR2 is about 9.5x).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from dde_bench.bench.energy import EnergyMeter
from dde_bench.bench.memory import MemoryTracker
from dde_bench.bench.timing import measure, measure_interleaved
from dde_bench.modeling import Student, Teacher, size_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EVENT_VS_LOOP_TOL = 0.05
EVENT_VS_HOST_TOL = 0.10
LOW_PRECISION_TOL = {"bf16": 0.05, "fp16": 0.01}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEV = torch.device("cuda")


@pytest.fixture(scope="module")
def b32() -> SimpleNamespace:
    """The paper-size teacher and student (NLVR2), random weights, built on the GPU, in eval mode."""
    torch.manual_seed(0)
    cfg = size_config("b32")
    with torch.device(DEV):
        teacher = Teacher(cfg, "nlvr2").eval()
        student = Student(cfg, "nlvr2").eval()
    return SimpleNamespace(cfg=cfg, teacher=teacher, student=student)


def _inputs(cfg, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An NLVR2 batch at the paper's sizes: 40 text tokens, two 384x384 images per example, no padding."""
    g = torch.Generator().manual_seed(seed)
    t, s = cfg.max_text_len, cfg.image_size
    x = {
        "input_ids": torch.randint(1, cfg.vocab_size, (batch, t), generator=g),
        "attention_mask": torch.ones(batch, t, dtype=torch.long),
        "pixel_values": torch.randn(batch, 2, 3, s, s, generator=g),
        "pixel_mask": torch.ones(batch, 2, s, s, dtype=torch.long),
    }
    return {k: v.to(DEV) for k, v in x.items()}


def _matmul_work() -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    a = torch.randn(8192, 8192, device=DEV)
    return a, lambda: a @ a


def test_cuda_event_timing_agrees_with_wall_time(record_property) -> None:
    _, work = _matmul_work()
    n = 30
    m = measure(work, device=DEV, warmup_iters=3, warmup_s=0, min_iters=n, max_iters=n, min_time_s=0)
    assert m.timer == "cuda_event" and m.n == n and m.wall_s is not None
    loop_ratio = m.total_s / m.wall_s
    torch.cuda.synchronize(DEV)
    t0 = time.perf_counter()
    for _ in range(n):
        work()
    torch.cuda.synchronize(DEV)
    host_s = (time.perf_counter() - t0) / n
    host_ratio = m.median_s / host_s
    record_property("events_over_loop_wall", f"{loop_ratio:.3f}")
    record_property("event_median_over_host_mean", f"{host_ratio:.3f}")
    assert abs(loop_ratio - 1) < EVENT_VS_LOOP_TOL, (m.total_s, m.wall_s)
    assert abs(host_ratio - 1) < EVENT_VS_HOST_TOL, (m.median_s, host_s)


def test_max_memory_allocated_grows_with_batch_size(b32, record_property) -> None:
    extra: dict[int, float] = {}
    for bs in (1, 8, 32):
        x = _inputs(b32.cfg, bs)
        with torch.no_grad():
            b32.teacher(**x)  # warm-up: kernels, cuBLAS workspaces
            before_mb = torch.cuda.memory_allocated(DEV) / 1e6
            with MemoryTracker(DEV) as mem:
                b32.teacher(**x)
        peak = mem.report.cuda_max_allocated_mb
        assert peak is not None and mem.report.cuda_max_reserved_mb >= peak
        extra[bs] = peak - before_mb
        del x
    record_property("pass_mb_b1_b8_b32", " / ".join(f"{extra[b]:.1f}" for b in (1, 8, 32)))
    assert 0 < extra[1] < extra[8] < extra[32], extra
    assert extra[32] >= 2.0 * extra[8], extra


def test_nvml_memory_is_read(record_property) -> None:
    with MemoryTracker(DEV) as mem:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEV)
        del x
    rep = mem.report
    if rep.nvml_device_used_mb is None:
        pytest.skip("NVML memory not available: " + "; ".join(rep.notes))
    assert rep.cuda_max_reserved_mb is not None and rep.cuda_max_reserved_mb >= 256 * 2**20 / 1e6
    assert rep.nvml_device_used_mb >= rep.cuda_max_reserved_mb  # the device holds at least our reserve
    if rep.nvml_process_mb is not None:
        assert rep.nvml_process_mb >= rep.cuda_max_reserved_mb
        record_property("nvml_process_mb", f"{rep.nvml_process_mb:.0f}")
    else:
        record_property("nvml_process_mb", "n/a: " + "; ".join(rep.notes))


def test_nvml_energy_grows_with_the_window(record_property) -> None:
    _, work = _matmul_work()
    probe = measure(work, device=DEV, warmup_iters=3, warmup_s=0, min_iters=5, max_iters=5, min_time_s=0)
    n = max(5, math.ceil(1.0 / probe.median_s))  # about 1 s of GPU work
    reports = {}
    for k in (1, 3):
        meter = EnergyMeter(DEV)
        calls = k * n
        measure(
            work,
            device=DEV,
            warmup_iters=1,
            warmup_s=0,
            min_iters=calls,
            max_iters=calls,
            min_time_s=0,
            window=meter,
        )
        reports[k] = meter.report
    short, long = reports[1], reports[3]
    if short.joules is None or long.joules is None:
        pytest.skip(f"NVML energy not available: {short.reason or long.reason}")
    record_property("joules_1s_3s", f"{short.joules:.1f} / {long.joules:.1f}")
    record_property("watts", f"{long.watts:.0f}")
    assert short.joules > 0 and long.joules > 0
    assert long.duration_s > 2 * short.duration_s
    assert long.joules > 1.5 * short.joules, (short, long)
    assert 1 < long.watts < 2000


def _logits(teacher: Teacher, student: Student, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    feats = student.encode_images(x["pixel_values"], x["pixel_mask"])
    return {
        "teacher": teacher(**x),
        "student": student(**x),
        "student-cached": student.forward_cached(x["input_ids"], x["attention_mask"], feats),
    }


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_close_to_fp32(b32, dtype, record_property, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the reference is plain fp32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    dt = DTYPES[dtype]
    x = _inputs(b32.cfg, 8, seed=1)
    with torch.no_grad():
        ref = _logits(b32.teacher, b32.student, x)
        teacher, student = copy.deepcopy(b32.teacher).to(dt), copy.deepcopy(b32.student).to(dt)
        low = _logits(teacher, student, {**x, "pixel_values": x["pixel_values"].to(dt)})
    del teacher, student
    rel = {
        k: ((low[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref
    }  # largest difference over the largest fp32 logit
    record_property("relative_error", ", ".join(f"{k} {v:.4f}" for k, v in rel.items()))
    assert all(low[k].dtype == dt for k in low)
    assert all(v <= LOW_PRECISION_TOL[dtype] for v in rel.values()), rel


def test_cached_student_beats_teacher_b32(b32, record_property) -> None:
    x = _inputs(b32.cfg, 32, seed=2)
    with torch.no_grad():
        feats = b32.student.encode_images(x["pixel_values"], x["pixel_mask"])
        fns = {
            "teacher": lambda: b32.teacher(**x),
            "student-cached": lambda: b32.student.forward_cached(x["input_ids"], x["attention_mask"], feats),
        }
        ms = measure_interleaved(
            fns, device=DEV, items_per_call=32, warmup_iters=3, warmup_s=0, min_iters=10, min_time_s=0.5
        )
    speedup = ms["teacher"].median_s / ms["student-cached"].median_s
    record_property("teacher_ms", f"{ms['teacher'].median_s * 1e3:.2f}")
    record_property("student_cached_ms", f"{ms['student-cached'].median_s * 1e3:.2f}")
    record_property("speedup", f"{speedup:.2f}x")
    assert ms["teacher"].timer == "cuda_event"
    assert speedup > 1.0, speedup
