"""The `dde-bench` command line: thin commands over the library API.

Each area of the library owns its commands (dde_bench/<area>/commands.py); commands that wire several areas
(`run`: trainer + harness + report) live in dde_bench/commands/. This file only puts them together and turns
user errors into one clear line and a non-zero exit.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

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


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2; Ctrl-C exits 130."""
    try:
        app()
    except UserError as e:
        print(f"dde-bench: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("dde-bench: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
