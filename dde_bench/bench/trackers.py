"""Memory and energy of one measured call, in passes of their own (never inside the timed window).

:func:`memory_energy` is what every scenario adds to a row: the allocator / NVML / RSS figures of
:class:`~dde_bench.bench.memory.MemoryTracker`, the peak of live tensors (:func:`tensor_memory`), and on NVIDIA
GPUs the energy per item over a short timed window (:class:`~dde_bench.bench.energy.EnergyMeter`). With
``count_flops=True`` the same single instrumented call also counts the call's FLOPs (torch's FlopCounterMode),
so a slow paper-size call runs once for all three, not three times.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch.utils.flop_counter import FlopCounterMode

from dde_bench.bench import timing
from dde_bench.bench.energy import EnergyMeter
from dde_bench.bench.memory import MemoryTracker


def _mem_tracker(modules: list):
    """torch's MemTracker over ``modules`` (weights) and everything the call allocates; None where absent."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # a private torch API: absent in some builds
        return None
    mt = MemTracker()
    for mod in modules:
        mt.track_external(mod)
    return mt


def _tensor_row(mt, device) -> dict:
    empty = {"tensor_peak_mb": None, "weights_mb": None, "activation_peak_mb": None}
    if mt is None:
        return empty
    from torch.distributed._tools.mem_tracker import _MemRefType

    peaks = mt.get_tracker_snapshot("peak")
    dev = torch.device(device)
    snap = next((v for k, v in peaks.items() if torch.device(k).type == dev.type), {})
    if not snap:
        return empty
    mb = 1e6
    return {
        "tensor_peak_mb": snap.get("Total", 0) / mb,
        "weights_mb": (snap.get(_MemRefType.PARAM, 0) + snap.get(_MemRefType.BUFFER, 0)) / mb,
        "activation_peak_mb": (snap.get(_MemRefType.ACT, 0) + snap.get(_MemRefType.TEMP, 0)) / mb,
    }


def tensor_memory(fn, modules: list, device) -> dict:
    """Peak bytes of live tensors during one call (weights of ``modules`` + activations and temporaries), tracked
    per tensor by torch's MemTracker, so the figure does not depend on what the allocator keeps cached.
    On CPU this is the row's ``peak_mem_mb``; on CUDA it is reported beside max_memory_allocated."""
    mt = _mem_tracker(modules)
    with mt if mt is not None else ExitStack():
        fn()
    return _tensor_row(mt, device)


def memory_energy(
    fn, device, batch: int, modules: list, track_tensors: bool = True, count_flops: bool = False
) -> dict:
    """Memory (one instrumented call, its own pass, never timed) and energy (a short timed window, NVIDIA only) of
    ``fn``; with ``count_flops`` the row also gets ``flops_per_call`` from that same call.

    ``track_tensors=False`` for compiled calls: MemTracker's dispatch mode would retrace the compiled graph and
    measure that instead of the call (FLOPs are not counted on them either, for the same reason)."""
    device = torch.device(device)
    mt = _mem_tracker(modules) if track_tensors else None
    counter = FlopCounterMode(display=False) if count_flops else None
    with MemoryTracker(device) as mem, ExitStack() as modes:
        if counter is not None:
            modes.enter_context(counter)
        if mt is not None:
            modes.enter_context(mt)
        fn()
    row = mem.report.to_row()
    row.update(_tensor_row(mt, device))
    if counter is not None:
        row["flops_per_call"] = int(counter.get_total_flops())
    if device.type == "cpu":
        # RSS barely moves once the allocator holds its pages; the tensor peak says what the call needs
        # (n/a where it could not be tracked)
        row["peak_mem_mb"] = row["tensor_peak_mb"]
    meter = EnergyMeter(device)
    if device.type == "cuda":
        m = timing.measure(
            fn, device=device, items_per_call=batch, warmup_iters=1, min_iters=5, min_time_s=1.0, window=meter
        )
        row["energy_j_per_item"] = meter.report.per_item(m.items)
    else:
        with meter:
            pass
        row["energy_j_per_item"] = None
    row["energy_note"] = meter.report.reason or meter.report.note
    return row
