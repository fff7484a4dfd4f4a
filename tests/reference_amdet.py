"""A reference AMDET, step by step as upstream computes it: per sample, sequential, slow.

It exists to prove that the fast path in `amdet/` computes the same losses, checks and landscape.
One deliberate difference from upstream: the same-target ratio counts every test prompt but the
first (the reference) over n − 1, instead of dividing by n (upstream's off-by-one).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from amdet.checks import CheckThresholds
from amdet.inversion import LossWeights, ShallowSet, split
from amdet.landscape import LandscapeConfig
from core.encoders import TextEncoder


@torch.no_grad()
def shallow_set(model: TextEncoder, prompts: list[str], test_share: float, seed: int) -> ShallowSet:
    """The features as upstream's preprocessing makes them: each prompt tokenized, embedded and run
    through the encoder on its own (upstream then writes two .npy files per prompt; kept in memory
    here). The split is the fast path's seeded one, not upstream's file-order one."""
    hidden, output = [], []
    for prompt in prompts:
        h = model.embed(model.tokenize([prompt]))
        hidden.append(h[0])
        output.append(model.encode(h)[0])
    return ShallowSet(prompts, torch.stack(hidden), torch.stack(output), *split(len(prompts), test_share, seed))


def insert_one(h: torch.Tensor, v: torch.Tensor, position: int) -> torch.Tensor:
    """One prompt: [L, D] with v [k, D] inserted at `position`, truncated to L."""
    return torch.cat([h[:position], v, h[position:]])[: h.shape[0]]


def assimilation_one(features: torch.Tensor) -> torch.Tensor:
    """Mean of the full L×L cosine matrix of one prompt's tokens."""
    unit = F.normalize(features, dim=-1)
    return (unit @ unit.T).mean()


def tokenwise_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([F.cosine_similarity(a[i], b[i], dim=0) for i in range(a.shape[0])]).mean()


def loss_one(model, anchor, h, out_clean, v, w: LossWeights) -> torch.Tensor:
    h_v = insert_one(h, v, model.insert_position).unsqueeze(0)
    out = model.encode(h_v)[0]
    loss = -w.assim * assimilation_one(out)
    if w.dev:
        loss = loss + w.dev * tokenwise_one(out_clean, out)
    if w.anchor:
        loss = loss + w.anchor * tokenwise_one(anchor.encode(h_v)[0], out)
    return loss


def batch_loss(model, anchor, hidden, output, v, w) -> torch.Tensor:
    """The batch loss as upstream's per-sample loop computes it."""
    return torch.stack([loss_one(model, anchor, hidden[i], output[i], v, w) for i in range(len(hidden))]).mean()


@torch.no_grad()
def checks(model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, v: torch.Tensor, t: CheckThresholds) -> dict:
    outs, anchors = [], []
    for i in range(len(hidden)):
        h_v = insert_one(hidden[i], v, model.insert_position).unsqueeze(0)
        outs.append(model.encode(h_v)[0])
        anchors.append(anchor.encode(h_v)[0])
    assimilated = sum(1 for o in outs if assimilation_one(o) > t.assim_token)
    same = sum(1 for o in outs[1:] if tokenwise_one(o, outs[0]) > t.same_token)
    different = sum(1 for o, a in zip(outs, anchors) if tokenwise_one(o, a) < t.diff_token)
    return {
        "assim_ratio": assimilated / len(outs),
        "same_ratio": same / (len(outs) - 1),
        "diff_ratio": different / len(outs),
    }


def landscape(model, anchor, h, out_clean, v, w: LossWeights, cfg: LandscapeConfig) -> dict:
    """Grid point by grid point, and a Hessian eigen-decomposition per cell; all of it in float64
    (on float64 copies of both models), as the fast path computes it."""
    model, anchor = copy.deepcopy(model).double(), copy.deepcopy(anchor).double()
    h, out_clean = h.detach().double(), out_clean.detach().double()
    v = v.detach().double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_one(model, anchor, h, out_clean, v, w), v)
    d1 = -grad / grad.norm()
    d2 = torch.randn(v.shape, generator=torch.Generator().manual_seed(cfg.seed)).to(v)
    d2 = d2 - (d2 * d1).sum() * d1
    d2 = d2 / d2.norm()
    span = cfg.span * v.norm().item() if cfg.relative else cfg.span
    alphas = torch.linspace(-span, span, cfg.points, dtype=torch.float64)
    grid = torch.zeros(cfg.points, cfg.points, dtype=torch.float64)
    with torch.no_grad():
        for i, a in enumerate(alphas):
            for j, b in enumerate(alphas):
                grid[i, j] = loss_one(model, anchor, h, out_clean, v.detach() + a * d1 + b * d2, w)
    step = (alphas[1] - alphas[0]).item()
    f = grid.double()
    eig = []
    for i in range(1, cfg.points - 1):
        for j in range(1, cfg.points - 1):
            fxx = (f[i + 1, j] - 2 * f[i, j] + f[i - 1, j]) / step**2
            fyy = (f[i, j + 1] - 2 * f[i, j] + f[i, j - 1]) / step**2
            fxy = (f[i + 1, j + 1] - f[i + 1, j - 1] - f[i - 1, j + 1] + f[i - 1, j - 1]) / (4 * step**2)
            eig.extend(torch.linalg.eigvalsh(torch.tensor([[fxx, fxy], [fxy, fyy]])).tolist())
    eig = torch.tensor(eig, dtype=torch.float64)
    return {"grid": grid, "eigenvalues": eig, "positive_ratio": (eig > cfg.eig_tol).double().mean().item()}


def scan(model: TextEncoder, anchor: TextEncoder, data: ShallowSet, cfg) -> dict:
    """The whole scan loop, with the same random draws as `amdet.scan.scan` (cfg: a ScanConfig)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    v = torch.nn.Parameter((torch.randn(cfg.k, model.hidden_size, generator=gen) * cfg.init_std).to(model.device))
    opt = torch.optim.Adam([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
    th, test_hidden = cfg.thresholds, data.hidden[data.test]
    steps, best, log, decided, land = 0, float("inf"), [], False, None
    n_batches = len(data.train) // cfg.batch_size
    for epoch in range(cfg.epochs):
        order = data.train[torch.randperm(len(data.train), generator=gen)]
        total = 0.0
        for b in range(n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss = batch_loss(model, anchor, data.hidden[idx], data.output[idx], v, cfg.weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            total += loss.item()
            running = total / (b + 1)
            best = min(best, running)
            due = (b + 1) % cfg.check_every == 0 or running < th.loss_stop or b == n_batches - 1
            if running < th.loss_start and due:
                stats = checks(model, anchor, test_hidden, v.detach(), th)
                log.append(stats)
                if (stats["assim_ratio"] > th.assim_ratio and stats["same_ratio"] > th.same_ratio
                        and stats["diff_ratio"] > th.diff_ratio):
                    i = data.test[0]
                    land = landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape)
                    if land["positive_ratio"] > th.landscape_ratio:
                        decided = True
                        break
            if running < th.loss_stop:
                break
        if decided:
            break
    if not decided:  # as the fast scan does: the record of a benign scan has a landscape too
        i = data.test[0]
        land = landscape(model, anchor, data.hidden[i], data.output[i], v.detach(), cfg.weights, cfg.landscape)
    with torch.no_grad():
        score = sum(assimilation_one(model.encode(insert_one(h, v.detach(), model.insert_position).unsqueeze(0))[0]).item()
                    for h in test_hidden) / len(test_hidden)
    return {"verdict": "backdoor" if decided else "benign", "score": score, "best_running_loss": best, "steps": steps, "checks": log, "v": v.detach(),
            "landscape_ratio": land["positive_ratio"]}
