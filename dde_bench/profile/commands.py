"""`dde-bench profile`: a thin command over dde_bench.profile.profiler."""

from __future__ import annotations

from pathlib import Path

import typer


def profile_cmd(
    suite: str = typer.Option(
        "nlvr2", "--suite", "-s", help="suite name (see `dde-bench list`) or YAML file"
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    model: str = typer.Option(..., "--model", "-m", help="model card, e.g. tiny-student, vilt-b32-teacher"),
    scenario: str = typer.Option(
        "online", help="online (raw images every call) or cached (student: text tower + fusion + head)"
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="batch size of the profiled call"),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, or cuda[:N]"),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16 (fp16 on CUDA)"),
    steps: int = typer.Option(5, help="recorded steps, after 1 wait and 1 warm-up step"),
    memory: bool = typer.Option(
        False, "--memory", help="profile memory per operator; on CUDA also write an allocator snapshot"
    ),
    out: Path = typer.Option(
        None, help="profile folder (default: ./reports/profiles/<suite>-<model>-<scenario>-b<batch>-<time>)"
    ),
    top: int = typer.Option(15, help="operators shown in the printed table (top_ops.csv has all)"),
    seed: int = typer.Option(0, help="seed for inputs and random weights"),
) -> None:
    """Profile one model in one scenario with torch.profiler: a TensorBoard trace, a Perfetto trace, the top
    operators and each stage's share of the step.

    Models and inputs are the harness's (`dde-bench run`). Open OUT/trace.json in https://ui.perfetto.dev, or
    run `tensorboard --logdir OUT/tb` (PyTorch profiler plugin).
    """
    from dde_bench import paths
    from dde_bench.profile.profiler import ProfileConfig, run_profile
    from dde_bench.training import trained_resolver

    run_profile(
        ProfileConfig(
            suite=suite,
            data_dir=data_dir,
            model=model,
            scenario=scenario,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            steps=steps,
            memory=memory,
            out=out,
            top=top,
            seed=seed,
        ),
        resolve_trained=trained_resolver(paths.cache_root()),
    )
