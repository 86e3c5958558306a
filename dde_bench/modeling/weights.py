"""Weight files: safetensors (the project's format) read and written, torch pickles read weights-only.

Shared by ``checkpoint`` (dde-bench checkpoints) and ``hf`` (transformers ViLT interop), and usable by the
trainer for its own state files. Every failure to read a file is a ``UserError`` naming it, on one line.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dde_bench.errors import UserError, one_line
from dde_bench.files import temp_path

__all__ = [
    "check_shapes",
    "load_safetensors",
    "load_state_checked",
    "load_torch_weights",
    "pickle_refusal",
    "safetensors_shapes",
    "save_safetensors",
]


def save_safetensors(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None
) -> Path:
    """Write ``state`` (contiguous CPU tensors) to ``path`` through a temporary file of its own."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        save_file(dict(state), str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, truncated or garbage file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing weights file")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({one_line(str(e))})") from None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a safetensors file, from its header only (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable safetensors file ({one_line(str(e))})") from None


def pickle_refusal(exc: BaseException) -> str:
    """The useful line of torch.load(weights_only=True)'s refusal (the global it would not load)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    for s in lines:
        if "unsupported GLOBAL" in s or "Unsupported global" in s:
            return s
    return lines[0] if lines else type(exc).__name__


def load_torch_weights(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    A pickle that needs other globals (code it would run) or a garbage / truncated file is a UserError naming
    the file; the refused global is named."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing file")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path}: refused by torch.load(weights_only=True), which loads only tensors and plain containers "
            f"({pickle_refusal(e)}); the file is damaged or holds Python objects"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable torch file ({one_line(str(e))[:200]})") from None


def check_shapes(own: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], source: str) -> None:
    """One clear error for missing, unexpected or wrongly shaped weights (names -> shapes)."""
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, shape in got.items():
        if tuple(shape) != tuple(own[k]):
            raise UserError(f"{source}: {k} has shape {tuple(shape)} but the config implies {tuple(own[k])}")


def load_state_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one clear error for missing, unexpected or wrongly shaped weights."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_shapes(own, {k: tuple(v.shape) for k, v in state.items()}, source)
    module.load_state_dict(dict(state), strict=True)
