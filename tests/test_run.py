"""The harness end to end on CPU with tiny random-weight models: every scenario, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dde_bench.bench.results import read_run
from dde_bench.bench.runner import RunConfig, Runner
from dde_bench.bench.schema import COLUMNS, RAW_SAMPLES_KEY

FAST = dict(min_iters=3, min_time_s=0.02, quick=True)


def _run(tmp_path: Path, suite: str, **kw) -> Path:
    cfg = RunConfig(suite=suite, device="cpu", out=tmp_path / f"run-{suite}", **{**FAST, **kw})
    return Runner(cfg).run()


@pytest.mark.parametrize("suite", ["nlvr2", "vqa", "snli-ve"])
def test_run_every_scenario(use_bench_env, tmp_path, suite):
    run_dir = _run(tmp_path, suite)
    info, rows, raw = read_run(run_dir)
    assert info["settings"]["suite"] == suite and info["environment"]["threads"] >= 1
    # the device's measured matmul rate is recorded, and every timed row's share of it (a GEMM is the easiest
    # dense work there is: no model call beats it by much)
    peak = info["settings"]["gemm_peak"]["fp32"]
    assert peak["flops_per_s"] > 1e8 and "best of" in peak["method"]
    assert peak["shape"][0] in (256, 512, 1024)  # --quick: 1024 at most, smaller where one product is slow
    timed = rows[(rows.status == "ok") & rows.flops_per_item.notna()]
    assert ((timed.gemm_peak_share > 0) & (timed.gemm_peak_share < 2)).all()
    assert (timed.achieved_flops_per_s == timed.flops_per_item * timed.throughput_per_s).all()
    phases = json.loads((run_dir / "phases.json").read_text())
    # online and cached are one interleaved group per teacher and batch size (the teacher timed once)
    assert {"data", "GEMM peak", "online+cached fp32", "gallery fp32"} <= set(phases)
    assert "cached fp32" not in phases
    assert list(pd.read_csv(run_dir / "results.csv").columns[: len(COLUMNS)]) == list(COLUMNS)
    ok = rows[rows.status == "ok"]
    for scenario in ("online", "cached"):
        for model in ("rt-teacher", "rt-student"):
            for b in (1, 4):
                r = ok[(ok.model == model) & (ok.scenario == scenario) & (ok.batch_size == b)]
                assert len(r) == 1, (model, scenario, b)
                r = r.iloc[0]
                assert r.latency_p50_ms > 0 and r.throughput_per_s > 0 and r.flops_per_item > 0
                assert r.n_samples >= 3
                assert pd.isna(r.accuracy)  # random weights: accuracy is not measured, never invented
    # the teacher's call is the same in both scenarios: one measurement, two rows that say so
    samples = {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["model"] == "rt-teacher" and r["scenario"] in ("online", "cached") and r["dtype"] == "fp32":
            samples[(r["scenario"], r["batch_size"])] = r[RAW_SAMPLES_KEY]
            assert "one timed call for online and cached" in r["note"]
    assert (
        samples[("online", 1)] == samples[("cached", 1)] and samples[("online", 4)] == samples[("cached", 4)]
    )
    # the reference row runs online only, with the teacher's weights
    assert set(ok[ok.model == "rt-hf"].scenario) == {"online"}
    student_cached = ok[(ok.model == "rt-student") & (ok.scenario == "cached")]
    assert (student_cached.speedup_vs_teacher > 0).all()
    assert (student_cached.speedup_ci_low <= student_cached.speedup_vs_teacher).all()
    assert (student_cached.speedup_flop_bound > 1.5).all()  # no image tower in the cached path
    assert (student_cached.cache_bytes_per_image == 128 * 4).all()
    stages = student_cached.iloc[0].stage_ms
    assert set(stages) == {"text_tower", "fusion_head"}
    online = ok[(ok.model == "rt-student") & (ok.scenario == "online")].iloc[0].stage_ms
    assert set(online) == {"image_tower", "text_tower", "fusion_head"}
    # gallery: the student at every size, the teacher only where its N passes fit the time budget
    gal = rows[rows.scenario == "gallery"]
    assert set(gal[(gal.model == "rt-student") & (gal.status == "ok")].gallery_size) == {2, 5000}
    assert set(gal[(gal.model == "rt-teacher") & (gal.status == "ok")].gallery_size) == {2}
    skipped = gal[(gal.model == "rt-teacher") & (gal.gallery_size == 5000)]
    assert (skipped.status == "skipped").all() and skipped.iloc[0].error.startswith("not measured")
    # the students' gallery features come from on-disk stores (deleted after the scenario by default)
    stud = gal[gal.model.str.startswith("rt-student") & (gal.status == "ok")]
    assert set(stud.store_kind) == {"pooled", "fusion"} and (stud.store_images == 5000).all()
    assert (stud.store_shards == 2).all() and (stud.store_bytes > 0).all()
    fused = stud[stud.model == "rt-student@fusion-cache"]
    assert (fused.speedup_vs_plain > 0).all() and (fused.store_kind == "fusion").all()
    assert not (run_dir / "stores").exists()
    # raw samples are kept in results.jsonl for compare and the plots
    first = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])
    assert len(first[RAW_SAMPLES_KEY]) == first["n_samples"]
    assert all(len(v) > 0 for v in raw.values())


def test_resume_skips_finished_rows(use_bench_env, tmp_path):
    run_dir = _run(tmp_path, "snli-ve", scenarios=["online"], batch_sizes=[1])
    n = len(read_run(run_dir)[1])
    # a second pass over the same folder with --resume measures only what is missing
    Runner(
        RunConfig(
            suite="snli-ve",
            device="cpu",
            out=run_dir,
            resume=True,
            resume_add=True,
            scenarios=["online", "cached"],
            batch_sizes=[1],
            **FAST,
        )
    ).run()
    rows = read_run(run_dir)[1]
    assert len(rows[rows.scenario == "online"]) == n
    assert len(rows[rows.scenario == "cached"]) == 2
    # without --resume the folder is not overwritten
    from dde_bench.errors import UserError

    with pytest.raises(UserError, match="already holds results"):
        Runner(RunConfig(suite="snli-ve", device="cpu", out=run_dir, **FAST)).run()


def test_accuracy_of_checkpoints(use_bench_env, tmp_path):
    """Models given as checkpoint paths get accuracy with a bootstrap interval and prediction files."""
    from conftest import write_checkpoint_pair

    write_checkpoint_pair(use_bench_env, tmp_path, "ck")
    run_dir = _run(
        tmp_path, "nlvr2", models=["ck-teacher", "ck-student"], scenarios=["cached"], batch_sizes=[4]
    )
    rows = read_run(run_dir)[1]
    for _, r in rows.iterrows():
        assert 0.0 <= r.accuracy_ci_low <= r.accuracy <= r.accuracy_ci_high <= 1.0
        assert 0.0 <= r.consistency <= 1.0
        assert r.accuracy_metric == "accuracy"
    lines = (run_dir / "predictions" / "ck-student.csv").read_text().splitlines()
    assert len(lines) == 48 and lines[0].split(",")[1] in ("True", "False")


def _cli(*args, env_extra: dict | None = None):
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "dde_bench.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--suite", "nope"], "unknown suite 'nope'"),
        (["run", "--suite", "nlvr2", "--models", "nope"], "unknown model 'nope'"),
        (["run", "--suite", "nlvr2", "--scenarios", "warp"], "unknown scenario 'warp'"),
        (["run", "--suite", "nlvr2", "--batch-sizes", "8,x"], "--batch-sizes must be"),
        (["run", "--suite", "nlvr2", "--resume"], "--resume needs --out"),
        (["run", "--suite", "nlvr2", "--min-iters", "0"], "--min-iters must be at least 1"),
        (["run", "--suite", "nlvr2", "--min-time", "-1"], "--min-time must be 0 or more"),
        (["run", "--suite", "nlvr2", "--max-time", "0"], "--max-time must be more than 0"),
        (["run", "--suite", "nlvr2", "--rel-ci", "1.5"], "--rel-ci must be a fraction in [0, 1)"),
        (["run", "--suite", "nlvr2", "--threads", "0"], "--threads must be at least 1"),
        (["run", "--suite", "nlvr2", "--models", "tiny-teacher", "--dtype", "fp64"], "unknown dtype 'fp64'"),
    ],
)
def test_run_bad_input_is_one_line(use_bench_env, args, message):
    p = _cli(*args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(use_bench_env):
    p = _cli("run", "--suite", "nlvr2", "--device", "cuda")
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "Traceback" not in p.stderr


def test_missing_data_folder_is_one_line(use_bench_env, tmp_path):
    suites = Path(use_bench_env["DDE_BENCH_SUITES"])
    card = yaml.safe_load((suites / "vqa.yaml").read_text())
    card["data"] = {"source": "dir", "data_dir": str(tmp_path / "no-such-vqa")}
    other = tmp_path / "suites"
    other.mkdir()
    (other / "vqa.yaml").write_text(yaml.safe_dump(card))
    p = _cli("run", "--suite", "vqa", "--quick", env_extra={"DDE_BENCH_SUITES": str(other)})
    assert p.returncode == 2 and "no such data folder" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_on_cuda(use_bench_env, tmp_path):
    """CUDA events, CUDA memory stats and NVML energy: runs where CUDA exists, skips elsewhere."""
    cfg = RunConfig(suite="vqa", device="cuda", out=tmp_path / "cuda", dtypes=["fp32", "bf16"], **FAST)
    rows = read_run(Runner(cfg).run())[1]
    ok = rows[rows.status == "ok"]
    assert (ok[ok.scenario != "gallery"].peak_mem_mb > 0).all()
    assert (ok.cuda_max_reserved_mb >= ok.peak_mem_mb).all()
    assert set(ok.dtype) == {"fp32", "bf16"}


def test_gallery_store_kept_and_tied_to_the_model(use_bench_env, tmp_path):
    from dde_bench.bench.featurestore import open_store

    run_dir = _run(tmp_path, "vqa", scenarios=["gallery"], gallery_sizes=[7, 300], keep_stores=True)
    info, rows, _ = read_run(run_dir)
    runner_stores = sorted(p.name for p in (run_dir / "stores").iterdir())
    assert runner_stores == ["rt-student-fusion-fp32", "rt-student-pooled-fp32"]
    pooled = open_store(run_dir / "stores" / "rt-student-pooled-fp32")
    fusion = open_store(run_dir / "stores" / "rt-student-fusion-fp32")
    assert pooled.count == fusion.count == 300 and fusion.manifest["model"] == "rt-student"
    assert pooled.manifest["model_hash"] == fusion.manifest["model_hash"]
    assert pooled.load_all().shape == (300, 128) and fusion.load_all().shape == (300, 256)
    gal = rows[(rows.scenario == "gallery") & (rows.gallery_size == 300)].set_index("model")
    assert gal.loc["rt-student", "cache_bytes_per_image"] == 128 * 4
    assert gal.loc["rt-student@fusion-cache", "cache_bytes_per_image"] == 256 * 4


def test_compile_variants(use_bench_env, tmp_path):
    """--compile adds MODEL@compiled rows (aot_eager here: no C++ toolchain needed), checked against the plain
    path and measured interleaved with it; the compiled student is compared with the compiled teacher."""
    run_dir = _run(
        tmp_path,
        "snli-ve",
        models=["rt-teacher", "rt-student"],
        scenarios=["cached"],
        batch_sizes=[2],
        compile="aot_eager",
    )
    _, rows, _ = read_run(run_dir)
    assert set(rows.model) == {"rt-teacher", "rt-student", "rt-teacher@compiled", "rt-student@compiled"}
    assert (rows.status == "ok").all(), rows[["model", "status", "error"]]
    comp = rows[rows.model.str.endswith("@compiled")].set_index("model")
    assert comp.loc["rt-student@compiled", "teacher_model"] == "rt-teacher@compiled"
    assert comp.loc["rt-teacher@compiled", "teacher_model"] == "rt-teacher"
    assert (comp.max_abs_diff_vs_plain < 1e-4).all() and (comp.compile_s > 0).all()
    assert (comp.speedup_vs_plain > 0).all() and (comp.speedup_vs_teacher > 0).all()
    assert "torch.compile(backend='aot_eager')" in comp.loc["rt-student@compiled", "note"]


def test_compile_unknown_backend_is_one_line(use_bench_env, tmp_path):
    from dde_bench.errors import UserError

    with pytest.raises(UserError, match="unknown torch.compile backend 'no-such-backend'; known: .*inductor"):
        _run(tmp_path, "vqa", models=["rt-teacher"], compile="no-such-backend")


def test_compile_mismatch_is_an_error_row(use_bench_env, tmp_path, monkeypatch):
    """A compiled call whose output disagrees with the plain path is not timed: its row says why."""
    from dde_bench.bench import workload as workload_mod

    real = workload_mod.compiled

    def off_by_one(fn, backend):
        c = real(fn, backend)
        return lambda *a: c(*a) + 1.0

    monkeypatch.setattr(workload_mod, "compiled", off_by_one)
    run_dir = _run(
        tmp_path, "vqa", models=["rt-teacher"], scenarios=["online"], batch_sizes=[1], compile="eager"
    )
    _, rows, _ = read_run(run_dir)
    bad = rows[rows.model == "rt-teacher@compiled"].iloc[0]
    assert bad.status == "error" and "differs from the plain path (max abs diff 1)" in bad.error
    assert rows[rows.model == "rt-teacher"].iloc[0].status == "ok"  # the plain path is still measured
