"""NVML access shared by the memory and energy trackers: one init per process, never a crash.

NVML numbers GPUs in PCI bus order; CUDA, by default, fastest first. Importing this module sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless the user chose otherwise (it only takes effect if CUDA is not yet
initialised), and the torch-to-NVML mapping goes through the PCI bus id torch reports for the device, so
the two agree even under ``CUDA_VISIBLE_DEVICES`` or another order. Every failure (library missing, no
driver, call not supported) comes back as a reason string, never as an exception.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["nvml_handle", "nvml_call", "pci_bus_id"]

os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

_state: dict[str, Any] = {"init": None, "error": None}


def _init() -> tuple[Any, str | None]:
    """Import and initialise pynvml once; return (module, None) or (None, reason)."""
    if _state["init"] is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _state["init"] = pynvml
        except Exception as e:  # ImportError, pynvml.NVMLError (library not found, no driver, ...)
            _state["init"] = False
            _state["error"] = f"NVML not available: {type(e).__name__}: {e}"
    if _state["init"] is False:
        return None, _state["error"]
    return _state["init"], None


def pci_bus_id(index: int) -> str | None:
    """The PCI bus id (``dddd:bb:dd.0``) torch reports for CUDA device ``index``, or None if unknown."""
    try:
        props = torch.cuda.get_device_properties(index)
        return f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    except (AttributeError, RuntimeError, AssertionError):
        return None


def _nvml_index_fallback(index: int) -> int:
    """Without a bus id: map through CUDA_VISIBLE_DEVICES when it lists plain indices, else same index."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        if index < len(parts) and parts[index].isdigit():
            return int(parts[index])
    return index


def nvml_handle(device: torch.device | str) -> tuple[Any, Any, str | None]:
    """``(pynvml, handle, None)`` for a CUDA device, or ``(None, None, reason)``."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None, None, f"NVML covers NVIDIA GPUs only (device {dev})"
    nv, err = _init()
    if nv is None:
        return None, None, err
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    try:
        bus = pci_bus_id(index)
        if bus is not None:
            return nv, nv.nvmlDeviceGetHandleByPciBusId(bus), None
        return nv, nv.nvmlDeviceGetHandleByIndex(_nvml_index_fallback(index)), None
    except Exception as e:  # pynvml.NVMLError and friends
        return None, None, f"NVML has no handle for {dev}: {type(e).__name__}: {e}"


def nvml_call(device: torch.device | str, what: str, call: Any) -> tuple[Any, str | None]:
    """Run ``call(pynvml, handle)``; return ``(value, None)`` or ``(None, reason)``, never raising."""
    nv, handle, err = nvml_handle(device)
    if nv is None:
        return None, err
    try:
        return call(nv, handle), None
    except Exception as e:  # NVMLError_NotSupported, NVMLError_NoPermission, ...
        return None, f"NVML {what} failed: {type(e).__name__}: {e}"
