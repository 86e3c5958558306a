"""Compare two runs row by row (regression check) and gate one run on in-run quantities.

compare_runs: rows matched by schema.MATCH_KEYS. A row's latency is judged by the project's one regression rule,
``bench.stats.regression_verdict`` on the raw samples of two independent runs: regressed only when the slowdown
is both significant (one-sided Mann-Whitney U at ``alpha``) and larger than ``max_slowdown`` (ratio of medians);
the bootstrap 95% interval of that ratio is reported alongside. Accuracy regresses when it drops by more than
``max_accuracy_drop`` and the two bootstrap intervals exclude each other's point estimate; memory when it grows
by more than ``max_memory_growth``.

gate_run: checks what survives a machine of unknown speed: each student's speedup over its teacher (measured
interleaved in the same process) and its accuracy relative to the teacher's.

Exit codes: 0 fine, 1 a regression or a failed gate, 2 unusable input (raised as UserError).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dde_bench.bench.schema import MATCH_KEYS
from dde_bench.bench.stats import regression_verdict
from dde_bench.errors import UserError
from dde_bench.report.load import Run, load_run, row_key
from dde_bench.report.style import NA, fixed, is_missing, pct, sig
from dde_bench.report.tables import model_accuracy, model_kinds, num, teacher_of, to_markdown

VERDICTS = ("ok", "regressed", "improved", "new", "missing")


@dataclass
class RowComparison:
    """One matched row: its key, the verdict and the evidence for it."""

    key: dict[str, Any]
    verdict: str
    reasons: list[str] = field(default_factory=list)
    base_p50_ms: float = math.nan
    new_p50_ms: float = math.nan
    latency_ratio: float = math.nan  # median(new) / median(base)
    ratio_ci_low: float = math.nan
    ratio_ci_high: float = math.nan
    p_slower: float = math.nan  # one-sided Mann-Whitney U: new slower than base
    p_faster: float = math.nan
    base_accuracy: float = math.nan
    new_accuracy: float = math.nan
    base_peak_mem_mb: float = math.nan
    new_peak_mem_mb: float = math.nan


@dataclass
class CompareResult:
    """All matched rows of two runs with their verdicts, and the thresholds used."""

    baseline: Path
    new: Path
    thresholds: dict[str, float]
    rows: list[RowComparison]

    @property
    def counts(self) -> dict[str, int]:
        """Number of rows per verdict."""
        return {v: sum(r.verdict == v for r in self.rows) for v in VERDICTS}

    @property
    def regressed(self) -> bool:
        """True when any row regressed."""
        return any(r.verdict == "regressed" for r in self.rows)

    @property
    def exit_code(self) -> int:
        """1 on any regression, else 0."""
        return 1 if self.regressed else 0

    def table(self) -> pd.DataFrame:
        """The comparison as a DataFrame of formatted strings."""
        recs = []
        for r in self.rows:
            rec = {k: "" if r.key[k] is None else str(r.key[k]) for k in MATCH_KEYS}
            rec.update(
                {
                    "verdict": r.verdict,
                    "p50 base ms": sig(r.base_p50_ms),
                    "p50 new ms": sig(r.new_p50_ms),
                    "new/base [95% CI]": NA
                    if math.isnan(r.latency_ratio)
                    else f"{r.latency_ratio:.3f}"
                    + (
                        ""
                        if math.isnan(r.ratio_ci_low)
                        else f" [{r.ratio_ci_low:.3f}, {r.ratio_ci_high:.3f}]"
                    ),
                    "p (slower)": NA if math.isnan(r.p_slower) else f"{r.p_slower:.2g}",
                    "accuracy base→new": f"{pct(r.base_accuracy)} → {pct(r.new_accuracy)}",
                    "peak mem MB base→new": f"{sig(r.base_peak_mem_mb)} → {sig(r.new_peak_mem_mb)}",
                    "why": "; ".join(r.reasons),
                }
            )
            recs.append(rec)
        return pd.DataFrame.from_records(recs)

    def summary(self) -> str:
        """One line: counts per verdict and the outcome."""
        c = self.counts
        parts = ", ".join(f"{c[v]} {v}" for v in VERDICTS if c[v])
        outcome = "REGRESSION" if self.regressed else "no regression"
        return f"{outcome}: {parts} ({self.baseline} -> {self.new})"

    def to_markdown(self) -> str:
        """The comparison as a markdown table plus a summary line."""
        return f"{to_markdown(self.table())}\n\n{self.summary()}\n"

    def to_json(self) -> str:
        """The comparison as JSON (NaN written as null)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        data = {
            "baseline": str(self.baseline),
            "new": str(self.new),
            "thresholds": self.thresholds,
            "counts": self.counts,
            "regressed": self.regressed,
            "exit_code": self.exit_code,
            "rows": [clean(asdict(r)) for r in self.rows],
        }
        return json.dumps(data, indent=2)

    def to_text(self, width: int = 200) -> str:
        """The comparison as a rich table, rendered to plain text."""
        return _rich_text(
            self.table(), f"compare: {self.baseline.name} -> {self.new.name}", self.summary(), width
        )


def _rich_text(df: pd.DataFrame, title: str, footer: str, width: int) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c), overflow="fold")
    styles = {
        "regressed": "bold red",
        "improved": "green",
        "new": "cyan",
        "missing": "yellow",
        "fail": "bold red",
        "pass": "green",
    }
    for _, r in df.iterrows():
        verdict = r.get("verdict", "")
        t.add_row(*[str(v) for v in r], style=styles.get(str(verdict)))
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    console.print(t)
    console.print(footer)
    return buf.getvalue()


def _index(run: Run) -> dict[tuple, pd.Series]:
    return {row_key(r): r for _, r in run.rows.iterrows()}


def compare_runs(
    baseline_dir: str | Path,
    new_dir: str | Path,
    max_slowdown: float = 0.10,
    alpha: float = 0.01,
    max_accuracy_drop: float = 0.01,
    max_memory_growth: float = 0.10,
    n_boot: int = 2000,
    seed: int = 0,
) -> CompareResult:
    """Compare ``new_dir`` against ``baseline_dir`` row by row; see the module docstring for the rules.

    Raises UserError (exit 2) for a missing or malformed folder, different schema versions, or no rows in
    common.
    """
    base_run, new_run = load_run(baseline_dir), load_run(new_dir)
    if base_run.schema_version != new_run.schema_version:
        raise UserError(
            f"schema versions differ: {baseline_dir} has {base_run.schema_version}, "
            f"{new_dir} has {new_run.schema_version}; re-measure one of them with the same dde-bench"
        )
    base_idx, new_idx = _index(base_run), _index(new_run)
    common = [k for k in base_idx if k in new_idx]
    if not common:

        def desc(run: Run) -> str:
            if run.rows.empty:
                return "no rows"
            return ", ".join(
                f"{k}={sorted({str(v) for v in run.rows[k] if not is_missing(v)})}"
                for k in ("suite", "device", "dtype")
            )

        raise UserError(
            f"no rows in common between {baseline_dir} ({desc(base_run)}) and {new_dir} ({desc(new_run)})"
        )

    results: list[RowComparison] = []
    for k in list(base_idx) + [k for k in new_idx if k not in base_idx]:
        key = dict(zip(MATCH_KEYS, k, strict=True))
        if k not in new_idx:
            results.append(
                RowComparison(
                    key,
                    "missing",
                    ["row absent from the new run"],
                    base_p50_ms=num(base_idx[k]["latency_p50_ms"]),
                )
            )
            continue
        if k not in base_idx:
            results.append(
                RowComparison(
                    key, "new", ["row absent from the baseline"], new_p50_ms=num(new_idx[k]["latency_p50_ms"])
                )
            )
            continue
        results.append(
            _compare_row(
                key,
                base_idx[k],
                new_idx[k],
                base_run.raw.get(k),
                new_run.raw.get(k),
                max_slowdown,
                alpha,
                max_accuracy_drop,
                max_memory_growth,
                n_boot,
                seed,
            )
        )
    thresholds = {
        "max_slowdown": max_slowdown,
        "alpha": alpha,
        "max_accuracy_drop": max_accuracy_drop,
        "max_memory_growth": max_memory_growth,
    }
    return CompareResult(Path(baseline_dir), Path(new_dir), thresholds, results)


def _compare_row(
    key: dict[str, Any],
    base: pd.Series,
    new: pd.Series,
    base_raw: list[float] | None,
    new_raw: list[float] | None,
    max_slowdown: float,
    alpha: float,
    max_accuracy_drop: float,
    max_memory_growth: float,
    n_boot: int,
    seed: int,
) -> RowComparison:
    rc = RowComparison(key, "ok")
    worse: list[str] = []
    better: list[str] = []
    bs, ns = str(base.get("status") or "ok"), str(new.get("status") or "ok")
    if bs != ns:
        (worse if bs == "ok" else better).append(f"status {bs} -> {ns}")
    rc.base_p50_ms, rc.new_p50_ms = num(base["latency_p50_ms"]), num(new["latency_p50_ms"])
    if base_raw and new_raw and len(base_raw) >= 2 and len(new_raw) >= 2:
        v = regression_verdict(base_raw, new_raw, max_slowdown, alpha, n_boot=n_boot, seed=seed)
        rc.latency_ratio, rc.ratio_ci_low, rc.ratio_ci_high = v.ratio, v.ci_low, v.ci_high
        rc.p_slower, rc.p_faster = v.p_value, v.p_faster
        if v.regressed:
            worse.append(f"latency x{v.ratio:.2f} (p={v.p_value:.2g})")
        elif v.improved:
            better.append(f"latency x{v.ratio:.2f} (p={v.p_faster:.2g})")
    elif rc.base_p50_ms > 0 and rc.new_p50_ms > 0:
        rc.latency_ratio = rc.new_p50_ms / rc.base_p50_ms
        rc.reasons.append("no raw samples: latency significance not tested")

    rc.base_accuracy, rc.new_accuracy = num(base["accuracy"]), num(new["accuracy"])
    if not (math.isnan(rc.base_accuracy) or math.isnan(rc.new_accuracy)):
        drop = rc.base_accuracy - rc.new_accuracy
        b_lo, b_hi = num(base["accuracy_ci_low"]), num(base["accuracy_ci_high"])
        n_lo, n_hi = num(new["accuracy_ci_low"]), num(new["accuracy_ci_high"])
        have_ci = not any(math.isnan(v) for v in (b_lo, b_hi, n_lo, n_hi))
        if drop > max_accuracy_drop and (not have_ci or (rc.new_accuracy < b_lo and rc.base_accuracy > n_hi)):
            worse.append(f"accuracy -{100 * drop:.1f} points")
        elif -drop > max_accuracy_drop and (
            not have_ci or (rc.new_accuracy > b_hi and rc.base_accuracy < n_lo)
        ):
            better.append(f"accuracy +{-100 * drop:.1f} points")

    rc.base_peak_mem_mb, rc.new_peak_mem_mb = num(base["peak_mem_mb"]), num(new["peak_mem_mb"])
    if rc.base_peak_mem_mb > 0 and not math.isnan(rc.new_peak_mem_mb):
        growth = rc.new_peak_mem_mb / rc.base_peak_mem_mb - 1
        if growth > max_memory_growth:
            worse.append(f"peak memory +{100 * growth:.0f}%")
        elif growth < -max_memory_growth:
            better.append(f"peak memory {100 * growth:.0f}%")

    if worse:
        rc.verdict = "regressed"
    elif better:
        rc.verdict = "improved"
    rc.reasons = worse + better + rc.reasons
    return rc


# ---------------------------------------------------------------- gate


@dataclass
class GateCheck:
    """One check of the gate on one row."""

    model: str
    suite: str
    scenario: str
    batch_size: int | None
    check: str  # speedup | accuracy
    verdict: str  # pass | fail | n/a
    value: float
    threshold: float
    detail: str


@dataclass
class GateResult:
    """The gate's checks on one run."""

    run: Path
    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not any(c.verdict == "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when every check passed, else 1."""
        return 0 if self.passed else 1

    def table(self) -> pd.DataFrame:
        """The checks as a DataFrame of strings."""
        return pd.DataFrame.from_records(
            [
                {
                    "suite": c.suite,
                    "model": c.model,
                    "scenario": c.scenario,
                    "batch": NA if c.batch_size is None else str(c.batch_size),
                    "check": c.check,
                    "verdict": c.verdict,
                    "detail": c.detail,
                }
                for c in self.checks
            ]
        )

    def summary(self) -> str:
        """One line: the outcome and how many checks passed, failed and could not be decided (n/a), e.g.
        'gate FAILED: 5/6 checks passed, 1 failed (RUN)'."""
        counts = {v: sum(c.verdict == v for c in self.checks) for v in ("pass", "fail", "n/a")}
        parts = [f"{counts['pass']}/{len(self.checks)} checks passed"]
        if counts["fail"]:
            parts.append(f"{counts['fail']} failed")
        if counts["n/a"]:
            parts.append(f"{counts['n/a']} n/a (not measured)")
        return f"gate {'PASSED' if self.passed else 'FAILED'}: {', '.join(parts)} ({self.run})"

    def to_text(self, width: int = 160) -> str:
        """The checks as a rich table, rendered to plain text."""
        return _rich_text(self.table(), f"gate: {self.run.name}", self.summary(), width)

    def to_markdown(self) -> str:
        """The checks as a markdown table plus the summary line."""
        return f"{to_markdown(self.table())}\n\n{self.summary()}\n"

    def to_json(self) -> str:
        """The checks as JSON."""

        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return json.dumps(
            {
                "run": str(self.run),
                "passed": self.passed,
                "exit_code": self.exit_code,
                "checks": [{k: clean(v) for k, v in asdict(c).items()} for c in self.checks],
            },
            indent=2,
        )


def gate_run(
    run_dir: str | Path,
    min_speedup: float = 2.0,
    max_accuracy_drop: float = 0.01,
    scenario: str = "cached",
    models: list[str] | None = None,
    on: str = "ci-low",
    batch_sizes: list[int] | None = None,
) -> GateResult:
    """Gate one run on in-run quantities: for each student row of ``scenario`` (optionally only ``models`` and
    only ``batch_sizes``), the lower bound of its speedup-over-teacher 95% interval (``on="median"``: the ratio
    of medians) must be at least ``min_speedup``, and its accuracy at least the teacher's minus
    ``max_accuracy_drop``.

    A missing speedup interval fails (the gate cannot vouch for it); accuracy missing for both student and
    teacher (e.g. random-weight speed-only models) is reported n/a; missing for one of them fails.
    Raises UserError when the run has no student rows in that scenario (at those batch sizes).
    """
    if on not in ("ci-low", "median"):
        raise UserError(f"--on: expected ci-low or median, got {on!r}")
    run = load_run(run_dir)
    rows = run.rows
    kinds = model_kinds(rows) if not rows.empty else {}
    sel = (
        rows[(rows["scenario"] == scenario) & rows["model"].map(lambda m: kinds.get(m) == "student")]
        if not rows.empty
        else rows
    )
    if models:
        unknown = set(models) - set(sel["model"])
        if unknown:
            raise UserError(
                f"{run_dir}: no {scenario} student rows for model(s) {', '.join(sorted(unknown))}"
            )
        sel = sel[sel["model"].isin(models)]
    if batch_sizes:
        have = {int(b) for b in sel["batch_size"] if not is_missing(b)}
        unknown = set(batch_sizes) - have
        if unknown:
            raise UserError(
                f"{run_dir}: --batch-size {', '.join(map(str, sorted(unknown)))}: no {scenario} student rows at "
                f"that batch size (measured: {', '.join(map(str, sorted(have))) or 'none'})"
            )
        sel = sel[sel["batch_size"].map(lambda b: not is_missing(b) and int(b) in set(batch_sizes))]
    if sel.empty:
        raise UserError(f"{run_dir}: no student rows in scenario {scenario!r}: nothing to gate")
    checks: list[GateCheck] = []
    for _, r in sel.iterrows():
        m, suite = str(r["model"]), str(r["suite"])
        b = None if is_missing(r["batch_size"]) else int(r["batch_size"])
        suite_rows = rows[rows["suite"] == r["suite"]]
        lo = num(r["speedup_ci_low"] if on == "ci-low" else r["speedup_vs_teacher"])
        status = str(r.get("status") or "ok")
        if status != "ok":
            checks.append(
                GateCheck(
                    m, suite, scenario, b, "speedup", "fail", math.nan, min_speedup, f"row status {status}"
                )
            )
        elif math.isnan(lo):
            checks.append(
                GateCheck(
                    m,
                    suite,
                    scenario,
                    b,
                    "speedup",
                    "fail",
                    math.nan,
                    min_speedup,
                    "speedup interval not measured",
                )
            )
        else:
            ok = lo >= min_speedup
            checks.append(
                GateCheck(
                    m,
                    suite,
                    scenario,
                    b,
                    "speedup",
                    "pass" if ok else "fail",
                    lo,
                    min_speedup,
                    f"{fixed(r['speedup_vs_teacher'], 2, 'x')} [CI low {num(r['speedup_ci_low']):.2f}] "
                    f"{on} {'>=' if ok else '<'} {min_speedup:g}x",
                )
            )
        teacher = teacher_of(suite_rows, m)
        sa = num(r["accuracy"])
        if math.isnan(sa):
            sa = model_accuracy(suite_rows, m)[0]
        ta = model_accuracy(suite_rows, teacher)[0] if teacher else math.nan
        if math.isnan(sa) and math.isnan(ta):
            checks.append(
                GateCheck(
                    m,
                    suite,
                    scenario,
                    b,
                    "accuracy",
                    "n/a",
                    math.nan,
                    max_accuracy_drop,
                    "accuracy not measured for student or teacher",
                )
            )
        elif math.isnan(sa) or math.isnan(ta):
            checks.append(
                GateCheck(
                    m,
                    suite,
                    scenario,
                    b,
                    "accuracy",
                    "fail",
                    sa,
                    max_accuracy_drop,
                    f"accuracy n/a for {'student' if math.isnan(sa) else f'teacher {teacher}'}",
                )
            )
        else:
            ok = sa >= ta - max_accuracy_drop
            checks.append(
                GateCheck(
                    m,
                    suite,
                    scenario,
                    b,
                    "accuracy",
                    "pass" if ok else "fail",
                    sa,
                    max_accuracy_drop,
                    f"{pct(sa)} vs teacher {teacher} {pct(ta)} (allowed drop {100 * max_accuracy_drop:.1f} points)",
                )
            )
    return GateResult(Path(run_dir), checks)
