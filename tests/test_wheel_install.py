"""The tool installed from its wheel (not editable), run from another folder: every output lands under that folder,
nothing new appears inside site-packages."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dde_bench.resources import REPO_ROOT


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-3000:])
    return p


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_wheel_install_writes_only_where_the_user_works(tmp_path):
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling (the dev extra)")
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO_ROOT),
        ]
    )
    wheel = next(wheels.glob("dde_bench-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    # the heavy dependencies (torch, transformers, ...) come from this interpreter's environment, appended after
    # the new venv's own site-packages, so the installed wheel (not the checkout) is what runs
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])
    before = _files(site)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDE_BENCH_") and k != "PYTHONPATH"}
    where = _run([str(py), "-c", "import dde_bench; print(dde_bench.__file__)"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(site)  # the wheel, not the source checkout
    _run(
        [
            str(venv / "bin" / "dde-bench"), "run", "--suite", "nlvr2", "--quick", "--device", "cpu",
            "--models", "tiny-teacher-random,tiny-student-random", "--scenarios", "online,cached",
            "--batch-sizes", "2", "--min-iters", "2", "--min-time", "0",
        ],
        cwd=work,
        env=env,
    )  # fmt: skip
    runs = list((work / "reports" / "runs").glob("nlvr2-cpu-*"))
    assert (
        len(runs) == 1
        and (runs[0] / "results.jsonl").is_file()
        and (runs[0] / "report" / "report.html").is_file()
    )
    assert (work / "reports" / "cache" / "synthetic").is_dir()
    assert _files(site) == before  # nothing new inside the installed package
