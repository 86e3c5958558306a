"""Two CPU processes on gloo under torch.distributed.run: a few steps, rank 0 writes the checkpoint."""

from __future__ import annotations

import json

import pytest

from dde_bench.training.recipes import run_stage
from dde_bench.training.trainer import OptimConfig, TrainConfig

SUITE = {
    "name": "nlvr2-ddp",
    "task": "nlvr2",
    "eval_split": "dev",
    "data": {
        "source": "synthetic",
        "synth": {"seed": 1, "train": 32, "dev": 8, "test1": 4, "families": ["exist"]},
    },
}


@pytest.mark.slow
def test_two_process_gloo_smoke(tmp_path):
    out = tmp_path / "ddp-teacher"
    cfg = TrainConfig(
        kind="teacher",
        suite=SUITE,
        out=str(out),
        cache_root=str(tmp_path / "cache"),
        steps=3,
        batch_size=4,
        log_every=1,
        progress=False,
        device="cpu",
        threads=1,
        optim=OptimConfig(lr=1e-3),
    )
    run_stage(cfg, nproc=2)
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["world_size"] == 2
    assert meta["training"]["steps"] == 3
    assert (out / "metrics.csv").is_file()
