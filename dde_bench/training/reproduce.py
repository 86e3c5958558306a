"""``dde-bench reproduce``: the paper's ablation on the synthetic world, with tiny models.

For each seed: one teacher (with a pre-training stage, so the last row can distil from it), then five students
initialised from it: no distillation (ground truth only), soft labels only, attention distillation (+ ground
truth, since attention alone never trains the fusion MLP and head), soft + attention (the released recipe:
ground-truth weight 0), and soft + attention with the pre-training distillation stage as well.

Each row reports eval accuracy (mean and sample std over seeds; NLVR2 also consistency) and the model's measured
speedup over the teacher with cached image features (teacher: joint stack; student: text tower + fusion + head
against precomputed image features), measured interleaved in one process at batch 32
(``bench.timing.measure_interleaved`` + ``bench.stats.speedup``, ratio of medians with a bootstrap CI).
Written as ``results.csv`` (one row per model and seed), ``table.csv`` and ``table.md``.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import torch

from dde_bench.training.recipes import get_recipe, train_student, train_teacher
from dde_bench.training.trainer import LossWeights

VARIANTS: list[tuple[str, LossWeights, bool]] = [
    ("student, no distillation", LossWeights(ground_truth=1.0, soft=0.0, attention=0.0), False),
    ("student, soft labels", LossWeights(ground_truth=0.0, soft=1.0, attention=0.0), False),
    ("student, attention (+ ground truth)", LossWeights(ground_truth=1.0, soft=0.0, attention=1.0), False),
    ("student, soft + attention", LossWeights(ground_truth=0.0, soft=1.0, attention=1.0), False),
    ("student, soft + attention + pre-training distillation", LossWeights(0.0, 1.0, 1.0), True),
]
SLUGS = ["nodistill", "soft", "attention", "soft-attention", "soft-attention-pretrain"]


def measure_speedup(
    teacher_dir: Path,
    student_dir: Path,
    suite: dict,
    cache_root: Path,
    device: str,
    batch_size: int = 32,
    min_time_s: float = 2.0,
) -> dict:
    """Cached-image-feature speedup of a student over its teacher on one eval batch (ratio of medians)."""
    from dde_bench.bench.stats import speedup
    from dde_bench.bench.timing import measure_interleaved
    from dde_bench.env import resolve_device
    from dde_bench.modeling.checkpoint import load_student, load_teacher
    from dde_bench.training.trainer import load_task_data, to_device

    dev = resolve_device(device)
    teacher = load_teacher(teacher_dir).to(dev).eval()
    student = load_student(student_dir).to(dev).eval()
    split = suite.get("eval_split", "dev")
    _, _, sets, _ = load_task_data(suite, cache_root, teacher.config, (split,), (batch_size,))
    b = to_device(sets[split].batch(list(range(min(batch_size, len(sets[split]))))), dev)
    n = b["input_ids"].shape[0]
    with torch.inference_mode():
        feats = student.encode_images(b["pixel_values"], b.get("pixel_mask"))

        def run_teacher():
            return teacher(b["input_ids"], b["attention_mask"], b["pixel_values"], b.get("pixel_mask"))

        def run_student():
            return student.forward_cached(b["input_ids"], b["attention_mask"], feats)

        m = measure_interleaved(
            {"teacher": run_teacher, "student": run_student},
            device=dev,
            items_per_call=n,
            min_time_s=min_time_s,
        )
    est = speedup(m["teacher"].samples_s, m["student"].samples_s)
    return {
        "speedup": est.ratio,
        "speedup_ci_low": est.ci_low,
        "speedup_ci_high": est.ci_high,
        "batch_size": n,
        "threads": torch.get_num_threads(),
    }


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def run_reproduce(
    suite: dict,
    out: Path,
    seeds: int = 2,
    recipe_name: str = "quick",
    cache_root: Path = Path("reports/cache"),
    device: str = "auto",
    threads: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Train and measure every row for every seed; write results.csv, table.csv and table.md into ``out``."""
    recipe = get_recipe(recipe_name)
    if recipe.teacher_pretrain_steps <= 0 or recipe.student_pretrain_steps <= 0:
        from dataclasses import replace

        recipe = replace(
            recipe,
            teacher_pretrain_steps=max(recipe.teacher_pretrain_steps, 200),
            student_pretrain_steps=max(recipe.student_pretrain_steps, 100),
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    results_path = out / "results.csv"
    task = str(suite.get("task", suite.get("name")))
    fields = [
        "model",
        "seed",
        "accuracy",
        "consistency",
        "speedup",
        "speedup_ci_low",
        "speedup_ci_high",
        "train_seconds",
        "checkpoint",
    ]
    with open(results_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()

        def record(row: dict) -> None:
            rows.append(row)
            w.writerow({k: row.get(k, "") for k in fields})
            f.flush()

        for seed in range(seeds):
            t_dir = out / "checkpoints" / f"seed{seed}" / "teacher"
            t0 = time.time()
            if not (t_dir / "config.json").is_file():
                train_teacher(
                    suite,
                    t_dir,
                    recipe,
                    seed=seed,
                    device=device,
                    cache_root=cache_root,
                    threads=threads,
                    progress=progress,
                )
            tm = json.loads((t_dir / "config.json").read_text())["meta"]
            record(
                {
                    "model": "teacher (fusion encoder)",
                    "seed": seed,
                    **_metric_cols(tm),
                    "speedup": 1.0,
                    "train_seconds": tm.get("train_seconds", round(time.time() - t0, 1)),
                    "checkpoint": str(t_dir),
                }
            )
            for (label, weights, pre), slug in zip(VARIANTS, SLUGS, strict=True):
                s_dir = out / "checkpoints" / f"seed{seed}" / slug
                if not (s_dir / "config.json").is_file():
                    train_student(
                        suite,
                        t_dir,
                        s_dir,
                        weights,
                        recipe,
                        pretrain_distill=pre,
                        seed=seed,
                        device=device,
                        cache_root=cache_root,
                        threads=threads,
                        progress=progress,
                    )
                sm = json.loads((s_dir / "config.json").read_text())["meta"]
                sp = measure_speedup(t_dir, s_dir, suite, cache_root, device)
                record(
                    {
                        "model": label,
                        "seed": seed,
                        **_metric_cols(sm),
                        **sp,
                        "train_seconds": sm.get("train_seconds"),
                        "checkpoint": str(s_dir),
                    }
                )
    return [results_path, *write_table(rows, out, task, recipe_name, seeds)]


def _metric_cols(meta: dict) -> dict:
    m = meta.get("metrics") or {}
    return {"accuracy": m.get("accuracy"), "consistency": m.get("consistency")}


def write_table(rows: list[dict], out: Path, task: str, recipe_name: str, seeds: int) -> list[Path]:
    """Aggregate per-seed rows into the paper-style table (CSV and markdown)."""
    models: dict[str, list[dict]] = {}
    for r in rows:
        models.setdefault(r["model"], []).append(r)
    table = []
    for model, rs in models.items():
        acc = [float(r["accuracy"]) for r in rs if r.get("accuracy") is not None]
        con = [float(r["consistency"]) for r in rs if r.get("consistency") is not None]
        sp = [float(r["speedup"]) for r in rs if r.get("speedup") not in (None, "")]
        table.append(
            {
                "model": model,
                "accuracy": _fmt(acc),
                "consistency": _fmt(con) if task == "nlvr2" else "",
                "speedup (cached)": "1.0 (baseline)"
                if model.startswith("teacher")
                else (f"{statistics.median(sp):.2f}x" if sp else "n/a"),
                "seeds": len(rs),
            }
        )
    csv_path = out / "table.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    md_path = out / "table.md"
    cols = list(table[0])
    lines = [
        f"# DiDE ablation on the synthetic {task} world ({recipe_name} recipe, {seeds} seed(s))",
        "",
        "Accuracy in percent on the eval split, mean ± std over seeds. Speedup: teacher time / student time "
        "with cached image features (median of interleaved runs).",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]
