"""FLOPs of one call and model FLOP utilisation (MFU) against the device's dense peak.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplies, convolutions and
attention kernels, counted as 2 x multiply-accumulates (a Linear on a [B, in] input: 2*B*in*out).
Element-wise work (LayerNorm, GELU, softmax, bias adds) is not counted: for a transformer it is a few
percent, which MFU papers also leave out.

MFU = achieved FLOP/s / the device's peak *dense* FLOP/s for the dtype the matmuls run in; None where the
peak is unknown (every CPU, unlisted GPUs): "n/a", never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_flops",
    "flops_per_item",
    "peak_flops",
    "model_flop_utilisation",
    "measure_gemm_peak",
    "PEAK_TFLOPS",
]

# Peak dense TFLOP/s per GPU and matmul precision. Sources: NVIDIA's public datasheets; figures quoted
# "with sparsity" are halved to give dense ones.
#   H100 SXM5 / PCIe / NVL: "NVIDIA H100 Tensor Core GPU" datasheet (2023).
#   H200 SXM / NVL: "NVIDIA H200 Tensor Core GPU" datasheet (2024) (same SM count and clocks as H100 SXM).
#   A100 SXM4 / PCIe (40 and 80 GB): "NVIDIA A100 Tensor Core GPU" datasheet (2021).
#   L4: "NVIDIA L4 Tensor Core GPU" datasheet (2023). L40S: "NVIDIA L40S" datasheet (2023).
#   A10: "NVIDIA A10 Tensor Core GPU" datasheet (2021).
#   RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper v2.1, appendix table (FP16/BF16 tensor with FP32
#     accumulate, which is what PyTorch uses; GeForce runs FP32 accumulate at half the FP16-accumulate rate).
#   V100 SXM2 / PCIe: "NVIDIA Tesla V100" datasheet (2018); T4: "NVIDIA T4" datasheet (2019). No BF16.
# fp32 = plain FP32 (CUDA cores, PyTorch's default for matmuls); tf32 = TF32 tensor cores, used for fp32
# matmuls when torch.set_float32_matmul_precision("high" or "medium") or allow_tf32 is set.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
    "V100 SXM2": {"fp32": 15.7, "fp16": 125.0},
    "V100 PCIe": {"fp32": 14.0, "fp16": 112.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
}

# torch.cuda.get_device_name() strings -> table key; first match wins, so specific names come first.
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"H200\s*NVL", "H200 NVL"),
    (r"H200", "H200 SXM"),
    (r"H100.*NVL", "H100 NVL"),
    (r"H100.*PCI[Ee]", "H100 PCIe"),
    (r"H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3"
    (r"A100", "A100"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bA10\b", "A10"),  # not A10G (a different, AWS-only part), not A100
    (r"RTX 4090", "RTX 4090"),
    (r"V100.*SXM", "V100 SXM2"),
    (r"V100.*PCI", "V100 PCIe"),
    (r"\bT4\b", "T4"),
]

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn()`` (runs it once, under ``FlopCounterMode(display=False)``)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_item(fn: Callable[[], Any], items_per_call: int) -> float:
    """FLOPs of one call divided by the items it processes."""
    if items_per_call <= 0:
        raise ValueError(f"items_per_call must be positive, got {items_per_call}")
    return count_flops(fn) / items_per_call


def gpu_key(gpu_name: str) -> str | None:
    """The ``PEAK_TFLOPS`` key for a device name, or None if the GPU is not listed."""
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return key
    return None


def _tf32_enabled() -> bool:
    return torch.get_float32_matmul_precision() != "highest" or bool(torch.backends.cuda.matmul.allow_tf32)


def peak_flops(gpu_name: str, dtype: torch.dtype | str, *, tf32: bool | None = None) -> float | None:
    """Peak dense FLOP/s of a GPU (by ``torch.cuda.get_device_name``) for matmuls in ``dtype``.

    ``dtype``: a torch dtype or "fp32" / "tf32" / "bf16" / "fp16". For fp32, ``tf32=None`` follows
    torch's current setting. None when the GPU or dtype is not in the table.
    """
    key = gpu_key(gpu_name)
    if key is None:
        return None
    name = _DTYPE_NAMES.get(dtype) if isinstance(dtype, torch.dtype) else str(dtype).lower()
    if name == "fp32" and (tf32 if tf32 is not None else _tf32_enabled()):
        name = "tf32"
    tflops = PEAK_TFLOPS[key].get(name or "")
    return tflops * 1e12 if tflops is not None else None


def model_flop_utilisation(
    flops_per_item: float | None,
    items_per_s: float | None,
    device: torch.device | str,
    dtype: torch.dtype | str,
    *,
    gpu_name: str | None = None,
) -> float | None:
    """Achieved FLOP/s (``flops_per_item * items_per_s``) over the device's peak; None where unknown.

    ``gpu_name`` defaults to ``torch.cuda.get_device_name(device)``; on CPU the result is always None.
    """
    dev = torch.device(device)
    if flops_per_item is None or items_per_s is None or dev.type != "cuda":
        return None
    if gpu_name is None:
        gpu_name = torch.cuda.get_device_name(dev)
    peak = peak_flops(gpu_name, dtype)
    if peak is None:
        return None
    return flops_per_item * items_per_s / peak


def measure_gemm_peak(
    device: torch.device | str, dtype: torch.dtype, n: int = 2048, calls: int = 5, call_budget_s: float = 2.0
) -> dict:
    """This device's dense matmul rate for ``dtype``, measured: the best of ``calls`` timed ``n x n @ n x n``
    products (2 n^3 FLOPs each) after one warm-up, at the current thread count; CUDA timed with events around
    each call. What a row's ``gemm_peak_share`` divides by: the rate this machine reaches on the easiest dense
    work, not a datasheet figure (which is in ``flop_utilisation`` on listed GPUs).

    ``n`` is the largest size measured: a 256^3 product is timed first, and ``n`` halves (down to 256) until one
    product is estimated to take at most ``call_budget_s``, so a dtype the device only emulates (bf16 on a CPU
    without avx512_bf16: ~100x slower) costs seconds, not minutes. The size used is recorded."""
    from dde_bench.bench import timing

    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)

    def timed(size: int, k: int) -> timing.Measurement:
        a = torch.randn(size, size, generator=g).to(dev, dtype)
        b = torch.randn(size, size, generator=g).to(dev, dtype)
        return timing.measure(
            lambda: a @ b,
            device=dev,
            warmup_iters=1,
            warmup_s=0.0,
            min_iters=k,
            min_time_s=0.0,
            max_time_s=30.0,
        )

    probe = 256
    rate = 2 * probe**3 / min(timed(probe, 2).samples_s)
    while n > probe and 2 * n**3 / rate > call_budget_s:
        n //= 2
    m = timed(n, calls)
    best = min(m.samples_s)
    return {
        "flops_per_s": 2 * n**3 / best,
        "shape": [n, n, n],
        "calls": len(m.samples_s),
        "threads": torch.get_num_threads(),
        "method": f"best of {len(m.samples_s)} timed {n}x{n} @ {n}x{n} matmuls after 1 warm-up",
    }
