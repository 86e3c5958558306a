"""The teacher (ViLT fusion encoder + task head) and the student (DiDE dual encoder + the same head).

Inputs, for every task:
  input_ids, attention_mask   (B, T)
  pixel_values                (B, 3, H, W), or (B, 2, 3, H, W) for NLVR2 (left, right image)
  pixel_mask                  (B, H, W),    or (B, 2, H, W) for NLVR2; None = no padding

NLVR2 follows the "pair" scheme: the sentence is paired with each image (modality types 1 and 2) and the two
pooled vectors are concatenated before the classifier. The teacher runs both pairs as one batch of 2B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import record_function

from dde_bench.modeling.config import VLConfig
from dde_bench.modeling.transformer import EncoderOutput, VLTransformer
from dde_bench.tasks import NUM_LABELS, TASKS, num_images  # noqa: F401 - num_images re-exported


class ClassifierHead(nn.Sequential):
    """ViLT's task head: Linear - LayerNorm - GELU - Linear.

    VQA / SNLI-VE: Linear(h, 2h) over the pooled vector; NLVR2: Linear(2h, 2h) over [pooled_1; pooled_2].
    (LayerNorm with torch's default eps, as in ViLT and transformers.)"""

    def __init__(self, hidden_size: int, task: str, num_labels: int):
        n = num_images(task)
        in_dim = hidden_size * n
        mid = hidden_size * 2
        super().__init__(nn.Linear(in_dim, mid), nn.LayerNorm(mid), nn.GELU(), nn.Linear(mid, num_labels))


def _init_head(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)


def _check_task(task: str, num_labels: int | None) -> int:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if num_labels is None:
        if task == "vqa":
            raise ValueError("vqa needs num_labels (the size of the answer vocabulary)")
        num_labels = NUM_LABELS[task]
    return num_labels


def _task_config(config: VLConfig, task: str) -> VLConfig:
    """NLVR2's second image has its own modality type (2), so its type table needs three rows."""
    if task == "nlvr2" and config.modality_type_vocab_size < 3:
        return config.replace(modality_type_vocab_size=3)
    return config


def _flatten_pairs(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None):
    """(B, 2, C, H, W) -> (2B, C, H, W) ordered [all left images; all right images], with modality types."""
    b = pixel_values.shape[0]
    pv = pixel_values.transpose(0, 1).reshape(2 * b, *pixel_values.shape[2:])
    pm = None if pixel_mask is None else pixel_mask.transpose(0, 1).reshape(2 * b, *pixel_mask.shape[2:])
    types = torch.cat([torch.full((b,), 1, dtype=torch.long), torch.full((b,), 2, dtype=torch.long)]).to(
        pixel_values.device
    )
    return pv, pm, types


def _pair_concat(x: torch.Tensor) -> torch.Tensor:
    """(2B, h) ordered [left; right] -> (B, 2h) = [x_left, x_right]."""
    b = x.shape[0] // 2
    return torch.cat([x[:b], x[b:]], dim=-1)


@dataclass
class TeacherOutput:
    logits: torch.Tensor
    pooled: torch.Tensor  # (B, h), or (2B, h) for NLVR2 ordered [left; right]
    encoder: EncoderOutput  # for NLVR2 a batch of 2B: [text+left; text+right]


class Teacher(nn.Module):
    """ViLT fusion encoder + task head."""

    kind = "teacher"

    def __init__(self, config: VLConfig, task: str, num_labels: int | None = None):
        super().__init__()
        self.num_labels = _check_task(task, num_labels)
        self.config = config = _task_config(config, task)
        self.task = task
        self.encoder = VLTransformer(config, text=True, image=True)
        self.head = ClassifierHead(config.hidden_size, task, self.num_labels)
        _init_head(self.head, config.init_std)

    def forward_full(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        explicit: bool = False,
    ) -> TeacherOutput:
        with record_function("teacher.joint"):
            if self.task == "nlvr2":
                pv, pm, types = _flatten_pairs(pixel_values, pixel_mask)
                ids = torch.cat([input_ids, input_ids])
                am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                enc = self.encoder(ids, am, pv, pm, image_type=types, explicit=explicit)
                pooled = _pair_concat(enc.pooled)
            else:
                enc = self.encoder(
                    input_ids, attention_mask, pixel_values, pixel_mask, image_type=1, explicit=explicit
                )
                pooled = enc.pooled
        with record_function("teacher.head"):
            logits = self.head(pooled)
        return TeacherOutput(logits=logits, pooled=enc.pooled, encoder=enc)

    def forward(self, input_ids, attention_mask, pixel_values, pixel_mask=None) -> torch.Tensor:
        """Logits (B, num_labels), through the fast SDPA path."""
        return self.forward_full(input_ids, attention_mask, pixel_values, pixel_mask).logits


@dataclass
class StudentOutput:
    logits: torch.Tensor
    text: EncoderOutput  # text tower over (B, T)
    image: EncoderOutput | None  # image tower over B images (2B for NLVR2, [left; right]); None when cached
    extras: dict = field(default_factory=dict)


class FusionMLP(nn.Sequential):
    """DiDE's fusion layer over [text_pooled; image_pooled]: Linear(2h,2h) - LayerNorm - GELU - Linear(2h,h)."""

    def __init__(self, hidden_size: int):
        h = hidden_size
        super().__init__(nn.Linear(2 * h, 2 * h), nn.LayerNorm(2 * h), nn.GELU(), nn.Linear(2 * h, h))


class Student(nn.Module):
    """DiDE dual encoder: text tower + image tower (unshared weights) + fusion MLP + the teacher's head.

    Only fusion and head need both modalities, so image-tower outputs can be computed once and cached:
    `encode_images` gives (B, h) pooled features, (B, 2, h) for NLVR2 (one per image position, since the
    modality type differs), and `forward_cached` runs only the text tower, fusion and head against them."""

    kind = "student"

    def __init__(self, config: VLConfig, task: str, num_labels: int | None = None):
        super().__init__()
        self.num_labels = _check_task(task, num_labels)
        self.config = config = _task_config(config, task)
        self.task = task
        self.text_tower = VLTransformer(config, text=True, image=False)
        self.image_tower = VLTransformer(config, text=False, image=True)
        self.fusion = FusionMLP(config.hidden_size)
        self.head = ClassifierHead(config.hidden_size, task, self.num_labels)
        _init_head(self.fusion, config.init_std)
        _init_head(self.head, config.init_std)

    # -- the three stages -------------------------------------------------------------------------------
    def encode_text_full(self, input_ids, attention_mask, explicit: bool = False) -> EncoderOutput:
        with record_function("student.text_tower"):
            return self.text_tower(input_ids, attention_mask, explicit=explicit)

    def encode_images_full(self, pixel_values, pixel_mask=None, explicit: bool = False) -> EncoderOutput:
        """Image tower over B images, or 2B for NLVR2 ([left; right], modality types 1 and 2)."""
        with record_function("student.image_tower"):
            if self.task == "nlvr2":
                pv, pm, types = _flatten_pairs(pixel_values, pixel_mask)
                return self.image_tower(pixel_values=pv, pixel_mask=pm, image_type=types, explicit=explicit)
            return self.image_tower(
                pixel_values=pixel_values, pixel_mask=pixel_mask, image_type=1, explicit=explicit
            )

    def encode_text(self, input_ids, attention_mask) -> torch.Tensor:
        """Pooled text features (B, h)."""
        return self.encode_text_full(input_ids, attention_mask).pooled

    def encode_images(self, pixel_values, pixel_mask=None) -> torch.Tensor:
        """Pooled image features to cache: (B, h), or (B, 2, h) for NLVR2."""
        pooled = self.encode_images_full(pixel_values, pixel_mask).pooled
        if self.task == "nlvr2":
            b = pooled.shape[0] // 2
            return torch.stack([pooled[:b], pooled[b:]], dim=1)
        return pooled

    def score(self, text_feats: torch.Tensor, image_feats: torch.Tensor) -> torch.Tensor:
        """Fusion + head. text_feats (B, h); image_feats (B, h) or (B, 2, h) for NLVR2. Returns logits."""
        with record_function("student.fusion_head"):
            if self.task == "nlvr2":
                t = text_feats[:, None, :].expand(-1, 2, -1)
                fused = self.fusion(torch.cat([t, image_feats], dim=-1))  # (B, 2, h)
                return self.head(fused.flatten(1))
            return self.head(self.fusion(torch.cat([text_feats, image_feats], dim=-1)))

    # -- whole model ------------------------------------------------------------------------------------
    def forward_full(
        self, input_ids, attention_mask, pixel_values, pixel_mask=None, explicit=False
    ) -> StudentOutput:
        text = self.encode_text_full(input_ids, attention_mask, explicit=explicit)
        image = self.encode_images_full(pixel_values, pixel_mask, explicit=explicit)
        img = image.pooled
        if self.task == "nlvr2":
            b = img.shape[0] // 2
            img = torch.stack([img[:b], img[b:]], dim=1)
        return StudentOutput(logits=self.score(text.pooled, img), text=text, image=image)

    def forward(self, input_ids, attention_mask, pixel_values, pixel_mask=None) -> torch.Tensor:
        """Online: both towers, fusion and head. Logits (B, num_labels)."""
        return self.score(
            self.encode_text(input_ids, attention_mask), self.encode_images(pixel_values, pixel_mask)
        )

    def forward_cached(self, input_ids, attention_mask, image_feats: torch.Tensor) -> torch.Tensor:
        """Cached: text tower + fusion + head against precomputed `encode_images` features."""
        return self.score(self.encode_text(input_ids, attention_mask), image_feats)

    # -- initialisation from the teacher ------------------------------------------------------------------
    @torch.no_grad()
    def init_from_teacher(self, teacher: Teacher, head: bool = True) -> None:
        """Initialise both towers from the teacher's encoder (as DiDE does), and optionally the task head."""
        if teacher.config.to_dict() != self.config.to_dict():
            raise ValueError("teacher and student configs differ; the towers need the teacher's sizes")
        sd = teacher.encoder.state_dict()
        for tower in (self.text_tower, self.image_tower):
            own = tower.state_dict()
            tower.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
        if head and teacher.task == self.task and teacher.num_labels == self.num_labels:
            self.head.load_state_dict(teacher.head.state_dict())
