"""Sim, the fidelity of the reversed feature: mean cos(f(x ⊕ v), f(x ⊕ t)) over benign prompts x.

An evaluation metric, not part of the detector: it needs the real trigger t, which only the model
store's manifest knows. The harness computes it after the scan has decided. Features are compared
as the attacks compare them: the full last_hidden_state, flattened.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from amdet.inversion import insert
from attacks.triggers import Trigger
from core.encoders import TextEncoder


@torch.no_grad()
def reversed_similarity(model: TextEncoder, v: torch.Tensor, trigger: Trigger, prompts: list[str], seed: int = 0,
                        batch: int = 100) -> float | None:
    """Mean over the prompts that can carry `trigger` (None when none can)."""
    rng = random.Random(seed)  # a random insertion point, when the trigger has one, is drawn per prompt
    usable = [p for p in prompts if trigger.can_poison(p) and not trigger.occurs_in(p)]
    if not usable:
        return None
    sims = []
    for i in range(0, len(usable), batch):
        clean = usable[i : i + batch]
        with_v = model.encode(insert(model.embed(model.tokenize(clean)), v.to(model.device), model.insert_position))
        with_t = model.encode(model.embed(model.tokenize([trigger.poison(p, rng) for p in clean])))
        sims.append(F.cosine_similarity(with_v.flatten(1), with_t.flatten(1), dim=1))
    return torch.cat(sims).mean().item()


def trigger_similarities(model: TextEncoder, v: torch.Tensor, backdoors: list[dict], prompts: list[str], seed: int = 0) -> list[float | None]:
    """Sim for each backdoor of a manifest (`backdoors[i]["trigger"]` is a Trigger's dict)."""
    return [reversed_similarity(model, v, Trigger(**b["trigger"]), prompts, seed) for b in backdoors]
