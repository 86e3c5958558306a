"""Checkpoints: the project's own models as `model.safetensors` + `config.json` in a folder, and loading of
transformers ViLT checkpoints (local folder or, where the hub is reachable, a hub id).

config.json of a dde-bench checkpoint::

    {"format": "dde-bench", "format_version": 1, "kind": "teacher" | "student", "task": "nlvr2",
     "num_labels": 2, "config": {...VLConfig...}, "meta": {...training config, metrics, answer vocab...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dde_bench.errors import UserError
from dde_bench.modeling.config import VLConfig
from dde_bench.modeling.models import Student, Teacher

FORMAT = "dde-bench"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: Teacher | Student, folder: str | Path, meta: dict | None = None) -> Path:
    """Write weights (safetensors) and config (JSON) into `folder`, atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "task": model.task,
        "num_labels": model.num_labels,
        "config": model.config.to_dict(),
        "meta": meta or {},
    }
    answer_vocab = getattr(model, "answer_vocab", None)
    if answer_vocab is not None:
        cfg["meta"]["answer_vocab"] = list(answer_vocab)
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    tmp.replace(folder / CONFIG)
    return folder


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise UserError(f"{folder}: no such checkpoint folder")
    if not path.is_file():
        raise UserError(f"{folder}: not a checkpoint folder (no {CONFIG})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None


def _load_own(folder: Path, cfg: dict, expect_kind: str, map_location="cpu") -> Teacher | Student:
    if cfg.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{folder}: checkpoint format version {cfg.get('format_version')} is not supported")
    kind = cfg.get("kind")
    if kind != expect_kind:
        raise UserError(f"{folder}: this is a {kind} checkpoint, a {expect_kind} was expected")
    vl = VLConfig.from_dict(cfg["config"])
    cls = Teacher if kind == "teacher" else Student
    try:
        model = cls(vl, cfg["task"], cfg.get("num_labels"))
    except ValueError as e:
        raise UserError(f"{folder / CONFIG}: {e}") from None
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder}: no {WEIGHTS}")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: unreadable safetensors file ({e})") from None
    load_state_checked(model, state, str(weights))
    meta = cfg.get("meta", {})
    if "answer_vocab" in meta:
        model.answer_vocab = meta["answer_vocab"]
    model.meta = meta
    return model.eval()


def load_state_checked(module: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict with one clear error for missing, unexpected or wrongly shaped weights."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(
                f"{source}: {k} has shape {tuple(v.shape)} but the config implies {tuple(own[k].shape)}"
            )
    module.load_state_dict(state, strict=True)


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).exists()


def load_teacher(path_or_id: str | Path, task: str | None = None, num_labels: int | None = None) -> Teacher:
    """Load a teacher from a dde-bench checkpoint folder, a transformers ViLT folder, or a hub id."""
    from dde_bench.modeling.hf import teacher_from_hf

    s = str(path_or_id)
    folder = Path(s)
    if not folder.exists():
        if _looks_like_hub_id(s):
            return teacher_from_hf(s, task=task, num_labels=num_labels).eval()
        raise UserError(f"{folder}: no such checkpoint folder")
    cfg = read_config(folder)
    if cfg.get("format") == FORMAT:
        model = _load_own(folder, cfg, "teacher")
        if task is not None and task != model.task:
            raise UserError(f"{folder}: a {model.task} teacher cannot serve task {task}")
        return model
    if cfg.get("model_type") == "vilt":
        return teacher_from_hf(s, task=task, num_labels=num_labels).eval()
    raise UserError(
        f"{folder}: unsupported checkpoint (model_type {cfg.get('model_type')!r}); "
        "expected a dde-bench checkpoint or a transformers ViLT model"
    )


def load_student(path: str | Path) -> Student:
    """Load a student from a dde-bench checkpoint folder."""
    folder = Path(path)
    cfg = read_config(folder)
    if cfg.get("format") != FORMAT:
        raise UserError(f"{folder}: not a dde-bench student checkpoint")
    return _load_own(folder, cfg, "student")


def load_model(path: str | Path) -> Teacher | Student:
    """Either kind, from a dde-bench checkpoint folder."""
    folder = Path(path)
    cfg = read_config(folder)
    if cfg.get("format") != FORMAT:
        return load_teacher(folder)
    return _load_own(folder, cfg, cfg.get("kind", "?"))
