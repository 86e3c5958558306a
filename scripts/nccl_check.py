"""Two-process nccl check, launched by scripts/gpu_check.py as

    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/nccl_check.py

Each rank takes GPU LOCAL_RANK and fills a 64 MiB tensor with rank + 1; after ``all_reduce`` (sum) every element
must equal 1 + 2 + ... + world, and a ``broadcast`` from rank 0 must reach every rank. Rank 0 prints one line
with the all_reduce time (CUDA events, median of 5 after one warm-up) and its bus bandwidth; any mismatch
exits non-zero.
"""

from __future__ import annotations

import os
import statistics
import sys

import torch
import torch.distributed as dist

NUMEL = 16 * 2**20  # 64 MiB of float32


def main() -> int:
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank)
    dist.init_process_group("nccl", device_id=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    expected = world * (world + 1) / 2
    x = torch.full((NUMEL,), float(rank + 1), device=dev)
    dist.all_reduce(x)
    torch.cuda.synchronize(dev)
    ok = bool((x == expected).all())
    y = torch.full((1024,), 7.0 if rank == 0 else -1.0, device=dev)
    dist.broadcast(y, src=0)
    ok = ok and bool((y == 7.0).all())
    times = []
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dist.all_reduce(x)
        end.record()
        torch.cuda.synchronize(dev)
        times.append(start.elapsed_time(end) / 1e3)
    median_s = statistics.median(times[1:])
    flags = torch.tensor([1 if ok else 0], device=dev)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    all_ok = bool(flags.item())
    if rank == 0:
        nbytes = NUMEL * 4
        bus_gbs = 2 * (world - 1) / world * nbytes / median_s / 1e9
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(world))
        verdict = "ok" if all_ok else "MISMATCH"
        print(
            f"nccl {verdict}: world {world} ({names}), all_reduce of {nbytes / 2**20:.0f} MiB "
            f"{median_s * 1e3:.2f} ms, bus bandwidth {bus_gbs:.1f} GB/s; broadcast checked"
        )
    dist.destroy_process_group()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
