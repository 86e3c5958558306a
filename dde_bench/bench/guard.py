"""Out of memory ends one sweep point, not the sweep: recognising it (``is_oom``) and freeing after it.

The harness's scenarios catch the exception of a sweep point themselves and call these two; the CLI's one
guarded entry for every command is ``dde_bench.cli.main``.
"""

from __future__ import annotations

import gc

import torch

__all__ = ["is_oom", "free_memory"]

# Messages of CPU allocation failures that surface as RuntimeError (c10's DefaultCPUAllocator and friends).
_CPU_OOM_MARKERS = ("not enough memory", "out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors, MemoryError, and CPU allocator failures raised as RuntimeError."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _CPU_OOM_MARKERS)


def free_memory() -> None:
    """Collect garbage and, if CUDA is initialised, hand cached blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
