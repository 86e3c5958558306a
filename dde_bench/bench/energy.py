"""GPU energy of a measured window from NVML's cumulative energy counter.

``nvmlDeviceGetTotalEnergyConsumption`` returns the millijoules the board has used since the driver loaded
(Volta and newer). The difference across the window, synchronised at exit, is the window's energy: the
whole board's, so idle power and other tenants are included, and the counter updates every few tens of
milliseconds, so windows shorter than about a second are imprecise (``notes`` says so).
On CPU, or wherever NVML raises, the result is None with the reason, never an exception.

Usage, covering exactly the measured calls (``measure`` enters its ``window`` after the warm-up)::

    meter = EnergyMeter(device)
    m = measure(fn, device=device, items_per_call=bs, window=meter)
    row["energy_j_per_item"] = meter.report.per_item(m.items)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

import torch

from dde_bench.bench.nvml import nvml_call

__all__ = ["EnergyReport", "EnergyMeter"]

SHORT_WINDOW_S = 1.0


@dataclass
class EnergyReport:
    """Energy of one window in joules; None with ``reason`` when not measured."""

    device: str
    joules: float | None = None
    duration_s: float | None = None
    reason: str | None = None  # why joules is None
    note: str | None = None  # caveat on a measured value

    @property
    def watts(self) -> float | None:
        """Average board power over the window."""
        if self.joules is None or not self.duration_s:
            return None
        return self.joules / self.duration_s

    def per_item(self, items: int) -> float | None:
        """Joules per item over the window, or None when energy was not measured."""
        if self.joules is None or items <= 0:
            return None
        return self.joules / items


def _energy_mj(device: torch.device) -> tuple[int | None, str | None]:
    return nvml_call(device, "total energy", lambda nv, h: int(nv.nvmlDeviceGetTotalEnergyConsumption(h)))


class EnergyMeter:
    """Context manager: NVML energy counter difference across the ``with`` block; see ``.report``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.report = EnergyReport(device=str(self.device))
        self._start_mj: int | None = None
        self._t0 = 0.0

    def __enter__(self) -> EnergyMeter:
        self.report = EnergyReport(device=str(self.device))
        if self.device.type != "cuda":
            self.report.reason = f"energy is measured on NVIDIA GPUs only (device {self.device})"
            return self
        torch.cuda.synchronize(self.device)  # earlier work must not be billed to this window
        self._start_mj, err = _energy_mj(self.device)
        if self._start_mj is None:
            self.report.reason = err
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.device.type != "cuda" or self._start_mj is None:
            return
        torch.cuda.synchronize(self.device)
        end_mj, err = _energy_mj(self.device)
        duration = time.perf_counter() - self._t0
        self.report.duration_s = duration
        if end_mj is None:
            self.report.reason = err
            return
        self.report.joules = (end_mj - self._start_mj) / 1e3
        if duration < SHORT_WINDOW_S:
            self.report.note = (
                f"window of {duration:.3f} s is short for NVML's energy counter (updates every ~tens of ms)"
            )
