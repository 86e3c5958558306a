"""compare_runs / gate_run and the CLI exit codes, on fixture run folders (synthetic numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dde_bench.cli import app
from dde_bench.errors import UserError
from dde_bench.report.commands import parse_fraction
from dde_bench.report.compare import compare_runs, gate_run
from tests.report_fixtures import make_run

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmp")
    return {
        "base": make_run(root / "base", seed=0),
        "same": make_run(root / "same", seed=0),
        "noise": make_run(root / "noise", seed=7),
        "slow30": make_run(root / "slow30", seed=3, slowdown={("tiny-student", "cached"): 1.3}),
        "slow5": make_run(root / "slow5", seed=4, slowdown={("tiny-student", "cached"): 1.05}),
        "v2": make_run(root / "v2", seed=0, schema_version=2),
        "gpu": make_run(root / "gpu", seed=0, device="cuda:0", speed=8.0),
    }


def _exit(args: list[str]) -> tuple[int, str]:
    """Run the CLI as main() does: UserError -> exit code 2."""
    try:
        res = runner.invoke(app, args, catch_exceptions=False)
    except UserError as e:
        return e.exit_code, str(e)
    return res.exit_code, res.output


def test_identical_runs_ok(runs: dict[str, Path]) -> None:
    res = compare_runs(runs["base"], runs["same"])
    assert res.exit_code == 0 and res.counts["ok"] == len(res.rows) == 33
    assert _exit(["compare", str(runs["base"]), str(runs["same"])])[0] == 0


def test_30_percent_slower_student_cached_regresses(runs: dict[str, Path]) -> None:
    res = compare_runs(runs["base"], runs["slow30"])
    regressed = [r for r in res.rows if r.verdict == "regressed"]
    assert {(r.key["model"], r.key["scenario"]) for r in regressed} == {("tiny-student", "cached")}
    assert len(regressed) == 3
    for r in regressed:
        assert 1.2 < r.latency_ratio < 1.4 and r.ratio_ci_low > 1.1 and r.p_slower < 0.01
    code, out = _exit(["compare", str(runs["base"]), str(runs["slow30"]), "--format", "json"])
    assert code == 1
    data = json.loads(out)
    assert data["regressed"] and data["counts"]["regressed"] == 3


def test_5_percent_slower_under_10_percent_threshold_ok(runs: dict[str, Path]) -> None:
    assert compare_runs(runs["base"], runs["slow5"], max_slowdown=0.10).exit_code == 0
    code, _ = _exit(["compare", str(runs["base"]), str(runs["slow5"]), "--max-slowdown", "10%"])
    assert code == 0
    # with a 2% threshold the same 5% slowdown is significant and large enough
    assert compare_runs(runs["base"], runs["slow5"], max_slowdown=0.02).exit_code == 1


def test_noise_only_ok(runs: dict[str, Path]) -> None:
    res = compare_runs(runs["base"], runs["noise"])
    assert res.exit_code == 0, [r for r in res.rows if r.verdict == "regressed"]


def test_unusable_input_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="schema versions differ"):
        compare_runs(runs["base"], runs["v2"])
    with pytest.raises(UserError, match="no rows in common"):
        compare_runs(runs["base"], runs["gpu"])
    with pytest.raises(UserError, match="no such run folder"):
        compare_runs(runs["base"], tmp_path / "missing")
    for other in ("v2", "gpu"):
        assert _exit(["compare", str(runs["base"]), str(runs[other])])[0] == 2
    assert _exit(["compare", str(runs["base"]), str(tmp_path / "missing")])[0] == 2


def test_markdown_and_text_formats(runs: dict[str, Path]) -> None:
    code, out = _exit(["compare", str(runs["base"]), str(runs["slow30"]), "--format", "markdown"])
    assert code == 1 and "| regressed |" in out and "REGRESSION" in out
    code, out = _exit(["compare", str(runs["base"]), str(runs["same"])])
    assert code == 0 and "no regression" in out


def test_gate_pass_and_fail(runs: dict[str, Path]) -> None:
    ok = gate_run(runs["base"], min_speedup=3.0, max_accuracy_drop=0.01, models=["tiny-student"])
    assert ok.passed and ok.exit_code == 0 and len(ok.checks) == 6
    too_fast = gate_run(runs["base"], min_speedup=50.0, models=["tiny-student"])
    assert not too_fast.passed and {c.check for c in too_fast.checks if c.verdict == "fail"} == {"speedup"}
    # the non-distilled student falls far behind the teacher's accuracy
    all_students = gate_run(runs["base"], min_speedup=3.0)
    failed = {(c.model, c.check) for c in all_students.checks if c.verdict == "fail"}
    assert failed == {("tiny-student-nodistill", "accuracy")}
    assert _exit(["gate", str(runs["base"]), "--min-speedup", "3", "--model", "tiny-student"])[0] == 0
    assert _exit(["gate", str(runs["base"]), "--min-speedup", "3"])[0] == 1
    assert _exit(["gate", str(runs["base"]), "--scenario", "nope"])[0] == 2
    # --on median gates the ratio of medians itself, which sits above the interval's lower end
    from dde_bench.report.load import load_run

    rows = load_run(runs["base"]).rows
    sel = rows[(rows.model == "tiny-student") & (rows.scenario == "cached")]
    slowest = sel.loc[sel.speedup_vs_teacher.idxmin()]
    t = float((slowest.speedup_ci_low + slowest.speedup_vs_teacher) / 2)

    def verdict(on: str) -> str:
        checks = gate_run(runs["base"], min_speedup=t, models=["tiny-student"], on=on).checks
        return next(c.verdict for c in checks if c.check == "speedup" and c.batch_size == slowest.batch_size)

    assert verdict("median") == "pass" and verdict("ci-low") == "fail"
    with pytest.raises(UserError, match="--on"):
        gate_run(runs["base"], on="mean")


def test_parse_fraction() -> None:
    assert parse_fraction("10%", "--x") == pytest.approx(0.1)
    assert parse_fraction("0.1", "--x") == pytest.approx(0.1)
    with pytest.raises(UserError, match="--x"):
        parse_fraction("ten", "--x")
    for bad in ("-50%", "-0.1", "nan", "inf"):
        with pytest.raises(UserError, match="--x: expected a non-negative fraction"):
            parse_fraction(bad, "--x")
    with pytest.raises(UserError, match="--x: expected at most 1"):
        parse_fraction("150%", "--x", high=1.0)
    assert parse_fraction("0%", "--x") == 0.0


def test_compare_uses_the_one_regression_rule(runs: dict[str, Path]) -> None:
    """compare's latency evidence is stats.regression_verdict on the raw samples (independent runs)."""
    from dde_bench.bench.stats import regression_verdict
    from dde_bench.report.load import load_run

    base, new = load_run(runs["base"]), load_run(runs["slow30"])
    res = compare_runs(runs["base"], runs["slow30"])
    for r in res.rows:
        k = tuple(r.key.values())
        if k in base.raw and k in new.raw:
            v = regression_verdict(base.raw[k], new.raw[k])
            assert (r.latency_ratio, r.ratio_ci_low, r.ratio_ci_high) == (v.ratio, v.ci_low, v.ci_high)
            assert r.p_slower == v.p_value and (r.verdict == "regressed") == v.regressed
