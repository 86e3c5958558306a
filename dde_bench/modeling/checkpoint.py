"""Checkpoints: the project's own models as `model.safetensors` + `config.json` in a folder, and loading of
transformers ViLT checkpoints (local folder or, where the hub is reachable, a hub id).

config.json of a dde-bench checkpoint::

    {"format": "dde-bench", "format_version": 1, "kind": "teacher" | "student", "task": "nlvr2",
     "num_labels": 2, "config": {...VLConfig...}, "meta": {...training config, metrics, answer vocab...}}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dde_bench.errors import UserError
from dde_bench.files import atomic_write_text, read_json
from dde_bench.modeling.config import VLConfig
from dde_bench.modeling.hf import teacher_from_hf
from dde_bench.modeling.models import TASKS, Student, Teacher
from dde_bench.modeling.weights import (
    check_shapes,
    load_safetensors,
    load_state_checked,
    safetensors_shapes,
    save_safetensors,
)

__all__ = ["load_model", "load_state_checked", "load_student", "load_teacher", "read_config", "save_model"]

FORMAT = "dde-bench"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: Teacher | Student, folder: str | Path, meta: dict | None = None) -> Path:
    """Write weights (safetensors) and config (JSON) into `folder`, atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(state, folder / WEIGHTS)
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
    atomic_write_text(folder / CONFIG, json.dumps(cfg, indent=2))
    return folder


def read_config(folder: str | Path) -> dict:
    """A checkpoint folder's config.json (a dde-bench or a transformers one), as a JSON object."""
    folder = Path(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise UserError(f"{folder}: no such checkpoint folder")
    if not path.is_file():
        raise UserError(f"{folder}: not a checkpoint folder (no {CONFIG})")
    return read_json(path, "checkpoint config")


def checkpoint_answers(folder: str | Path) -> list[str] | None:
    """The VQA answer list a checkpoint predicts into: a dde-bench checkpoint's ``meta.answer_vocab``, a
    transformers one's ``id2label`` (in label order); None when it has none."""
    cfg = read_config(folder)
    meta = cfg.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("answer_vocab"), list):
        return [str(a) for a in meta["answer_vocab"]]
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            return [str(id2label[str(i)]) for i in range(len(id2label))]
        except KeyError:
            raise UserError(f"{folder}/config.json: id2label is not labels 0..{len(id2label) - 1}") from None
    return None


def _checked_fields(path: Path, cfg: dict) -> tuple[str, str, int | None, VLConfig, dict]:
    """kind, task, num_labels, config and meta of a dde-bench config.json, each checked for type; a wrong
    one is a UserError naming the file and the key."""
    kind, task, num_labels = cfg.get("kind"), cfg.get("task"), cfg.get("num_labels")
    if kind not in ("teacher", "student"):
        raise UserError(f'{path}: \'kind\' must be "teacher" or "student", got {kind!r}')
    if task not in TASKS:
        raise UserError(f"{path}: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    if num_labels is not None and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1
    ):
        raise UserError(f"{path}: 'num_labels' must be a positive integer, got {num_labels!r}")
    if "config" not in cfg:
        raise UserError(f"{path}: no 'config' (the model sizes)")
    vl = VLConfig.from_dict(cfg["config"], source=f"{path}: 'config'")
    meta = cfg.get("meta", {})
    if not isinstance(meta, dict):
        raise UserError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    vocab = meta.get("answer_vocab")
    if vocab is not None and (not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab)):
        raise UserError(f"{path}: 'meta.answer_vocab' must be a list of strings")
    return kind, task, num_labels, vl, meta


def min_parameters(cfg: VLConfig) -> int:
    """A lower bound of the parameters a model of ``cfg`` has (its transformer blocks' matrices and the word
    embedding), cheap to compute: a checkpoint whose weights hold fewer does not fit its config."""
    h = cfg.hidden_size
    return cfg.num_layers * (4 * h * h + 2 * h * cfg.mlp_size) + cfg.vocab_size * h


def _load_own(folder: Path, cfg: dict, expect_kind: str, map_location="cpu") -> Teacher | Student:
    path = folder / CONFIG
    if cfg.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {cfg.get('format_version')!r} is not supported")
    kind, task, num_labels, vl, meta = _checked_fields(path, cfg)
    if kind != expect_kind:
        raise UserError(f"{folder}: this is a {kind} checkpoint, a {expect_kind} was expected")
    cls = Teacher if kind == "teacher" else Student
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder}: no {WEIGHTS}")
    shapes = safetensors_shapes(weights)
    held = sum(math.prod(shape) for shape in shapes.values())
    if held < min_parameters(vl):  # a config far larger than its weights: refused before building anything
        raise UserError(
            f"{path}: 'config' implies at least {min_parameters(vl):,} parameters, {weights.name} holds {held:,}"
        )
    try:
        with torch.device("meta"):  # the shapes the config implies, without allocating memory
            skeleton = cls(vl, task, num_labels)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    own = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    check_shapes(own, shapes, str(weights))
    model = cls(vl, task, num_labels)
    load_state_checked(model, load_safetensors(weights, device=map_location), str(weights))
    if "answer_vocab" in meta:
        model.answer_vocab = meta["answer_vocab"]
    model.meta = meta
    return model.eval()


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).exists()


def load_teacher(path_or_id: str | Path, task: str | None = None, num_labels: int | None = None) -> Teacher:
    """Load a teacher from a dde-bench checkpoint folder, a transformers ViLT folder, or a hub id."""
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
