"""User-facing errors, and what the CLI says when a command stops.

``UserError``: bad input from the user; the CLI prints it as one line and exits 2, without a traceback.

The CLI entry (``dde_bench.cli.main``) also needs to know which output a command was writing when it stopped:
a writer (the run folder's ``ResultWriter``, a feature-store build) registers it with ``set_current_output``.
Ctrl-C then prints one line saying what was kept there and the command that continues it
(``interrupted_line``); an unexpected exception writes its traceback to a crash file in that folder
(``write_crash_report``), else to ``./reports/``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a path, a file, an option. The message names what is wrong and where."""

    exit_code = 2


class DeviceUnavailable(UserError):
    """A device was asked for that this machine does not have."""


# exit code of an unexpected exception (sysexits' EX_SOFTWARE): distinct from 1 (a regression or failed gate)
# and 2 (unusable input), so CI does not read a crash as a verdict
BUG_EXIT_CODE = 70
INTERRUPT_EXIT_CODE = 130


@dataclass
class Output:
    """The output folder a command is writing: what it holds so far, and the flag that continues it."""

    folder: Path
    kept: Callable[[], str]  # e.g. "12 rows"
    resume_flag: str | None = "--resume"
    out_option: str = "--out"


_current: Output | None = None


def set_current_output(
    folder: str | Path,
    kept: Callable[[], str],
    resume_flag: str | None = "--resume",
    out_option: str = "--out",
) -> None:
    """Record the folder this process is writing (the last one set wins)."""
    global _current
    _current = Output(Path(folder), kept, resume_flag, out_option)


def current_output() -> Output | None:
    """The output folder set by ``set_current_output``, if any."""
    return _current


def clear_current_output() -> None:
    global _current
    _current = None


def one_line(text: str) -> str:
    """A message on one line: its non-empty lines joined with '; '."""
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def _has_option(argv: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def resume_command(argv: Sequence[str], out: Output) -> str | None:
    """``dde-bench ARGV`` with ``--out FOLDER`` and the resume flag added where missing."""
    if out.resume_flag is None:
        return None
    args = list(argv)
    if not _has_option(args, out.out_option):
        args += [out.out_option, str(out.folder)]
    if out.resume_flag not in args:
        args.append(out.resume_flag)
    return "dde-bench " + shlex.join(args)


def interrupted_line(argv: Sequence[str]) -> str:
    """The one line Ctrl-C prints: what was kept, where, and how to continue."""
    out = current_output()
    if out is None:
        return "dde-bench: interrupted (no results had been written yet)"
    try:
        kept = out.kept()
    except Exception:  # the line must come out whatever state the writer is in
        kept = "what was written so far"
    line = f"dde-bench: interrupted; kept {kept} in {out.folder}"
    again = resume_command(argv, out)
    return line + (f"; continue with: {again}" if again else "")


def write_crash_report(exc: BaseException, argv: Sequence[str]) -> Path | None:
    """Write the traceback of ``exc`` (with the command and versions) to ``crash-<time>.txt`` in the current
    output folder, else in ``./reports``; returns the file, or None if nothing could be written."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = current_output()
    folders = [out.folder] if out is not None and out.folder.is_dir() else []
    folders.append(Path("reports"))
    try:
        import torch

        torch_version = torch.__version__
    except Exception:
        torch_version = "n/a"
    text = (
        f"command: dde-bench {shlex.join(argv)}\n"
        f"cwd: {os.getcwd()}\n"
        f"time: {datetime.now().isoformat(timespec='seconds')}\n"
        f"python {platform.python_version()}, torch {torch_version}, {platform.platform()}\n\n"
        + "".join(traceback.format_exception(exc))
    )
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{stamp}-{os.getpid()}.txt"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def bug_line(exc: BaseException, report: Path | None) -> str:
    """The one line an unexpected exception prints."""
    what = one_line(str(exc))[:200]
    what = f"{type(exc).__name__}: {what}" if what else type(exc).__name__
    where = f"the traceback is in {report}" if report is not None else "the traceback could not be written"
    return f"dde-bench: internal error ({what}); this is a bug in dde-bench: {where}; please report it with that file"


def print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
