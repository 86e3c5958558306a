"""The report's serving section and the gate's serving check, from the LoadGen scenarios' rows
(single-stream, server, offline: dde_bench/bench/scenarios/serving.py).

* :func:`max_qps_table` -- per model and form, the highest Server QPS LoadGen judged VALID at the latency bound,
  its ratio to the teacher's beside the FLOP ratio, and whether the cached student reaches the goal (at least
  :data:`GOAL_SHARE` of the FLOP ratio times the teacher's QPS).
* :func:`scenario_table` -- every LoadGen row: verdict, QPS, LoadGen's latency percentiles, accuracy mode.
* :func:`plot_serving` -- latency percentiles against offered QPS (the Server search's trials), one panel per model
  size, for the teacher, the online student and the cached student.
* :func:`gate_serving` -- ``dde-bench gate RUN --min-serving-ratio R``: each cached student's max Server QPS over
  its teacher's must be at least R.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from dde_bench.bench.schema import plain_name  # noqa: E402
from dde_bench.errors import UserError  # noqa: E402
from dde_bench.report.style import NA, Palette, fixed, is_missing, pct, sig  # noqa: E402
from dde_bench.report.tables import model_kinds, num, teacher_of  # noqa: E402

SERVING_SCENARIOS = ("single-stream", "server", "offline")
GOAL_SHARE = 0.8  # the goal: cached student's max QPS >= 80% of FLOP ratio x teacher's
PERCENTILES = (("p50_ms", "p50", ":"), ("p90_ms", "p90", "--"), ("p99_ms", "p99", "-"))


def serving_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The LoadGen scenarios' rows that were measured."""
    if "serving_form" not in rows.columns:
        return rows.iloc[0:0]
    sel = rows[rows["scenario"].isin(SERVING_SCENARIOS)]
    return sel[sel["status"].map(lambda s: is_missing(s) or s == "ok")]


def _trials(v: Any) -> list[dict]:
    """A row's ``qps_trials`` (a list from results.jsonl, JSON text from results.csv)."""
    if isinstance(v, str):
        v = json.loads(v)
    return list(v) if isinstance(v, list) else []


def _role(rows: pd.DataFrame, model: str) -> str:
    """teacher | online student | cached student (how the serving section names a row)."""
    kind = model_kinds(rows).get(model)
    if kind == "teacher":
        return "teacher"
    form = rows.loc[rows["model"] == model, "serving_form"]
    return f"{form.iloc[0] if len(form) else 'online'} student"


def _teacher_row(rows: pd.DataFrame, model: str, scenario: str) -> pd.Series | None:
    teacher = teacher_of(rows, plain_name(model))
    if teacher is None or teacher == model:
        return None
    t = rows[(rows["model"] == teacher) & (rows["scenario"] == scenario)]
    return t.iloc[0] if len(t) else None


def max_qps_table(rows: pd.DataFrame, palette: Palette) -> pd.DataFrame:
    """One line per Server row: max QPS at the bound, the ratio to the teacher's beside the FLOP ratio."""
    srv = serving_rows(rows)
    srv = srv[srv["scenario"] == "server"]
    recs = []
    for m in palette.order(set(srv["model"])):
        r = srv[srv["model"] == m].iloc[0]
        t = _teacher_row(srv, m, "server")
        mine = num(r.get("max_qps_at_bound"))
        theirs = num(t.get("max_qps_at_bound")) if t is not None else math.nan
        ratio = mine / theirs if mine > 0 and theirs > 0 else math.nan
        flop = num(r.get("serving_flop_ratio"))
        role = _role(srv, m)
        if role == "teacher":
            vs = "1.0x (reference)"
        elif t is not None and math.isnan(theirs) and mine > 0:
            vs = "inf (teacher: not met)"
        else:
            vs = fixed(ratio, 2, "x")
        pctl = num(r.get("latency_percentile"))
        at = {"p50_ms": "serving_p50_ms", "p90_ms": "serving_p90_ms"}.get(_bound_key(pctl), "serving_p99_ms")
        goal = NA
        if role == "cached student" and vs.startswith("inf"):
            goal = "reached (the teacher meets the bound at no QPS)"
        elif role == "cached student" and not math.isnan(ratio) and not math.isnan(flop):
            need = GOAL_SHARE * flop
            goal = f"{'reached' if ratio >= need else 'not reached'} ({ratio:.2f}x vs {need:.2f}x)"
        trials = _trials(r.get("qps_trials"))
        recs.append(
            {
                "model": m,
                "form": role,
                "size": NA if is_missing(r.get("size")) else str(r["size"]),
                "bound": f"p{100 * pctl:g} <= {sig(r.get('latency_bound_ms'))} ms",
                "max QPS at bound": "not met" if math.isnan(mine) else sig(mine),
                "its bounded latency ms": sig(r.get(at)) if not math.isnan(mine) else NA,
                "vs teacher": vs,
                "FLOP ratio": NA if role == "teacher" else fixed(flop, 2, "x"),
                f"goal (>= {GOAL_SHARE:g} x FLOP ratio)": goal,
                "search": f"{r.get('qps_search')}, {len(trials)} tests, {sig(r.get('qps_search_s'))} s",
            }
        )
    return pd.DataFrame.from_records(recs)


def scenario_table(rows: pd.DataFrame, palette: Palette) -> pd.DataFrame:
    """Every LoadGen row: verdict and reason, QPS, LoadGen's latency percentiles, the batcher, accuracy mode."""
    sel = serving_rows(rows)
    recs = []
    for scenario in SERVING_SCENARIOS:
        sub = sel[sel["scenario"] == scenario]
        for m in palette.order(set(sub["model"])):
            r = sub[sub["model"] == m].iloc[0]
            acc, match = r.get("serving_accuracy"), r.get("serving_accuracy_matches")
            same = NA if is_missing(match) else ("= harness" if bool(match) else "differs from the harness")
            recs.append(
                {
                    "scenario": scenario,
                    "model": m,
                    "LoadGen": NA if is_missing(r.get("loadgen_result")) else str(r["loadgen_result"]),
                    "offered QPS": sig(r.get("target_qps")),
                    "achieved QPS": sig(r.get("achieved_qps")),
                    "p50 ms": sig(r.get("serving_p50_ms")),
                    "p90 ms": sig(r.get("serving_p90_ms")),
                    "p99 ms": sig(r.get("serving_p99_ms")),
                    "p99.9 ms": sig(r.get("serving_p999_ms")),
                    "batch (max / mean)": f"{sig(r.get('batcher_max_batch'))} / {sig(r.get('batcher_mean_batch'))}",
                    "accuracy mode": NA if is_missing(acc) else f"{pct(acc)} ({same})",
                    "reason if INVALID": ""
                    if is_missing(r.get("loadgen_reason"))
                    else str(r["loadgen_reason"]),
                }
            )
    return pd.DataFrame.from_records(recs)


def plot_serving(rows: pd.DataFrame, palette: Palette, title: str) -> Figure | str:
    """Latency percentiles (LoadGen's p50, p90, p99) against the offered Server QPS of every test of the search, per
    model form; one panel per model size; markers on the bounded percentile, filled = VALID, hollow = INVALID; the
    bound as a grey line."""
    srv = serving_rows(rows)
    srv = srv[(srv["scenario"] == "server") & srv["qps_trials"].map(lambda v: bool(_trials(v)))]
    if srv.empty:
        return "no Server rows with LoadGen tests"
    sizes = sorted({str(s) for s in srv["size"]}, key=lambda s: (s != "tiny", s))
    fig, axes = plt.subplots(1, len(sizes), figsize=(8.0 * len(sizes), 4.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        sub = srv[srv["size"].astype(str) == size]
        for m in palette.order(set(sub["model"])):
            r = sub[sub["model"] == m].iloc[0]
            trials = sorted(_trials(r["qps_trials"]), key=lambda t: t["target_qps"])
            x = [t["target_qps"] for t in trials]
            for key, _, style in PERCENTILES:
                ax.plot(x, [t[key] for t in trials], style, color=palette.color(m), linewidth=1.2)
            at = _bound_key(num(r.get("latency_percentile")))
            for t in trials:
                valid = t["result"] == "VALID"
                ax.plot(
                    t["target_qps"],
                    t[at],
                    "o",
                    color=palette.color(m),
                    markerfacecolor=palette.color(m) if valid else "white",
                    markersize=6,
                )
            best = num(r.get("max_qps_at_bound"))
            if not math.isnan(best):
                ax.axvline(best, color=palette.color(m), linewidth=0.8, alpha=0.6)
        bound = num(sub["latency_bound_ms"].iloc[0])
        pctl = num(sub["latency_percentile"].iloc[0])
        ax.axhline(bound, color="grey", linewidth=1.5, alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 ticks in plain numbers
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered load (queries/s, Poisson arrivals, log)")
        ax.set_ylabel("latency per query (ms, LoadGen, log)")
        ax.set_title(f"{size} models (vertical line: max QPS at the bound)")
        handles: list[Any] = [
            Line2D([], [], color=palette.color(m), linewidth=2, label=f"{m} ({_role(sub, m)})")
            for m in palette.order(set(sub["model"]))
        ]
        handles += [Line2D([], [], color="black", linestyle=st, label=lab) for _, lab, st in PERCENTILES]
        handles += [
            Line2D(
                [],
                [],
                color="grey",
                linewidth=1.5,
                alpha=0.7,
                label=f"bound: p{100 * pctl:g} <= {bound:g} ms",
            ),
            Line2D([], [], marker="o", linestyle="", color="black", label="VALID (LoadGen)"),
            Line2D([], [], marker="o", linestyle="", color="black", markerfacecolor="white", label="INVALID"),
        ]
        ax.legend(handles=handles, fontsize=7.5, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"Serving under load: latency against offered QPS - {title}", fontsize=11)
    fig.tight_layout()
    return fig


def _bound_key(percentile: float) -> str:
    """The trial key of the percentile a Server bound applies to (p99 unless it is p50 or p90)."""
    return {0.5: "p50_ms", 0.9: "p90_ms"}.get(round(percentile, 3), "p99_ms")


# ---------------------------------------------------------------------------------------------- gate
def gate_serving(run_dir: str | Path, min_ratio: float, models: list[str] | None = None):
    """Each cached student's max Server QPS at the bound over its teacher's must be at least ``min_ratio``
    (``models``: only these students). A student that meets the bound at no QPS fails; a teacher that meets it at
    none, against a student that does, passes. Raises UserError when the run has no such rows."""
    from dde_bench.report.compare import GateCheck, GateResult
    from dde_bench.report.load import load_run

    rows = load_run(run_dir).rows
    srv = serving_rows(rows) if not rows.empty else rows
    kinds = model_kinds(rows) if not rows.empty else {}
    sel = srv[(srv["scenario"] == "server") & (srv["serving_form"] == "cached")] if len(srv) else srv
    sel = sel[sel["model"].map(lambda m: kinds.get(m) == "student")] if len(sel) else sel
    if models:
        unknown = set(models) - {plain_name(m) for m in sel["model"]}
        if unknown:
            raise UserError(f"{run_dir}: no cached server rows for student(s) {', '.join(sorted(unknown))}")
        sel = sel[sel["model"].map(lambda m: plain_name(m) in models)]
    if sel.empty:
        raise UserError(
            f"{run_dir}: no server rows of cached students: nothing to gate (run with --scenarios server)"
        )
    checks = []
    for _, r in sel.iterrows():
        t = _teacher_row(srv, r["model"], "server")
        mine = num(r["max_qps_at_bound"])
        theirs = num(t["max_qps_at_bound"]) if t is not None else math.nan

        def check(verdict: str, value: float, detail: str, r=r) -> GateCheck:
            b = None if is_missing(r["batch_size"]) else int(r["batch_size"])
            return GateCheck(
                r["model"], str(r["suite"]), "server", b, "serving ratio", verdict, value, min_ratio, detail
            )

        if t is None:
            checks.append(check("fail", math.nan, "no teacher server row to compare with"))
        elif math.isnan(mine):
            checks.append(check("fail", math.nan, "the cached student meets the latency bound at no QPS"))
        elif math.isnan(theirs):
            checks.append(check("pass", math.inf, f"{sig(mine)} QPS; the teacher meets the bound at no QPS"))
        else:
            ratio = mine / theirs
            ok = ratio >= min_ratio
            checks.append(
                check(
                    "pass" if ok else "fail",
                    ratio,
                    f"max QPS at the bound {sig(mine)} vs teacher {sig(theirs)}: {ratio:.2f}x "
                    f"{'>=' if ok else '<'} {min_ratio:g}x",
                )
            )
    return GateResult(Path(run_dir), checks)


def has_rows(run_dir: str | Path, scenario: str) -> bool:
    """Whether the run holds rows of ``scenario``."""
    from dde_bench.report.load import load_run

    rows = load_run(run_dir).rows
    return bool(len(rows)) and bool((rows["scenario"] == scenario).any())
