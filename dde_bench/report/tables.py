"""Tables and headline sentences built from result rows: every figure comes from the rows, missing ones read n/a.

All functions take the rows of one or more runs as a DataFrame (schema.COLUMNS plus a ``run`` column naming
the run folder) and return DataFrames of formatted strings, or plain sentences. Intervals and tail percentiles
are printed only where the row's sample supports them (``bench.stats.supports``; style.SAMPLE_RULE says it in
words). The column ``speedup_flop_bound`` is shown as the FLOP ratio (schema.FLOP_RATIO_LABEL).
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
import pandas as pd

from dde_bench.bench.schema import FLOP_RATIO_LABEL, MATCH_KEYS, plain_name
from dde_bench.bench.stats import supports
from dde_bench.report.load import Run
from dde_bench.report.style import (
    NA,
    Palette,
    fixed,
    is_missing,
    pct,
    pct_ci,
    sample_note,
    sig,
    speedup_ci,
    stat_cell,
)

GROUP_KEYS = ("suite", "device", "dtype")  # one report section per group: a suite measured on a device
DERIVED_MARK = "†"
DERIVED_NOTE = (
    f"{DERIVED_MARK} not measured interleaved with the teacher: ratio of the medians of two separately measured "
    "rows (less robust to machine noise)."
)


def num(v: Any) -> float:
    """A cell as float, NaN when missing or not a number."""
    if is_missing(v):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def model_accuracy(rows: pd.DataFrame, model: str) -> tuple[float, float, float]:
    """A model's accuracy and 95% interval: the first row of that model that carries one (NaNs if none)."""
    sub = rows[(rows["model"] == model) & rows["accuracy"].map(lambda v: not is_missing(v))]
    if sub.empty:
        return (float("nan"),) * 3
    r = sub.iloc[0]
    return num(r["accuracy"]), num(r["accuracy_ci_low"]), num(r["accuracy_ci_high"])


def model_kinds(rows: pd.DataFrame) -> dict[str, str | None]:
    """Model name -> model kind, from the rows."""
    out: dict[str, str | None] = {}
    for m, k in zip(rows["model"], rows["model_kind"], strict=True):
        if m not in out or out[m] is None:
            out[m] = None if is_missing(k) else str(k)
    return out


def model_sizes(rows: pd.DataFrame) -> dict[str, str]:
    """Model name -> model size (tiny, b32, ...; '' where not recorded)."""
    out: dict[str, str] = {}
    for m, sz in zip(rows["model"], rows["size"], strict=True):
        if not out.get(m):
            out[m] = "" if is_missing(sz) else str(sz)
    return out


def size_order(sizes: set[str] | list[str]) -> list[str]:
    """Model sizes in report order: tiny first, then the rest by name (b32), unknown ('') last."""
    return sorted(set(sizes), key=lambda z: (z == "", z != "tiny", z))


def teachers(rows: pd.DataFrame) -> list[str]:
    """The teacher models in the rows."""
    return sorted({m for m, k in model_kinds(rows).items() if k == "teacher"})


def teacher_of(rows: pd.DataFrame, model: str) -> str | None:
    """The teacher a model is compared with: its rows' teacher_model, else the only teacher of the rows."""
    tm = rows.loc[rows["model"] == model, "teacher_model"]
    tm = [t for t in tm if not is_missing(t)]
    if tm:
        return str(tm[0])
    ts = teachers(rows)
    return ts[0] if len(ts) == 1 else None


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"].map(lambda s: is_missing(s) or s == "ok")]


def speedup_for(rows: pd.DataFrame, model: str, scenario: str, batch: int) -> dict[str, Any]:
    """Speedup of `model` over its teacher at (scenario, batch): measured (interleaved) if the row has it,
    else derived from the two rows' medians and marked derived; NaN when neither is possible."""
    out = {
        "value": float("nan"),
        "low": float("nan"),
        "high": float("nan"),
        "bound": float("nan"),
        "derived": False,
        "rounds": float("nan"),  # interleaved rounds behind the interval (n_samples of the row)
    }
    ok = _ok(rows)
    sel = ok[(ok["model"] == model) & (ok["scenario"] == scenario) & (ok["batch_size"] == batch)]
    if sel.empty:
        return out
    r = sel.iloc[0]
    out["bound"] = num(r["speedup_flop_bound"])
    out["rounds"] = num(r["n_samples"])
    if not is_missing(r["speedup_vs_teacher"]):
        out.update(
            value=num(r["speedup_vs_teacher"]), low=num(r["speedup_ci_low"]), high=num(r["speedup_ci_high"])
        )
        return out
    teacher = teacher_of(rows, model)
    if teacher == model:
        out.update(value=1.0)
        return out
    t = ok[(ok["model"] == teacher) & (ok["scenario"] == scenario) & (ok["batch_size"] == batch)]
    if not t.empty:
        tp, mp = num(t.iloc[0]["latency_p50_ms"]), num(r["latency_p50_ms"])
        if tp > 0 and mp > 0:
            out.update(value=tp / mp, derived=True)
    return out


def _fmt_speedup(s: dict[str, Any], with_bound: bool = True) -> str:
    if np.isnan(s["value"]):
        text = NA
    elif s["derived"]:
        text = fixed(s["value"], 1, "x") + DERIVED_MARK
    else:
        text = speedup_ci(s["value"], s["low"], s["high"], s["rounds"])
    if with_bound:
        text += f" ({fixed(s['bound'], 1, 'x')})" if not np.isnan(s["bound"]) else " (n/a)"
    return text


# ---------------------------------------------------------------- headline


def headline(rows: pd.DataFrame, palette: Palette) -> list[str]:
    """Plain-word answers for one group (suite, device, dtype), one bullet per student: accuracy given up,
    speedup cached and online next to the FLOP ratio, memory against the teacher in both scenarios."""
    out: list[str] = []
    kinds = model_kinds(rows)
    measured = _measured_models(rows)
    students = [m for m in palette.order(list(kinds)) if kinds[m] == "student" and m in measured]
    if not students:
        return ["No student rows in this run: nothing to compare with the teacher."]
    for s in students:
        teacher = teacher_of(rows, s)
        if teacher is None:
            out.append(f"**{s}**: no teacher rows to compare with.")
            continue
        ta, tlo, thi = model_accuracy(rows, teacher)
        sa, slo, shi = model_accuracy(rows, s)
        if np.isnan(ta) or np.isnan(sa):
            acc = f"accuracy n/a (teacher {pct(ta)}, student {pct(sa)}: random weights measure speed only)"
        else:
            gap = 100 * (ta - sa)
            word = "gives up" if gap > 0 else "gains"
            acc = (
                f"{word} {abs(gap):.1f} accuracy points against {teacher} "
                f"({pct_ci(sa, slo, shi)} vs {pct_ci(ta, tlo, thi)})"
            )
        parts = [f"**{s}** {acc}"]
        for scenario, words in (("cached", "with cached image features"), ("online", "online (no cache)")):
            parts.append(_speedup_phrase(rows, s, scenario, words))
        out.append("; ".join(parts) + "; " + _memory_sentence(rows, s, teacher) + ".")
    return out


def _speedup_phrase(rows: pd.DataFrame, model: str, scenario: str, words: str) -> str:
    """'speedup with cached image features 1.9x (batch 1) to 5.1x (batch 32), FLOP ratio 6.4x'."""
    sub = rows[(rows["model"] == model) & (rows["scenario"] == scenario)]
    batches = sorted({int(b) for b in sub["batch_size"] if not is_missing(b)})
    vals = [(b, speedup_for(rows, model, scenario, b)) for b in batches]
    vals = [(b, v) for b, v in vals if not np.isnan(v["value"])]
    if not vals:
        return f"speedup {words} n/a"

    def one(b: int, v: dict[str, Any]) -> str:
        few = "" if supports("interval", v["rounds"]) else f", {sample_note(v['rounds'], 'rounds')}"
        return f"{fixed(v['value'], 1, 'x')}{DERIVED_MARK if v['derived'] else ''} (batch {b}{few})"

    lo = min(vals, key=lambda x: x[1]["value"])
    hi = max(vals, key=lambda x: x[1]["value"])
    text = f"speedup {words} {one(*lo)}" + (f" to {one(*hi)}" if lo[0] != hi[0] else "")
    bound = hi[1]["bound"]
    if not np.isnan(bound):
        text += f", {FLOP_RATIO_LABEL} {fixed(bound, 1, 'x')}"
        if hi[1]["value"] > bound:
            text += " (measured above it: see 'Speedups above the FLOP ratio')"
    return text


def _memory_sentence(rows: pd.DataFrame, student: str, teacher: str) -> str:
    """Memory of the student's call against the teacher's in each scenario, at their largest common batch size:
    lighter or heavier, whichever it is (online the student holds two towers' weights)."""
    ok = _ok(rows)
    t = ok[(ok["model"] == teacher) & (ok["scenario"].isin(["online", "cached"]))]
    t = t.loc[
        t["peak_mem_mb"].map(lambda v: not is_missing(v)).astype(bool)
    ]  # .loc: an empty mask stays a mask
    parts = []
    for scenario in ("cached", "online"):
        s = ok[(ok["model"] == student) & (ok["scenario"] == scenario)]
        s = s.loc[s["peak_mem_mb"].map(lambda v: not is_missing(v)).astype(bool)]
        common = sorted(set(s["batch_size"]) & set(t["batch_size"]))
        if not common:
            continue
        b = common[-1]
        sm = num(s.loc[s["batch_size"] == b, "peak_mem_mb"].iloc[0])
        tm = num(t.loc[t["batch_size"] == b, "peak_mem_mb"].iloc[0])  # the teacher's call is the same in both
        if sm <= 0 or tm <= 0:
            continue
        how = f"{tm / sm:.1f}x lighter" if sm <= tm else f"{sm / tm:.1f}x heavier"
        parts.append(f"{scenario} {sig(sm)} MB vs {sig(tm)} MB for the teacher, {how} (batch {b})")
    if not parts:
        return "peak memory n/a"
    return "peak memory " + "; ".join(parts)


# ---------------------------------------------------------------- tables


def _measured_models(rows: pd.DataFrame) -> set[str]:
    """Models with online or cached rows (gallery-only variants such as '<student>@fusion-cache' have none)."""
    return set(rows.loc[rows["scenario"].isin(["online", "cached"]), "model"])


def model_batch(rows: pd.DataFrame, model: str) -> int | None:
    """The batch size quoted for one model: its largest with online or cached rows (paper-size models are
    often measured at fewer batch sizes than tiny ones)."""
    sel = rows[rows["scenario"].isin(["online", "cached"]) & (rows["model"] == model)]
    bs = [int(b) for b in sel["batch_size"] if not is_missing(b)]
    return max(bs) if bs else None


def paper_table(rows: pd.DataFrame, palette: Palette) -> pd.DataFrame:
    """Per model: accuracy (95% CI) and speedup over the teacher online and cached, each next to its FLOP ratio,
    at the model's largest measured batch size (named in the batch column). The transformers row is a reference
    (kind 'reference'): the same weights as its teacher, run by transformers' own ViltModel."""
    kinds = model_kinds(rows)
    measured = _measured_models(rows)
    recs = []
    for m in palette.order(list(kinds)):
        if m not in measured:
            continue
        b = model_batch(rows, m)
        a, lo, hi = model_accuracy(rows, m)
        kind = "reference" if kinds[m] == "hf-vilt" else (kinds[m] or NA)
        rec = {"model": m, "kind": kind, "accuracy (95% CI)": pct_ci(a, lo, hi), "batch": b or NA}
        for scenario in ("online", "cached"):
            col = f"speedup {scenario} ({FLOP_RATIO_LABEL})"
            if kinds[m] == "teacher":
                rec[col] = "1.0x (reference)"
            elif b is None:
                rec[col] = NA
            elif not ((rows["model"] == m) & (rows["scenario"] == scenario)).any():
                rec[col] = "not run"  # e.g. the transformers reference runs online only
            else:
                rec[col] = _fmt_speedup(speedup_for(rows, m, scenario, b))
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def fastpath_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Each fast-path variant (``MODEL@compiled``, ``MODEL@fusion-cache``, ``MODEL@int8``, ``MODEL@ort``) against
    its plain path, measured interleaved in the same group: medians, ratio with its bootstrap interval, output
    check, the variant's accuracy (int8 is scored itself), compile time."""
    if "speedup_vs_plain" not in rows.columns:
        return pd.DataFrame()
    ok = _ok(rows)
    var = ok[ok["speedup_vs_plain"].map(num).notna()]
    recs = []
    for _, r in var.iterrows():
        # within one suite/device/dtype group a row is (model, scenario, batch); a gallery row's batch is its N
        size = r.get("batch_size")
        same = ok[
            (ok["model"] == plain_name(r["model"]))
            & (ok["scenario"] == r["scenario"])
            & (ok["batch_size"] == size)
        ]
        diff = r.get("max_abs_diff_vs_plain")
        recs.append(
            {
                "variant": r["model"],
                "scenario": r["scenario"],
                "batch / gallery": NA if is_missing(size) else str(int(size)),
                "plain p50 ms": sig(same.iloc[0]["latency_p50_ms"]) if len(same) else NA,
                "variant p50 ms": sig(r.get("latency_p50_ms")),
                "vs plain [95% CI]": speedup_ci(
                    r.get("speedup_vs_plain"),
                    r.get("speedup_vs_plain_ci_low"),
                    r.get("speedup_vs_plain_ci_high"),
                    r.get("n_samples"),
                ),
                "max abs diff": NA if is_missing(diff) else f"{float(diff):.1e}",
                "accuracy": NA if is_missing(r.get("accuracy")) else f"{100 * float(r['accuracy']):.1f}",
                "compile s": sig(r.get("compile_s")),
            }
        )
    df = pd.DataFrame.from_records(recs)
    return df[[c for c in df.columns if not (df[c] == NA).all()]] if len(df) else df


FULL_COLUMNS = {
    "model": "model",
    "scenario": "scenario",
    "batch_size": "batch",
    "gallery_size": "gallery",
    "status": "status",
    "accuracy": "accuracy",
    "latency_p50_ms": "p50 ms",
    "latency_iqr_ms": "IQR ms",
    "latency_p90_ms": "p90 ms",
    "latency_p99_ms": "p99 ms",
    "latency_mean_ms": "mean ms",
    "n_samples": "n",
    "throughput_per_s": "items/s",
    "peak_mem_mb": "peak mem MB",
    "weights_mb": "weights MB",
    "activation_peak_mb": "activations MB",
    "energy_j_per_item": "J/item",
    "speedup_vs_teacher": "speedup [95% CI]",
    "speedup_flop_bound": FLOP_RATIO_LABEL,
    "gemm_peak_share": "% of GEMM peak",
    "cache_build_s": "cache build s",
}
_TAIL_STATS = {"latency_iqr_ms": "iqr", "latency_p90_ms": "p90", "latency_p99_ms": "p99"}


def full_table(rows: pd.DataFrame, palette: Palette) -> pd.DataFrame:
    """Every row, formatted: 3 significant figures for times, memory and throughput, 1 decimal for speedups,
    accuracy in % with 1 decimal. A gallery row's size is in the gallery column (its batch is one text query);
    IQR, p90, p99 and intervals where the sample supports them, else n=K; a row that was not measured (skipped,
    oom, error) shows no accuracy, since none of its numbers were measured."""
    order = {m: i for i, m in enumerate(palette.order(list(set(rows["model"]))))}
    scen = {"online": 0, "cached": 1, "gallery": 2}
    rows = rows.assign(
        _m=rows["model"].map(order),
        _s=rows["scenario"].map(lambda s: scen.get(s, 9)),
        _g=rows["gallery_size"].map(num).fillna(0),
    ).sort_values(["_s", "batch_size", "_g", "_m"], kind="stable")
    recs = []
    for _, r in rows.iterrows():
        rec: dict[str, str] = {}
        measured = is_missing(r.get("status")) or r.get("status") == "ok"
        gallery = not is_missing(r.get("gallery_size"))
        for col, label in FULL_COLUMNS.items():
            v = r.get(col)
            if col in ("model", "scenario", "status"):
                rec[label] = NA if is_missing(v) else str(v)
            elif col == "batch_size" and gallery:
                rec[label] = ""
            elif col in ("batch_size", "gallery_size", "n_samples"):
                rec[label] = (
                    "" if is_missing(v) and col == "gallery_size" else (NA if is_missing(v) else str(int(v)))
                )
            elif col == "accuracy":
                rec[label] = pct(v) if measured else ""
            elif col in _TAIL_STATS:
                rec[label] = stat_cell(v, r.get("n_samples"), _TAIL_STATS[col])
            elif col == "speedup_vs_teacher":
                rec[label] = speedup_ci(
                    v, r.get("speedup_ci_low"), r.get("speedup_ci_high"), r.get("n_samples")
                )
            elif col == "speedup_flop_bound":
                rec[label] = fixed(v, 1, "x")
            elif col == "gemm_peak_share":  # achieved FLOP/s over this device's measured matmul rate
                rec[label] = NA if is_missing(v) else f"{100 * float(v):.0f}"
            else:
                rec[label] = sig(v)
        recs.append(rec)
    df = pd.DataFrame.from_records(recs, columns=list(FULL_COLUMNS.values()))
    # columns nothing in this group measured (energy on CPU, the memory split on GPU rows) are left out
    keep = [c for c in df.columns if c in ("model", "scenario", "status") or not (df[c].isin([NA, ""])).all()]
    return df[keep]


def flop_ratio_table(rows: pd.DataFrame, palette: Palette) -> pd.DataFrame:
    """Rows whose measured speedup is above their FLOP ratio, with the data that says why: the FLOP rate each
    model reached (FLOPs per item x items per second) and each call's working set (weights + activations).

    Speedup / FLOP ratio = the model's FLOP rate / the teacher's: a speedup above the ratio means the model
    executes each counted FLOP faster than the teacher does."""
    ok = _ok(rows)
    recs = []
    for _, r in ok[ok["scenario"].isin(["online", "cached"])].iterrows():
        sp, ratio = num(r["speedup_vs_teacher"]), num(r["speedup_flop_bound"])
        if np.isnan(sp) or np.isnan(ratio) or sp <= ratio:
            continue
        teacher = teacher_of(rows, r["model"])
        t = ok[
            (ok["model"] == teacher)
            & (ok["scenario"] == r["scenario"])
            & (ok["batch_size"] == r["batch_size"])
        ]
        if t.empty:
            continue
        t = t.iloc[0]

        def rate(x: pd.Series) -> float:
            return num(x["flops_per_item"]) * num(x["throughput_per_s"]) / 1e9

        def working_set(x: pd.Series) -> str:
            w, a = num(x.get("weights_mb")), num(x.get("activation_peak_mb"))
            if np.isnan(w) or np.isnan(a):
                return sig(x.get("peak_mem_mb"))
            return f"{sig(w + a)} ({sig(w)} + {sig(a)})"

        recs.append(
            {
                "model": r["model"],
                "scenario": r["scenario"],
                "batch": str(int(r["batch_size"])),
                "speedup": speedup_ci(sp, r["speedup_ci_low"], r["speedup_ci_high"], r["n_samples"]),
                FLOP_RATIO_LABEL: fixed(ratio, 1, "x"),
                "evidence": _above_evidence(r, ratio),
                "GFLOP/s model": sig(rate(r)),
                "GFLOP/s teacher": sig(rate(t)),
                "working set MB model (weights + activations)": working_set(r),
                "working set MB teacher": working_set(t),
            }
        )
    return pd.DataFrame.from_records(recs)


def _above_evidence(r: pd.Series, ratio: float) -> str:
    """How sure 'above the FLOP ratio' is: the whole interval above it, or only the median."""
    if not supports("interval", num(r["n_samples"])) or is_missing(r["speedup_ci_low"]):
        return f"median only ({sample_note(r['n_samples'], 'rounds')}: too few for an interval)"
    if num(r["speedup_ci_low"]) > ratio:
        return "the whole 95% interval is above it"
    return "the median is above it, the 95% interval includes it"


ENV_KEYS = (
    ("device", "device"),
    ("gpu", "GPU"),
    ("driver", "driver"),
    ("cpu", "CPU"),
    ("cpu_features", "CPU features"),
    ("native_bf16", "native bf16"),
    ("threads", "threads"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("python", "python"),
    ("git_commit", "git commit"),
    ("seed", "seed"),
    ("schema_version", "schema version"),
)


def env_table(runs: list[Run]) -> pd.DataFrame:
    """The environment of each run side by side: one column per run, plus the dtypes its rows were measured in.
    The seed is a setting (run.json ``settings.seed``); the rest comes from ``environment``."""
    data: dict[str, list[str]] = {
        "": [label for _, label in ENV_KEYS] + ["dtypes", "rows", "GEMM peak", "time per phase"]
    }
    for i, run in enumerate(runs):
        env = dict(run.environment)
        settings = run.info.get("settings")
        if isinstance(settings, dict) and "seed" in settings:
            env["seed"] = settings["seed"]
        vals = [_env_value(env.get(k)) for k, _ in ENV_KEYS]
        dtypes = sorted({str(d) for d in run.rows["dtype"] if not is_missing(d)})
        vals += [", ".join(dtypes) or NA, str(len(run.rows)), _gemm_peaks(settings), _phases(run)]
        data[run_label(runs, i)] = vals
    return pd.DataFrame(data)


def _gemm_peaks(settings: Any) -> str:
    """This device's measured matmul rate per dtype (what ``% of GEMM peak`` divides by)."""
    peaks = settings.get("gemm_peak") if isinstance(settings, dict) else None
    if not isinstance(peaks, dict) or not peaks:
        return NA
    parts = []
    for dtype, p in peaks.items():
        if isinstance(p, dict) and isinstance(p.get("flops_per_s"), int | float):
            n = (p.get("shape") or ["?"])[0]
            parts.append(f"{dtype} {p['flops_per_s'] / 1e9:.3g} GFLOP/s ({n}^3)")
    return ", ".join(parts) or NA


def _phases(run: Run) -> str:
    """Where the run's wall time went (RUN/phases.json), or n/a for runs without it."""
    if run.path is None or not (run.path / "phases.json").is_file():
        return NA
    try:
        phases = json.loads((run.path / "phases.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return NA
    if not isinstance(phases, dict):
        return NA
    total = sum(v for v in phases.values() if isinstance(v, int | float))
    return ", ".join(f"{k} {v:.0f} s" for k, v in phases.items() if isinstance(v, int | float)) + (
        f" (total {total:.0f} s)"
    )


def _env_value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v)) or "none listed"
    return NA if is_missing(v) else str(v)


def run_label(runs: list[Run], i: int) -> str:
    """A unique label for run i: its folder name, numbered when two runs share a name."""
    names = [r.label for r in runs]
    return names[i] if names.count(names[i]) == 1 else f"{names[i]} #{i + 1}"


def comparison_table(runs: list[Run]) -> pd.DataFrame:
    """Several runs side by side, one line per matched row, keyed by schema.MATCH_KEYS; a key that is constant
    within each run (device, often dtype) moves to the run's column header so CPU and GPU rows line up."""
    frames = []
    for i, run in enumerate(runs):
        frames.append(run.rows.assign(run=run_label(runs, i)))
    rows = pd.concat(frames, ignore_index=True)
    varying = [k for k in ("device", "dtype") if any(r.rows[k].nunique(dropna=False) > 1 for r in runs)]
    keys = [k for k in MATCH_KEYS if k not in ("device", "dtype")] + varying
    rows["_key"] = rows[keys].apply(lambda r: tuple(None if is_missing(v) else v for v in r), axis=1)
    labels = [run_label(runs, i) for i in range(len(runs))]
    heads = {}
    for i, run in enumerate(runs):
        desc = [
            ", ".join(sorted({str(v) for v in run.rows[k] if not is_missing(v)}))
            for k in ("device", "dtype")
            if k not in varying
        ]
        heads[labels[i]] = f"{labels[i]} ({'; '.join(d for d in desc if d)})" if any(desc) else labels[i]
    order = list(dict.fromkeys(rows["_key"]))
    recs = []
    for key in order:
        rec = {
            k: ("" if v is None else str(int(v)) if isinstance(v, float) else str(v))
            for k, v in zip(keys, key, strict=True)
        }
        base_p50 = float("nan")
        for j, label in enumerate(labels):
            sel = rows[(rows["run"] == label) & (rows["_key"] == key)]
            h = heads[label]
            if sel.empty:
                rec[f"{h}: p50 ms"] = rec[f"{h}: speedup"] = rec[f"{h}: accuracy"] = NA
                if j:
                    rec[f"{h}: p50 / first"] = NA
                continue
            r = sel.iloc[0]
            p50 = num(r["latency_p50_ms"])
            rec[f"{h}: p50 ms"] = sig(p50)
            rec[f"{h}: speedup"] = fixed(r["speedup_vs_teacher"], 1, "x")
            rec[f"{h}: accuracy"] = pct(r["accuracy"])
            if j == 0:
                base_p50 = p50
            else:
                rec[f"{h}: p50 / first"] = (
                    f"{p50 / base_p50:.2f}" if base_p50 > 0 and not np.isnan(p50) else NA
                )
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


# ---------------------------------------------------------------- rendering


def to_markdown(df: pd.DataFrame) -> str:
    """A DataFrame of strings as a GitHub-flavoured markdown table (no tabulate dependency)."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return "\n".join(lines)


def to_html(df: pd.DataFrame) -> str:
    """A DataFrame of strings as an HTML table (escaped)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for _, r in df.iterrows()
    )
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
