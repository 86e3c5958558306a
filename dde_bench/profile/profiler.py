"""`dde-bench profile`: one model, one scenario, one batch size under torch.profiler.

The models and inputs are the harness's own (dde_bench.bench.workload: Workload, build_entries, inputs,
scenario_call), so a profile shows exactly the call `dde-bench run` times. The stages of the models are
record_function ranges (teacher.joint, teacher.head, student.text_tower, student.image_tower,
student.fusion_head); their share of a step is read back from the profile.

Writes into the profile folder:
  tb/*.pt.trace.json       for `tensorboard --logdir OUT/tb` (PyTorch profiler plugin, torch-tb-profiler)
  trace.json               Chrome trace of the same steps: open in https://ui.perfetto.dev or chrome://tracing
  top_ops.csv              every operator: calls, self/total CPU time, FLOPs, memory (CUDA columns on GPU)
  stages.csv               per-stage time per step and share of the step
  memory_snapshot.pickle   CUDA only, with --memory: open in https://pytorch.org/memory_viz
  profile.json             the settings and the environment of the profile
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

from dde_bench import paths
from dde_bench.errors import UserError

PROFILE_SCENARIOS = ("online", "cached")
STAGES = {
    "teacher": ("teacher.joint", "teacher.head"),
    "student": ("student.image_tower", "student.text_tower", "student.fusion_head"),
}
STEP_PREFIX = "ProfilerStep"  # key_averages groups ProfilerStep#N as "ProfilerStep*"
WAIT, WARMUP = 1, 1


@dataclass
class ProfileConfig:
    suite: str  # a suite name or YAML file
    model: str
    data_dir: Path | None = None  # the dataset folder instead of the suite's own data
    scenario: str = "online"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "fp32"
    steps: int = 5  # active (recorded) steps, after 1 wait and 1 warm-up step
    memory: bool = False
    out: Path | None = None
    top: int = 15  # rows of the printed operator table (the CSV has all)
    seed: int = 0
    cache_root: Path = field(default_factory=paths.cache_root)


@dataclass
class ProfileResult:
    out: Path
    trace: Path
    tb_dir: Path
    top_ops: pd.DataFrame
    stages: pd.DataFrame
    memory_snapshot: Path | None = None
    files: list[Path] = field(default_factory=list)


def stage_names(kind: str, scenario: str) -> tuple[str, ...]:
    """The record_function ranges a (kind, scenario) call goes through."""
    names = STAGES.get(kind, ())
    if kind == "student" and scenario == "cached":
        names = tuple(n for n in names if n != "student.image_tower")
    return names


def _validate(cfg: ProfileConfig) -> None:
    from dde_bench.bench.workload import DTYPES

    if cfg.scenario not in PROFILE_SCENARIOS:
        hint = (
            " (gallery is a sweep; profile one of its calls with cached)" if cfg.scenario == "gallery" else ""
        )
        raise UserError(
            f"unknown scenario {cfg.scenario!r}; profile knows: {', '.join(PROFILE_SCENARIOS)}{hint}"
        )
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.steps <= 0:
        raise UserError(f"--steps must be positive, got {cfg.steps}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"unknown dtype {cfg.dtype!r}; known: {', '.join(DTYPES)}")


def _build(cfg: ProfileConfig, device: torch.device, console: Console, resolve_trained=None):
    """The model entry and the callable of (model, scenario), built by the harness's workload."""
    from dde_bench.bench.workload import DTYPES, Workload, build_entries, cast, inputs, scenario_call
    from dde_bench.cards import load_model_card, load_suite

    card = load_suite(cfg.suite, check_models=False).with_data_dir(cfg.data_dir)
    mcard = load_model_card(cfg.model)  # unknown model: one-line error before any data is generated
    # a transformers reference needs the teacher whose weights it carries
    names = [mcard.same_weights_as, cfg.model] if mcard.kind == "hf-vilt" else [cfg.model]
    workload = Workload(card, Path(cfg.cache_root), console)
    entries = build_entries(workload, names, device, cfg.seed, resolve_trained, console)
    entry = {e.name: e for e in entries}[cfg.model]
    dtype = DTYPES[cfg.dtype]
    if dtype != torch.float32:
        entry = cast(entry, dtype)
    with torch.inference_mode():
        x = inputs(entry, workload, cfg.batch_size, device, dtype, cfg.seed)
        fn = scenario_call(entry, cfg.scenario, x)  # cached: image features computed here, not profiled
    return entry, fn


def default_out(cfg: ProfileConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{cfg.suite}-{cfg.model}-{cfg.scenario}-b{cfg.batch_size}-{stamp}"
    return paths.profiles_dir() / name


def run_profile(cfg: ProfileConfig, console: Console | None = None, resolve_trained=None) -> ProfileResult:
    """Profile ``cfg``'s call; ``resolve_trained`` supplies the checkpoints of ``weights: trained`` cards
    (:data:`dde_bench.bench.workload.TrainedResolver`)."""
    from dde_bench.env import environment, resolve_device

    console = console or Console()
    _validate(cfg)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if cfg.dtype == "fp16" and not cuda:
        raise UserError("fp16 is a CUDA dtype here; on CPU use fp32 or bf16")
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: folder exists and is not empty; choose another --out")
    entry, fn = _build(cfg, device, console, resolve_trained)

    tb_dir = out / "tb"
    tb_dir.mkdir(parents=True, exist_ok=True)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    total_steps = WAIT + WARMUP + cfg.steps
    snapshot = None
    console.print(
        f"[bold]profile[/]: {cfg.model} ({entry.kind}, {entry.size}) {cfg.scenario} b={cfg.batch_size} "
        f"{cfg.dtype} on {device}: {WAIT} wait + {WARMUP} warm-up + {_steps(cfg.steps)}"
    )
    if cfg.memory and cuda:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        with (
            torch.inference_mode(),
            profile(
                activities=activities,
                schedule=schedule(wait=WAIT, warmup=WARMUP, active=cfg.steps, repeat=1),
                on_trace_ready=_trace_handler(tb_dir, out / "trace.json", _worker(cfg)),
                record_shapes=True,
                with_flops=True,
                profile_memory=cfg.memory,
            ) as prof,
        ):
            for _ in range(total_steps):
                fn()
                if cuda:
                    torch.cuda.synchronize(device)
                prof.step()
        if cfg.memory and cuda:
            snapshot = out / "memory_snapshot.pickle"
            torch.cuda.memory._dump_snapshot(str(snapshot))
    finally:
        if cfg.memory and cuda:
            torch.cuda.memory._record_memory_history(enabled=None)

    trace = out / "trace.json"
    if not trace.exists():
        raise RuntimeError(f"the profiler wrote no trace into {tb_dir}")
    events = prof.key_averages()
    top = top_ops_frame(events, cuda, cfg.memory)
    stages = stages_frame(events, stage_names(entry.kind, cfg.scenario), cfg.steps, cuda)
    top.to_csv(out / "top_ops.csv", index=False)
    stages.to_csv(out / "stages.csv", index=False)
    meta = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "kind": entry.kind,
        "size": entry.size,
        "note": entry.note,
        "out": str(out),
        "environment": environment(device),
    }
    (out / "profile.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    _print(console, cfg, top, stages, cuda)
    if cfg.memory and not cuda:
        console.print(
            "[yellow]memory[/]: CPU memory per operator is in top_ops.csv; the allocator snapshot "
            "(memory_snapshot.pickle) is CUDA-only and was not written"
        )
    files = sorted(p for p in out.rglob("*") if p.is_file())
    res = ProfileResult(out, trace, tb_dir, top, stages, snapshot, files)
    _print_files(console, res)
    return res


def _trace_handler(tb_dir: Path, trace: Path, worker: str):
    """tensorboard_trace_handler (tb/<worker>.<ms>.pt.trace.json, for the PyTorch profiler plugin), and the
    same Chrome trace as trace.json for Perfetto. Kineto saves a trace once, so trace.json is a copy of
    the file prof.export_chrome_trace wrote for TensorBoard."""
    tensorboard = tensorboard_trace_handler(str(tb_dir), worker_name=worker)

    def handler(prof) -> None:
        before = set(tb_dir.glob("*.pt.trace.json*"))
        tensorboard(prof)
        new = sorted(set(tb_dir.glob("*.pt.trace.json*")) - before)
        if new:
            shutil.copyfile(new[-1], trace)

    return handler


def _worker(cfg: ProfileConfig) -> str:
    return f"{cfg.model}-{cfg.scenario}-b{cfg.batch_size}"


def _get(evt, *names, default=0.0):
    for n in names:
        v = getattr(evt, n, None)
        if v is not None:
            return v
    return default


def _is_annotation(key: str) -> bool:
    return key.startswith(STEP_PREFIX) or any(key in s for s in STAGES.values())


def top_ops_frame(events, cuda: bool, memory: bool) -> pd.DataFrame:
    """One row per operator (over all recorded steps), heaviest self time first. Profiler steps and the
    stage ranges are left out: they are in stages.csv."""
    rows = []
    for e in events:
        if _is_annotation(e.key):
            continue
        row = {
            "name": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "cpu_total_ms": e.cpu_time_total / 1e3,
            "flops": e.flops or 0,
            "self_cpu_mem_bytes": e.self_cpu_memory_usage if memory else None,
            "cpu_mem_bytes": e.cpu_memory_usage if memory else None,
        }
        if cuda:
            row.update(
                self_cuda_ms=_get(e, "self_device_time_total", "self_cuda_time_total") / 1e3,
                cuda_total_ms=_get(e, "device_time_total", "cuda_time_total") / 1e3,
                self_cuda_mem_bytes=_get(e, "self_device_memory_usage", "self_cuda_memory_usage")
                if memory
                else None,
                cuda_mem_bytes=_get(e, "device_memory_usage", "cuda_memory_usage") if memory else None,
            )
        rows.append(row)
    cols = ["name", "calls", "self_cpu_ms", "cpu_total_ms", "flops", "self_cpu_mem_bytes", "cpu_mem_bytes"]
    if cuda:
        cols += ["self_cuda_ms", "cuda_total_ms", "self_cuda_mem_bytes", "cuda_mem_bytes"]
    df = pd.DataFrame(rows, columns=cols)
    total = df["self_cpu_ms"].sum()
    df.insert(3, "self_cpu_pct", 100 * df["self_cpu_ms"] / total if total else 0.0)
    if cuda:
        total = df["self_cuda_ms"].sum()
        df["self_cuda_pct"] = 100 * df["self_cuda_ms"] / total if total else 0.0
    sort = "self_cuda_ms" if cuda else "self_cpu_ms"
    return df.sort_values(sort, ascending=False, kind="stable").reset_index(drop=True)


def stages_frame(events, stages: tuple[str, ...], steps: int, cuda: bool) -> pd.DataFrame:
    """Each stage's time per step and its share of the step; 'other' is the rest of the step (Python,
    input handling, profiler overhead). On CUDA the share is of the GPU time of the step."""
    by_key = {e.key: e for e in events}
    step_cpu = sum(e.cpu_time_total for e in events if e.key.startswith(STEP_PREFIX)) / steps / 1e3
    step_dev = (
        sum(_get(e, "device_time_total", "cuda_time_total") for e in events if e.key.startswith(STEP_PREFIX))
        / steps
        / 1e3
    )
    rows = []
    for name in stages:
        e = by_key.get(name)
        row = {
            "stage": name,
            "calls_per_step": (e.count / steps) if e else 0.0,
            "cpu_ms_per_step": (e.cpu_time_total / steps / 1e3) if e else 0.0,
        }
        if cuda:
            row["cuda_ms_per_step"] = (
                (_get(e, "device_time_total", "cuda_time_total") / steps / 1e3) if e else 0.0
            )
        rows.append(row)
    other = {
        "stage": "other",
        "calls_per_step": None,
        "cpu_ms_per_step": step_cpu - sum(r["cpu_ms_per_step"] for r in rows),
    }
    if cuda:
        other["cuda_ms_per_step"] = step_dev - sum(r["cuda_ms_per_step"] for r in rows)
    step = {"stage": "step", "calls_per_step": 1.0, "cpu_ms_per_step": step_cpu}
    if cuda:
        step["cuda_ms_per_step"] = step_dev
    rows += [other, step]
    df = pd.DataFrame(rows)
    df["cpu_share"] = df["cpu_ms_per_step"] / step_cpu if step_cpu else 0.0
    if cuda:
        df["cuda_share"] = df["cuda_ms_per_step"] / step_dev if step_dev else 0.0
    return df


def _print(console: Console, cfg: ProfileConfig, top: pd.DataFrame, stages: pd.DataFrame, cuda: bool) -> None:
    t = Table(title=f"stages: time per step, mean of {_steps(cfg.steps)}")
    cols = ["stage", "CPU ms", "CPU share"] + (["CUDA ms", "CUDA share"] if cuda else [])
    for c in cols:
        t.add_column(c, justify="left" if c == "stage" else "right", no_wrap=True)
    for r in stages.itertuples(index=False):
        vals = [r.stage, f"{r.cpu_ms_per_step:.3f}", f"{100 * r.cpu_share:.1f}%"]
        if cuda:
            vals += [f"{r.cuda_ms_per_step:.3f}", f"{100 * r.cuda_share:.1f}%"]
        t.add_row(*vals, style="bold" if r.stage == "step" else None)
    console.print(t)
    if len(stages) == 2:
        console.print("[yellow]note[/]: this model has no stage ranges (only teachers and students do)")

    sort = "self CUDA" if cuda else "self CPU"
    n = min(cfg.top, len(top))
    t = Table(
        title=f"top {n} of {len(top)} operators by {sort} time (CPU unless marked cuda), "
        f"total over {_steps(cfg.steps)}"
    )
    cols = ["operator", "calls", "self ms", "self %", "total ms", "GFLOPs"]  # CPU
    if cfg.memory:
        cols.append("mem MB")
    if cuda:
        cols += ["cuda self ms", "cuda total ms"] + (["cuda mem MB"] if cfg.memory else [])
    for c in cols:
        if c == "operator":  # names have no spaces: too long ones end in an ellipsis instead of folding
            t.add_column(c, overflow="ellipsis", min_width=16)
        else:
            t.add_column(c, justify="right", no_wrap=True)
    for r in top.head(cfg.top).itertuples(index=False):
        vals = [
            r.name,
            str(r.calls),
            f"{r.self_cpu_ms:.3f}",
            f"{r.self_cpu_pct:.1f}",
            f"{r.cpu_total_ms:.3f}",
            f"{r.flops / 1e9:.3f}" if r.flops else "",
        ]
        if cfg.memory:
            vals.append(f"{r.cpu_mem_bytes / 2**20:.2f}")
        if cuda:
            vals += [f"{r.self_cuda_ms:.3f}", f"{r.cuda_total_ms:.3f}"]
            if cfg.memory:
                vals.append(f"{r.cuda_mem_bytes / 2**20:.2f}")
        t.add_row(*vals)
    console.print(t)
    console.print(
        "[dim]times are under the profiler (with its overhead): for latency use `dde-bench run`[/]",
        highlight=False,
    )


def _steps(n: int) -> str:
    return f"{n} recorded step" + ("" if n == 1 else "s")


def _print_files(console: Console, res: ProfileResult) -> None:
    console.print(f"[bold]written[/]: {res.out}")
    tb_files = sorted(res.tb_dir.glob("*.pt.trace.json"))
    lines = [
        "  trace.json      Chrome trace: open in https://ui.perfetto.dev (or chrome://tracing)",
        f"  tb/             {tb_files[0].name if tb_files else '(no trace)'}: tensorboard --logdir {res.tb_dir}",
        "  top_ops.csv     every operator: calls, self/total time, FLOPs, memory",
        "  stages.csv      per-stage time per step and share of the step",
        "  profile.json    settings and environment",
    ]
    if res.memory_snapshot is not None:
        lines.append(
            "  memory_snapshot.pickle  CUDA allocator history: drag into https://pytorch.org/memory_viz"
        )
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
