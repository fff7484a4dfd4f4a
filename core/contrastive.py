"""Contrastive text ↔ paired-tower losses: CLIP's softmax InfoNCE and SigLIP's pairwise sigmoid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.metrics import at_least_fp32
from core.precision import full_precision


def contrastive_loss(
    text: torch.Tensor,
    other: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    kind: str = "softmax",
) -> torch.Tensor:
    """Loss between matched rows of `text` [B, P] and `other` [B, P] (row i of each is a pair).

    softmax: symmetric cross-entropy over cosine logits (CLIP); sigmoid: every (i, j) is a binary
    match/non-match decision with a learnt bias (SigLIP).
    """
    with full_precision():  # logits of scale 100 in bfloat16 would be off by ±0.4 (precision=bf16)
        logits = F.normalize(at_least_fp32(text), dim=-1) @ F.normalize(at_least_fp32(other), dim=-1).T * logit_scale.exp()
    if kind == "softmax":
        labels = torch.arange(len(text), device=text.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if kind == "sigmoid":
        signs = 2 * torch.eye(len(text), device=text.device) - 1
        return -F.logsigmoid(signs * (logits + logit_bias)).sum() / len(text)
    raise ValueError(f"unknown contrastive loss '{kind}'; choose softmax (CLIP) or sigmoid (SigLIP)")
