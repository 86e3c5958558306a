"""Image features on disk, for galleries larger than memory.

A store is a folder::

    build.json               identity of the model, kind, dtype and shard size (written first)
    shard-00000.safetensors  one tensor "features": (n, h) pooled / (n, 2h) fusion; (n, 2, .) for NLVR2;
                             its metadata names the model hash and the rows it holds
    shard-00000.json         the shard's record: model hash, rows [lo, hi), byte size, sha256
    shard-00001.safetensors  ...
    manifest.json            identity, count and every shard's record (written last)

Image ``j`` of the source lives in shard ``j // shard_size`` at row ``j % shard_size``.

``kind="pooled"`` stores ``Student.encode_images`` (what ``Student.score`` takes); ``kind="fusion"`` stores the
fusion-aware precomputation ``W_i i + b`` (``dde_bench.modeling.fastpath``): twice the bytes, cheaper scoring.

Every shard is written to a temporary name and renamed, then its record is written beside it. A shard is
trusted only if it verifies against its record and the store's identity (model hash, row range, byte size,
sha256 and the header's shape and dtype): a resumed build (``resume=True``) keeps the shards that verify and
builds the others again, and ends byte-identical to a build done in one go (images are encoded in batches
counted from each shard's start, whoever builds it). :func:`finalize_store`, :func:`open_store` and
``dde-bench cache info`` refuse a store that does not verify, naming the shard. A build holds the folder's
lock (``dde_bench.files.FolderLock``): a second build of the same store is refused.

Several processes (``torchrun --nproc-per-node K``) build one store together: rank ``r`` of ``world_size``
builds the shards whose index ``% world_size == r`` (:func:`rank_shards`). With ``torch.distributed``
initialised the ranks meet at a barrier and rank 0 writes the manifest; without it (or with ranks run one
after another) whichever rank finds every shard present writes it.

The store is tied to the model: ``model_hash`` is a SHA-256 of the student's config, task, number of labels
and its image-tower and fusion weights, recorded in build.json, every shard and the manifest.
:func:`open_store` refuses a store built with another model.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dde_bench.errors import UserError
from dde_bench.files import FolderLock, atomic_write_text, read_json, temp_path
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
FORMAT_VERSION = 2  # 2: every shard has a record (rows, bytes, sha256) and names its rows in its metadata
MANIFEST = "manifest.json"
PLAN = "build.json"
KINDS = ("pooled", "fusion")
TENSOR = "features"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def record_name(index: int) -> str:
    """The file beside shard ``index`` holding its record (model hash, rows, bytes, sha256)."""
    return f"shard-{index:05d}.json"


# safetensors' dtype names, by torch dtype name (the manifest's "dtype")
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _shard_problem(d: Path, k: int, record: Any, ident: dict, checksum: bool = True) -> str | None:
    """Why shard ``k`` of store ``d`` does not verify against its ``record`` and the store's identity
    (model hash, rows, byte size, header shape / dtype / metadata, sha256), or None when it does."""
    path = d / shard_name(k)
    if not path.is_file():
        return "the file is missing"
    if not isinstance(record, dict):
        return "its record is not a JSON object"
    if record.get("model_hash") != ident["model_hash"]:
        return (
            f"built with another model (hash {str(record.get('model_hash'))[:12]}, "
            f"this store's is {ident['model_hash'][:12]})"
        )
    size, lo = ident["shard_size"], k * ident["shard_size"]
    count, rows = record.get("count"), record.get("rows")
    if not isinstance(count, int) or not 0 < count <= size or rows != [lo, lo + count]:
        return (
            f"its record gives rows {rows!r}, count {count!r}; shard {k} holds at most {size} rows from {lo}"
        )
    nbytes = path.stat().st_size
    if nbytes != record.get("bytes"):
        return f"it is {nbytes} bytes, {record.get('bytes')!r} were written (truncated or replaced?)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dde_bench", "null"))
            tensor = f.get_slice(TENSOR)
            shape, dtype = list(tensor.get_shape()), tensor.get_dtype()
    except (SafetensorError, OSError, ValueError, KeyError, TypeError):
        return "not a readable safetensors file of a feature store"
    if not isinstance(meta, dict) or meta.get("model_hash") != ident["model_hash"]:
        named = meta.get("model_hash") if isinstance(meta, dict) else None
        return f"built with another model (its header names hash {str(named)[:12]}, this store's is {ident['model_hash'][:12]})"
    if meta != {"model_hash": ident["model_hash"], "rows": [lo, lo + count], "shard": k}:
        return f"its header names shard {meta.get('shard')!r} rows {meta.get('rows')!r}, not shard {k} rows {[lo, lo + count]}"
    if shape != [count, *ident["feature_shape"]]:
        return f"its features have shape {shape}, expected {[count, *ident['feature_shape']]}"
    if dtype != _ST_DTYPES.get(ident["dtype"], ident["dtype"]):
        return f"its features are {dtype}, the store's dtype is {ident['dtype']}"
    if checksum and _sha256(path) != record.get("sha256"):
        return "its sha256 differs from the one recorded when it was written (the file was changed)"
    return None


def _bad_shard(d: Path, k: int, problem: str) -> UserError:
    return UserError(
        f"{d}: {shard_name(k)} does not verify: {problem}; rebuild the store "
        "(cache build --resume rebuilds only the shards that do not verify)"
    )


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


def _clear(out: Path) -> None:
    for p in [*out.glob("shard-*"), *out.glob("*.tmp"), out / MANIFEST, out / PLAN]:
        p.unlink(missing_ok=True)


def _read_plan(out: Path) -> dict:
    plan = read_json(out / PLAN, "build plan", object_only=False)
    if not isinstance(plan, dict) or not isinstance(plan.get("shard_size"), int) or plan["shard_size"] < 1:
        raise UserError(
            f"{out / PLAN}: not a feature-store build plan; build the store again without --resume"
        )
    return plan


def _keep_verified(out: Path, ident: dict, mine: Callable[[int], bool]) -> set[int]:
    """Shards of this rank already in ``out`` that verify; the others (and orphan records) are removed."""
    kept: set[int] = set()
    indices = {int(p.name[6:11]) for p in out.glob("shard-[0-9][0-9][0-9][0-9][0-9].*")}
    for k in sorted(i for i in indices if mine(i)):
        shard, rec_path = out / shard_name(k), out / record_name(k)
        if not shard.exists():
            rec_path.unlink(missing_ok=True)
            continue
        try:
            record = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        problem = _shard_problem(out, k, record, ident)
        if problem is None:
            kept.add(k)
            continue
        warnings.warn(
            f"{out}: {shard_name(k)} does not verify ({problem}); building it again",
            RuntimeWarning,
            stacklevel=3,
        )
        shard.unlink(missing_ok=True)
        rec_path.unlink(missing_ok=True)
    return kept


def _lock_store(out: Path, rank: int, distributed: bool) -> FolderLock:
    """The store's build lock, taken by rank 0 (every rank, without torch.distributed); with torch.distributed
    rank 0's refusal reaches every rank, so none waits at a barrier for a rank that gave up."""
    lock = FolderLock(out, "feature store")
    error = None
    if rank == 0 or not distributed:
        try:
            lock.acquire()
        except UserError as e:
            error = str(e)
    if distributed:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        lock.release()
        raise UserError(error)
    return lock


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
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (a feature store is a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the store folder: {e.strerror}") from None
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    lock = _lock_store(out, rank, distributed)
    try:
        return _build(
            student,
            images,
            out,
            shard_size=shard_size,
            kind=kind,
            batch_size=batch_size,
            pixel_mask=pixel_mask,
            dtype=dtype,
            device=device,
            progress=progress,
            resume=resume,
            rank=rank,
            world_size=world_size,
            model_name=model_name,
            distributed=distributed,
            _after_shard=_after_shard,
        )
    finally:
        lock.release()


def _build(
    student: Student,
    images,
    out: Path,
    *,
    shard_size: int,
    kind: str,
    batch_size: int,
    pixel_mask: torch.Tensor | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    progress: bool,
    resume: bool,
    rank: int,
    world_size: int,
    model_name: str | None,
    distributed: bool,
    _after_shard: Callable[[int], None] | None,
) -> Path:
    """The body of :func:`build_store`, run while holding the store's lock."""
    dev = torch.device(device) if device is not None else next(student.parameters()).device
    param_dtype = next(student.parameters()).dtype
    dtype = dtype or param_dtype
    ident = _identity(student, kind, dtype, shard_size, model_name)
    plan = out / PLAN
    if resume and plan.exists():
        old = _read_plan(out)
        if old != ident:
            diff = sorted(k for k in ident if old.get(k) != ident[k])
            raise UserError(
                f"{out}: cannot resume, the store there was started with other settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} vs {[ident[k] for k in diff]}); use a new folder or no --resume"
            )
        if world_size == 1:  # a previous interrupted writer's temporary file (never another rank's)
            for p in out.glob("*.tmp"):
                p.unlink(missing_ok=True)
    elif rank == 0:
        _clear(out)
    # under torch.distributed only rank 0 writes the plan: another rank's temporary file could be cleared by rank 0's
    # _clear before it is renamed (a race that failed the 2-process build now and then); the barrier orders them
    if rank == 0 or (not distributed and not plan.exists()):
        atomic_write_text(plan, json.dumps(ident, indent=2))
    if distributed:
        torch.distributed.barrier()  # nobody writes a shard before rank 0 has cleared the folder
    if (out / MANIFEST).exists() and resume:
        try:
            open_store(out)
            return out  # already complete, and it verifies
        except UserError as e:
            warnings.warn(
                f"{e}; checking every shard and building again what does not verify",
                RuntimeWarning,
                stacklevel=3,
            )
            (out / MANIFEST).unlink(missing_ok=True)
    kept = _keep_verified(out, ident, lambda k: k % world_size == rank) if resume else set()

    def needed(k: int) -> bool:
        return k % world_size == rank and k not in kept

    source = _as_source(images, pixel_mask)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.count, unit="img", desc=f"cache {kind} (rank {rank}/{world_size})")
    pending: list[torch.Tensor] = []
    current: int | None = None

    def flush(k: int) -> None:
        feats = torch.cat(pending).to(dtype=dtype, device="cpu").contiguous()
        pending.clear()
        lo, n = k * shard_size, int(feats.shape[0])
        rows = [lo, lo + n]
        # one metadata key: safetensors writes a metadata map in hash order, which would make files differ
        meta = {
            "dde_bench": json.dumps(
                {"model_hash": ident["model_hash"], "rows": rows, "shard": k}, sort_keys=True
            )
        }
        path = out / shard_name(k)
        tmp = temp_path(path)
        try:
            save_file({TENSOR: feats}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        record = {
            "file": path.name,
            "model_hash": ident["model_hash"],
            "rows": rows,
            "count": n,
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        atomic_write_text(out / record_name(k), json.dumps(record, indent=2))
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
    """Verify every shard against its record and write the manifest; returns whether it was written.

    A shard that does not verify (another model, wrong rows, size, header or checksum) is a ``UserError``
    naming it. With ``missing_ok`` (other ranks still building) a missing shard or record returns False
    instead of raising."""
    out = Path(out_dir)
    ident = _read_plan(out)
    shard_size = ident["shard_size"]
    names = sorted(p.name for p in out.glob("shard-*.safetensors"))
    if count is None:  # from a stream: every shard but the last is full
        count = sum(_record_count(out, n) for n in names)
    expect = -(-count // shard_size)
    want = [shard_name(k) for k in range(expect)]
    present = [
        k for k in range(expect) if (out / shard_name(k)).is_file() and (out / record_name(k)).is_file()
    ]
    if names != want or len(present) != expect:
        if missing_ok:
            return False
        missing = [
            n for n in want if n not in names or not (out / n.replace(".safetensors", ".json")).is_file()
        ]
        extra = sorted(set(names) - set(want))
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(f"{out}: incomplete store ({len(present)} of {expect} shards; {detail})")
    shards = []
    for k in range(expect):
        record = read_json(out / record_name(k), "shard record")
        problem = _shard_problem(out, k, record, ident)
        if problem is None and record["count"] != min(shard_size, count - k * shard_size):
            problem = f"it holds {record['count']} rows, a store of {count} images needs {min(shard_size, count - k * shard_size)}"
        if problem is not None:
            raise _bad_shard(out, k, problem)
        shards.append({key: record[key] for key in ("file", "rows", "count", "bytes", "sha256")})
    atomic_write_text(out / MANIFEST, json.dumps(dict(ident, count=count, shards=shards), indent=2))
    return True


def _record_count(out: Path, shard_file: str) -> int:
    record = read_json(out / shard_file.replace(".safetensors", ".json"), "shard record")
    if not isinstance(record, dict) or not isinstance(record.get("count"), int):
        raise UserError(f"{out}: the record of {shard_file} is malformed; build the store again")
    return record["count"]


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
            try:
                with safe_open(str(p), framework="pt", device=str(device)) as f:
                    feats = f.get_tensor(TENSOR) if left >= s["count"] else f.get_slice(TENSOR)[:left]
            except (SafetensorError, OSError) as e:
                raise UserError(f"{p}: unreadable shard ({e}); rebuild the store") from None
            yield feats
            left -= s["count"]

    def load_all(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Every feature in one tensor (for galleries that fit in memory)."""
        return torch.cat(list(self.iter_shards(device)))


# manifest keys and their types (bool is not an int here)
_MANIFEST_TYPES = {
    "model_hash": str,
    "task": str,
    "kind": str,
    "dtype": str,
    "feature_shape": list,
    "shard_size": int,
    "count": int,
    "shards": list,
}


def read_manifest(store_dir: str | Path) -> dict:
    """The manifest of a complete store, checked for shape: every key of the right type, shard ``i`` named
    ``shard_name(i)`` holding rows ``[i * shard_size, ...)`` without gaps, counts adding up. A ``UserError``
    names the file and key otherwise."""
    d = Path(store_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise UserError(f"{d}: no such feature store folder")
    if not path.is_file():
        hint = " (an unfinished build: rerun it with --resume)" if (d / PLAN).exists() else ""
        raise UserError(f"{d}: not a complete feature store (no {MANIFEST}){hint}")
    m = read_json(path, "manifest", object_only=False)
    if not isinstance(m, dict):
        raise UserError(f"{path}: malformed manifest (a JSON {type(m).__name__}, not an object)")
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: not a dde-bench feature store of format version {FORMAT_VERSION} "
            f"(format {m.get('format')!r}, version {m.get('format_version')!r}); build it again"
        )
    for key, typ in _MANIFEST_TYPES.items():
        if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
            raise UserError(
                f"{path}: malformed manifest: {key!r} must be a {typ.__name__}, got {m.get(key)!r}"
            )
    if m["kind"] not in KINDS or m["shard_size"] < 1 or m["count"] < 0:
        raise UserError(
            f"{path}: malformed manifest: kind {m['kind']!r}, shard_size {m['shard_size']}, count {m['count']}"
        )
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in m["feature_shape"]):
        raise UserError(f"{path}: malformed manifest: feature_shape {m['feature_shape']!r}")
    lo = 0
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or s.get("file") != shard_name(i):
            raise UserError(
                f"{path}: malformed manifest: shard entry {i} must name {shard_name(i)}, got {s!r}"
            )
        n = s.get("count")
        if not isinstance(n, int) or s.get("rows") != [lo, lo + n] or not 0 < n <= m["shard_size"]:
            raise UserError(
                f"{path}: malformed manifest: {shard_name(i)} rows {s.get('rows')!r}, count {n!r}"
            )
        lo += n
    if lo != m["count"]:
        raise UserError(f"{path}: malformed manifest: the shards hold {lo} rows, count says {m['count']}")
    return m


def open_store(
    store_dir: str | Path,
    student: Student | None = None,
    model_name: str | None = None,
    *,
    checksum: bool = True,
) -> FeatureStore:
    """Open a complete store, verifying every shard (model hash, rows, byte size, header; with ``checksum``
    its sha256, which reads every byte once); with ``student``, refuse one built with another model or config.
    A store that does not verify is a ``UserError`` naming the shard."""
    d = Path(store_dir)
    m = read_manifest(d)
    if student is not None:
        mine = model_hash(student)
        if m["model_hash"] != mine:
            raise UserError(
                f"{d}: built with model {m.get('model')!r} (hash {m['model_hash'][:12]}), "
                f"not with {model_name or _describe(student)!r} (hash {mine[:12]}); rebuild the cache for this model"
            )
    for k, s in enumerate(m["shards"]):
        problem = _shard_problem(d, k, dict(s, model_hash=m["model_hash"]), m, checksum=checksum)
        if problem is not None:
            raise _bad_shard(d, k, problem)
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
