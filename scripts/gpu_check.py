#!/usr/bin/env python3
"""Every CUDA path of dde-bench in one prepared, time-boxed check (``make gpu-check``).

Standard library only at top level, so it runs before anything is installed; torch is only ever imported by the
Python it selects or installs, in subprocesses.

    python3 scripts/gpu_check.py [--out DIR] [--dry-run] [--only STEP,...] [--python PY] [--torch-spec SPEC]

Without a GPU (no ``nvidia-smi`` on PATH, or it lists none, or ``DDE_GPU_CHECK_NO_GPU=1``) it prints one line and
exits 0, touching nothing. ``--dry-run`` prints every step, its command and its time budget, and exits 0 on any
machine. Otherwise it runs the steps of ``STEPS`` in order and writes everything to one folder (default
``reports/gpu-check-<time>/``): one ``<step>.log`` per step, the run folders, the report, the profile, the pytest
log and junit XML, and ``summary.md`` + ``summary.json`` (rewritten after every step) saying for every CUDA path:
ran / skipped (why) / failed (the first line of the error), with the GPU, driver, torch version and each step's
wall time. A failed step never stops the later ones.

Time: the budgets add up to at most ``TOTAL_BUDGET_S`` (8 minutes). Step i must end by the sum of the budgets of
steps 1..i (its process group is killed there), so what an early step saves is left to the later ones, and an
overrun eats only earlier savings, never a later step's own budget.

Which Python and torch (step ``env``): the first of ``--python``, ``./.venv``, ``./.venv-gpu``, this interpreter
and ``python3`` on PATH whose torch sees a CUDA device. If none does, ``./.venv-gpu`` is created and the torch
build is chosen from the driver's CUDA version as ``nvidia-smi`` reports it (``TORCH_BUILDS``): PyPI's Linux
x86_64 wheel of torch 2.13.0 is built for CUDA 13.0 (it requires ``cuda-toolkit==13.0.3``), so a driver for
CUDA >= 13.0 gets ``torch==2.13.0``; torch 2.10.0 is PyPI's last CUDA 12.8 build, for drivers of CUDA 12.8-12.9;
older drivers need ``--torch-spec``. Then ``pip install -e .[dev]``. dde-bench itself always runs from this
checkout (``PYTHONPATH``; commands as ``PY -m dde_bench.cli``), so a preinstalled CUDA torch needs no install.
Python packages the package needs but that Python lacks are pip-installed into its venv, or into ``OUT/site``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 480.0
NO_GPU_ENV = "DDE_GPU_CHECK_NO_GPU"
PY = "PY"  # stands for the selected Python in dry-run commands

# (minimum CUDA version of the driver, pip requirement, what PyPI's Linux x86_64 wheel is built for)
TORCH_BUILDS: tuple[tuple[tuple[int, int], str, str], ...] = (
    ((13, 0), "torch==2.13.0", "CUDA 13.0"),
    ((12, 8), "torch==2.10.0", "CUDA 12.8"),
)
# import name -> distribution: what dde_bench and its tests import (pyproject.toml's dependencies + dev)
REQUIRED_MODULES = {
    "numpy": "numpy",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "pynvml": "nvidia-ml-py",
    "typer": "typer",
    "rich": "rich",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "pytest": "pytest",
    "pytest_benchmark": "pytest-benchmark",
}
KILL_GRACE_S = 3.0


class Skip(Exception):
    """Raised by a step that does not apply on this machine; the message is the reason."""


class StepFailed(Exception):
    """Raised by a step that failed; the message is the first line of its error."""


# --- the machine -------------------------------------------------------------------------------------------------
@dataclass
class GpuInfo:
    """What ``nvidia-smi`` says: one name per GPU, the driver version and the CUDA version it supports."""

    names: list[str]
    driver: str | None = None
    cuda: str | None = None

    @property
    def count(self) -> int:
        return len(self.names)


def _smi(args: Sequence[str]) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def detect_gpu() -> tuple[GpuInfo | None, str]:
    """The GPUs ``nvidia-smi`` lists, or None and why there is none."""
    if os.environ.get(NO_GPU_ENV, "") not in ("", "0"):
        return None, f"{NO_GPU_ENV} is set"
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi not found on PATH"
    listing = _smi(["--query-gpu=name,driver_version", "--format=csv,noheader"])
    rows = [r.split(",") for r in (listing or "").splitlines() if r.strip()]
    if not rows:
        return None, "nvidia-smi lists no GPU"
    banner = _smi([]) or ""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", banner)
    return GpuInfo([r[0].strip() for r in rows], rows[0][-1].strip(), m.group(1) if m else None), ""


def choose_torch(cuda_version: str | None) -> tuple[str | None, str]:
    """The pip requirement for a CUDA torch that runs on a driver of ``cuda_version``, and why (or why none)."""
    if not cuda_version:
        return None, "nvidia-smi reports no CUDA version: pass --torch-spec"
    parts = [int(p) for p in re.findall(r"\d+", cuda_version)[:2]]
    have = (parts + [0])[:2]
    for need, spec, build in TORCH_BUILDS:
        if tuple(have) >= need:
            return (
                spec,
                f"{spec} (PyPI's Linux x86_64 wheel is built for {build}; the driver supports CUDA {cuda_version})",
            )
    return (
        None,
        f"the driver supports CUDA {cuda_version}, older than any PyPI torch build here: pass --torch-spec",
    )


# --- steps and their results ---------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the steps share: the output folder, the GPU, the selected Python and the environment of commands."""

    out: Path
    gpu: GpuInfo | None
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    torch: dict[str, Any] = field(
        default_factory=dict
    )  # version, cuda, devices, device_name of the selected Python
    torch_spec: str | None = None
    python_choice: str | None = None  # --python
    deadline: float = float("inf")  # time.monotonic() by which the running step must end

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Step:
    """One step: ``action`` returns a detail on success, raises Skip (with the reason) or fails by raising."""

    name: str
    budget_s: float
    doc: str
    action: Callable[[Context], str | None]
    preview: Callable[[Context], str] | None = None  # the command, as the dry run shows it


@dataclass
class StepResult:
    name: str
    status: str  # ran | skipped | failed
    detail: str
    wall_s: float
    budget_s: float
    log: str | None = None

    @property
    def verdict(self) -> str:
        return verdict(self.status, self.detail)


def verdict(status: str, detail: str) -> str:
    """'ran', 'skipped (why)' or 'failed (first line of the error)'; 'ran (what it measured)' where it says."""
    return f"{status} ({detail})" if detail else status


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def first_error_line(text: str) -> str:
    """The line that says what went wrong in a command's output: pytest's first FAILED/ERROR line, else a
    one-line user error ('...error: ...'), else the last exception line of a traceback, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("FAILED ", "ERROR ")):
            return ln[:300]
    for ln in lines:
        if re.match(r"^[\w.-]*:? ?error: ", ln, flags=re.IGNORECASE):
            return ln[:300]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def run_steps(
    steps: Sequence[Step], ctx: Context, on_result: Callable[[list[StepResult]], None] | None = None
) -> list[StepResult]:
    """Run every step in order, each until its cumulative deadline; a failed step never stops the next."""
    results: list[StepResult] = []
    start = time.monotonic()
    cumulative = 0.0
    for i, step in enumerate(steps, 1):
        cumulative += step.budget_s
        ctx.deadline = start + cumulative
        t0 = time.monotonic()
        log = ctx.out / f"{step.name}.log"
        log.unlink(missing_ok=True)  # a reused --out: no evidence from an earlier check
        print(
            f"[{i}/{len(steps)}] {step.name} (budget {step.budget_s:.0f} s, {ctx.remaining():.0f} s left) ...",
            flush=True,
        )
        if ctx.remaining() <= 0:
            status, detail = "skipped", "no time left in the budget"
        else:
            try:
                status, detail = "ran", first_line(step.action(ctx) or "")
            except Skip as e:
                status, detail = "skipped", str(e)
            except StepFailed as e:
                status, detail = "failed", str(e)
            except Exception as e:  # a step's own bug is that step's failure, not the check's end
                status, detail = "failed", first_line(f"{type(e).__name__}: {e}")
        res = StepResult(
            step.name,
            status,
            detail,
            time.monotonic() - t0,
            step.budget_s,
            log.name if log.exists() else None,
        )
        results.append(res)
        print(f"    {res.verdict} in {res.wall_s:.1f} s", flush=True)
        if on_result is not None:
            on_result(results)
    return results


def run_command(ctx: Context, name: str, argv: Sequence[str], timeout: float | None = None) -> str:
    """Run ``argv`` in the repository with the check's environment, output to ``OUT/<name>.log``, until the step's
    deadline (or ``timeout``); return the output, raise StepFailed with its first error line otherwise."""
    limit = ctx.remaining() if timeout is None else min(timeout, ctx.remaining())
    if limit <= 0:
        raise StepFailed("no time left in the step's budget")
    log = ctx.out / f"{name}.log"
    env = {**os.environ, **ctx.env}
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        offset = f.tell()
        p = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(p)
            raise StepFailed(f"timed out after {limit:.0f} s (log: {log.name})") from None
    with open(log, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    if rc != 0:
        raise StepFailed(f"exit code {rc}: {first_error_line(text)}")
    return text


def _kill_group(p: subprocess.Popen) -> None:
    """End the process group the command started (its own session), TERM first, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


# --- step env: a Python whose torch sees CUDA ---------------------------------------------------------------------
PROBE = r"""
import importlib.util, json, sys
mods = json.loads(sys.argv[1])
info = {"python": sys.version.split()[0], "missing": [m for m in mods if importlib.util.find_spec(m) is None]}
try:
    import torch
    info.update(version=torch.__version__, cuda=torch.version.cuda, devices=torch.cuda.device_count())
    info["available"] = torch.cuda.is_available()
    if info["available"]:
        info["device_name"] = torch.cuda.get_device_name(0)
except Exception as e:
    info["error"] = f"{type(e).__name__}: {e}"
print("PROBE " + json.dumps(info))
"""


def probe_python(ctx: Context, python: str) -> dict[str, Any]:
    """torch's version, CUDA build and devices as ``python`` sees them, and the required modules it lacks."""
    try:
        out = run_command(ctx, "env", [python, "-c", PROBE, json.dumps(list(REQUIRED_MODULES))], timeout=60)
    except StepFailed as e:
        return {"error": str(e)}
    lines = [ln for ln in out.splitlines() if ln.startswith("PROBE ")]
    return json.loads(lines[-1][6:]) if lines else {"error": "the probe printed nothing"}


def python_candidates(ctx: Context) -> list[str]:
    """--python alone when given, else the repository's venvs, this interpreter and python3, existing ones."""
    if ctx.python_choice:
        return [ctx.python_choice]
    found = [str(REPO / v / "bin" / "python") for v in (".venv", ".venv-gpu")]
    found += [sys.executable, shutil.which("python3") or ""]
    seen: list[str] = []
    for c in found:
        if c and c not in seen and Path(c).exists():
            seen.append(c)
    return seen


def _install_torch_venv(ctx: Context) -> str:
    """Create ./.venv-gpu with the CUDA torch chosen from the driver and dde-bench[dev]; return its Python."""
    spec, why = (
        (ctx.torch_spec, "--torch-spec")
        if ctx.torch_spec
        else choose_torch(ctx.gpu.cuda if ctx.gpu else None)
    )
    if spec is None:
        raise StepFailed(f"no Python here has a CUDA torch, and {why}")
    if sys.version_info < (3, 11):  # noqa: UP036 (this script runs on any python3)
        raise StepFailed(f"dde-bench needs Python >= 3.11 for its venv; this is {sys.version.split()[0]}")
    venv = REPO / ".venv-gpu"
    py = str(venv / "bin" / "python")
    with open(ctx.out / "env.log", "a") as f:
        f.write(f"installing {why}\n")
    run_command(ctx, "env", [sys.executable, "-m", "venv", str(venv)])
    run_command(ctx, "env", [py, "-m", "pip", "install", "-q", spec])
    run_command(ctx, "env", [py, "-m", "pip", "install", "-q", "-e", f"{REPO}[dev]"])
    return py


def step_env(ctx: Context) -> str:
    """Select (or install) the Python, then fill in what the package needs; sets ctx.python, ctx.env, ctx.torch."""
    ctx.env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        DDE_BENCH_HOME=str(ctx.out),  # anything a command writes by default lands in OUT too
        DDE_BENCH_CACHE=str(ctx.out / "cache"),
        COLUMNS="120",
    )
    tried: list[str] = []
    chosen, info = None, {}
    for py in python_candidates(ctx):
        info = probe_python(ctx, py)
        if info.get("available"):
            chosen = py
            break
        tried.append(
            f"{py}: {info.get('error') or 'torch ' + str(info.get('version')) + ' sees no CUDA device'}"
        )
    how = "found"
    if chosen is None:
        if ctx.python_choice:
            raise StepFailed(f"--python {ctx.python_choice} has no torch that sees CUDA ({'; '.join(tried)})")
        chosen, how = _install_torch_venv(ctx), "installed"
        info = probe_python(ctx, chosen)
        if not info.get("available"):
            raise StepFailed(
                f"the installed torch {info.get('version')} (CUDA {info.get('cuda')}) sees no CUDA device"
            )
    ctx.python, ctx.torch = chosen, info
    note = ""
    missing = [REQUIRED_MODULES[m] for m in info.get("missing", [])]
    if missing:
        in_venv = Path(chosen).parent.parent.joinpath("pyvenv.cfg").exists()
        target = [] if in_venv else ["--target", str(ctx.out / "site")]
        if not in_venv:
            ctx.env["PYTHONPATH"] = os.pathsep.join([str(ctx.out / "site"), ctx.env["PYTHONPATH"]])
        try:
            run_command(ctx, "env", [chosen, "-m", "pip", "install", "-q", *target, *missing])
        except StepFailed as e:
            raise StepFailed(
                f"{chosen} lacks {', '.join(missing)} and pip could not install them: {e}"
            ) from None
        note = f"; pip-installed {', '.join(missing)}"
    return f"{how} {chosen}: torch {info.get('version')} (CUDA {info.get('cuda')}), {info.get('devices')} device(s){note}"


# --- the command steps ---------------------------------------------------------------------------------------------
def _py(ctx: Context) -> str:
    return ctx.python or PY


def _needs_python(ctx: Context) -> None:
    if ctx.python is None:
        raise Skip("needs a Python with a CUDA torch, which step env did not find")


def _cli(ctx: Context, *args: str) -> list[str]:
    return [_py(ctx), "-m", "dde_bench.cli", *args]


def _out(ctx: Context, name: str) -> str:
    return str(ctx.out / name)


def argv_pytest(ctx: Context) -> list[str]:
    return [_py(ctx), "-m", "pytest", "-m", "cuda", "-q", "-ra", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", f"--junitxml={_out(ctx, 'pytest-cuda.xml')}",
            f"--basetemp={_out(ctx, 'pytest-tmp')}", "tests"]  # fmt: skip


def argv_run(ctx: Context) -> list[str]:
    return _cli(ctx, "run", "--suite", "nlvr2", "--device", "cuda", "--quick", "--dtype", "fp32,bf16,fp16",
                "--scenarios", "online,cached,gallery", "--gallery-sizes", "10,1000", "--out", _out(ctx, "run-nlvr2"))  # fmt: skip


def argv_profile(ctx: Context) -> list[str]:
    return _cli(ctx, "profile", "--suite", "nlvr2", "--model", "dide-b32-student", "--scenario", "cached",
                "--batch-size", "8", "--device", "cuda", "--memory", "--steps", "3", "--out", _out(ctx, "profile"))  # fmt: skip


def argv_compile(ctx: Context) -> list[str]:
    return _cli(ctx, "run", "--suite", "nlvr2", "--device", "cuda", "--models", "tiny-teacher-random,tiny-student-random",
                "--scenarios", "cached", "--batch-sizes", "8", "--dtype", "fp32", "--compile", "--no-report",
                "--out", _out(ctx, "run-compile"))  # fmt: skip


SERVING_SUITE = """\
# gpu-check: the serving step's suite, kept small to fit its budget (short LoadGen tests, a short QPS search)
name: nlvr2-serving-check
task: nlvr2
serving: {min_duration_s: 0.5, max_duration_s: 2.0, qps_search_budget_s: 4}
"""


def argv_serving(ctx: Context) -> list[str]:
    return _cli(ctx, "run", "--suite", _out(ctx, "serving-suite.yaml"), "--device", "cuda", "--models", "tiny-teacher-random,tiny-student-random",
                "--scenarios", "server,offline", "--quick", "--no-report", "--out", _out(ctx, "run-serving"))  # fmt: skip


def argv_nccl(ctx: Context) -> list[str]:
    return [
        _py(ctx),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "scripts/nccl_check.py",
    ]


def _gpu_count(ctx: Context) -> int:
    return int(ctx.torch.get("devices") or (ctx.gpu.count if ctx.gpu else 0))


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run folder's results.jsonl (a torn last line is ignored)."""
    path = run_dir / "results.jsonl"
    rows = []
    if path.exists():
        for ln in path.read_text().splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return rows


def rows_verdict(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """ran with the row count, or failed with the first bad row (status error/oom), from results rows."""
    if not rows:
        return "failed", "no results rows"
    bad = [r for r in rows if r.get("status") not in ("ok", "skipped")]
    ok = sum(r.get("status") == "ok" for r in rows)
    if bad:
        r = bad[0]
        what = f"{r.get('model')} {r.get('scenario')} b{r.get('batch_size')} {r.get('dtype')}"
        return (
            "failed",
            f"{len(bad)} of {len(rows)} rows failed; first: {what}: {first_line(str(r.get('error')))}",
        )
    return "ran", f"{ok} rows ok" + (f", {len(rows) - ok} skipped by design" if len(rows) > ok else "")


def _fresh(path: Path) -> None:
    """Remove an earlier check's output at ``path`` (a reused --out must not lend a step old evidence)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _rows_step(ctx: Context, name: str, argv: list[str], run_dir: str) -> str:
    _needs_python(ctx)
    _fresh(ctx.out / run_dir)
    err = None
    try:
        run_command(ctx, name, argv)
    except StepFailed as e:
        err = e
    status, detail = rows_verdict(read_rows(ctx.out / run_dir))
    if err is not None:
        raise StepFailed(f"{err} ({detail})")
    if status != "ran":
        raise StepFailed(detail)
    return detail


def step_pytest(ctx: Context) -> str:
    _needs_python(ctx)
    _fresh(ctx.out / "pytest-cuda.xml")
    err = None
    try:
        run_command(ctx, "pytest-cuda", argv_pytest(ctx))
    except StepFailed as e:
        err = "pytest -m cuda selected no test" if str(e).startswith("exit code 5") else str(e)
    tests = read_junit(ctx.out / "pytest-cuda.xml")
    n = {s: sum(t["status"] == s for t in tests.values()) for s in ("ran", "skipped", "failed")}
    counts = f"{n['ran']} passed, {n['skipped']} skipped, {n['failed']} failed"
    if err is not None:
        raise StepFailed(f"{counts}; {err}" if tests else err)
    return counts


def step_run(ctx: Context) -> str:
    detail = _rows_step(ctx, "run-nlvr2", argv_run(ctx), "run-nlvr2")
    report = ctx.out / "run-nlvr2" / "report" / "report.md"
    return detail + ("" if report.exists() else "; no report/report.md")


def step_profile(ctx: Context) -> str:
    _needs_python(ctx)
    _fresh(ctx.out / "profile")
    run_command(ctx, "profile", argv_profile(ctx))
    prof = ctx.out / "profile"
    trace, snap = prof / "trace.json", prof / "memory_snapshot.pickle"
    if not trace.exists():
        raise StepFailed("no profile/trace.json written")
    events = json.loads(trace.read_text()).get("traceEvents", [])
    kernels = sum(1 for e in events if str(e.get("cat", "")).lower() == "kernel")
    if kernels == 0:
        raise StepFailed("trace.json holds no CUDA kernel event")
    if not snap.exists():
        raise StepFailed("--memory wrote no memory_snapshot.pickle")
    return f"trace.json with {kernels} CUDA kernel events; memory_snapshot.pickle {snap.stat().st_size / 1e6:.1f} MB"


def step_compile(ctx: Context) -> str:
    return _rows_step(ctx, "compile", argv_compile(ctx), "run-compile")


def step_serving(ctx: Context) -> str:
    _needs_python(ctx)
    helptext = run_command(ctx, "serving", _cli(ctx, "run", "--help"), timeout=60)
    if "serving" not in helptext:
        raise Skip("`dde-bench run --help` lists no serving scenario yet")
    (ctx.out / "serving-suite.yaml").write_text(SERVING_SUITE)
    return _rows_step(ctx, "serving", argv_serving(ctx), "run-serving")


def step_nccl(ctx: Context) -> str:
    _needs_python(ctx)
    n = _gpu_count(ctx)
    if n < 2:
        raise Skip(f"{n} GPU here: the 2-process nccl check needs 2")
    out = run_command(ctx, "nccl", argv_nccl(ctx))
    return next((ln for ln in out.splitlines() if ln.startswith("nccl ")), "nccl ran")


def env_preview(ctx: Context) -> str:
    if ctx.gpu is None:
        choice = "chosen from nvidia-smi's CUDA version"
    else:
        choice = choose_torch(ctx.gpu.cuda)[1]
    return f"first of {', '.join(['--python', '.venv', '.venv-gpu', 'python3'])} whose torch sees CUDA; else .venv-gpu + {choice}"


def _shows(argv: Callable[[Context], list[str]]) -> Callable[[Context], str]:
    """The dry run's view of a command step: its command line."""
    return lambda ctx: "$ " + shlex.join(argv(ctx))


# The run goes last: it is the longest and the least predictable step (it trains the tiny models first), and the
# last step gets whatever the others saved (serving and nccl skip at once on most machines).
STEPS: tuple[Step, ...] = (
    Step("env", 45, "a Python whose torch sees CUDA (installs one if none)", step_env, env_preview),
    Step("pytest-cuda", 90, "the CUDA tests: real properties of timing, memory, energy, dtypes, speed", step_pytest, _shows(argv_pytest)),
    Step("profile", 45, "torch.profiler CUDA trace + allocator snapshot of the b32 student (cached)", step_profile, _shows(argv_profile)),
    Step("compile", 60, "torch.compile (inductor) rows on CUDA, checked against the plain path", step_compile, _shows(argv_compile)),
    Step("serving", 45, "LoadGen server + offline (tiny random models, short tests), if `dde-bench run --help` lists them", step_serving, _shows(argv_serving)),
    Step("nccl", 15, "2-process nccl all_reduce + broadcast (only with 2+ GPUs)", step_nccl, _shows(argv_nccl)),
    Step("run-nlvr2", 180, "quick run: train tiny models on CUDA, teacher + students online/cached/gallery x fp32/bf16/fp16", step_run, _shows(argv_run)),
)  # fmt: skip
assert sum(s.budget_s for s in STEPS) <= TOTAL_BUDGET_S


# --- CUDA paths: what each step and test shows ---------------------------------------------------------------------
TEST_FILE = "test_cuda_paths"
# (path, kind, key): kind "test" = tests whose name starts with key in pytest-cuda.xml; "step" = that step's result;
# "rows" = rows of a run folder, key "folder:filter" (filter "dtype=X" or "compiled")
CUDA_PATHS: tuple[tuple[str, str, str], ...] = (
    ("CUDA-event timing agrees with synchronised wall time", "test", "test_cuda_event_timing_agrees_with_wall_time"),
    ("max_memory_allocated grows with the batch size", "test", "test_max_memory_allocated_grows_with_batch_size"),
    ("NVML memory (device-wide and this process)", "test", "test_nvml_memory_is_read"),
    ("NVML energy positive, grows with the window", "test", "test_nvml_energy_grows_with_the_window"),
    ("bf16 teacher/student within tolerance of fp32", "test", "test_low_precision_close_to_fp32[bf16"),
    ("fp16 teacher/student within tolerance of fp32", "test", "test_low_precision_close_to_fp32[fp16"),
    ("cached b32 student faster than the teacher at batch 32", "test", "test_cached_student_beats_teacher_b32"),
    ("other CUDA tests (pytest -m cuda)", "test", ""),
    ("training on CUDA (quick recipe) + quick run", "step", "run-nlvr2"),
    ("harness fp32: online, cached, gallery", "rows", "run-nlvr2:dtype=fp32"),
    ("harness bf16: online, cached, gallery", "rows", "run-nlvr2:dtype=bf16"),
    ("harness fp16: online, cached, gallery", "rows", "run-nlvr2:dtype=fp16"),
    ("profiler CUDA trace + memory snapshot", "step", "profile"),
    ("torch.compile (inductor) on CUDA", "rows", "run-compile:compiled"),
    ("serving scenario on CUDA", "step", "serving"),
    ("nccl, 2 processes", "step", "nccl"),
)  # fmt: skip
_NAMED_TESTS = tuple(k for _, kind, k in CUDA_PATHS if kind == "test" and k)


def read_junit(path: Path) -> dict[str, dict[str, Any]]:
    """pytest's junit XML as {'file.py::test[id]': {status, detail, properties}} (status ran/skipped/failed)."""
    if not path.exists():
        return {}
    tests: dict[str, dict[str, Any]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        status, detail = "ran", ""
        for tag, st in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            el = case.find(tag)
            if el is not None:
                status = st
                detail = first_line(el.get("message") or el.text or tag)
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests[f"{module}.py::{case.get('name')}"] = {"status": status, "detail": detail, "properties": props}
    return tests


def _combine(items: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """One verdict for several: failed if any failed, ran if any ran, else skipped (first reasons kept)."""
    for status in ("failed", "ran", "skipped"):
        hits = [d for s, d in items if s == status]
        if hits:
            return status, hits[0] if status != "ran" else "; ".join(h for h in hits if h)
    return "skipped", "nothing to report"


def _test_path(key: str, tests: dict[str, dict[str, Any]], step: StepResult | None) -> tuple[str, str, str]:
    if key:
        hits = {
            k: v for k, v in tests.items() if k.split("::")[-1].startswith(key) and k.startswith(TEST_FILE)
        }
    else:  # every CUDA test not named above
        hits = {k: v for k, v in tests.items() if not k.split("::")[-1].startswith(_NAMED_TESTS)}
    if not hits:
        return _missing(step, f"{TEST_FILE}.py::{key}" if key else "pytest -m cuda")
    items = []
    for v in hits.values():
        props = ", ".join(f"{k} {val}" for k, val in v["properties"].items())
        items.append((v["status"], v["detail"] or props))
    status, detail = _combine(items)
    if not key:
        detail = f"{len(hits)} tests" + (f": {detail}" if status != "ran" else "")
    return status, detail, ", ".join(sorted(hits)) if key else "pytest -m cuda"


def _missing(step: StepResult | None, evidence: str) -> tuple[str, str, str]:
    """A path whose evidence is absent takes its step's verdict (a step that 'ran' but left none: failed)."""
    if step is None:
        return "skipped", "its step was not run", evidence
    if step.status == "ran":
        return "failed", f"no result from {evidence}", evidence
    return step.status, f"step {step.name}: {step.detail}", evidence


def path_results(out: Path, steps: Sequence[StepResult]) -> list[dict[str, str]]:
    """The verdict of every CUDA path from the step results, the junit XML and the run folders."""
    by_name = {s.name: s for s in steps}
    tests = read_junit(out / "pytest-cuda.xml")
    found = []
    for path, kind, key in CUDA_PATHS:
        if kind == "test":
            status, detail, evidence = _test_path(key, tests, by_name.get("pytest-cuda"))
        elif kind == "step":
            s = by_name.get(key)
            status, detail, evidence = (
                (s.status, s.detail, f"step {key}") if s else _missing(None, f"step {key}")
            )
        else:
            folder, flt = key.split(":")
            rows = read_rows(out / folder)
            if flt == "compiled":
                rows = [r for r in rows if str(r.get("model", "")).endswith("@compiled")]
            else:
                rows = [r for r in rows if f"dtype={r.get('dtype')}" == flt]
            step = by_name.get({"run-nlvr2": "run-nlvr2", "run-compile": "compile"}[folder])
            status, detail, evidence = (
                rows_verdict(rows) + (f"{folder}/results.jsonl",)
                if rows
                else _missing(step, f"{folder}/results.jsonl")
            )
        found.append(
            {
                "path": path,
                "status": status,
                "detail": detail,
                "verdict": verdict(status, detail),
                "evidence": evidence,
            }
        )
    return found


# --- the summary ---------------------------------------------------------------------------------------------------
def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_summary(
    out: Path, meta: dict[str, Any], steps: Sequence[StepResult], paths: Sequence[dict[str, str]]
) -> None:
    """summary.json (everything) and summary.md (the same as tables) in ``out``."""
    total = sum(s.wall_s for s in steps)
    data = {**meta, "total_wall_s": round(total, 1), "budget_s": TOTAL_BUDGET_S,
            "steps": [asdict(s) | {"verdict": s.verdict} for s in steps], "paths": list(paths)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    gpu = meta.get("gpu") or {}
    lines = [
        f"# GPU check {meta.get('started', '')}",
        "",
        f"- GPU: {', '.join(gpu.get('names') or ['none'])}; driver {gpu.get('driver') or 'n/a'}, "
        f"CUDA {gpu.get('cuda') or 'n/a'} (nvidia-smi)",
        f"- torch: {meta.get('torch') or 'n/a'} (CUDA build {meta.get('torch_cuda') or 'n/a'}), "
        f"Python {meta.get('python') or 'n/a'}",
        f"- wall time: {total:.1f} s of a {TOTAL_BUDGET_S:.0f} s budget",
        "",
        "## CUDA paths",
        "",
        "| CUDA path | result | evidence |",
        "| --- | --- | --- |",
        *(f"| {_cell(p['path'])} | {_cell(p['verdict'])} | {_cell(p['evidence'])} |" for p in paths),
        "",
        "## Steps",
        "",
        "| step | result | wall s | budget s | log |",
        "| --- | --- | ---: | ---: | --- |",
        *(
            f"| {s.name} | {_cell(s.verdict)} | {s.wall_s:.1f} | {s.budget_s:.0f} | {s.log or ''} |"
            for s in steps
        ),
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))


def _meta(ctx: Context, started: str) -> dict[str, Any]:
    return {
        "started": started,
        "gpu": asdict(ctx.gpu) if ctx.gpu else None,
        "torch": ctx.torch.get("version"),
        "torch_cuda": ctx.torch.get("cuda"),
        "torch_device": ctx.torch.get("device_name"),
        "python": ctx.python,
        "out": str(ctx.out),
    }


# --- entry ---------------------------------------------------------------------------------------------------------
def dry_run(steps: Sequence[Step], ctx: Context, why_no_gpu: str) -> None:
    total = sum(s.budget_s for s in steps)
    gpu = (
        f"{', '.join(ctx.gpu.names)} (driver {ctx.gpu.driver}, CUDA {ctx.gpu.cuda})"
        if ctx.gpu
        else f"none ({why_no_gpu})"
    )
    print(
        f"gpu-check dry run: {len(steps)} steps, {total:.0f} s of budget in all (limit {TOTAL_BUDGET_S:.0f} s)"
    )
    print(f"GPU: {gpu}; output: {ctx.out}")
    print(f"{PY} below: the Python that step env selects (the later steps need one; they skip without it)")
    deadline = 0.0
    for i, s in enumerate(steps, 1):
        deadline += s.budget_s
        print(f"{i}. {s.name}: budget {s.budget_s:.0f} s (ends by {deadline:.0f} s) - {s.doc}")
        if s.preview is not None:
            print(f"   {s.preview(ctx)}")


def main(argv: Sequence[str] | None = None, steps: Sequence[Step] = STEPS) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder (default reports/gpu-check-<time>)")
    ap.add_argument(
        "--dry-run", action="store_true", help="print every step, its command and budget; run nothing"
    )
    ap.add_argument("--only", help="comma-separated steps to run (env always runs)")
    ap.add_argument("--python", help="the Python to use (its torch must see CUDA)")
    ap.add_argument("--torch-spec", help="pip requirement for the CUDA torch when one must be installed")
    args = ap.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "reports" / f"gpu-check-{stamp}").resolve()
    gpu, why = detect_gpu()
    ctx = Context(out=out, gpu=gpu, torch_spec=args.torch_spec, python_choice=args.python)
    if args.only:
        wanted = {"env", *args.only.split(",")}
        unknown = wanted - {s.name for s in steps}
        if unknown:
            print(
                f"gpu-check: error: --only names unknown steps: {', '.join(sorted(unknown))}", file=sys.stderr
            )
            return 2
        steps = [s if s.name in wanted else _not_selected(s) for s in steps]
    if args.dry_run:
        dry_run(steps, ctx, why)
        return 0
    if gpu is None:
        print(f"gpu-check: no GPU here ({why}): nothing to check")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"gpu-check: {', '.join(gpu.names)} (driver {gpu.driver}, CUDA {gpu.cuda}); writing {out}", flush=True
    )

    def save(results: list[StepResult]) -> None:
        write_summary(out, _meta(ctx, stamp), results, path_results(out, results))

    results = run_steps(steps, ctx, on_result=save)
    print((out / "summary.md").read_text())
    return 1 if any(r.status == "failed" for r in results) else 0


def _not_selected(step: Step) -> Step:
    """The step, skipped at once (its budget stays, so the later steps keep their deadlines)."""

    def skip(ctx: Context) -> str:
        raise Skip("not selected (--only)")

    return Step(step.name, step.budget_s, step.doc, skip, step.preview)


if __name__ == "__main__":
    sys.exit(main())
