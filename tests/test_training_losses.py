"""The DiDE losses on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from dde_bench.modeling.transformer import EncoderOutput
from dde_bench.training.losses import (
    attention_kl,
    cross_modal_attention_loss,
    soft_label_loss,
    task_loss,
)


def enc(q, k, mask=None, text_len=0) -> EncoderOutput:
    b, _, n, _ = q.shape
    return EncoderOutput(
        hidden=torch.zeros(b, n, 1),
        pooled=torch.zeros(b, 1),
        mask=mask,
        text_len=text_len,
        last_q=q,
        last_k=k,
    )


def test_task_losses():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.3, 0.0]])
    # VQA: BCE-with-logits mean over the 3 answers, times 3 = the sum over answers
    expected = sum(
        -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))
        for x, t in zip(logits[0].tolist(), targets[0].tolist(), strict=True)
    )
    assert task_loss("vqa", logits, {"targets": targets}).item() == pytest.approx(expected, rel=1e-5)
    ce = -math.log(math.exp(2) / (math.exp(2) + math.exp(-1) + 1))
    assert task_loss("snli-ve", logits, {"labels": torch.tensor([0])}).item() == pytest.approx(ce, rel=1e-5)


def test_soft_label_kl_direction_and_temperature():
    s = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    T = 2.0

    def sm(x):
        e = [math.exp(v / T) for v in x]
        return [v / sum(e) for v in e]

    kl = 0.0
    for srow, trow in zip(s.tolist(), t.tolist(), strict=True):
        p, q = sm(trow), sm(srow)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))  # KL(teacher || student)
    expected = kl / 2 * T**2  # batch mean, x T^2
    assert soft_label_loss("nlvr2", s, t, T).item() == pytest.approx(expected, rel=1e-5)
    # the other direction gives a different number: the direction matters
    assert soft_label_loss("nlvr2", t, s, T).item() != pytest.approx(expected, rel=1e-3)
    # VQA: BCE against sigmoid(teacher) x num_labels; zero gradient when student == teacher
    st = torch.tensor([[0.5, -2.0]], requires_grad=True)
    loss = soft_label_loss("vqa", st, st.detach().clone())
    loss.backward()
    assert torch.allclose(st.grad, torch.zeros_like(st.grad), atol=1e-6)


def test_attention_kl_hand_computed_and_averaging():
    p = torch.tensor([0.5, 0.5])
    q = torch.tensor([0.25, 0.75])
    kl_pq = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    # two heads, two queries: (head 0, q0) = KL(p||q), others 0 -> mean over 4 = kl/4
    tl = (
        torch.log(torch.stack([p, p]).expand(2, 2, 2)).unsqueeze(0).clone()
    )  # (1, 2 heads, 2 queries, 2 keys)
    sl = tl.clone()
    sl[0, 0, 0] = torch.log(q)
    assert attention_kl(tl, sl, None, None).item() == pytest.approx(kl_pq / 4, rel=1e-5)
    # direction: KL(teacher || student), not the reverse
    kl_qp = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert attention_kl(sl, tl, None, None).item() == pytest.approx(kl_qp / 4, rel=1e-5)
    # query 1 padded: averaged over 2 heads x 1 valid query
    qmask = torch.tensor([[True, False]])
    assert attention_kl(tl, sl, qmask, None).item() == pytest.approx(kl_pq / 2, rel=1e-5)


def _random_case(b=2, heads=2, t=3, p=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tq = torch.randn(b, heads, t + p, d, generator=g)
    tk = torch.randn(b, heads, t + p, d, generator=g)
    sq_t, sk_t = torch.randn(b, heads, t, d, generator=g), torch.randn(b, heads, t, d, generator=g)
    sq_i, sk_i = torch.randn(b, heads, p, d, generator=g), torch.randn(b, heads, p, d, generator=g)
    return tq, tk, sq_t, sk_t, sq_i, sk_i


def test_padded_key_gets_zero_probability_and_does_not_change_the_loss():
    """queries="valid": padded keys and padded queries leave the loss unchanged."""
    b, heads, t, p, d = 1, 2, 3, 4, 5
    tq, tk, sq_t, sk_t, sq_i, sk_i = _random_case(b, heads, t, p, d)
    text_mask = torch.tensor([[True, True, False]])  # last text token is padding
    image_mask = torch.tensor([[True, True, True, False]])  # last patch is padding
    tmask = torch.cat([text_mask, image_mask], 1)
    loss, _ = cross_modal_attention_loss(
        enc(tq, tk, tmask, t), enc(sq_t, sk_t, text_mask), enc(sq_i, sk_i, image_mask), queries="valid"
    )
    # change the padded keys (and queries) arbitrarily: the loss must not move
    tq2, tk2, sk_t2, sk_i2, sq_i2, sq_t2 = (
        tq.clone(),
        tk.clone(),
        sk_t.clone(),
        sk_i.clone(),
        sq_i.clone(),
        sq_t.clone(),
    )
    tk2[:, :, 2] += 50.0
    tk2[:, :, -1] -= 30.0
    tq2[:, :, 2] += 9.0
    tq2[:, :, -1] += 9.0
    sk_t2[:, :, 2] += 40.0
    sq_t2[:, :, 2] -= 7.0
    sk_i2[:, :, -1] += 40.0
    sq_i2[:, :, -1] += 7.0
    loss2, _ = cross_modal_attention_loss(
        enc(tq2, tk2, tmask, t), enc(sq_t2, sk_t2, text_mask), enc(sq_i2, sk_i2, image_mask), queries="valid"
    )
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    # and equals the loss on the same inputs with the padded positions removed
    keep_t, keep_i = [0, 1], [0, 1, 2]
    keep = keep_t + [t + i for i in keep_i]
    loss3, _ = cross_modal_attention_loss(
        enc(tq[:, :, keep], tk[:, :, keep], None, 2),
        enc(sq_t[:, :, keep_t], sk_t[:, :, keep_t]),
        enc(sq_i[:, :, keep_i], sk_i[:, :, keep_i]),
        queries="valid",
    )
    assert loss3.item() == pytest.approx(loss.item(), rel=1e-5)


def _authors_attention_loss(tq, tk, sq_t, sk_t, sq_i, sk_i, text_mask, image_mask, t):
    """The authors' formula written out (kugwzk/DiDE objectives.py, compute_twotower_cross_modal_attention_loss):
    scores masked to -inf on padded keys, KL(teacher || student) per element with 0 where the teacher's
    probability is 0 (the torch 1.x kl_div they ran), times the key mask, summed over keys, then torch.mean over
    every (batch, head, query) row, padded queries included."""
    scale = tq.shape[-1] ** -0.5

    def kl(s_scores, t_scores, key_mask):
        s_scores = s_scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        t_scores = t_scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        logp_s, p_t = s_scores.log_softmax(-1), t_scores.softmax(-1)
        elem = torch.where(p_t > 0, p_t * (p_t.log() - logp_s), torch.zeros_like(p_t))
        elem = elem * key_mask[:, None, None, :].float()
        return elem.sum(-1).mean()

    t2i = kl(
        sq_t @ sk_i.transpose(-2, -1) * scale,
        tq[:, :, :t] @ tk[:, :, t:].transpose(-2, -1) * scale,
        image_mask,
    )
    i2t = kl(
        sq_i @ sk_t.transpose(-2, -1) * scale,
        tq[:, :, t:] @ tk[:, :, :t].transpose(-2, -1) * scale,
        text_mask,
    )
    return t2i + i2t


def test_attention_loss_counts_padded_queries_as_the_authors_do():
    """queries="all" (the default) equals the authors' formula on padded batches, and differs from the masked
    form there; without padding the two forms agree."""
    b, heads, t, p, d = 3, 2, 4, 5, 6
    tq, tk, sq_t, sk_t, sq_i, sk_i = _random_case(b, heads, t, p, d, seed=11)
    text_mask = torch.tensor([[True] * 4, [True, True, False, False], [True, True, True, False]])
    image_mask = torch.tensor([[True] * 5, [True] * 4 + [False], [True] * 3 + [False] * 2])
    tmask = torch.cat([text_mask, image_mask], 1)
    args = (enc(tq, tk, tmask, t), enc(sq_t, sk_t, text_mask), enc(sq_i, sk_i, image_mask))
    ours, _ = cross_modal_attention_loss(*args)
    theirs = _authors_attention_loss(tq, tk, sq_t, sk_t, sq_i, sk_i, text_mask, image_mask, t)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    masked, _ = cross_modal_attention_loss(*args, queries="valid")
    assert abs(masked.item() - ours.item()) > 1e-3 * ours.item()
    full = torch.ones(b, t + p, dtype=torch.bool)
    unpadded = (enc(tq, tk, full, t), enc(sq_t, sk_t, full[:, :t]), enc(sq_i, sk_i, full[:, t:]))
    a, _ = cross_modal_attention_loss(*unpadded)
    v, _ = cross_modal_attention_loss(*unpadded, queries="valid")
    assert a.item() == pytest.approx(v.item(), rel=1e-6)
    with pytest.raises(ValueError, match="queries must be one of"):
        cross_modal_attention_loss(*args, queries="some")


def test_teacher_is_renormalised_over_the_other_modality_not_a_joint_softmax_block():
    b, heads, t, p, d = 1, 1, 2, 3, 4
    tq, tk, *_ = _random_case(b, heads, t, p, d, seed=3)
    # a student whose towers produce exactly the teacher's q/k for each modality: zero loss,
    # because the teacher's t2i is softmax over the sliced scores, which is what the student computes
    s_text = enc(tq[:, :, :t].clone(), tk[:, :, :t].clone())
    s_image = enc(tq[:, :, t:].clone(), tk[:, :, t:].clone())
    loss, parts = cross_modal_attention_loss(enc(tq, tk, None, t), s_text, s_image)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # the sub-block of the joint softmax is a different (un-normalised) thing
    joint = ((tq @ tk.transpose(-2, -1)) / math.sqrt(d)).softmax(-1)
    block = joint[0, 0, :t, t:]
    assert not torch.allclose(block.sum(-1), torch.ones(t))
    renorm = ((tq[:, :, :t] @ tk[:, :, t:].transpose(-2, -1)) / math.sqrt(d)).softmax(-1)[0, 0]
    assert torch.allclose(block / block.sum(-1, keepdim=True), renorm, atol=1e-6)


def test_nlvr2_sums_over_both_images_with_text_queries_repeated():
    b, heads, t, p, d = 2, 2, 3, 4, 5
    tq, tk, sq_t, sk_t, sq_i, sk_i = _random_case(2 * b, heads, t, p, d, seed=5)
    sq_t, sk_t = sq_t[:b], sk_t[:b]  # the text tower ran B texts; the image tower 2B images [left; right]
    text_mask = torch.tensor([[True, True, True], [True, True, False]])
    tmask = torch.cat([text_mask.repeat(2, 1), torch.ones(2 * b, p, dtype=torch.bool)], 1)
    pair, parts = cross_modal_attention_loss(
        enc(tq, tk, tmask, t), enc(sq_t, sk_t, text_mask), enc(sq_i, sk_i, None), num_images=2
    )
    singles = []
    for j in range(2):
        sl = slice(j * b, (j + 1) * b)
        single, _ = cross_modal_attention_loss(
            enc(tq[sl], tk[sl], tmask[sl], t), enc(sq_t, sk_t, text_mask), enc(sq_i[sl], sk_i[sl], None)
        )
        singles.append(single.item())
    assert pair.item() == pytest.approx(sum(singles), rel=1e-5)
    assert parts["t2i"] + parts["i2t"] == pytest.approx(pair.item(), rel=1e-5)


def test_shape_mismatch_is_explained():
    tq, tk, sq_t, sk_t, sq_i, sk_i = _random_case()
    with pytest.raises(ValueError, match="same patches"):
        cross_modal_attention_loss(enc(tq, tk, None, 3), enc(sq_t, sk_t), enc(sq_i[:, :, :3], sk_i[:, :, :3]))
