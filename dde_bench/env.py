"""The environment a result was measured in: versions, device, driver, CPU, threads, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata

import torch

from dde_bench.errors import DeviceUnavailable
from dde_bench.resources import REPO_ROOT


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the instruction-set features that decide which low-precision kernels a CPU runs natively
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


@lru_cache(maxsize=1)
def cpu_features() -> list[str]:
    """Which of :data:`CPU_FEATURES` this CPU has (from /proc/cpuinfo; empty where that is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in CPU_FEATURES if name in flags]
    except OSError:
        pass
    return []


def native_bf16(device: torch.device | str) -> bool | None:
    """Does ``device`` compute bf16 matmuls in hardware? CUDA: compute capability 8.0 or newer; CPU:
    avx512_bf16 or AMX (without them torch emulates bf16 in software, many times slower than fp32, so a bf16 row
    measures the emulation, not a bf16 deployment). None where it cannot be told (no /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    feats = cpu_features()
    if not feats:
        return None
    return "avx512_bf16" in feats or "amx_bf16" in feats


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is a user error, not a crash."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {device} was asked for, but torch sees no CUDA device here")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise DeviceUnavailable(f"unknown device {device!r}; use auto, cpu or cuda[:N]")


def nvidia_driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML absent or unusable: not an error on a CPU machine
        return "n/a"


def environment(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "dde_bench": _version("dde-bench"),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to
        "native_bf16": native_bf16(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda or "n/a",
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["driver"] = nvidia_driver()
    else:
        info["gpu"] = "n/a"
        info["driver"] = "n/a"
    return info
