"""One ViLT-style transformer serving all three stacks: the teacher's joint stack and the student's two towers.

`VLTransformer(config, text=True, image=True)` is the fusion encoder (text tokens and image patches in one
sequence); `text=False` or `image=False` gives a single-modality tower with the same code and parameter names,
so a teacher checkpoint initialises either tower directly.

Layout of one sequence (as in ViLT and transformers' ViltModel):
  text:  [CLS] w1 ... wT      word + position + BERT token-type(0), LayerNorm, then + modality type 0
  image: [IMG] p(0,0) ...     conv patches + position embeddings (interpolated to the patch grid), + modality type
Padded image regions (pixel_mask == 0) give masked patches; padded text gives masked tokens.

Two attention paths through the same weights: `scaled_dot_product_attention` (fast inference) and an explicit
softmax(QK^T/sqrt(d)) that also returns the last block's per-head queries, keys and probabilities, which the
cross-modal attention distillation needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dde_bench.modeling.config import VLConfig


def _gelu(kind: str) -> nn.Module:
    return nn.GELU(approximate="none" if kind == "gelu" else "tanh")


class Block(nn.Module):
    """Pre-LayerNorm transformer block (ViT / ViLT): x + Attn(LN(x)), then x + MLP(LN(x)). Fused QKV projection."""

    def __init__(self, cfg: VLConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.norm1 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(h, 3 * h, bias=cfg.qkv_bias)
        self.proj = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(h, cfg.mlp_size)
        self.act = _gelu(cfg.hidden_act)
        self.fc2 = nn.Linear(cfg.mlp_size, h)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, explicit: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """x: (B, N, h). attn_mask: bool (B, 1, 1, N), True = key may be attended; None = attend to all.

        With explicit=True, also returns (q, k, probs), q and k of shape (B, heads, N, head_dim)."""
        b, n, h = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        extras = None
        if explicit:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            out = probs @ v
            extras = (q, k, probs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, h))
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return x, extras


class TextEmbeddings(nn.Module):
    """BERT embeddings: word + position + token type (always 0), LayerNorm."""

    def __init__(self, cfg: VLConfig):
        super().__init__()
        h = cfg.hidden_size
        self.word = nn.Embedding(cfg.vocab_size, h)
        self.position = nn.Embedding(cfg.max_text_len, h)
        self.token_type = nn.Embedding(cfg.type_vocab_size, h)
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.position.num_embeddings:
            raise ValueError(
                f"text of {t} tokens is longer than the model's {self.position.num_embeddings} positions"
            )
        x = self.word(input_ids) + self.position.weight[:t] + self.token_type.weight[0]
        return self.norm(x)


class ImageEmbeddings(nn.Module):
    """Conv patch embedding, an image [CLS] token, position embeddings bilinearly interpolated to each image's
    valid patch grid (as ViLT does) and zero for padding patches. Patches stay in row-major order, padded
    patches included but masked, so no per-sample gather or random sampling is needed."""

    def __init__(self, cfg: VLConfig):
        super().__init__()
        h = cfg.hidden_size
        self.patch_size = cfg.patch_size
        self.grid = cfg.patch_grid
        self.patch = nn.Conv2d(cfg.num_channels, h, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.position = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, h))

    def _position_grid(
        self, hp: int, wp: int, sizes: list[tuple[int, int]], dtype: torch.dtype
    ) -> torch.Tensor:
        """Position embeddings (B, hp*wp, h) for images whose valid patch grids are `sizes`."""
        h = self.position.shape[-1]
        spatial = self.position[:, 1:, :].transpose(1, 2).reshape(1, h, self.grid, self.grid)
        cache: dict[tuple[int, int], torch.Tensor] = {}
        out = []
        for size in sizes:
            if size not in cache:
                vh, vw = size
                if (vh, vw) == (self.grid, self.grid):
                    pos = spatial
                else:
                    pos = F.interpolate(spatial, size=(vh, vw), mode="bilinear", align_corners=True)
                cache[size] = F.pad(pos, (0, wp - vw, 0, hp - vh))
            out.append(cache[size])
        if len(cache) == 1:
            grid = out[0].expand(len(sizes), -1, -1, -1)
        else:
            grid = torch.cat(out, dim=0)
        return grid.flatten(2).transpose(1, 2).to(dtype)

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixel_values (B, C, H, W), pixel_mask (B, H, W) 1 = real pixel. Returns tokens (B, 1+P, h) and
        a bool mask (B, 1+P) or None when no patch is padding."""
        x = self.patch(pixel_values.to(self.patch.weight.dtype))  # (B, h, Hp, Wp)
        b, _, hp, wp = x.shape
        x = x.flatten(2).transpose(1, 2)
        if pixel_mask is None:
            patch_mask = None
            sizes = [(hp, wp)] * b
        else:
            # nearest-neighbour downsampling of the pixel mask, exactly as ViLT does
            patch_mask = F.interpolate(pixel_mask[:, None].float(), size=(hp, wp))[:, 0] > 0.5
            valid_h = patch_mask[:, :, 0].sum(dim=1).tolist()
            valid_w = patch_mask[:, 0, :].sum(dim=1).tolist()
            sizes = list(zip(valid_h, valid_w, strict=True))
            patch_mask = patch_mask.flatten(1)
        x = x + self._position_grid(hp, wp, sizes, x.dtype)
        cls = (self.cls_token + self.position[:, :1]).to(x.dtype).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        if patch_mask is None or all(s == (hp, wp) for s in sizes):
            return x, None
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), patch_mask], dim=1)
        return x, mask


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, N, h) after the final LayerNorm
    pooled: torch.Tensor  # (B, h) tanh(Linear(hidden[:, 0]))
    mask: torch.Tensor | None  # (B, N) bool, None = all tokens valid
    text_len: int  # number of text tokens at the front of the sequence (0 for an image tower)
    last_q: torch.Tensor | None = None  # (B, heads, N, head_dim), explicit path only
    last_k: torch.Tensor | None = None
    last_probs: torch.Tensor | None = None  # (B, heads, N, N)


class VLTransformer(nn.Module):
    """ViLT transformer over text tokens, image patches, or both (the same blocks serve every stack)."""

    def __init__(self, cfg: VLConfig, text: bool = True, image: bool = True):
        super().__init__()
        if not (text or image):
            raise ValueError("a VLTransformer needs at least one modality")
        self.config = cfg
        h = cfg.hidden_size
        self.text_embeddings = TextEmbeddings(cfg) if text else None
        self.image_embeddings = ImageEmbeddings(cfg) if image else None
        self.modality_type = nn.Embedding(cfg.modality_type_vocab_size, h)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.pooler = nn.Linear(h, h)
        self.apply(self._init_weights)
        if self.image_embeddings is not None:
            nn.init.trunc_normal_(self.image_embeddings.cls_token, std=cfg.init_std)
            nn.init.trunc_normal_(self.image_embeddings.position, std=cfg.init_std)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        x = self.text_embeddings(input_ids) + self.modality_type.weight[0]
        mask = None if attention_mask is None else attention_mask.bool()
        return x, mask

    def embed_image(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None, image_type=1):
        """image_type: an int, or a LongTensor (B,) giving each image's modality type (NLVR2: 1 and 2)."""
        x, mask = self.image_embeddings(pixel_values, pixel_mask)
        if isinstance(image_type, int):
            x = x + self.modality_type.weight[image_type]
        else:
            x = x + self.modality_type(image_type)[:, None, :]
        return x, mask

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        image_type: int | torch.Tensor = 1,
        explicit: bool = False,
    ) -> EncoderOutput:
        """Run the stack over whichever modalities this transformer has.

        explicit=False uses fused SDPA attention; explicit=True computes attention by hand and returns the last
        block's queries, keys and probabilities (for distillation). Both give the same outputs."""
        parts, masks = [], []
        text_len = 0
        if self.text_embeddings is not None:
            x, m = self.embed_text(input_ids, attention_mask)
            text_len = x.shape[1]
            parts.append(x)
            masks.append(m)
        if self.image_embeddings is not None:
            x, m = self.embed_image(pixel_values, pixel_mask, image_type)
            parts.append(x)
            masks.append(m)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        mask = self._join_masks(parts, masks)
        attn_mask = None if mask is None else mask[:, None, None, :]
        if (
            attn_mask is not None
            and x.device.type == "cpu"
            and not torch.compiler.is_compiling()  # a data-dependent branch would break the compiled graph
            and bool(mask.all())
        ):
            attn_mask = None  # CPU eager: an all-true mask only slows the fused kernel down
        extras = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x, ex = block(x, attn_mask, explicit=explicit and i == last)
            if ex is not None:
                extras = ex
        x = self.norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        out = EncoderOutput(hidden=x, pooled=pooled, mask=mask, text_len=text_len)
        if extras is not None:
            out.last_q, out.last_k, out.last_probs = extras
        return out

    @staticmethod
    def _join_masks(parts: list[torch.Tensor], masks: list[torch.Tensor | None]) -> torch.Tensor | None:
        if all(m is None for m in masks):
            return None
        full = [
            m if m is not None else torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
            for p, m in zip(parts, masks, strict=True)
        ]
        return full[0] if len(full) == 1 else torch.cat(full, dim=1)
