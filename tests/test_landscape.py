"""The landscape filter's numerics: float64 grids and differences, on exact functions and micro encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amdet.inversion import LossWeights
from amdet.landscape import LandscapeConfig, in_dtype, landscape, surface
from tests.helpers import PROMPTS

PAPER = LandscapeConfig()  # ±10 at 50 points: step 0.41, where float32 second differences are noise


class Bowl(nn.Module):
    """c·|v − centre|² + offset: its Hessian in every plane is 2c·I, so every eigenvalue is 2c."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c = nn.Parameter(torch.tensor(0.3))
        self.centre = nn.Parameter(torch.randn(1, dim, generator=g))
        self.offset = nn.Parameter(torch.tensor(-0.8))

    def forward(self, vs: torch.Tensor) -> torch.Tensor:
        return self.c * (vs - self.centre).pow(2).sum(dim=(-2, -1)) + self.offset


class Plane(nn.Module):
    """b·v + offset, of the inversion loss's size (|f| ≲ 2 on the paper's grid): every eigenvalue is 0."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.b = nn.Parameter(torch.randn(1, dim, generator=g) * 0.01)
        self.offset = nn.Parameter(torch.tensor(-0.8))

    def forward(self, vs: torch.Tensor) -> torch.Tensor:
        return (vs * self.b).sum(dim=(-2, -1)) + self.offset


def v_of(dim: int = 128, seed: int = 7) -> torch.Tensor:
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed))


def test_a_bowl_is_all_positive_with_its_exact_curvature():
    bowl = Bowl(128, seed=0)
    assert all(p.dtype == torch.float32 for p in bowl.parameters()), "float32 weights, as a real model's"
    land = surface(bowl, v_of(), PAPER, batch=64)
    assert land["dtype"] == "float64" and land["grid"].dtype == land["eigenvalues"].dtype == torch.float64
    assert land["positive_ratio"] == 1.0
    exact = 2 * bowl.c.double().item()  # of the float32 weight: 0.6000000238…
    assert (land["eigenvalues"] - exact).abs().max() < 1e-9
    rough = surface(bowl, v_of(), PAPER, batch=64, dtype=torch.float32)
    assert rough["positive_ratio"] == 1.0 and (rough["eigenvalues"] - exact).abs().max() > 1e-5, \
        "float32 losses of ~100 leave ~1e-4 of noise in the eigenvalues (harmless against 0.6)"


def test_a_plane_is_flat_in_float64_and_noise_in_float32():
    plane = Plane(128, seed=0)
    land = surface(plane, v_of(), PAPER, batch=64)
    assert land["positive_ratio"] == 0.0
    assert land["eigenvalues"].abs().max() < 1e-12, "a plane has no curvature"
    rough = surface(plane, v_of(), PAPER, batch=64, dtype=torch.float32)
    assert rough["dtype"] == "float32" and rough["grid"].dtype == torch.float32
    assert rough["eigenvalues"].abs().max() > PAPER.eig_tol and rough["positive_ratio"] > 0, \
        "float32 rounding of |f| ~ 1, over h² = 0.17, crosses eig_tol = 1e-6: eigenvalue signs of noise"


def test_the_grid_is_the_loss_at_each_point():
    """Row α, column β: f(v + α·d1 + β·d2), checked at two corners against d1 = −∇f/|∇f|."""
    plane = Plane(16, seed=1)
    v = v_of(16)
    cfg = LandscapeConfig(points=5, span=2.0)
    land = surface(plane, v, cfg, batch=3)
    b = plane.b.double()
    d1 = -b / b.norm()  # the gradient of b·v is b
    f = lambda x: (x * b).sum().item() + plane.offset.double().item()  # noqa: E731
    assert land["grid"][0, 2].item() == pytest.approx(f(v.double() - 2 * d1), abs=1e-13)
    assert land["grid"][4, 2].item() == pytest.approx(f(v.double() + 2 * d1), abs=1e-13)


@pytest.mark.parametrize("family", ["clip", "siglip"])  # causal and bidirectional (LongCLIP: a longer CLIP)
def test_micro_landscape_is_float64_deterministic_and_leaves_the_model_alone(micro_encoder):
    h = micro_encoder.embed(micro_encoder.tokenize(PROMPTS[:1]))
    out = micro_encoder.encode(h)
    v = torch.randn(1, h.shape[-1], generator=torch.Generator().manual_seed(0))
    before = {k: t.clone() for k, t in micro_encoder.state_dict().items()}
    cfg = LandscapeConfig(points=6, span=3.0, batch=5)
    for anchor in (micro_encoder, in_dtype(micro_encoder, torch.float32)):  # the model itself, and a separate one
        first = landscape(micro_encoder, anchor, h, out, v, LossWeights(), cfg)
        second = landscape(micro_encoder, anchor, h, out, v, LossWeights(), cfg)
        assert first["dtype"] == "float64" and first["grid"].dtype == first["alphas"].dtype == torch.float64
        assert torch.equal(first["grid"], second["grid"]) and torch.equal(first["eigenvalues"], second["eigenvalues"])
        assert first["positive_ratio"] == second["positive_ratio"]
        # evaluated in float64, not a float32 grid cast up: hardly any loss is a float32 number
        assert (first["grid"].float().double() != first["grid"]).double().mean() > 0.9
    rough = landscape(micro_encoder, anchor, h, out, v, LossWeights(), cfg, dtype=torch.float32)
    assert torch.allclose(rough["grid"].double(), first["grid"], rtol=0, atol=1e-5), "the same surface"
    after = micro_encoder.state_dict()
    assert all(after[k].dtype == t.dtype and torch.equal(after[k], t) for k, t in before.items()), \
        "the float64 copy is the landscape's own: the model keeps its float32 weights"


def test_the_float64_copy_keeps_shared_modules_shared(micro_encoder):
    copy64 = in_dtype(micro_encoder, torch.float64)
    assert {p.dtype for p in copy64.parameters()} == {torch.float64}
    assert {p.dtype for p in micro_encoder.parameters()} == {torch.float32}
    assert copy64.tokenizer is micro_encoder.tokenizer, "never tokenizes: shared, not copied"
    hf = copy64.model if micro_encoder.family.name == "siglip" else copy64.model.text_model
    assert copy64.text is hf, "TextEncoder.text stays the copied model's own text half"
