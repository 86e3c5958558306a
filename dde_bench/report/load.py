"""Read a run folder (see dde_bench/bench/schema.py) into a Run: settings, a DataFrame of rows, raw samples.

The harness appends to results.jsonl as it measures, so a run killed mid-write can leave a truncated final
line: that line is skipped. Any other malformed line is a user error naming the file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dde_bench.bench.schema import COLUMNS, MATCH_KEYS, RAW_SAMPLES_KEY, SCHEMA_VERSION
from dde_bench.errors import UserError

RowKey = tuple  # the values of MATCH_KEYS, in that order


@dataclass
class Run:
    """One run folder, read.

    info: run.json as written by the harness (settings and environment), with ``schema_version`` kept.
    rows: one row per measurement, every column of schema.COLUMNS present (None/NaN where not measured),
          plus extra keys the harness wrote, minus the raw samples.
    raw:  raw per-call latency samples (ms) by row key (the values of schema.MATCH_KEYS).
    path: the folder it was read from.
    """

    info: dict[str, Any]
    rows: pd.DataFrame
    raw: dict[RowKey, list[float]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def schema_version(self) -> Any:
        """The run's schema version (run.json's, else the rows', else None)."""
        if "schema_version" in self.info:
            return self.info["schema_version"]
        if len(self.rows) and self.rows["schema_version"].notna().any():
            return self.rows["schema_version"].dropna().iloc[0]
        return None

    @property
    def environment(self) -> dict[str, Any]:
        """The environment the run was measured in (run.json's ``environment`` merged over its top level)."""
        env = {k: v for k, v in self.info.items() if not isinstance(v, dict | list)}
        nested = self.info.get("environment")
        if isinstance(nested, dict):
            env.update(nested)
        return env

    @property
    def label(self) -> str:
        """A short name for the run: its folder name."""
        return self.path.name if self.path is not None else str(self.info.get("run_id", "run"))


def row_key(row: dict[str, Any] | pd.Series) -> RowKey:
    """The match key of a row: the values of schema.MATCH_KEYS, with NaN normalised to None."""
    return tuple(_none_if_nan(row.get(k)) for k in MATCH_KEYS)


def _none_if_nan(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    # integers read back through pandas may come as floats (1.0): keep keys comparable across runs
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _read_utf8(path: Path) -> str:
    """The text of a UTF-8 file; other bytes are a UserError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({e.reason})") from None


def load_run(run_dir: str | Path) -> Run:
    """Read ``run_dir``'s run.json and results.jsonl.

    Raises UserError (exit code 2) for a missing folder or file, a malformed run.json, a malformed line of
    results.jsonl (naming file and line; a truncated *final* line is skipped), or rows whose schema version
    differs from the run's.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    info_path = run_dir / "run.json"
    results_path = run_dir / "results.jsonl"
    for p in (info_path, results_path):
        if not p.is_file():
            raise UserError(f"{p}: missing (a run folder holds run.json and results.jsonl)")
    try:
        info = json.loads(_read_utf8(info_path))
    except json.JSONDecodeError as e:
        raise UserError(f"{info_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(info, dict):
        raise UserError(f"{info_path}: expected a JSON object")

    records: list[dict[str, Any]] = []
    raw: dict[RowKey, list[float]] = {}
    lines = _read_utf8(results_path).split("\n")
    # the last non-empty line may be truncated by a killed writer
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last and not line.rstrip().endswith("}"):
                continue  # truncated final line: the row was being written when the run stopped
            raise UserError(f"{results_path}:{i + 1}: malformed JSON line ({e.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{results_path}:{i + 1}: expected a JSON object, got {type(rec).__name__}")
        samples = rec.pop(RAW_SAMPLES_KEY, None)
        if samples is not None:
            try:
                raw[row_key(rec)] = [float(s) for s in samples]
            except (TypeError, ValueError):
                raise UserError(
                    f"{results_path}:{i + 1}: {RAW_SAMPLES_KEY} must be a list of numbers"
                ) from None
        records.append(rec)

    columns = list(COLUMNS) + sorted({k for r in records for k in r} - set(COLUMNS))
    rows = pd.DataFrame.from_records(records, columns=columns) if records else pd.DataFrame(columns=columns)
    run_version = info.get("schema_version")
    if run_version is not None and len(rows):
        versions = {_none_if_nan(v) for v in rows["schema_version"]} - {None}
        if versions - {run_version}:
            raise UserError(
                f"{results_path}: rows have schema version(s) {sorted(versions)} but run.json says {run_version}"
            )
    if run_version is None and len(rows):
        versions = {_none_if_nan(v) for v in rows["schema_version"]} - {None}
        if len(versions) == 1:
            info["schema_version"] = versions.pop()
    return Run(info=info, rows=rows, raw=raw, path=run_dir)


def check_schema(run: Run) -> None:
    """Raise UserError when the run was written with a schema version this code does not read."""
    v = run.schema_version
    if v is not None and v != SCHEMA_VERSION:
        raise UserError(f"{run.path}: schema version {v}, this dde-bench reads version {SCHEMA_VERSION}")
