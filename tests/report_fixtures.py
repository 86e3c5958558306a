"""TEST FIXTURE ONLY: writes small, realistic-looking run folders for the report / compare / gate tests.

Every number here is generated from a simple latency model with a seeded RNG. None of it is a measurement,
and nothing here is shipped as results.
"""

from __future__ import annotations

import atexit
import csv
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dde_bench.bench.schema import COLUMNS, RAW_SAMPLES_KEY, SCHEMA_VERSION

MODELS = {
    # name: (kind, accuracy, per-item joint-or-tower cost factor)
    "tiny-teacher": ("teacher", 0.726),
    "tiny-student": ("student", 0.742),
    "tiny-student-nodistill": ("student", 0.512),
    "hf-vilt-tiny": ("hf-vilt", 0.726),
}
PAPER_MODELS = {  # paper size, random weights (speed only): accuracy n/a, measured at batch 8 only
    "vilt-b32-teacher": ("teacher", None),
    "dide-b32-student": ("student", None),
    "hf-vilt-b32": ("hf-vilt", None),
}
PAPER_BATCH = 8
PAPER_SAMPLES = 5  # paper-size rows are timed few times on CPU
GALLERY_SAMPLES = 12
BATCH_SIZES = (1, 8, 32)
GALLERY_SIZES = (10, 100, 1000, 10000, 100000)
TEACHER_GALLERY_MAX = 10000  # the teacher is too slow to score 100k images per query: that row is absent
N_SAMPLES = 40
KINDS = {**MODELS, **PAPER_MODELS}


def _latency_ms(model: str, scenario: str, batch: int) -> tuple[float, dict[str, float]]:
    """Median call latency and its per-stage split, from a toy cost model (NLVR2: two images per item)."""
    scale = 40.0 if model in PAPER_MODELS else 1.0
    joint = 2 * (0.6 + 1.8 * batch) * scale  # teacher: two joint passes
    kind = KINDS[model][0]
    if kind == "teacher":
        return joint, {"joint": joint}
    if kind == "hf-vilt":
        t = joint * 1.35
        return t, {"joint": t}
    image = 2 * (0.5 + 1.35 * batch) * scale
    text = (0.4 + 0.45 * batch) * scale / (1.5 if scale > 1 else 1.0)  # paper size: above its FLOP ratio
    fusion = 0.05 + 0.05 * batch
    if scenario == "online":
        return image + text + fusion, {"image_tower": image, "text_tower": text, "fusion_head": fusion}
    return text + fusion, {"text_tower": text, "fusion_head": fusion}


def _gallery_ms(model: str, n: int) -> tuple[float, float | None]:
    """Latency of scoring one text against n images, and the cache build time (s) for the student."""
    kind = KINDS[model][0]
    if kind == "teacher":
        return 1.8 * n + 0.6, None
    text = 0.43
    return text + 0.004 * n, (20.0 + 1.2 * n) / 1000.0


def _stats(samples: np.ndarray, items: int) -> dict[str, float]:
    q25, q50, q75, q90, q99 = np.percentile(samples, [25, 50, 75, 90, 99])
    return {
        "latency_p50_ms": float(q50),
        "latency_iqr_ms": float(q75 - q25),
        "latency_p90_ms": float(q90),
        "latency_p99_ms": float(q99),
        "latency_mean_ms": float(samples.mean()),
        "n_samples": int(samples.size),
        "throughput_per_s": float(items * samples.size / (samples.sum() / 1000.0)),
    }


def make_run(
    run_dir: Path,
    seed: int = 0,
    slowdown: dict[tuple[str, str], float] | None = None,
    schema_version: int = SCHEMA_VERSION,
    device: str = "cpu",
    dtype: str = "fp32",
    git_commit: str = "97b1c11",
    models: tuple[str, ...] = tuple(MODELS),
    truncate_last_line: bool = False,
    speed: float = 1.0,
    paper_size: bool = False,
    skipped_rows: bool = False,
) -> Path:
    """Write a fixture run folder and return it.

    slowdown: {(model, scenario): factor} multiplies that row's raw samples (e.g. 1.3 = 30% slower).
    speed: divides every latency (a faster machine), e.g. 8.0 for a GPU-like run.
    paper_size: add the paper-size models (random weights: no accuracy) at batch 8, timed PAPER_SAMPLES times,
        online and cached, and their gallery rows (the teacher's skipped over its time budget), as the harness
        writes them.
    skipped_rows: write the tiny teacher's gallery row at the largest size as the harness does (status skipped,
        the model's accuracy copied onto it) instead of leaving it out.
    """
    rng = np.random.default_rng(seed)
    slowdown = slowdown or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "schema_version": schema_version,
        "created": "2025-01-01T00:00:00+00:00",
        "fixture": "TEST FIXTURE - synthetic numbers, not a measurement",
        "settings": {
            "suite": "nlvr2",
            "device": device,
            "models": list(models) + (list(PAPER_MODELS) if paper_size else []),
            "scenarios": ["online", "cached", "gallery"],
            "dtypes": [dtype],
            "batch_sizes": list(BATCH_SIZES),
            "gallery_sizes": list(GALLERY_SIZES),
            "timing_rule": {
                "min_iters": 10,
                "min_time_s": 1.0,
                "warmup_iters": 3,
                "warmup_s": 0.2,
                "max_time_s": 60.0,
            },
            "threads": 2,
            "seed": seed,
        },
        "environment": {
            "python": "3.11.2",
            "platform": "Linux-fixture",
            "torch": "2.13.0+cpu" if device == "cpu" else "2.13.0+cu128",
            "transformers": "4.56.0",
            "cpu": "Fixture CPU @ 2.0GHz",
            "cpu_count": 2,
            "threads": 2,
            "device": device,
            "gpu": "n/a" if device == "cpu" else "Fixture GPU 80GB",
            "driver": "n/a" if device == "cpu" else "570.00",
            "cuda_available": device != "cpu",
            "cuda_version": "n/a" if device == "cpu" else "12.8",
            "git_commit": git_commit,
        },
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    rows: list[dict] = []

    def base(model: str, scenario: str, batch: int, gallery: int | None) -> dict:
        kind, acc = KINDS[model]
        row = dict.fromkeys(COLUMNS)
        row.update(
            schema_version=schema_version,
            suite="nlvr2",
            task="nlvr2",
            model=model,
            model_kind=kind,
            size="b32" if model in PAPER_MODELS else "tiny",
            scenario=scenario,
            batch_size=batch,
            gallery_size=gallery,
            dtype=dtype,
            device=device,
            threads=2,
            status="ok",
            accuracy_metric="accuracy",
            timestamp=f"2025-01-01T00:00:{len(rows):02d}Z",
        )
        if acc is not None:  # the harness copies a model's accuracy onto every row of it
            half = 1.96 * np.sqrt(acc * (1 - acc) / 1000)
            row.update(
                accuracy=acc,
                accuracy_ci_low=acc - half,
                accuracy_ci_high=acc + half,
                consistency=max(0.0, acc - 0.3),
            )
        if kind != "teacher":
            row["teacher_model"] = "vilt-b32-teacher" if model in PAPER_MODELS else "tiny-teacher"
        return row

    def samples_for(median: float, model: str, scenario: str, n: int = N_SAMPLES) -> np.ndarray:
        s = median / speed * np.exp(rng.normal(0.0, 0.06, n))
        s[rng.integers(0, n)] *= 1.6  # one slow outlier call, as real runs have
        return s * slowdown.get((model, scenario), 1.0)

    groups = [("tiny-teacher", list(models), BATCH_SIZES, N_SAMPLES)]
    if paper_size:
        groups.append(("vilt-b32-teacher", list(PAPER_MODELS), (PAPER_BATCH,), PAPER_SAMPLES))
    for scenario, (teacher, group, batches, n_calls) in (
        (s, g) for s in ("online", "cached") for g in groups
    ):
        for batch in batches:
            teacher_med, _ = _latency_ms(teacher, scenario, batch)
            for model in group:
                kind = KINDS[model][0]
                if model == "hf-vilt-b32" and scenario == "cached":
                    continue  # the reference row runs online only
                med, stages = _latency_ms(model, scenario, batch)
                row = base(model, scenario, batch, None)
                samples = samples_for(med, model, scenario, n_calls)
                row.update(_stats(samples, batch))
                factor = float(np.median(samples)) / med
                row["stage_ms"] = {k: v * factor for k, v in stages.items()}
                scale = 50.0 if model in PAPER_MODELS else 1.0
                # the cached student needs its text tower only; online both towers (heavier than the teacher)
                weights_mb = scale * (9.0 if kind != "student" else (18.0 if scenario == "online" else 9.0))
                act = scale * (1.6 * batch if (kind != "student" or scenario == "online") else 0.35 * batch)
                row.update(weights_mb=weights_mb, activation_peak_mb=act, tensor_peak_mb=weights_mb + act)
                row["peak_mem_mb"] = weights_mb + act
                row["rss_peak_mb"] = 310.0 + row["peak_mem_mb"]
                row["flops_per_item"] = scale * (
                    2.1e8 if kind != "student" else (1.8e8 if scenario == "online" else 2.3e7)
                )
                if device.startswith("cuda"):
                    row["energy_j_per_item"] = 0.02 * med / batch * scale / 50
                if kind != "teacher":
                    sp = teacher_med / speed / float(np.median(samples))
                    row.update(
                        speedup_vs_teacher=sp,
                        speedup_ci_low=sp * 0.94,
                        speedup_ci_high=sp * 1.06,
                        speedup_flop_bound=(9.5 if scenario == "cached" else 1.15)
                        if kind == "student"
                        else 1.0,
                    )
                if kind == "student" and scenario == "cached":
                    row["cache_build_s"] = (20.0 + 1.2 * 1000) / 1000.0 / speed
                    row["cache_bytes_per_image"] = 2 * 128 * 4
                row[RAW_SAMPLES_KEY] = [round(float(x), 4) for x in samples]
                rows.append(row)

    for n in GALLERY_SIZES:
        for model in ("tiny-teacher", "tiny-student"):
            if model not in models:
                continue
            if model == "tiny-teacher" and n > TEACHER_GALLERY_MAX:
                if skipped_rows:
                    row = base(model, "gallery", n, n)
                    row.update(status="skipped", error=f"not measured: one query needs {n} joint passes")
                    rows.append(row)
                continue
            med, build = _gallery_ms(model, n)
            row = base(model, "gallery", n, n)
            samples = samples_for(med, model, "gallery", GALLERY_SAMPLES)
            row.update(_stats(samples, n))
            row["cache_build_s"] = None if build is None else build / speed
            row["peak_mem_mb"] = 14.0 + 0.001 * n if model == "tiny-student" else 9.0 + 0.05 * min(n, 256)
            row[RAW_SAMPLES_KEY] = [round(float(x), 4) for x in samples]
            rows.append(row)
        # the harness stores each student gallery row's break-even count (seconds: build / (teacher - student))
        by_model = {
            r["model"]: r
            for r in rows
            if r["scenario"] == "gallery" and r["gallery_size"] == n and r["status"] == "ok"
        }
        t, st = by_model.get("tiny-teacher"), by_model.get("tiny-student")
        if t and st and st["cache_build_s"] is not None and t["latency_p50_ms"] > st["latency_p50_ms"]:
            st["break_even_queries"] = st["cache_build_s"] / (
                (t["latency_p50_ms"] - st["latency_p50_ms"]) / 1e3
            )
    if paper_size:  # the paper-size teacher is over its gallery budget at every size; its student is timed
        for n in (10, 1000):
            row = base("vilt-b32-teacher", "gallery", n, n)
            row.update(status="skipped", error=f"not measured: one query needs {n} joint passes")
            rows.append(row)
            med, build = _gallery_ms("dide-b32-student", n)
            row = base("dide-b32-student", "gallery", n, n)
            samples = samples_for(med * 20, "dide-b32-student", "gallery", 3)
            row.update(_stats(samples, n), cache_build_s=build * 30)
            row[RAW_SAMPLES_KEY] = [round(float(x), 4) for x in samples]
            rows.append(row)

    with open(run_dir / "results.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        if truncate_last_line:
            f.write(json.dumps(rows[0])[:37])
    with open(run_dir / "results.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()})
    return run_dir


@functools.cache
def rendered_fixture_report() -> Path:
    """Render the default fixture run once per test session (rendering takes seconds on a shared CPU).

    Returns the report folder; the run folder is its sibling ``runs/cpu-run``. Removed at interpreter exit.
    """
    from dde_bench.report.render import render_report

    root = Path(tempfile.mkdtemp(prefix="dde-report-fixture-"))
    atexit.register(shutil.rmtree, root, True)
    run = make_run(root / "runs" / "cpu-run", seed=0, paper_size=True, skipped_rows=True)
    render_report([run], root / "out")
    return root / "out"
