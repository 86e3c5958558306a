"""Writing and reading a run folder (layout in ``schema``): run.json, results.jsonl, results.csv.

Rows are written as they are measured: each ``append`` adds one JSON line and fsyncs it before returning,
so a crash loses at most the row being written. A crash in the middle of that write leaves a truncated
last line; readers skip it with a warning, and a writer resuming the run cuts it off before appending.
results.csv is a convenience copy without raw samples, rewritten (atomically) after every row.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dde_bench.bench.schema import COLUMNS, MATCH_KEYS, RAW_SAMPLES_KEY, SCHEMA_VERSION
from dde_bench.env import environment
from dde_bench.errors import UserError

__all__ = ["ResultWriter", "read_run", "match_key", "RUN_FILE", "JSONL_FILE", "CSV_FILE", "DONE_STATUSES"]

RUN_FILE = "run.json"
JSONL_FILE = "results.jsonl"
CSV_FILE = "results.csv"
DONE_STATUSES = ("ok", "oom")  # rows --resume does not measure again

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


def _read_run_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object")
    version = info.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{path}: results schema version {version}, but this dde-bench reads version {SCHEMA_VERSION}; "
            "re-run the benchmark or use the dde-bench that wrote it"
        )
    return info


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Rows of results.jsonl and, if its last line is truncated, the byte offset where that line starts."""
    if not path.exists():
        return [], None
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, start=1):
        start = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        is_last = i == len(lines)  # no newline after it: the write did not finish
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            if is_last:
                warnings.warn(
                    f"{path}: line {i} is truncated (a crash while writing?); ignoring it",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return rows, start
            raise UserError(f"{path}, line {i}: malformed results row: {e}") from None
        version = row.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{path}, line {i}: results schema version {version}, this dde-bench reads {SCHEMA_VERSION}"
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


class ResultWriter:
    """Writes one run folder: ``run.json`` once, then rows appended as they are measured.

    ``settings`` (the suite, options, seed, ...) and ``environment(device)`` go into run.json with the
    schema version. Opening a folder that already has results requires ``resume=True`` (nothing measured
    is overwritten); the existing rows are then kept and ``done_keys()`` tells what to skip.
    """

    def __init__(
        self,
        run_dir: str | Path,
        settings: Mapping[str, Any] | None = None,
        *,
        device: torch.device | str = "cpu",
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_path = self.run_dir / RUN_FILE
        self.jsonl_path = self.run_dir / JSONL_FILE
        self.csv_path = self.run_dir / CSV_FILE
        existing = self.jsonl_path.exists() and self.jsonl_path.stat().st_size > 0
        if existing and not resume:
            raise UserError(
                f"{self.run_dir} already holds results; resume it (--resume) or choose another output folder"
            )
        if self.run_path.exists():
            self.run_info = _read_run_info(self.run_path)
        else:
            self.run_info = {
                "schema_version": SCHEMA_VERSION,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "settings": _plain(dict(settings or {})),
                "environment": _plain(environment(device)),
            }
            tmp = self.run_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.run_info, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.run_path)
        self.rows, cut = _read_jsonl(self.jsonl_path)
        if cut is not None:  # drop the partial line so the next row starts on a line of its own
            with open(self.jsonl_path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        elif existing and not self.jsonl_path.read_bytes().endswith(b"\n"):
            with open(self.jsonl_path, "ab") as f:
                f.write(b"\n")

    def append(self, row: Mapping[str, Any], raw_samples_ms: list[float] | None = None) -> dict[str, Any]:
        """Append one row (flushed and fsynced before returning) and rewrite results.csv.

        ``schema_version`` and ``timestamp`` are filled in when absent; ``raw_samples_ms`` (per-call latency
        samples) go into results.jsonl only. Returns the row as written, without the raw samples.
        """
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
        tmp = self.csv_path.with_suffix(".csv.tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, self.csv_path)

    def done_keys(self) -> set[MatchKey]:
        """MATCH_KEYS tuples of rows already measured with status ok or oom (for --resume)."""
        return {match_key(r) for r in self.rows if r.get("status") in DONE_STATUSES}


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame, dict[MatchKey, list[float]]]:
    """Read a run folder: ``(run.json contents, rows without raw samples, raw samples by match key)``.

    Raw samples are keyed by ``match_key(row)`` (the last row of a key wins, as after a resume).
    Raises ``UserError`` for a missing folder or run.json, a malformed line (file and line named) or a
    different schema version; a truncated last line is skipped with a ``RuntimeWarning``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    run_path = run_dir / RUN_FILE
    if not run_path.exists():
        raise UserError(f"{run_dir}: not a run folder (no {RUN_FILE})")
    info = _read_run_info(run_path)
    rows, _ = _read_jsonl(run_dir / JSONL_FILE)
    raw: dict[MatchKey, list[float]] = {}
    for r in rows:
        samples = r.pop(RAW_SAMPLES_KEY, None)
        if samples is not None:
            raw[match_key(r)] = samples
    return info, _frame(rows), raw
