"""FLOP counting and model FLOP utilisation."""

from __future__ import annotations

import pytest
import torch

from dde_bench.bench.flops import count_flops, flops_per_item, gpu_key, model_flop_utilisation, peak_flops


def test_linear_flops_are_2_b_in_out() -> None:
    b, d_in, d_out = 4, 32, 16
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(b, d_in)
    with torch.no_grad():
        assert count_flops(lambda: layer(x)) == 2 * b * d_in * d_out
        assert flops_per_item(lambda: layer(x), b) == 2 * d_in * d_out


def test_gpu_names_map_to_the_right_peak() -> None:
    assert gpu_key("NVIDIA H200") == "H200 SXM"
    assert gpu_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert gpu_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert gpu_key("NVIDIA A100-SXM4-80GB") == "A100"
    assert gpu_key("NVIDIA L4") == "L4"
    assert gpu_key("NVIDIA L40S") == "L40S"
    assert gpu_key("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert gpu_key("NVIDIA A10") == "A10"
    assert gpu_key("NVIDIA A10G") is None
    assert peak_flops("NVIDIA H200", torch.bfloat16) == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H200", torch.float32, tf32=False) == pytest.approx(67e12)
    assert peak_flops("NVIDIA H200", "fp32", tf32=True) == pytest.approx(494.7e12)
    assert peak_flops("Tesla T4", torch.bfloat16) is None  # no BF16 on Turing
    assert peak_flops("Some Future GPU", torch.float16) is None


def test_mfu() -> None:
    assert model_flop_utilisation(1e9, 1000.0, "cpu", torch.float32) is None
    assert model_flop_utilisation(None, 1000.0, "cuda", torch.float32, gpu_name="NVIDIA H200") is None
    mfu = model_flop_utilisation(1e9, 98_940.0, "cuda", torch.bfloat16, gpu_name="NVIDIA H200")
    assert mfu == pytest.approx(0.1)


def test_gemm_peak_size_shrinks_to_the_time_budget() -> None:
    """An emulated dtype must not cost minutes: the measured size halves until one product fits the budget."""
    from dde_bench.bench.flops import measure_gemm_peak

    big = measure_gemm_peak("cpu", torch.float32, n=512, calls=2, call_budget_s=60.0)
    assert big["shape"] == [512, 512, 512] and big["flops_per_s"] > 0
    small = measure_gemm_peak("cpu", torch.float32, n=2048, calls=2, call_budget_s=1e-9)
    assert small["shape"] == [256, 256, 256]  # the probe size is the floor
    assert "256x256" in small["method"]


def test_native_bf16_follows_the_cpu_flags(monkeypatch) -> None:
    from dde_bench import env
    from dde_bench.bench.context import emulated_dtype_notes

    monkeypatch.setattr(env, "cpu_features", lambda: ["avx2", "fma"])
    assert env.native_bf16("cpu") is False
    note = emulated_dtype_notes(["fp32", "bf16"], torch.device("cpu"))
    assert set(note) == {"bf16"} and "emulated" in note["bf16"]
    assert emulated_dtype_notes(["fp32"], torch.device("cpu")) == {}
    monkeypatch.setattr(env, "cpu_features", lambda: ["avx2", "avx512f", "avx512_bf16"])
    assert env.native_bf16("cpu") is True
    assert emulated_dtype_notes(["bf16"], torch.device("cpu")) == {}
    monkeypatch.setattr(env, "cpu_features", lambda: [])
    assert env.native_bf16("cpu") is None  # cannot tell: no note rather than a wrong one
    assert emulated_dtype_notes(["bf16"], torch.device("cpu")) == {}
