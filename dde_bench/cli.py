"""The `dde-bench` command line: thin commands over the library API.

Each area of the library owns its commands (dde_bench/<area>/commands.py); commands that wire several areas
(`run`: trainer + harness + report; `cache`) live in dde_bench/commands/. This file only puts them together, and
``main`` is the one guarded entry: user errors one line (exit 2), Ctrl-C one line (130), anything else one
bug-report line with the traceback in a file (70).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dde_bench import errors
from dde_bench.commands.cache import cache_app
from dde_bench.commands.run import run_cmd
from dde_bench.data.commands import data_app
from dde_bench.errors import UserError
from dde_bench.profile.commands import profile_cmd
from dde_bench.report.commands import compare_cmd, gate_cmd, report_cmd
from dde_bench.training.commands import reproduce, train_app

app = typer.Typer(
    name="dde-bench",
    help=(
        "Benchmark, profile and train the DiDE dual-encoder student against its ViLT fusion-encoder teacher.\n\n"
        "Start with `dde-bench run --suite nlvr2`: on a machine with no data and no checkpoints it builds the "
        "synthetic world, trains tiny models with a quick recipe, measures them and writes a report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
app.command("run")(run_cmd)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.command("reproduce")(reproduce)
app.add_typer(cache_app, name="cache")
app.command("report")(report_cmd)
app.command("compare")(compare_cmd)
app.command("gate")(gate_cmd)
app.command("profile")(profile_cmd)


@app.command("list")
def list_cmd() -> None:
    """List the suites (suites/*.yaml) and model cards (models/*.yaml) this installation knows."""
    from dde_bench.cards import load_model_card, load_suite
    from dde_bench.resources import list_names, models_dir, suites_dir

    t = Table(title=f"suites ({suites_dir()})")
    for col in ("suite", "task", "data", "models"):
        t.add_column(col)
    for name in list_names("suites"):
        card = load_suite(name, check_models=False)
        source = card.data.data_dir or card.data.source
        t.add_row(name, card.task, str(source), ", ".join(card.models))
    console.print(t)
    t = Table(title=f"model cards ({models_dir()})")
    for col in ("model", "kind", "size", "weights", "description"):
        t.add_column(col)
    for name in list_names("models"):
        card = load_model_card(name)
        t.add_row(name, card.kind, card.size, card.weights, card.description)
    console.print(t)


@app.command("env")
def env_cmd(
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Show the environment results are recorded with: versions, device, CUDA/driver, CPU model, threads."""
    import json

    from dde_bench.env import environment, resolve_device

    info = environment(resolve_device(device))
    if json_out:
        print(json.dumps(info, indent=2))
        return
    t = Table(show_header=False)
    for k, v in info.items():
        t.add_row(k, str(v))
    console.print(t)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """dde-bench's own warnings as one line; other packages' in Python's usual format."""
    if f"{Path(__file__).parent}" in str(filename):
        return f"dde-bench: warning: {errors.one_line(str(message))}\n"
    return _python_warning_format(message, category, filename, lineno, line)


_python_warning_format = warnings.formatwarning


def main(argv: list[str] | None = None) -> None:
    """The one entry of every command (the `dde-bench` script and `python -m dde_bench.cli`).

    Exit codes: 0 done; 1 a regression or failed gate (compare, gate); 2 unusable input (a UserError, printed
    as one line naming the file, line or option; usage errors as click shows them; --help is 0); 130 Ctrl-C,
    with one line saying what was kept and the command that continues it; 70 anything else (a bug): one line
    on the terminal, the traceback in a crash file in the run folder being written (else ./reports/).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    errors.clear_current_output()
    warnings.formatwarning = _warning_line
    try:
        # standalone_mode=False: exceptions reach this function instead of being printed by click / typer;
        # typer turns Ctrl-C inside a command into exit code 130, which it returns here
        code = app(args=args, standalone_mode=False)
    except (
        typer.exceptions.TyperException
    ) as e:  # usage errors (click's, vendored by typer): as typer shows them
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(e)
        except ImportError:
            e.show()
        sys.exit(getattr(e, "exit_code", 2))
    except UserError as e:
        errors.print_err(f"dde-bench: error: {errors.one_line(str(e))}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        errors.print_err(errors.interrupted_line(args))
        sys.exit(errors.INTERRUPT_EXIT_CODE)
    except Exception as e:  # a bug: the traceback goes to a file, one line to the terminal
        errors.print_err(errors.bug_line(e, errors.write_crash_report(e, args)))
        sys.exit(errors.BUG_EXIT_CODE)
    if code == errors.INTERRUPT_EXIT_CODE:
        errors.print_err(errors.interrupted_line(args))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
