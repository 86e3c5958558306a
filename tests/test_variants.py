"""Run-option variants (``--variants int8,ort``, dde_bench/bench/variants.py): checked against the plain path before
they are timed (a disagreeing variant is an error row), skipped with a reason where they cannot run, accuracy of
int8 measured, rows valid against the JSON Schemas."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dde_bench.bench import variants
from dde_bench.bench.results import read_run
from dde_bench.bench.runner import RunConfig, Runner
from dde_bench.errors import UserError

FAST = dict(min_iters=3, min_time_s=0.02, quick=True)


def _run(tmp_path: Path, suite: str, name: str = "run", **kw) -> Path:
    cfg = RunConfig(suite=suite, device="cpu", out=tmp_path / name, **{**FAST, **kw})
    return Runner(cfg).run()


def _validate(run_dir: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from dde_bench.schemas import load_schema

    def errors(name, doc):
        schema = load_schema(name)
        return [e.message for e in jsonschema.validators.validator_for(schema)(schema).iter_errors(doc)]

    assert errors("run", json.loads((run_dir / "run.json").read_text())) == []
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        assert errors("results-row", json.loads(line)) == [], line[:200]


def test_int8_variants(use_bench_env, tmp_path):
    """teacher@int8 and student@int8, online and cached, in their models' interleaved groups, output checked."""
    run_dir = _run(
        tmp_path,
        "snli-ve",
        models=["rt-teacher", "rt-student"],
        scenarios=["online", "cached"],
        batch_sizes=[2],
        variants=["int8"],
    )
    info, rows, _ = read_run(run_dir)
    assert info["settings"]["variants"] == ["int8"]
    assert set(rows.model) == {"rt-teacher", "rt-student", "rt-teacher@int8", "rt-student@int8"}
    assert (rows.status == "ok").all(), rows[["model", "status", "error"]]
    q = rows[rows.model.str.endswith("@int8")]
    assert set(zip(q.model, q.scenario, strict=True)) == {
        (m, s) for m in ("rt-teacher@int8", "rt-student@int8") for s in ("online", "cached")
    }
    # like with like: an int8 model against the fp32 teacher, and against its own plain model
    assert set(q.teacher_model) == {"rt-teacher"}
    assert (q.speedup_vs_plain > 0).all()
    stu = q[q.model == "rt-student@int8"]
    assert (stu.speedup_vs_teacher > 0).all() and stu.speedup_ci_low.notna().all()
    assert (q.rel_diff_vs_plain <= variants.INT8_REL_TOL).all() and (q.max_abs_diff_vs_plain > 0).all()
    assert q.argmax_agreement_vs_plain.between(0, 1).all()
    assert (q.flops_per_item > 0).all()  # the fp32 arithmetic's count (fp32-equivalent utilisation)
    assert all("quantize_dynamic" in n for n in q.note)
    # int8 weights (packed by fbgemm, invisible to the tensor tracker) are counted: about a quarter of fp32's
    for scen in ("online", "cached"):
        w = rows[rows.scenario == scen].set_index("model").weights_mb
        assert 0.2 < w["rt-student@int8"] / w["rt-student"] < 0.6, w
    # the int8 student's cache is built by its own (int8) image tower: its cost is measured, not the fp32 one's
    cached = rows[(rows.scenario == "cached") & rows.model.str.startswith("rt-student")].set_index("model")
    assert (cached.cache_build_s > 0).all()
    assert cached.loc["rt-student@int8", "cache_build_s"] != cached.loc["rt-student", "cache_build_s"]
    _validate(run_dir)


def _checkpoints(tmp_path: Path, env: dict) -> None:
    from conftest import write_checkpoint_pair

    write_checkpoint_pair(env, tmp_path, "q")


def test_int8_accuracy_is_measured(use_bench_env, tmp_path):
    """An int8 variant of a model with weights gets its own accuracy and prediction file (not its plain model's)."""
    _checkpoints(tmp_path, use_bench_env)
    run_dir = _run(
        tmp_path,
        "nlvr2",
        models=["q-teacher", "q-student"],
        scenarios=["cached"],
        batch_sizes=[4],
        variants=["int8"],
    )
    rows = read_run(run_dir)[1].set_index("model")
    for m in ("q-teacher@int8", "q-student@int8"):
        assert (
            0
            <= rows.loc[m, "accuracy_ci_low"]
            <= rows.loc[m, "accuracy"]
            <= rows.loc[m, "accuracy_ci_high"]
            <= 1
        )
        assert (run_dir / "predictions" / f"{m}.csv").is_file()
    assert (run_dir / "predictions" / "q-student.csv").is_file()


def test_broken_int8_variant_is_an_error_row(use_bench_env, tmp_path, monkeypatch):
    """A quantised model whose output disagrees with the fp32 plain path is not timed: its row says why."""
    real = variants.int8_model

    class Shift(torch.nn.Module):
        def forward(self, x):
            return x + 10.0

    def broken(model):
        q = real(model)
        q.head.append(Shift())  # every logit moved by 10: far beyond int8 rounding
        return q

    monkeypatch.setattr(variants, "int8_model", broken)
    run_dir = _run(
        tmp_path, "vqa", models=["rt-teacher"], scenarios=["online"], batch_sizes=[1], variants=["int8"]
    )
    rows = read_run(run_dir)[1].set_index("model")
    assert rows.loc["rt-teacher@int8", "status"] == "error"
    assert "int8 output differs from the fp32 plain path" in rows.loc["rt-teacher@int8", "error"]
    assert rows.loc["rt-teacher", "status"] == "ok"  # the plain path is still measured


def test_int8_check_tolerance():
    ref = torch.tensor([[2.0, -1.0, 0.5]])
    ok = variants.check("int8", ref + 0.1, ref)
    assert ok["rel_diff_vs_plain"] == pytest.approx(0.05) and ok["argmax_agreement_vs_plain"] == 1.0
    with pytest.raises(variants.Mismatch, match="differs from the fp32 plain path by 50.0%"):
        variants.check("int8", ref + 1.0, ref)
    with pytest.raises(variants.Mismatch, match="shape"):
        variants.check("int8", ref[:, :2], ref)
    with pytest.raises(variants.Mismatch, match=r"ort output differs .*tolerance 0.001"):
        variants.check("ort", ref + 0.01, ref)


def test_int8_of_a_bf16_run_is_skipped(use_bench_env, tmp_path):
    run_dir = _run(
        tmp_path,
        "vqa",
        models=["rt-teacher", "rt-student"],
        scenarios=["cached"],
        batch_sizes=[1],
        dtypes=["bf16"],
        variants=["int8"],
    )
    rows = read_run(run_dir)[1].set_index("model")
    for m in ("rt-teacher@int8", "rt-student@int8"):
        assert rows.loc[m, "status"] == "skipped" and "fp32 runs only (bf16)" in rows.loc[m, "error"]
    assert rows.loc["rt-student", "status"] == "ok"
    _validate(run_dir)


def test_unknown_variant_is_one_line(use_bench_env, tmp_path):
    with pytest.raises(UserError, match="--variants: unknown variant 'fp4'; known: int8, ort"):
        _run(tmp_path, "vqa", models=["rt-teacher"], variants=["fp4"])
    with pytest.raises(UserError, match="has its own option: --compile"):
        _run(tmp_path, "vqa", models=["rt-teacher"], variants=["compiled"])


def test_ort_missing_is_skipped(use_bench_env, tmp_path, monkeypatch):
    """Without onnxruntime the @ort rows are skipped with the reason (one line), never a crash."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    run_dir = _run(
        tmp_path,
        "vqa",
        models=["rt-teacher", "rt-student"],
        scenarios=["online"],
        batch_sizes=[1],
        variants=["ort"],
    )
    rows = read_run(run_dir)[1].set_index("model")
    for m in ("rt-teacher@ort", "rt-student@ort"):
        assert rows.loc[m, "status"] == "skipped"
        assert rows.loc[m, "error"] == "onnxruntime not installed: pip install 'dde-bench[ort]'"
    assert rows.loc["rt-student", "status"] == "ok"
    _validate(run_dir)


def test_ort_variants(use_bench_env, tmp_path):
    """teacher@ort and student@ort online and cached: exported once per (model, call, shapes, masks) into the
    cache, outputs within 1e-3 of ours, timed interleaved with ours; a second run reuses the exports."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    kw = dict(
        models=["rt-teacher", "rt-student"], scenarios=["online", "cached"], batch_sizes=[2], variants=["ort"]
    )
    run_dir = _run(tmp_path, "nlvr2", **kw)
    rows = read_run(run_dir)[1]
    assert (rows.status == "ok").all(), rows[["model", "status", "error"]]
    o = rows[rows.model.str.endswith("@ort")].set_index(["model", "scenario"])
    assert len(o) == 4
    assert (o.max_abs_diff_vs_plain <= variants.ORT_TOL).all() and (o.speedup_vs_plain > 0).all()
    # like with like: the ORT student against the ORT teacher
    assert o.loc[("rt-student@ort", "cached"), "teacher_model"] == "rt-teacher@ort"
    assert o.loc[("rt-teacher@ort", "online"), "teacher_model"] == "rt-teacher"
    assert o.loc[("rt-student@ort", "cached"), "speedup_vs_teacher"] > 0
    cache = Path(use_bench_env["DDE_BENCH_CACHE"]) / "onnx"
    files = sorted(p.name for p in cache.glob("rt-*.onnx"))
    # teacher online + cached (the same call and inputs: one export), student online + cached
    assert len([f for f in files if f.startswith("rt-teacher-forward-")]) >= 1
    assert any(f.startswith("rt-student-forward_cached-") for f in files)
    _validate(run_dir)
    again = read_run(_run(tmp_path, "nlvr2", name="again", **kw))[1]
    assert sorted(p.name for p in cache.glob("rt-*.onnx")) == files  # no new export for the same key
    assert (again[again.model.str.endswith("@ort")].status == "ok").all()


def test_ort_mismatch_is_an_error_row(use_bench_env, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from dde_bench.bench import ort

    real = ort.OrtModel.bind

    def off(self, method, *args):
        fn = real(self, method, *args)
        return lambda: fn() + 1.0

    monkeypatch.setattr(ort.OrtModel, "bind", off)
    run_dir = _run(
        tmp_path, "vqa", models=["rt-teacher"], scenarios=["online"], batch_sizes=[1], variants=["ort"]
    )
    rows = read_run(run_dir)[1].set_index("model")
    assert rows.loc["rt-teacher@ort", "status"] == "error"
    assert "ort output differs from the plain path (max abs diff 1" in rows.loc["rt-teacher@ort", "error"]
    assert rows.loc["rt-teacher", "status"] == "ok"
