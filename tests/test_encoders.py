"""The encoder interface: h(x) followed by the rest of the encoder is the model's own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig

from core.encoders import FAMILIES, family_of
from core.loading import load_encoder
from tests.helpers import MAX_LENGTH, PROMPTS


@torch.no_grad()
def test_split_forward_equals_model_forward(micro_encoder):
    ids = micro_encoder.tokenize(PROMPTS)
    own = micro_encoder.model(input_ids=ids)
    split = micro_encoder.encode(micro_encoder.embed(ids))
    assert (split - own.last_hidden_state).abs().max().item() <= 1e-5
    own_embeds = own.text_embeds if hasattr(own, "text_embeds") else own.pooler_output
    assert (micro_encoder.text_embeds(ids) - own_embeds).abs().max().item() <= 1e-5


@torch.no_grad()
def test_split_forward_with_attention_mask(micro_encoder):
    """Padding handled as the model itself does when a mask is given."""
    enc = micro_encoder.tokenizer(PROMPTS, padding="max_length", max_length=micro_encoder.max_length,
                                  truncation=True, return_tensors="pt")
    own = micro_encoder.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    split = micro_encoder.encode(micro_encoder.embed(enc["input_ids"]), enc["attention_mask"])
    assert (split - own).abs().max().item() <= 1e-5


@torch.no_grad()
def test_causal_vs_bidirectional(micro_encoder):
    """Changing the last token changes earlier outputs only when attention is bidirectional (SigLIP)."""
    ids = micro_encoder.tokenize(["a photo of a cat"])
    other = ids.clone()
    other[0, -1] = 320  # 'a'
    first = micro_encoder(ids)[0, :3]
    changed = micro_encoder(other)[0, :3]
    moved = (first - changed).abs().max().item()
    if micro_encoder.family.causal:
        assert moved == 0.0
    else:
        assert moved > 1e-4


def test_branches_after_a_shared_prefix_equal_each_whole_sequence(micro_encoder):
    """encode_branches (CoCoOp's prompts: a per-image prefix, then each class) gives the states `encode`
    gives each whole sequence, values and gradients; a bidirectional family is refused in one line."""
    torch.manual_seed(0)
    width = micro_encoder.hidden_size
    shared = torch.randn(3, 5, width, requires_grad=True)  # 3 rows of a 5-position prefix
    branches = torch.randn(1, 4, 3, width)  # 4 branches of 3 positions, the same for every row
    if not micro_encoder.family.causal:
        with pytest.raises(ValueError, match="causal"):
            micro_encoder.encode_branches(shared, branches)
        return
    whole = torch.cat([shared[:, None].expand(-1, 4, -1, -1), branches.expand(3, -1, -1, -1)], dim=2)
    expected = micro_encoder.encode(whole.flatten(0, 1))[:, 5:].unflatten(0, (3, 4))
    got = micro_encoder.encode_branches(shared, branches)
    assert got.shape == (3, 4, 3, width)
    assert (got - expected).abs().max().item() <= 1e-5
    weights = torch.randn(got.shape)  # a loss whose gradient is not ~0 (a layer norm's output has a fixed norm)
    (g_expected,) = torch.autograd.grad((expected * weights).sum(), shared)
    (g_got,) = torch.autograd.grad((got * weights).sum(), shared)
    assert (g_got - g_expected).abs().max().item() <= 1e-4 * g_expected.abs().max().item()


def test_family_layout(micro_encoder, family):
    ids = micro_encoder.tokenize(["a photo of a cat"])
    assert ids.shape == (1, MAX_LENGTH[family])
    bos = micro_encoder.tokenizer.convert_tokens_to_ids("<|startoftext|>")
    if family == "siglip":
        assert micro_encoder.bos_position is None and micro_encoder.insert_position == 0
        assert bos not in ids[0].tolist()
        assert micro_encoder.pool_positions(ids).tolist() == [MAX_LENGTH[family] - 1]
    else:
        assert micro_encoder.bos_position == 0 and micro_encoder.insert_position == 1
        assert ids[0, 0].item() == bos
        # pooled at the first EOS: BOS + 5 word tokens
        assert micro_encoder.pool_positions(ids).tolist() == [6]
        assert micro_encoder.pool_positions(ids, shift=2).tolist() == [8]


@torch.no_grad()
def test_save_and_load_round_trip(micro_encoder, family, tmp_path):
    micro_encoder.save(tmp_path)
    loaded = load_encoder(tmp_path)
    assert loaded.family.name == family
    assert loaded.max_length == MAX_LENGTH[family]
    ids = micro_encoder.tokenize(PROMPTS)
    assert torch.equal(loaded.tokenize(PROMPTS), ids)
    assert torch.allclose(loaded(ids), micro_encoder(ids), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_family_of_two_tower_config():
    """A full CLIP checkpoint's config is read through its text half (LongCLIP by its 248 positions)."""
    assert family_of(CLIPConfig()).name == "clip"
    assert family_of(CLIPConfig(text_config={"max_position_embeddings": 248})).name == "longclip"
    assert set(FAMILIES) == {"clip", "longclip", "siglip"}
