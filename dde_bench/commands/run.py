"""`dde-bench run`: the benchmark harness's command. It wires three areas: the trainer supplies the checkpoints of
`weights: trained` cards, the harness (dde_bench.bench.runner) measures, the report renders the run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from dde_bench.errors import UserError


def _ints(s: str | None, what: str) -> list[int] | None:
    if not s:
        return None
    try:
        vals = [int(v) for v in s.replace(" ", "").split(",") if v]
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers, got {s!r}") from None
    if any(v <= 0 for v in vals):
        raise UserError(f"{what} must be positive, got {s!r}")
    return vals


def _names(s: str | None) -> list[str] | None:
    return [v for v in s.replace(" ", "").split(",") if v] if s else None


def run_cmd(
    suite: str = typer.Option(
        "nlvr2",
        "--suite",
        "-s",
        help="suite name (see `dde-bench list`: nlvr2, vqa, snli-ve, ...) or a YAML file",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, or cuda[:N]"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    models: str = typer.Option(None, help="comma-separated model cards (default: the suite's list)"),
    batch_sizes: str = typer.Option(
        None, "--batch-sizes", help="comma-separated batch sizes (default: the suite's)"
    ),
    scenarios: str = typer.Option(
        None,
        help="comma-separated: online, cached, gallery, and the LoadGen serving scenarios single-stream, server, "
        "offline (serving = all three); default: the suite's list",
    ),
    dtype: str = typer.Option(None, "--dtype", help="comma-separated: fp32, bf16, fp16 (fp16 on CUDA only)"),
    gallery_sizes: str = typer.Option(None, "--gallery-sizes", help="comma-separated gallery sizes N"),
    out: Path = typer.Option(
        None, help="run folder (default: ./reports/runs/<suite>-<device>-<time>, or under $DDE_BENCH_HOME)"
    ),
    quick: bool = typer.Option(
        False, help="tiny models only, batch sizes 1 and 8, shorter timing: for tests and smoke runs"
    ),
    resume: bool = typer.Option(
        False, help="continue an interrupted run in --out, skipping rows already measured"
    ),
    resume_add: bool = typer.Option(
        False,
        "--resume-add",
        help="like --resume, and the run may gain models, scenarios, batch sizes, gallery sizes or dtypes "
        "(recorded in run.json's history); other changed settings are still refused",
    ),
    threads: int = typer.Option(None, help="CPU threads (torch.set_num_threads); default: all cores"),
    seed: int = typer.Option(0, help="seed for inputs, random weights and bootstrap intervals"),
    min_time: float = typer.Option(
        None, "--min-time", help="minimum measured seconds per row (with --min-iters)"
    ),
    max_time: float = typer.Option(
        None,
        "--max-time",
        help="cap on the measured seconds of one interleaved group (default 60); paper-size groups on CPU stop "
        "at it after a few rounds: raise it for tighter intervals",
    ),
    rel_ci: float = typer.Option(
        None,
        "--rel-ci",
        help="after the minimums, measure a group on until every median's 95% interval is within this fraction "
        "of it (default 0.02; --quick: 0 = off), at most the time cap",
    ),
    min_iters: int = typer.Option(None, "--min-iters", help="minimum timed calls per row"),
    report: bool = typer.Option(True, help="render the report at the end"),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="also measure each teacher and student through torch.compile (rows MODEL@compiled, online and "
        "cached), against the plain path in the same interleaved group; outputs are checked first",
    ),
    compile_backend: str = typer.Option(
        "inductor", "--compile-backend", help="torch.compile backend for --compile (inductor, aot_eager, ...)"
    ),
    variants: str = typer.Option(
        None,
        "--variants",
        help="comma-separated extra rows per teacher and student, online and cached, measured interleaved with "
        "the plain model after an output check: int8 (dynamic int8 Linear layers, fp32 CPU runs; accuracy "
        "measured too), ort (exported with torch.onnx, run by ONNX Runtime's CPU provider; needs the `ort` "
        "extra, else skipped rows)",
    ),
    keep_stores: bool = typer.Option(
        False, "--keep-stores", help="keep the gallery scenario's on-disk feature stores in RUN/stores"
    ),
) -> None:
    """Measure accuracy against latency, throughput, memory and energy, online and with cached image features.

    On a machine with no data and no checkpoints the suite's synthetic world is generated and the tiny models
    are trained with the quick recipe (cached under reports/cache for the next run). Rows are written to
    RUN/results.jsonl and results.csv as they are measured; Ctrl-C keeps them and --resume skips them.
    """
    from dde_bench.bench.runner import RunConfig, Runner
    from dde_bench.training import trained_resolver

    resume = resume or resume_add
    if resume and out is None:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    cfg = RunConfig(
        suite=suite,
        device=device,
        data_dir=data_dir,
        models=_names(models),
        scenarios=_names(scenarios),
        batch_sizes=_ints(batch_sizes, "--batch-sizes"),
        dtypes=_names(dtype),
        gallery_sizes=_ints(gallery_sizes, "--gallery-sizes"),
        out=out,
        quick=quick,
        resume=resume,
        resume_add=resume_add,
        threads=threads,
        seed=seed,
        min_time_s=min_time,
        max_time_s=max_time,
        rel_ci=rel_ci,
        min_iters=min_iters,
        compile=compile_backend if compile else None,
        keep_stores=keep_stores,
        variants=_names(variants),
    )
    runner = Runner(cfg, resolve_trained=trained_resolver(cfg.cache_root))
    run_dir = runner.run()
    if report:
        from dde_bench.report.render import render_report

        runner.console.print(f"[bold]report[/]: {render_report([run_dir], run_dir / 'report')}")
