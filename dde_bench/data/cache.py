"""Where a suite's data lives: a user folder in the original layout, or a cached synthetic world."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dde_bench.cards import SuiteCard
from dde_bench.data.synth import normalize_sizes, synthesize
from dde_bench.errors import UserError
from dde_bench.files import atomic_folder

SYNTH_VERSION = 2  # bump when the generator's output changes for the same settings (2: COCO-format captions)

_SIZE_KEYS_SKIP = {
    "seed",
    "families",
    "colors",
    "shapes",
    "image_size",
    "grid",
    "objects",
    "jpeg_quality",
    "vocab_size",
}


def synth_settings(card: SuiteCard | dict) -> dict:
    """The synthetic-world settings of a suite card (``data.synth``), normalised for hashing."""
    card = SuiteCard.of(card)
    task = card.task
    synth = dict(card.data.synth)
    sizes = {k: v for k, v in synth.items() if k not in _SIZE_KEYS_SKIP}
    world = {k: synth[k] for k in _SIZE_KEYS_SKIP - {"seed", "families"} if k in synth}
    return {
        "version": SYNTH_VERSION,
        "task": task,
        "seed": int(synth.get("seed", 0)),
        "sizes": normalize_sizes(task, sizes),
        "families": list(synth.get("families") or []),
        "world": world,
    }


def synth_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def ensure_data(card: SuiteCard | dict, cache_root: Path, progress: bool = False) -> Path:
    """Return the data folder of a suite, generating the synthetic world when the suite asks for it.

    ``data.source: dir`` (or a ``data_dir``): the folder must exist and hold every split's annotation file.
    ``data.source: synthetic``: generated under ``cache_root/synthetic/{task}-{hash of settings}``, reused if
    complete; generation goes to a temporary folder renamed into place at the end, so an interrupted run
    is never mistaken for a complete one.
    """
    card = SuiteCard.of(card)
    task = card.task
    if not card.data.synthetic:
        d = Path(os.path.expanduser(str(card.data.data_dir)))
        if not d.is_dir():
            raise UserError(f"{d}: no such data folder ({card.where}, data.data_dir)")
        from dde_bench.data.commands import expected_files

        missing = [p for p in expected_files(task, d) if not p.exists()]
        if missing:
            raise UserError(f"{missing[0]}: no such file ({card.where}, data folder)")
        return d
    settings = synth_settings(card)
    final = Path(cache_root) / "synthetic" / f"{task}-{synth_key(settings)}"

    def build(tmp: Path) -> None:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(settings["sizes"].values()), desc=f"synthesising {task}", unit="ex")
        synthesize(
            task,
            tmp,
            seed=settings["seed"],
            sizes=settings["sizes"],
            families=settings["families"] or None,
            progress=bar.update if bar is not None else None,
            **settings["world"],
        )
        if bar is not None:
            bar.close()
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    return atomic_folder(final, build, done="stats.json")


POOL_VERSION = 1  # bump when the caption pool's output changes for the same settings


def ensure_pool(
    card: SuiteCard | dict, cache_root: Path, ratio: float = 5.0, n_val: int = 500, progress: bool = False
) -> Path:
    """The pre-training caption pool of a synthetic suite (``synth.captions``): ``ratio`` x the task's training
    images, plus ``n_val`` held-out images, cached under ``cache_root/synthetic/{task}-{key}-pool-{hash}``."""
    from dde_bench.data.synth import _train_images, captions

    card = SuiteCard.of(card)
    if not card.data.synthetic:
        raise UserError(
            f"{card.where}: a caption pool is generated for synthetic suites only; a real data folder brings "
            "its own captions_train2014.json"
        )
    if ratio <= 0:
        raise UserError(f"caption pool ratio must be positive, got {ratio}")
    task_dir = ensure_data(card, cache_root, progress=progress)
    task_stats = json.loads((task_dir / "stats.json").read_text(encoding="utf-8"))
    n = max(2, round(ratio * _train_images(task_stats)))
    settings = {"version": POOL_VERSION, "task_dir": task_dir.name, "n": n, "n_val": n_val, "seed": 0}
    final = Path(cache_root) / "synthetic" / f"{task_dir.name}-pool-{synth_key(settings)}"

    def build(tmp: Path) -> None:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n + n_val, desc="caption pool", unit="img")
        captions(task_dir, tmp, n, n_val, seed=0, progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    return atomic_folder(final, build, done="stats.json")
