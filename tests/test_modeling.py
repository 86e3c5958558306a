"""The models against transformers' own ViLT (parity), and against themselves (attention paths, cached path)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from dde_bench import load_student, load_teacher
from dde_bench.errors import UserError
from dde_bench.modeling import Student, Teacher, VLConfig, save_model
from dde_bench.modeling.hf import hf_config_from, teacher_to_hf

TINY = VLConfig(
    vocab_size=99,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_size=64,
    max_text_len=16,
    image_size=64,
    patch_size=16,
    layer_norm_eps=1e-12,
)


def _inputs(n_images: int, batch: int = 3, seed: int = 0):
    """Padded text and non-square images of different sizes padded to one batch shape."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY.vocab_size, (batch, 11), generator=g)
    am = torch.ones(batch, 11, dtype=torch.long)
    am[1, 7:] = 0  # padded text
    am[2, 4:] = 0
    ids[am == 0] = 0
    shape = (batch, n_images, 3, 64, 96)
    pv = torch.randn(shape, generator=g)
    pm = torch.ones(batch, n_images, 64, 96, dtype=torch.long)
    pm[0, :, :, 64:] = 0  # 64x64 image in a 64x96 batch
    pm[1, -1, 48:, :] = 0  # 48x96 image
    pv = pv * pm[:, :, None]
    if n_images == 1:
        return ids, am, pv[:, 0], pm[:, 0]
    return ids, am, pv, pm


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.2
                + (1.0 if p.ndim == 1 and p.shape[0] % 32 == 0 else 0.0)
            )


def _save_hf(tmp_path, cls_name: str, **cfg_extra):
    cfg = hf_config_from(TINY, **cfg_extra)
    cfg.architectures = [cls_name]
    model = getattr(transformers, cls_name)(cfg).eval()
    _randomise(model)
    model.save_pretrained(tmp_path / cls_name)
    return model, tmp_path / cls_name


@torch.no_grad()
def test_parity_vilt_for_question_answering(tmp_path):
    hf, path = _save_hf(tmp_path, "ViltForQuestionAnswering", num_labels=7)
    teacher = load_teacher(path)
    assert teacher.task == "vqa" and teacher.num_labels == 7
    ids, am, pv, pm = _inputs(1)
    want = hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm).logits
    got = teacher(ids, am, pv, pm)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@torch.no_grad()
def test_parity_vilt_for_images_and_text_classification(tmp_path):
    hf, path = _save_hf(
        tmp_path, "ViltForImagesAndTextClassification", num_images=2, num_labels=2, modality_type_vocab_size=3
    )
    teacher = load_teacher(path)
    assert teacher.task == "nlvr2"
    ids, am, pv, pm = _inputs(2)
    want = hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm).logits
    got = teacher(ids, am, pv, pm)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@torch.no_grad()
def test_parity_vilt_model_pooled_and_text_states(tmp_path):
    hf, path = _save_hf(tmp_path, "ViltModel")
    with pytest.raises(UserError, match="without a task head"):
        load_teacher(path)
    teacher = load_teacher(path, task="snli-ve")
    ids, am, pv, pm = _inputs(1)
    out = hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm)
    got = teacher.forward_full(ids, am, pv, pm)
    torch.testing.assert_close(got.pooled, out.pooler_output, atol=1e-4, rtol=0)
    t = ids.shape[1]  # text states do not depend on the (random) order transformers gives image patches
    valid = am.bool()
    torch.testing.assert_close(
        got.encoder.hidden[:, :t][valid], out.last_hidden_state[:, :t][valid], atol=1e-4, rtol=0
    )


@torch.no_grad()
def test_parity_vilt_for_masked_lm_backbone(tmp_path):
    hf, path = _save_hf(tmp_path, "ViltForMaskedLM")
    teacher = load_teacher(
        path, task="nlvr2"
    )  # backbone from the MLM checkpoint, type 2 initialised from type 1
    mt = teacher.encoder.modality_type.weight
    torch.testing.assert_close(mt[2], mt[1])
    assert set(teacher.hf_mlm_head_state) >= {"decoder.weight", "transform.dense.weight"}
    ids, am, pv, pm = _inputs(1)
    out = hf.vilt(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm)
    enc = teacher.encoder(ids, am, pv, pm, image_type=1)
    torch.testing.assert_close(enc.pooled, out.pooler_output, atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
def test_export_to_transformers_matches(task):
    teacher = Teacher(TINY, task, num_labels=5 if task == "vqa" else None).eval()
    _randomise(teacher, seed=1)
    hf = teacher_to_hf(teacher)
    ids, am, pv, pm = _inputs(2 if task == "nlvr2" else 1, seed=2)
    want = hf(input_ids=ids, attention_mask=am, pixel_values=pv, pixel_mask=pm).logits
    torch.testing.assert_close(teacher(ids, am, pv, pm), want, atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("task", ["nlvr2", "vqa"])
def test_sdpa_and_explicit_paths_agree(task):
    teacher = Teacher(TINY, task, num_labels=5 if task == "vqa" else None).eval()
    _randomise(teacher, seed=3)
    ids, am, pv, pm = _inputs(2 if task == "nlvr2" else 1)
    fast = teacher.forward_full(ids, am, pv, pm, explicit=False)
    slow = teacher.forward_full(ids, am, pv, pm, explicit=True)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    assert slow.encoder.last_q is not None and slow.encoder.last_probs is not None
    n = slow.encoder.hidden.shape[1]
    assert slow.encoder.last_q.shape == (ids.shape[0] * (2 if task == "nlvr2" else 1), 4, n, 8)
    # masked keys get no probability
    mask = slow.encoder.mask
    assert torch.all(slow.encoder.last_probs.masked_select(~mask[:, None, None, :]) == 0)


@torch.no_grad()
@pytest.mark.parametrize("task", ["nlvr2", "vqa", "snli-ve"])
def test_student_cached_path_equals_online(task):
    student = Student(TINY, task, num_labels=5 if task == "vqa" else None).eval()
    _randomise(student, seed=4)
    ids, am, pv, pm = _inputs(2 if task == "nlvr2" else 1)
    online = student(ids, am, pv, pm)
    feats = student.encode_images(pv, pm)
    assert feats.shape == ((3, 2, 32) if task == "nlvr2" else (3, 32))
    cached = student.forward_cached(ids, am, feats)
    assert torch.equal(online, cached)
    full = student.forward_full(ids, am, pv, pm, explicit=True)
    torch.testing.assert_close(full.logits, online, atol=1e-5, rtol=1e-5)


def test_student_init_from_teacher_copies_towers():
    teacher = Teacher(TINY, "nlvr2")
    _randomise(teacher, seed=5)
    student = Student(TINY, "nlvr2")
    student.init_from_teacher(teacher)
    tsd = teacher.encoder.state_dict()
    for tower in (student.text_tower, student.image_tower):
        for k, v in tower.state_dict().items():
            assert torch.equal(v, tsd[k]), k
    assert torch.equal(student.head[0].weight, teacher.head[0].weight)
    assert student.text_tower.image_embeddings is None and student.image_tower.text_embeddings is None


@torch.no_grad()
def test_save_and_load_roundtrip(tmp_path):
    for cls, loader in ((Teacher, load_teacher), (Student, load_student)):
        m = cls(TINY, "vqa", num_labels=6).eval()
        m.answer_vocab = [f"a{i}" for i in range(6)]
        save_model(m, tmp_path / cls.__name__, meta={"note": "x"})
        back = loader(tmp_path / cls.__name__)
        ids, am, pv, pm = _inputs(1)
        assert torch.equal(m(ids, am, pv, pm), back(ids, am, pv, pm))
        assert back.answer_vocab == m.answer_vocab


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint folder"):
        load_teacher(tmp_path / "missing")
    # an architecture that is not ViLT
    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="unsupported"):
        load_teacher(tmp_path / "bert")
    # a config whose sizes do not match the weights
    save_model(Teacher(TINY, "nlvr2"), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["config"]["mlp_size"] = 48
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="shape"):
        load_teacher(tmp_path / "t")
    # a student checkpoint where a teacher is expected
    save_model(Student(TINY, "nlvr2"), tmp_path / "s")
    with pytest.raises(UserError, match="student checkpoint"):
        load_teacher(tmp_path / "s")
