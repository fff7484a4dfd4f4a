"""One interface over the text encoders of CLIP, LongCLIP and SigLIP.

Every later piece (attacks, benign fine-tuning, the detector) sees a text encoder as

    input_ids --embed--> h(x) --encode--> last_hidden_state --pool/project--> text_embeds

where `embed` is the embedding layer (token + position embeddings) and `encode` is "the rest of the
encoder" (transformer layers + final layer norm) applied to given hidden states, with the attention
mask the model itself uses: causal for the CLIP family, bidirectional for SigLIP.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase, SiglipTextModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

# transformers renamed create_causal_mask's `past_key_values` to `cache` (the old name warns, and goes in 5.40)
NO_CACHE = {"cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values": None}


@dataclass(frozen=True)
class Family:
    """What differs between encoder families, in one place."""

    name: str
    causal: bool  # causal self-attention mask (CLIP, LongCLIP) or bidirectional (SigLIP)
    has_bos: bool  # SigLIP has no BOS token
    pooling: str  # "eos": hidden state at the first EOS (CLIP); "last": last position (SigLIP)
    model_class: type


FAMILIES: dict[str, Family] = {
    "clip": Family("clip", causal=True, has_bos=True, pooling="eos", model_class=CLIPTextModelWithProjection),
    "longclip": Family("longclip", causal=True, has_bos=True, pooling="eos", model_class=CLIPTextModelWithProjection),
    "siglip": Family("siglip", causal=False, has_bos=False, pooling="last", model_class=SiglipTextModel),
}

CLIP_MAX_POSITIONS = 77  # a CLIP-architecture text model with more positions is a LongCLIP


def family_of(config) -> Family:
    """The encoder family of a transformers config (a full two-tower config or a text config)."""
    model_type = getattr(config, "model_type", "")
    if model_type in ("clip", "siglip"):  # two-tower checkpoint: look at its text half
        config = config.text_config
        model_type = config.model_type
    if model_type == "clip_text_model":
        return FAMILIES["longclip" if config.max_position_embeddings > CLIP_MAX_POSITIONS else "clip"]
    if model_type == "siglip_text_model":
        return FAMILIES["siglip"]
    raise ValueError(
        f"unsupported encoder type '{model_type}': amdet-bench scans CLIP, LongCLIP and SigLIP text encoders"
    )


class TextEncoder(nn.Module):
    """A CLIP-family or SigLIP text encoder with its tokenizer, split where the detector needs it."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, family: Family):
        super().__init__()
        self.model = model  # CLIPTextModelWithProjection or SiglipTextModel
        self.tokenizer = tokenizer
        self.family = family
        self.text = model.text_model if isinstance(model, CLIPTextModelWithProjection) else model
        self.config = self.text.config
        self.max_length = self.config.max_position_embeddings  # 77 / 248 / 64
        self.hidden_size = self.config.hidden_size
        self.eos_token_id = tokenizer.eos_token_id
        # the detector inserts its vectors right after BOS (SigLIP: at the very start)
        self.bos_position: int | None = 0 if family.has_bos else None
        self.insert_position = 1 if family.has_bos else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def rows_per_pass(self) -> int:
        """Rows per no-grad forward pass over many prompts. On CPU, keep a pass near 4k tokens: bigger
        activations are fresh allocations from the OS on every pass (glibc hands large blocks back),
        which cost a tiny-clip 2.5 ms per prompt at 200 rows against 1.3 ms at 50. GPUs want big passes."""
        return 256 if self.device.type == "cuda" else max(1, 4096 // self.max_length)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """input_ids [B, max_length]: padded and truncated to the model's full length (as CLIP/SigLIP train)."""
        enc = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """h(x): the embedding-layer output (token + position embeddings), [B, L, D]."""
        return self.text.embeddings(input_ids=input_ids)

    def encode(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The rest of the encoder on given hidden states: layers + final layer norm → last_hidden_state."""
        if self.family.causal:
            mask = create_causal_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask, **NO_CACHE
            )
            out = self.text.encoder(inputs_embeds=hidden_states, attention_mask=mask, is_causal=True)
        else:
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
            out = self.text.encoder(inputs_embeds=hidden_states, attention_mask=mask)
        return self.text.final_layer_norm(out.last_hidden_state)

    def encode_branches(self, shared: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
        """Causal families: the last hidden states [R, C, S, D] of the R·C sequences [shared[r], branches[r, c]]
        (shared [R, P, D], branches [R or 1, C, S, D], embedding-layer outputs), as `encode` gives them on each
        whole sequence. A causal position never sees a later one, so the P shared positions are the same
        in all C branches of a row: they run once a row here (keys and values kept for the branches), not
        once a sequence. A CoCoOp prompt is such a row: its context depends on the image, not the class."""
        if not self.family.causal:
            raise ValueError(f"encode_branches needs a causal text encoder; {self.family.name} attends both ways")
        (rows, p, _), (classes, length) = shared.shape, branches.shape[1:3]
        allowed = torch.ones(length, p + length, dtype=torch.bool, device=branches.device).tril(p)  # [S, P + S]
        heads = self.config.num_attention_heads
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(-3, -2)  # [..., L, D] → [..., H, L, d]
        merge = lambda t: t.transpose(-3, -2).flatten(-2)  # [..., H, L, d] → [..., L, D]
        h, b = shared, branches
        for layer in self.text.encoder.layers:
            attn = layer.self_attn
            x, y = layer.layer_norm1(h), layer.layer_norm1(b)
            k, v = split(attn.k_proj(x)), split(attn.v_proj(x))  # [R, H, P, d]
            h_out = F.scaled_dot_product_attention(split(attn.q_proj(x)), k, v, is_causal=True, scale=attn.scale)
            own = lambda proj: split(proj(y)).expand(rows, -1, -1, -1, -1)  # [R, C, H, S, d]
            keys = torch.cat([k[:, None].expand(-1, classes, -1, -1, -1), own(attn.k_proj)], dim=-2)
            values = torch.cat([v[:, None].expand(-1, classes, -1, -1, -1), own(attn.v_proj)], dim=-2)
            b_out = F.scaled_dot_product_attention(own(attn.q_proj), keys, values, attn_mask=allowed, scale=attn.scale)
            h = h + attn.out_proj(merge(h_out))
            b = b + attn.out_proj(merge(b_out))
            h = h + layer.mlp(layer.layer_norm2(h))
            b = b + layer.mlp(layer.layer_norm2(b))
        return self.text.final_layer_norm(b)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """last_hidden_state [B, L, D] = encode(embed(input_ids))."""
        return self.encode(self.embed(input_ids), attention_mask)

    def pool_positions(self, input_ids: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """Index of the pooled token per row; `shift` accounts for vectors inserted before it."""
        if self.family.pooling == "last":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        first_eos = (input_ids == self.eos_token_id).int().argmax(dim=-1)
        return (first_eos + shift).clamp(max=input_ids.shape[1] - 1)

    def pool(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """The pooled hidden state [B, D]: first EOS for CLIP, last position for SigLIP."""
        rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
        return last_hidden_state[rows, self.pool_positions(input_ids, shift)]

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled state → the text embedding shared with the image tower (text_embeds)."""
        head = self.model.text_projection if isinstance(self.model, CLIPTextModelWithProjection) else self.text.head
        return head(pooled)

    def text_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The projected pooled text embedding [B, P] used by Text-on-Pair attacks and contrastive fine-tuning."""
        return self.project(self.pool(self(input_ids), input_ids))

    def save(self, directory) -> None:
        """Write an HF directory: model.safetensors, config.json and the tokenizer files."""
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
