"""The tokenizer must hold the whole vocab.txt: transformers 5 silently ignores `vocab_file` and maps every word
to [UNK], which makes every sentence identical and pins any model at chance."""

from dde_bench.data import load_tokenizer


def test_tokenizer_loads_every_vocab_line(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle", "left", "image"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = load_tokenizer(tmp_path)
    assert len(tok) == len(words)
    ids = tok("The red circle")["input_ids"]
    assert ids == [2, 5, 6, 7, 3]  # [CLS] the red circle [SEP], no [UNK]
