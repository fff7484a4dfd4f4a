"""Feature statistics shared by the detector, the attacks and the analysis."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def assimilation(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over all token pairs (i, j) of each sequence — the paper's feature assimilation.

    features [B, L, D] → [B]. All L positions count, padding included (as upstream), and i = j too.
    Computed as |Σ_i f̂_i|² / L², which equals the mean of the L×L cosine matrix without building it.
    """
    unit = F.normalize(features, dim=-1)
    length = features.shape[-2]
    return unit.sum(dim=-2).pow(2).sum(dim=-1) / length**2


def tokenwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over positions of cos(a_l, b_l): [B, L, D] × [B, L, D] → [B]."""
    return F.cosine_similarity(a, b, dim=-1).mean(dim=-1)
