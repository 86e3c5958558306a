"""Command-line errors of `dde-bench train` / `reproduce`: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("train", "student", "--suite", "nlvr2", "--teacher", "/nonexistent/teacher"),
            "no such checkpoint folder",
        ),
        (("train", "teacher", "--suite", "no-such-suite"), "unknown suite"),
        (("train", "teacher", "--suite", "nlvr2", "--nproc", "0"), "--nproc"),
        (("reproduce", "--suite", "nlvr2", "--seeds", "0"), "--seeds"),
        (("reproduce", "--suite", "nlvr2", "--recipe", "no-such-recipe"), "unknown recipe"),
        (("reproduce", "--suite", "nlvr2", "--students", "nodistill,telepathy"), "unknown row(s) telepathy"),
        (("reproduce", "--suite", "nlvr2", "--eval-every", "-1"), "--eval-every"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_where_there_is_none():
    r = run_cli("train", "teacher", "--suite", "nlvr2", "--device", "cuda")
    assert r.returncode == 2
    assert "CUDA" in r.stderr and "Traceback" not in r.stderr


def test_student_given_a_student_checkpoint(tmp_path):
    from dde_bench.modeling.checkpoint import save_model
    from dde_bench.modeling.config import size_config
    from dde_bench.modeling.models import Student

    save_model(Student(size_config("tiny"), "nlvr2"), tmp_path / "s")
    r = run_cli("train", "student", "--suite", "nlvr2", "--teacher", str(tmp_path / "s"))
    assert r.returncode == 2
    assert "a teacher was expected" in r.stderr
