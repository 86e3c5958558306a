"""Image features on disk, for galleries larger than memory.

A store is a folder::

    manifest.json            identity of the model, kind, dtype, count, shard list (written last)
    shard-00000.safetensors  one tensor "features": (n, h) pooled / (n, 2h) fusion; (n, 2, .) for NLVR2
    shard-00001.safetensors  ...

Image ``j`` of the source lives in shard ``j // shard_size`` at row ``j % shard_size``.

``kind="pooled"`` stores ``Student.encode_images`` (what ``Student.score`` takes); ``kind="fusion"`` stores the
fusion-aware precomputation ``W_i i + b`` (``dde_bench.modeling.fastpath``): twice the bytes, cheaper scoring.

Every shard is written to a temporary name and renamed, so a shard file that exists is complete. An
interrupted build resumes (``resume=True``) from the shards already there and ends byte-identical to a build
done in one go: images are encoded in batches counted from each shard's start, whoever builds it.

Several processes (``torchrun --nproc-per-node K``) build one store together: rank ``r`` of ``world_size``
builds the shards whose index ``% world_size == r`` (:func:`rank_shards`). With ``torch.distributed``
initialised the ranks meet at a barrier and rank 0 writes the manifest; without it (or with ranks run one
after another) whichever rank finds every shard present writes it.

The store is tied to the model: ``model_hash`` is a SHA-256 of the student's config, task, number of labels
and its image-tower and fusion weights. :func:`open_store` refuses a store built with another model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dde_bench.errors import UserError
from dde_bench.modeling.fastpath import precompute_image, precompute_text, score_pooled, score_precomputed
from dde_bench.modeling.models import Student

__all__ = [
    "FeatureStore",
    "RepeatedFeatures",
    "build_store",
    "finalize_store",
    "model_hash",
    "open_store",
    "rank_shards",
    "score_text_against_store",
]

FORMAT = "dde-bench-features"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pooled", "fusion")
TENSOR = "features"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def rank_shards(num_shards: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The shard indices rank ``rank`` of ``world_size`` builds: ``index % world_size == rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return list(range(rank, num_shards, world_size))


def model_hash(student: Student) -> str:
    """SHA-256 of the student's config, task, labels and image-tower + fusion weights (what the cache depends on)."""
    h = hashlib.sha256()
    ident = {
        "config": student.config.to_dict(),
        "task": student.task,
        "num_labels": student.num_labels,
    }
    h.update(json.dumps(ident, sort_keys=True).encode())
    for prefix, module in (("image_tower", student.image_tower), ("fusion", student.fusion)):
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _describe(student: Student) -> str:
    c = student.config
    return f"{student.kind} {student.task}, hidden {c.hidden_size}, {c.num_layers} layers"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- sources
class _Source:
    """Images as (pixel_values, pixel_mask) batches, addressed by global image index."""

    count: int | None = None
    encoded = False  # True: the batches are already pooled image features (no image tower to run)

    def batches(self, needed: Callable[[int], bool], shard_size: int, batch_size: int) -> Iterator:
        """Yield ``(shard_index, pixel_values, pixel_mask)`` for the images of the needed shards, in order,
        in batches counted from each shard's start (so every build encodes the same batches)."""
        raise NotImplementedError


class _RandomAccess(_Source):
    """A tensor of pixel values (N, ...) or a dataset with ``__len__`` and ``batch(indices) -> dict``."""

    def __init__(self, data, pixel_mask: torch.Tensor | None = None):
        self.data = data
        self.mask = pixel_mask
        self.count = int(data.shape[0]) if isinstance(data, torch.Tensor) else len(data)

    def _get(self, start: int, stop: int):
        if isinstance(self.data, torch.Tensor):
            return self.data[start:stop], None if self.mask is None else self.mask[start:stop]
        b = self.data.batch(torch.arange(start, stop))
        return b["pixel_values"], b.get("pixel_mask")

    def batches(self, needed, shard_size, batch_size):
        for k in range(-(-self.count // shard_size)):
            if not needed(k):
                continue
            lo, hi = k * shard_size, min((k + 1) * shard_size, self.count)
            for s in range(lo, hi, batch_size):
                yield (k, *self._get(s, min(s + batch_size, hi)))


class _Stream(_Source):
    """An iterable of batches: tensors of pixel values, ``(pixel_values, pixel_mask)`` or dicts. Batches are
    split at shard boundaries; batches of shards not needed here are skipped without being encoded."""

    def __init__(self, it: Iterable):
        self.it = it
        self.count = None

    @staticmethod
    def _unpack(b) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(b, torch.Tensor):
            return b, None
        if isinstance(b, dict):
            return b["pixel_values"], b.get("pixel_mask")
        pv, pm = b
        return pv, pm

    def batches(self, needed, shard_size, batch_size):
        pos = 0
        for b in self.it:
            pv, pm = self._unpack(b)
            n, s = pv.shape[0], 0
            while s < n:
                k = (pos + s) // shard_size
                take = min(n - s, (k + 1) * shard_size - (pos + s))
                if needed(k):
                    yield k, pv[s : s + take], None if pm is None else pm[s : s + take]
                s += take
            pos += n
        self.count = pos


class RepeatedFeatures(_Source):
    """``count`` pooled image features made of ``base`` (``(M, ...)``, already encoded) repeated in order: row j is
    ``base[j % M]``. For galleries larger than the images at hand (the benchmark's gallery scenario): the store
    is written shard by shard, never holding more than one shard's rows in memory."""

    encoded = True

    def __init__(self, base: torch.Tensor, count: int):
        if base.shape[0] < 1 or count < 1:
            raise ValueError(f"need at least one base feature and count >= 1, got {base.shape[0]}, {count}")
        self.base = base
        self.count = int(count)

    def batches(self, needed, shard_size, batch_size):
        m = self.base.shape[0]
        for k in range(-(-self.count // shard_size)):
            if not needed(k):
                continue
            lo, hi = k * shard_size, min((k + 1) * shard_size, self.count)
            for s in range(lo, hi, batch_size):
                yield k, self.base[torch.arange(s, min(s + batch_size, hi)) % m], None


def _as_source(images, pixel_mask=None) -> _Source:
    if isinstance(images, _Source):
        return images
    if isinstance(images, torch.Tensor) or (hasattr(images, "batch") and hasattr(images, "__len__")):
        return _RandomAccess(images, pixel_mask)
    if isinstance(images, Iterable):
        return _Stream(images)
    raise TypeError(
        f"images must be a tensor, a dataset with batch() or an iterable of batches, not {images!r}"
    )


# -------------------------------------------------------------------------------------------- build
def _identity(student: Student, kind: str, dtype: torch.dtype, shard_size: int, name: str | None) -> dict:
    h = student.config.hidden_size
    width = h if kind == "pooled" else 2 * h
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_hash": model_hash(student),
        "model": name or _describe(student),
        "task": student.task,
        "num_labels": student.num_labels,
        "hidden_size": h,
        "kind": kind,
        "dtype": str(dtype).removeprefix("torch."),
        "feature_shape": [2, width] if student.task == "nlvr2" else [width],
        "shard_size": shard_size,
    }


def _shard_count(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.get_slice(TENSOR).get_shape()[0])


def _clear(out: Path) -> None:
    for p in [*out.glob("shard-*.safetensors"), *out.glob("*.tmp"), out / MANIFEST, out / "build.json"]:
        if p.exists():
            p.unlink()


@torch.inference_mode()
def build_store(
    student: Student,
    images,
    out_dir: str | Path,
    *,
    shard_size: int = 4096,
    kind: str = "pooled",
    batch_size: int = 64,
    pixel_mask: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    model_name: str | None = None,
    _after_shard: Callable[[int], None] | None = None,
) -> Path:
    """Encode ``images`` with the student's image tower into a sharded store in ``out_dir``; returns the folder.

    ``images``: a tensor of pixel values ``(N, 3, H, W)`` (``(N, 2, 3, H, W)`` for NLVR2, with optional
    ``pixel_mask``), a dataset with ``__len__`` and ``batch(indices)`` (``TaskDataset``), an iterable of
    batches (tensors, ``(pixel_values, pixel_mask)`` or dicts), or :class:`RepeatedFeatures` (pooled features
    already encoded). ``kind``: ``pooled`` or ``fusion``.
    ``resume``: keep the complete shards already in ``out_dir`` (built by the same model and settings) and
    build the rest; otherwise start afresh. ``rank``/``world_size``: build only this rank's shards (see the
    module doc). ``_after_shard(k)`` is called after shard ``k`` is on disk (a test hook).
    """
    if kind not in KINDS:
        raise UserError(f"unknown store kind {kind!r}; expected one of {', '.join(KINDS)}")
    if shard_size < 1 or batch_size < 1:
        raise UserError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else next(student.parameters()).device
    param_dtype = next(student.parameters()).dtype
    dtype = dtype or param_dtype
    ident = _identity(student, kind, dtype, shard_size, model_name)
    plan = out / "build.json"
    if resume and plan.exists():
        old = json.loads(plan.read_text(encoding="utf-8"))
        if old != ident:
            diff = sorted(k for k in ident if old.get(k) != ident[k])
            raise UserError(
                f"{out}: cannot resume, the store there was started with other settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} vs {[ident[k] for k in diff]}); use a new folder or no --resume"
            )
        if world_size == 1:  # a previous interrupted writer's temporary file (never another rank's)
            for p in out.glob("*.tmp"):
                p.unlink()
    elif rank == 0:
        _clear(out)
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank == 0 or not plan.exists():
        _atomic_write_text(plan, json.dumps(ident, indent=2))
    if distributed:
        torch.distributed.barrier()  # nobody writes a shard before rank 0 has cleared the folder
    if (out / MANIFEST).exists() and resume:
        return out  # already complete

    def needed(k: int) -> bool:
        return k % world_size == rank and not (out / shard_name(k)).exists()

    source = _as_source(images, pixel_mask)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.count, unit="img", desc=f"cache {kind} (rank {rank}/{world_size})")
    pending: list[torch.Tensor] = []
    current: int | None = None

    def meta(k: int) -> dict[str, str]:
        # one key: safetensors writes a metadata map in hash order, which would make files differ
        return {"dde_bench": json.dumps({"model_hash": ident["model_hash"], "shard": k}, sort_keys=True)}

    def flush(k: int) -> None:
        feats = torch.cat(pending).to(dtype=dtype, device="cpu").contiguous()
        pending.clear()
        path = out / shard_name(k)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({TENSOR: feats}, str(tmp), metadata=meta(k))
        tmp.replace(path)
        if _after_shard is not None:
            _after_shard(k)

    for k, pv, pm in source.batches(needed, shard_size, batch_size):
        if current is not None and k != current:
            flush(current)
        current = k
        pv = pv.to(device=dev, dtype=param_dtype)
        if source.encoded:
            f = pv
        else:
            f = student.encode_images(pv, None if pm is None else pm.to(dev))
        if kind == "fusion":
            f = precompute_image(student, f)
        pending.append(f)
        if bar is not None:
            bar.update(pv.shape[0])
    if current is not None:
        flush(current)
    if bar is not None:
        bar.close()
    count = source.count
    if distributed:
        torch.distributed.barrier()
        if rank != 0:
            return out
    finalize_store(out, count=count, missing_ok=world_size > 1)
    return out


def finalize_store(out_dir: str | Path, count: int | None = None, missing_ok: bool = False) -> bool:
    """Write the manifest once every shard is on disk; returns whether it was written.

    With ``missing_ok`` (other ranks still building) a missing shard returns False instead of raising."""
    out = Path(out_dir)
    ident = json.loads((out / "build.json").read_text(encoding="utf-8"))
    shard_size = ident["shard_size"]
    shards = sorted(out.glob("shard-*.safetensors"))
    names = [p.name for p in shards]
    counts = [_shard_count(p) for p in shards]
    if count is None:  # from a stream: complete shards are full, except the last
        count = sum(counts)
    expect = -(-count // shard_size)
    want = [shard_name(k) for k in range(expect)]
    if names != want or any(c != shard_size for c in counts[:-1]) or sum(counts) != count:
        if missing_ok:
            return False
        missing = sorted(set(want) - set(names))
        raise UserError(f"{out}: incomplete store ({len(names)} of {expect} shards; missing {missing[:3]})")
    manifest = dict(
        ident, count=count, shards=[{"file": n, "count": c} for n, c in zip(names, counts, strict=True)]
    )
    _atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return True


# --------------------------------------------------------------------------------------------- read
@dataclass
class FeatureStore:
    """An opened, complete store. Shards are read lazily through safetensors' memory map."""

    path: Path
    manifest: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def shard_files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.shard_files)

    def iter_shards(
        self, device: torch.device | str = "cpu", limit: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The shards' feature tensors in order, one in memory at a time; with ``limit`` only the first
        ``limit`` rows of the store are read."""
        left = self.count if limit is None else min(int(limit), self.count)
        for p, s in zip(self.shard_files, self.manifest["shards"], strict=True):
            if left <= 0:
                return
            with safe_open(str(p), framework="pt", device=str(device)) as f:
                if left >= s["count"]:
                    yield f.get_tensor(TENSOR)
                else:
                    yield f.get_slice(TENSOR)[:left]
            left -= s["count"]

    def load_all(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Every feature in one tensor (for galleries that fit in memory)."""
        return torch.cat(list(self.iter_shards(device)))


def read_manifest(store_dir: str | Path) -> dict:
    d = Path(store_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise UserError(f"{d}: no such feature store folder")
    if not path.is_file():
        hint = " (an unfinished build: rerun it with --resume)" if (d / "build.json").exists() else ""
        raise UserError(f"{d}: not a complete feature store (no {MANIFEST}){hint}")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a dde-bench feature store (format {m.get('format')!r})")
    return m


def open_store(
    store_dir: str | Path, student: Student | None = None, model_name: str | None = None
) -> FeatureStore:
    """Open a complete store; with ``student``, refuse one built with another model or config."""
    d = Path(store_dir)
    m = read_manifest(d)
    if student is not None:
        mine = model_hash(student)
        if m["model_hash"] != mine:
            raise UserError(
                f"{d}: built with model {m.get('model')!r} (hash {m['model_hash'][:12]}), "
                f"not with {model_name or _describe(student)!r} (hash {mine[:12]}); rebuild the cache for this model"
            )
    for s in m["shards"]:
        if not (d / s["file"]).is_file():
            raise UserError(f"{d}: shard {s['file']} listed in {MANIFEST} is missing")
    return FeatureStore(d, m)


@torch.inference_mode()
def score_text_against_store(
    student: Student,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    store: FeatureStore,
    *,
    batch: int = 8192,
    label: int | None = None,
    topk: int | None = None,
    device: torch.device | str | None = None,
    limit: int | None = None,
):
    """Score one text against every image of the store (the first ``limit`` with ``limit``), streaming shard by
    shard.

    Memory: one shard plus ``batch`` rows of intermediates. Returns logits ``(N, num_labels)``, or with
    ``label`` the scores ``(N,)`` of that class (e.g. NLVR2 ``True`` = 1, SNLI-VE ``entailment`` = 0); with
    ``topk`` (needs ``label``) the ``(values, indices)`` of the k best images, kept as a running top-k.
    """
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"one text at a time, got a batch of {input_ids.shape[0]}")
    if topk is not None and label is None:
        raise ValueError("topk needs label (the class whose score ranks the images)")
    dev = torch.device(device) if device is not None else next(student.parameters()).device
    dtype = next(student.parameters()).dtype
    t = student.encode_text(input_ids.to(dev), None if attention_mask is None else attention_mask.to(dev))
    fusion = store.kind == "fusion"
    tp = precompute_text(student, t) if fusion else t
    outs: list[torch.Tensor] = []
    best_v = best_i = None
    offset = 0
    for feats in store.iter_shards(limit=limit):
        for s in range(0, feats.shape[0], batch):
            f = feats[s : s + batch].to(device=dev, dtype=dtype)
            # with label, only that class's score is computed (both kinds alike)
            if fusion:
                sc = score_precomputed(student, tp, f, label=label)
            else:
                sc = score_pooled(student, tp.expand(f.shape[0], -1), f, label=label)
            if topk is None:
                outs.append(sc)
            else:
                idx = torch.arange(offset + s, offset + s + f.shape[0], device=dev)
                v = sc if best_v is None else torch.cat([best_v, sc])
                i = idx if best_i is None else torch.cat([best_i, idx])
                k = min(topk, v.shape[0])
                best_v, pos = v.topk(k)
                best_i = i[pos]
        offset += feats.shape[0]
    if topk is not None:
        return best_v, best_i
    return torch.cat(outs)
