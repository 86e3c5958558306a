"""The results API (dde_bench.load_results) and the versioned JSON Schemas of results.jsonl rows and run.json,
checked on fixture runs (tests/report_fixtures.py), on a run the harness writes, and on the committed example."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pandas as pd
import pytest

import dde_bench
from dde_bench.bench.schema import COLUMNS, RAW_SAMPLES_KEY, SCHEMA_VERSION
from dde_bench.errors import UserError
from dde_bench.resources import REPO_ROOT
from dde_bench.schemas import load_schema, schema_path
from tests.report_fixtures import make_run

EXAMPLE = REPO_ROOT / "reports" / "example" / "nlvr2-cpu"


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # the schema itself is valid JSON Schema (draft 2020-12)
    return cls(schema)


def _errors(name: str, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(doc)]


def _check_run_folder(run_dir: Path) -> list[dict]:
    """Every line of results.jsonl and run.json validate; returns the rows."""
    assert _errors("run", json.loads((run_dir / "run.json").read_text())) == []
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        assert _errors("results-row", row) == [], (run_dir, i)
    return rows


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("api") / "run", seed=3, paper_size=True, skipped_rows=True)


def test_schema_files_versioned_and_cover_every_column() -> None:
    row = load_schema("results-row")
    assert schema_path("results-row").name == f"results-row.v{SCHEMA_VERSION}.schema.json"
    assert row["properties"]["schema_version"] == {
        "const": SCHEMA_VERSION,
        "description": row["properties"]["schema_version"]["description"],
    }
    assert load_schema("run")["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    missing = set(COLUMNS) - set(row["properties"])
    assert not missing, f"columns without a schema entry: {sorted(missing)}"
    assert RAW_SAMPLES_KEY in row["properties"]
    with pytest.raises(FileNotFoundError):
        schema_path("run", version=SCHEMA_VERSION + 1)
    with pytest.raises(ValueError):
        schema_path("nope")


def test_fixture_run_validates(fixture_run: Path) -> None:
    assert len(_check_run_folder(fixture_run)) == 43


def test_schema_rejects_what_readers_would_misread(fixture_run: Path) -> None:
    rows = _check_run_folder(fixture_run)
    gallery = next(r for r in rows if r["scenario"] == "gallery" and r["status"] == "ok")
    ok = next(r for r in rows if r["scenario"] == "cached")
    assert _errors("results-row", {**ok, "batch_size": "8"})  # a number written as text
    assert _errors("results-row", {**ok, "status": "fine"})
    assert _errors("results-row", {**ok, "schema_version": SCHEMA_VERSION + 1})
    assert _errors("results-row", {**ok, "stage_ms": {"text_tower": "fast"}})
    assert _errors("results-row", {**ok, "latency_p50_ms": None})  # an ok row was timed
    assert _errors("results-row", {**gallery, "gallery_size": None})  # a gallery row names its size
    assert _errors("results-row", {k: v for k, v in ok.items() if k != "model"})
    info = json.loads((fixture_run / "run.json").read_text())
    settings = {k: v for k, v in info["settings"].items() if k != "seed"}
    assert _errors("run", {**info, "settings": settings})  # the seed lives under settings
    assert _errors("run", {k: v for k, v in info.items() if k != "environment"})


def test_load_results_frame(fixture_run: Path) -> None:
    res = dde_bench.load_results(fixture_run)
    df = res.rows
    assert isinstance(df, pd.DataFrame) and len(df) == 43
    assert res.settings["seed"] == 3 and res.settings["suite"] == "nlvr2"
    assert res.environment["torch"].startswith("2.13") and res.schema_version == SCHEMA_VERSION
    assert res.created and res.path == fixture_run
    # nested stage_ms expanded into float columns, the JSON object column gone
    assert "stage_ms" not in df.columns
    stages = {c for c in df.columns if c.startswith("stage_ms.")}
    assert stages == {"stage_ms.joint", "stage_ms.image_tower", "stage_ms.text_tower", "stage_ms.fusion_head"}
    st = df[(df.model == "tiny-student") & (df.scenario == "cached") & (df.batch_size == 8)].iloc[0]
    assert st["stage_ms.text_tower"] > 0 and pd.isna(st["stage_ms.image_tower"])
    online = df[(df.model == "tiny-student") & (df.scenario == "online") & (df.batch_size == 8)].iloc[0]
    assert online["stage_ms.image_tower"] > 0
    # the gallery size has its own column; batch_size is not overloaded for gallery rows
    gal = df[df.scenario == "gallery"]
    assert gal.batch_size.isna().all() and gal.gallery_size.notna().all()
    assert (gal.items_per_call == gal.gallery_size).all()
    batched = df[df.scenario != "gallery"]
    assert batched.gallery_size.isna().all() and (batched.items_per_call == batched.batch_size).all()
    assert str(df.batch_size.dtype) == "Int64" and str(df.n_samples.dtype) == "Int64"
    assert df.latency_p50_ms.dtype == "float64" and df.accuracy.dtype == "float64"
    # one row per measurement, raw samples kept with their row
    ok = df[df.status == "ok"]
    assert all(len(s) == n for s, n in zip(ok[RAW_SAMPLES_KEY], ok.n_samples, strict=True))
    skipped = df[df.status == "skipped"]
    assert len(skipped) == 3 and skipped[RAW_SAMPLES_KEY].isna().all()
    # the memory split and the new columns are there, typed
    assert (st.weights_mb + st.activation_peak_mb) == pytest.approx(st.peak_mem_mb)


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        dde_bench.load_results(tmp_path / "missing")
    v2 = make_run(tmp_path / "v2", schema_version=SCHEMA_VERSION + 1)
    (v2 / "run.json").write_text(json.dumps({"settings": {}, "environment": {}}))
    with pytest.raises(UserError, match="schema version"):
        dde_bench.load_results(v2)


@pytest.mark.slow
def test_harness_run_validates_and_loads(use_bench_env, tmp_path: Path) -> None:
    """What the harness writes today matches the schema (and the API reads it)."""
    from dde_bench.bench.runner import RunConfig, Runner

    cfg = RunConfig(
        suite="nlvr2",
        device="cpu",
        out=tmp_path / "run",
        batch_sizes=[2],
        gallery_sizes=[2, 64],
        min_iters=3,
        min_time_s=0.02,
        quick=True,
    )
    run_dir = Runner(cfg).run()
    rows = _check_run_folder(run_dir)
    assert {r["scenario"] for r in rows} == {"online", "cached", "gallery"}
    res = dde_bench.load_results(run_dir)
    assert len(res.rows) == len(rows) and res.settings["seed"] == 0
    gal = res.rows[res.rows.scenario == "gallery"]
    assert gal.batch_size.isna().all() and set(gal.gallery_size) == {2, 64}
    assert "stage_ms.text_tower" in res.rows.columns


COMMITTED = sorted(p.parent for p in (REPO_ROOT / "reports").glob("*/*/results.jsonl"))


@pytest.mark.parametrize("run", COMMITTED, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_committed_runs_validate(run: Path) -> None:
    """Every committed run folder (the example, the serving runs, the baselines) against the schemas."""
    rows = _check_run_folder(run)
    assert dde_bench.load_results(run).rows.shape[0] == len(rows)
