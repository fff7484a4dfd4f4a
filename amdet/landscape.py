"""The natural-backdoor filter: the loss landscape around the inverted v and its Hessian spectrum.

d1 = −∇_v Loss on one test prompt (normalised), d2 a random direction orthogonal to it; the loss
is evaluated on the grid v + α·d1 + β·d2 (α, β in [−span, span]), in batches of grid points. At
every interior point the 2×2 Hessian comes from central differences; its eigenvalues are computed
in closed form for all points at once. An injected backdoor sits in a convex bowl (most
eigenvalues positive); natural backdoor features of benign models give saddle-like surfaces.

All of it runs in float64, whatever the model's dtype: a second difference divides rounding noise
by h² (paper: step 0.41 at 50 points), and float32 losses leave up to 4e-6 of noise in the
eigenvalues of a tiny-clip, above eig_tol = 1e-6: on flat regions their signs would be noise (a
tiny-clip's are ~1e-3, so none flipped there: benchmarks/landscape.py). The landscape runs on a
float64 copy of the model and anchor, made per landscape and dropped after it (about 2× the
float32 time on CPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from amdet.inversion import LossWeights, row_losses
from core.encoders import TextEncoder
from core.precision import full_precision

LossFn = Callable[[torch.Tensor], torch.Tensor]  # one v per row, [G, k, D] → the loss of each, [G]


@dataclass(frozen=True)
class LandscapeConfig:
    points: int = 50  # grid points per axis
    span: float = 10.0  # half-width of the grid
    relative: bool = False  # span × |v| instead of an absolute span
    eig_tol: float = 1e-6  # eigenvalues above this count as positive
    batch: int | None = None  # grid points per forward pass; None: the model's rows_per_pass
    seed: int = 0  # the random second direction
    undecided: bool = True  # also where a regime ended undecided: for the record, no verdict depends on it

    def __post_init__(self):
        if self.points < 3 or self.span <= 0 or (self.batch is not None and self.batch <= 0):
            raise ValueError(f"scan.landscape needs points ≥ 3, span > 0 and batch > 0 (got {self})")


class PromptLoss(nn.Module):
    """The inversion loss of one prompt as a function of v, one v per row: [G, k, D] → [G]. The
    prompt's features are buffers, so that they are cast with the weights."""

    def __init__(self, model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor,
                 weights: LossWeights):
        super().__init__()
        self.model, self.anchor, self.weights = model, anchor, weights
        self.register_buffer("hidden", hidden)  # h(x) [1, L, D]
        self.register_buffer("output", output)  # f(x) [1, L, D]

    def forward(self, vs: torch.Tensor) -> torch.Tensor:
        g = len(vs)
        loss, _ = row_losses(self.model, self.anchor, self.hidden.expand(g, -1, -1), self.output.expand(g, -1, -1),
                             vs, self.weights)
        return loss


def in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` with its floating-point weights and buffers in `dtype`; `module` itself is
    untouched. Each tensor is cast once, straight into the copy (seeded in deepcopy's memo, which
    also keeps shared modules shared: an anchor that is the model itself, TextEncoder.text), and
    tokenizers are shared, not copied. (torch.func.functional_call cannot do this: it leaves the
    cast weights in a module reachable by two paths, as TextEncoder.text is.)"""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    memo = {id(t): nn.Parameter(t.detach().to(dtype), requires_grad=False) if isinstance(t, nn.Parameter)
            else t.detach().to(dtype) for t in tensors}
    memo.update({id(e.tokenizer): e.tokenizer for e in module.modules() if isinstance(e, TextEncoder)})
    return copy.deepcopy(module, memo)


def directions(loss: LossFn, v: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d1 = −∇loss(v) and a seeded random d2 ⟂ d1, both unit, in v's dtype."""
    v = v.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(v.unsqueeze(0)).sum(), v)
    d1 = -grad / grad.norm().clamp_min(1e-12)
    # drawn in float32 whatever the dtype: the same seed gives the same direction in every dtype
    d2 = torch.randn(v.shape, generator=torch.Generator().manual_seed(seed)).to(v)
    d2 = d2 - (d2 * d1).sum() * d1
    return d1, d2 / d2.norm().clamp_min(1e-12)


@torch.no_grad()
def loss_grid(loss: LossFn, v: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, alphas: torch.Tensor,
              batch: int) -> torch.Tensor:
    """loss(v + α·d1 + β·d2) at every grid point [n, n] (row: α, column: β), `batch` points per call."""
    a, b = torch.meshgrid(alphas, alphas, indexing="ij")
    coeffs = torch.stack([a.flatten(), b.flatten()], dim=1).to(v)
    losses = [loss(v + c[:, 0, None, None] * d1 + c[:, 1, None, None] * d2)  # [G, k, D] → [G]
              for c in coeffs.split(batch)]
    return torch.cat(losses).reshape(len(alphas), len(alphas)).cpu()


def grid_losses(model, anchor, hidden, output, v, d1, d2, alphas, weights, batch) -> torch.Tensor:
    """The inversion loss of one prompt on the grid, evaluated in the dtype of `alphas`."""
    loss = in_dtype(PromptLoss(model, anchor, hidden, output, weights), alphas.dtype)
    return loss_grid(loss, *(t.to(alphas.dtype) for t in (v, d1, d2)), alphas, batch)


def hessian_eigenvalues(grid: torch.Tensor, step: float) -> torch.Tensor:
    """Both eigenvalues of the central-difference 2×2 Hessian at every interior grid point, [2·(n−2)²]."""
    f = grid.double()
    fxx = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / step**2
    fyy = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / step**2
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * step**2)
    mid, rad = (fxx + fyy) / 2, torch.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
    return torch.cat([(mid + rad).flatten(), (mid - rad).flatten()])


def surface(loss: nn.Module, v: torch.Tensor, cfg: LandscapeConfig, batch: int,
            dtype: torch.dtype = torch.float64) -> dict:
    """The landscape of any loss module ([G, k, D] → [G]) around v [k, D]: directions and grid
    evaluated in `dtype` (float32: the grid as the model computes it, only differenced in double)."""
    loss = in_dtype(loss, dtype)
    v = v.detach().to(dtype)
    span = cfg.span * v.norm().item() if cfg.relative else cfg.span
    alphas = torch.linspace(-span, span, cfg.points, dtype=dtype)
    d1, d2 = directions(loss, v, cfg.seed)
    grid = loss_grid(loss, v, d1, d2, alphas, batch)
    eig = hessian_eigenvalues(grid, (alphas[1] - alphas[0]).item())
    return {
        "alphas": alphas,
        "grid": grid,
        "eigenvalues": eig,
        "positive_ratio": (eig > cfg.eig_tol).double().mean().item(),
        "span": span,
        "dtype": str(dtype).removeprefix("torch."),
    }


def landscape(
    model: TextEncoder, anchor: TextEncoder, hidden: torch.Tensor, output: torch.Tensor, v: torch.Tensor,
    weights: LossWeights, cfg: LandscapeConfig, dtype: torch.dtype = torch.float64,
) -> dict:
    """The grid, its axes, the Hessian eigenvalues and the positive ratio, for one prompt [1, L, D]."""
    with full_precision():  # float64 whatever the run's precision (a bf16 autocast would undo it)
        return surface(PromptLoss(model, anchor, hidden, output, weights), v, cfg, cfg.batch or model.rows_per_pass, dtype)
