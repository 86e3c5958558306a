"""Training: DiDE losses, the trainer (teacher, student, pre-training, DDP), recipes and ``ensure_trained``.

Names are imported lazily so that ``dde-bench --help`` does not pay for torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cross_modal_attention_loss": "losses",
    "soft_label_loss": "losses",
    "task_loss": "losses",
    "LossWeights": "trainer",
    "OptimConfig": "trainer",
    "TrainConfig": "trainer",
    "train": "trainer",
    "QUICK": "recipes",
    "FULL": "recipes",
    "Recipe": "recipes",
    "ensure_trained": "recipes",
    "trained_resolver": "recipes",
    "train_student": "recipes",
    "train_teacher": "recipes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dde_bench.training.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dde_bench.training' has no attribute {name!r}")
