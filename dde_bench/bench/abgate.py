"""The A/B speed gate: the change measured against its base commit, interleaved, on the same machine.

``dde-bench gate --against REV`` checks REV out into a temporary ``git worktree`` (removed afterwards) and
measures the gated calls of the default suite, the tiny teacher's call and the tiny student's cached call at
batch 8 (and their ratio, the cached speedup), alternating between the two versions. Each version runs in its own
worker process, ``dde_bench/gate_probe.py`` of the *current* checkout run with the same Python interpreter (the
installed dependencies) and ``PYTHONPATH`` set to that version's source tree: only the project differs. Both
get the same thread count, the same inputs (the suite's evaluation batch, built once by the current checkout and
saved to a file) and the same seed. A round is ``calls`` interleaved calls of each model in one worker, then
the same in the other: base, change on even rounds and change, base on odd ones (neither side always goes
first), so the two halves of a round are a fraction of a second apart and share the machine's load. A worker
pair serves ``rounds`` rounds; ``processes`` fresh pairs run one after another so that effects of one process
(memory layout, which core it got) do not decide the outcome.

Clock: by default each call is timed by the worker's CPU time (``time.process_time``, all its threads; the gate
uses one), not wall time: on a shared machine a call's wall time also says how long another tenant held the
core (per-round noise of the student's call 15-51% on the wall clock, 5-21% on the CPU clock, measured at a load
of 4-7 on 2 cores), while its CPU time is the work this version did. Wall times are recorded beside them (``--clock wall`` decides on them).
A regression that waits rather than computes (sleep, I/O, lock contention) shows only on the wall clock.

Why workers rather than one fresh process per round: on the 2-core shared machine a process start (torch import)
takes about 2.5 s of a 3.5 s round, and the halves of a round were then seconds apart, long enough for another
tenant's load to come or go between them (measured; see reports/baselines/README.md).

Decision, per gated quantity, with the project's regression rule (``stats.regression_verdict``, paired): a
regression is a slowdown that is significant (one-sided Wilcoxon signed-rank test over the rounds'
``log(median change / median base)``, ``p < alpha``, default 0.01) *and* large (the median over rounds of the
per-round ratio of medians, change / base, above ``1 + max_slowdown``, default 1.10). The interval printed next
to the ratio is the paired bootstrap over rounds. The quantities: the student's cached call, the teacher's
call, and the speedup as the student's cost in teacher calls (per interleaved call pair, student time / teacher
time): that cost growing by more than 10% is the speedup falling by more than 9%.

Output: a gate folder with ``gate.json`` and ``gate.md`` (per-round medians, ratios, intervals, verdicts) and
two run folders in the results schema, ``base/`` and ``change/`` (rows ``tiny-teacher`` and ``tiny-student``,
scenario ``cached``, batch 8, every call's raw sample; the change's rows also carry ``vs_base_*`` columns), so
``dde-bench compare GATE/base GATE/change`` and ``dde-bench report GATE/base GATE/change`` read them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from dde_bench.bench.stats import RatioEstimate, RegressionVerdict, regression_verdict, speedup
from dde_bench.errors import UserError
from dde_bench.resources import REPO_ROOT

SIDES = ("base", "change")
CALLS = ("student_cached", "teacher")
CLOCKS = {"cpu": "_cpu", "wall": ""}  # the probe's sample lists: "<call><suffix>_ms"
KEYS = tuple(c + suffix for suffix in CLOCKS.values() for c in CALLS)
CHECKS = ("student cached call", "teacher call", "speedup (student cost in teacher calls)")
INJECT_ENV = "DDE_BENCH_INJECT_SLOWDOWN"


@dataclass(frozen=True)
class ABSettings:
    """What the gate measures and how it decides (all recorded in gate.json and each side's run.json)."""

    suite: str = "nlvr2"
    batch_size: int = 8
    size: str = "tiny"
    threads: int = 1
    processes: int = 2  # fresh worker pairs, one after another
    rounds: int = 15  # rounds per worker pair
    calls: int = 10  # timed calls of each model per worker and round
    warmup: int = 10  # calls of each model before timing, per worker

    @property
    def total_rounds(self) -> int:
        return self.processes * self.rounds

    def key(self, call: str) -> str:
        """The sample list of ``call`` on the clock the gate decides on."""
        return call + CLOCKS[self.clock]

    seed: int = 0
    clock: str = "cpu"  # cpu: the process's CPU time per call (process_time); wall: perf_counter
    max_slowdown: float = 0.10
    alpha: float = 0.01
    weights: str = (
        "random (seeded): the same arithmetic as trained weights, no checkpoint needed on either side"
    )


@dataclass
class ABResult:
    """Samples of both sides (``samples[side][key]``, ``KEYS``: all rounds x calls, ms), verdicts, and what was
    compared."""

    settings: ABSettings
    base_rev: str
    base_desc: str
    change_desc: str
    task: str
    base_worktree: str  # where the base was checked out (removed when the gate ends)
    samples: dict[str, dict[str, np.ndarray]]
    startup_s: dict[str, list[float]]
    wall_s: float
    checks: dict[str, RegressionVerdict] = field(default_factory=dict)
    speedups: dict[str, RatioEstimate] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no gated quantity regressed."""
        return not any(v.regressed for v in self.checks.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def decide(self) -> None:
        """Apply the regression rule (paired over rounds) to each gated quantity, and the speedup per side."""
        s, seed = self.settings, self.settings.seed
        st, te = s.key("student_cached"), s.key("teacher")
        b, c = self.samples["base"], self.samples["change"]
        rule = dict(max_slowdown=s.max_slowdown, alpha=s.alpha, paired=True, seed=seed)
        self.checks = {
            CHECKS[0]: regression_verdict(b[st], c[st], **rule),
            CHECKS[1]: regression_verdict(b[te], c[te], **rule),
            CHECKS[2]: regression_verdict(b[st] / b[te], c[st] / c[te], **rule),
        }
        self.speedups = {
            side: speedup(self.samples[side][te], self.samples[side][st], seed=seed) for side in SIDES
        }

    def summary(self) -> str:
        """One line: the outcome and the revisions compared."""
        bad = [name for name, v in self.checks.items() if v.regressed]
        what = f"regressed: {', '.join(bad)}" if bad else "no gated call regressed"
        return (
            f"A/B gate {'PASSED' if self.passed else 'FAILED'}: {what} "
            f"(change {self.change_desc} vs base {self.base_desc}; {self.settings.total_rounds} rounds, "
            f"rule: p < {self.settings.alpha:g} and ratio > {1 + self.settings.max_slowdown:.2f}; "
            f"{self.wall_s:.0f} s)"
        )

    def table_rows(self) -> list[dict[str, str]]:
        """The checks as rows of strings (base and change medians, ratio [paired 95% CI], p, verdict)."""
        rows = []
        for name, v in self.checks.items():
            st, te = self.settings.key("student_cached"), self.settings.key("teacher")
            if name == CHECKS[2]:  # the speedup as 1 / median cost: change/base = base / change speedup
                cost = {side: self.samples[side][st] / self.samples[side][te] for side in SIDES}
                base_m = f"{1 / np.median(cost['base']):.2f}x"
                new_m = f"{1 / np.median(cost['change']):.2f}x"
            else:
                key = st if name == CHECKS[0] else te
                base_m = f"{np.median(self.samples['base'][key]):.3f} ms"
                new_m = f"{np.median(self.samples['change'][key]):.3f} ms"
            rows.append(
                {
                    "check": name,
                    "base": base_m,
                    "change": new_m,
                    "change/base [paired 95% CI]": f"{v.ratio:.3f} [{v.ci_low:.3f}, {v.ci_high:.3f}]",
                    "p (slower)": f"{v.p_value:.2g}",
                    "verdict": v.verdict,
                }
            )
        return rows

    def to_markdown(self) -> str:
        """The checks as a markdown table plus the summary line."""
        rows = self.table_rows()
        cols = list(rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
        return "\n".join(lines) + f"\n\n{self.summary()}\n"

    def to_text(self, width: int = 160) -> str:
        """The checks as a rich table rendered to plain text (the CI log)."""
        import io

        from rich.table import Table

        rows = self.table_rows()
        t = Table(title=f"A/B speed gate: {self.change_desc} vs {self.base_desc}")
        for c in rows[0]:
            t.add_column(c)
        for r in rows:
            t.add_row(*r.values(), style="bold red" if r["verdict"] == "regressed" else None)
        buf = io.StringIO()
        console = Console(file=buf, width=width, force_terminal=False, color_system=None)
        console.print(t)
        console.print(self.summary())
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """Everything gate.json holds: settings, revisions, per-round medians, verdicts, speedups, timings."""

        def verdict(v: RegressionVerdict) -> dict[str, Any]:
            keys = ("verdict", "ratio", "ci_low", "ci_high", "p_value", "p_faster", "test", "reason")
            return {k: getattr(v, k) for k in keys}

        return {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "base_rev": self.base_rev,
            "base": self.base_desc,
            "base_worktree": self.base_worktree,
            "change": self.change_desc,
            "settings": self.settings.__dict__,
            "rule": (
                f"regressed when a one-sided Wilcoxon signed-rank test over rounds gives p < {self.settings.alpha:g} "
                f"and the median over rounds of the per-round ratio (change / base) exceeds {1 + self.settings.max_slowdown:.2f}"
            ),
            "checks": {name: verdict(v) for name, v in self.checks.items()},
            "speedup": {
                side: {"ratio": e.ratio, "ci_low": e.ci_low, "ci_high": e.ci_high}
                for side, e in self.speedups.items()
            },
            "round_medians_ms": {
                side: {key: np.median(self.samples[side][key], axis=1).tolist() for key in KEYS}
                for side in SIDES
            },
            "startup_s": self.startup_s,
            "wall_s": self.wall_s,
        }


# ------------------------------------------------------------------------------------------------ git
def _git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; a failure is a UserError naming the command and git's message."""
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"git {' '.join(args)}: {e}") from None
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["failed"])[-1]
        raise UserError(f"git {' '.join(args)} in {repo}: {msg}")
    return out.stdout.strip()


def resolve_base(repo: Path, against: str) -> tuple[str, str]:
    """The base commit's sha and a description of how it was chosen.

    ``against="auto"``: the merge base of HEAD with ``main``; HEAD~1 when HEAD is on main, detached, has no
    ``main`` to compare with, or has no commits of its own (the merge base would be HEAD itself).
    Anything else is a revision git understands (a sha, a branch, ``HEAD~3``).
    """
    _git(repo, "rev-parse", "--git-dir")  # not a git checkout: one line
    head = _git(repo, "rev-parse", "HEAD")
    if against != "auto":
        sha = _commit(repo, against, f"--against {against}: not a commit of {repo}")
        return sha, f"{against} ({sha[:10]})"
    branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    if branch not in ("main", "HEAD"):
        try:
            base = _git(repo, "merge-base", "HEAD", "main")
        except UserError:
            base = ""
        if base and base != head:
            return base, f"merge base with main ({base[:10]})"
    sha = _commit(repo, "HEAD~1", f"--against auto: HEAD of {repo} has no parent commit; pass --against REV")
    return sha, f"HEAD~1 ({sha[:10]})"


def _commit(repo: Path, rev: str, error: str) -> str:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except UserError:
        raise UserError(error) from None


@contextmanager
def base_worktree(repo: Path, sha: str) -> Iterator[Path]:
    """``sha`` checked out (detached) into a temporary git worktree, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="dde-gate-base-"))
    path = tmp / "src"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True
        )
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def describe_change(repo: Path) -> str:
    """The current checkout: its HEAD and whether tracked files differ from it."""
    head = _git(repo, "rev-parse", "--short=10", "HEAD")
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return f"{head}{' + uncommitted changes' if dirty else ''}"


# --------------------------------------------------------------------------------------------- inputs
def save_inputs(settings: ABSettings, path: Path, cache_root: Path | None = None) -> dict[str, Any]:
    """Write the suite's evaluation batch (the harness's inputs: examples 0..batch-1) to ``path``
    (safetensors) and return what the probe needs besides: task, vocab size, number of labels."""
    import torch
    from rich.console import Console as _Console
    from safetensors.torch import save_file

    from dde_bench import paths
    from dde_bench.bench.workload import Workload
    from dde_bench.cards import load_suite

    card = load_suite(settings.suite, check_models=False)
    workload = Workload(card, cache_root or paths.cache_root(), _Console(stderr=True, quiet=True))
    data = workload.dataset
    b = data.batch(torch.arange(settings.batch_size) % len(data))
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_mask")
    save_file({k: b[k].contiguous() for k in keys}, str(path))
    return {
        "task": workload.task,
        "vocab_size": workload.data.vocab_size,
        "num_labels": workload.data.num_labels,
    }


# ---------------------------------------------------------------------------------------------- probe
def probe_path() -> Path:
    """The probe of the current checkout (run by path for both sides)."""
    from dde_bench import gate_probe

    return Path(gate_probe.__file__).resolve()


class Worker:
    """One probe worker (``gate_probe.py`` with ``PYTHONPATH=root``), started at once; ``ready`` waits for it.

    A version that cannot be measured, or a dde_bench imported from elsewhere than ``root`` (an installed
    copy shadowing PYTHONPATH), is a UserError of one line naming ``who``.
    """

    def __init__(self, root: Path, spec: dict[str, Any], *, inject: bool, who: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(root)
        threads = str(spec["threads"])
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if not inject:
            env.pop(INJECT_ENV, None)
        self.root, self.who = root, who
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(probe_path()), json.dumps(spec)],
            env=env,
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            res = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            res = None
        if not isinstance(res, dict) or res.get("ok") is False:
            why = res.get("error") if isinstance(res, dict) else None
            if not why:
                self.proc.kill()
                err = self.proc.communicate()[1] if self.proc.stderr else ""
                why = (err.strip().splitlines() or [f"exit code {self.proc.wait()}, no output"])[-1]
            self.close()
            raise UserError(f"{self.who} cannot be measured through dde_bench.modeling: {why}")
        return res

    def ready(self) -> float:
        """Wait for the ready line; returns the seconds from start to ready (import, build, warm-up)."""
        res = self._read()
        imported = Path(res["dde_bench_file"]).resolve()
        if not imported.is_relative_to(self.root.resolve()):
            self.close()
            raise UserError(f"{self.who}: the probe imported {imported}, not the dde_bench under {self.root}")
        return time.perf_counter() - self.t0

    def round(self, calls: int) -> dict[str, list[float]]:
        """One round: ``calls`` interleaved calls of each model; their times in ms."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{calls}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died: _read reports why
        return self._read()

    def close(self, kill: bool = False) -> None:
        """End the worker: EOF on stdin (killed if it does not exit within 30 s), or at once with ``kill``."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()


def measure_ab(
    settings: ABSettings,
    roots: dict[str, Path],
    inputs: Path,
    meta: dict[str, Any],
    who: dict[str, str],
    console: Console | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[float]]]:
    """Alternate rounds between the sides' workers (base, change; then change, base; ...).

    Returns ``samples[side][key]`` (``KEYS``: each call's wall and CPU times) as (all rounds) x calls arrays
    in ms, and each worker's start-up seconds.
    """
    spec = {
        "inputs": str(inputs),
        "size": settings.size,
        "seed": settings.seed,
        "threads": settings.threads,
        "warmup": settings.warmup,
        **meta,
    }
    got: dict[str, dict[str, list[list[float]]]] = {s: {k: [] for k in KEYS} for s in SIDES}
    startup: dict[str, list[float]] = {s: [] for s in SIDES}
    i = 0
    for p in range(settings.processes):
        workers = {s: Worker(roots[s], spec, inject=s == "change", who=who[s]) for s in SIDES}
        failed = True
        try:
            for s in SIDES:
                startup[s].append(workers[s].ready())
            for _ in range(settings.rounds):
                for s in SIDES if i % 2 == 0 else SIDES[::-1]:
                    res = workers[s].round(settings.calls)
                    for k in KEYS:
                        got[s][k].append(res[f"{k}_ms"])
                i += 1
            failed = False
        finally:
            for w in workers.values():
                w.close(kill=failed)
        if console is not None:
            last = slice(-settings.rounds, None)
            med = {s: {c: float(np.median(got[s][settings.key(c)][last])) for c in CALLS} for s in SIDES}
            console.print(
                f"worker pair {p + 1}/{settings.processes}: "
                + ", ".join(
                    f"{s} teacher {med[s]['teacher']:.2f} ms, student {med[s]['student_cached']:.2f} ms"
                    for s in SIDES
                )
            )
    samples = {s: {k: np.asarray(got[s][k], dtype=float) for k in KEYS} for s in SIDES}
    return samples, startup


# --------------------------------------------------------------------------------------------- output
def write_gate_folder(result: ABResult, out: Path) -> None:
    """gate.json, gate.md and the two run folders (results schema) under ``out``."""
    import torch

    from dde_bench.bench.results import ResultWriter

    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "gate.md").write_text(result.to_markdown(), encoding="utf-8")
    s = result.settings
    torch.set_num_threads(s.threads)  # run.json records the threads the probes measured at
    for side in SIDES:
        rev = result.base_desc if side == "base" else result.change_desc
        settings = {"gate": "ab", "gate_side": side, "measured": rev, **s.__dict__}
        writer = ResultWriter(out / side, settings, device="cpu")
        writer.run_info["environment"]["git_commit"] = result.base_rev if side == "base" else rev
        (out / side / "run.json").write_text(json.dumps(writer.run_info, indent=2) + "\n", encoding="utf-8")
        for call in ("teacher", "student_cached"):
            writer.append(*_row(result, side, call))


def _row(result: ABResult, side: str, call: str) -> tuple[dict[str, Any], list[float]]:
    """One results row of ``side`` for ``call`` (all rounds' calls pooled, on the gate's clock; ``timer`` says
    which) and its raw samples (ms); ``latency_wall_p50_ms`` is the wall-clock median beside it."""
    s = result.settings
    flat = result.samples[side][s.key(call)].ravel()
    wall = result.samples[side][call].ravel()
    model = f"{s.size}-teacher" if call == "teacher" else f"{s.size}-student"
    row: dict[str, Any] = {
        "suite": s.suite,
        "task": result.task,
        "model": model,
        "model_kind": "teacher" if call == "teacher" else "student",
        "size": s.size,
        "scenario": "cached",
        "batch_size": s.batch_size,
        "gallery_size": None,
        "dtype": "fp32",
        "device": "cpu",
        "threads": s.threads,
        "status": "ok",
        "latency_p50_ms": float(np.median(flat)),
        "latency_iqr_ms": float(np.subtract(*np.percentile(flat, [75, 25]))),
        "latency_p90_ms": float(np.percentile(flat, 90)),
        "latency_p99_ms": float(np.percentile(flat, 99)),
        "latency_mean_ms": float(flat.mean()),
        "n_samples": int(flat.size),
        "throughput_per_s": s.batch_size * wall.size / (wall.sum() / 1e3),
        "timer": "process_time" if s.clock == "cpu" else "perf_counter",
        "latency_wall_p50_ms": float(np.median(wall)),
        "note": f"A/B gate probe ({side}), {s.clock} time per call, {s.weights}; "
        f"{s.total_rounds} rounds x {s.calls} calls",
        "gate_side": side,
        "gate_rounds": s.total_rounds,
        "gate_calls_per_round": s.calls,
    }
    if call == "student_cached":
        est = result.speedups[side]
        row.update(
            teacher_model=f"{s.size}-teacher",
            speedup_vs_teacher=est.ratio,
            speedup_ci_low=est.ci_low,
            speedup_ci_high=est.ci_high,
        )
    if side == "change":
        v = result.checks[CHECKS[0] if call == "student_cached" else CHECKS[1]]
        row.update(
            vs_base_ratio=v.ratio,
            vs_base_ci_low=v.ci_low,
            vs_base_ci_high=v.ci_high,
            vs_base_p=v.p_value,
            vs_base_verdict=v.verdict,
        )
        if call == "student_cached":
            sv = result.checks[CHECKS[2]]
            row.update(
                vs_base_cost_ratio=sv.ratio, vs_base_cost_p=sv.p_value, vs_base_speedup_verdict=sv.verdict
            )
    return row, flat.tolist()


# ----------------------------------------------------------------------------------------------- gate
def ab_gate(
    against: str,
    out: Path,
    settings: ABSettings | None = None,
    *,
    repo: Path | None = None,
    change_root: Path | None = None,
    cache_root: Path | None = None,
    console: Console | None = None,
) -> ABResult:
    """Measure the change (``change_root``, default this checkout) against ``against`` (see ``resolve_base``)
    of ``repo`` (default: the change's repository), decide, and write the gate folder ``out``.

    Raises UserError (one line, exit 2) when REV or the change cannot be measured, or ``out`` already holds a
    gate. The caller turns ``result.exit_code`` into the exit status (1: a gated call regressed).
    """
    settings = settings or ABSettings()
    if (
        settings.total_rounds < 2
        or min(settings.processes, settings.rounds, settings.calls, settings.threads) < 1
    ):
        raise UserError("need at least 2 rounds in all, and --processes, --rounds, --calls, --threads >= 1")
    if settings.clock not in CLOCKS:
        raise UserError(f"--clock: expected one of {', '.join(CLOCKS)}, got {settings.clock!r}")
    change_root = Path(change_root or REPO_ROOT).resolve()
    repo = Path(repo or change_root)
    out = Path(out)
    if (out / "gate.json").exists() or any((out / side).exists() for side in SIDES):
        raise UserError(f"{out}: already holds a gate run; remove it or choose another --out")
    sha, base_desc = resolve_base(repo, against)
    change_desc = describe_change(change_root)
    t0 = time.perf_counter()
    # a CI timeout's SIGTERM unwinds like Ctrl-C, so the workers end and the temporary worktree is removed
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        samples, startup, meta, base_root = _measure_in_worktree(
            settings, repo, sha, change_root, cache_root, base_desc, change_desc, console
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    result = ABResult(
        settings, sha, base_desc, change_desc, meta["task"], str(base_root), samples, startup, wall
    )
    result.decide()
    write_gate_folder(result, out)
    return result


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _measure_in_worktree(
    settings: ABSettings,
    repo: Path,
    sha: str,
    change_root: Path,
    cache_root: Path | None,
    base_desc: str,
    change_desc: str,
    console: Console | None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[float]], dict[str, Any], Path]:
    """The inputs saved once, then ``measure_ab`` with the base checked out in a temporary worktree (its path
    is returned; it no longer exists)."""
    with tempfile.TemporaryDirectory(prefix="dde-gate-") as tmp, base_worktree(repo, sha) as base_root:
        inputs = Path(tmp) / "inputs.safetensors"
        meta = save_inputs(settings, inputs, cache_root)
        if console is not None:
            console.print(
                f"A/B gate: change {change_desc} vs base {base_desc}: {settings.processes} worker pair(s) x "
                f"{settings.rounds} rounds x {settings.calls} calls of each model, {settings.threads} thread(s), "
                f"batch {settings.batch_size}"
            )
        who = {"base": f"base {base_desc}", "change": f"change {change_desc}"}
        samples, startup = measure_ab(
            settings, {"base": base_root, "change": change_root}, inputs, meta, who, console
        )
    return samples, startup, meta, base_root
