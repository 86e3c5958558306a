"""Fusion-aware image cache: precompute the image's half of the fusion MLP's first Linear.

The student's fusion MLP starts with ``Linear(2h, 2h)`` over ``[t; i]``. Split its weight by columns,
``W = [W_t | W_i]``; then ``W [t; i] + b = W_t t + (W_i i + b)``. So

* per image, once:  ``P_i = W_i i + b``        (:func:`precompute_image`, shape ``(N, 2h)``, ``(N, 2, 2h)`` NLVR2)
* per text, once:   ``P_t = W_t t``            (:func:`precompute_text`, shape ``(B, 2h)``)
* per pair:         ``head(Linear2(GELU(LayerNorm(P_t + P_i))))``   (:func:`score_precomputed`)

Scoring a pair costs an addition instead of half of the first layer: for one text against N cached images
the first layer's ``4h^2`` multiply-adds per image drop to ``0`` (they were paid once, at cache time),
leaving Linear2 (``2h^2``) and the head. The cached features are ``2h`` wide instead of ``h`` (twice the
bytes of pooled features).

Outputs equal ``Student.score`` up to float rounding (the sum is associated differently).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from dde_bench.modeling.models import Student

__all__ = ["precompute_image", "precompute_text", "score_precomputed", "score_pooled", "fusion_parts"]


def fusion_parts(student: Student) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W_t, W_i, b)`` of the fusion MLP's first Linear: ``W_t``, ``W_i`` of shape ``(2h, h)``, ``b`` ``(2h,)``."""
    first = student.fusion[0]
    h = student.config.hidden_size
    return first.weight[:, :h], first.weight[:, h:], first.bias


def precompute_image(student: Student, image_feats: torch.Tensor) -> torch.Tensor:
    """``W_i i + b`` for pooled image features ``(N, h)`` (or ``(N, 2, h)`` for NLVR2): ``(N, 2h)`` / ``(N, 2, 2h)``.

    Cache this instead of the pooled features to make every later scoring cheaper."""
    _, w_i, b = fusion_parts(student)
    _check_width(student, image_feats, "image_feats")
    if student.task == "nlvr2" and (image_feats.ndim != 3 or image_feats.shape[1] != 2):
        raise ValueError(f"nlvr2 image features must be (N, 2, h), got {tuple(image_feats.shape)}")
    with record_function("student.fastpath.precompute_image"):
        return F.linear(image_feats, w_i, b)


def precompute_text(student: Student, text_feats: torch.Tensor) -> torch.Tensor:
    """``W_t t`` for pooled text features ``(B, h)``: ``(B, 2h)`` (no bias: it lives in the image part)."""
    w_t, _, _ = fusion_parts(student)
    _check_width(student, text_feats, "text_feats")
    with record_function("student.fastpath.precompute_text"):
        return F.linear(text_feats, w_t)


def _check_width(student: Student, x: torch.Tensor, name: str, factor: int = 1) -> None:
    want = factor * student.config.hidden_size
    if x.shape[-1] != want:
        raise ValueError(f"{name} must have last dimension {want}, got {tuple(x.shape)}")


def _gelu_(x: torch.Tensor, act) -> torch.Tensor:
    """GELU in place (the intermediate is ours): one pass over memory fewer than ``F.gelu``."""
    approximate = getattr(act, "approximate", "none")
    if hasattr(torch._C._nn, "gelu_") and not x.requires_grad:
        return torch._C._nn.gelu_(x, approximate=approximate)
    return F.gelu(x, approximate=approximate)


def _rest(
    student: Student, first: torch.Tensor, out: torch.Tensor | None = None, label: int | None = None
) -> torch.Tensor:
    """Everything after the first Linear: LayerNorm - GELU - Linear2 (fusion), then the head.

    ``first`` is consumed (GELU runs in place on the LayerNorm's output, never on ``first`` itself);
    with ``out`` the logits are written there. With ``label`` only that class's score is computed (one row of
    the classifier instead of all of them: VQA's 3,129 answers cost more than the fusion MLP)."""
    fusion, head = student.fusion, student.head
    ln, act, lin2 = fusion[1], fusion[2], fusion[3]
    x = F.layer_norm(first, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    x = F.linear(_gelu_(x, act), lin2.weight, lin2.bias)  # (..., h) or (..., 2, h)
    if student.task == "nlvr2":
        x = x.flatten(-2)  # [fusion(t, left); fusion(t, right)]
    h1, hln, hact, h2 = head[0], head[1], head[2], head[3]
    x = F.linear(x, h1.weight, h1.bias)
    x = _gelu_(F.layer_norm(x, hln.normalized_shape, hln.weight, hln.bias, hln.eps), hact)
    if label is not None:
        w, b = h2.weight[label], h2.bias[label]
        if out is None:
            return torch.mv(x, w).add_(b)
        return torch.mv(x, w, out=out).add_(b)
    if out is None:
        return F.linear(x, h2.weight, h2.bias)
    return torch.addmm(h2.bias, x, h2.weight.t(), out=out)


def score_pooled(
    student: Student, text_feats: torch.Tensor, image_feats: torch.Tensor, label: int | None = None
) -> torch.Tensor:
    """``student.score`` on pooled features (the plain cached path: the fusion MLP's first Linear over
    ``[t; i]``); with ``label`` only that class's score, ``(B,)``, computed the same way as in
    :func:`score_precomputed`, so the two paths differ only in the first layer."""
    if student.task == "nlvr2":
        text_feats = text_feats[:, None, :].expand(-1, 2, -1)
    first = student.fusion[0](torch.cat([text_feats, image_feats], dim=-1))
    with record_function("student.fastpath.score_pooled"):
        return _rest(student, first, label=label)


def score_precomputed(
    student: Student,
    text_part: torch.Tensor,
    image_part: torch.Tensor,
    chunk_size: int | None = None,
    label: int | None = None,
) -> torch.Tensor:
    """Logits from precomputed parts, equal to ``student.score`` on the underlying features (with ``label``:
    that class's scores only, ``(max(B, N),)``).

    ``text_part`` is :func:`precompute_text`'s ``(B, 2h)`` (or ``(2h,)`` for one text); ``image_part`` is
    :func:`precompute_image`'s ``(N, 2h)``, or ``(N, 2, 2h)`` for NLVR2. Either ``B == N`` (pairwise) or
    ``B == 1`` (one text against N images: broadcast, no expanded copy of the text). ``chunk_size`` bounds
    the intermediate memory for large N (the result is the same). Returns ``(max(B, N), num_labels)``.
    """
    _check_width(student, text_part, "text_part", 2)
    _check_width(student, image_part, "image_part", 2)
    if text_part.ndim == 1:
        text_part = text_part[None]
    if text_part.ndim != 2:
        raise ValueError(f"text_part must be (B, 2h), got {tuple(text_part.shape)}")
    nlvr2 = student.task == "nlvr2"
    if nlvr2 and (image_part.ndim != 3 or image_part.shape[1] != 2):
        raise ValueError(f"nlvr2 image_part must be (N, 2, 2h), got {tuple(image_part.shape)}")
    if not nlvr2 and image_part.ndim != 2:
        raise ValueError(f"image_part must be (N, 2h), got {tuple(image_part.shape)}")
    b, n = text_part.shape[0], image_part.shape[0]
    if b not in (1, n) and n != 1:
        raise ValueError(f"text_part has {b} rows and image_part {n}: need equal counts or one of them 1")
    t = text_part[:, None, :] if nlvr2 else text_part  # broadcast over the left/right image
    with record_function("student.fastpath.score"):
        rows = max(b, n)
        if chunk_size is None or rows <= chunk_size:
            return _rest(student, image_part + t, label=label)
        pieces = []
        shape = (rows,) if label is not None else (rows, student.num_labels)
        out = None if torch.is_grad_enabled() else image_part.new_empty(shape)
        for s in range(0, rows, chunk_size):
            ts = t if b == 1 else t[s : s + chunk_size]
            im = image_part if n == 1 else image_part[s : s + chunk_size]
            o = None if out is None else out[s : s + chunk_size]
            pieces.append(_rest(student, im + ts, o, label=label))
        return torch.cat(pieces) if out is None else out
