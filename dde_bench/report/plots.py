"""The report's plots (matplotlib, Agg backend). Each takes the rows of one group (a suite on one device in one
dtype), the run's raw samples and the shared palette, and returns a Figure, or a string saying why it was skipped.

  speedup        speedup over the teacher by scenario and batch size, FLOP bound marked on each bar
  pareto         accuracy against throughput, Pareto frontier marked
  latency        per-call latency distributions from the raw samples, p50 and p99 marked
  memory         peak memory per model and scenario
  gallery        latency against gallery size (log-log), and the break-even query count of the cache
  stages         per-stage time split of one call
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
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from dde_bench.bench.schema import VARIANT_SEP  # noqa: E402
from dde_bench.report.load import RowKey, row_key  # noqa: E402
from dde_bench.report.style import (  # noqa: E402
    ROLE_COLORS,
    SCENARIO_MARKERS,
    STAGE_COLORS,
    STAGE_LABELS,
    Palette,
    is_missing,
)
from dde_bench.report.tables import model_accuracy, model_kinds, num, speedup_for, teacher_of  # noqa: E402

PlotResult = Figure | str
SCENARIOS = ("online", "cached")

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


def _batches(rows: pd.DataFrame) -> list[int]:
    sel = rows[rows["scenario"].isin(SCENARIOS)]
    return sorted({int(b) for b in sel["batch_size"] if not is_missing(b)})


def _suptitle(fig: Figure, what: str, title: str) -> None:
    fig.suptitle(f"{what} - {title}", fontsize=11)


# ---------------------------------------------------------------- (a) speedup


def plot_speedup(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Grouped bars: speedup over the teacher per (scenario, batch size), one bar per non-teacher model, 95% CI
    as error bars, the FLOP bound as a black line across each bar; hatched bars are derived, not interleaved."""
    kinds = model_kinds(rows)
    models = [m for m in palette.order(list(kinds)) if kinds[m] != "teacher"]
    groups = [(s, b) for s in SCENARIOS for b in _batches(rows)]
    data = {(m, g): speedup_for(rows, m, g[0], g[1]) for m in models for g in groups}
    models = [m for m in models if any(not math.isnan(data[(m, g)]["value"]) for g in groups)]
    groups = [g for g in groups if any(not math.isnan(data[(m, g)]["value"]) for m in models)]
    if not models or not groups:
        return "no speedup rows (no student or reference model measured against a teacher)"
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(groups) * max(1, len(models)) * 0.45 + 2), 4.2))
    width = 0.8 / len(models)
    x = np.arange(len(groups))
    bound_drawn = False
    for i, m in enumerate(models):
        for j, g in enumerate(groups):
            d = data[(m, g)]
            if math.isnan(d["value"]):
                continue
            xi = x[j] - 0.4 + width * (i + 0.5)
            err = None
            if not (math.isnan(d["low"]) or math.isnan(d["high"])):
                err = [[d["value"] - d["low"]], [d["high"] - d["value"]]]
            ax.bar(
                xi,
                d["value"],
                width * 0.92,
                color=palette.color(m),
                yerr=err,
                capsize=2,
                hatch="//" if d["derived"] else None,
                edgecolor="white" if not d["derived"] else "black",
                linewidth=0.5,
            )
            top = d["high"] if not math.isnan(d["high"]) else d["value"]
            ax.annotate(
                f"{d['value']:.1f}x",
                (xi, top),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            if not math.isnan(d["bound"]):
                ax.hlines(d["bound"], xi - width * 0.5, xi + width * 0.5, colors="black", linewidth=1.6)
                bound_drawn = True
    ax.axhline(1.0, color=palette.color(teacher_of(rows, models[0]) or ""), linestyle="--", linewidth=1)
    ax.set_xticks(x, [f"{s}\nbatch {b}" for s, b in groups])
    ax.set_ylabel("speedup over teacher (x, ratio of median latencies)")
    ax.set_ylim(0, None)
    handles: list[Any] = [Patch(color=palette.color(m), label=m) for m in models]
    handles.append(
        Line2D(
            [],
            [],
            color=palette.color(teacher_of(rows, models[0]) or ""),
            linestyle="--",
            label="teacher (1.0x)",
        )
    )
    if bound_drawn:
        handles.append(Line2D([], [], color="black", linewidth=1.6, label="FLOP bound"))
    if any(data[(m, g)]["derived"] for m in models for g in groups):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="not interleaved"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", frameon=False)
    top = max(
        max(
            d["value"],
            d["high"] if not math.isnan(d["high"]) else 0,
            d["bound"] if not math.isnan(d["bound"]) else 0,
        )
        for d in data.values()
        if not math.isnan(d["value"])
    )
    ax.set_ylim(0, top * 1.25)
    _suptitle(fig, "Speedup over the teacher", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (b) accuracy vs throughput


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both throughput (x) and accuracy (y), by increasing x."""
    idx = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in idx:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Accuracy (95% CI) against throughput: one point per model and scenario at its best batch size."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS)]
    pts = []
    for (m, s), sub in ok.groupby(["model", "scenario"], sort=False):
        thr = sub["throughput_per_s"].map(num)
        acc, lo, hi = model_accuracy(rows, m)
        if thr.isna().all() or math.isnan(acc):
            continue
        best = sub.loc[thr.idxmax()]
        pts.append(
            {
                "model": m,
                "scenario": s,
                "thr": num(best["throughput_per_s"]),
                "batch": int(best["batch_size"]),
                "acc": 100 * acc,
                "lo": 100 * lo,
                "hi": 100 * hi,
            }
        )
    if not pts:
        return "no rows with both accuracy and throughput"
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for p in pts:
        err = None
        if not (math.isnan(p["lo"]) or math.isnan(p["hi"])):
            err = [[p["acc"] - p["lo"]], [p["hi"] - p["acc"]]]
        ax.errorbar(
            p["thr"],
            p["acc"],
            yerr=err,
            fmt=SCENARIO_MARKERS.get(p["scenario"], "o"),
            color=palette.color(p["model"]),
            markersize=7,
            capsize=2,
            markeredgecolor="black",
            markeredgewidth=0.5,
        )
    front = pareto_front([(p["thr"], p["acc"]) for p in pts])
    fx = [pts[i]["thr"] for i in front]
    fy = [pts[i]["acc"] for i in front]
    ax.step(fx, fy, where="post", color="black", linestyle=":", linewidth=1.2, zorder=0)
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("throughput (items/s, log scale; best batch size per point)")
    ax.set_ylabel(
        f"accuracy (%, 95% CI; {rows['accuracy_metric'].dropna().iloc[0] if rows['accuracy_metric'].notna().any() else 'metric n/a'})"
    )
    models = palette.order({p["model"] for p in pts})
    handles: list[Any] = [
        Line2D([], [], marker="o", linestyle="", color=palette.color(m), label=m) for m in models
    ]
    handles += [
        Line2D([], [], marker=SCENARIO_MARKERS[s], linestyle="", color="grey", label=s)
        for s in SCENARIOS
        if any(p["scenario"] == s for p in pts)
    ]
    handles.append(
        Line2D(
            [], [], color="black", linestyle=":", marker="o", markerfacecolor="none", label="Pareto frontier"
        )
    )
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _suptitle(fig, "Accuracy against throughput", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (c) latency distributions


def plot_latency(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Box plots of the raw per-call latencies per (scenario, batch size, model): box = IQR, line = p50,
    whiskers 1.5 IQR, a black tick at p99."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS)]
    have = [(r, raw.get(row_key(r))) for _, r in ok.iterrows()]
    have = [(r, s) for r, s in have if s]
    if not have:
        return "no raw latency samples in results.jsonl"
    scen = [s for s in SCENARIOS if any(r["scenario"] == s for r, _ in have)]
    batches = sorted({int(r["batch_size"]) for r, _ in have})
    models = palette.order({r["model"] for r, _ in have})
    fig, axes = plt.subplots(1, len(scen), figsize=(5.2 * len(scen), 4.2), squeeze=False)
    width = 0.8 / len(models)
    for ax, s in zip(axes[0], scen, strict=True):
        for i, m in enumerate(models):
            for j, b in enumerate(batches):
                sel = [
                    smp
                    for r, smp in have
                    if r["scenario"] == s and r["model"] == m and int(r["batch_size"]) == b
                ]
                if not sel:
                    continue
                xi = j - 0.4 + width * (i + 0.5)
                bp = ax.boxplot(
                    [sel[0]],
                    positions=[xi],
                    widths=width * 0.85,
                    patch_artist=True,
                    flierprops={"markersize": 2, "markeredgecolor": palette.color(m)},
                    medianprops={"color": "black", "linewidth": 1.2},
                    manage_ticks=False,
                )
                for box in bp["boxes"]:
                    box.set_facecolor(palette.color(m))
                    box.set_edgecolor("black")
                    box.set_linewidth(0.5)
                ax.plot([xi], [np.percentile(sel[0], 99)], marker="_", color="black", markersize=9, mew=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(s)
        ax.set_ylabel("latency per call (ms, log scale)")
    handles: list[Any] = [Patch(color=palette.color(m), label=m) for m in models]
    handles += [
        Line2D([], [], color="black", linewidth=1.2, label="p50 (box: IQR)"),
        Line2D([], [], color="black", marker="_", linestyle="", markersize=9, mew=2, label="p99"),
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", frameon=False)
    _suptitle(fig, "Latency distribution per call", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (d) memory


def plot_memory(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Grouped bars of peak memory per batch size and model, one panel per scenario."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS) & ok["peak_mem_mb"].map(lambda v: not is_missing(v))]
    if ok.empty:
        return "no peak memory measured"
    device = str(rows["device"].iloc[0])
    what = (
        "CUDA max_memory_allocated"
        if device.startswith("cuda")
        else "peak live tensors: weights used + activations"
    )
    scen = [s for s in SCENARIOS if (ok["scenario"] == s).any()]
    batches = sorted({int(b) for b in ok["batch_size"]})
    models = palette.order(set(ok["model"]))
    fig, axes = plt.subplots(1, len(scen), figsize=(5.2 * len(scen), 4.0), squeeze=False, sharey=True)
    width = 0.8 / len(models)
    for ax, s in zip(axes[0], scen, strict=True):
        for i, m in enumerate(models):
            for j, b in enumerate(batches):
                sel = ok[(ok["scenario"] == s) & (ok["model"] == m) & (ok["batch_size"] == b)]
                if sel.empty:
                    continue
                ax.bar(
                    j - 0.4 + width * (i + 0.5),
                    num(sel["peak_mem_mb"].iloc[0]),
                    width * 0.92,
                    color=palette.color(m),
                )
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(f"{s}\n({what})", fontsize=10)
        ax.set_yscale("log")  # tiny and paper-size models differ by 100x
        ax.set_ylabel("peak memory (MB, log)")
    axes[0][0].legend(
        handles=[Patch(color=palette.color(m), label=m) for m in models],
        fontsize=8,
        loc="upper left",
        frameon=False,
    )
    _suptitle(fig, "Peak memory", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (e) gallery scaling


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
        ],
    )


def plot_gallery(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Left: latency of scoring one text against the gallery, log-log, per model. Right: the cache's break-even
    query count per gallery size (n/a points, where the teacher was not measured, are left out)."""
    ok = _ok(rows)
    g = ok[ok["scenario"] == "gallery"]
    if g.empty:
        return "no gallery rows"
    be = break_even(rows)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for m in palette.order(set(g["model"])):
        sub = g[g["model"] == m].assign(_n=lambda d: d["gallery_size"].map(num)).sort_values("_n")
        ax.plot(
            sub["_n"],
            sub["latency_p50_ms"].map(num),
            marker="o",
            color=palette.color(m),
            linestyle="--" if VARIANT_SEP in m else "-",
            label=m,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (images scored per text query, log)")
    ax.set_ylabel("latency per query, p50 (ms, log)")
    ax.set_title("query latency (student: cached image features)")
    ax.legend(fontsize=8, frameon=False)
    finite = be[np.isfinite(be["break_even_queries"])] if not be.empty else be
    if finite.empty:
        ax2.text(
            0.5,
            0.5,
            "break-even n/a\n(no teacher gallery rows or no cache build time)",
            ha="center",
            va="center",
            transform=ax2.transAxes,
        )
        ax2.set_axis_off()
    else:
        for m in palette.order(set(finite["model"])):
            sub = finite[finite["model"] == m].sort_values("gallery_size")
            ax2.plot(
                sub["gallery_size"], sub["break_even_queries"], marker="s", color=palette.color(m), label=m
            )
            for _, r in sub.iterrows():
                ax2.annotate(
                    f"{r['break_even_queries']:.3g}",
                    (r["gallery_size"], r["break_even_queries"]),
                    xytext=(0, 6),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ymax = float(finite["break_even_queries"].max())
        ax2.set_ylim(0.7, max(10.0, ymax * 3))
        ax2.set_xlabel("gallery size (images, log)")
        ax2.set_ylabel("break-even queries (count, log)")
        ax2.set_title("queries after which cache build + student < teacher")
        missing = be[~np.isfinite(be["break_even_queries"])]
        if not missing.empty:
            sizes = ", ".join(str(int(n)) for n in sorted(set(missing["gallery_size"])))
            ax2.text(
                0.02,
                0.03,
                f"n/a at gallery size {sizes}\n(teacher not measured)",
                transform=ax2.transAxes,
                va="bottom",
                fontsize=8,
                color="dimgray",
            )
        ax2.legend(fontsize=8, frameon=False, loc="upper right")
    _suptitle(fig, "Gallery scaling", title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- (f) stages


def plot_stages(
    rows: pd.DataFrame, raw: dict[RowKey, list[float]], palette: Palette, title: str
) -> PlotResult:
    """Stacked bars of per-stage time of one call, per model and scenario, one panel per batch size:
    image tower, text tower, fusion + head for students; the joint stack for the teacher."""
    ok = _ok(rows)
    ok = ok[ok["scenario"].isin(SCENARIOS) & ok["stage_ms"].map(lambda v: isinstance(v, dict) and bool(v))]
    if ok.empty:
        return "no per-stage times (stage_ms) in the rows"
    batches = sorted({int(b) for b in ok["batch_size"]})
    models = palette.order(set(ok["model"]))
    bars = [(m, s) for m in models for s in SCENARIOS if ((ok["model"] == m) & (ok["scenario"] == s)).any()]
    stages = [k for k in STAGE_COLORS if any(k in d for d in ok["stage_ms"])]
    stages += sorted({k for d in ok["stage_ms"] for k in d} - set(stages))
    fig, axes = plt.subplots(
        1,
        len(batches),
        figsize=(max(7.0, 3.3 * len(batches) + 1.5), 1.2 + 0.32 * len(bars)),
        squeeze=False,
        sharey=True,
    )
    extra = plt.get_cmap("Pastel2")
    ypos = np.arange(len(bars))[::-1]
    for ax, b in zip(axes[0], batches, strict=True):
        for y, (m, s) in zip(ypos, bars, strict=True):
            sel = ok[(ok["model"] == m) & (ok["scenario"] == s) & (ok["batch_size"] == b)]
            if sel.empty:
                continue
            d = sel["stage_ms"].iloc[0]
            left = 0.0
            for k, st in enumerate(stages):
                v = float(d.get(st) or 0.0)
                if v <= 0:
                    continue
                ax.barh(
                    y,
                    v,
                    0.72,
                    left=left,
                    color=STAGE_COLORS.get(st, extra(k % 8)),
                    edgecolor=palette.color(m),
                    linewidth=1.6,
                )
                left += v
        ax.set_yticks(ypos, [f"{m} · {s}" for m, s in bars])
        ax.set_title(f"batch {b}")
        ax.set_xlabel("time per call (ms)")
        ax.grid(axis="y", visible=False)
    label_model = {f"{m} · {s}": m for m, s in bars}
    for lbl in axes[0][0].get_yticklabels():
        if lbl.get_text() in label_model:
            lbl.set_color(palette.color(label_model[lbl.get_text()]))
    handles = [
        Patch(
            facecolor=STAGE_COLORS.get(st, extra(k % 8)),
            edgecolor="black",
            linewidth=0.5,
            label=STAGE_LABELS.get(st, st),
        )
        for k, st in enumerate(stages)
    ]
    fig.legend(
        handles=handles,
        fontsize=8,
        loc="lower center",
        frameon=False,
        ncol=len(handles),
        bbox_to_anchor=(0.5, 0.0),
    )
    _suptitle(fig, "Time per stage (bar outline and label colour = model)", title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


PLOTS: dict[str, tuple[str, Callable[..., PlotResult]]] = {
    "speedup": ("Speedup over the teacher by scenario and batch size (FLOP bound marked)", plot_speedup),
    "pareto": ("Accuracy against throughput (Pareto frontier)", plot_pareto),
    "latency": ("Latency distributions (p50, p99)", plot_latency),
    "memory": ("Peak memory", plot_memory),
    "gallery": ("Gallery scaling and cache break-even", plot_gallery),
    "stages": ("Per-stage time split", plot_stages),
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
