"""The natural-backdoor filter: the loss landscape around the inverted v and its Hessian spectrum.

d1 = −∇_v Loss on one test prompt (normalised), d2 a random direction orthogonal to it; the loss
is evaluated on the grid v + α·d1 + β·d2 (α, β in [−span, span]), in batches of grid points. At
every interior point the 2×2 Hessian comes from central differences; its eigenvalues are computed
in closed form for all points at once. An injected backdoor sits in a convex bowl (most
eigenvalues positive); natural backdoor features of benign models give saddle-like surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amdet.inversion import LossWeights, row_losses
from core.encoders import TextEncoder


@dataclass(frozen=True)
class LandscapeConfig:
    points: int = 50  # grid points per axis
    span: float = 10.0  # half-width of the grid
    relative: bool = False  # span × |v| instead of an absolute span
    eig_tol: float = 1e-6  # eigenvalues above this count as positive
    batch: int | None = None  # grid points per forward pass; None: the model's rows_per_pass
    seed: int = 0  # the random second direction

    def __post_init__(self):
        if self.points < 3 or self.span <= 0 or (self.batch is not None and self.batch <= 0):
            raise ValueError(f"scan.landscape needs points ≥ 3, span > 0 and batch > 0 (got {self})")


def directions(model, anchor, hidden, output, v, weights, seed) -> tuple[torch.Tensor, torch.Tensor]:
    v = v.detach().clone().requires_grad_(True)
    loss, _ = row_losses(model, anchor, hidden, output, v, weights)
    (grad,) = torch.autograd.grad(loss.sum(), v)
    d1 = -grad / grad.norm().clamp_min(1e-12)
    d2 = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed)).to(v)
    d2 = d2 - (d2 * d1).sum() * d1
    return d1, d2 / d2.norm().clamp_min(1e-12)


@torch.no_grad()
def grid_losses(model, anchor, hidden, output, v, d1, d2, alphas, weights, batch) -> torch.Tensor:
    """Loss at every grid point [n, n] (row: α, column: β), `batch` grid points per forward."""
    a, b = torch.meshgrid(alphas, alphas, indexing="ij")
    coeffs = torch.stack([a.flatten(), b.flatten()], dim=1).to(v)
    losses = []
    for i in range(0, len(coeffs), batch):
        c = coeffs[i : i + batch]
        vs = v + c[:, 0, None, None] * d1 + c[:, 1, None, None] * d2  # [G, k, D]
        g = len(c)
        loss, _ = row_losses(model, anchor, hidden.expand(g, -1, -1), output.expand(g, -1, -1), vs, weights)
        losses.append(loss)
    return torch.cat(losses).reshape(len(alphas), len(alphas)).cpu()


def hessian_eigenvalues(grid: torch.Tensor, step: float) -> torch.Tensor:
    """Both eigenvalues of the central-difference 2×2 Hessian at every interior grid point, [2·(n−2)²]."""
    f = grid.double()
    fxx = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / step**2
    fyy = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / step**2
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * step**2)
    mid, rad = (fxx + fyy) / 2, torch.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
    return torch.cat([(mid + rad).flatten(), (mid - rad).flatten()])


def landscape(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor, v: torch.Tensor,
    weights: LossWeights, cfg: LandscapeConfig,
) -> dict:
    """The grid, its axes, the Hessian eigenvalues and the positive ratio, for one prompt [1, L, D]."""
    span = cfg.span * v.norm().item() if cfg.relative else cfg.span
    alphas = torch.linspace(-span, span, cfg.points)
    d1, d2 = directions(model, anchor, hidden, output, v, weights, cfg.seed)
    grid = grid_losses(model, anchor, hidden, output, v.detach(), d1, d2, alphas, weights,
                       cfg.batch or model.rows_per_pass)
    eig = hessian_eigenvalues(grid, (alphas[1] - alphas[0]).item())
    return {
        "alphas": alphas,
        "grid": grid,
        "eigenvalues": eig.float(),
        "positive_ratio": (eig > cfg.eig_tol).double().mean().item(),
        "span": span,
    }
