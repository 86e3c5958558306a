"""Memory and energy trackers, NVML access: real CPU measurements, and no crash where NVML is missing."""

from __future__ import annotations

import time

import pytest
import torch

from dde_bench.bench import energy as energy_mod
from dde_bench.bench import nvml
from dde_bench.bench.energy import EnergyMeter, EnergyReport
from dde_bench.bench.memory import MemoryTracker
from dde_bench.bench.timing import measure

HAS_CUDA = torch.cuda.is_available()


def test_cpu_tracker_sees_a_200mb_tensor() -> None:
    with MemoryTracker("cpu") as mem:
        x = torch.ones(50_000_000)  # 200 MB, every page touched
        time.sleep(0.05)
        del x
    rep = mem.report
    assert rep.rss_growth_mb is not None and rep.rss_growth_mb > 180
    assert rep.rss_peak_mb is not None and rep.rss_baseline_mb is not None
    assert rep.rss_peak_mb >= rep.rss_baseline_mb + 180
    assert rep.rss_samples > 10
    row = rep.to_row()
    assert row["peak_mem_mb"] == rep.rss_growth_mb
    assert row["cuda_max_reserved_mb"] is None and row["nvml_device_used_mb"] is None


def test_cpu_tracker_small_pass_reports_small_growth() -> None:
    with MemoryTracker("cpu") as mem:
        torch.ones(10).sum()
    assert mem.report.rss_growth_mb is not None and mem.report.rss_growth_mb < 50


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without an NVIDIA driver")
def test_nvml_missing_gives_reasons_not_exceptions() -> None:
    nv, handle, reason = nvml.nvml_handle("cuda:0")
    assert nv is None and handle is None and "NVML" in str(reason)
    value, reason = nvml.nvml_call("cuda:0", "memory info", lambda nv, h: 1)
    assert value is None and reason


def test_nvml_for_cpu_device_is_not_applicable() -> None:
    nv, _, reason = nvml.nvml_handle("cpu")
    assert nv is None and "NVIDIA GPUs only" in str(reason)


def test_energy_on_cpu_is_none_with_reason() -> None:
    meter = EnergyMeter("cpu")
    m = measure(lambda: None, warmup_iters=0, warmup_s=0, min_iters=5, min_time_s=0, window=meter)
    rep = meter.report
    assert rep.joules is None and rep.per_item(m.items) is None and rep.watts is None
    assert "NVIDIA" in str(rep.reason)


@pytest.mark.skipif(HAS_CUDA, reason="simulates a CUDA device whose NVML is missing")
def test_energy_when_nvml_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    with EnergyMeter("cuda:0") as meter:
        pass
    assert meter.report.joules is None and "NVML" in str(meter.report.reason)


def test_energy_arithmetic_with_a_fake_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1_000_000, 1_250_000])  # mJ: 250 J over the window
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(energy_mod, "_energy_mj", lambda device: (next(readings), None))
    with EnergyMeter("cuda:0") as meter:
        pass
    assert meter.report.joules == pytest.approx(250.0)
    assert meter.report.per_item(1000) == pytest.approx(0.25)
    assert meter.report.note is not None  # a near-zero window is flagged as imprecise
    assert EnergyReport(device="cuda:0", joules=10.0, duration_s=2.0).watts == pytest.approx(5.0)


@pytest.mark.skipif(HAS_CUDA, reason="simulates a CUDA device whose NVML is missing")
def test_memory_tracker_nvml_failure_is_recorded() -> None:
    tracker = MemoryTracker("cuda:0")
    tracker._read_nvml()
    rep = tracker.report
    assert rep.nvml_device_used_mb is None and rep.nvml_process_mb is None
    assert any("NVML" in n for n in rep.notes)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_memory_and_energy() -> None:
    dev = torch.device("cuda")
    with MemoryTracker(dev) as mem:
        x = torch.ones(50_000_000, device=dev)  # 200 MB
        del x
    rep = mem.report
    assert rep.cuda_max_allocated_mb is not None and rep.cuda_max_allocated_mb >= 199
    assert rep.cuda_max_reserved_mb is not None and rep.cuda_max_reserved_mb >= rep.cuda_max_allocated_mb
    # NVML may be unavailable even with CUDA (containers): then a reason, else plausible numbers
    if rep.nvml_device_used_mb is not None:
        assert rep.nvml_device_used_mb >= rep.cuda_max_reserved_mb
    a = torch.randn(2048, 2048, device=dev)
    meter = EnergyMeter(dev)
    m = measure(
        lambda: a @ a, device=dev, warmup_iters=3, warmup_s=0, min_iters=20, min_time_s=0.5, window=meter
    )
    if meter.report.joules is not None:
        assert meter.report.joules > 0 and meter.report.per_item(m.items) > 0
    else:
        assert meter.report.reason
