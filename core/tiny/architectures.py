"""The real transformers architectures of CLIP, LongCLIP and SigLIP text encoders, at small size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, SiglipTextConfig, SiglipTextModel

from core.encoders import FAMILIES, TextEncoder
from core.tiny.tokenizer import clip_tokenizer, clip_vocab_and_merges


@dataclass(frozen=True)
class TinyArch:
    """Size of a tiny encoder. Defaults: hidden 96, 8 layers — 5.7 M parameters, 4.7 M of them embeddings.

    Depth matters more than width here: at 4 layers a Text-on-Pair backdoor (which constrains only the
    pooled output) stays local to the end-of-text position and does not assimilate the prompt, the
    premise the detector relies on; at 8 layers it does (README, "The embedded tiny world")."""

    family: str = "clip"  # clip | longclip | siglip
    hidden: int = 96
    layers: int = 8
    heads: int = 4
    ffn: int = 384
    max_length: int = 77  # 77 CLIP, 248 LongCLIP, 64 SigLIP
    projection_dim: int = 384  # = the paired tower's embedding size (MiniLM)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown tiny encoder family '{self.family}'; choose one of {sorted(FAMILIES)}")
        for key in ("hidden", "layers", "heads", "ffn", "max_length", "projection_dim"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"tiny arch '{key}' must be positive, got {getattr(self, key)}")
        if self.hidden % self.heads:
            raise ValueError(f"tiny arch hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    def to_dict(self) -> dict:
        return asdict(self)


def hf_config(arch: TinyArch):
    """The transformers config of a tiny encoder over the real CLIP BPE vocabulary."""
    vocab, _ = clip_vocab_and_merges()
    eos = vocab["<|endoftext|>"]
    common = dict(
        vocab_size=len(vocab),
        hidden_size=arch.hidden,
        intermediate_size=arch.ffn,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        max_position_embeddings=arch.max_length,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    if arch.family == "siglip":
        return SiglipTextConfig(projection_size=arch.projection_dim, bos_token_id=None, **common)
    return CLIPTextConfig(
        projection_dim=arch.projection_dim, bos_token_id=vocab["<|startoftext|>"], hidden_act="quick_gelu", **common
    )


def random_encoder(arch: TinyArch, seed: int = 0) -> TextEncoder:
    """A freshly initialised tiny encoder (deterministic for a seed)."""
    family = FAMILIES[arch.family]
    torch.manual_seed(seed)
    config = hf_config(arch)
    model = (SiglipTextModel if arch.family == "siglip" else CLIPTextModelWithProjection)(config)
    tokenizer = clip_tokenizer(arch.max_length, bos=family.has_bos)
    return TextEncoder(model.eval(), tokenizer, family)
