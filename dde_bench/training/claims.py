"""The paper's claims, measured on a reproduction folder of the paper ablation: ``claims.json`` and its README table.

Each claim is a statistic of the rows' held-out scores (per seed and per example, :func:`dde_bench.bench.stats.
paired_rows`: seeds and examples resampled jointly for every row) with a 95% interval, and a verdict:

* ``reached``: the whole interval is on the claim's side of its threshold;
* ``not reached``: the whole interval is on the other side;
* ``inconclusive``: the interval straddles the threshold (or the statistic is undefined, e.g. no gap to close).

Claims (DiDE, arXiv 2112.08723):

1. soft labels + attention distillation close at least half of the teacher-student gap:
   ``(soft+attention - ground truth only) / (teacher - ground truth only) >= 0.5``;
2. pre-training distillation adds accuracy over fine-tuning distillation alone:
   ``pre-training distillation then soft+attention - soft+attention > 0``, with two controls that separate
   distillation from more steps (the same pre-training steps with ITM ground truth only; the steps added to
   fine-tuning);
3. the full recipe is within 1 point of the teacher: ``teacher - full recipe <= 1`` point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dde_bench.bench.stats import paired_rows

REACHED, NOT_REACHED, INCONCLUSIVE = "reached", "not reached", "inconclusive"


def verdict(lo: float, hi: float, threshold: float, side: str) -> str:
    """``side`` ">=" / ">" / "<=": which side of ``threshold`` the claim says the statistic is on."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if side in (">=", ">"):
        ok = lo >= threshold if side == ">=" else lo > threshold
        bad = hi < threshold if side == ">=" else hi <= threshold
    elif side == "<=":
        ok, bad = hi <= threshold, lo > threshold
    else:
        raise ValueError(f"unknown side {side!r}")
    return REACHED if ok else NOT_REACHED if bad else INCONCLUSIVE


def _gap_closed(m: dict) -> np.ndarray:
    gap = m["teacher"] - m["gt"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, (m["soft-attention"] - m["gt"]) / gap, np.nan)


CLAIMS = [
    # id, the claim, rows needed, statistic on the rows' means (in percent points), unit, threshold, side
    (
        "gap-half",
        "soft + attention closes at least half of the teacher-student gap",
        ("teacher", "gt", "soft-attention"),
        _gap_closed,
        "share of the gap",
        0.5,
        ">=",
    ),
    (
        "pretrain-adds",
        "pre-training distillation adds accuracy over fine-tuning distillation alone",
        ("pretrain-distill", "soft-attention"),
        lambda m: m["pretrain-distill"] - m["soft-attention"],
        "points",
        0.0,
        ">",
    ),
    (
        "pretrain-adds-vs-gt-pretraining",
        "control: pre-training distillation beats the same pre-training steps with ITM ground truth only",
        ("pretrain-distill", "control-pretrain-gt"),
        lambda m: m["pretrain-distill"] - m["control-pretrain-gt"],
        "points",
        0.0,
        ">",
    ),
    (
        "pretrain-adds-vs-more-steps",
        "control: pre-training distillation beats soft + attention given those steps in fine-tuning",
        ("pretrain-distill", "control-more-steps"),
        lambda m: m["pretrain-distill"] - m["control-more-steps"],
        "points",
        0.0,
        ">",
    ),
    (
        "within-1-point",
        "the full recipe (pre-training distillation, then soft + attention) is within 1 point of the teacher",
        ("teacher", "pretrain-distill"),
        lambda m: m["teacher"] - m["pretrain-distill"],
        "points",
        1.0,
        "<=",
    ),
]


def compute_claims(scores: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """The claims on held-out ``scores``: row slug -> per-example scores in percent, ``[seeds, examples]``
    (the teacher's row tiled over the seeds when one teacher serves them all). A claim whose rows are missing
    is listed with value None and verdict inconclusive."""
    out = []
    for cid, text, need, stat, unit, threshold, side in CLAIMS:
        missing = [r for r in need if r not in scores]
        if missing:
            out.append(
                {
                    "id": cid,
                    "claim": text,
                    "value": None,
                    "ci_low": None,
                    "ci_high": None,
                    "unit": unit,
                    "threshold": f"{side} {threshold:g}",
                    "verdict": INCONCLUSIVE,
                    "note": f"rows not run: {', '.join(missing)}",
                }
            )
            continue
        est = paired_rows({r: scores[r] for r in need}, stat, n_boot=n_boot, seed=seed)
        v = verdict(est.ci_low, est.ci_high, threshold, side)
        note = ""
        if not np.isfinite(est.value):
            note = "undefined: the teacher is not above the ground-truth-only student"
        elif not np.isfinite(est.ci_low):
            note = f"undefined in {est.n_undefined} of {est.n_boot} resamples (no teacher-student gap there)"
        out.append(
            {
                "id": cid,
                "claim": text,
                "value": _num(est.value),
                "ci_low": _num(est.ci_low),
                "ci_high": _num(est.ci_high),
                "unit": unit,
                "threshold": f"{side} {threshold:g}",
                "verdict": v,
                "note": note,
                "n_seeds": est.n_seeds,
                "n_examples": est.n_examples,
                "confidence": est.confidence,
            }
        )
    return out


def _num(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def _fmt(c: dict) -> tuple[str, str]:
    if c["value"] is None:
        return "n/a", "n/a"
    pct = c["unit"] == "share of the gap"
    f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:+.2f}")
    ci = "n/a" if c["ci_low"] is None else f"[{f(c['ci_low'])}, {f(c['ci_high'])}]"
    return f(c["value"]), ci


def claims_table(claims: list[dict]) -> str:
    """The markdown table of ``claims.json``."""
    lines = [
        "| claim | measured | 95% interval | threshold | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        value, ci = _fmt(c)
        thr = c["threshold"]
        if c["unit"] == "share of the gap":
            side, t = thr.split()
            thr = f"{side} {100 * float(t):.0f}%"
        else:
            thr = f"{thr} points"
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(f"| {c['claim']} | {value} | {ci} | {thr} | **{c['verdict']}**{note} |")
    return "\n".join(lines)


def write_claims(claims: list[dict], out: Path) -> Path:
    path = Path(out) / "claims.json"
    path.write_text(json.dumps({"claims": claims}, indent=2) + "\n")
    return path


def read_claims(folder: Path) -> list[dict]:
    return json.loads((Path(folder) / "claims.json").read_text())["claims"]
