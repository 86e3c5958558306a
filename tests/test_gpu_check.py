"""scripts/gpu_check.py on a machine without a GPU: the one-line answer, the dry run, the summary, the step loop.

What needs a GPU (the steps' commands and the CUDA tests) is not run here; the loop that runs the steps, the
verdicts it derives from pytest's junit XML and from run folders, and the summary it writes are, with fake steps,
a fake ``nvidia-smi`` and a real pytest run of a stand-in test file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dde_bench.resources import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


gc = _load()


def _script(
    *args: str, env: dict[str, str] | None = None, path: str | None = None
) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != gc.NO_GPU_ENV}
    e.update(env or {})
    if path is not None:
        e["PATH"] = path
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=120,
        cwd=REPO_ROOT,
    )


@pytest.fixture
def fake_smi(tmp_path: Path) -> str:
    """A PATH whose nvidia-smi reports two H200s on a driver for CUDA 13.0 (nvidia-smi's own output formats)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  --query-gpu=*) printf 'NVIDIA H200, 580.159.03\\nNVIDIA H200, 580.159.03\\n' ;;\n"
        "  *) echo '| NVIDIA-SMI 580.159.03    Driver Version: 580.159.03    CUDA Version: 13.0     |' ;;\n"
        "esac\n"
    )
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


# --- the no-GPU answer and the dry run -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["no nvidia-smi on PATH", "env var"])
def test_no_gpu_is_one_line_and_exit_0(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    if how == "env var":
        p = _script("--out", str(out), env={gc.NO_GPU_ENV: "1"})
        assert f"{gc.NO_GPU_ENV} is set" in p.stdout
    else:
        p = _script("--out", str(out), path=str(tmp_path / "empty-bin"))
        assert "nvidia-smi not found on PATH" in p.stdout
    assert p.returncode == 0 and p.stderr == ""
    assert len(p.stdout.splitlines()) == 1 and "no GPU" in p.stdout
    assert not out.exists()  # did nothing else


def test_make_gpu_check_without_gpu_is_one_line(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {**os.environ, gc.NO_GPU_ENV: "1"}
    cmd = ["make", "--no-print-directory", "gpu-check", f"PYTHON={sys.executable}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert p.returncode == 0 and p.stdout.splitlines() == [
        f"gpu-check: no GPU here ({gc.NO_GPU_ENV} is set): nothing to check"
    ]
    p = subprocess.run(
        [*cmd, "ARGS=--dry-run"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert p.returncode == 0 and "gpu-check dry run" in p.stdout


def _dry_steps(stdout: str) -> list[tuple[str, int]]:
    return [(m[1], int(m[2])) for m in re.finditer(r"^\d+\. (\S+): budget (\d+) s", stdout, flags=re.M)]


def test_dry_run_lists_every_step_with_budgets(tmp_path: Path) -> None:
    p = _script("--dry-run", "--out", str(tmp_path / "out"), env={gc.NO_GPU_ENV: "1"})
    assert p.returncode == 0, p.stderr
    steps = _dry_steps(p.stdout)
    assert [n for n, _ in steps] == [s.name for s in gc.STEPS] == [
        "env", "pytest-cuda", "profile", "compile", "serving", "nccl", "run-nlvr2"
    ]  # fmt: skip
    total = sum(b for _, b in steps)
    assert total <= 8 * 60 and f"{total} s of budget in all" in p.stdout
    assert "GPU: none" in p.stdout
    # every command step shows its command; the run covers every dtype and scenario the issue names
    assert p.stdout.count("\n   $ PY ") == len(steps) - 1
    assert "--dtype fp32,bf16,fp16 --scenarios online,cached,gallery" in p.stdout
    assert "--memory" in p.stdout and "-m pytest -m cuda" in p.stdout and "--nproc_per_node=2" in p.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_with_a_gpu_names_it_and_the_torch_build(tmp_path: Path, fake_smi: str) -> None:
    p = _script("--dry-run", "--out", str(tmp_path / "out"), path=fake_smi)
    assert p.returncode == 0, p.stderr
    assert "GPU: NVIDIA H200, NVIDIA H200 (driver 580.159.03, CUDA 13.0)" in p.stdout
    assert "torch==2.13.0 (PyPI's Linux x86_64 wheel is built for CUDA 13.0" in p.stdout
    assert len(_dry_steps(p.stdout)) == len(gc.STEPS)


def test_torch_build_follows_the_driver() -> None:
    assert gc.choose_torch("13.0")[0] == "torch==2.13.0"
    assert gc.choose_torch("13.1")[0] == "torch==2.13.0"
    assert gc.choose_torch("12.9")[0] == "torch==2.10.0"
    assert gc.choose_torch("12.8")[0] == "torch==2.10.0"
    assert gc.choose_torch("12.4")[0] is None and "--torch-spec" in gc.choose_torch("12.4")[1]
    assert gc.choose_torch(None)[0] is None


def test_only_rejects_unknown_steps(tmp_path: Path) -> None:
    p = _script("--only", "pytest-cuda,nope", "--dry-run", env={gc.NO_GPU_ENV: "1"})
    assert p.returncode == 2 and p.stderr.strip() == "gpu-check: error: --only names unknown steps: nope"


# --- the step loop -------------------------------------------------------------------------------------------------
def _ctx(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return gc.Context(out=out, gpu=gc.GpuInfo(["Fake GPU"], "1.0", "13.0"))


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(name: str):
        def action(ctx) -> str:
            calls.append(name)
            return f"{name} fine"

        return action

    def boom(ctx) -> str:
        calls.append("boom")
        raise RuntimeError("boom\nsecond line")

    def skip(ctx) -> str:
        calls.append("skip")
        raise gc.Skip("1 GPU here: needs 2")

    def failed(ctx) -> str:
        calls.append("failed")
        raise gc.StepFailed("exit code 1: FAILED tests/x.py::t - AssertionError")

    steps = [
        gc.Step("a", 10, "", ok("a")),
        gc.Step("b", 10, "", boom),
        gc.Step("c", 10, "", skip),
        gc.Step("d", 10, "", failed),
        gc.Step("e", 10, "", ok("e")),
    ]
    seen: list[int] = []
    results = gc.run_steps(steps, _ctx(tmp_path), on_result=lambda rs: seen.append(len(rs)))
    assert calls == ["a", "boom", "skip", "failed", "e"]
    assert [(r.name, r.status) for r in results] == [
        ("a", "ran"), ("b", "failed"), ("c", "skipped"), ("d", "failed"), ("e", "ran")
    ]  # fmt: skip
    assert results[1].detail == "RuntimeError: boom"
    assert results[2].verdict == "skipped (1 GPU here: needs 2)"
    assert results[3].verdict == "failed (exit code 1: FAILED tests/x.py::t - AssertionError)"
    assert results[4].verdict == "ran (e fine)"
    assert seen == [1, 2, 3, 4, 5]  # the summary is rewritten after every step


def test_a_command_past_its_deadline_is_killed_and_the_next_step_runs(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    user_error = "import sys; print('progress...'); sys.exit('dde-bench: error: no such option --x')"

    steps = [
        # 6 s: room for the interpreter to start on a loaded machine, far below the sleeper's 60 s
        gc.Step("slow", 6, "", lambda ctx: gc.run_command(ctx, "slow", [sys.executable, "-c", sleeper])),
        gc.Step("bad", 20, "", lambda ctx: gc.run_command(ctx, "bad", [sys.executable, "-c", user_error])),
        gc.Step(
            "echo", 20, "", lambda ctx: gc.run_command(ctx, "echo", [sys.executable, "-c", "print('hi')"])
        ),
    ]
    ctx = _ctx(tmp_path)
    t0 = time.monotonic()
    slow, bad, echo = gc.run_steps(steps, ctx)
    assert time.monotonic() - t0 < 45
    assert slow.status == "failed" and slow.detail.startswith("timed out after")
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the whole process group is gone
    assert bad.verdict == "failed (exit code 1: dde-bench: error: no such option --x)"
    assert echo.verdict == "ran (hi)" and echo.log == "echo.log"
    assert (ctx.out / "echo.log").read_text().splitlines()[-1] == "hi"


def test_first_error_line() -> None:
    pytest_out = (
        "..F.s\n=== short test summary info ===\nSKIPPED [1] x\nFAILED tests/a.py::t - assert 1 == 2\n"
    )
    assert gc.first_error_line(pytest_out) == "FAILED tests/a.py::t - assert 1 == 2"
    trace = (
        'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: CUDA error: out of memory\n'
    )
    assert gc.first_error_line(trace) == "RuntimeError: CUDA error: out of memory"
    assert (
        gc.first_error_line("step 1\ndde-bench: error: unknown suite 'x'\n")
        == "dde-bench: error: unknown suite 'x'"
    )
    assert gc.first_error_line("") == "no output"


# --- verdicts per CUDA path and the summary ------------------------------------------------------------------------
STAND_IN_TESTS = """
import pytest

def test_cuda_event_timing_agrees_with_wall_time(record_property):
    record_property("events_over_loop_wall", "1.002")

def test_nvml_energy_grows_with_the_window():
    pytest.skip("NVML energy not available: NVMLError_NotSupported")

@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_close_to_fp32(dtype):
    assert dtype == "bf16", "fp16 off by 2%"

def test_other_cuda_thing():
    pass
"""


def _stand_in_junit(tmp_path: Path, out: Path) -> None:
    """A real pytest run of stand-ins named like tests/test_cuda_paths.py, its junit XML where the check puts it."""
    d = tmp_path / "standin"
    d.mkdir()
    (d / "test_cuda_paths.py").write_text(textwrap.dedent(STAND_IN_TESTS))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--rootdir",
        str(d),
    ]
    cmd += [f"--junitxml={out / 'pytest-cuda.xml'}", str(d / "test_cuda_paths.py")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=120)
    assert p.returncode == 1, p.stdout  # one failure, by design


def _rows(out: Path, folder: str, rows: list[dict]) -> None:
    (out / folder).mkdir()
    (out / folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')


def test_path_verdicts_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _stand_in_junit(tmp_path, out)
    row = {"model": "tiny-student", "scenario": "cached", "batch_size": 8, "status": "ok"}
    _rows(out, "run-nlvr2", [
        {**row, "dtype": "fp32"},
        {**row, "dtype": "fp32", "scenario": "gallery", "model": "tiny-teacher", "status": "skipped"},
        {**row, "dtype": "bf16", "status": "error", "error": "RuntimeError: expected scalar type\nmore"},
    ])  # fmt: skip
    steps = [
        gc.StepResult("env", "ran", "found python3: torch 2.11.0+cu130", 3.0, 60),
        gc.StepResult(
            "pytest-cuda", "failed", "4 passed, 1 skipped, 1 failed; exit code 1: FAILED", 40.0, 75
        ),
        gc.StepResult("run-nlvr2", "failed", "1 of 3 rows failed", 100.0, 180),
        gc.StepResult("profile", "ran", "trace.json with 512 CUDA kernel events", 20.0, 35),
        gc.StepResult("serving", "skipped", "`dde-bench run --help` lists no serving scenario yet", 2.0, 35),
        gc.StepResult("nccl", "skipped", "1 GPU here: the 2-process nccl check needs 2", 0.1, 35),
    ]
    paths = {p["path"]: p for p in gc.path_results(out, steps)}
    assert set(paths) == {p for p, _, _ in gc.CUDA_PATHS}
    v = {k: p["verdict"] for k, p in paths.items()}
    assert v["CUDA-event timing agrees with synchronised wall time"] == "ran (events_over_loop_wall 1.002)"
    assert v["NVML energy positive, grows with the window"] == (
        "skipped (NVML energy not available: NVMLError_NotSupported)"
    )
    assert v["bf16 teacher/student within tolerance of fp32"].startswith("ran")
    assert v["fp16 teacher/student within tolerance of fp32"].startswith(
        "failed (AssertionError: fp16 off by 2%"
    )
    # a named test absent from the XML takes the pytest step's verdict
    assert v["max_memory_allocated grows with the batch size"].startswith(
        "failed (step pytest-cuda: 4 passed"
    )
    assert v["other CUDA tests (pytest -m cuda)"] == "ran (1 tests)"
    assert v["harness fp32: online, cached, gallery"] == "ran (1 rows ok, 1 skipped by design)"
    assert v["harness bf16: online, cached, gallery"] == (
        "failed (1 of 1 rows failed; first: tiny-student cached b8 bf16: RuntimeError: expected scalar type)"
    )
    assert v["harness fp16: online, cached, gallery"].startswith("failed (step run-nlvr2: 1 of 3 rows failed")
    assert v["torch.compile (inductor) on CUDA"] == "skipped (its step was not run)"
    assert v["serving scenario on CUDA"] == "skipped (`dde-bench run --help` lists no serving scenario yet)"
    assert v["nccl, 2 processes"] == "skipped (1 GPU here: the 2-process nccl check needs 2)"

    meta = {"started": "20260101-000000", "gpu": {"names": ["NVIDIA H200"], "driver": "580.159.03", "cuda": "13.0"},
            "torch": "2.11.0+cu130", "torch_cuda": "13.0", "python": "/usr/bin/python3"}  # fmt: skip
    gc.write_summary(out, meta, steps, list(paths.values()))
    md = (out / "summary.md").read_text()
    assert "- GPU: NVIDIA H200; driver 580.159.03, CUDA 13.0 (nvidia-smi)" in md
    assert "- torch: 2.11.0+cu130 (CUDA build 13.0)" in md
    assert "| env | ran (found python3: torch 2.11.0+cu130) | 3.0 | 60 |" in md
    assert "| nccl | skipped (1 GPU here: the 2-process nccl check needs 2) | 0.1 | 35 |" in md
    assert "| fp16 teacher/student within tolerance of fp32 | failed (AssertionError: fp16 off by 2%" in md
    data = json.loads((out / "summary.json").read_text())
    assert data["torch"] == "2.11.0+cu130" and data["gpu"]["names"] == ["NVIDIA H200"]
    assert [s["verdict"].split(" ")[0] for s in data["steps"]] == [
        "ran",
        "failed",
        "failed",
        "ran",
        "skipped",
        "skipped",
    ]
    assert data["total_wall_s"] == pytest.approx(165.1) and data["budget_s"] == 480
    assert len(data["paths"]) == len(gc.CUDA_PATHS)


def test_gpu_without_a_cuda_torch_keeps_going_and_says_why(tmp_path: Path, fake_smi: str) -> None:
    """'nvidia-smi' says there is a GPU but this Python's torch sees none: env fails, every later step is skipped
    with that reason, the summary is written, and the exit code is 1."""
    out = tmp_path / "out"
    p = _script("--out", str(out), "--python", sys.executable, path=fake_smi)
    assert p.returncode == 1, p.stdout + p.stderr
    data = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["env"]["status"] == "failed" and "has no torch that sees CUDA" in steps["env"]["detail"]
    assert all(s["status"] == "skipped" for n, s in steps.items() if n != "env")
    assert "needs a Python with a CUDA torch" in steps["nccl"]["detail"]
    assert data["gpu"]["names"] == ["NVIDIA H200", "NVIDIA H200"]
    assert all(p["status"] in ("skipped", "failed") for p in data["paths"])
    assert (out / "summary.md").exists() and (out / "env.log").exists()
    assert "## CUDA paths" in p.stdout


def test_env_installs_the_torch_build_the_driver_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Python here sees CUDA: env creates .venv-gpu with the driver's torch build, then the package; a Python
    outside a venv that lacks a module gets it pip-installed into OUT/site (commands recorded, not run)."""
    ctx = _ctx(tmp_path)
    commands: list[list[str]] = []
    venv_py = str(gc.REPO / ".venv-gpu" / "bin" / "python")
    probes = {"/usr/bin/python3": {"version": "2.13.0+cpu", "available": False, "missing": []}}
    probes[venv_py] = {
        "version": "2.13.0",
        "cuda": "13.0",
        "available": True,
        "devices": 1,
        "missing": ["pynvml"],
    }
    monkeypatch.setattr(gc, "python_candidates", lambda c: ["/usr/bin/python3"])
    monkeypatch.setattr(gc, "probe_python", lambda c, py: probes[py])
    monkeypatch.setattr(
        gc, "run_command", lambda c, name, argv, timeout=None: commands.append(list(argv)) or ""
    )
    detail = gc.step_env(ctx)
    assert commands[:3] == [
        [sys.executable, "-m", "venv", str(gc.REPO / ".venv-gpu")],
        [venv_py, "-m", "pip", "install", "-q", "torch==2.13.0"],
        [venv_py, "-m", "pip", "install", "-q", "-e", f"{gc.REPO}[dev]"],
    ]
    assert ctx.python == venv_py and detail.startswith(
        f"installed {venv_py}: torch 2.13.0 (CUDA 13.0), 1 device"
    )
    assert ctx.env["DDE_BENCH_CACHE"] == str(ctx.out / "cache")
    # .venv-gpu does not exist here, so it reads as "not a venv": the missing module goes to OUT/site
    assert commands[3] == [
        venv_py,
        "-m",
        "pip",
        "install",
        "-q",
        "--target",
        str(ctx.out / "site"),
        "nvidia-ml-py",
    ]
    assert ctx.env["PYTHONPATH"].split(os.pathsep)[:2] == [str(ctx.out / "site"), str(gc.REPO)]
    assert "pip-installed nvidia-ml-py" in detail

    ctx = _ctx(tmp_path)
    ctx.gpu = gc.GpuInfo(["Old GPU"], "470.1", "11.4")
    with pytest.raises(
        gc.StepFailed, match="CUDA 11.4, older than any PyPI torch build here: pass --torch-spec"
    ):
        gc.step_env(ctx)
