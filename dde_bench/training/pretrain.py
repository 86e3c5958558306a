"""The pre-training stage on image-caption pairs: image-text matching (ITM) and masked language modelling (MLM).

Captions come in COCO's annotation format (``captions_train2014.json``: ``images`` with ``id`` / ``file_name``,
``annotations`` with ``image_id`` / ``caption``); the synthetic world writes one for its training images, and a
real COCO download is used as it is (images looked up in the data folder, then in its ``train2014/``).
A pre-training batch pairs every caption with its image or, for about half of them, with another image of the
batch (a shuffled image, the ITM negative); ITM label 1 = matched. With ``hard > 0`` that share of the negatives
instead keeps its image and gets a *minimal-edit false caption* (one colour, shape or count changed, or the
relation reversed; ``synth.caption_negatives``): random-image negatives are told apart by counting, which a tiny
model learns only slowly (the teacher's ITM accuracy stayed at 50-52% for 300 steps), whereas a minimal pair
points the gradient at the one word that must be grounded in the patches. 15% of the caption's word tokens are
masked (BERT's 80% [MASK] / 10% random word / 10% unchanged); the MLM loss counts matched pairs only.

Teacher: ITM = Linear(h, 2) on the pooled vector of the joint stack; MLM = Linear-GELU-LayerNorm-Linear over the
text positions. Student (dual encoder): ITM = Linear(h, 2) on the fusion MLP's output over [text; image] pooled
vectors, trained on ITM with soft-label distillation of the teacher's ITM logits and cross-modal attention
distillation (same batch tensors as the teacher). The student has no MLM objective: its text tower never sees
the image, so masked-word prediction could not ground words in patches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dde_bench.data.images import ImageProcessor
from dde_bench.errors import UserError

# the last caption file's decoded images: the stages of one process (the paper ablation's teacher and student
# pre-training rows) decode a large pool once, not once per stage
_DECODED: dict = {}


def _image_path(data_dir: Path, file_name: str) -> Path:
    """A caption's image: the path relative to the data folder, else in COCO's ``train2014/`` image folder."""
    direct = data_dir / file_name
    return direct if direct.exists() else data_dir / "train2014" / file_name


class CaptionDataset:
    """Image-caption pairs of one split, pre-tokenised, images decoded once into one uint8 tensor."""

    def __init__(
        self,
        data_dir: Path,
        tokenizer,
        processor: ImageProcessor,
        max_len: int,
        limit: int | None = None,
        captions: Path | None = None,
    ):
        from dde_bench.data.readers import COCO_CAPTIONS, read_coco_captions

        data_dir = Path(data_dir)
        path = Path(captions) if captions else data_dir / COCO_CAPTIONS
        if not path.is_file():
            raise UserError(
                f"{path}: no captions for the pre-training stage (COCO's {COCO_CAPTIONS} format; "
                "the synthetic world writes one)"
            )
        pairs = read_coco_captions(path)
        if limit is not None:
            pairs = pairs[:limit]
        if len(pairs) < 2:
            raise UserError(f"{path}: fewer than two captions; ITM needs negatives")
        rows = [{"image": _image_path(data_dir, name), "caption": c} for name, c in pairs]
        enc = tokenizer(
            [r["caption"] for r in rows],
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        self.input_ids = enc["input_ids"].long()
        self.attention_mask = enc["attention_mask"].long()
        self._tok, self._max_len = tokenizer, max_len
        self._captions = [r["caption"] for r in rows]
        self._hard: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._world_cache = None
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, limit, processor)
        if _DECODED.get("key") != key:
            images = [processor.load_uint8(r["image"]) for r in rows]
            if len({tuple(t.shape) for t in images}) != 1:
                raise UserError(f"{path}: pre-training needs images of one size")
            _DECODED.clear()  # one pool held at a time
            _DECODED.update(key=key, images=torch.stack(images))
        self.images = _DECODED["images"]  # read only: batches index it
        self.cached = True  # decoded once, held in memory (the training loader needs no workers)

    def __len__(self) -> int:
        return len(self.input_ids)

    def _world(self) -> tuple[list[str], list[str], tuple[int, int]]:
        """The world's colours, shapes and object range, read off the captions once."""
        if self._world_cache is None:
            from dde_bench.data.synth import parse_caption

            ok = [p for p in (parse_caption(c) for c in self._captions) if p is not None]
            colors = sorted({c for g, _ in ok for c, _ in g})
            shapes = sorted({s for g, _ in ok for _, s in g})
            totals = [sum(g.values()) for g, _ in ok] or [1]
            self._world_cache = (colors, shapes, (min(totals), max(totals)))
        return self._world_cache

    def row_negatives(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimal-edit false captions of row ``i``'s image (``synth.caption_negatives``), tokenised:
        ``(ids [k, L], mask [k, L])``, ``k`` = 0 for a caption with none. Made on first use and kept, so a
        large pool pays only for the rows its batches draw."""
        got = self._hard.get(i)
        if got is None:
            from dde_bench.data.synth import caption_negatives

            colors, shapes, objects = self._world()
            negs = caption_negatives(self._captions[i], colors, shapes, objects)
            if negs:
                enc = self._tok(
                    negs,
                    padding="max_length",
                    truncation=True,
                    max_length=self._max_len,
                    return_tensors="pt",
                    return_token_type_ids=False,
                )
                got = (enc["input_ids"].long(), enc["attention_mask"].long())
            else:
                got = (torch.zeros(0, self._max_len, dtype=torch.long),) * 2
            self._hard[i] = got
        return got

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator, mlm_prob: float = 0.15, hard: float = 0.0
    ) -> dict:
        """ITM pairs and MLM masking for the captions at ``indices``; randomness from ``generator`` only.

        ``hard``: the share of ITM negatives that keep the image and get a minimal-edit false caption instead
        of another image (:meth:`row_negatives`); ``hard_itm`` marks them in the batch, ``random_itm`` the
        random-image negatives. With ``hard == 0`` the
        draws (and so the batches) are exactly those of earlier versions."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        b = len(idx)
        ids = self.input_ids[idx].clone()
        am = self.attention_mask[idx].clone()
        # ITM: about half the pairs get another image of the batch (a cyclic shift of a random order)
        negative = torch.rand(b, generator=generator) < 0.5
        perm = torch.randperm(b, generator=generator)
        other = torch.empty(b, dtype=torch.long)
        other[perm] = perm.roll(1)
        hard_rows = torch.zeros(b, dtype=torch.bool)
        if hard > 0:
            pick = torch.rand(b, generator=generator)
            which = torch.rand(b, generator=generator)
            for r in torch.nonzero(negative & (pick < hard)).flatten().tolist():
                n_ids, n_am = self.row_negatives(int(idx[r]))
                k = len(n_ids)
                if k:
                    j = min(int(which[r] * k), k - 1)
                    ids[r], am[r] = n_ids[j], n_am[j]
                    hard_rows[r] = True
        T = max(int(am.sum(1).max()), 1)
        ids, am = ids[:, :T], am[:, :T]
        image_rows = torch.where(negative & ~hard_rows, idx[other], idx)
        itm_labels = (~negative).long()
        # MLM
        candidates = am.bool() & ~torch.isin(ids, self.special_ids)
        chosen = candidates & (torch.rand(ids.shape, generator=generator) < mlm_prob)
        mlm_labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        mlm_labels[negative] = -100
        r = torch.rand(ids.shape, generator=generator)
        ids[chosen & (r < 0.8)] = self.mask_id
        rand_word = chosen & (r >= 0.8) & (r < 0.9)
        ids[rand_word] = torch.randint(self.vocab_size, ids.shape, generator=generator)[rand_word]
        raw = self.images[image_rows]
        return {
            "input_ids": ids,
            "attention_mask": am,
            "pixel_values": ImageProcessor.normalize(raw),
            "pixel_mask": None,
            "itm_labels": itm_labels,
            "hard_itm": hard_rows,
            "random_itm": negative & ~hard_rows,
            "mlm_labels": mlm_labels,
        }


class MLMHead(nn.Sequential):
    """BERT's MLM head: Linear - GELU - LayerNorm - Linear(h, vocab)."""

    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps), nn.Linear(hidden, vocab)
        )


class PretrainHeads(nn.Module):
    """ITM (Linear(h, 2)) and, for the teacher, MLM heads used only in the pre-training stage."""

    def __init__(self, hidden: int, vocab: int | None, eps: float, std: float):
        super().__init__()
        self.itm = nn.Linear(hidden, 2)
        self.mlm = MLMHead(hidden, vocab, eps) if vocab else None
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
