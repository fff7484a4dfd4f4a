"""Implicit-feature inversion: the shallow features, the inserted vectors and the three losses.

For each shallow prompt x: h(x) = the scanned model's embedding-layer output and f(x) its output.
k trainable vectors v are inserted right after BOS (SigLIP: at the start), with no position
embedding of their own, and the sequence is truncated back to L:

    h_v = [h(x)[:p], v, h(x)[p:]][:L]

    L_assim  = mean pairwise token cosine of enc_f(h_v)            (to maximise)
    L_dev    = mean tokenwise cos(f(x), enc_f(h_v))                (to minimise: move away from f(x))
    L_anchor = mean tokenwise cos(enc_f0(h_v), enc_f(h_v))         (to minimise: unlike the anchor)
    Loss     = −w_assim·L_assim + β·L_dev + γ·L_anchor             (each term switchable)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.encoders import TextEncoder
from core.metrics import assimilation, tokenwise_cosine


@dataclass
class ShallowSet:
    """Shallow-dataset features, computed once per (model, prompt set) and held in memory."""

    prompts: list[str]
    hidden: torch.Tensor  # h(x) [N, L, D]
    output: torch.Tensor  # f(x) [N, L, D]
    train: torch.Tensor  # indices of the inversion split
    test: torch.Tensor  # indices of the test split


@torch.no_grad()
def shallow_set(model: TextEncoder, prompts: list[str], test_share: float, seed: int) -> ShallowSet:
    """Embed and encode every prompt once; split deterministically by `seed` (not by file order)."""
    if not 0 < test_share < 1:
        raise ValueError(f"scan.test_share must be between 0 and 1, got {test_share}")
    hidden, output, batch = [], [], model.rows_per_pass
    for i in range(0, len(prompts), batch):
        h = model.embed(model.tokenize(prompts[i : i + batch]))
        hidden.append(h)
        output.append(model.encode(h))
    return ShallowSet(prompts, torch.cat(hidden), torch.cat(output), *split(len(prompts), test_share, seed))


def split(n: int, test_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of n prompts: a permutation drawn from `seed`, at least 2 for the test."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(2, round(n * test_share))
    return order[n_test:], order[:n_test]


def insert(hidden: torch.Tensor, v: torch.Tensor, position: int) -> torch.Tensor:
    """h_v: the k vectors v [k, D] (or one set per row, [B, k, D]) inserted at `position` of every
    row of h [B, L, D], truncated to L."""
    batch, length, _ = hidden.shape
    vs = (v.unsqueeze(0).expand(batch, -1, -1) if v.dim() == 2 else v).to(hidden.dtype)
    return torch.cat([hidden[:, :position], vs, hidden[:, position:]], dim=1)[:, :length]


@dataclass(frozen=True)
class LossWeights:
    assim: float = 1.0
    dev: float = 0.1  # β
    anchor: float = 0.1  # γ


def row_losses(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor, v: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The inversion loss of every row [B] (v: [k, D] shared, or [B, k, D] per row) and its terms."""
    h_v = insert(hidden, v, model.insert_position)
    out = model.encode(h_v)
    terms = {"assim": assimilation(out)}
    loss = -weights.assim * terms["assim"]
    if weights.dev:
        terms["dev"] = tokenwise_cosine(output, out)
        loss = loss + weights.dev * terms["dev"]
    if weights.anchor:
        terms["anchor"] = tokenwise_cosine(anchor.encode(h_v), out)
        loss = loss + weights.anchor * terms["anchor"]
    return loss, terms


def inversion_loss(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor, v: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The inversion loss of one batch (mean over rows), and its terms for the log (0-d tensors, left
    on the device: the caller reads them with the loss in one host sync)."""
    loss, terms = row_losses(model, anchor, hidden, output, v, weights)
    return loss.mean(), {k: t.detach().mean() for k, t in terms.items()}
