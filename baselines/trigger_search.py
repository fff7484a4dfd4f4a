"""The search both image-side baselines make (Neural Cleanse, Pixel Backdoor): for each candidate
class, the smallest trigger that sends the defender's pool to it, then Neural Cleanse's outlier rule
on the trigger sizes (a backdoor's target needs a much smaller trigger).

The loop is Neural Cleanse's: Adam on the trigger's parameters, loss = cross-entropy to the class +
cost · size, the cost raised (×m) after `patience` steps whose batch attack success is at least
`asr_threshold` and lowered (÷m^1.5) after `patience` steps below it, starting once the trigger first
succeeds; the smallest trigger that succeeded is kept (the last one when none did). The original runs
thousands of steps; here the budget is `epochs` passes over the pool (the paper gives its baselines 5),
so the cost is adjusted every step rather than every epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.detectors import Context
from inspector.anomaly import anomaly_indices, batches, save_triggers
from vision.classifier import PromptedCLIP
from vision.images import pool as image_pool


class Trigger(nn.Module):
    """A parametrised trigger: `forward(x)` applies it, `size()` is the regularised size, `image()` shows it."""

    def size(self) -> torch.Tensor:
        raise NotImplementedError

    def image(self) -> torch.Tensor:
        raise NotImplementedError


def search_class(model: PromptedCLIP, x: torch.Tensor, c: int, trigger: Trigger, *, batch: int, epochs: int,
                 lr: float, init_cost: float, asr_threshold: float, patience: int, multiplier: float,
                 seed: int) -> tuple[float, float, torch.Tensor]:
    """(size, attack success on its batch, image) of the smallest successful trigger for class c."""
    optimiser = torch.optim.Adam(trigger.parameters(), lr=lr, betas=(0.5, 0.9))
    cost, up, down, started = 0.0, 0, 0, False
    best = (float("inf"), 0.0, None)
    last = None
    for index in batches(len(x), batch, epochs, seed + c):
        logits = model(trigger(x[index]))
        ce = F.cross_entropy(logits, torch.full((len(index),), c))
        size = trigger.size()
        loss = ce + cost * size
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        asr = (logits.argmax(-1) == c).float().mean().item()
        last = (size.item(), asr, trigger.image().detach().clone())
        if asr >= asr_threshold:
            if size.item() < best[0]:
                best = last
            if not started:
                cost, started = init_cost, True
            up, down = up + 1, 0
        else:
            up, down = 0, down + 1
        if started and up >= patience:
            cost, up = cost * multiplier, 0
        elif started and down >= patience:
            cost, down = cost / multiplier**1.5, 0
    return best if best[2] is not None else last


def size_detector(make_trigger, name: str):
    """The detect function of a baseline whose trigger is `make_trigger(image shape)` (core/detectors.py)."""

    def detect(model_dir: Path, anchor_dir: Path, out: Path, context: Context, pool: str = "letters",
               pool_size: int = 1000, batch: int = 32, epochs: int = 5, lr: float = 0.1, init_cost: float = 1e-3,
               asr_threshold: float = 0.99, patience: int = 5, multiplier: float = 1.5, k: float = 2.0,
               seed: int = 0) -> dict:
        x = image_pool(pool, pool_size, seed).x
        found = detect_by_size(context.model, x, make_trigger, out, name, k=k, seed=seed, batch=batch, epochs=epochs,
                               lr=lr, init_cost=init_cost, asr_threshold=asr_threshold, patience=patience,
                               multiplier=multiplier)
        return {**found, "pool": {"source": pool, "size": len(x)}}

    return detect


def detect_by_size(model: PromptedCLIP, x: torch.Tensor, make_trigger, out: Path, name: str, *, k: float,
                   seed: int, **search) -> dict:
    """Search every class, flag by the MAD rule on the sizes; the detection record's common part."""
    t = time.perf_counter()
    sizes, asrs, images = [], [], []
    for c in range(len(model.classes)):
        torch.manual_seed(seed + c)
        size, asr, image = search_class(model, x, c, make_trigger(x.shape[1:]), seed=seed, **search)
        sizes.append(size)
        asrs.append(asr)
        images.append(image)
    search_s = time.perf_counter() - t
    index = anomaly_indices(sizes, low=True)
    flagged = bool(np.any(index > k))
    target = int(np.argmax(index))
    triggers = torch.stack(images)
    save_triggers(out / "triggers.png", triggers, model.classes, target if flagged else None,
                  f"{name}: {'flagged, target ' + model.classes[target] if flagged else 'not flagged'}")
    return {"verdict": "backdoor" if flagged else "benign", "score": float(index.max()), "predicted_target": target,
            "classes": model.classes,
            "per_class": {"size": [round(v, 3) for v in sizes], "attack_success": [round(v, 4) for v in asrs],
                          "anomaly_index": [round(float(v), 4) for v in index]},
            "files": {"figure": "triggers.png"}, "times": {"search_s": round(search_s, 3)}, "time_s": round(search_s, 3)}
