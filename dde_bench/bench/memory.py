"""Peak memory of one pass, measured in a pass of its own (never while timing).

CUDA: ``synchronize``, ``reset_peak_memory_stats``, run, ``synchronize``, then ``max_memory_allocated``
(tensors) and ``max_memory_reserved`` (what the caching allocator holds); plus NVML's device-wide used
memory and this process's usage (matched by pid), read after the pass.

CPU (and host memory on CUDA): the peak resident set size during the pass. ``resource.getrusage``'s
``ru_maxrss`` is the *lifetime* peak of the process, so it cannot say what one pass used once anything
bigger ran before; instead a background thread samples ``/proc/self/statm`` about every millisecond from
entry to exit. A spike shorter than the sampling interval can be missed (and while the pass runs pure
Python without releasing the GIL, samples come every ~5 ms switch interval); the result is the peak growth
over the resident size at entry. Where ``/proc`` is missing (macOS), only the lifetime ``ru_maxrss`` is
reported and the growth reads None.

Usage::

    with MemoryTracker(device) as mem:
        fn()
    row.update(mem.report.to_row())
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch

from dde_bench.bench.nvml import nvml_call

__all__ = ["MemoryReport", "MemoryTracker", "RssSampler"]

MB = 1e6  # the schema's megabyte


@dataclass
class MemoryReport:
    """Memory of one pass, in MB (1e6 bytes); None where not measured (with the reason in ``notes``)."""

    device: str
    cuda_max_allocated_mb: float | None = None
    cuda_max_reserved_mb: float | None = None
    nvml_device_used_mb: float | None = None
    nvml_process_mb: float | None = None
    rss_baseline_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_growth_mb: float | None = None
    rss_samples: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mem_mb(self) -> float | None:
        """The schema's ``peak_mem_mb``: CUDA max allocated on a GPU, peak RSS growth on CPU."""
        return self.cuda_max_allocated_mb if self.device.startswith("cuda") else self.rss_growth_mb

    def to_row(self) -> dict[str, Any]:
        """The memory columns of a results row (see ``schema.COLUMNS``)."""
        return {
            "peak_mem_mb": self.peak_mem_mb,
            "cuda_max_reserved_mb": self.cuda_max_reserved_mb,
            "nvml_device_used_mb": self.nvml_device_used_mb,
            "nvml_process_mb": self.nvml_process_mb,
            "rss_peak_mb": self.rss_peak_mb,
        }


def _lifetime_maxrss_bytes() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS). Lifetime peak of the process only."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class RssSampler:
    """Samples this process's resident set size from ``/proc/self/statm`` in a daemon thread."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline_bytes: int | None = None
        self.peak_bytes: int | None = None
        self.samples = 0

    @property
    def available(self) -> bool:
        return os.path.exists("/proc/self/statm")

    def _read(self) -> int:
        assert self._fd is not None
        # statm: size resident shared text lib data dt (pages); pread re-reads without reopening.
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def _sample(self) -> None:
        v = self._read()
        self.samples += 1
        if self.peak_bytes is None or v > self.peak_bytes:
            self.peak_bytes = v

    def _run(self) -> None:
        wait = self._stop.wait
        while not wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.baseline_bytes = self._read()
        self.peak_bytes = self.baseline_bytes
        self.samples = 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fd is not None:
            self._sample()  # a last reading at exit
            os.close(self._fd)
            self._fd = None


class MemoryTracker:
    """Context manager measuring one pass's peak memory on ``device``; the result is in ``.report``."""

    def __init__(self, device: torch.device | str = "cpu", *, rss_interval_s: float = 0.001) -> None:
        self.device = torch.device(device)
        self.report = MemoryReport(device=str(self.device))
        self._rss = RssSampler(rss_interval_s)
        self._t0 = 0.0

    def __enter__(self) -> MemoryTracker:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._rss.available:
            self._rss.start()
        else:
            self.report.notes.append("no /proc/self/statm: RSS peak is the process's lifetime ru_maxrss")
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        rep = self.report
        try:
            if self.device.type == "cuda" and exc_type is None:
                torch.cuda.synchronize(self.device)
                rep.cuda_max_allocated_mb = torch.cuda.max_memory_allocated(self.device) / MB
                rep.cuda_max_reserved_mb = torch.cuda.max_memory_reserved(self.device) / MB
                self._read_nvml()
            elif self.device.type != "cuda":
                rep.notes.append("CUDA and NVML memory: n/a on CPU")
        finally:
            if self._rss.available:
                self._rss.stop()
                assert self._rss.baseline_bytes is not None and self._rss.peak_bytes is not None
                rep.rss_baseline_mb = self._rss.baseline_bytes / MB
                rep.rss_peak_mb = self._rss.peak_bytes / MB
                rep.rss_growth_mb = (self._rss.peak_bytes - self._rss.baseline_bytes) / MB
                rep.rss_samples = self._rss.samples
            else:
                rep.rss_peak_mb = _lifetime_maxrss_bytes() / MB

    def _read_nvml(self) -> None:
        """Device-wide used memory and this process's own, read after the pass (never raises).

        The caching allocator keeps what it reserved, so after the pass these include the pass's peak
        reserve plus the CUDA context (and, device-wide, any other process on the GPU).
        """
        rep = self.report
        used, err = nvml_call(self.device, "memory info", lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).used)
        if used is not None:
            rep.nvml_device_used_mb = used / MB
        else:
            rep.notes.append(str(err))
        pid = os.getpid()

        def own(nv: Any, h: Any) -> int | None:
            for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == pid:
                    return p.usedGpuMemory  # None when the driver withholds it
            return None

        mine, err = nvml_call(self.device, "running processes", own)
        if mine is not None:
            rep.nvml_process_mb = mine / MB
        elif err is not None:
            rep.notes.append(err)
        else:
            rep.notes.append(
                f"NVML does not list pid {pid} (another PID namespace, e.g. a container?): process memory n/a"
            )
