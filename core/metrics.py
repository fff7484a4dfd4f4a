"""Feature statistics shared by the detector, the attacks and the analysis. Always in float32 (at
least): under a bf16 autocast (`precision=bf16`) the models' matrix products run in bfloat16, but a
cosine of long feature vectors near 1 would drown in its rounding."""

from __future__ import annotations

import torch
import torch.nn.functional as F



def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is in a 16-bit float type; float32 and float64 (the landscape) unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def assimilation(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over all token pairs (i, j) of each sequence — the paper's feature assimilation.

    features [B, L, D] → [B]. All L positions count, padding included (as upstream), and i = j too.
    Computed as |Σ_i f̂_i|² / L², which equals the mean of the L×L cosine matrix without building it.
    """
    unit = F.normalize(at_least_fp32(features), dim=-1)
    length = features.shape[-2]
    return unit.sum(dim=-2).pow(2).sum(dim=-1) / length**2


def tokenwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over positions of cos(a_l, b_l): [B, L, D] × [B, L, D] → [B]."""
    return F.cosine_similarity(at_least_fp32(a), at_least_fp32(b), dim=-1).mean(dim=-1)
