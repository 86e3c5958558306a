"""The paper's ablation as the paper sets it up (``dde-bench reproduce --ablation paper``).

One teacher (seed 0) is pre-trained on a caption pool separate from and ``recipe.pool_ratio`` x larger than the
task's training images (``data.cache.ensure_pool``; ITM + MLM, its ITM accuracy on held-out pool captions
written per negative kind: matched, random image, minimal edit), then fine-tuned. Every student row starts from
that *pre-trained* teacher (towers; fusion MLP and task head fresh, as the authors' code loads the pre-trained
ViLT), for each seed, all rows of one seed on the same data order:

* ``gt``: ground truth only; ``soft``: soft labels; ``attention``: attention distillation, ground-truth weight 0
  (as every distillation run of the authors); ``soft-attention``: both;
* ``pretrain-distill``: pre-training distillation on the pool (ITM soft labels + attention, from the
  pre-trained teacher), then soft + attention (the full recipe);
* controls: ``control-pretrain-gt``: the same pre-training steps with ITM ground truth only, then soft +
  attention; ``control-more-steps``: soft + attention with the pre-training steps added to fine-tuning.

Fine-tuning stages keep their best checkpoint on the selection split (``tasks.SELECTION_SPLIT``, evaluated
every ``recipe.eval_every`` steps); every row is scored on the held-out split (``tasks.HELDOUT_SPLIT``), per
example, and the claims (``training/claims.py``) are paired statistics over seeds and examples.

Output folder: ``results.csv`` (one line per row and seed), ``scores.json`` (held-out per-example scores),
``teacher_pretrain_itm.json``, ``claims.json``, ``table.md``, ``README.md`` (generated), ``curves.csv`` /
``curves.png`` (selection-split learning curves), ``run.json`` (command, wall time, machine load).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dde_bench.cards import SuiteCard
from dde_bench.errors import UserError
from dde_bench.tasks import HELDOUT_SPLIT, SELECTION_SPLIT
from dde_bench.training.claims import claims_table, compute_claims, write_claims
from dde_bench.training.recipes import get_recipe, train_student, train_teacher
from dde_bench.training.trainer import LossWeights

SA = LossWeights(ground_truth=0.0, soft=1.0, attention=1.0)
# slug, label, fine-tuning weights, pre-training stage weights (None = no pre-training stage), extra steps
ROWS: list[tuple[str, str, LossWeights, LossWeights | None, bool]] = [
    ("gt", "student, ground truth only", LossWeights(1.0, 0.0, 0.0), None, False),
    ("soft", "student, soft labels", LossWeights(0.0, 1.0, 0.0), None, False),
    ("attention", "student, attention (ground-truth weight 0)", LossWeights(0.0, 0.0, 1.0), None, False),
    ("soft-attention", "student, soft + attention", SA, None, False),
    ("pretrain-distill", "student, pre-training distillation, then soft + attention", SA, SA, False),
    (
        "control-pretrain-gt",
        "control: pre-training with ITM ground truth only, then soft + attention",
        SA,
        LossWeights(1.0, 0.0, 0.0),
        False,
    ),
    (
        "control-more-steps",
        "control: soft + attention, pre-training steps added to fine-tuning",
        SA,
        None,
        True,
    ),
]
SLUGS = [r[0] for r in ROWS]
LABELS = {"teacher": "teacher (fusion encoder, pre-trained + fine-tuned)", **{r[0]: r[1] for r in ROWS}}


def caption_pool(suite: SuiteCard, cache_root: Path, ratio: float, progress: bool) -> Path:
    """The pre-training caption folder: a generated pool for a synthetic suite, the data folder's own
    ``captions_train2014.json`` for a real one."""
    from dde_bench.data.cache import ensure_data, ensure_pool
    from dde_bench.data.readers import COCO_CAPTIONS

    if suite.data.synthetic and ratio > 0:
        return ensure_pool(suite, cache_root, ratio=ratio, progress=progress)
    data_dir = ensure_data(suite, cache_root, progress=progress)
    if not (data_dir / COCO_CAPTIONS).is_file():
        raise UserError(
            f"{data_dir}: no {COCO_CAPTIONS} (COCO captions) for the paper ablation's pre-training"
        )
    return data_dir


def heldout_scores(
    checkpoint: Path, suite: SuiteCard, cache_root: Path, split: str, device: str, cache: dict
):
    """Per-example scores (percent) of a checkpoint on ``split``."""
    from dde_bench.data.suite import load_suite_data
    from dde_bench.env import resolve_device
    from dde_bench.evaluation import evaluate
    from dde_bench.modeling.checkpoint import load_model

    dev = resolve_device(device)
    model = load_model(checkpoint).to(dev).eval()
    cfg = model.config
    key = (cfg.max_text_len, cfg.image_size, cfg.patch_size)
    if key not in cache:
        cache[key] = load_suite_data(suite, cache_root, cfg, (split,)).datasets[split]
    ev = evaluate(model, cache[key], dev)
    return [100.0 * float(s) for s in ev.scores]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _command() -> str:
    """This process's command line, ``dde-bench ...`` when it runs the CLI."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("cli.py") or argv[0].endswith("dde-bench")):
        argv[0] = "dde-bench"
    return " ".join(shlex.quote(a) for a in argv)


def run_ablation(
    suite: SuiteCard,
    out: Path,
    seeds: int = 5,
    recipe_name: str = "paper",
    cache_root: Path | None = None,
    device: str = "auto",
    threads: int = 1,
    progress: bool = True,
    rows: list[str] | None = None,
    command: str | None = None,
) -> list[Path]:
    """Train and score the teacher and every student row for ``seeds`` seeds; write the folder described in the
    module docstring. Finished checkpoints in ``out/checkpoints`` are reused (a rerun with more seeds trains only
    the new ones)."""
    from dde_bench import paths as home

    suite = SuiteCard.of(suite)
    cache_root = Path(cache_root) if cache_root else home.cache_root()
    recipe = get_recipe(recipe_name)
    if seeds < 2:
        raise UserError(f"the paper ablation's paired statistics need at least 2 seeds, got {seeds}")
    if not recipe.keep_best or recipe.eval_every <= 0:
        raise UserError(f"recipe {recipe_name!r} is not a paper-ablation recipe (keep_best with eval_every)")
    rows = rows or SLUGS
    bad = [r for r in rows if r not in SLUGS]
    if bad:
        raise UserError(f"unknown ablation row(s) {', '.join(bad)}; known: {', '.join(SLUGS)}")
    task = suite.task
    sel, held = SELECTION_SPLIT[task], HELDOUT_SPLIT[task]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    run_info = {
        "command": command or _command(),
        "suite": suite.name,
        "recipe": recipe_name,
        "seeds": seeds,
        "rows": rows,
        "selection_split": sel,
        "heldout_split": held,
        "threads": threads,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_start)),
        "load_at_start": _load(),
    }
    run_info["earlier_invocations"] = _earlier_invocations(out / "run.json")
    pool = caption_pool(suite, cache_root, recipe.pool_ratio, progress)
    pool_stats = json.loads((pool / "stats.json").read_text()) if (pool / "stats.json").is_file() else {}
    common = dict(device=device, cache_root=cache_root, threads=threads, progress=progress)
    t_dir = out / "checkpoints" / "teacher"
    if not (t_dir / "config.json").is_file():
        train_teacher(suite, t_dir, recipe, seed=0, pretrain_data=pool, eval_split=sel, **common)
    itm = json.loads((t_dir / "pretrain" / "config.json").read_text())["meta"].get("metrics", {})
    (out / "teacher_pretrain_itm.json").write_text(
        json.dumps({"pool": pool_stats, "itm": itm}, indent=2) + "\n"
    )
    data_cache: dict = {}
    scores: dict[str, dict[int, list[float]]] = {}
    results: list[dict] = []

    def record(slug: str, seed: int, ckpt: Path) -> None:
        meta = json.loads((ckpt / "config.json").read_text())["meta"]
        sc = heldout_scores(ckpt, suite, cache_root, held, device, data_cache)
        scores.setdefault(slug, {})[seed] = sc
        results.append(
            {
                "row": slug,
                "model": LABELS[slug],
                "seed": seed,
                "heldout_accuracy": round(statistics.fmean(sc), 3),
                "selection_accuracy": (meta.get("metrics") or {}).get("accuracy"),
                "best_step": meta.get("best_step"),
                "steps": meta["training"]["steps"],
                "train_seconds": meta.get("train_seconds"),
                **_pretrain_itm(ckpt),
                "checkpoint": str(ckpt),
            }
        )
        _write_results(out, results, scores)

    record("teacher", 0, t_dir)
    for seed in range(seeds):
        for slug, _label, weights, pre_w, extra in ROWS:
            if slug not in rows:
                continue
            s_dir = out / "checkpoints" / f"seed{seed}" / slug
            if not (s_dir / "config.json").is_file():
                train_student(
                    suite,
                    t_dir,
                    s_dir,
                    weights,
                    recipe,
                    pretrain_distill=pre_w is not None,
                    pretrain_weights=pre_w,
                    steps=recipe.student_steps + recipe.student_pretrain_steps if extra else None,
                    seed=seed,
                    pretrain_data=pool,
                    eval_split=sel,
                    **common,
                )
            record(slug, seed, s_dir)
        # claims and README after every seed: a stopped run leaves a consistent folder
        paths = finish(out, suite, recipe_name, scores, itm, pool_stats, results, run_info, t_start)
    return paths


_INVOCATION_KEYS = (
    "command",
    "seeds",
    "started_utc",
    "finished_utc",
    "wall_seconds",
    "load_at_start",
    "load_at_end",
)


def _earlier_invocations(path: Path) -> list[dict]:
    """The invocations an earlier ``run.json`` in the folder records (a rerun with more seeds reuses their
    checkpoints, so the folder's wall time is the sum)."""
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    earlier = list(old.get("earlier_invocations") or [])
    return earlier + [{k: old.get(k) for k in _INVOCATION_KEYS}]


ITM_COLS = ("itm_acc_matched", "itm_acc_random", "itm_acc_minimal")


def _pretrain_itm(ckpt: Path) -> dict:
    """ITM accuracy per pair kind of a row's pre-training stage on the pool's held-out captions ("" if none)."""
    path = ckpt / "pretrain" / "config.json"
    m = json.loads(path.read_text())["meta"].get("metrics", {}) if path.is_file() else {}
    return {f"pretrain_{k}": round(m[k], 2) if k in m else "" for k in ITM_COLS}


def _write_results(out: Path, results: list[dict], scores: dict) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    (out / "scores.json").write_text(
        json.dumps({k: {str(s): v for s, v in d.items()} for k, d in scores.items()}) + "\n"
    )


def score_matrix(scores: dict[str, dict[int, list[float]]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Rows' per-example scores as ``[seeds, examples]`` arrays over the seeds every student row has; the
    teacher's one row tiled over them."""
    students = {k: v for k, v in scores.items() if k != "teacher"}
    if not students:
        return {}, []
    common = sorted(set.intersection(*(set(v) for v in students.values())))
    mats = {k: np.array([v[s] for s in common]) for k, v in students.items()}
    if "teacher" in scores and common:
        t = np.array(scores["teacher"][0])
        mats["teacher"] = np.tile(t, (len(common), 1))
    return mats, common


def finish(out, suite, recipe_name, scores, itm, pool_stats, results, run_info, t_start) -> list[Path]:
    from dde_bench.training.reproduce import write_curves

    mats, seeds_done = score_matrix(scores)
    claims = compute_claims(mats) if len(seeds_done) >= 2 else []
    paths = [out / "results.csv", out / "scores.json", out / "teacher_pretrain_itm.json"]
    if claims:
        paths.append(write_claims(claims, out))
    wall = time.time() - t_start
    info = {
        **run_info,
        "seeds_done": seeds_done,
        "wall_seconds": round(wall, 1),
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_at_end": _load(),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    paths.append(out / "run.json")
    curve_rows = [{"model": r["model"], "seed": r["seed"], "checkpoint": r["checkpoint"]} for r in results]
    paths += write_curves(curve_rows, out, f"{suite.name}, {recipe_name} recipe (selection split)")
    table = results_table(results, seeds_done)
    (out / "table.md").write_text(table + "\n")
    paths.append(out / "table.md")
    (out / "README.md").write_text(
        readme(suite, recipe_name, table, claims, itm, pool_stats, info, results) + "\n"
    )
    paths.append(out / "README.md")
    return paths


def _ms(v: list[float]) -> str:
    if not v:
        return "n/a"
    return f"{statistics.fmean(v):.1f}" + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")


def results_table(results: list[dict], seeds_done: list[int]) -> str:
    """Mean ± std over seeds per row: held-out accuracy (what is reported) and selection accuracy."""
    lines = [
        "| row | held-out accuracy | selection accuracy (best) | best step (median) | per seed (held-out) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for slug in ["teacher", *SLUGS]:
        rs = [r for r in results if r["row"] == slug and (slug == "teacher" or r["seed"] in seeds_done)]
        if not rs:
            continue
        held = [float(r["heldout_accuracy"]) for r in rs]
        sel = [float(r["selection_accuracy"]) for r in rs if r["selection_accuracy"] is not None]
        steps = [r["best_step"] for r in rs if r["best_step"] is not None]
        best = f"{statistics.median(steps):.0f} / {rs[0]['steps']}" if steps else "n/a"
        per = " / ".join(f"{x:.1f}" for x in held)
        lines.append(f"| {LABELS[slug]} | {_ms(held)} | {_ms(sel)} | {best} | {per} |")
    return "\n".join(lines)


def readme(suite, recipe_name, table, claims, itm, pool_stats, info, results) -> str:
    rec = get_recipe(recipe_name)
    kinds = ", ".join(
        f"{k} {itm[f'itm_acc_{k}']:.1f}%" for k in ("matched", "random", "minimal") if f"itm_acc_{k}" in itm
    )
    pool_imgs = pool_stats.get("images", {})
    itm_lines = []
    for slug in ("teacher", *SLUGS):
        rs = [r for r in results if r["row"] == slug and r.get("pretrain_itm_acc_matched") not in ("", None)]
        if rs:
            vals = [statistics.fmean(float(r[f"pretrain_{k}"]) for r in rs) for k in ITM_COLS]
            itm_lines.append(
                f"- {LABELS[slug]}: " + " / ".join(f"{v:.1f}%" for v in vals) + f" ({len(rs)} seeds)"
            )
    runs = [*info.get("earlier_invocations", []), info]
    total = sum(float(r.get("wall_seconds") or 0.0) for r in runs)
    wall = [
        f"- `{r.get('command')}`: {float(r.get('wall_seconds') or 0) / 60:.1f} min ({r.get('started_utc')} - "
        f"{r.get('finished_utc')} UTC), load average at start {r.get('load_at_start')}, at end "
        f"{r.get('load_at_end')}"
        for r in runs
    ]
    lines = [
        f"# The paper's ablation on `{suite.name}` ({recipe_name} recipe, {len(info['seeds_done'])} seeds)",
        "",
        "Generated by `dde_bench.training.ablation` from `claims.json`, `results.csv` and `run.json`; "
        "do not edit by hand.",
        "",
        "Command:",
        "",
        "```bash",
        info["command"],
        "```",
        "",
        f"Wall time: {total / 60:.1f} min in all, {info['threads']} thread(s), on a machine shared with other "
        "jobs (load averages below); per invocation (a rerun reuses the finished checkpoints):",
        "",
        *wall,
        "",
        "Set-up (as the authors' code): one teacher (seed 0) pre-trained on a caption pool of "
        f"{pool_imgs.get('train2014', 'n/a')} images ({rec.pool_ratio:g}x the task's "
        f"{pool_stats.get('task_train_images', 'n/a')} training images, none of them a task image) for "
        f"{rec.teacher_pretrain_steps} steps (ITM, half of the negatives minimal-edit captions, + MLM), then "
        f"fine-tuned {rec.teacher_steps} steps. Every student: towers from the pre-trained teacher, fusion MLP and "
        f"head fresh, {rec.student_steps} fine-tuning steps (the pre-training rows first {rec.student_pretrain_steps} "
        f"steps on the pool; the more-steps control {rec.student_steps + rec.student_pretrain_steps} fine-tuning "
        f"steps). Every fine-tuning stage keeps its best checkpoint on `{info['selection_split']}` (evaluated every "
        f"{rec.eval_every} steps); all accuracies below are on the held-out `{info['heldout_split']}`, which "
        "nothing was selected or tuned on. Rows of one seed share the data order.",
        "",
        f"Teacher's ITM accuracy after pre-training, on {pool_imgs.get('val2014', 'n/a')} held-out pool "
        f"captions: {itm.get('itm_acc', float('nan')):.1f}% overall; per pair kind: {kinds or 'n/a'}.",
        "",
        "## Claims",
        "",
        "Paired statistics: every resample draws seeds and held-out examples, the same for every row (the one "
        "teacher's scores repeated for each seed); percentile bootstrap, 2000 resamples. Reached / not reached: "
        "the whole 95% interval on one side of the threshold; otherwise inconclusive.",
        "",
        claims_table(claims) if claims else "n/a (fewer than two seeds finished)",
        "",
        "## Rows",
        "",
        "Accuracy in percent (the task's official metric), mean ± std over seeds.",
        "",
        table,
        "",
        "ITM accuracy of the rows' pre-training stages on the held-out pool captions (mean over seeds; "
        "matched / random image / minimal edit):",
        "",
        *itm_lines,
        "",
        "Learning curves on the selection split: `curves.png` (`curves.csv`).",
    ]
    return "\n".join(lines)
