"""The MLPerf LoadGen scenarios (single-stream, server, offline) end to end on tiny models, with short tests:
LoadGen's verdict on every row, the max-QPS search within its budget, a bound no model meets, accuracy mode
against the harness's accuracy, the report's serving section and the gate's serving ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dde_bench.bench.results import read_run
from dde_bench.bench.runner import RunConfig, Runner
from dde_bench.cards import ServingCard, SuiteCard
from dde_bench.errors import UserError

# short LoadGen tests: p90 (LoadGen's early stopping then needs 44 queries, p99 needs 459), 64 queries, 0.15 s
SERVING = dict(
    min_duration_s=0.15,
    min_query_count=64,
    latency_percentile=0.9,
    latency_bound_ms=100.0,
    max_batch=4,
    max_delay_ms=1.0,
    offline_batch=8,
    qps_search_budget_s=3.0,
    qps_precision=0.5,
)
SCENARIOS = ("single-stream", "server", "offline")
FORMS = ("rt-teacher", "rt-student", "rt-student@cached")


@pytest.fixture
def lg():
    return pytest.importorskip("mlperf_loadgen")


def _suite(env: dict, folder: Path, **serving) -> Path:
    """The test env's nlvr2 suite with a serving block (short tests unless overridden)."""
    card = yaml.safe_load((Path(env["DDE_BENCH_SUITES"]) / "nlvr2.yaml").read_text())
    card["serving"] = {**SERVING, **serving}
    path = folder / "serving-nlvr2.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def _run(suite: Path, out: Path, **kw) -> Path:
    cfg = RunConfig(suite=str(suite), device="cpu", out=out, quick=True, threads=1, **kw)
    return Runner(cfg).run()


@pytest.fixture(scope="module")
def served(bench_env, tmp_path_factory) -> Path:
    """One run of the random-weight teacher and student through all three LoadGen scenarios (`serving`)."""
    pytest.importorskip("mlperf_loadgen")
    folder = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in bench_env.items():
            mp.setenv(k, v)
        return _run(_suite(bench_env, folder), folder / "run", scenarios=["serving"])


def test_every_scenario_has_loadgen_verdict(served):
    _, rows, _ = read_run(served)
    assert set(rows.scenario) == set(SCENARIOS)
    assert "rt-hf" not in set(rows.model)  # the transformers reference row is not served
    for scenario in SCENARIOS:
        for model in FORMS:
            sel = rows[(rows.model == model) & (rows.scenario == scenario)]
            assert len(sel) == 1, (model, scenario)
            r = sel.iloc[0]
            assert r.status == "ok" and r.loadgen_result in ("VALID", "INVALID")
            assert r.serving_form == ("cached" if model.endswith("@cached") else "online")
            assert r.achieved_qps > 0 and r.flops_per_item > 0
            assert 0 < r.serving_p50_ms <= r.serving_p90_ms <= r.serving_p99_ms <= r.serving_p999_ms
            assert r.batcher_max_batch == {"single-stream": 1, "server": 4, "offline": 8}[scenario]
            assert 1 <= r.batcher_mean_batch <= r.batcher_max_batch
            # the row's verdict is the one LoadGen wrote in its own summary
            logs = served / r.loadgen_log_dir
            summary = (logs / "mlperf_log_summary.txt").read_text()
            assert f"Result is : {r.loadgen_result}" in summary
            assert (logs / "mlperf_log_detail.txt").is_file()
            assert not (logs / "mlperf_log_trace.json").exists()
            if r.loadgen_result == "INVALID":
                assert r.loadgen_reason
            if model.endswith("@cached"):
                assert r.cache_build_s > 0 and r.serving_flop_ratio > 1.5  # no image tower per request
            if model != "rt-teacher":
                assert r.serving_ratio_vs_teacher > 0
    assert pd.isna(rows[rows.scenario == "single-stream"].target_qps).all()
    assert (rows[rows.scenario == "server"].latency_bound_ms == 100.0).all()


def test_qps_search_terminates_within_budget(served):
    _, rows, _ = read_run(served)
    srv = rows[rows.scenario == "server"]
    for _, r in srv.iterrows():
        trials = r.qps_trials
        assert 1 <= len(trials) <= 12
        assert r.qps_search in ("converged", "budget spent", "trial cap", "bound not met")
        # a trial starts only if it fits what is left, and LoadGen's max_duration caps it at the budget;
        # the slack is the last trial's drain
        assert r.qps_search_s <= SERVING["qps_search_budget_s"] + 2.0
        valid = [t["target_qps"] for t in trials if t["result"] == "VALID"]
        assert all(t["result"] in ("VALID", "INVALID") for t in trials)
        if valid:
            assert r.max_qps_at_bound == pytest.approx(max(valid))
            assert r.loadgen_result == "VALID" and r.target_qps == pytest.approx(max(valid))
        if r.qps_search == "converged":
            lowest_invalid = min(t["target_qps"] for t in trials if t["result"] == "INVALID")
            assert lowest_invalid <= r.max_qps_at_bound * (1 + SERVING["qps_precision"]) + 1e-9


def test_bound_no_model_meets_is_reported_not_an_error(lg, use_bench_env, tmp_path):
    suite = _suite(use_bench_env, tmp_path, latency_bound_ms=0.001)  # 1 microsecond
    run = _run(suite, tmp_path / "run", scenarios=["server"], models=["rt-teacher", "rt-student"])
    _, rows, _ = read_run(run)
    assert set(rows.model) == set(FORMS)
    for _, r in rows.iterrows():
        assert r.status == "ok" and r.loadgen_result == "INVALID"
        assert r.qps_search == "bound not met" and pd.isna(r.max_qps_at_bound)
        assert "latency bound not met" in r.loadgen_reason
        assert len(r.qps_trials) == 1  # one sample alone already exceeds the bound: one test says so
    p = _cli("gate", str(run), "--min-serving-ratio", "0.5")
    assert p.exit_code == 1, p.output
    assert "meets the latency bound at no QPS" in p.output


def test_accuracy_mode_equals_harness_accuracy(lg, use_bench_env, tmp_path):
    """Checkpoint-backed models: LoadGen's accuracy-mode responses, scored with the official metric, give exactly
    the accuracy the harness measured, in every scenario and form."""
    from dde_bench.bench.workload import Workload
    from dde_bench.cards import load_suite
    from dde_bench.modeling import Student, Teacher, save_model, size_config

    workload = Workload(load_suite("nlvr2"), Path(use_bench_env["DDE_BENCH_CACHE"]))
    cfg = size_config("tiny", vocab_size=workload.data.vocab_size)
    torch.manual_seed(1)
    teacher, student = Teacher(cfg, "nlvr2"), Student(cfg, "nlvr2")
    save_model(teacher, tmp_path / "t")
    save_model(student, tmp_path / "s")
    models = Path(use_bench_env["DDE_BENCH_MODELS"])
    (models / "sv-teacher.yaml").write_text(
        yaml.safe_dump({"kind": "teacher", "size": "tiny", "weights": str(tmp_path / "t")})
    )
    (models / "sv-student.yaml").write_text(
        yaml.safe_dump(
            {"kind": "student", "size": "tiny", "weights": str(tmp_path / "s"), "teacher": "sv-teacher"}
        )
    )
    suite = _suite(use_bench_env, tmp_path, qps_search_budget_s=1.0)
    run = _run(suite, tmp_path / "run", scenarios=list(SCENARIOS), models=["sv-teacher", "sv-student"])
    _, rows, _ = read_run(run)
    assert len(rows) == 9
    for _, r in rows.iterrows():
        assert 0.0 < r.accuracy < 1.0  # random weights on a balanced task: not 0 or 1, so a mix-up shows
        assert r.serving_accuracy == r.accuracy and bool(r.serving_accuracy_matches)
        logs = run / Path(r.loadgen_log_dir).parent / "accuracy"
        logged = json.loads((logs / "mlperf_log_accuracy.json").read_text())
        assert sorted(e["qsl_idx"] for e in logged) == list(range(48))  # every sample exactly once
        assert len((logs / "predictions.csv").read_text().splitlines()) == 48
    from dde_bench.report.render import render_report

    render_report([run], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("(= harness)") == 9 and "differs from the harness" not in md


def test_report_has_serving_section(served, tmp_path):
    from dde_bench.report.render import render_report

    render_report([served], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Serving under load (MLPerf LoadGen)" in md and "max QPS at bound" in md
    assert "rt-student@cached" in md and "cached student" in md
    png = next((tmp_path / "report" / "plots").glob("*-serving.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_serving_ratio(served):
    p = _cli("gate", str(served), "--min-serving-ratio", "0.01", "--format", "json")
    assert p.exit_code == 0, p.output
    checks = json.loads(p.stdout)["checks"]
    assert [c["check"] for c in checks] == ["serving ratio"] and checks[0]["model"] == "rt-student@cached"
    p = _cli("gate", str(served), "--min-serving-ratio", "1000")
    assert p.exit_code == 1 and "< 1000x" in p.output


def test_missing_loadgen_is_one_user_error(use_bench_env, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"need MLPerf LoadGen: pip install 'dde-bench\[serving\]'"):
        _run(_suite(use_bench_env, tmp_path), tmp_path / "run", scenarios=["server"], models=["rt-teacher"])


def test_serving_card_defaults_and_errors():
    card = ServingCard()
    assert card.resolved("quick")["min_query_count"] == 500 and card.resolved("quick")["profile"] == "quick"
    assert card.resolved("mlperf")["min_duration_s"] == 600.0
    mine = ServingCard.from_dict({"profile": "mlperf", "max_batch": 3})
    assert mine.resolved("quick")["profile"] == "mlperf" and mine.resolved("quick")["max_batch"] == 3
    with pytest.raises(UserError, match=r"serving\.max_batchh: unknown key; did you mean 'max_batch'"):
        SuiteCard.from_dict({"name": "x", "task": "nlvr2", "serving": {"max_batchh": 4}})
    with pytest.raises(UserError, match="latency_percentile"):
        SuiteCard.from_dict({"name": "x", "task": "nlvr2", "serving": {"latency_percentile": 99}})


def _cli(*args):
    """``dde-bench ARGS`` in this process (exit code and stdout)."""
    from typer.testing import CliRunner

    from dde_bench.cli import app

    return CliRunner().invoke(app, list(args))
