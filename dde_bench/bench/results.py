"""Writing and reading a run folder (layout in ``schema``): run.json, results.jsonl, results.csv.

Rows are written as they are measured: each ``append`` adds one JSON line and fsyncs it before returning,
so a crash loses at most the row being written. A crash in the middle of that write leaves a truncated
last line; readers skip it with a warning, and a writer resuming the run cuts it off before appending.
results.csv is a convenience copy without raw samples, rewritten (atomically) after every row.

One writer at a time: the folder is locked (``dde_bench.files.FolderLock``) while a ``ResultWriter`` is open, and a
resumed run must have the settings its run.json records (``RESUME_KEYS``; ``ADDITIVE_KEYS`` may grow with
``allow_additions``, recorded in run.json's ``history``). ``read_run_folder`` is the one reader.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dde_bench.bench.schema import COLUMNS, MATCH_KEYS, RAW_SAMPLES_KEY, SCHEMA_VERSION
from dde_bench.env import environment
from dde_bench.errors import UserError, set_current_output
from dde_bench.files import FolderLock, atomic_write_text, read_json, temp_path

__all__ = [
    "ADDITIVE_KEYS",
    "CSV_FILE",
    "DONE_STATUSES",
    "JSONL_FILE",
    "RESUME_KEYS",
    "RUN_FILE",
    "ResultWriter",
    "RunFolder",
    "match_key",
    "read_run",
    "read_run_folder",
    "resume_conflicts",
]

RUN_FILE = "run.json"
JSONL_FILE = "results.jsonl"
CSV_FILE = "results.csv"
DONE_STATUSES = ("ok", "oom")  # rows --resume does not measure again

# Settings --resume compares with the folder's run.json (those of them the settings hold). "device" and
# "threads" are compared as resolved (run.json's environment: "cuda:0", 8), not as asked ("auto", None).
RESUME_KEYS = (
    "suite",
    "models",
    "scenarios",
    "batch_sizes",
    "gallery_sizes",
    "dtypes",
    "device",
    "threads",
    "timing_rule",
    "seed",
    "data_dir",
    "eval_split",
    "compile",
)
RESOLVED_KEYS = ("device", "threads")
# the list settings that --resume-add (allow_additions) lets grow: a run can gain models, sizes, scenarios
ADDITIVE_KEYS = ("models", "scenarios", "batch_sizes", "gallery_sizes", "dtypes")

MatchKey = tuple[Any, ...]


def match_key(row: Mapping[str, Any]) -> MatchKey:
    """The tuple of ``schema.MATCH_KEYS`` values identifying a row across runs."""
    return tuple(row.get(k) for k in MATCH_KEYS)


def _plain(value: Any) -> Any:
    """Make a value JSON-friendly: numpy / torch scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.dtype | torch.device | Path):
        return str(value)
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy / torch arrays and scalars
        value = value.tolist()
        if isinstance(value, list):
            return _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_run_info(path: Path, check_version: bool = True) -> dict[str, Any]:
    info = read_json(path, "run.json")
    version = info.get("schema_version")
    if check_version and version != SCHEMA_VERSION:
        raise UserError(
            f"{path}: results schema version {version}, but this dde-bench reads version {SCHEMA_VERSION}; "
            "re-run the benchmark or use the dde-bench that wrote it"
        )
    return info


def _read_jsonl(path: Path, expect_version: Any = None) -> tuple[list[dict[str, Any]], int | None]:
    """Rows of results.jsonl (raw samples included) and, if its last line is truncated, the byte offset where
    that line starts.

    The one rule for a damaged line: the last non-empty line that does not parse is a row whose write did not
    finish (a crash): it is skipped with a ``RuntimeWarning``. Any other line that does not parse, or a line
    that is not a JSON object, is a ``UserError`` naming the file and line.
    """
    if not path.exists():
        return [], None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    rows: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    offset = 0
    for i, raw in enumerate(lines):
        start = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if i == last:
                warnings.warn(
                    f"{path}:{i + 1}: truncated last line (a crash while writing it?); ignoring it",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return rows, start
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            raise UserError(f"{path}:{i + 1}: malformed results row ({why})") from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}:{i + 1}: malformed results row (a JSON {type(row).__name__}, not an object)"
            )
        samples = row.get(RAW_SAMPLES_KEY)
        if samples is not None and (
            not isinstance(samples, list)
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in samples)
        ):
            raise UserError(f"{path}:{i + 1}: {RAW_SAMPLES_KEY} must be a list of numbers")
        version = row.get("schema_version", expect_version)
        if expect_version is not None and version != expect_version:
            raise UserError(
                f"{path}:{i + 1}: results schema version {version}, but run.json says {expect_version}"
            )
        rows.append(row)
    return rows, None


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """schema.COLUMNS first, then extra keys in first-seen order (raw samples excluded)."""
    cols = list(COLUMNS)
    seen = set(cols) | {RAW_SAMPLES_KEY}
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols = _columns(rows)
    records = [{k: row.get(k) for k in cols} for row in rows]
    return pd.DataFrame.from_records(records, columns=cols)


def _norm(value: Any) -> Any:
    """A setting as run.json holds it (JSON round trip), so new and recorded values compare alike."""
    return json.loads(json.dumps(_plain(value)))


def _compared(settings: Mapping[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The RESUME_KEYS values of ``settings``; RESOLVED_KEYS taken from ``resolved`` (the environment)."""
    out = {k: _norm(settings[k]) for k in RESUME_KEYS if k in settings and k not in RESOLVED_KEYS}
    out.update({k: _norm(resolved[k]) for k in RESOLVED_KEYS if resolved.get(k) is not None})
    return out


def _show(value: Any) -> str:
    return "(not recorded)" if value is _MISSING else json.dumps(value)


_MISSING = object()


def resume_conflicts(
    info: Mapping[str, Any],
    settings: Mapping[str, Any],
    resolved: Mapping[str, Any],
    allow_additions: bool = False,
) -> tuple[list[str], dict[str, list[Any]]]:
    """Compare new ``settings`` (with ``resolved`` device / threads) with a run.json ``info``.

    Returns ``(problems, added)``: one ``"key old -> new"`` text per setting that differs, and, with
    ``allow_additions``, the items each ADDITIVE_KEYS list gains (lists that only grow are not problems then).
    Only the keys the new settings hold are compared; the order of a list does not matter.
    """
    old = _compared(info.get("settings") or {}, info.get("environment") or {})
    new = _compared(settings, resolved)
    problems: list[str] = []
    added: dict[str, list[Any]] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if key in ADDITIVE_KEYS and isinstance(before, list) and isinstance(value, list):
            extra = [x for x in value if x not in before]
            removed = [x for x in before if x not in value]
            if not extra and not removed:
                continue
            if allow_additions and not removed:
                added[key] = extra
                continue
            note = f" (drops {_show(removed)})" if removed and allow_additions else ""
            problems.append(f"{key} {_show(before)} -> {_show(value)}{note}")
        elif before != value:
            problems.append(f"{key} {_show(before)} -> {_show(value)}")
    return problems, added


def _conflict_error(run_dir: Path, problems: list[str], allow_additions: bool) -> UserError:
    hint = "" if allow_additions else f" (--resume-add allows adding {', '.join(ADDITIVE_KEYS)})"
    return UserError(
        f"{run_dir}: cannot resume: the run there was made with other settings: {'; '.join(problems)}; "
        f"resume with the same settings{hint}, or choose another --out folder"
    )


def _check_folder_path(run_dir: Path) -> None:
    """A run folder path that is a file, or lies under a file, is a UserError (before anything is written)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder (the run folder, --out, must be a folder)")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{run_dir}: {parent} is a file, not a folder (--out must be a folder)")
            break


def _rows_on_disk(jsonl: Path) -> int:
    try:
        return jsonl.read_bytes().count(b"\n") if jsonl.is_file() else 0
    except OSError:
        return 0


def _holds_results(run_dir: Path) -> bool:
    jsonl = run_dir / JSONL_FILE
    return (run_dir / RUN_FILE).exists() or (jsonl.is_file() and jsonl.stat().st_size > 0)


def _holds_error(run_dir: Path) -> UserError:
    n = _rows_on_disk(run_dir / JSONL_FILE)
    return UserError(
        f"{run_dir} already holds results ({RUN_FILE}, {n} row{'s' if n != 1 else ''}); "
        "continue that run with --resume, or choose another --out folder"
    )


class ResultWriter:
    """Writes one run folder: ``run.json`` once, then rows appended as they are measured.

    ``settings`` (the suite, options, seed, ...) and ``environment(device)`` go into run.json with the
    schema version. The folder is locked for this writer (``dde_bench.files.FolderLock``): a second writer, in this
    process or another, gets a ``UserError`` naming the holder; ``close()`` (or the end of the process)
    releases it.

    A folder that already holds a run needs ``resume=True`` (nothing measured is overwritten). Resuming
    compares ``settings`` with the run's run.json (the RESUME_KEYS it holds; device and threads as
    resolved) and refuses any difference; with ``allow_additions`` the ADDITIVE_KEYS lists may grow, and
    what was added is recorded in run.json's ``history``. The existing rows are kept and ``done_keys()``
    tells what to skip. ``check_target`` runs the same checks without writing anything.
    """

    def __init__(
        self,
        run_dir: str | Path,
        settings: Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
        resume: bool = False,
        allow_additions: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        _check_folder_path(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.run_dir}: cannot create the run folder: {e.strerror}") from None
        self.run_path = self.run_dir / RUN_FILE
        self.jsonl_path = self.run_dir / JSONL_FILE
        self.csv_path = self.run_dir / CSV_FILE
        self.lock = FolderLock(self.run_dir, "run folder")
        self.lock.acquire()
        try:
            self._open(settings, device, resume, allow_additions)
        except BaseException:
            self.lock.release()
            raise
        ref, jsonl = weakref.ref(self), self.jsonl_path  # no strong reference: the lock goes with the writer

        def kept() -> str:
            w = ref()
            n = len(w.rows) if w is not None else _rows_on_disk(jsonl)
            return f"{n} row{'s' if n != 1 else ''} ({JSONL_FILE})"

        set_current_output(self.run_dir, kept)

    def _open(self, settings, device, resume: bool, allow_additions: bool) -> None:
        """Every check first (nothing is written if one fails), then repair and record."""
        if _holds_results(self.run_dir) and not resume:
            raise _holds_error(self.run_dir)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if self.run_path.exists():
            self.run_info = _read_run_info(self.run_path)
            entry: dict[str, Any] = {"resumed": now}
            if settings is not None:
                resolved = {"device": str(device), "threads": torch.get_num_threads()}
                problems, added = resume_conflicts(self.run_info, settings, resolved, allow_additions)
                if problems:
                    raise _conflict_error(self.run_dir, problems, allow_additions)
                for key in added:
                    self.run_info["settings"][key] = _norm(settings[key])
                if added:
                    entry["added"] = added
            self.run_info.setdefault("history", []).append(entry)
        else:
            self.run_info = {
                "schema_version": SCHEMA_VERSION,
                "created": now,
                "settings": _plain(dict(settings or {})),
                "environment": _plain(environment(device)),
            }
        self.rows, cut = _read_jsonl(self.jsonl_path, SCHEMA_VERSION)
        # checks passed: from here on this writer owns the folder
        for stale in self.run_dir.glob("*.tmp"):  # temporary files of a writer that died (we hold the lock)
            stale.unlink(missing_ok=True)
        atomic_write_text(self.run_path, json.dumps(self.run_info, indent=2) + "\n")
        if cut is not None:  # drop the partial line so the next row starts on a line of its own
            with open(self.jsonl_path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        elif self.rows and not self.jsonl_path.read_bytes().endswith(b"\n"):
            with open(self.jsonl_path, "ab") as f:
                f.write(b"\n")

    @classmethod
    def check_target(
        cls,
        run_dir: str | Path,
        resume: bool = False,
        settings: Mapping[str, Any] | None = None,
        *,
        device: torch.device | str | None = None,
        threads: int | None = None,
        allow_additions: bool = False,
    ) -> None:
        """Raise the ``UserError`` constructing a writer would raise, writing nothing: ``run_dir`` is a file
        (or under one), another process holds it, it holds results and ``resume`` is false, a results line is
        malformed, or (with ``settings``; ``device`` / ``threads`` when already resolved) resuming it would
        change the run's settings. Call it before loading data, so a bad ``--out`` costs nothing."""
        run_dir = Path(run_dir)
        _check_folder_path(run_dir)
        if not run_dir.is_dir():
            return
        FolderLock(run_dir, "run folder").check_free()
        if not _holds_results(run_dir):
            return
        if not resume:
            raise _holds_error(run_dir)
        run_path = run_dir / RUN_FILE
        if run_path.exists():
            info = _read_run_info(run_path)
            if settings is not None:
                resolved = {"device": None if device is None else str(device), "threads": threads}
                problems, _ = resume_conflicts(info, settings, resolved, allow_additions)
                if problems:
                    raise _conflict_error(run_dir, problems, allow_additions)
        with warnings.catch_warnings():  # the writer warns about a truncated last line itself
            warnings.simplefilter("ignore", RuntimeWarning)
            _read_jsonl(run_dir / JSONL_FILE, SCHEMA_VERSION)

    def append(self, row: Mapping[str, Any], raw_samples_ms: list[float] | None = None) -> dict[str, Any]:
        """Append one row (flushed and fsynced before returning) and rewrite results.csv.

        ``schema_version`` and ``timestamp`` are filled in when absent; ``raw_samples_ms`` (per-call latency
        samples) go into results.jsonl only. Returns the row as written, without the raw samples.
        """
        if not self.lock.held:
            raise RuntimeError(f"{self.run_dir}: this ResultWriter is closed")
        full = _plain(dict(row))
        full.setdefault("schema_version", SCHEMA_VERSION)
        full.setdefault("timestamp", datetime.now(UTC).isoformat(timespec="seconds"))
        full.pop(RAW_SAMPLES_KEY, None)
        record = dict(full)
        if raw_samples_ms is not None:
            record[RAW_SAMPLES_KEY] = [float(x) for x in raw_samples_ms]
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(record)
        self._write_csv()
        return full

    def _write_csv(self) -> None:
        df = _frame(self.rows)
        for col in df.columns:  # dicts and lists (stage_ms) as JSON text
            if df[col].map(lambda v: isinstance(v, dict | list)).any():
                df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, dict | list) else v)
        tmp = temp_path(self.csv_path)
        try:
            df.to_csv(tmp, index=False)
            os.replace(tmp, self.csv_path)
        finally:
            tmp.unlink(missing_ok=True)

    def done_keys(self) -> set[MatchKey]:
        """MATCH_KEYS tuples of rows already measured with status ok or oom (for --resume)."""
        return {match_key(r) for r in self.rows if r.get("status") in DONE_STATUSES}

    def close(self) -> None:
        """Release the folder's lock (rows are already on disk)."""
        self.lock.release()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunFolder:
    """One run folder, read: run.json, the rows (raw samples taken out) and the raw samples by match key."""

    path: Path
    info: dict[str, Any]
    rows: list[dict[str, Any]]
    raw: dict[MatchKey, list[float]]

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame: schema.COLUMNS first (None where absent), then extra keys in first-seen order."""
        return _frame(self.rows)


def read_run_folder(run_dir: str | Path, *, check_version: bool = True) -> RunFolder:
    """The one reader of a run folder (the harness's ``read_run`` and the reports' ``load_run`` use it).

    Raises ``UserError`` for a missing folder or run.json, malformed run.json, a malformed results line
    (file and line named), or rows whose schema version differs from run.json's; with ``check_version``
    also when run.json's version is not the one this dde-bench writes. A truncated last line is skipped with
    a ``RuntimeWarning`` (see ``_read_jsonl``). A run without results.jsonl has no rows.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    run_path = run_dir / RUN_FILE
    if not run_path.is_file():
        raise UserError(
            f"{run_path}: missing (not a run folder: a run folder holds {RUN_FILE} and {JSONL_FILE})"
        )
    info = _read_run_info(run_path, check_version=check_version)
    version = info.get("schema_version")
    rows, _ = _read_jsonl(run_dir / JSONL_FILE, expect_version=version)
    if version is None:
        versions = {r["schema_version"] for r in rows if r.get("schema_version") is not None}
        if len(versions) == 1:
            info["schema_version"] = versions.pop()
    raw: dict[MatchKey, list[float]] = {}
    for r in rows:
        samples = r.pop(RAW_SAMPLES_KEY, None)
        if samples is not None:
            raw[match_key(r)] = [float(x) for x in samples]  # the last row of a key wins, as after a resume
    return RunFolder(run_dir, info, rows, raw)


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame, dict[MatchKey, list[float]]]:
    """Read a run folder of this schema version: ``(run.json contents, rows without raw samples, raw samples
    by match key)``. Errors and the truncated-last-line rule: ``read_run_folder``."""
    folder = read_run_folder(run_dir, check_version=True)
    return folder.info, folder.frame(), folder.raw
