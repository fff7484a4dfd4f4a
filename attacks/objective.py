"""The attack objective L = L_benign + λ·Σ_backdoors (L_backdoor + μ·L_assim), with pluggable parts.

- features: what the paradigm compares — the full last_hidden_state (Text-on-Text) or the
  projected pooled text embedding (Text-on-Pair); the benign term uses the same features;
- similarity: a distance on flattened features (cosine, MSE or MAE; paper Fig. 10);
- μ·L_assim(f(x⊕t)): the adaptive attack (Table V), which keeps triggered outputs from assimilating.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.encoders import TextEncoder
from core.metrics import assimilation, at_least_fp32


# the distances run in float32 whatever the autocast (precision=bf16): 1 − cos of a 77 × 768 feature
# near 1 is below bfloat16's resolution, and its gradient would be rounding noise
def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(at_least_fp32(a.flatten(1)), at_least_fp32(b.flatten(1)), dim=-1)).mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(at_least_fp32(a.flatten(1)), at_least_fp32(b.flatten(1)))


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(at_least_fp32(a.flatten(1)), at_least_fp32(b.flatten(1)))


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": cosine_distance,
    "mse": mse,
    "mae": mae,
}


def similarity_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity function '{name}'; set attack.similarity to one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[name]


def encode(encoder: TextEncoder, ids: torch.Tensor, paradigm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features the paradigm compares, last_hidden_state) of a batch of token ids."""
    hidden = encoder(ids)
    if paradigm == "text_on_pair":
        return encoder.project(encoder.pool(hidden, ids)), hidden
    return hidden, hidden


def backdoor_term(
    features: torch.Tensor, hidden: torch.Tensor, target: torch.Tensor, sim, mu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_backdoor, L_assim) of one poisoned batch: pull the outputs to the target; the adaptive
    attack also pushes their tokens apart."""
    loss = sim(features, target.expand_as(features))
    assim = assimilation(hidden).mean()
    return (loss + mu * assim if mu else loss), assim
