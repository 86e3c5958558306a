"""run_guarded: out-of-memory ends one sweep point with status "oom"; other errors propagate."""

from __future__ import annotations

import pytest
import torch

from dde_bench.bench.guard import is_oom, run_guarded


def raise_(exc: BaseException):
    def fn() -> None:
        raise exc

    return fn


def test_ok_returns_the_value() -> None:
    g = run_guarded(lambda: 42)
    assert g.ok and g.status == "ok" and g.value == 42 and g.message is None


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
def test_out_of_memory_becomes_status_oom(exc: BaseException) -> None:
    g = run_guarded(raise_(exc))
    assert g.status == "oom" and not g.ok and g.value is None
    assert g.message and type(exc).__name__ in g.message and "\n" not in g.message


def test_real_cpu_allocation_failure_is_oom() -> None:
    g = run_guarded(lambda: torch.empty(2**62, dtype=torch.uint8))
    assert g.status == "oom", g.message


def test_other_errors_propagate() -> None:
    with pytest.raises(ValueError):
        run_guarded(raise_(ValueError("bug")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_guarded(raise_(RuntimeError("shape mismatch")))
    assert not is_oom(RuntimeError("size mismatch"))
