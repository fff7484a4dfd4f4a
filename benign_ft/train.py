"""Contrastive fine-tuning of a text encoder against a frozen image side (the paper's benign models).

CLIP-family encoders use the symmetric InfoNCE loss, SigLIP the pairwise sigmoid loss, both with
the checkpoint's own (frozen) temperature and bias. `on_checkpoint(step, loss)` is called every
`checkpoint_every` steps; the caller decides what to save.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from benign_ft.pairs import PairSet
from core.contrastive import contrastive_loss
from core.encoders import TextEncoder
from core.snapshot import Snapshots, restore_rng, rng_state
from core.training import OPTIMIZERS, Cycler


@dataclass(frozen=True)
class BenignHParams:
    """Optimisation of benign fine-tuning (`training.benign` in the config)."""

    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 16
    logit_scale: float = 3.0  # tiny encoders only: real ones use their checkpoint's temperature
    logit_bias: float = -10.0  # tiny SigLIP only

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; set training.benign.optimizer to one of {', '.join(OPTIMIZERS)}")
        for key in ("lr", "batch_size"):
            if not getattr(self, key) > 0:
                raise ValueError(f"training.benign.{key} must be positive, got {getattr(self, key)}")


def finetune(
    model: TextEncoder,
    pairs: PairSet,
    hp: BenignHParams,
    steps: int,
    checkpoint_every: int,
    on_checkpoint: Callable[[int, float], None],
    seed: int = 0,
    progress: bool = True,
    snapshots: Snapshots | None = None,
    save_at_end: bool = False,
) -> list[float]:
    """Train `model` in place for `steps` steps; returns the loss per step. With `snapshots`, a
    restarted run continues from the last saved step and ends with the same model; `save_at_end`
    also saves the last state there, so that a later job continues the run beyond `steps`."""
    snapshots = snapshots or Snapshots(None)
    if len(pairs.captions) < 2:
        raise ValueError("contrastive fine-tuning needs at least 2 image-caption pairs")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # the data order
    batches = Cycler(list(range(len(pairs.captions))), min(hp.batch_size, len(pairs.captions)), gen)
    kind = "sigmoid" if model.family.name == "siglip" else "softmax"
    scale, bias = pairs.logit_scale.to(model.device), pairs.logit_bias
    bias = None if bias is None else bias.to(model.device)
    images = pairs.images.to(model.device)
    params = list(model.model.parameters())
    model.model.train().requires_grad_(True)
    opt = OPTIMIZERS[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay)
    history = []
    if saved := snapshots.load():
        history = saved["history"]
        model.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        batches.restore(saved["batches"])
        restore_rng(saved["rng"], gen)

    def state() -> dict:
        return {"step": len(history), "history": history, "model": model.model.state_dict(),
                "optimizer": opt.state_dict(), "batches": batches.state(), "rng": rng_state(gen)}

    start = len(history)
    bar = tqdm(range(start + 1, steps + 1), desc=f"benign {model.family.name}", disable=not progress, leave=False,
               initial=start, total=steps)
    for step in bar:
        idx = batches.next()
        ids = model.tokenize([pairs.captions[i] for i in idx])
        loss = contrastive_loss(model.text_embeds(ids), images[idx], scale, bias, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())  # the step's one host sync
        if not math.isfinite(history[-1]):  # the weights are spoilt too: the run ends here
            raise FloatingPointError(f"benign fine-tuning loss became {history[-1]} at step {step}; lower training.benign.lr")
        bar.set_postfix(loss=f"{history[-1]:.3f}")
        if step % checkpoint_every == 0:
            model.model.eval()
            on_checkpoint(step, history[-1])
            model.model.train()
        snapshots.maybe_save(state)
    if save_at_end and snapshots.path is not None:
        snapshots.save(state())
    model.model.eval().requires_grad_(False)
    return history
