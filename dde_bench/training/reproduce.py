"""``dde-bench reproduce``: the paper's ablation on the synthetic world, with tiny models.

For each seed: one teacher (with a pre-training stage, so the last row can distil from it), then five students
initialised from it: no distillation (ground truth only), soft labels only, attention distillation (+ ground
truth, since attention alone never trains the fusion MLP and head), soft + attention (the released recipe:
ground-truth weight 0), and soft + attention with the pre-training distillation stage as well.

Each row reports eval accuracy (mean and sample std over seeds; NLVR2 also consistency) and the model's measured
speedup over the teacher with cached image features (teacher: joint stack; student: text tower + fusion + head
against precomputed image features), measured interleaved in one process at batch 32
(``bench.timing.measure_interleaved`` + ``bench.stats.speedup``, ratio of medians with a bootstrap CI).
Written as ``results.csv`` (one row per model and seed), ``table.csv`` and ``table.md``. With ``eval_every``
every fine-tuning stage (teacher and students) also evaluates every N steps, and the learning curves are written
as ``curves.csv`` (model, seed, step, accuracy) and ``curves.png`` (mean over seeds with the min-max band): a
distillation benefit shows as a student curve above the no-distillation one at equal steps, and a plateau shows
whether a gap is one of training length or of the model.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dde_bench.cards import SuiteCard
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


class EvalSplit:
    """A suite's eval split as a ``TaskDataset``, loaded once per model geometry (text length, image and patch
    size) and shared by every row's per-family scoring and speedup measurement."""

    def __init__(self, suite: SuiteCard, cache_root: Path):
        self.suite, self.cache_root = suite, Path(cache_root)
        self.split = suite.split
        self._sets: dict[tuple, object] = {}

    def get(self, cfg):
        from dde_bench.data.suite import load_suite_data

        key = (cfg.max_text_len, cfg.image_size, cfg.patch_size)
        if key not in self._sets:
            data = load_suite_data(self.suite, self.cache_root, cfg, (self.split,))
            self._sets[key] = data.datasets[self.split]
        return self._sets[key]


def measure_speedup(
    teacher_dir: Path,
    student_dir: Path,
    eval_split: EvalSplit,
    device: str,
    batch_size: int = 32,
    min_time_s: float = 2.0,
) -> dict:
    """Cached-image-feature speedup of a student over its teacher on one eval batch (ratio of medians)."""
    from dde_bench.bench.stats import speedup
    from dde_bench.bench.timing import measure_interleaved
    from dde_bench.env import resolve_device
    from dde_bench.modeling.checkpoint import load_student, load_teacher
    from dde_bench.training.trainer import to_device

    dev = resolve_device(device)
    teacher = load_teacher(teacher_dir).to(dev).eval()
    student = load_student(student_dir).to(dev).eval()
    data = eval_split.get(teacher.config)
    b = to_device(data.batch(list(range(min(batch_size, len(data))))), dev)
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


def suite_families(suite: SuiteCard) -> list[str]:
    """The statement families of a synthetic suite's world (empty for a suite on a real data folder)."""
    from dde_bench.data.cache import synth_settings
    from dde_bench.data.synth import TASK_FAMILIES

    if not suite.data.synthetic:
        return []
    settings = synth_settings(suite)
    return settings["families"] or list(TASK_FAMILIES[settings["task"]])


def family_accuracy(checkpoint: Path, eval_split: EvalSplit, device: str) -> dict[str, float]:
    """Eval accuracy (percent, the task's per-example score) of a checkpoint on each statement family of a
    synthetic suite, the family read from each text by ``synth.family_of``; {} if some text has none."""
    from dde_bench.data.synth import family_of
    from dde_bench.env import resolve_device
    from dde_bench.evaluation import evaluate
    from dde_bench.modeling.checkpoint import load_model

    dev = resolve_device(device)
    model = load_model(checkpoint).to(dev).eval()
    data = eval_split.get(model.config)
    fams = [family_of(e.text) for e in data.examples]
    if None in fams:
        return {}
    scores = evaluate(model, data, dev).scores
    out: dict[str, list[float]] = {}
    for f, sc in zip(fams, scores, strict=True):
        out.setdefault(f, []).append(sc)
    return {f: 100.0 * sum(v) / len(v) for f, v in sorted(out.items())}


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def run_reproduce(
    suite: SuiteCard,
    out: Path,
    seeds: int = 2,
    recipe_name: str = "quick",
    cache_root: Path | None = None,
    device: str = "auto",
    threads: int = 2,
    progress: bool = True,
    eval_every: int = 0,
    students: list[str] | None = None,
) -> list[Path]:
    """Train and measure every row for every seed; write results.csv, table.csv and table.md into ``out``
    (and with ``eval_every`` > 0 the learning curves, curves.csv and curves.png). ``students``: the student rows
    to run, by slug (:data:`SLUGS`); default all."""
    from dataclasses import replace

    from dde_bench import paths as home
    from dde_bench.data.cache import ensure_data
    from dde_bench.data.readers import COCO_CAPTIONS

    suite = SuiteCard.of(suite)
    cache_root = Path(cache_root) if cache_root else home.cache_root()
    recipe = get_recipe(recipe_name)
    if eval_every > 0:
        recipe = replace(recipe, eval_every=eval_every)
    skipped: dict[str, str] = {}
    if (ensure_data(suite, Path(cache_root), progress=progress) / COCO_CAPTIONS).is_file():
        recipe = replace(
            recipe,
            teacher_pretrain_steps=max(recipe.teacher_pretrain_steps, 200),
            student_pretrain_steps=max(recipe.student_pretrain_steps, 100),
        )
    else:  # no caption pool: no pre-training stage, so the rows that distil in it cannot run
        why = f"the data folder has no {COCO_CAPTIONS} (COCO captions) for the pre-training stage"
        recipe = replace(recipe, teacher_pretrain_steps=0, student_pretrain_steps=0)
        skipped = {slug: why for (_, _, pre), slug in zip(VARIANTS, SLUGS, strict=True) if pre}
        skipped["teacher pre-training"] = why
        for what in skipped:
            print(f"dde-bench: reproduce: skipped {what}: {why}", file=sys.stderr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    rows: list[dict] = []
    results_path = out / "results.csv"
    task = suite.task
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
    families = suite_families(suite)
    eval_split = EvalSplit(suite, cache_root)
    fields[4:4] = [f"accuracy_{f}" for f in families]
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
                    **_family_cols(families, t_dir, eval_split, device),
                    "speedup": 1.0,
                    "train_seconds": tm.get("train_seconds", round(time.time() - t0, 1)),
                    "checkpoint": str(t_dir),
                }
            )
            for (label, weights, pre), slug in zip(VARIANTS, SLUGS, strict=True):
                if (students is not None and slug not in students) or slug in skipped:
                    continue
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
                sp = measure_speedup(t_dir, s_dir, eval_split, device)
                record(
                    {
                        "model": label,
                        "seed": seed,
                        **_metric_cols(sm),
                        **_family_cols(families, s_dir, eval_split, device),
                        **sp,
                        "train_seconds": sm.get("train_seconds"),
                        "checkpoint": str(s_dir),
                    }
                )
    paths = [results_path, out / "skipped.json", *write_table(rows, out, task, recipe_name, seeds)]
    if eval_every > 0:
        paths += write_curves(rows, out, f"{suite.name}, {recipe_name} recipe, {seeds} seed(s)")
    return paths


def read_curve(checkpoint: Path) -> list[tuple[int, float]]:
    """(step, accuracy) of a fine-tuning stage's evaluations, from its ``metrics.csv``."""
    path = Path(checkpoint) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [
            (int(r["step"]), float(r["value"]))
            for r in csv.DictReader(f)
            if r["split"] == "eval" and r["name"] == "accuracy"
        ]


def write_curves(rows: list[dict], out: Path, title: str) -> list[Path]:
    """``curves.csv`` (one line per model, seed and evaluation) and ``curves.png`` from the rows' checkpoints."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from dde_bench.report.plots import plot_learning_curves

    points = [
        {"model": r["model"], "seed": r["seed"], "step": step, "accuracy": acc}
        for r in rows
        for step, acc in read_curve(Path(r["checkpoint"]))
    ]
    df = pd.DataFrame(points, columns=["model", "seed", "step", "accuracy"])
    csv_path = out / "curves.csv"
    df.to_csv(csv_path, index=False)
    png = out / "curves.png"
    fig = plot_learning_curves(df, title)
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)
    return [csv_path, png]


def _family_cols(families: list[str], ckpt: Path, eval_split: EvalSplit, device: str) -> dict:
    if not families:
        return {}
    acc = family_accuracy(ckpt, eval_split, device)
    return {f"accuracy_{f}": acc.get(f) for f in families}


def _metric_cols(meta: dict) -> dict:
    m = meta.get("metrics") or {}
    return {"accuracy": m.get("accuracy"), "consistency": m.get("consistency")}


def write_table(rows: list[dict], out: Path, task: str, recipe_name: str, seeds: int) -> list[Path]:
    """Aggregate per-seed rows into the paper-style table (CSV and markdown)."""
    models: dict[str, list[dict]] = {}
    fam_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("accuracy_")))
    for r in rows:
        models.setdefault(r["model"], []).append(r)
    accs = {
        m: [float(r["accuracy"]) for r in rs if r.get("accuracy") is not None] for m, rs in models.items()
    }
    means = {m: statistics.fmean(v) if v else None for m, v in accs.items()}
    teacher = next((means[m] for m in models if m.startswith("teacher")), None)
    plain = next((means[m] for m in models if "no distillation" in m), None)

    def gap_closed(model: str) -> str:
        """(row - plain student) / (teacher - plain student) on the means: the share of the gap a row closes."""
        if model.startswith("teacher") or "no distillation" in model:
            return ""
        if teacher is None or plain is None or means[model] is None:
            return "n/a"
        if teacher - plain <= 0:
            return "n/a (no gap)"
        return f"{100.0 * (means[model] - plain) / (teacher - plain):.0f}%"

    table = []
    for model, rs in models.items():
        con = [float(r["consistency"]) for r in rs if r.get("consistency") is not None]
        sp = [float(r["speedup"]) for r in rs if r.get("speedup") not in (None, "")]
        fam_cols = {
            k.removeprefix("accuracy_"): _fmt([float(r[k]) for r in rs if r.get(k) not in (None, "")])
            for k in fam_keys
        }
        table.append(
            {
                "model": model,
                "accuracy": _fmt(accs[model]),
                **fam_cols,
                "consistency": _fmt(con) if task == "nlvr2" else "",
                "teacher gap closed": gap_closed(model),
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
        "Accuracy in percent on the eval split, mean ± std over seeds"
        + (
            f"; then on each statement family ({', '.join(k.removeprefix('accuracy_') for k in fam_keys)})"
            if fam_keys
            else ""
        )
        + ". Teacher gap closed: (student - student without distillation) / (teacher - student without "
        "distillation), on the means. Speedup: teacher time / student time with cached image features (median "
        "of interleaved runs).",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]
