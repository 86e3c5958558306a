"""Losses of the DiDE recipe: task losses, soft-label distillation and cross-modal attention distillation.

Everything here is a pure function of tensors (no module state), computed in float32 whatever the autocast
dtype, so mixed-precision training cannot underflow the KL terms.

Conventions (the DiDE paper and the authors' released code, kugwzk/DiDE `src/vilt/modules/objectives.py`):

* Task loss: VQA = BCE-with-logits against the soft scores, times ``num_labels`` (ViLT's convention: the
  per-element mean times the number of answers = sum over answers, mean over the batch); NLVR2 and SNLI-VE =
  cross-entropy.
* Soft labels: NLVR2 / SNLI-VE = ``KL(softmax(t / T) || softmax(s / T))``, batch mean, times ``T**2`` (Hinton et
  al.'s convention, so gradients keep their scale when T changes; at T = 1, the paper's setting, it is the plain
  KL). VQA = ``BCE-with-logits(s / T, sigmoid(t / T)) x num_labels`` (at T = 1 exactly the released code's loss).
* Attention: at the last layer, per head, the student's *virtual* text-to-image attention
  ``softmax(q_text k_image^T / sqrt(d))`` over the image keys and image-to-text over the text keys; the teacher's
  from its own last-layer q and k, the score matrix sliced by modality and *re-normalised over the other
  modality's keys only* (a softmax over the sliced scores, not a sub-block of the joint softmax).
  ``KL(teacher || student)`` summed over keys (padded keys get probability 0 in both, contributing 0), then
  averaged over (batch, head, query) rows. Which rows: ``queries="all"`` (the default) averages over every row,
  padded text queries and padded image patches included, as the authors' code does (objectives.py,
  ``compute_twotower_cross_modal_attention_loss``: ``torch.mean(torch.sum(kl * key_mask, -1))``, text padded to
  the model's full text length); ``queries="valid"`` leaves padded queries out. Loss = t2i + i2t. NLVR2: the teacher ran
  [text + left image; text + right image] as one batch of 2B, the student's image tower ran the 2B images in the
  same order; the text queries are repeated for each image and the loss is summed over the two images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dde_bench.modeling.transformer import EncoderOutput

# which (batch, head, query) rows the attention KL averages over: every row (the authors'), or real queries only
ATTENTION_QUERIES = ("all", "valid")


def task_loss(task: str, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Ground-truth loss: VQA BCE-with-logits on soft scores x num_labels; NLVR2 / SNLI-VE cross-entropy."""
    logits = logits.float()
    if task == "vqa":
        targets = batch["targets"].to(logits.device, torch.float32)
        return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
    return F.cross_entropy(logits, batch["labels"].to(logits.device), ignore_index=-100)


def soft_label_loss(
    task: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Soft-label distillation (teacher logits are treated as constants).

    Classification (NLVR2, SNLI-VE, and ITM in pre-training): ``KL(softmax(t/T) || softmax(s/T))`` summed over
    classes, mean over the batch, times ``T**2``. VQA: ``BCE-with-logits(s/T, sigmoid(t/T)) x num_labels``."""
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    if task == "vqa":
        return F.binary_cross_entropy_with_logits(s, torch.sigmoid(t)) * s.shape[1]
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def _masked_log_softmax(scores: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """log-softmax over the last dim; masked keys (key_mask False) get -inf (probability exactly 0)."""
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.log_softmax(dim=-1)


def attention_kl(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    query_mask: torch.Tensor | None,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """``KL(teacher || student)`` summed over keys and averaged over valid (batch, head, query) triples.

    Both inputs are log-probabilities (B, heads, Nq, Nk) whose masked keys are -inf. query_mask (B, Nq) and
    key_mask (B, Nk) are bool, True = valid; None = all valid."""
    p = teacher_logp.exp()
    term = p * (teacher_logp - student_logp)
    if key_mask is not None:  # 0 * (-inf - -inf) would be nan: masked keys contribute exactly 0
        term = term.masked_fill(~key_mask[:, None, None, :], 0.0)
    per_query = term.sum(-1)  # (B, heads, Nq)
    heads = per_query.shape[1]
    if query_mask is None:
        return per_query.mean()
    qm = query_mask[:, None, :].to(per_query.dtype)
    denom = qm.sum() * heads
    return (per_query * qm).sum() / denom.clamp_min(1.0)


def cross_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product scores ``q k^T / sqrt(d)`` in float32: (B, heads, Nq, d) x (B, heads, Nk, d)."""
    q, k = q.float(), k.float()
    return (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])


def cross_modal_attention_loss(
    teacher: EncoderOutput,
    student_text: EncoderOutput,
    student_image: EncoderOutput,
    num_images: int = 1,
    queries: str = "all",
) -> tuple[torch.Tensor, dict[str, float]]:
    """DiDE's cross-modal attention distillation at the last layer (t2i + i2t).

    ``queries``: "all" averages over every (batch, head, query) row, padded queries included (the authors'
    form); "valid" over the rows of real queries only.

    teacher: the fusion encoder's output from ``explicit=True`` over [text; image] (for NLVR2 a batch of 2B,
    [all text+left; all text+right]); student_text over B texts and student_image over ``num_images * B``
    images in the same order. Returns the loss and its parts ``{"t2i", "i2t"}`` as floats."""
    if queries not in ATTENTION_QUERIES:
        raise ValueError(f"queries must be one of {ATTENTION_QUERIES}, got {queries!r}")
    for name, out in (("teacher", teacher), ("student text", student_text), ("student image", student_image)):
        if out.last_q is None or out.last_k is None:
            raise ValueError(f"{name} output has no last-layer q/k: run it with explicit=True")
    T = teacher.text_len
    tq, tk = teacher.last_q, teacher.last_k
    if student_text.last_q.shape[1] != tq.shape[1]:
        raise ValueError("teacher and student must have the same number of heads (matched one to one)")
    t_mask = teacher.mask  # (nB, T + P) or None
    text_mask = None if t_mask is None else t_mask[:, :T]
    image_mask = None if t_mask is None else t_mask[:, T:]
    # teacher: scores sliced by modality, softmax over the other modality's keys only
    t_t2i = _masked_log_softmax(cross_scores(tq[:, :, :T], tk[:, :, T:]), image_mask)
    t_i2t = _masked_log_softmax(cross_scores(tq[:, :, T:], tk[:, :, :T]), text_mask)
    # student: text queries repeated for each image (NLVR2), virtual cross-attention between the towers
    sq_text = student_text.last_q.repeat(num_images, 1, 1, 1)
    sk_text = student_text.last_k.repeat(num_images, 1, 1, 1)
    s_text_mask = None if student_text.mask is None else student_text.mask.repeat(num_images, 1)
    s_image_mask = student_image.mask
    s_t2i = _masked_log_softmax(cross_scores(sq_text, student_image.last_k), s_image_mask)
    s_i2t = _masked_log_softmax(cross_scores(student_image.last_q, sk_text), s_text_mask)
    if s_t2i.shape != t_t2i.shape or s_i2t.shape != t_i2t.shape:
        raise ValueError(
            f"teacher and student attention shapes differ ({tuple(t_t2i.shape)} vs {tuple(s_t2i.shape)}): "
            "they must see the same texts and the same patches in the same order"
        )
    # the student's masks must agree with the teacher's slices (same inputs); use the teacher's
    b = tq.shape[0] // num_images
    t2i = tq.new_zeros((), dtype=torch.float32)
    i2t = tq.new_zeros((), dtype=torch.float32)
    for j in range(num_images):  # summed over the images of an NLVR2 pair
        sl = slice(j * b, (j + 1) * b)
        tm = None if text_mask is None else text_mask[sl]
        im = None if image_mask is None else image_mask[sl]
        # query rows: every one (the authors'), or the valid ones; keys are always masked
        tq_mask, iq_mask = (None, None) if queries == "all" else (tm, im)
        t2i = t2i + attention_kl(t_t2i[sl], s_t2i[sl], tq_mask, im)
        i2t = i2t + attention_kl(t_i2t[sl], s_i2t[sl], iq_mask, tm)
    return t2i + i2t, {"t2i": float(t2i.detach()), "i2t": float(i2t.detach())}
