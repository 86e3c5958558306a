"""The A/B speed gate: its decision on synthetic samples, choosing the base commit, a REV that cannot be
measured, and `dde-bench gate --against HEAD` end to end (unchanged code passes; compare and report read it)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dde_bench.bench.abgate import CHECKS, ABResult, ABSettings, ab_gate, resolve_base
from dde_bench.errors import UserError
from dde_bench.gate_probe import slowed
from dde_bench.resources import REPO_ROOT
from tests.test_compare import _exit


def _samples(rounds: int, calls: int, seed: int, drift: np.ndarray, student_ms: float, sigma: float) -> dict:
    rng = np.random.default_rng(seed)
    noise = lambda: rng.lognormal(0.0, sigma, size=(rounds, calls))  # noqa: E731
    t, st = 12.0 * noise() * drift[:, None], student_ms * noise() * drift[:, None]
    return {"teacher": t, "student_cached": st, "teacher_cpu": t, "student_cached_cpu": st}


def _decide(
    slower: float = 1.0, teacher_slower: float = 1.0, spread: float = 0.3, sigma: float = 0.05, seed: int = 0
):
    """An ABResult on synthetic samples: 30 rounds of 10 calls, both sides sharing each round's load."""
    drift = np.exp(np.random.default_rng(seed).normal(0.0, spread, size=30))
    base = _samples(30, 10, seed + 1, drift, 3.0, sigma)
    change = _samples(30, 10, seed + 2, drift, 3.0 * slower, sigma)
    change["teacher"] = change["teacher_cpu"] = change["teacher"] * teacher_slower
    sides = {"base": base, "change": change}
    r = ABResult(ABSettings(), "0" * 40, "base", "change", "nlvr2", "/nowhere", sides, {}, 1.0)
    r.decide()
    return r


def test_no_difference_passes() -> None:
    r = _decide()
    assert r.passed and r.exit_code == 0
    assert {v.verdict for v in r.checks.values()} == {"ok"}
    assert r.speedups["base"].ratio == pytest.approx(4.0, rel=0.05)


def test_thirty_percent_slower_student_fails() -> None:
    r = _decide(slower=1.3)
    assert not r.passed and r.exit_code == 1
    assert r.checks[CHECKS[0]].regressed and r.checks[CHECKS[2]].regressed  # the call and the speedup
    assert not r.checks[CHECKS[1]].regressed  # the teacher did not change
    assert r.checks[CHECKS[0]].ratio == pytest.approx(1.3, abs=0.05)
    assert "FAILED" in r.summary() and "student cached call" in r.summary()


def test_slower_teacher_fails_its_own_check_only() -> None:
    r = _decide(teacher_slower=1.3)
    assert [n for n, v in r.checks.items() if v.regressed] == [CHECKS[1]]
    assert r.checks[CHECKS[2]].verdict == "improved"  # a slower teacher makes the student relatively cheaper


def test_noisy_but_unchanged_passes() -> None:
    """Per-call noise of 20% (about twice what CPU times showed at a load of 5 on 2 cores) and load swinging 2x
    between rounds: no false alarm over 20 seeds, while a 30% slowdown at that noise is still caught."""
    assert all(_decide(spread=0.7, sigma=0.2, seed=s).passed for s in range(20))
    assert not _decide(slower=1.3, spread=0.7, sigma=0.2).passed


def test_outputs_text_markdown_json() -> None:
    r = _decide(slower=1.3)
    assert "regressed" in r.to_markdown() and "| student cached call |" in r.to_markdown()
    assert "A/B speed gate" in r.to_text()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["passed"] is False and d["checks"][CHECKS[0]]["verdict"] == "regressed"
    assert len(d["round_medians_ms"]["base"]["teacher_cpu"]) == 30


def test_injected_slowdown_has_the_harness_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    def call() -> int:
        time.sleep(0.02)
        return 7

    assert slowed(call, "cached") is call
    monkeypatch.setenv("DDE_BENCH_INJECT_SLOWDOWN", "online=0.5")
    assert slowed(call, "cached") is call
    monkeypatch.setenv("DDE_BENCH_INJECT_SLOWDOWN", "cached=0.5")
    t0 = time.perf_counter()
    assert slowed(call, "cached")() == 7
    assert time.perf_counter() - t0 >= 0.029


# -------------------------------------------------------------------------------------- git and REVs


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _commit(repo: Path, name: str, text: str) -> str:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", name)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A git repository whose dde_bench has no modeling package (an 'old REV' the probe cannot measure)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _commit(repo, "dde_bench/__init__.py", '"""an old dde-bench"""\n')
    _commit(repo, "README.md", "second commit\n")
    return repo


def test_resolve_base(tiny_repo: Path) -> None:
    first, second = _git(tiny_repo, "rev-parse", "HEAD~1"), _git(tiny_repo, "rev-parse", "HEAD")
    assert resolve_base(tiny_repo, "auto") == (
        first,
        f"HEAD~1 ({first[:10]})",
    )  # on main: the previous commit
    _git(tiny_repo, "checkout", "-q", "-b", "feature")
    assert resolve_base(tiny_repo, "auto")[0] == first  # a branch with no commits of its own: HEAD~1 too
    _commit(tiny_repo, "a.txt", "a\n")
    _commit(tiny_repo, "b.txt", "b\n")
    assert resolve_base(tiny_repo, "auto") == (second, f"merge base with main ({second[:10]})")
    assert resolve_base(tiny_repo, "main")[0] == second
    with pytest.raises(UserError, match="--against nope: not a commit"):
        resolve_base(tiny_repo, "nope")


def test_rev_that_cannot_be_measured_is_one_line(tiny_repo: Path, use_bench_env, tmp_path: Path) -> None:
    settings = ABSettings(processes=1, rounds=2, calls=1, warmup=1)
    with pytest.raises(UserError) as e:
        ab_gate("HEAD", tmp_path / "gate", settings, repo=tiny_repo, change_root=REPO_ROOT)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("base HEAD (") and "cannot be measured through dde_bench.modeling" in msg
    assert "No module named 'dde_bench.modeling'" in msg
    assert not (tmp_path / "gate").exists()
    assert "dde-gate-base" not in _git(tiny_repo, "worktree", "list")  # the temporary worktree is gone


def test_gate_needs_a_run_or_against() -> None:
    code, msg = _exit(["gate"])
    assert code == 2 and "--against REV" in msg


@pytest.mark.slow  # 12-35 s: two worker processes import torch, one worktree checkout, a report
def test_against_head_unchanged_passes(use_bench_env, tmp_path: Path) -> None:
    """This checkout against its own HEAD (the same modeling code): passes; compare and report read the folders."""
    if subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "gate"
    args = [
        "gate",
        "--against",
        "HEAD",
        "--out",
        str(out),
        "--processes",
        "1",
        "--rounds",
        "4",
        "--calls",
        "3",
    ]
    code, text = _exit(args)
    assert code == 0, text
    assert "A/B gate PASSED" in text and "wrote" in text
    data = json.loads((out / "gate.json").read_text())
    assert data["passed"] and data["base_rev"] == _git(REPO_ROOT, "rev-parse", "HEAD")
    assert len(data["round_medians_ms"]["change"]["student_cached"]) == 4
    assert not Path(data["base_worktree"]).exists()
    assert data["base_worktree"] not in _git(REPO_ROOT, "worktree", "list")  # removed afterwards
    for side in ("base", "change"):
        rows = [json.loads(ln) for ln in (out / side / "results.jsonl").read_text().splitlines()]
        assert [r["model"] for r in rows] == ["tiny-teacher", "tiny-student"]
        assert all(len(r["latency_samples_ms"]) == 12 for r in rows)
        assert rows[1]["speedup_vs_teacher"] > 1
    change = [json.loads(ln) for ln in (out / "change" / "results.jsonl").read_text().splitlines()]
    assert change[1]["vs_base_verdict"] == "ok"
    assert _exit(["compare", str(out / "base"), str(out / "change"), "--format", "json"])[0] in (0, 1)
    assert _exit(["report", str(out / "base"), str(out / "change"), "--out", str(tmp_path / "rep")])[0] == 0
    assert (tmp_path / "rep" / "report.html").exists()
    with pytest.raises(UserError, match="already holds a gate run"):
        ab_gate("HEAD", out, ABSettings(processes=1, rounds=2, calls=1))
