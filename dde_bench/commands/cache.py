"""`dde-bench cache`: build and inspect on-disk image-feature stores (dde_bench.bench.featurestore).

    dde-bench cache build --suite vqa --model tiny-student --out reports/stores/vqa-tiny --kind fusion
    dde-bench cache info reports/stores/vqa-tiny

Several processes build one store together (rank r builds the shards with index % world == r), launched by
`--nproc` (torch.distributed.run on this machine) or by torchrun itself (several machines):

    dde-bench cache build --suite vqa --model tiny-student --out DIR --nproc 4
    torchrun --nnodes 2 --nproc-per-node 4 ... -m dde_bench.cli cache build --suite vqa --model tiny-student --out DIR
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dde_bench.errors import UserError

cache_app = typer.Typer(help="Image-feature stores on disk: build them from a suite, inspect them.")


def _student(workload, model: str, seed: int, device, console):
    """A student (as `dde-bench run` builds it: from a model card, trained with the quick recipe where its card
    says so, or from a checkpoint folder) and the evaluation split as it sees it (its tokenizer and geometry)."""
    from dde_bench import paths
    from dde_bench.bench.workload import build_entries
    from dde_bench.cards import ModelCard, load_model_card
    from dde_bench.resources import list_names
    from dde_bench.training import trained_resolver

    if model in list_names("models"):
        card = load_model_card(model)
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise UserError(
                f"{model}: neither a model card ({', '.join(list_names('models'))}) nor a checkpoint folder"
            )
        card = ModelCard.from_dict(
            {"name": path.name, "kind": "student", "weights": str(path)}, where=str(path)
        )
    if card.kind != "student":
        raise UserError(f"{card.where}: a {card.kind}; only students have an image cache")
    resolve = trained_resolver(paths.cache_root())
    entry = build_entries(workload, [card], device, seed, resolve, console)[0]
    return entry.model, workload.dataset_for(entry)


@cache_app.command("build")
def build_cmd(
    suite: str = typer.Option(
        ..., "--suite", "-s", help="suite (name or YAML file) whose evaluation images are cached"
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="dataset folder in its official layout (overrides the suite's data)"
    ),
    model: str = typer.Option(..., "--model", "-m", help="student model card or checkpoint folder"),
    out: Path = typer.Option(..., "--out", help="store folder"),
    kind: str = typer.Option("pooled", help="pooled (image-tower output) or fusion (fusion-aware, 2x bytes)"),
    shard_size: int = typer.Option(4096, "--shard-size", help="images per shard file"),
    batch_size: int = typer.Option(64, "--batch-size", help="images per image-tower call"),
    resume: bool = typer.Option(False, help="keep complete shards already in --out and build the rest"),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, or cuda[:N]"),
    seed: int = typer.Option(0, help="seed for random weights"),
    nproc: int = typer.Option(
        1, "--nproc", help="processes building the store together (torch.distributed.run on this machine)"
    ),
) -> None:
    """Encode the suite's evaluation images with a student's image tower into a sharded store.

    Image j is the j-th example of the evaluation split (an NLVR2 example stores its image pair).
    Under torchrun (RANK, WORLD_SIZE set) each rank builds its share of the shards; --nproc N launches N such
    processes here. The result is byte-identical to a one-process build."""
    from dde_bench import paths
    from dde_bench.bench.featurestore import build_store
    from dde_bench.bench.workload import Workload
    from dde_bench.cards import load_suite
    from dde_bench.env import resolve_device
    from dde_bench.errors import set_current_output
    from dde_bench.files import FolderLock

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if shard_size < 1 or batch_size < 1:
        raise UserError(f"--shard-size and --batch-size must be at least 1, got {shard_size}, {batch_size}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a feature store is a folder)")
    if "WORLD_SIZE" not in os.environ:  # (ranks of one build: rank 0 takes the lock, the others trust it)
        FolderLock(out, "feature store").check_free()  # a build in progress there: say so before any work
    set_current_output(out, lambda: f"{len(list(out.glob('shard-*.json')))} complete shards")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # data and (quick-recipe) checkpoints are prepared once here, not raced for by the ranks
        console = Console(stderr=True)
        workload = Workload(
            load_suite(suite, check_models=False).with_data_dir(data_dir), paths.cache_root(), console
        )
        _student(workload, model, seed, resolve_device(device), console)
        args = ["--suite", suite, "--model", model, "--out", str(out), "--kind", kind]
        args += ["--shard-size", str(shard_size), "--batch-size", str(batch_size), "--device", device]
        args += ["--seed", str(seed), "--resume" if resume else "--no-resume"]
        args += ["--data-dir", str(data_dir)] if data_dir else []
        _launch(nproc, args)  # rank 0 prints the store's info
        return
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    console = Console(stderr=True)
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        import torch

        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    workload = Workload(
        load_suite(suite, check_models=False).with_data_dir(data_dir), paths.cache_root(), console
    )
    student, dataset = _student(workload, model, seed, dev, console)
    build_store(
        student,
        dataset,
        out,
        shard_size=shard_size,
        kind=kind,
        batch_size=batch_size,
        device=dev,
        progress=True,
        resume=resume,
        rank=rank,
        world_size=world,
        model_name=model,
    )
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank == 0:
        info_cmd(out)


def _launch(nproc: int, args: list[str]) -> None:
    import subprocess
    import sys

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "dde_bench.cli", "cache", "build", *args]
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise UserError(f"the {nproc}-process cache build failed (torch.distributed.run exit code {rc})")


@cache_app.command("info")
def info_cmd(store: Path = typer.Argument(..., help="store folder")) -> None:
    """Count, shards, bytes, model hash and kind of a store, after verifying every shard (model hash, rows,
    size, sha256): a store that does not verify is refused, naming the shard (exit 2)."""
    from dde_bench.bench.featurestore import open_store

    st = open_store(store, checksum=True)
    m = st.manifest
    t = Table(show_header=False, title=str(store), box=None, pad_edge=False)
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    rows = [
        ("model", m.get("model")),
        ("model hash", m["model_hash"]),
        ("task", m["task"]),
        ("kind", m["kind"]),
        ("dtype", m["dtype"]),
        ("feature shape", "x".join(str(d) for d in m["feature_shape"])),
        ("count", m["count"]),
        ("shards", f"{len(m['shards'])} x up to {m['shard_size']}"),
        ("bytes", f"{st.nbytes:,} ({st.nbytes / 2**20:.1f} MiB)"),
        ("verified", f"{len(m['shards'])} shards (model, rows, bytes, sha256)"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)
