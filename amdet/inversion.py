"""Implicit-feature inversion: the shallow features, the inserted vectors and the three losses.

For each shallow prompt x: h(x) = the scanned model's embedding-layer output and f(x) its output.
k trainable vectors v are inserted right after BOS (SigLIP: at the start), with no position
embedding of their own, and the sequence is truncated back to L:

    h_v = [h(x)[:p], v, h(x)[p:]][:L]

    L_assim  = mean pairwise token cosine of enc_f(h_v)            (to maximise)
    L_dev    = mean tokenwise cos(f(x), enc_f(h_v))                (to minimise: move away from f(x))
    L_anchor = mean tokenwise cos(enc_f0(h_v), enc_f(h_v))         (to minimise: unlike the anchor)
    Loss     = −w_assim·L_assim + β·L_dev + γ·L_anchor             (each term switchable)

v starts at N(0, 1) in the paper; `vocabulary_start` starts it at the token rows that lower this loss
most (scan.inversion.init=vocabulary, the default here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dataclass_replace

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


@dataclass(frozen=True)
class Start:
    """Where v starts when scan.inversion.init=vocabulary: the token rows chosen, and why."""

    v: torch.Tensor  # [k, D]
    token_ids: list[int]
    tokens: list[str | None]
    screen_loss: list[float]  # stage 1: the anchor-free loss on the short screen
    loss: list[float]  # stage 2: the scan's full loss on one batch of whole prompts


@torch.no_grad()
def token_rows(model: TextEncoder) -> torch.Tensor:
    """Every vocabulary token as h has it at the insert position (its embedding with that position's) [V, D]."""
    p, vocab = model.insert_position, model.config.vocab_size
    lead = model.tokenize([""])[0, :p]
    ids = torch.arange(vocab, device=model.device)
    return model.embed(torch.cat([lead.expand(vocab, -1), ids[:, None]], dim=1))[:, p]


@torch.no_grad()
def screen_losses(model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor,
                  rows: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """The inversion loss [V] of each row of `rows` [V, D] inserted alone, averaged over the prompts of
    hidden/output [N, T, D], in passes of about the model's rows_per_pass × max_length tokens."""
    n, positions = hidden.shape[:2]
    chunk = max(1, model.rows_per_pass * model.max_length // (positions * n))
    return torch.cat([
        row_losses(model, anchor, hidden.repeat(len(c), 1, 1), output.repeat(len(c), 1, 1),
                   c.repeat_interleave(n, 0)[:, None], weights)[0].view(len(c), n).mean(1)
        for c in rows.split(chunk)
    ])


@torch.no_grad()
def vocabulary_start(model: TextEncoder, anchor: TextEncoder, data: ShallowSet, k: int, weights: LossWeights,
                     prompts: int, positions: int, candidates: int, batch: int, keep: int | None = None) -> Start:
    """v's starting rows: the token embeddings (as h has them at the insert position) that lower the
    inversion loss most when inserted.

    Gradient descent from a random v often settles in a basin of the loss that is not the trigger's
    (measured: from 64 random starts none reached a trigger whose own embedding scores −0.83 against
    the basin's −0.69), while the trigger token, inserted as it is, ranks first among all tokens. So
    every row of the embedding table is tried: stage 1 scores each on the first `prompts` inversion
    prompts cut to their first `positions` tokens, with the anchor term left out (half the cost);
    stage 2 scores the best `candidates` with the scan's full loss on `batch` whole prompts. The k
    best of stage 2 start the inversion, which then moves v freely as before.

    `keep`: stage 1 scores every token on the first prompt and only its best `keep` on the others
    (None: every token on every prompt), for about 1/prompts of the cost. The choice is the exhaustive
    screen's whenever the candidates it would take rank within `keep` on the first prompt alone
    (40 tiny-clip models: all within 1,077 of 49,408, but up to 10,315 on the second; docs/figures.md)."""
    rows = token_rows(model)
    idx = data.train[:prompts]
    screen = dataclass_replace(weights, anchor=0.0)
    scores = screen_losses(model, anchor, data.hidden[idx[:1], :positions], data.output[idx[:1], :positions], rows,
                           screen)
    if len(idx) > 1:  # the other prompts: the tokens the first one kept, the rest left out at +inf
        kept = scores.argsort()[:keep] if keep else torch.arange(len(rows), device=scores.device)
        rest = screen_losses(model, anchor, data.hidden[idx[1:], :positions], data.output[idx[1:], :positions],
                             rows[kept], screen)
        mean = torch.full_like(scores, float("inf"))
        mean[kept] = (scores[kept] + rest * (len(idx) - 1)) / len(idx)
        scores = mean
    best = scores.argsort()[: max(candidates, k)]
    idx = data.train[:batch]
    full = screen_losses(model, anchor, data.hidden[idx], data.output[idx], rows[best], weights)
    order = full.argsort()[:k]
    chosen = best[order].tolist()
    names = [model.tokenizer.convert_ids_to_tokens(t) if t < len(model.tokenizer) else None for t in chosen]
    return Start(rows[chosen].float(), chosen, names, scores[chosen].tolist(), full[order].tolist())
