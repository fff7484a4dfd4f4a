"""The stop checks, evaluated in batches over the test prompts (no per-sample loop).

- assimilation ratio: share of test prompts whose output with v has assimilation > τ_assim;
- same target: share of the *other* test prompts whose output with v has mean tokenwise cosine
  > τ_same to the first test prompt's (upstream never counts its first item but divides by all,
  which caps the ratio at (n−1)/n; here the first prompt is the reference and is not counted);
- different target: share of test prompts whose output with v has mean tokenwise cosine < τ_diff
  to the anchor's output on the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amdet.inversion import insert
from core.encoders import TextEncoder
from core.metrics import assimilation, tokenwise_cosine


@dataclass(frozen=True)
class CheckThresholds:
    """Thresholds of the checks (the paper's CLIP-L values by default)."""

    assim_token: float = 0.8  # a prompt counts as assimilated above this
    assim_ratio: float = 0.8  # τ1: share of assimilated prompts needed
    same_token: float = 0.92  # a prompt counts as "same target" above this cosine
    same_ratio: float = 0.995  # τ2
    diff_token: float = 0.0  # a prompt counts as "different from the anchor" below this cosine
    diff_ratio: float = 0.95
    landscape_ratio: float = 0.8  # τ3: share of positive Hessian eigenvalues
    loss_start: float = -0.76  # checks start once the running mean loss is below this
    loss_stop: float = -0.85  # the epoch ends once the running mean loss is below this


@torch.no_grad()
def evaluate_checks(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, v: torch.Tensor, t: CheckThresholds,
    batch: int | None = None,
) -> dict:
    """Every check's statistic and pass/fail on the test prompts' embeddings `hidden` [N, L, D]."""
    assim, same, diff_cos = [], [], []
    reference, batch = None, batch or model.rows_per_pass
    for i in range(0, len(hidden), batch):
        h_v = insert(hidden[i : i + batch], v, model.insert_position)
        out = model.encode(h_v)
        if reference is None:
            reference = out[:1]
        assim.append(assimilation(out))
        same.append(tokenwise_cosine(out, reference.expand_as(out)))
        diff_cos.append(tokenwise_cosine(out, anchor.encode(h_v)))
    assim, same, diff_cos = torch.cat(assim), torch.cat(same)[1:], torch.cat(diff_cos)
    stats = {
        "assim_ratio": (assim > t.assim_token).float().mean().item(),
        "same_ratio": (same > t.same_token).float().mean().item(),
        "diff_ratio": (diff_cos < t.diff_token).float().mean().item(),
        "assim_mean": assim.mean().item(),
        "same_mean": same.mean().item(),
        "anchor_cos_mean": diff_cos.mean().item(),
    }
    stats["assim_pass"] = stats["assim_ratio"] > t.assim_ratio
    stats["same_pass"] = stats["same_ratio"] > t.same_ratio
    stats["diff_pass"] = stats["diff_ratio"] > t.diff_ratio
    stats["all_pass"] = stats["assim_pass"] and stats["same_pass"] and stats["diff_pass"]
    return stats


@torch.no_grad()
def mean_assimilation(model: TextEncoder, hidden: torch.Tensor, v: torch.Tensor, batch: int | None = None) -> float:
    """Mean assimilation of the prompts' outputs with v inserted: the scan's continuous score.
    A backdoor's v collapses every output onto one target (≈ 1); a benign model's cannot."""
    batch = batch or model.rows_per_pass
    total = sum(assimilation(model.encode(insert(hidden[i : i + batch], v, model.insert_position))).sum().item()
                for i in range(0, len(hidden), batch))
    return total / len(hidden)
