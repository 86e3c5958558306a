"""Interop with transformers' ViLT: load its checkpoints into our teacher, and export our teacher to it.

Supported transformers classes: ViltModel (backbone only), ViltForQuestionAnswering (VQA head; also used for
SNLI-VE's 3-way head, which has the same shape), ViltForImagesAndTextClassification (NLVR2, two images) and
ViltForMaskedLM (backbone; its MLM head is kept for pre-training).
"""

from __future__ import annotations

import pickle
import re

import torch

from dde_bench.errors import UserError, one_line
from dde_bench.modeling.config import VLConfig
from dde_bench.modeling.models import Teacher
from dde_bench.modeling.weights import load_state_checked, pickle_refusal

SUPPORTED = (
    "ViltModel",
    "ViltForQuestionAnswering",
    "ViltForImagesAndTextClassification",
    "ViltForMaskedLM",
)
_ARCH_TASK = {"ViltForQuestionAnswering": "vqa", "ViltForImagesAndTextClassification": "nlvr2"}

# our VLTransformer parameter name -> transformers ViltModel parameter name
_ENC_MAP = [
    (r"text_embeddings\.word\.", "embeddings.text_embeddings.word_embeddings."),
    (r"text_embeddings\.position\.", "embeddings.text_embeddings.position_embeddings."),
    (r"text_embeddings\.token_type\.", "embeddings.text_embeddings.token_type_embeddings."),
    (r"text_embeddings\.norm\.", "embeddings.text_embeddings.LayerNorm."),
    (r"image_embeddings\.patch\.", "embeddings.patch_embeddings.projection."),
    (r"image_embeddings\.cls_token$", "embeddings.cls_token"),
    (r"image_embeddings\.position$", "embeddings.position_embeddings"),
    (r"modality_type\.", "embeddings.token_type_embeddings."),
    (r"blocks\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
    (r"blocks\.(\d+)\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"blocks\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
    (r"blocks\.(\d+)\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"blocks\.(\d+)\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"norm\.", "layernorm."),
    (r"pooler\.", "pooler.dense."),
]


def config_from_hf(hf_config, source: str = "transformers config") -> VLConfig:
    """Our config from a transformers ViltConfig; wrong types or sizes are a UserError starting with ``source``."""

    def one(v):
        return v[0] if isinstance(v, list | tuple) and v else v

    fields = dict(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        mlp_size=hf_config.intermediate_size,
        max_text_len=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        modality_type_vocab_size=hf_config.modality_type_vocab_size,
        image_size=one(hf_config.image_size),
        patch_size=one(hf_config.patch_size),
        num_channels=hf_config.num_channels,
        layer_norm_eps=hf_config.layer_norm_eps,
        init_std=hf_config.initializer_range,
        qkv_bias=hf_config.qkv_bias,
        hidden_act=hf_config.hidden_act,
    )
    return VLConfig.from_dict(fields, source=source)


def hf_config_from(cfg: VLConfig, **extra):
    from transformers import ViltConfig

    kwargs = dict(
        vocab_size=cfg.vocab_size,
        type_vocab_size=cfg.type_vocab_size,
        modality_type_vocab_size=cfg.modality_type_vocab_size,
        max_position_embeddings=cfg.max_text_len,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=cfg.init_std,
        layer_norm_eps=cfg.layer_norm_eps,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        qkv_bias=cfg.qkv_bias,
    )
    kwargs.update(extra)
    return ViltConfig(**kwargs)


def _to_hf_name(name: str) -> str:
    for pat, repl in _ENC_MAP:
        new, n = re.subn("^" + pat, repl, name)
        if n:
            return new
    raise KeyError(name)


def encoder_to_hf_state(enc_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder state dict -> ViltModel state dict (the fused qkv split into query, key, value)."""
    out = {}
    for name, t in enc_state.items():
        m = re.match(r"blocks\.(\d+)\.qkv\.(weight|bias)$", name)
        if m:
            i, kind = m.groups()
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0), strict=True):
                out[f"encoder.layer.{i}.attention.attention.{part}.{kind}"] = chunk.clone()
            continue
        out[_to_hf_name(name)] = t
    return out


def encoder_from_hf_state(
    hf_state: dict[str, torch.Tensor], own_keys, source: str
) -> dict[str, torch.Tensor]:
    """ViltModel state dict (no prefix) -> our encoder state dict for the parameter names `own_keys`
    (query, key and value fused into one qkv projection)."""
    out = {}
    for name in own_keys:
        m = re.match(r"blocks\.(\d+)\.qkv\.(weight|bias)$", name)
        hf_names = (
            [f"encoder.layer.{m[1]}.attention.attention.{x}.{m[2]}" for x in ("query", "key", "value")]
            if m
            else [_to_hf_name(name)]
        )
        missing = [n for n in hf_names if n not in hf_state]
        if missing:
            raise UserError(f"{source}: the transformers checkpoint lacks {missing[0]}")
        out[name] = torch.cat([hf_state[n] for n in hf_names]) if m else hf_state[hf_names[0]]
    return out


def _load_hf_model(path_or_id: str):
    import transformers

    try:
        hf_config = transformers.AutoConfig.from_pretrained(path_or_id)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(
            f"cannot read a transformers config from {path_or_id!r}: {one_line(str(e))[:300]}"
        ) from None
    if getattr(hf_config, "model_type", None) != "vilt":
        raise UserError(
            f"{path_or_id}: unsupported architecture (model_type {getattr(hf_config, 'model_type', None)!r}); "
            f"dde-bench loads ViLT checkpoints ({', '.join(SUPPORTED)})"
        )
    archs = getattr(hf_config, "architectures", None) or ["ViltModel"]
    arch = archs[0] if isinstance(archs, list | tuple) else archs
    if arch not in SUPPORTED:
        raise UserError(
            f"{path_or_id}: unsupported ViLT architecture {arch}; supported: {', '.join(SUPPORTED)}"
        )
    config_from_hf(
        hf_config, source=f"{path_or_id}: config.json"
    )  # wrong types / sizes: one line, before loading
    try:
        model = getattr(transformers, arch).from_pretrained(path_or_id)
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused a pickle (or it is garbage)
        raise UserError(
            f"cannot load {arch} weights from {path_or_id!r}: torch.load(weights_only=True) refused the pickle "
            f"({pickle_refusal(e)}); only tensors are loaded from pickle files: use a safetensors copy "
            "(model.safetensors) of a trusted checkpoint"
        ) from None
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, EOFError) as e:
        raise UserError(f"cannot load {arch} weights from {path_or_id!r}: {one_line(str(e))[:300]}") from None
    return arch, model


def teacher_from_hf(path_or_id: str, task: str | None = None, num_labels: int | None = None) -> Teacher:
    """Build our Teacher from a transformers ViLT checkpoint (local folder or hub id).

    The task head comes from the checkpoint when it has one (VQA / NLVR2); otherwise `task` (and for VQA
    `num_labels`) must be given and the head starts from random weights."""
    arch, hf = _load_hf_model(path_or_id)
    ckpt_task = _ARCH_TASK.get(arch)
    if ckpt_task == "vqa" and task == "snli-ve":
        ckpt_task = "snli-ve"  # a 3-way QA-shaped head
    task = task or ckpt_task
    if task is None:
        raise UserError(f"{path_or_id} is a {arch} without a task head: say which task (nlvr2, vqa, snli-ve)")
    if ckpt_task is not None and task != ckpt_task:
        raise UserError(f"{path_or_id} is a {arch} checkpoint ({ckpt_task}), not usable for task {task}")
    cfg = config_from_hf(hf.config, source=f"{path_or_id}: config.json")
    if ckpt_task is not None:
        num_labels = hf.config.num_labels
    teacher = Teacher(cfg, task, num_labels)
    backbone = hf if arch == "ViltModel" else hf.vilt
    own = teacher.encoder.state_dict()
    enc_state = encoder_from_hf_state(backbone.state_dict(), own.keys(), str(path_or_id))
    if task == "nlvr2" and enc_state["modality_type.weight"].shape[0] < own["modality_type.weight"].shape[0]:
        # an image-text checkpoint without the second image's type: initialise type 2 from type 1, as ViLT does
        mt = enc_state["modality_type.weight"]
        enc_state["modality_type.weight"] = torch.cat([mt, mt[1:2]], dim=0)
    load_state_checked(teacher.encoder, enc_state, str(path_or_id))
    if ckpt_task is not None:
        head_state = {
            k.removeprefix("classifier."): v
            for k, v in hf.state_dict().items()
            if k.startswith("classifier.")
        }
        load_state_checked(teacher.head, head_state, str(path_or_id))
    if arch == "ViltForMaskedLM":
        teacher.hf_mlm_head_state = {
            k.removeprefix("mlm_score."): v for k, v in hf.state_dict().items() if k.startswith("mlm_score.")
        }
    id2label = getattr(hf.config, "id2label", None)
    if task == "vqa" and id2label:
        teacher.answer_vocab = [id2label[i] for i in range(len(id2label))]
    return teacher


def teacher_to_hf(teacher: Teacher):
    """Our teacher -> the transformers model a user would otherwise run, with identical weights:
    ViltForImagesAndTextClassification for NLVR2, ViltForQuestionAnswering for VQA and SNLI-VE."""
    import transformers

    cfg = teacher.config
    if teacher.task == "nlvr2":
        hf_cfg = hf_config_from(cfg, num_images=2, num_labels=2)
        model = transformers.ViltForImagesAndTextClassification(hf_cfg)
    else:
        hf_cfg = hf_config_from(cfg, num_labels=teacher.num_labels)
        model = transformers.ViltForQuestionAnswering(hf_cfg)
    state = {"vilt." + k: v for k, v in encoder_to_hf_state(teacher.encoder.state_dict()).items()}
    state.update({"classifier." + k: v for k, v in teacher.head.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"export to transformers failed: missing {missing}, unexpected {unexpected}")
    return model.eval()
