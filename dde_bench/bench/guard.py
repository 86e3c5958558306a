"""Running one sweep point so that running out of memory ends that point, not the sweep."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

__all__ = ["Guarded", "run_guarded", "is_oom", "free_memory"]

T = TypeVar("T")

# Messages of CPU allocation failures that surface as RuntimeError (c10's DefaultCPUAllocator and friends).
_CPU_OOM_MARKERS = ("not enough memory", "out of memory", "can't allocate memory", "cannot allocate memory")


@dataclass
class Guarded(Generic[T]):
    """Outcome of ``run_guarded``: status "ok" with ``value``, or "oom" with the error ``message``."""

    status: str  # ok | oom
    value: T | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


def run_guarded(fn: Callable[[], T]) -> Guarded[T]:
    """Call ``fn()``; on out-of-memory return status "oom" with the message, after freeing memory.

    The exception (and the frames and tensors it references) is dropped before freeing, so the memory the
    failed attempt held is actually released. Any other exception propagates: it is a bug, not a limit.
    """
    try:
        return Guarded(status="ok", value=fn())
    except (RuntimeError, MemoryError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_oom(e):
            raise
        text = str(e).strip()
        message = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
    free_memory()
    return Guarded(status="oom", message=message)
