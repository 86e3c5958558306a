"""Render run folders into report.md, a self-contained report.html and one PNG + SVG per plot.

The HTML embeds every plot as a base64 PNG data URI and references nothing else, so it opens from disk with no
network. An inline script marks ``<body data-images-loaded="N">`` once all N images have decoded (used by the
headless-browser test; harmless elsewhere).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from dde_bench.bench.schema import FLOP_RATIO_LABEL as FLOP_RATIO
from dde_bench.errors import UserError
from dde_bench.report.load import load_run
from dde_bench.report.plots import PLOTS, break_even
from dde_bench.report.style import NA, SAMPLE_RULE, Palette, sample_note, sig
from dde_bench.report.tables import (
    DERIVED_MARK,
    DERIVED_NOTE,
    GROUP_KEYS,
    comparison_table,
    env_table,
    fastpath_table,
    flop_ratio_table,
    full_table,
    headline,
    model_kinds,
    paper_table,
    run_label,
    to_html,
    to_markdown,
)


@dataclass
class _Block:
    """One piece of the report, rendered to both markdown and HTML."""

    md: str
    html: str


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def _heading(level: int, text: str) -> _Block:
    return _Block(f"{'#' * level} {text}", f"<h{level}>{html.escape(text)}</h{level}>")


def _inline(text: str) -> str:
    """Markdown-ish text to HTML: escaped, **bold** kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _para(text: str) -> _Block:
    return _Block(text, f"<p>{_inline(text)}</p>")


def _bullets(items: list[str]) -> _Block:
    lis = "".join(f"<li>{_inline(i)}</li>" for i in items)
    return _Block("\n".join(f"- {i}" for i in items), f"<ul>{lis}</ul>")


def _table(df: pd.DataFrame) -> _Block:
    if df.empty:
        return _para("(no rows)")
    return _Block(to_markdown(df), to_html(df))


HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }}
table.results {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
table.results th, table.results td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
table.results th {{ background: #f3f3f3; }}
table.results td:first-child, table.results th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0 2em; }} figure img {{ max-width: 100%; height: auto; }}
figcaption {{ font-size: 0.9em; color: #555; }} .note {{ color: #8a5a00; }}
</style></head>
<body>
"""
HTML_TAIL = """<script>
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var done = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
    if (done) { document.body.setAttribute("data-images-loaded", String(imgs.length)); }
    else { setTimeout(check, 50); }
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
</script>
</body></html>
"""


def _save_plot(fig: plt.Figure, plot_dir: Path, stem: str) -> tuple[Path, Path, str]:
    """Write the figure as PNG and SVG; return both paths and the PNG as base64."""
    png = plot_dir / f"{stem}.png"
    svg = plot_dir / f"{stem}.svg"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    png.write_bytes(buf.getvalue())
    fig.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    return png, svg, base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Render the runs in ``run_dirs`` into ``out_dir``: report.md, report.html and plots/*.png|svg.

    Returns the path of report.html. Raises UserError when no run folder is given or one cannot be read.
    """
    if not run_dirs:
        raise UserError("report: give at least one run folder")
    runs = [load_run(Path(d)) for d in run_dirs]
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)

    all_rows = pd.concat(
        [r.rows.assign(run=run_label(runs, i)) for i, r in enumerate(runs)], ignore_index=True
    )
    palette = Palette(model_kinds(all_rows) if len(all_rows) else {})
    labels = ", ".join(run_label(runs, i) for i in range(len(runs)))
    title = f"dde-bench report: {labels}"
    blocks: list[_Block] = [_heading(1, title)]

    blocks += [_heading(2, "Environment"), _table(env_table(runs))]
    blocks += [
        _heading(2, "How to read the numbers"),
        _bullets(
            [
                "**Speedup** = the teacher's median latency / the model's, both measured interleaved (A B A B "
                "...) in one process, so machine noise hits both alike; its 95% interval is a paired bootstrap "
                "over the interleaved rounds.",
                f"**{FLOP_RATIO}** = the teacher's FLOPs per item / the model's (torch's FLOP counter): the "
                "speedup the arithmetic alone predicts. It is not a bound: a measured speedup above it means the "
                "model executes each counted FLOP faster than the teacher does (a smaller working set that stays "
                "in the CPU caches or GPU memory hierarchy, shorter sequences, fewer uncounted element-wise "
                "operations); one below it means overheads the FLOP count does not see.",
                f"**Sample sizes**: {SAMPLE_RULE}",
                "**Memory** = the peak of live tensors during one call, split into the weights the call uses "
                "and the activations at the peak (CUDA: max_memory_allocated beside it).",
                "The transformers ViLT row is a **reference** (transformers' own ViltModel with the teacher's "
                "weights), not a student.",
            ]
        ),
    ]
    if len(runs) > 1:
        blocks += [
            _heading(2, "Runs side by side"),
            _para(
                "Rows matched by suite, model, scenario, batch size and gallery size (and device / dtype where "
                "a run holds several); 'p50 / first' is the ratio of medians to the first run's."
            ),
            _table(comparison_table(runs)),
        ]

    for i, run in enumerate(runs):
        rlabel = run_label(runs, i)
        if run.rows.empty:
            blocks += [_heading(2, f"Run {rlabel}"), _para("This run has no result rows yet.")]
            continue
        groups = run.rows.groupby(list(GROUP_KEYS), sort=False, dropna=False)
        for (suite, device, dtype), rows in groups:
            gtitle = f"{suite}, {device}, {dtype}"
            section = f"{gtitle} (run {rlabel})" if len(runs) > 1 else gtitle
            blocks.append(_heading(2, section))
            blocks += [_heading(3, "Headline"), _bullets(headline(rows, palette))]
            blocks += [
                _heading(3, "Accuracy and speedup over the teacher"),
                _para(
                    "Speedups at each model's largest measured batch size (the batch column): ratio of median "
                    "latencies, teacher over model, measured interleaved, with its bootstrap 95% interval in "
                    f"brackets where at least 10 rounds were timed (else n=K rounds); the {FLOP_RATIO} in "
                    "parentheses. Accuracy on the suite's evaluation split with its bootstrap 95% interval."
                ),
                _table(paper_table(rows, palette)),
            ]
            above = flop_ratio_table(rows, palette)
            if not above.empty:
                blocks += [
                    _heading(3, "Speedups above the FLOP ratio"),
                    _para(
                        f"These rows are faster than their {FLOP_RATIO} predicts: speedup / {FLOP_RATIO} = the "
                        "model's FLOP rate / the teacher's, so the model executes each counted FLOP faster. The "
                        "working set (weights + activations of one call) beside it shows how much smaller the "
                        "model's call is; a working set that fits the CPU caches where the teacher's does not is "
                        "the usual reason on CPU. FLOP rate = FLOPs per item x items per second."
                    ),
                    _table(above),
                ]
            if DERIVED_MARK in to_markdown(paper_table(rows, palette)):
                blocks.append(_para(DERIVED_NOTE))
            be = break_even(rows)
            if not be.empty:
                be_fmt = pd.DataFrame(
                    {
                        "model": be["model"],
                        "gallery size": be["gallery_size"].astype(int).astype(str),
                        "student p50 ms": be["student_ms"].map(sig),
                        "teacher p50 ms": be["teacher_ms"].map(sig),
                        "cache build ms": be["cache_build_ms"].map(sig),
                        "break-even queries": be["break_even_queries"].map(
                            lambda q: NA if q != q else ("never" if q == float("inf") else f"{q:.3g}")
                        ),
                        "student calls": be["n_samples"].map(lambda n: sample_note(n)),
                    }
                )
                blocks += [
                    _heading(3, "Gallery: when does the image cache pay off?"),
                    _para(
                        "Break-even = the number of text queries after which building the image-feature cache "
                        "plus answering with the student takes less time than answering with the teacher (cache "
                        "build / (teacher - student time per query), from the medians; below 1 the cache pays "
                        "for itself within the first query). n/a where the teacher was not measured at that size "
                        "(one query over the run's time budget)."
                    ),
                    _table(be_fmt),
                ]
            fp = fastpath_table(rows)
            if not fp.empty:
                blocks += [
                    _heading(3, "Fast paths against the plain path"),
                    _para(
                        "Each variant measured interleaved with its plain model in the same group: "
                        "`@compiled` = the same call through torch.compile (output checked against the plain "
                        "path first; the compiled student's speedup above is over the compiled teacher), "
                        "`@fusion-cache` = the fusion layer's image half cached (gallery), `@int8` = dynamic "
                        "int8 Linear layers (checked within 15% of the logit scale; its own accuracy; its speedup "
                        "above is over the fp32 teacher), `@ort` = exported to ONNX and run by ONNX Runtime's CPU "
                        "provider (checked within 1e-3; over the ORT teacher). 'vs plain' = plain "
                        "median / variant median with its bootstrap 95% interval; 'max abs diff' = largest "
                        "output difference to the plain path; 'compile s' = the first call, compiling (inductor's on-disk "
                        "caches can make a repeat fast)."
                    ),
                    _table(fp),
                ]
            stem = f"{rlabel}-{suite}-{device}-{dtype}" if len(runs) > 1 else f"{suite}-{device}-{dtype}"
            blocks += _serving_section(rows, palette, f"{suite}, {device}, {dtype}", out_dir, _slug(stem))
            blocks.append(_heading(3, "Plots"))
            ptitle = f"{suite}, {device}, {dtype}"
            prefix = _slug(
                f"{rlabel}-{suite}-{device}-{dtype}" if len(runs) > 1 else f"{suite}-{device}-{dtype}"
            )
            for name, (caption, fn) in PLOTS.items():
                result = fn(rows, run.raw, palette, ptitle)
                if isinstance(result, str):
                    note = f"Plot '{caption}' skipped: {result}."
                    blocks.append(_Block(f"> {note}", f'<p class="note">{html.escape(note)}</p>'))
                    continue
                png, svg, b64 = _save_plot(result, plot_dir, f"{prefix}-{name}")
                rel_png, rel_svg = png.relative_to(out_dir).as_posix(), svg.relative_to(out_dir).as_posix()
                blocks.append(
                    _Block(
                        f"![{caption}]({rel_png})\n\n*{caption}* ([SVG]({rel_svg}))",
                        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>",
                    )
                )
            blocks += [
                _heading(3, "All results"),
                _para(
                    "n = timed calls (rounds, in an interleaved group). IQR, p90, p99 and intervals where the "
                    "sample supports them, else n=K. Gallery rows: one text query against 'gallery' images. "
                    "Rows not measured (skipped, oom, error) carry no accuracy."
                ),
                _table(full_table(rows, palette)),
            ]

    md = "\n\n".join(b.md for b in blocks) + "\n"
    page = HTML_HEAD.format(title=html.escape(title)) + "\n".join(b.html for b in blocks) + HTML_TAIL
    (out_dir / "report.md").write_text(md, encoding="utf-8")
    out = out_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------- serving under load (LoadGen scenarios)


def _serving_section(
    rows: pd.DataFrame, palette: Palette, title: str, out_dir: Path, stem: str
) -> list[_Block]:
    """The LoadGen rows of one group: the max-QPS-at-bound table, every test's verdict, latency against offered
    QPS (dde_bench.report.serving); nothing when the group has no such rows."""
    from dde_bench.report import serving

    if serving.serving_rows(rows).empty:
        return []
    blocks = [
        _heading(3, "Serving under load (MLPerf LoadGen)"),
        _para(
            "Each model form served through MLPerf LoadGen with a dynamic batcher (single-stream: one query at a "
            "time; server: Poisson arrivals; offline: every sample at once). 'max QPS at bound' = the highest "
            "offered QPS LoadGen judged VALID at the latency bound (its early-stopping rule included), found by a "
            "search within a time budget; 'vs teacher' = that QPS over the teacher's, beside the FLOP ratio "
            f"(teacher FLOPs / this form's); the goal asks the cached student for at least "
            f"{serving.GOAL_SHARE:g} x FLOP ratio."
        ),
    ]
    mq = serving.max_qps_table(rows, palette)
    if not mq.empty:
        blocks.append(_table(mq))
    blocks += [
        _para("Every LoadGen test the rows report, with LoadGen's verdict:"),
        _table(serving.scenario_table(rows, palette)),
    ]
    caption = "Serving: latency percentiles against offered QPS (one panel per model size)"
    fig = serving.plot_serving(rows, palette, title)
    if isinstance(fig, str):
        note = f"Plot '{caption}' skipped: {fig}."
        return blocks + [_Block(f"> {note}", f'<p class="note">{html.escape(note)}</p>')]
    png, svg, b64 = _save_plot(fig, out_dir / "plots", f"{stem}-serving")
    rel_png, rel_svg = png.relative_to(out_dir).as_posix(), svg.relative_to(out_dir).as_posix()
    blocks.append(
        _Block(
            f"![{caption}]({rel_png})\n\n*{caption}* ([SVG]({rel_svg}))",
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>",
        )
    )
    return blocks
