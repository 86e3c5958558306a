"""The table `dde-bench run` prints at the end: one line per measured row."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def print_summary(rows: list[dict], console: Console) -> None:
    t = Table(
        title="results (latency per call; speedup = teacher median / model median, interleaved; "
        "vs plain = the model's plain path / this variant)"
    )
    for col in (
        "model",
        "scenario",
        "batch",
        "p50 ms",
        "items/s",
        "speedup [95% CI]",
        "FLOP ratio",
        "vs plain",
        "accuracy",
        "status",
    ):
        t.add_column(col)
    for r in rows:
        if r.get("scenario") == "gallery" and r.get("status") != "ok":
            continue
        sp = r.get("speedup_vs_teacher")
        sp_s = (
            ""
            if sp is None
            else f"{sp:.2f}x [{_fmt(r.get('speedup_ci_low'), '.2f')}, {_fmt(r.get('speedup_ci_high'), '.2f')}]"
        )
        acc = r.get("accuracy")
        t.add_row(
            r["model"],
            r["scenario"],
            str(r.get("gallery_size") or r.get("batch_size"))
            if r["scenario"] == "gallery"
            else str(r["batch_size"]),
            _fmt(r.get("latency_p50_ms"), ".3g"),
            _fmt(r.get("throughput_per_s"), ".4g"),
            sp_s,
            "" if r.get("speedup_flop_bound") is None else f"{r['speedup_flop_bound']:.2f}x",
            "" if r.get("speedup_vs_plain") is None else f"{r['speedup_vs_plain']:.2f}x",
            "n/a" if acc is None else f"{100 * acc:.1f}%",
            r.get("status", ""),
        )
    console.print(t)
