"""``dde-bench data ...``: check a data folder in the original layout, or write a synthetic world."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from dde_bench.data.readers import SPLITS, TRAIN_SPLIT, check_images, load_split, vqa_answer_counts, vqa_paths
from dde_bench.errors import UserError

data_app = typer.Typer(help="Check dataset folders and generate the synthetic world.", no_args_is_help=True)


def expected_files(task: str, data_dir: Path) -> list[Path]:
    """Annotation files a complete data folder holds for ``task``."""
    if task == "nlvr2":
        return [data_dir / f"{s}.json" for s in SPLITS[task]]
    if task == "vqa":
        return [p for s in SPLITS[task] for p in vqa_paths(data_dir, s)]
    return [data_dir / f"snli_ve_{s}.jsonl" for s in SPLITS[task]]


def parse_sizes(text: str | None) -> dict[str, int] | None:
    """``"6000"`` (every split) or ``"train=6000,dev=1000"``."""
    if not text:
        return None
    if "=" not in text:
        try:
            return {"*": int(text)}
        except ValueError:
            raise UserError(f"--size: expected N or split=N,... got {text!r}") from None
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise UserError(f"--size: bad entry {part!r} (expected split=N)") from None
    return out


ANSWER_COUNT_THRESHOLDS = (1, 3, 9)


def answer_count_line(split: str, counts: Counter[str], min_count: int) -> str:
    """One line of VQA answer counts: distinct answers, how many occur >= each threshold, the vocabulary."""
    thresholds = sorted({*ANSWER_COUNT_THRESHOLDS, min_count})
    at = ", ".join(f">= {t}: {sum(c >= t for c in counts.values())}" for t in thresholds)
    vocab = [a for a, c in counts.items() if c >= min_count]
    covered = sum(counts[a] for a in vocab)
    total = sum(counts.values())
    share = f"{100 * covered / total:.1f}%" if total else "n/a"
    return (
        f"vqa {split} answers (normalised multiple_choice_answer): {len(counts)} distinct; {at}; "
        f"vocabulary at --answer-min-count {min_count}: {len(vocab)} answers covering {share} of {total} questions"
    )


@data_app.command("validate")
def validate_cmd(
    suite: str = typer.Option(..., help="suite name (nlvr2, vqa, snli-ve, ...) or a suite YAML file"),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="folder in the dataset's original layout (default: the suite's data_dir)"
    ),
    decode: bool = typer.Option(False, help="also decode every image fully (slower)"),
    answer_min_count: int = typer.Option(
        None, help="VQA: report the vocabulary of answers that occur this many times (default: the suite's)"
    ),
    skip_bad_images: bool = typer.Option(
        False,
        help="list every missing or undecodable image (implies --decode) instead of stopping at the first",
    ),
) -> None:
    """Read every split of a data folder and check its format; print examples and images per split and, for
    VQA, the answer counts. A malformed file or image is a one-line error; an empty VQA answer vocabulary is only
    a warning here (training needs one)."""
    from dde_bench.cards import load_suite

    card = load_suite(suite, check_models=False).with_data_dir(data_dir)
    if card.data.synthetic:
        raise UserError(
            f"{card.where}: uses the synthetic world; give --data-dir DIR (a dataset folder) to validate"
        )
    data_dir = Path(card.data.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such data folder")
    if answer_min_count is None:
        answer_min_count = card.data.answer_min_count
    elif answer_min_count < 1:
        raise UserError(f"--answer-min-count must be at least 1, got {answer_min_count}")
    task = card.task
    bad = None
    if skip_bad_images:
        from dde_bench.data.images import BadImages

        bad = BadImages()
    found = 0
    for split in SPLITS[task]:
        exs = load_split(task, data_dir, split, vqa_targets=False)
        n_bad = len(bad) if bad is not None else 0
        n_img = check_images(exs, decode=decode or bad is not None, bad=bad)
        labelled = sum(e.label is not None or e.answers is not None for e in exs)
        line = f"{task} {split}: {len(exs)} examples ({labelled} labelled), {n_img} images found"
        if bad is not None:
            line += f", {len(bad) - n_bad} bad"
        typer.echo(line)
        if task == "vqa" and vqa_paths(data_dir, split)[1].exists():
            counts = vqa_answer_counts(data_dir, (split,))
            typer.echo(answer_count_line(split, counts, answer_min_count))
            if split == TRAIN_SPLIT[task] and not any(c >= answer_min_count for c in counts.values()):
                typer.echo(
                    f"warning: no VQA answer occurs {answer_min_count} times in {split}: training needs a lower "
                    f"answer_min_count in the suite (or more data)",
                    err=True,
                )
        found += 1
    if bad:
        for path, reason in bad.reasons.items():
            typer.echo(f"bad image: {path}: {reason}", err=True)
        typer.echo(
            f"warning: {len(bad)} bad images (listed above)",
            err=True,
        )
    typer.echo(f"{data_dir}: ok ({found} splits)")


@data_app.command("synth")
def synth_cmd(
    suite: str = typer.Option(..., help="nlvr2, vqa or snli-ve"),
    out: Path = typer.Option(..., help="output folder"),
    seed: int = typer.Option(0),
    size: str = typer.Option(None, help="N for every split, or split=N,... (default: the suite's sizes)"),
    families: str = typer.Option(None, help="comma-separated statement families (default: all)"),
) -> None:
    """Write a synthetic world in the original file formats of the suite's dataset."""
    from tqdm import tqdm

    from dde_bench.data.synth import DEFAULT_SIZES, synthesize

    if suite not in SPLITS:
        raise UserError(f"--suite: unknown suite {suite!r}; known: {', '.join(SPLITS)}")
    sizes = parse_sizes(size)
    if sizes and "*" in sizes:
        sizes = {k: sizes["*"] for k in DEFAULT_SIZES[suite]}
    fams = [f.strip() for f in families.split(",") if f.strip()] if families else None
    total = sum((sizes or DEFAULT_SIZES[suite]).values())
    with tqdm(total=total, desc=f"synthesising {suite}", unit="ex") as bar:
        stats = synthesize(suite, out, seed=seed, sizes=sizes, families=fams, progress=bar.update)
    for split, st in stats["splits"].items():
        typer.echo(f"{split}: {st['n']} examples, labels {st['labels']}")
    typer.echo(f"wrote {out} in {stats['seconds']} s")
