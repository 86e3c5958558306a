"""The report's plots (matplotlib, Agg backend). Each takes the rows of one group (a suite on one device in one
dtype), the run's raw samples and the shared palette, and returns a Figure, or a string saying why it was skipped.

Models of different sizes (tiny, b32) never share an axis: every plot has one row of panels per model size.
The teacher runs the same call online and cached, so it is drawn once where scenarios share a panel; the
transformers reference row is drawn as a reference (dotted), not as a student.

  speedup        speedup over the teacher against batch size, online and cached, FLOP ratio dashed
  accuracy       accuracy against batch-1 latency, the frontier marked
  latency        per-call latency distributions from the raw samples (box from 10 calls, p99 from 100)
  memory         weights + activations of one call
  gallery        query latency against gallery size, and cumulative cost against the number of queries
  stages         each stage's share of one call (100%), with the call's time
  energy         energy per item, where measured (NVML, NVIDIA GPUs)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from dde_bench.bench.schema import FLOP_RATIO_LABEL  # noqa: E402
from dde_bench.bench.stats import MIN_ROUNDS_FOR_INTERVAL, supports  # noqa: E402
from dde_bench.report.load import RowKey, row_key  # noqa: E402
from dde_bench.report.style import (  # noqa: E402
    REFERENCE_STYLE,
    ROLE_COLORS,
    SCENARIO_MARKERS,
    STAGE_COLORS,
    STAGE_LABELS,
    Palette,
    is_missing,
    lighter,
    sig,
)
from dde_bench.report.tables import (  # noqa: E402
    model_accuracy,
    model_kinds,
    model_sizes,
    num,
    size_order,
    speedup_for,
    teacher_of,
)

PlotResult = Figure | str
SCENARIOS = ("online", "cached")
SCENARIO_TITLES = {"online": "online (both towers every call)", "cached": "cached image features"}

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.fonttype": "none",
    }
)


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"].map(lambda s: is_missing(s) or s == "ok")]


def _suptitle(fig: Figure, what: str, title: str) -> None:
    fig.suptitle(f"{what} - {title}", fontsize=11)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="dimgray", fontsize=9)
    ax.set_axis_off()


def _label(model: str, kinds: dict[str, str | None]) -> str:
    return f"{model} (reference: transformers ViLT)" if kinds.get(model) == "hf-vilt" else model


def _plain_log_ticks(ax: Axes, which: str = "y") -> None:
    """Log-axis ticks as plain numbers (1000, not 10^3); minor ticks labelled at 2x and 5x when they help."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    few_decades = hi / max(lo, 1e-12) < 100
    axis.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}" if few_decades and f"{v:g}".lstrip("0.")[:1] in "25" else "")
    )


def _batch_axis(ax: Axes, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlim(min(batches) / 1.6, max(batches) * 1.6)
    ax.set_xlabel("batch size (items per call)")


# ---------------------------------------------------------------- (a) speedup


def plot_speedup(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Speedup over the teacher against batch size: one row of panels per model size, online and cached side
    by side, one line per model; its FLOP ratio dashed in the same colour; the teacher's 1.0x as a solid line.
    Points with a bootstrap 95% interval (>= 10 interleaved rounds) are filled with error bars; hollow points
    were timed fewer rounds and carry no interval."""
    kinds, sizes_of = model_kinds(rows), model_sizes(rows)
    models = [m for m in palette.order(list(kinds)) if kinds[m] != "teacher"]
    data: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for m in models:
        for s in SCENARIOS:
            sub = rows[(rows["model"] == m) & (rows["scenario"] == s)]
            pts = [(int(b), speedup_for(rows, m, s, int(b))) for b in sorted(set(sub["batch_size"].dropna()))]
            data[(m, s)] = [(b, d) for b, d in pts if not math.isnan(d["value"])]
    sizes = size_order({sizes_of[m] for (m, _), pts in data.items() if pts})
    if not sizes:
        return "no speedup rows (no student or reference model measured against a teacher)"
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11.5, 3.9 * len(sizes)), squeeze=False)
    hollow = False
    for i, size in enumerate(sizes):
        for j, s in enumerate(SCENARIOS):
            ax = axes[i][j]
            ms = [m for m in models if sizes_of[m] == size and data[(m, s)]]
            if not ms:
                _empty(ax, f"{size}, {s}: no rows measured against a teacher")
                continue
            teacher = teacher_of(rows, ms[0]) or "teacher"
            ax.axhline(1.0, color=palette.color(teacher), lw=1.3, label=f"{teacher} (teacher) = 1.0x")
            top, batches = 1.0, set()
            for k, m in enumerate(ms):
                pts, color = data[(m, s)], palette.color(m)
                ref = palette.is_reference(m)
                style = REFERENCE_STYLE if ref else palette.style(m)
                xs, ys = [b for b, _ in pts], [d["value"] for _, d in pts]
                batches |= set(xs)
                ax.plot(xs, ys, color=color, linestyle=style["linestyle"], lw=1.8, label=_label(m, kinds))
                for b, d in pts:
                    shown = supports("interval", d["rounds"]) and not math.isnan(d["low"])
                    if shown:
                        err = [[d["value"] - d["low"]], [d["high"] - d["value"]]]
                        ax.errorbar(b, d["value"], yerr=err, color=color, capsize=3, lw=1, linestyle="")
                    hollow |= not shown
                    ax.plot(
                        b,
                        d["value"],
                        marker=style["marker"],
                        linestyle="",
                        color=color,
                        markerfacecolor=color if shown else "white",
                        markersize=6,
                        markeredgewidth=1.5,
                    )
                    note = "" if shown else f" n={int(d['rounds'])}" if not math.isnan(d["rounds"]) else ""
                    ax.annotate(
                        f"{d['value']:.1f}x{note}",
                        (b, d["value"]),
                        xytext=(7, 9 * (k - (len(ms) - 1) / 2) - 3),
                        textcoords="offset points",
                        ha="left",
                        fontsize=7,
                        color=color,
                    )
                    top = max(top, d["high"] if shown else d["value"])
                bounds = [(b, d["bound"]) for b, d in pts if not math.isnan(d["bound"])]
                if bounds and not ref:
                    bx, by = zip(*bounds, strict=True)
                    if len(bx) == 1:  # one batch size: a short dash around the point
                        ax.hlines(by[0], bx[0] / 1.35, bx[0] * 1.35, colors=color, linestyles="--", lw=1.2)
                    else:
                        ax.plot(bx, by, color=color, linestyle="--", lw=1.2, alpha=0.9)
                    top = max(top, max(by))
            _batch_axis(ax, sorted(batches))
            ax.set_ylim(0, top * 1.3)
            ax.set_ylabel("speedup over the teacher (x)")
            ax.set_title(f"{size} models: {SCENARIO_TITLES[s]}")
            handles, _ = ax.get_legend_handles_labels()
            handles.append(Line2D([], [], color="black", linestyle="--", lw=1.2, label=f"{FLOP_RATIO_LABEL}"))
            ax.legend(handles=handles, fontsize=7, loc="upper left", frameon=False)
    if hollow:
        fig.text(
            0.5,
            0.005,
            f"hollow markers: fewer than {MIN_ROUNDS_FOR_INTERVAL} interleaved rounds (n given), so no interval; "
            "filled markers: bootstrap 95% interval over rounds",
            ha="center",
            fontsize=8,
            color="dimgray",
        )
    _suptitle(fig, "Speedup over the teacher (ratio of median latencies, measured interleaved)", title)
    fig.tight_layout(rect=(0, 0.02 if hollow else 0, 1, 1))
    return fig


# ---------------------------------------------------------------- (b) accuracy vs batch-1 latency


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (both larger is better), by increasing x."""
    idx = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in idx:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def plot_accuracy(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Accuracy (95% CI) against the median latency of one call at batch 1, as the paper plots a model's cost
    for one request: one point per model and scenario (the teacher once: it has no cache), the frontier (no
    other point both faster and more accurate) dotted."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS) & (ok["batch_size"] == 1)]
    kinds = model_kinds(rows)
    pts = []
    for (m, s), sub in ok.groupby(["model", "scenario"], sort=False):
        if kinds.get(m) in ("teacher", "hf-vilt") and s == "cached":
            continue  # the same call as online
        acc, lo, hi = model_accuracy(rows, m)
        lat = num(sub["latency_p50_ms"].iloc[0])
        if math.isnan(acc) or math.isnan(lat):
            continue
        pts.append({"model": m, "scenario": s, "lat": lat, "acc": 100 * acc, "lo": 100 * lo, "hi": 100 * hi})
    if not pts:
        return "no rows with both accuracy and a batch-1 latency (speed-only models have no accuracy)"
    fig, ax = plt.subplots(figsize=(7.4, 4.5))
    for p in pts:
        err = None
        if not (math.isnan(p["lo"]) or math.isnan(p["hi"])):
            err = [[p["acc"] - p["lo"]], [p["hi"] - p["acc"]]]
        ref = palette.is_reference(p["model"])
        ax.errorbar(
            p["lat"],
            p["acc"],
            yerr=err,
            fmt=REFERENCE_STYLE["marker"] if ref else SCENARIO_MARKERS.get(p["scenario"], "o"),
            color=palette.color(p["model"]),
            markersize=7,
            capsize=2,
            markeredgecolor=palette.color(p["model"]) if ref else "black",
            markeredgewidth=1.5 if ref else 0.5,
        )
    front = pareto_front([(-p["lat"], p["acc"]) for p in pts])[::-1]
    fx, fy = [pts[i]["lat"] for i in front], [pts[i]["acc"] for i in front]
    ax.step(fx, fy, where="post", color="black", linestyle=":", linewidth=1.2, zorder=0)
    ax.scatter(fx, fy, s=170, facecolors="none", edgecolors="black", linewidths=0.8, zorder=0)
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x")
    ax.set_xlabel("median latency of one call at batch 1 (ms, log scale)")
    metric = rows["accuracy_metric"].dropna()
    ax.set_ylabel(f"accuracy (%, 95% CI; {metric.iloc[0] if len(metric) else 'metric n/a'})")
    models = palette.order({p["model"] for p in pts})
    handles: list[Any] = [
        Line2D(
            [],
            [],
            marker=REFERENCE_STYLE["marker"] if palette.is_reference(m) else "o",
            linestyle="",
            color=palette.color(m),
            label=_label(m, kinds),
        )
        for m in models
    ]
    handles += [
        Line2D([], [], marker=SCENARIO_MARKERS[s], linestyle="", color="grey", label=s)
        for s in SCENARIOS
        if any(p["scenario"] == s for p in pts)
    ]
    handles.append(
        Line2D([], [], color="black", linestyle=":", marker="o", markerfacecolor="none", label="frontier")
    )
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _suptitle(fig, "Accuracy against batch-1 latency (up and left is better)", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (c) latency distributions


def plot_latency(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Raw per-call latencies per (scenario, batch size, model), one row of panels per model size: a box (IQR,
    median line, whiskers 1.5 IQR) where at least 10 calls were timed, the calls themselves as dots where fewer;
    the row's p99 as a black tick only where at least 100 calls were timed."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS)]
    have = [(r, raw.get(row_key(r))) for _, r in ok.iterrows()]
    have = [(r, smp) for r, smp in have if smp]
    if not have:
        return "no raw latency samples in results.jsonl"
    sizes_of = model_sizes(rows)
    sizes = size_order({sizes_of.get(r["model"], "") for r, _ in have})
    scen = [s for s in SCENARIOS if any(r["scenario"] == s for r, _ in have)]
    fig, axes = plt.subplots(
        len(sizes), len(scen), figsize=(5.8 * len(scen), 3.9 * len(sizes)), squeeze=False
    )
    for row_axes, z in zip(axes, sizes, strict=True):
        dots = ticks = False
        hz = [(r, smp) for r, smp in have if sizes_of.get(r["model"], "") == z]
        batches = sorted({int(r["batch_size"]) for r, _ in hz})
        models = palette.order({r["model"] for r, _ in hz})
        width = 0.8 / len(models)
        for ax, s in zip(row_axes, scen, strict=True):
            for i, m in enumerate(models):
                for j, b in enumerate(batches):
                    sel = [
                        (r, smp)
                        for r, smp in hz
                        if r["scenario"] == s and r["model"] == m and int(r["batch_size"]) == b
                    ]
                    if not sel:
                        continue
                    r, smp = sel[0]
                    xi = j - 0.4 + width * (i + 0.5)
                    dots |= _latency_mark(ax, r, smp, xi, width, palette.color(m))
                    if supports("p99", len(smp)) and not is_missing(r["latency_p99_ms"]):
                        ticks = True
                        ax.plot(
                            [xi], [num(r["latency_p99_ms"])], marker="_", color="black", markersize=9, mew=2
                        )
            ax.set_yscale("log")
            _plain_log_ticks(ax, "y")
            ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            ax.set_xlim(-0.6, len(batches) - 0.4)
            ax.set_title(f"{z or 'size n/a'} models: {SCENARIO_TITLES.get(s, s)}")
            ax.set_ylabel("latency per call (ms, log scale)")
        handles: list[Any] = [Patch(color=palette.color(m), label=m) for m in models]
        handles.append(Line2D([], [], color="black", linewidth=1.2, label="median (box: IQR, from 10 calls)"))
        if dots:
            handles.append(
                Line2D([], [], color="grey", marker=".", linestyle="", label="each call (< 10 calls)")
            )
        if ticks:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="black",
                    marker="_",
                    linestyle="",
                    markersize=9,
                    mew=2,
                    label="p99 (>= 100 calls)",
                )
            )
        row_axes[-1].legend(
            handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False
        )
    _suptitle(fig, "Latency per call", title)
    fig.tight_layout()
    return fig


def _latency_mark(ax: Axes, r: pd.Series, smp: list[float], x: float, width: float, color: str) -> bool:
    """One row's calls at ``x``: a box plot from 10 calls, else each call as a dot and the median as a line.
    Returns whether dots were drawn."""
    if supports("iqr", len(smp)):
        bp = ax.boxplot(
            [smp],
            positions=[x],
            widths=width * 0.85,
            patch_artist=True,
            flierprops={"markersize": 2, "markeredgecolor": color},
            medianprops={"color": "black", "linewidth": 1.2},
            manage_ticks=False,
        )
        for box in bp["boxes"]:
            box.set_facecolor(color)
            box.set_edgecolor("black")
            box.set_linewidth(0.5)
        return False
    ax.plot([x] * len(smp), smp, linestyle="", marker=".", color=color, markersize=5)
    ax.plot([x - width * 0.35, x + width * 0.35], [num(r["latency_p50_ms"])] * 2, color="black", lw=1.2)
    return True


# ---------------------------------------------------------------- panels of bars: one per (size, batch)


def _entries(
    sel: pd.DataFrame, palette: Palette, kinds: dict[str, str | None]
) -> list[tuple[str, pd.Series]]:
    """(label, row) per bar of one (size, batch) panel: the teacher and the reference once (their call is the
    same online and cached: the online row), every other model once per scenario; in palette order."""
    out = []
    for m in palette.order(set(sel["model"])):
        for s in SCENARIOS:
            r = sel[(sel["model"] == m) & (sel["scenario"] == s)]
            if r.empty:
                continue
            if kinds.get(m) in ("teacher", "hf-vilt"):
                if s == "cached" and ((sel["model"] == m) & (sel["scenario"] == "online")).any():
                    continue
                label = f"{m} (no cache)" if kinds.get(m) == "teacher" else f"{m} (reference)"
            else:
                label = f"{m} · {s}"
            out.append((label, r.iloc[0]))
    return out


def _bar_panels(
    rows: pd.DataFrame,
    palette: Palette,
    has_value: Callable[[pd.Series], bool],
    draw: Callable[[Axes, list[tuple[str, pd.Series]]], None],
    figwidth: float = 11.5,
) -> Figure | None:
    """A grid of horizontal-bar panels, one row per model size and one panel per batch size of that size, each
    scaled on its own (a tiny model's bars never vanish next to a paper-size one). ``draw(ax, entries)`` draws
    one panel; rows without ``has_value`` are left out. None when no row has a value."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS)]
    ok = ok[[has_value(r) for _, r in ok.iterrows()]] if len(ok) else ok
    if ok.empty:
        return None
    kinds, sizes_of = model_kinds(rows), model_sizes(rows)
    ok = ok.assign(_size=ok["model"].map(lambda m: sizes_of.get(m, "")))
    sizes = size_order(set(ok["_size"]))
    panels = {z: sorted({int(b) for b in ok.loc[ok["_size"] == z, "batch_size"]}) for z in sizes}
    entries = {
        (z, b): _entries(ok[(ok["_size"] == z) & (ok["batch_size"] == b)], palette, kinds)
        for z in sizes
        for b in panels[z]
    }
    ncols = max(len(v) for v in panels.values())
    heights = [max(len(entries[(z, b)]) for b in panels[z]) + 1.5 for z in sizes]
    fig = plt.figure(figsize=(figwidth, 0.32 * sum(heights) + 1.4 * len(sizes)))
    grid = fig.add_gridspec(len(sizes), ncols, height_ratios=heights)
    for i, z in enumerate(sizes):
        for j in range(ncols):
            ax = fig.add_subplot(grid[i, j])
            if j >= len(panels[z]):
                ax.set_axis_off()
                continue
            b = panels[z][j]
            ents = entries[(z, b)]
            draw(ax, ents)
            y = np.arange(len(ents))[::-1]
            ax.set_yticks(y, [lbl for lbl, _ in ents], fontsize=8)
            for tick, (_, r) in zip(ax.get_yticklabels(), ents, strict=True):
                tick.set_color(palette.color(r["model"]))
            ax.set_ylim(-0.7, len(ents) - 0.3)
            ax.grid(axis="y", visible=False)
            ax.set_title(f"{z or 'size n/a'} models, batch {b}")
    return fig


# ---------------------------------------------------------------- (d) memory


def plot_memory(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Memory of one call as weights + activations (stacked; activations lighter and hatched), one panel per
    model size and batch size, each on its own scale; the total at the end of each bar. Where the split was not
    tracked (compiled calls) the bar is the row's peak memory alone."""
    device = str(rows["device"].iloc[0])

    def has(r: pd.Series) -> bool:
        return not is_missing(r["peak_mem_mb"]) or not is_missing(r.get("weights_mb"))

    peak_only = []

    def draw(ax: Axes, ents: list[tuple[str, pd.Series]]) -> None:
        top = 0.0
        for y, (_, r) in zip(np.arange(len(ents))[::-1], ents, strict=True):
            color = palette.color(r["model"])
            w, a = num(r.get("weights_mb")), num(r.get("activation_peak_mb"))
            if math.isnan(w) or math.isnan(a):
                peak_only.append(r["model"])
                total = num(r["peak_mem_mb"])
                ax.barh(y, total, 0.7, color=color, hatch="xx", edgecolor="white")
            else:
                total = w + a
                ax.barh(y, w, 0.7, color=color, edgecolor="white")
                ax.barh(y, a, 0.7, left=w, color=lighter(color), hatch="///", edgecolor=color, linewidth=0)
            ax.text(total, y, f" {sig(total)}", va="center", fontsize=7)
            top = max(top, total)
        ax.set_xlim(0, top * 1.25)
        ax.set_xlabel("MB")

    fig = _bar_panels(rows, palette, has, draw)
    if fig is None:
        return "no memory measured"
    what = (
        "peak of live tensors"
        if not device.startswith("cuda")
        else "live tensors (peak: max_memory_allocated)"
    )
    handles = [
        Patch(facecolor="#777777", label="weights the call uses (parameters + buffers)"),
        Patch(
            facecolor="#dddddd",
            hatch="///",
            edgecolor="#777777",
            label="activations + temporaries at the peak",
        ),
    ]
    if peak_only:
        handles.append(
            Patch(facecolor="#777777", hatch="xx", edgecolor="white", label="peak only (split not tracked)")
        )
    fig.legend(
        handles=handles,
        fontsize=8,
        loc="lower center",
        ncol=3,
        frameon=False,
    )
    _suptitle(fig, f"Memory of one call: weights + activations ({what})", title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# ---------------------------------------------------------------- (e) gallery: latency and cumulative cost


def break_even(rows: pd.DataFrame) -> pd.DataFrame:
    """Per student gallery row: the number of queries after which building the image cache plus answering with
    the student costs less than answering with the teacher, as the harness computed it for the row
    (``break_even_queries``: cache build / (teacher - student seconds per query), not rounded). NaN where the
    teacher was not measured; inf where the student is not faster."""
    ok = _ok(rows)
    g = ok[ok["scenario"] == "gallery"]
    kinds = model_kinds(rows)
    recs = []
    for _, r in g.iterrows():
        if kinds.get(r["model"]) != "student":
            continue
        n = int(num(r["gallery_size"])) if not is_missing(r["gallery_size"]) else int(r["batch_size"])
        teacher = teacher_of(rows, r["model"])
        t = g[(g["model"] == teacher) & (g["gallery_size"].map(num) == n)]
        t_ms = num(t["latency_p50_ms"].iloc[0]) if not t.empty else float("nan")
        s_ms = num(r["latency_p50_ms"])
        build_ms = 1000 * num(r["cache_build_s"])
        q = num(r.get("break_even_queries"))
        if math.isnan(q) and not math.isnan(t_ms) and t_ms <= s_ms:
            q = float("inf")
        recs.append(
            {
                "model": r["model"],
                "teacher": teacher,
                "gallery_size": n,
                "student_ms": s_ms,
                "teacher_ms": t_ms,
                "cache_build_ms": build_ms,
                "break_even_queries": q,
                "n_samples": num(r["n_samples"]),
            }
        )
    return pd.DataFrame.from_records(
        recs,
        columns=[
            "model",
            "teacher",
            "gallery_size",
            "student_ms",
            "teacher_ms",
            "cache_build_ms",
            "break_even_queries",
            "n_samples",
        ],
    )


def _cumulative_cost(ax: Axes, be: pd.DataFrame, palette: Palette) -> None:
    """Seconds spent against queries answered at the largest gallery size the teacher was measured at: the
    teacher's queries, and the student's cache build plus its queries (break-even where they cross)."""
    be = be[np.isfinite(be["teacher_ms"])]
    if be.empty:
        _empty(
            ax,
            "cumulative cost n/a: the teacher was not measured at any gallery size\n(each query over the run's time budget)",
        )
        return
    n = int(be["gallery_size"].max())
    sel = be[be["gallery_size"] == n]
    finite = sel["break_even_queries"][np.isfinite(sel["break_even_queries"])]
    # log-log, from well before the break-even to well after it: where they cross and how far apart they end
    q_lo = min(1.0, float(finite.min()) / 3) if len(finite) else 1.0
    q_hi = max(1000.0, 30 * float(finite.max())) if len(finite) else 1000.0
    q = np.logspace(np.log10(q_lo), np.log10(q_hi), 200)
    teacher = str(sel["teacher"].iloc[0])
    t_s = float(sel["teacher_ms"].iloc[0]) / 1e3
    ax.plot(q, q * t_s, color=palette.color(teacher), lw=2, label=f"{teacher}: queries only")
    for _, r in sel.iterrows():
        m = r["model"]
        build, s_s = r["cache_build_ms"] / 1e3, r["student_ms"] / 1e3
        style = palette.style(m)["linestyle"]
        ax.plot(
            q,
            build + q * s_s,
            color=palette.color(m),
            linestyle=style,
            lw=1.6,
            label=f"{m}: cache build + queries",
        )
        qb = r["break_even_queries"]
        if np.isfinite(qb):
            ax.plot([qb], [build + qb * s_s], marker="o", color=palette.color(m), markersize=5)
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        span = f"{lo:.2g}" if abs(hi - lo) < 0.05 * hi else f"{lo:.2g}-{hi:.2g}"
        when = " (within the first query)" if hi < 1 else ""
        ax.text(
            0.98,
            0.04,
            f"break-even (dots) after {span} queries{when}",
            transform=ax.transAxes,
            ha="right",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, "x")
    _plain_log_ticks(ax, "y")
    ax.set_xlabel("text queries answered (log)")
    ax.set_ylabel("cumulative time (s, log)")
    ax.set_title(f"cumulative cost at gallery size {n}")
    ax.legend(fontsize=7, frameon=False, loc="upper left")


def plot_gallery(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """One row per model size. Left: median latency of scoring one text against the gallery, log-log, per model
    (variants in their variant's line style). Right: cumulative cost against the number of queries, the
    teacher's queries against the student's cache build plus its queries, at the largest gallery size the
    teacher was measured at; they cross at the break-even count."""
    ok = _ok(rows)
    g = ok[ok["scenario"] == "gallery"]
    if g.empty:
        return "no gallery rows"
    sizes_of = model_sizes(rows)
    be = break_even(rows)
    sizes = size_order({sizes_of.get(m, "") for m in g["model"]})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11.5, 4.0 * len(sizes)), squeeze=False)
    for i, z in enumerate(sizes):
        ax = axes[i][0]
        gz = g[g["model"].map(lambda m, z=z: sizes_of.get(m, "") == z)]
        few = False
        for m in palette.order(set(gz["model"])):
            sub = gz[gz["model"] == m].assign(_n=lambda d: d["gallery_size"].map(num)).sort_values("_n")
            style = palette.style(m)
            ax.plot(
                sub["_n"],
                sub["latency_p50_ms"].map(num),
                marker=style["marker"],
                color=palette.color(m),
                linestyle=style["linestyle"],
                label=m,
                markersize=5,
            )
            few |= bool((sub["n_samples"].map(num) < MIN_ROUNDS_FOR_INTERVAL).any())
        skipped = rows[
            (rows["scenario"] == "gallery")
            & (rows["status"] == "skipped")
            & rows["model"].map(lambda m, z=z: sizes_of.get(m, "") == z)
        ]
        if not skipped.empty:
            sizes_txt = ", ".join(str(int(num(n))) for n in sorted(set(skipped["gallery_size"].map(num))))
            ax.text(
                0.02,
                0.97,
                f"{', '.join(sorted(set(skipped['model'])))}: not measured at N = {sizes_txt}\n(over the run's time budget per query)",
                transform=ax.transAxes,
                va="top",
                fontsize=7,
                color="dimgray",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax, "x")
        _plain_log_ticks(ax, "y")
        ax.set_xlabel("gallery size N (images scored per text query, log)")
        ax.set_ylabel("median latency per query (ms, log)")
        ax.set_title(
            f"{z or 'size n/a'} models: one text against N images"
            + (" (some sizes n<10 calls)" if few else "")
        )
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        bez = be[be["model"].map(lambda m, z=z: sizes_of.get(m, "") == z)] if not be.empty else be
        _cumulative_cost(axes[i][1], bez, palette)
    _suptitle(fig, "Gallery: query latency and when the image cache pays off", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (f) stages


def plot_stages(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Each stage's share of one call (bars normalised to 100%), one panel per model size and batch size, the
    call's time at the right of each bar: image tower, text tower, fusion + head for students; the joint stack
    for the teacher and the reference (drawn once: the teacher runs the same call online and cached)."""

    def has(r: pd.Series) -> bool:
        d = r["stage_ms"]
        return isinstance(d, dict) and sum(float(v or 0) for v in d.values()) > 0

    ok = _ok(rows)
    stage_rows = ok["stage_ms"].map(lambda d: d if isinstance(d, dict) else {})
    stages = [k for k in STAGE_COLORS if any(k in d for d in stage_rows)]
    stages += sorted({k for d in stage_rows for k in d} - set(stages))
    extra = plt.get_cmap("Pastel2")
    colors = {st: STAGE_COLORS.get(st, extra(k % 8)) for k, st in enumerate(stages)}

    def draw(ax: Axes, ents: list[tuple[str, pd.Series]]) -> None:
        for y, (_, r) in zip(np.arange(len(ents))[::-1], ents, strict=True):
            d = {k: float(v or 0.0) for k, v in r["stage_ms"].items()}
            total = sum(d.values())
            left = 0.0
            for st in stages:
                share = 100 * d.get(st, 0.0) / total
                if share <= 0:
                    continue
                ax.barh(
                    y,
                    share,
                    0.72,
                    left=left,
                    color=colors[st],
                    edgecolor=palette.color(r["model"]),
                    linewidth=1.4,
                )
                if share >= 12:
                    ax.text(left + share / 2, y, f"{share:.0f}%", ha="center", va="center", fontsize=7)
                left += share
            ax.text(101, y, f"{sig(total)} ms", va="center", fontsize=7)
        ax.set_xlim(0, 118)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("share of the call's time (%)")

    fig = _bar_panels(rows, palette, has, draw)
    if fig is None:
        return "no per-stage times (stage_ms) in the rows"
    handles = [
        Patch(facecolor=colors[st], edgecolor="black", linewidth=0.5, label=STAGE_LABELS.get(st, st))
        for st in stages
    ]
    fig.legend(handles=handles, fontsize=8, loc="lower center", frameon=False, ncol=len(handles))
    _suptitle(fig, "Where one call's time goes (each stage timed on its own; bar outline = model)", title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


# ---------------------------------------------------------------- (g) energy


def plot_energy(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Energy per item (NVML's energy counter over a timed window), one panel per model size and batch size."""

    def has(r: pd.Series) -> bool:
        return not is_missing(r.get("energy_j_per_item"))

    def draw(ax: Axes, ents: list[tuple[str, pd.Series]]) -> None:
        top = 0.0
        for y, (_, r) in zip(np.arange(len(ents))[::-1], ents, strict=True):
            v = num(r["energy_j_per_item"])
            ax.barh(y, v, 0.7, color=palette.color(r["model"]), hatch=palette.style(r["model"])["hatch"])
            ax.text(v, y, f" {sig(v)}", va="center", fontsize=7)
            top = max(top, v)
        ax.set_xlim(0, top * 1.25)
        ax.set_xlabel("J per item")

    if "energy_j_per_item" not in rows.columns:
        return "no energy measured (NVML's energy counter: NVIDIA GPUs only)"
    fig = _bar_panels(rows, palette, has, draw)
    if fig is None:
        return "no energy measured (NVML's energy counter: NVIDIA GPUs only)"
    _suptitle(fig, "Energy per item", title)
    fig.tight_layout()
    return fig


PLOTS: dict[str, tuple[str, Callable[..., PlotResult]]] = {
    "speedup": (
        f"Speedup over the teacher against batch size, online and cached ({FLOP_RATIO_LABEL} dashed)",
        plot_speedup,
    ),
    "accuracy": ("Accuracy against batch-1 latency (frontier dotted)", plot_accuracy),
    "latency": ("Latency per call (box from 10 calls, p99 from 100)", plot_latency),
    "memory": ("Memory of one call: weights + activations", plot_memory),
    "gallery": ("Gallery: query latency, and cumulative cost against queries", plot_gallery),
    "stages": ("Where one call's time goes (stage shares)", plot_stages),
    "energy": ("Energy per item", plot_energy),
}


# ---------------------------------------------------------------- learning curves (dde-bench reproduce)


def _curve_style(model: str) -> tuple[str, str]:
    """(colour, line style) of a reproduce row: teacher blue, no distillation purple, distilled students orange."""
    if model.startswith("teacher"):
        return ROLE_COLORS["teacher"][0], "-"
    if "no distillation" in model:
        return ROLE_COLORS["student-nodistill"][0], "-"
    if "pre-training" in model:
        return ROLE_COLORS["student"][2], "-"
    if "soft + attention" in model:
        return ROLE_COLORS["student"][0], "-"
    if "soft" in model:
        return ROLE_COLORS["student"][1], "--"
    return ROLE_COLORS["student"][1], ":"


def plot_learning_curves(curves: pd.DataFrame, title: str) -> Figure:
    """Eval accuracy against fine-tuning steps (mean over seeds, min-max band shaded).

    ``curves``: columns model, seed, step, accuracy (``dde-bench reproduce --eval-every``). Left: the students,
    compared at equal steps, with the teacher's final accuracy as a dashed line (the students start from the
    fine-tuned teacher's weights, so their step 0 comes after the teacher's last step). Right: the teacher's own
    fine-tuning."""
    fig, (ax, ax_t) = plt.subplots(
        1, 2, figsize=(10.5, 4.2), gridspec_kw={"width_ratios": [1.6, 1]}, sharey=True
    )
    for model in dict.fromkeys(curves["model"]):
        rows = curves[curves["model"] == model]
        sel = rows.groupby("step")["accuracy"]
        mean, lo, hi = sel.mean(), sel.min(), sel.max()
        n = int(rows["seed"].nunique())
        color, ls = _curve_style(model)
        label = f"{model} ({n} seed{'s' * (n > 1)})"
        is_teacher = model.startswith("teacher")
        target = ax_t if is_teacher else ax
        target.plot(mean.index, mean.values, ls, color=color, marker=".", ms=4, label=label)
        if n > 1:
            target.fill_between(mean.index, lo.values, hi.values, color=color, alpha=0.12, lw=0)
        if is_teacher:
            final = rows[rows["step"] == rows.groupby("seed")["step"].transform("max")]["accuracy"]
            ax.axhline(
                final.mean(), color=color, ls="--", lw=1.2, label=f"teacher, final ({final.mean():.1f})"
            )
    ax.set_xlabel("student fine-tuning steps")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("students (towers from the fine-tuned teacher)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax_t.set_xlabel("teacher fine-tuning steps")
    ax_t.set_title("teacher")
    ax_t.legend(fontsize=7.5, loc="lower right")
    _suptitle(fig, "Learning curves", title)
    fig.tight_layout()
    return fig
