"""The real CLIP BPE vocabulary, rebuilt offline, tokenizes as the hub's CLIP tokenizer does."""

from __future__ import annotations

from transformers import AutoTokenizer

from core.tiny.tokenizer import clip_tokenizer, clip_vocab_and_merges


def test_vocabulary_layout():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # byte symbols, then their end-of-word forms


def test_known_token_ids():
    """Ids of openai/clip-vit-large-patch14 for a known prompt; 'zzzz' is one (rare) token."""
    tok = clip_tokenizer()
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok("zzzz")["input_ids"]) == 3
    assert tok("A  PHOTO")["input_ids"] == tok("a photo")["input_ids"]  # lower-cased, whitespace folded


def test_siglip_layout_survives_save_and_load(tmp_path):
    tok = clip_tokenizer(64, bos=False)
    assert tok("a photo of a cat")["input_ids"] == [320, 1125, 539, 320, 2368, 49407]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a photo of a cat")["input_ids"] == [320, 1125, 539, 320, 2368, 49407]
    assert again.model_max_length == 64
