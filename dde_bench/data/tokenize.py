"""BERT WordPiece tokenisation.

A model's tokenizer travels with it: a dde-bench checkpoint holds the ``vocab.txt`` it was trained with, and a
transformers ViLT / BERT folder its own tokenizer files (:func:`model_tokenizer`). Tiny models on a dataset
without one use a WordPiece vocabulary trained on the training split's text with ``tokenizers`` (lower-case;
[PAD] = 0, [UNK], [CLS], [SEP], [MASK]; :func:`train_wordpiece`). All load as ``transformers.BertTokenizerFast``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import BertTokenizerFast

from dde_bench.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(
    texts: Iterable[str], out_dir: Path, vocab_size: int = 1000, min_frequency: int = 1
) -> Path:
    """Train a lower-case BERT WordPiece vocabulary on ``texts``; writes and returns ``out_dir/vocab.txt``."""
    from tokenizers import BertWordPieceTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    path = out_dir / "vocab.txt"
    # Small closed vocabularies (the synthetic world): every word whole, plus each character alone and as a
    # ##continuation. A valid WordPiece vocabulary, and unlike the trainer's output (whose tie-breaking is not
    # stable across runs) byte-identical for the same text.
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True, strip_accents=True, clean_text=True), BertPreTokenizer()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    chars = sorted({ch for w in words for ch in w})
    closed = SPECIAL_TOKENS + chars + ["##" + c for c in chars] + [w for w in words if len(w) > 1]
    if len(closed) <= vocab_size:
        path.write_text("\n".join(closed) + "\n", encoding="utf-8")
        return path
    tok = BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    # The trainer's order of equal-frequency tokens is not stable across runs; ids do not need it, so write the
    # special tokens first and the rest sorted, which makes vocab.txt byte-identical for the same text.
    vocab = tok.get_vocab()
    ordered = SPECIAL_TOKENS + sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    path.write_text("\n".join(ordered) + "\n", encoding="utf-8")
    return path


def load_tokenizer(path_or_dir: Path | str, lowercase: bool = True) -> BertTokenizerFast:
    """Load a BERT WordPiece tokenizer from ``vocab.txt`` or a folder containing one."""
    p = Path(path_or_dir)
    vocab = p / "vocab.txt" if p.is_dir() else p
    if not vocab.is_file():
        raise UserError(f"{vocab}: no such vocabulary file (expected a BERT WordPiece vocab.txt)")
    lines = sum(1 for line in vocab.read_text(encoding="utf-8").splitlines() if line)
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=lowercase)
    if len(tok) < lines:
        # transformers 5 ignores `vocab_file` here (the keyword became `vocab`) and silently builds a 5-token
        # vocabulary that maps every word to [UNK]; every text would look the same to the model
        tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=lowercase)
    if len(tok) < lines:
        raise UserError(f"{vocab}: the tokenizer loads only {len(tok)} of its {lines} tokens")
    if tok.pad_token_id != 0:
        raise UserError(f"{vocab}: [PAD] must be token 0 (line 1), found it at {tok.pad_token_id}")
    return tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def model_tokenizer(folder: Path | str) -> BertTokenizerFast | None:
    """The tokenizer that came with a model folder: its ``vocab.txt`` (a dde-bench checkpoint, or a BERT /
    ViLT folder) or transformers' tokenizer files; None when the folder has neither (or is a hub id)."""
    p = Path(folder)
    if not p.is_dir():
        return None
    if (p / "vocab.txt").is_file():
        return load_tokenizer(p)
    if any((p / f).is_file() for f in TOKENIZER_FILES):
        try:
            tok = BertTokenizerFast.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise UserError(f"{p}: cannot load its tokenizer files ({str(e).splitlines()[0]})") from None
        if tok.pad_token_id is None:
            raise UserError(f"{p}: its tokenizer has no [PAD] token")
        return tok
    return None


def save_vocab(tokenizer: BertTokenizerFast, folder: Path | str) -> Path:
    """Write ``folder/vocab.txt``: the tokenizer's tokens one per line in id order (what :func:`load_tokenizer`
    reads back to the same ids)."""
    vocab = tokenizer.get_vocab()
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise UserError("the tokenizer's ids are not 0..N-1; it cannot be written as a vocab.txt")
    path = Path(folder) / "vocab.txt"
    path.write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n", encoding="utf-8")
    return path


def vocab_fingerprint(tokenizer: BertTokenizerFast) -> str:
    """A short hash of a tokenizer's token -> id table: equal fingerprints give equal token ids."""
    import hashlib
    import json

    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def encode(
    tokenizer: BertTokenizerFast, texts: Sequence[str], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] text [SEP], truncated to ``max_len``, padded to the longest in the batch.

    Returns ``(input_ids, attention_mask)``, both LongTensor (B, T) with T <= max_len.
    """
    enc = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return enc["input_ids"].long(), enc["attention_mask"].long()
