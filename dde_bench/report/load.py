"""Read a run folder (see dde_bench/bench/schema.py) into a Run: settings, a DataFrame of rows, raw samples.

Reading is the harness's (``dde_bench.bench.results.read_run_folder``): a truncated final line (a run killed
mid-write) is skipped with a warning; any other malformed line is a user error naming the file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dde_bench.bench.results import JSONL_FILE, RUN_FILE, read_run_folder
from dde_bench.bench.schema import MATCH_KEYS, SCHEMA_VERSION
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
    """Read ``run_dir``'s run.json and results.jsonl through the harness's one reader
    (``dde_bench.bench.results.read_run_folder``; runs of other schema versions are read too).

    Raises UserError (exit code 2) for a missing folder or file, a malformed run.json, a malformed line of
    results.jsonl (naming file and line), or rows whose schema version differs from the run's. A truncated
    *final* line is skipped with a RuntimeWarning, as everywhere.
    """
    results_path = Path(run_dir) / JSONL_FILE
    if Path(run_dir, RUN_FILE).is_file() and not results_path.is_file():
        raise UserError(f"{results_path}: missing (a run folder holds {RUN_FILE} and {JSONL_FILE})")
    folder = read_run_folder(run_dir, check_version=False)
    raw = {tuple(_none_if_nan(v) for v in key): samples for key, samples in folder.raw.items()}
    return Run(info=folder.info, rows=folder.frame(), raw=raw, path=folder.path)


def check_schema(run: Run) -> None:
    """Raise UserError when the run was written with a schema version this code does not read."""
    v = run.schema_version
    if v is not None and v != SCHEMA_VERSION:
        raise UserError(f"{run.path}: schema version {v}, this dde-bench reads version {SCHEMA_VERSION}")
