"""How far a fine-tuned encoder moved from its base: two one-line statistics.

They are the benchmark's difficulty floor: if either alone told backdoored from benign models,
the benchmark would measure nothing that a detector adds (analyze/ reports their AUROC beside it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.encoders import TextEncoder


@torch.no_grad()
def weight_distance(model: TextEncoder, anchor: TextEncoder) -> float:
    """Relative distance ‖θ − θ0‖ / ‖θ0‖ over every parameter the two encoders share by name."""
    base = dict(anchor.model.named_parameters())
    diff = norm = 0.0
    for name, p in model.model.named_parameters():
        if name not in base or base[name].shape != p.shape:
            raise ValueError(f"model and anchor differ in parameter {name}; compare a model with the base it was fine-tuned from")
        p0 = base[name].double()
        diff += (p.double() - p0).pow(2).sum().item()
        norm += p0.pow(2).sum().item()
    return (diff / norm) ** 0.5


@torch.no_grad()
def output_cosines(model: TextEncoder, anchor: TextEncoder, prompts: list[str]) -> torch.Tensor:
    """Per prompt: cosine of the flattened last_hidden_state f(x) and f0(x) [N]."""
    out = []
    for i in range(0, len(prompts), model.rows_per_pass):
        ids = model.tokenize(prompts[i : i + model.rows_per_pass])
        out.append(F.cosine_similarity(model(ids).flatten(1), anchor(ids).flatten(1), dim=-1))
    return torch.cat(out)


def drift(model: TextEncoder, anchor: TextEncoder, prompts: list[str]) -> dict:
    """Both statistics: weight distance, and clean-output drift 1 − mean cos(f(x), f0(x)) on `prompts`."""
    return {"weight_distance": weight_distance(model, anchor),
            "output_drift": 1.0 - output_cosines(model, anchor, prompts).mean().item(), "prompts": len(prompts)}
