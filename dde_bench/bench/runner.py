"""The benchmark harness: `dde-bench run` measures every model of a suite in every scenario.

:class:`RunConfig` holds what the user asked for; :func:`plan_run` resolves it against the suite card into a
:class:`~dde_bench.bench.context.RunPlan` (every setting checked before any work starts); :class:`Runner` loads the
workload and the models, scores each model once per dtype and hands the rows to each scenario
(:mod:`dde_bench.bench.scenarios`), which writes them as they are measured (see ``schema.py``).

This layer measures only: trained weights come from the ``resolve_trained`` function the command layer passes
(:data:`~dde_bench.bench.workload.TrainedResolver`), and the report is rendered by the command after the run.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dde_bench import paths
from dde_bench.bench import scenarios
from dde_bench.bench.context import GALLERY_SIZES, QUICK_GALLERY_SIZES, RunContext, RunPlan, TimingRule
from dde_bench.bench.flops import measure_gemm_peak
from dde_bench.bench.results import ResultWriter
from dde_bench.bench.summary import print_summary
from dde_bench.bench.workload import (
    DTYPES,
    Entry,
    TrainedResolver,
    Workload,
    build_entries,
    cast,
    logits_fn,
)
from dde_bench.cards import check_model_names, load_suite
from dde_bench.env import resolve_device
from dde_bench.errors import UserError


@dataclass
class RunConfig:
    """What the user asked of one `dde-bench run` (None = the suite card's setting, else the harness default)."""

    suite: str  # a suite name or a path to a suite YAML file
    device: str = "auto"
    data_dir: Path | None = None  # the dataset folder (official layout) instead of the suite's own data
    models: list[str] | None = None  # model card names
    scenarios: list[str] | None = None
    batch_sizes: list[int] | None = None
    dtypes: list[str] | None = None
    gallery_sizes: list[int] | None = None
    out: Path | None = None
    quick: bool = False  # tiny models only, batch sizes <= 8, shorter timing
    resume: bool = False
    resume_add: bool = (
        False  # with resume: the run may gain models, scenarios, sizes or dtypes (run.json history)
    )
    threads: int | None = None
    seed: int = 0
    cache_root: Path = field(default_factory=paths.cache_root)
    min_iters: int | None = None
    min_time_s: float | None = None
    max_time_s: float | None = None  # cap on the measured seconds of one interleaved group (None: 60)
    rel_ci: float | None = (
        None  # measure on until each median's 95% interval is within this fraction (0: off)
    )
    compile: str | None = (
        None  # a torch.compile backend ("inductor") adds `@compiled` variants (online, cached)
    )
    keep_stores: bool = False
    store_shard_size: int = 4096
    variants: list[str] | None = None  # run-option variants (bench.variants): int8, ort


def _check_names(given: list[str], known: list[str], what: str, where: str) -> list[str]:
    for name in given:
        if name not in known:
            raise UserError(f"{where}: unknown {what} {name!r}; known: {', '.join(known)}")
    return list(given)


def plan_run(cfg: RunConfig) -> RunPlan:
    """Resolve ``cfg`` against its suite card. Every unknown name or bad value is one line before any work."""
    card = load_suite(cfg.suite).with_data_dir(cfg.data_dir)
    device = resolve_device(cfg.device)
    known = scenarios.names()
    if cfg.scenarios:
        scen = _check_names(cfg.scenarios, known, "scenario", "--scenarios")
    else:
        scen = _check_names(card.scenarios, known, "scenario", f"{card.where}: scenarios")
    dtypes = cfg.dtypes or card.dtypes
    _check_names(dtypes, list(DTYPES), "dtype", "--dtype" if cfg.dtypes else f"{card.where}: dtypes")
    if "fp16" in dtypes and device.type == "cpu":
        raise UserError("fp16 is a CUDA dtype here; on CPU use fp32 or bf16")
    if cfg.compile:
        from torch import _dynamo

        backends = _dynamo.list_backends(exclude_tags=())
        if cfg.compile not in backends:
            raise UserError(f"unknown torch.compile backend {cfg.compile!r}; known: {', '.join(backends)}")
    from dde_bench.bench.variants import check_names as check_variants

    variants = check_variants(cfg.variants)
    if cfg.models:
        model_cards = check_model_names(cfg.models, "--models")
    else:
        model_cards = check_model_names(card.models, f"{card.where}: models")
        if cfg.quick:
            model_cards = [m for m in model_cards if m.size == "tiny"]
    if not model_cards:
        raise UserError(f"{card.where}: names no models (and none were given with --models)")
    batch_sizes = cfg.batch_sizes or (
        [b for b in card.batch_sizes if b <= 8] if cfg.quick else card.batch_sizes
    )
    gallery = cfg.gallery_sizes or card.gallery_sizes or (QUICK_GALLERY_SIZES if cfg.quick else GALLERY_SIZES)
    budget = card.teacher_gallery_budget_s or (0.5 if cfg.quick else 3.0)
    if cfg.threads is not None and cfg.threads < 1:
        raise UserError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.min_iters is not None and cfg.min_iters < 1:
        raise UserError(f"--min-iters must be at least 1, got {cfg.min_iters}")
    if cfg.min_time_s is not None and not cfg.min_time_s >= 0:  # (NaN too)
        raise UserError(f"--min-time must be 0 or more seconds, got {cfg.min_time_s}")
    if cfg.max_time_s is not None and not cfg.max_time_s > 0:
        raise UserError(f"--max-time must be more than 0 seconds, got {cfg.max_time_s}")
    if cfg.rel_ci is not None and not 0 <= cfg.rel_ci < 1:
        raise UserError(f"--rel-ci must be a fraction in [0, 1) (0 = off), got {cfg.rel_ci}")
    if cfg.store_shard_size < 1:
        raise UserError(f"store shard size must be at least 1, got {cfg.store_shard_size}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out) if cfg.out else paths.runs_dir() / f"{card.name}-{device.type}-{stamp}"
    return RunPlan(
        suite=card,
        device=device,
        run_dir=run_dir,
        model_cards=model_cards,
        scenarios=scen,
        dtypes=list(dtypes),
        batch_sizes=list(batch_sizes),
        gallery_sizes=list(gallery),
        sizes_from_command_line=bool(cfg.batch_sizes),
        gallery_from_command_line=bool(cfg.gallery_sizes),
        teacher_gallery_budget_s=budget,
        rule=TimingRule.default(cfg.quick, cfg.min_iters, cfg.min_time_s, cfg.rel_ci, cfg.max_time_s),
        threads=cfg.threads or (os.cpu_count() or 1),
        seed=cfg.seed,
        compile=cfg.compile,
        keep_stores=cfg.keep_stores,
        store_shard_size=cfg.store_shard_size,
        variants=variants,
        cache_root=Path(cfg.cache_root),
    )


class Runner:
    """Run one plan: load, score, measure every scenario, print the summary."""

    def __init__(
        self,
        cfg: RunConfig,
        console: Console | None = None,
        resolve_trained: TrainedResolver | None = None,
    ):
        self.cfg = cfg
        # wide enough for the summary table when the output is not a terminal (logs, CI)
        self.console = console or Console(width=None if Console().is_terminal else 160)
        self.resolve_trained = resolve_trained
        self.plan = plan_run(cfg)
        # the run folder is checked before any data is prepared: a file, a folder in use, results without
        # --resume, or a resume with other settings is one line now, not after minutes of work
        ResultWriter.check_target(
            self.plan.run_dir,
            cfg.resume,
            self.plan.settings(),
            device=self.plan.device,
            threads=self.plan.threads if self.plan.device.type == "cpu" else None,
            allow_additions=cfg.resume_add,
        )

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    def _apply_threads(self) -> None:
        if self.plan.device.type == "cpu":
            torch.set_num_threads(self.plan.threads)

    def run(self) -> Path:
        plan, cfg, console = self.plan, self.cfg, self.console
        phases = Phases()
        self._apply_threads()
        with phases("data"):
            workload = Workload(plan.suite, Path(cfg.cache_root), console)
        with phases("models (load / train)"):
            entries = build_entries(
                workload, plan.models, plan.device, plan.seed, self.resolve_trained, console
            )
        self._apply_threads()  # (re)apply: training or loading must not change what is measured
        with phases("GEMM peak"):
            n = 1024 if cfg.quick else 2048
            peaks = {d: measure_gemm_peak(plan.device, DTYPES[d], n=n) for d in plan.dtypes}
        settings = plan.settings()
        settings.update(
            quick=cfg.quick,
            resume=cfg.resume,
            cache_root=str(cfg.cache_root),
            data_dir=str(workload.data_dir),
            skipped_images=workload.data.bad_images,
            eval_split=workload.split,
            threads=torch.get_num_threads(),
            gemm_peak=peaks,
            inject_slowdown=os.environ.get("DDE_BENCH_INJECT_SLOWDOWN") or None,
            config=_plain(asdict(cfg)),
        )
        with ResultWriter(
            plan.run_dir, settings, device=plan.device, resume=cfg.resume, allow_additions=cfg.resume_add
        ) as writer:
            console.print(f"[bold]run folder[/]: {plan.run_dir}")
            _point_latest(plan.run_dir, plan.suite.name)
            ctx = RunContext(plan, workload, writer, console, gemm_peak=peaks)
            registry = scenarios.registry()
            for dtype in plan.dtypes:
                models = entries if dtype == "fp32" else [cast(e, DTYPES[dtype]) for e in entries]
                with phases(f"accuracy {dtype}"):
                    ctx.accuracy = self._accuracy(ctx, models, dtype)
                    # variants that change the numerics (int8) are scored themselves
                    scored = [v for v in ctx.variants(models, dtype).entries if v.runtime == "int8"]
                    ctx.accuracy.update(self._accuracy(ctx, scored, dtype))
                with _progress(console) as progress:
                    for name in plan.scenarios:
                        label = scenarios.phase_label(registry[name], plan)
                        if label is None:
                            continue  # measured by another scenario of this plan
                        with phases(f"{label} {dtype}"):
                            registry[name].run(ctx, models, dtype, progress)
            print_summary(writer.rows, console)
        phases.write(plan.run_dir / "phases.json")
        console.print("[bold]time per phase[/]: " + phases.line())
        return plan.run_dir

    def _accuracy(self, ctx: RunContext, entries: list[Entry], dtype: str) -> dict[str, dict]:
        """Each trained model's official metric on the evaluation split (and its prediction file); n/a for
        random weights. A transformers reference row is scored with its teacher's answer list."""
        from dde_bench.evaluation import evaluate

        by_name = {e.name: e for e in entries}
        out = {}
        for e in entries:
            if not e.trained:
                out[e.name] = dict.fromkeys(
                    ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_metric")
                )
                continue
            ctx.console.print(
                f"[bold]accuracy[/]: {e.name} on {ctx.workload.split} ({len(ctx.workload.examples)} examples)"
            )
            owner = by_name[e.teacher].model if e.kind == "hf-vilt" else e.model
            data = ctx.workload.dataset_for(e)
            ev = evaluate(owner, data, ctx.device, dtype=DTYPES[dtype], fn=logits_fn(e))
            ev.write_predictions(ctx.plan.run_dir / "predictions", e.name)
            out[e.name] = ev.row(seed=0)
        return out


class Phases:
    """Wall time of each phase of a run (data, models, each scenario ...), printed at the end and written to
    RUN/phases.json, so a slow run says where its time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def line(self) -> str:
        total = sum(self.seconds.values())
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()) + f" (total {total:.0f} s)"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({k: round(v, 2) for k, v in self.seconds.items()}, indent=2) + "\n")


def _plain(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _point_latest(run_dir: Path, suite: str) -> None:
    """RUNS/latest-<suite> -> the newest run folder (best effort)."""
    link = run_dir.parent / f"latest-{suite}"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(run_dir.name)
    except OSError:
        pass


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    )
