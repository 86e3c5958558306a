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
    assert "speedup cached (FLOP bound)" in md and "| batch |" in md
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
    for name in PLOTS:
        for ext in ("png", "svg"):
            files = list((rendered / "plots").glob(f"*-{name}.{ext}"))
            assert len(files) == 1 and files[0].stat().st_size > 1000, (name, ext)


def test_html_self_contained(rendered: Path) -> None:
    page = (rendered / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|//)""", page)
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert len(srcs) == len(PLOTS)
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
    assert (tmp_path / "out" / "report.html").read_text().count("<img") == len(PLOTS) - 3


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
