"""Data: readers for the original NLVR2 / VQA v2 / SNLI-VE files, the synthetic world that writes the same
formats, tokenisation, ViLT image processing and batching.

Names are imported lazily so that ``dde-bench --help`` does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TaskDataset": "batching",
    "ensure_data": "cache",
    "SuiteData": "suite",
    "load_suite_data": "suite",
    "ImageProcessor": "images",
    "NLVR2_LABELS": "readers",
    "SNLI_VE_LABELS": "readers",
    "Example": "readers",
    "build_vqa_answer_vocab": "readers",
    "check_images": "readers",
    "load_split": "readers",
    "TASK_FAMILIES": "synth",
    "known_families": "synth",
    "synthesize": "synth",
    "encode": "tokenize",
    "load_tokenizer": "tokenize",
    "train_wordpiece": "tokenize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dde_bench.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dde_bench.data' has no attribute {name!r}")
