"""`dde-bench profile`: traces for TensorBoard and Perfetto, the operator table and the stage split.

Tiny random-weight models (temporary model cards) on a small synthetic nlvr2 suite in a temporary cache."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from dde_bench.errors import UserError
from dde_bench.profile.profiler import ProfileConfig, run_profile, stage_names

ROOT = Path(__file__).resolve().parents[1]
SUITE = """name: nlvr2
task: nlvr2
data:
  source: synthetic
  synth: {seed: 0, train: 40, dev: 16, test1: 16}
eval_split: dev
models: [prof-teacher, prof-student]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    (root / "suites").mkdir()
    (root / "models").mkdir()
    (root / "suites" / "nlvr2.yaml").write_text(SUITE)
    for kind in ("teacher", "student"):
        (root / "models" / f"prof-{kind}.yaml").write_text(f"kind: {kind}\nsize: tiny\nweights: random\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("DDE_BENCH_SUITES", str(root / "suites"))
    mp.setenv("DDE_BENCH_MODELS", str(root / "models"))
    yield root
    mp.undo()


def _profile(world: Path, model: str, scenario: str, **kw):
    opts = dict(batch_size=2, steps=2, device="cpu", out=world / "out" / f"{model}-{scenario}")
    cfg = ProfileConfig(
        suite="nlvr2", model=model, scenario=scenario, cache_root=world / "cache", **{**opts, **kw}
    )
    return run_profile(cfg, Console(width=140, record=True, file=open(os.devnull, "w")))  # noqa: SIM115


@pytest.fixture(scope="module")
def online(world):
    return _profile(world, "prof-student", "online", memory=True)


@pytest.fixture(scope="module")
def cached(world):
    return _profile(world, "prof-student", "cached")


def _trace_names(path: Path) -> set[str]:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    return {e.get("name") for e in trace["traceEvents"]}


def test_traces_for_perfetto_and_tensorboard(online):
    names = _trace_names(online.trace)
    assert {"student.text_tower", "student.image_tower", "student.fusion_head"} <= names
    tb = list(online.tb_dir.glob("*.pt.trace.json"))
    assert len(tb) == 1
    assert "student.text_tower" in _trace_names(tb[0])
    assert (online.out / "profile.json").is_file()


def test_top_ops_csv(online):
    df = pd.read_csv(online.out / "top_ops.csv")
    assert len(df) > 5
    expected = {"name", "calls", "self_cpu_ms", "self_cpu_pct", "cpu_total_ms", "flops", "cpu_mem_bytes"}
    assert expected <= set(df.columns)
    assert "aten::addmm" in set(df["name"]) or "aten::linear" in set(df["name"])
    assert df["flops"].sum() > 0  # with_flops counts the matrix products
    assert df["self_cpu_ms"].is_monotonic_decreasing
    assert not df["name"].str.startswith("ProfilerStep").any()
    assert df["cpu_mem_bytes"].notna().all()  # --memory


def test_stages_online_student(online):
    df = pd.read_csv(online.out / "stages.csv")
    stages = list(df["stage"])
    assert stages == ["student.image_tower", "student.text_tower", "student.fusion_head", "other", "step"]
    step = df.set_index("stage").loc["step"]
    assert step["cpu_ms_per_step"] > 0 and step["cpu_share"] == pytest.approx(1.0)
    named = df[df["stage"].str.startswith("student.")]
    assert (named["cpu_ms_per_step"] > 0).all()
    assert (named["calls_per_step"] == 1).all()
    assert named["cpu_share"].sum() <= 1.0 + 1e-9


def test_stages_cached_student_skip_image_tower(cached):
    stages = list(pd.read_csv(cached.out / "stages.csv")["stage"])
    assert stages == ["student.text_tower", "student.fusion_head", "other", "step"]
    names = _trace_names(cached.trace)
    assert "student.text_tower" in names and "student.image_tower" not in names
    df = pd.read_csv(cached.out / "top_ops.csv")
    assert df["cpu_mem_bytes"].isna().all()  # no --memory


def test_teacher_stages(world):
    res = _profile(world, "prof-teacher", "cached", steps=1)
    assert list(res.stages["stage"]) == ["teacher.joint", "teacher.head", "other", "step"]
    assert {"teacher.joint", "teacher.head"} <= _trace_names(res.trace)


def test_stage_names():
    assert stage_names("student", "cached") == ("student.text_tower", "student.fusion_head")
    assert stage_names("teacher", "online") == ("teacher.joint", "teacher.head")
    assert stage_names("hf-vilt", "online") == ()


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"scenario": "gallery"}, "unknown scenario 'gallery'"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"suite": "nope"}, "unknown suite 'nope'"),
        ({"batch_size": 0}, "--batch-size must be positive"),
        ({"dtype": "fp16"}, "fp16 is a CUDA dtype"),
    ],
)
def test_bad_inputs_are_user_errors(world, kw, needle):
    base = dict(
        suite="nlvr2", model="prof-student", scenario="online", device="cpu", cache_root=world / "cache"
    )
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        run_profile(ProfileConfig(**{**base, **kw}), Console(file=open(os.devnull, "w")))  # noqa: SIM115


def _cli(monkeypatch, capsys, world, *args: str) -> tuple[int, str]:
    """Run the real entry point (dde_bench.cli.main) in-process: exit code and stderr."""
    from dde_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["dde-bench", "profile", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--scenario", "sideways"), "unknown scenario 'sideways'"),
        (("--model", "nope"), "unknown model 'nope'"),
        (("--suite", "nope"), "unknown suite 'nope'"),
        (("--device", "tpu"), "unknown device 'tpu'"),
    ],
)
def test_cli_errors_are_one_line(monkeypatch, capsys, world, args, needle):
    base = {"--model": "prof-student", "--device": "cpu"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code, err = _cli(monkeypatch, capsys, world, *[x for kv in base.items() for x in kv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dde-bench: error: ") and needle in lines[0], err


def test_cli_cuda_without_cuda(monkeypatch, capsys, world):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _cli(monkeypatch, capsys, world, "--model", "prof-student", "--device", "cuda")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err, err
