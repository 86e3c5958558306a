"""Run folders: round trip, resume keys, crash-truncated last line, malformed lines, schema versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dde_bench.bench.results import ResultWriter, match_key, read_run
from dde_bench.bench.schema import COLUMNS, MATCH_KEYS, RAW_SAMPLES_KEY, SCHEMA_VERSION
from dde_bench.errors import UserError


def row(model: str, batch_size: int, status: str = "ok", **extra) -> dict:
    base = {
        "suite": "nlvr2",
        "model": model,
        "scenario": "cached",
        "batch_size": batch_size,
        "gallery_size": None,
        "dtype": "fp32",
        "device": "cpu",
        "status": status,
        "latency_p50_ms": np.float64(12.5),  # numpy scalars are accepted
    }
    return base | extra


def write_three(run_dir: Path) -> ResultWriter:
    w = ResultWriter(run_dir, {"suite": "nlvr2", "seed": 0})
    w.append(row("teacher", 8), raw_samples_ms=[12.0, 12.5, 13.0])
    w.append(row("student", 8, stage_ms={"text_tower": 1.5}, my_extra=3), raw_samples_ms=[2.0, 2.5])
    w.append(row("teacher", 64, status="oom", error="CUDA out of memory"))
    return w


def test_round_trip(tmp_path: Path) -> None:
    write_three(tmp_path)
    info, df, raw = read_run(tmp_path)
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["settings"] == {"suite": "nlvr2", "seed": 0}
    assert info["environment"]["torch"]
    assert len(df) == 3
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert "my_extra" in df.columns and RAW_SAMPLES_KEY not in df.columns
    assert df.loc[1, "stage_ms"] == {"text_tower": 1.5}
    assert (df["schema_version"] == SCHEMA_VERSION).all() and df["timestamp"].notna().all()
    assert raw[match_key(row("teacher", 8))] == [12.0, 12.5, 13.0]
    assert match_key(row("teacher", 64)) not in raw
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.columns) == list(df.columns) and len(csv) == 3
    assert json.loads(csv.loc[1, "stage_ms"]) == {"text_tower": 1.5}


def test_resume_keys_and_existing_results(tmp_path: Path) -> None:
    write_three(tmp_path)
    with pytest.raises(UserError, match="resume"):
        ResultWriter(tmp_path)
    w = ResultWriter(tmp_path, resume=True)
    w.append(row("student", 64, status="error", error="boom"))
    done = w.done_keys()
    assert done == {match_key(row("teacher", 8)), match_key(row("student", 8)), match_key(row("teacher", 64))}
    assert all(len(k) == len(MATCH_KEYS) for k in done)
    assert len(read_run(tmp_path)[1]) == 4


def test_truncated_last_line_is_ignored_then_repaired(tmp_path: Path) -> None:
    write_three(tmp_path)
    jsonl = tmp_path / "results.jsonl"
    with open(jsonl, "a", encoding="utf-8") as f:
        f.write('{"suite": "nlvr2", "model": "stud')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match=r"results\.jsonl:4: truncated last line"):
        _, df, _ = read_run(tmp_path)
    assert len(df) == 3
    with pytest.warns(RuntimeWarning, match="truncated"):
        w = ResultWriter(tmp_path, resume=True)
    w.append(row("student", 64))
    _, df, _ = read_run(tmp_path)  # no warning any more: the partial line was cut off
    assert list(df["model"]) == ["teacher", "student", "teacher", "student"]


def test_malformed_middle_line_names_file_and_line(tmp_path: Path) -> None:
    write_three(tmp_path)
    jsonl = tmp_path / "results.jsonl"
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    lines[1] = "not json"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"results\.jsonl:2: malformed results row"):
        read_run(tmp_path)


def test_schema_mismatch_and_missing_folder(tmp_path: Path) -> None:
    write_three(tmp_path)
    run_json = tmp_path / "run.json"
    info = json.loads(run_json.read_text())
    info["schema_version"] = SCHEMA_VERSION + 1
    run_json.write_text(json.dumps(info))
    with pytest.raises(UserError, match="schema version"):
        read_run(tmp_path)
    with pytest.raises(UserError, match="schema version"):
        ResultWriter(tmp_path, resume=True)
    with pytest.raises(UserError, match="no such run folder"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="run.json: missing"):
        read_run(tmp_path / "empty")


def test_row_with_another_schema_version(tmp_path: Path) -> None:
    w = ResultWriter(tmp_path)
    w.append(row("teacher", 8, schema_version=SCHEMA_VERSION + 1))
    w.append(row("teacher", 16))
    with pytest.raises(UserError, match=r"results\.jsonl:1: results schema version 2"):
        read_run(tmp_path)


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    w = ResultWriter(tmp_path)
    w.append(row("teacher", 8, accuracy=float("nan"), per_stage=np.array([1.0, np.inf])))
    _, df, _ = read_run(tmp_path)
    assert df.loc[0, "accuracy"] is None or pd.isna(df.loc[0, "accuracy"])
    assert df.loc[0, "per_stage"] == [1.0, None]
    assert "NaN" not in (tmp_path / "results.jsonl").read_text()


def test_empty_run(tmp_path: Path) -> None:
    ResultWriter(tmp_path, {"x": 1})
    info, df, raw = read_run(tmp_path)
    assert info["settings"] == {"x": 1} and len(df) == 0 and list(df.columns) == list(COLUMNS) and raw == {}
