"""``dde-bench train teacher|student`` and ``dde-bench reproduce``: thin commands over the training library."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from dde_bench import paths
from dde_bench.errors import UserError

train_app = typer.Typer(
    help="Train the ViLT teacher or the DiDE student (tiny models on the synthetic world by default).",
    no_args_is_help=True,
)


def _suite(name_or_path: str, data_dir: Path | None):
    """A suite by name or YAML path, on ``data_dir`` if given (the models it lists are not needed to train)."""
    from dde_bench.cards import load_suite

    return load_suite(name_or_path, check_models=False).with_data_dir(data_dir)


def _check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")


@train_app.command("teacher")
def teacher_cmd(
    suite: str = typer.Option(..., help="suite name (suites/*.yaml) or a suite YAML file"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    init: str = typer.Option(
        "scratch", help="scratch, a dde-bench teacher checkpoint, or a transformers ViLT folder"
    ),
    steps: int = typer.Option(None, help="fine-tuning steps (default: the recipe's)"),
    pretrain_steps: int = typer.Option(
        None, help="ITM + MLM pre-training steps before fine-tuning (0 = none)"
    ),
    batch_size: int = typer.Option(None, help="batch size per process (default: the recipe's)"),
    lr: float = typer.Option(None, help="peak learning rate (default: the recipe's)"),
    recipe: str = typer.Option("quick", help="quick, medium or full"),
    out: Path = typer.Option(None, help="checkpoint folder (default: ./reports/checkpoints/teacher)"),
    cache_root: Path = typer.Option(
        None, help="where the synthetic data is cached (default: ./reports/cache, or $DDE_BENCH_CACHE)"
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="continue from OUT/last after an interruption"),
    nproc: int = typer.Option(1, help="processes (torchrun / DDP: gloo on CPU, nccl on CUDA)"),
    threads: int = typer.Option(2, help="CPU threads per process"),
) -> None:
    """Train a teacher: optional ITM + MLM pre-training on captions, then fine-tuning on the suite's task."""
    from dde_bench.env import resolve_device
    from dde_bench.training.recipes import get_recipe, train_teacher

    _check_nproc(nproc)
    resolve_device(device)
    r = get_recipe(recipe)
    path = train_teacher(
        _suite(suite, data_dir),
        out or paths.home() / "checkpoints" / "teacher",
        r,
        seed=seed,
        device=device,
        cache_root=cache_root or paths.cache_root(),
        init=init,
        steps=steps,
        pretrain_steps=pretrain_steps,
        batch_size=batch_size,
        lr=lr,
        resume=resume,
        nproc=nproc,
        threads=threads,
    )
    typer.echo(f"teacher written to {path}")


@train_app.command("student")
def student_cmd(
    suite: str = typer.Option(..., help="suite name (suites/*.yaml) or a suite YAML file"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    teacher: Path = typer.Option(..., help="fine-tuned teacher checkpoint folder"),
    gt: float = typer.Option(0.0, "--gt", help="weight of the ground-truth loss"),
    soft: float = typer.Option(1.0, help="weight of the soft-label distillation loss"),
    attention: float = typer.Option(1.0, help="weight of the cross-modal attention distillation loss"),
    temperature: float = typer.Option(1.0, help="soft-label temperature"),
    attention_queries: str = typer.Option(
        "all",
        help="attention KL over every query row, padded ones included (all: the authors' form) or real queries "
        "only (valid)",
    ),
    pretrain_distill: bool = typer.Option(
        False, help="distil in a pre-training stage on captions first (needs TEACHER/pretrain)"
    ),
    init_from: str = typer.Option(
        "finetuned",
        help="the towers start from the fine-tuned teacher (finetuned) or from its pre-training stage, "
        "TEACHER/pretrain (pretrained: the authors' start)",
    ),
    head_init: str = typer.Option(
        "copy",
        help="the task head copied from the fine-tuned teacher (copy) or initialised fresh (the authors')",
    ),
    pretrain_steps: int = typer.Option(None, help="steps of the pre-training distillation stage"),
    steps: int = typer.Option(None, help="fine-tuning steps (default: the recipe's)"),
    batch_size: int = typer.Option(None),
    lr: float = typer.Option(None),
    recipe: str = typer.Option("quick", help="quick, medium or full"),
    out: Path = typer.Option(None, help="checkpoint folder (default: ./reports/checkpoints/student)"),
    cache_root: Path = typer.Option(
        None, help="where the synthetic data is cached (default: ./reports/cache, or $DDE_BENCH_CACHE)"
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="continue from OUT/last after an interruption"),
    nproc: int = typer.Option(1, help="processes (torchrun / DDP)"),
    threads: int = typer.Option(2, help="CPU threads per process"),
) -> None:
    """Train a DiDE student: towers from the teacher, then ground truth / soft labels / attention distillation."""
    from dde_bench.env import resolve_device
    from dde_bench.modeling.checkpoint import read_config
    from dde_bench.training.recipes import get_recipe, train_student
    from dde_bench.training.trainer import LossWeights

    _check_nproc(nproc)
    resolve_device(device)
    cfg = read_config(teacher)
    if cfg.get("kind") not in (None, "teacher"):
        raise UserError(f"{teacher}: this is a {cfg.get('kind')} checkpoint, a teacher was expected")
    path = train_student(
        _suite(suite, data_dir),
        teacher,
        out or paths.home() / "checkpoints" / "student",
        LossWeights(gt, soft, attention, temperature, attention_queries=attention_queries),
        replace(get_recipe(recipe), student_init=init_from, student_head=head_init),
        pretrain_distill=pretrain_distill,
        seed=seed,
        device=device,
        cache_root=cache_root or paths.cache_root(),
        steps=steps,
        pretrain_steps=pretrain_steps,
        batch_size=batch_size,
        lr=lr,
        resume=resume,
        nproc=nproc,
        threads=threads,
    )
    typer.echo(f"student written to {path}")


def reproduce(
    suite: str = typer.Option("nlvr2", help="suite name or YAML file"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    seeds: int = typer.Option(2, help="number of seeds (0 .. N-1)"),
    quick: bool = typer.Option(True, help="the quick recipe (tiny models, minutes); --no-quick = full"),
    recipe: str = typer.Option(
        None,
        help="a named recipe (quick, medium, medium-long, rich, rich-equal, full); overrides --quick/--no-quick",
    ),
    out: Path = typer.Option(None, help="output folder (default: ./reports/reproduce)"),
    cache_root: Path = typer.Option(
        None, help="synthetic data and checkpoints cache (default: ./reports/cache, or $DDE_BENCH_CACHE)"
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]"),
    threads: int = typer.Option(2),
    eval_every: int = typer.Option(
        0,
        help="evaluate every N fine-tuning steps and write the learning curves (curves.csv, curves.png); "
        "0 = the final accuracy only",
    ),
    students: str = typer.Option(
        None,
        help="comma-separated student rows to run (nodistill, soft, attention, soft-attention, "
        "soft-attention-pretrain; with --ablation paper: gt, soft, attention, soft-attention, pretrain-distill, "
        "control-pretrain-gt, control-more-steps); default all",
    ),
    ablation: str = typer.Option(
        "classic",
        help="classic (students from the fine-tuned teacher, dev accuracy) or paper (the paper's set-up: "
        "students from the pre-trained teacher, a caption pool, best-on-dev checkpoints scored on a held-out "
        "split, paired claims in claims.json; recipes paper, paper-short, paper-quick)",
    ),
) -> None:
    """The paper-style ablation on the synthetic world: teacher, students without / with each distillation,
    accuracy (mean and std over seeds) and measured speedup over the teacher with cached image features."""
    from dde_bench.env import resolve_device
    from dde_bench.training.reproduce import run_reproduce

    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if eval_every < 0:
        raise UserError(f"--eval-every must be 0 or more, got {eval_every}")
    if ablation not in ("classic", "paper"):
        raise UserError(f"--ablation: expected classic or paper, got {ablation!r}")
    if ablation == "paper":
        from dde_bench.training.ablation import run_ablation
        from dde_bench.training.recipes import get_recipe

        resolve_device(device)
        get_recipe(recipe or "paper")
        rows = None if students is None else [x.strip() for x in students.split(",") if x.strip()]
        written = run_ablation(
            _suite(suite, data_dir),
            out or paths.home() / "reproduce",
            seeds=seeds,
            recipe_name=recipe or "paper",
            cache_root=cache_root or paths.cache_root(),
            device=device,
            threads=threads,
            rows=rows,
        )
        for p in written:
            typer.echo(f"wrote {p}")
        return
    from dde_bench.training.reproduce import SLUGS

    rows = None if students is None else [x.strip() for x in students.split(",") if x.strip()]
    bad = [x for x in rows or [] if x not in SLUGS]
    if bad or rows == []:
        raise UserError(
            f"--students: unknown row(s) {', '.join(bad) or '(none given)'}; known: {', '.join(SLUGS)}"
        )
    resolve_device(device)
    if recipe is not None:
        from dde_bench.training.recipes import get_recipe

        get_recipe(recipe)  # unknown names: one-line error before any work
    written = run_reproduce(
        _suite(suite, data_dir),
        out or paths.home() / "reproduce",
        seeds=seeds,
        recipe_name=recipe or ("quick" if quick else "full"),
        cache_root=cache_root or paths.cache_root(),
        device=device,
        threads=threads,
        eval_every=eval_every,
        students=rows,
    )
    for p in written:
        typer.echo(f"wrote {p}")
