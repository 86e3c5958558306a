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
    run: Path = typer.Argument(..., help="run folder"),
    min_speedup: float = typer.Option(2.0, help="lowest allowed speedup of the student over its teacher"),
    on: str = typer.Option(
        "ci-low",
        help="which speedup must reach --min-speedup: ci-low (lower end of the bootstrap 95% interval, "
        "conservative) or median (the ratio of medians itself; steadier across runs on a shared machine)",
    ),
    max_accuracy_drop: str = typer.Option("1%", help="accuracy the student may lose vs its teacher, e.g. 1%"),
    scenario: str = typer.Option("cached", help="scenario whose student rows are gated"),
    model: list[str] | None = typer.Option(None, "--model", help="gate only these students (repeatable)"),
    fmt: str = typer.Option("text", "--format", help="text | markdown | json"),
) -> None:
    """Gate a run on in-run quantities (speedup measured interleaved, accuracy vs teacher); exit 1 on failure."""
    from dde_bench.report.compare import gate_run

    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not math.isfinite(min_speedup) or min_speedup <= 0:
        raise UserError(f"--min-speedup: expected a positive number, got {min_speedup}")
    result = gate_run(
        run,
        min_speedup=min_speedup,
        max_accuracy_drop=parse_fraction(max_accuracy_drop, "--max-accuracy-drop", high=1.0),
        scenario=scenario,
        models=list(model) if model else None,
        on=on,
    )
    text = {"text": result.to_text, "markdown": result.to_markdown, "json": result.to_json}[fmt]()
    typer.echo(text.rstrip("\n"))
    if result.exit_code:
        raise typer.Exit(result.exit_code)
