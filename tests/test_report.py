"""Report rendering from fixture run folders (tests/report_fixtures.py: synthetic numbers, not measurements)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dde_bench.errors import UserError
from dde_bench.report.load import load_run
from dde_bench.report.plots import PLOTS, pareto_front
from dde_bench.report.render import render_report
from dde_bench.report.style import sig
from tests.report_fixtures import make_run, rendered_fixture_report


@pytest.fixture(scope="module")
def rendered() -> Path:
    return rendered_fixture_report()


def test_report_md_has_tables_and_key_numbers(rendered: Path) -> None:
    run = load_run(rendered.parent / "runs" / "cpu-run")
    md = (rendered / "report.md").read_text()
    for heading in (
        "## Environment",
        "### Headline",
        "### Accuracy and speedup over the teacher",
        "### All results",
    ):
        assert heading in md
    assert "speedup cached (FLOP ratio)" in md and "| batch |" in md
    assert "FLOP bound" not in md  # it is not a bound: a measured speedup can exceed it
    rows = run.rows
    st = rows[(rows.model == "tiny-student") & (rows.scenario == "cached") & (rows.batch_size == 32)].iloc[0]
    assert f"{st.speedup_vs_teacher:.1f}x [{st.speedup_ci_low:.1f}, {st.speedup_ci_high:.1f}] (9.5x)" in md
    assert f"{100 * st.accuracy:.1f}%" in md
    assert sig(st.latency_p50_ms) in md
    # the headline states accuracy gap, cached and online speedups and memory from the rows
    headline = md.split("### Headline")[1].split("###")[0]
    assert "tiny-student" in headline and "cached image features" in headline and "online" in headline
    assert "MB" in headline
    # the teacher was not measured at gallery size 100000: break-even reads n/a, never invented
    assert re.search(r"\| tiny-student \| 100000 \|.*\| n/a \|", md)
    # where it was measured, it is the harness's number for the row (not recomputed, not rounded up to 1)
    gal = rows[
        (rows.model == "tiny-student") & (rows.scenario == "gallery") & rows.break_even_queries.notna()
    ]
    g = gal.iloc[0]
    assert re.search(rf"\| tiny-student \| {int(g.gallery_size)} \|.*\| {g.break_even_queries:.3g} \|", md)


def test_every_plot_written_png_and_svg(rendered: Path) -> None:
    md = (rendered / "report.md").read_text()
    for name, (caption, _) in PLOTS.items():
        if name == "energy":  # a CPU run: NVML energy is not measured, and the report says so
            assert f"Plot '{caption}' skipped: no energy measured" in md
            assert not list((rendered / "plots").glob(f"*-{name}.png"))
            continue
        for ext in ("png", "svg"):
            files = list((rendered / "plots").glob(f"*-{name}.{ext}"))
            assert len(files) == 1 and files[0].stat().st_size > 1000, (name, ext)


def test_html_self_contained(rendered: Path) -> None:
    page = (rendered / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|//)""", page)
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert len(srcs) == len(list((rendered / "plots").glob("*.png"))) == len(PLOTS) - 1
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "@import" not in page


def test_missing_data_skips_plot_with_note(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", models=("tiny-teacher", "tiny-student"))
    lines = (run / "results.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        row = json.loads(line)
        if row["scenario"] == "gallery":
            continue
        row["stage_ms"] = None
        row.pop("latency_samples_ms")
        out.append(json.dumps(row))
    (run / "results.jsonl").write_text("\n".join(out) + "\n")
    render_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "skipped: no gallery rows" in md
    assert "skipped: no per-stage times" in md
    assert "skipped: no raw latency samples" in md
    assert "skipped: no energy measured" in md
    assert (tmp_path / "out" / "report.html").read_text().count("<img") == len(PLOTS) - 4


def test_several_runs_side_by_side(tmp_path: Path) -> None:
    two = ("tiny-teacher", "tiny-student")
    a = make_run(tmp_path / "cpu", seed=0, models=two)
    b = make_run(tmp_path / "gpu", seed=1, device="cuda:0", speed=8.0, git_commit="abc1234", models=two)
    render_report([a, b], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Runs side by side" in md
    assert "cpu (cpu; fp32): p50 ms" in md and "gpu (cuda:0; fp32): p50 / first" in md
    assert "abc1234" in md and "Fixture GPU 80GB" in md


def test_load_run_errors_and_truncated_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", truncate_last_line=True)
    with pytest.warns(RuntimeWarning, match=r"results\.jsonl:34: truncated last line"):
        loaded = load_run(run)
    assert len(loaded.rows) == 33 and loaded.schema_version == 1
    assert len(loaded.raw) == 33
    with pytest.raises(UserError, match="no such run folder"):
        load_run(tmp_path / "nope")
    lines = (run / "results.jsonl").read_text().splitlines()
    lines[3] = "{not json"
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"results.jsonl:4: malformed"):
        load_run(run)
    (run / "run.json").unlink()
    with pytest.raises(UserError, match="run.json: missing"):
        load_run(run)


def test_sig_and_pareto() -> None:
    assert (
        sig(1795.2) == "1800" and sig(0.004352) == "0.00435" and sig(12.345) == "12.3" and sig(None) == "n/a"
    )
    assert pareto_front([(1, 0.9), (10, 0.8), (5, 0.7), (20, 0.5)]) == [0, 1, 3]


def _full_table(md: str) -> str:
    return md.split("### All results")[1]


def _cells(md: str, model: str, scenario: str, first: str) -> list[str]:
    """The cells of the full table's row for (model, scenario, batch or gallery)."""
    for line in _full_table(md).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [model, scenario] and first in cells[2:4]:
            return cells
    raise AssertionError(f"no row {model} {scenario} {first}")


def test_small_samples_print_only_what_they_support(rendered: Path) -> None:
    """p99 needs 100 calls, an interval 10 rounds (bench.stats.supports); below that the cell says n=K."""
    md = (rendered / "report.md").read_text()
    header = [c.strip() for c in _full_table(md).split("\n|")[1].strip("|").split("|")]
    col = {name: i for i, name in enumerate(header)}
    tiny = _cells(md, "tiny-student", "cached", "8")  # 40 calls: IQR and p90 yes, p99 no, interval yes
    assert tiny[col["p99 ms"]] == "n=40" and re.fullmatch(r"[\d.]+", tiny[col["p90 ms"]])
    assert re.fullmatch(r"[\d.]+x \[[\d.]+, [\d.]+\]", tiny[col["speedup [95% CI]"]])
    b32 = _cells(md, "dide-b32-student", "cached", "8")  # 5 calls: the median only
    assert b32[col["p90 ms"]] == b32[col["IQR ms"]] == "n=5"
    assert re.fullmatch(r"[\d.]+x \(n=5 rounds\)", b32[col["speedup [95% CI]"]])
    paper = md.split("### Accuracy and speedup over the teacher")[1].split("###")[0]
    assert re.search(r"\| dide-b32-student \| student \|.*\| [\d.]+x \(n=5 rounds\) \(9.5x\) \|", paper)
    assert "Percentiles and intervals are printed only where the sample supports them" in md
    assert "p99 from 100" in md and "interval from 10 interleaved rounds" in md


def test_headline_memory_both_ways_and_reference_row(rendered: Path) -> None:
    md = (rendered / "report.md").read_text()
    headline = md.split("### Headline")[1].split("###")[0]
    line = next(ln for ln in headline.splitlines() if ln.startswith("- **tiny-student**"))
    assert re.search(r"cached [\d.]+ MB vs [\d.]+ MB for the teacher, [\d.]+x lighter", line)
    assert re.search(r"online [\d.]+ MB vs [\d.]+ MB for the teacher, [\d.]+x heavier", line)
    assert "FLOP ratio" in line
    paper = md.split("### Accuracy and speedup over the teacher")[1].split("###")[0]
    assert "| hf-vilt-tiny | reference |" in paper
    # the paper-size cached student runs above its FLOP ratio: the report says so, with the data behind it
    assert "### Speedups above the FLOP ratio" in md
    above = md.split("### Speedups above the FLOP ratio")[1].split("###")[0]
    assert "| dide-b32-student | cached | 8 |" in above and "GFLOP/s" in above


def test_environment_seed_and_skipped_rows(rendered: Path) -> None:
    md = (rendered / "report.md").read_text()
    env = md.split("## Environment")[1].split("##")[0]
    assert re.search(r"\| seed \| 0 \|", env)
    skipped = _cells(md, "tiny-teacher", "gallery", "100000")
    assert skipped[4] == "skipped" and skipped[5] == ""  # a row that measured nothing shows no accuracy
    assert skipped[2] == ""  # a gallery row's size is its gallery column, not its batch


def test_palette_distinct_colours_and_variant_styles() -> None:
    from dde_bench.report.style import Palette

    models = {
        "tiny-teacher": "teacher",
        "vilt-b32-teacher": "teacher",
        "tiny-student": "student",
        "dide-b32-student": "student",
        "tiny-student-nodistill": "student",
        "hf-vilt-tiny": "hf-vilt",
        "hf-vilt-b32": "hf-vilt",
        "tiny-student@fusion-cache": "student",
        "dide-b32-student@fusion-cache": "student",
        "tiny-student@compiled": "student",
    }
    p = Palette(models)
    plain = [m for m in models if "@" not in m]
    assert len({p.color(m) for m in plain}) == len(plain)
    for v in ("tiny-student@fusion-cache", "tiny-student@compiled"):
        assert p.color(v) == p.color("tiny-student") and p.style(v) != p.style("tiny-student")
    assert p.style("tiny-student@fusion-cache") == p.style("dide-b32-student@fusion-cache")
    assert p.is_reference("hf-vilt-tiny") and not p.is_reference("tiny-student")


def test_gate_wording_and_batch_size_filter(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dde_bench.cli import app
    from dde_bench.report.compare import gate_run

    run = make_run(tmp_path / "r")
    res = gate_run(run, min_speedup=3.0)  # the non-distilled student fails on accuracy at 3 batch sizes
    assert res.summary().startswith("gate FAILED: 9/12 checks passed, 3 failed (")
    one = gate_run(run, min_speedup=3.0, models=["tiny-student"], batch_sizes=[32])
    assert [c.batch_size for c in one.checks] == [32, 32] and one.summary().startswith(
        "gate PASSED: 2/2 checks passed ("
    )
    out = CliRunner().invoke(
        app, ["gate", str(run), "--min-speedup", "3", "--model", "tiny-student", "--batch-size", "8"]
    )
    assert out.exit_code == 0 and "2/2 checks passed" in out.output
    with pytest.raises(UserError, match=r"--batch-size 4: no cached student rows at that batch size"):
        gate_run(run, batch_sizes=[4])


def test_sample_size_rule() -> None:
    from dde_bench.bench.stats import min_calls_for, supports

    assert [min_calls_for(s) for s in ("p50", "iqr", "p90", "p99", "interval")] == [1, 10, 10, 100, 10]
    assert supports("p99", 100) and not supports("p99", 99) and not supports("interval", 9)
    assert not supports("p90", None) and not supports("p90", float("nan"))
    with pytest.raises(ValueError):
        min_calls_for("p101x")


def test_report_of_rows_without_memory(tmp_path: Path) -> None:
    """Rows that measured no memory at all (e.g. the A/B gate's probe runs) still render: memory reads n/a."""
    run = make_run(tmp_path / "r", models=("tiny-teacher", "tiny-student"))
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["scenario"] == "cached" and r["batch_size"] == 8]
    for r in rows:
        for k in ("peak_mem_mb", "weights_mb", "activation_peak_mb", "tensor_peak_mb"):
            r[k] = None
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    render_report([run], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "peak memory n/a" in md and "skipped: no memory measured" in md


def test_environment_shows_cpu_features_gemm_peak_and_phases(tmp_path: Path) -> None:
    import json

    import pandas as pd

    from dde_bench.report.load import Run
    from dde_bench.report.tables import env_table

    (tmp_path / "phases.json").write_text(json.dumps({"data": 1.2, "online+cached fp32": 61.0}))
    info = {
        "settings": {"seed": 0, "gemm_peak": {"fp32": {"flops_per_s": 5.0e10, "shape": [2048, 2048, 2048]}}},
        "environment": {"cpu_features": ["avx2", "fma"], "native_bf16": False},
    }
    run = Run(info=info, rows=pd.DataFrame({"dtype": ["fp32"]}), path=tmp_path)
    table = env_table([run]).set_index("")
    col = table.columns[0]
    assert table.loc["CPU features", col] == "avx2, fma" and table.loc["native bf16", col] == "False"
    assert table.loc["GEMM peak", col] == "fp32 50 GFLOP/s (2048^3)"
    assert table.loc["time per phase", col] == "data 1 s, online+cached fp32 61 s (total 62 s)"
    old = Run(info={"settings": {}}, rows=pd.DataFrame({"dtype": ["fp32"]}), path=tmp_path / "none")
    assert env_table([old]).set_index("").loc["time per phase"].iloc[0] == "n/a"  # older runs: not measured
