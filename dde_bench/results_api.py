"""The results API: a run folder as one pandas DataFrame plus the run's settings and environment.

    import dde_bench
    res = dde_bench.load_results("reports/runs/latest-nlvr2")
    res.rows                     # one row per measurement
    res.rows[res.rows.scenario == "cached"][["model", "batch_size", "latency_p50_ms", "speedup_vs_teacher"]]
    res.settings["seed"], res.environment["torch"]

Columns are those of ``dde_bench/schemas/results-row.v1.schema.json`` (notes in ``dde_bench/bench/schema.py``)
plus any extra key the harness wrote, with these changes from the file:

* nested objects are expanded into columns: ``stage_ms`` becomes ``stage_ms.image_tower``,
  ``stage_ms.text_tower``, ``stage_ms.fusion_head``, ``stage_ms.joint`` (ms; NaN where a row has no such stage);
* gallery rows have the gallery size in ``gallery_size`` only; their ``batch_size`` is empty (<NA>), since the
  file repeats the gallery size there as a match key. ``items_per_call`` is the batch size or the gallery size;
* integer columns (``batch_size``, ``gallery_size``, ``n_samples``, ``threads``, ``schema_version``) are pandas'
  nullable ``Int64``, other numeric columns ``float64`` (NaN = not measured);
* ``latency_samples_ms`` holds each row's raw per-call latencies (a list of ms, or None where not kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dde_bench.bench.schema import RAW_SAMPLES_KEY
from dde_bench.report.load import check_schema, load_run, row_key
from dde_bench.schemas import load_schema

__all__ = ["Results", "load_results"]

INT_COLUMNS = ("schema_version", "batch_size", "gallery_size", "n_samples", "threads")


@dataclass
class Results:
    """One run folder, read.

    rows: one row per measurement (see the module docstring for the columns).
    settings: run.json's ``settings`` (the resolved options, suite and model cards, timing rule, seed, ...).
    environment: run.json's ``environment`` (versions, device, driver, CPU, threads, git commit).
    schema_version: the results schema version the run was written with.
    created: when the run started (ISO 8601), if recorded.
    path: the run folder.
    """

    rows: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    schema_version: int | None = None
    created: str | None = None
    path: Path | None = None


def _numeric_columns() -> set[str]:
    """Columns the row schema types as numbers (with or without null)."""
    out = set()
    for name, spec in load_schema("results-row")["properties"].items():
        types = spec.get("type", [])
        types = [types] if isinstance(types, str) else types
        if {"number", "integer"} & set(types):
            out.add(name)
    return out


def _expand_nested(rows: pd.DataFrame) -> pd.DataFrame:
    """Each column holding JSON objects becomes one column per key (``stage_ms.text_tower``), in place of it."""
    out = rows
    for col in list(rows.columns):
        values = rows[col]
        if not values.map(lambda v: isinstance(v, dict)).any():
            continue
        keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
        expanded = pd.DataFrame(
            {
                f"{col}.{k}": values.map(lambda v, k=k: v.get(k) if isinstance(v, dict) else None)
                for k in keys
            },
            index=rows.index,
        )
        at = list(out.columns).index(col)
        out = pd.concat([out.iloc[:, :at], expanded, out.iloc[:, at + 1 :]], axis=1)
    return out


def load_results(run_dir: str | Path) -> Results:
    """Read ``run_dir`` (run.json + results.jsonl) into :class:`Results`.

    Raises ``dde_bench.UserError`` for a missing or malformed folder or file (naming the file and line) and for
    a schema version this dde-bench does not read; a truncated last line (a run killed mid-write) is skipped.
    """
    run = load_run(run_dir)
    check_schema(run)
    rows = run.rows.copy()
    rows[RAW_SAMPLES_KEY] = [run.raw.get(row_key(r)) for _, r in rows.iterrows()]
    rows = _expand_nested(rows)
    for col in _numeric_columns() & set(rows.columns):
        if col in INT_COLUMNS:
            rows[col] = pd.array(pd.to_numeric(rows[col], errors="coerce"), dtype="Float64").astype("Int64")
        else:
            rows[col] = pd.to_numeric(rows[col], errors="coerce").astype("float64")
    for col in (c for c in rows.columns if c.startswith("stage_ms.")):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype("float64")
    gallery = rows["scenario"] == "gallery"
    rows["items_per_call"] = rows["batch_size"].where(~gallery, rows["gallery_size"])
    rows.loc[gallery, "batch_size"] = pd.NA
    info = run.info
    return Results(
        rows=rows.reset_index(drop=True),
        settings=dict(info.get("settings") or {}),
        environment=dict(info.get("environment") or {}),
        schema_version=run.schema_version,
        created=info.get("created"),
        path=Path(run_dir),
    )
