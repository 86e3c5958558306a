"""CLI commands of the report area: report, compare, gate (registered in dde_bench/cli.py).

Exit codes: 0 fine, 1 a regression or a failed gate, 2 unusable input (UserError, printed as one line).
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from dde_bench.errors import UserError


def parse_fraction(text: str, option: str, high: float | None = None) -> float:
    """'10%' -> 0.1, '0.1' -> 0.1, between 0 and ``high`` (no upper bound when None); anything else (a word,
    a negative, NaN or infinite value, or one above ``high``) is a UserError naming the option."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(
            f"{option}: expected a fraction like 0.1 or a percentage like 10%, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise UserError(
            f"{option}: expected a non-negative fraction (0 or more, e.g. 0.1 or 10%), got {text!r}"
        )
    if high is not None and value > high:
        raise UserError(f"{option}: expected at most {high:g} ({high:.0%}), got {text!r}")
    return value


FORMATS = ("text", "markdown", "json")


def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run folders (run.json + results.jsonl)"),
    out: Path | None = typer.Option(None, "--out", help="output folder (default: <first run>/report)"),
) -> None:
    """Render report.md, a self-contained report.html and PNG/SVG plots from one or more run folders."""
    from dde_bench.report.render import render_report

    out_dir = out if out is not None else Path(run_dirs[0]) / "report"
    path = render_report(list(run_dirs), out_dir)
    typer.echo(f"wrote {path} and {out_dir / 'report.md'}")


def compare_cmd(
    baseline: Path = typer.Argument(..., help="baseline run folder"),
    new: Path = typer.Argument(..., help="new run folder"),
    max_slowdown: str = typer.Option(
        "10%", help="latency growth allowed (ratio of medians), e.g. 10% or 0.1"
    ),
    alpha: float = typer.Option(0.01, help="significance level of the one-sided Mann-Whitney U test"),
    max_accuracy_drop: str = typer.Option("1%", help="accuracy drop allowed, in points, e.g. 1% or 0.01"),
    max_memory_growth: str = typer.Option("10%", help="peak memory growth allowed, e.g. 10% or 0.1"),
    fmt: str = typer.Option("text", "--format", help="text | markdown | json"),
) -> None:
    """Compare NEW against BASELINE row by row; exit 1 on any regression, 2 on unusable input."""
    from dde_bench.report.compare import compare_runs

    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not math.isfinite(alpha) or not 0 < alpha < 1:
        raise UserError(f"--alpha: expected a value between 0 and 1, got {alpha}")
    result = compare_runs(
        baseline,
        new,
        max_slowdown=parse_fraction(max_slowdown, "--max-slowdown"),
        alpha=alpha,
        max_accuracy_drop=parse_fraction(max_accuracy_drop, "--max-accuracy-drop", high=1.0),
        max_memory_growth=parse_fraction(max_memory_growth, "--max-memory-growth"),
    )
    text = {"text": result.to_text, "markdown": result.to_markdown, "json": result.to_json}[fmt]()
    typer.echo(text.rstrip("\n"))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def gate_cmd(
    run: Path | None = typer.Argument(
        None, help="run folder for the in-run checks (optional with --against)", show_default=False
    ),
    min_speedup: float = typer.Option(2.0, help="lowest allowed speedup of the student over its teacher"),
    on: str = typer.Option(
        "ci-low",
        help="which speedup must reach --min-speedup: ci-low (lower end of the bootstrap 95% interval, "
        "conservative) or median (the ratio of medians itself; steadier across runs on a shared machine)",
    ),
    max_accuracy_drop: str = typer.Option("1%", help="accuracy the student may lose vs its teacher, e.g. 1%"),
    scenario: str = typer.Option("cached", help="scenario whose student rows are gated"),
    model: list[str] | None = typer.Option(None, "--model", help="gate only these students (repeatable)"),
    min_serving_ratio: float | None = typer.Option(
        None,
        "--min-serving-ratio",
        help="serving: lowest allowed ratio of each cached student's max Server QPS at the latency bound to its "
        "teacher's (the run's server rows); a run with server rows only skips the speedup checks",
    ),
    batch_size: list[int] | None = typer.Option(
        None, "--batch-size", help="gate only the rows of these batch sizes (repeatable)"
    ),
    fmt: str = typer.Option("text", "--format", help="text | markdown | json"),
    against: str | None = typer.Option(
        None,
        "--against",
        help="A/B speed gate: measure this checkout against REV (a commit, branch, HEAD~1; 'auto' = the merge "
        "base with main, or HEAD~1 on main) in alternating processes on this machine",
        metavar="REV",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="A/B: the gate folder to write (default reports/runs/gate-<time>)"
    ),
    max_slowdown: str = typer.Option(
        "10%",
        help="A/B: latency growth allowed (median of the per-round ratios, change / base), e.g. 10% or 0.1",
    ),
    alpha: float = typer.Option(0.01, help="A/B: significance level of the one-sided paired test"),
    processes: int = typer.Option(
        2, help="A/B: fresh worker pairs (one process per side), one after another"
    ),
    rounds: int = typer.Option(
        15, help="A/B: rounds per worker pair (each side times --calls calls per round)"
    ),
    calls: int = typer.Option(10, help="A/B: timed calls of each model per worker and round"),
    threads: int = typer.Option(1, help="A/B: torch threads of every probe process"),
    clock: str = typer.Option(
        "cpu",
        help="A/B: decide on each call's CPU time (cpu: immune to other tenants holding the core) or wall",
    ),
) -> None:
    """Gate a run on in-run quantities (speedup measured interleaved, accuracy vs teacher) and/or, with
    --against REV, gate this checkout's speed against REV measured on this machine; exit 1 on failure."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if run is None and against is None:
        raise UserError("gate: give a RUN folder (in-run checks), --against REV (A/B speed gate), or both")
    code = 0
    if run is not None:
        from dde_bench.report.compare import GateResult, gate_run
        from dde_bench.report.serving import gate_serving, has_rows

        if not math.isfinite(min_speedup) or min_speedup <= 0:
            raise UserError(f"--min-speedup: expected a positive number, got {min_speedup}")
        checks = []
        if min_serving_ratio is None or has_rows(run, scenario):
            checks += gate_run(
                run,
                min_speedup=min_speedup,
                max_accuracy_drop=parse_fraction(max_accuracy_drop, "--max-accuracy-drop", high=1.0),
                scenario=scenario,
                models=list(model) if model else None,
                on=on,
                batch_sizes=list(batch_size) if batch_size else None,
            ).checks
        if min_serving_ratio is not None:
            checks += gate_serving(run, min_serving_ratio, list(model) if model else None).checks
        result = GateResult(Path(run), checks)
        text = {"text": result.to_text, "markdown": result.to_markdown, "json": result.to_json}[fmt]()
        typer.echo(text.rstrip("\n"))
        code = max(code, result.exit_code)
    if against is not None:
        code = max(
            code,
            _ab_gate(
                against,
                out,
                fmt,
                parse_fraction(max_slowdown, "--max-slowdown"),
                alpha,
                processes,
                rounds,
                calls,
                threads,
                clock,
            ),
        )
    if code:
        raise typer.Exit(code)


def _ab_gate(
    against: str,
    out: Path | None,
    fmt: str,
    max_slowdown: float,
    alpha: float,
    processes: int,
    rounds: int,
    calls: int,
    threads: int,
    clock: str,
) -> int:
    """The A/B speed gate (dde_bench.bench.abgate); prints its table and returns its exit code."""
    import json
    from datetime import datetime

    from rich.console import Console

    from dde_bench import paths
    from dde_bench.bench.abgate import ABSettings, ab_gate

    if not 0 < alpha < 1:
        raise UserError(f"--alpha: expected a value between 0 and 1, got {alpha}")
    if out is None:
        out = paths.runs_dir() / f"gate-{datetime.now():%Y%m%d-%H%M%S}"
    settings = ABSettings(
        max_slowdown=max_slowdown,
        alpha=alpha,
        processes=processes,
        rounds=rounds,
        calls=calls,
        threads=threads,
        clock=clock,
    )
    result = ab_gate(against, out, settings, console=Console(stderr=True) if fmt == "text" else None)
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2)
    else:
        text = result.to_markdown() if fmt == "markdown" else result.to_text()
    typer.echo(text.rstrip("\n"))
    if fmt != "json":
        typer.echo(f"wrote {out} (gate.json, gate.md, base/ and change/ run folders)")
    return result.exit_code
