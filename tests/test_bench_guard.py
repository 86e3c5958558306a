"""is_oom: out-of-memory (CUDA, MemoryError, CPU allocator failures) ends one sweep point; other errors do not."""

from __future__ import annotations

import pytest
import torch

from dde_bench.bench.guard import free_memory, is_oom


@pytest.mark.parametrize(
    "exc",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried ..."
        ),
        MemoryError(),
    ],
)
def test_out_of_memory_is_recognised(exc: BaseException) -> None:
    assert is_oom(exc)


def test_real_cpu_allocation_failure_is_oom() -> None:
    with pytest.raises((RuntimeError, MemoryError)) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(info.value)
    free_memory()  # no CUDA here, or CUDA not initialised: collects garbage only


def test_other_errors_are_not_oom() -> None:
    assert not is_oom(RuntimeError("size mismatch"))
    assert not is_oom(ValueError("out of memory"))  # only RuntimeError carries allocator messages
