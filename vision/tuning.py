"""CoOp's public prompt-tuning recipe (only the prompt learner trains: SGD with momentum, cosine schedule,
shuffled mini-batches): what a provider runs (prompt_tuning/train.py adds its attacks through `hooks`) and
what a defender runs for clean reference classifiers (inspector/reference.py). It knows no attack."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from core.settings import from_config
from vision.classifier import PromptedCLIP
from vision.images import Images


@dataclass(frozen=True)
class TuneSettings:
    """The `prompt_tuning` block: CoOp's recipe (SGD, cosine schedule), sized for the tiny world."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    trigger_lr: float = 0.02  # BadCLIP: Adam step of the trigger, in pixel units


def tune_settings(cfg: DictConfig) -> TuneSettings:
    """The recipe of `cfg.prompt_tuning` (one line for a bad value)."""
    node = {k: v for k, v in OmegaConf.to_container(cfg.prompt_tuning, resolve=True).items()
            if k in TuneSettings.__dataclass_fields__}
    return from_config(TuneSettings, node, "prompt_tuning")


class StepHooks(Protocol):
    """What a training scheme adds to each step (BadCLIP: triggered copies and the trigger's own step)."""

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def zero_grad(self) -> None: ...
    def step(self) -> None: ...


def tune(model: PromptedCLIP, data: Images, settings: TuneSettings, g: torch.Generator, hooks: StepHooks | None = None,
         progress: bool = False) -> tuple[int, list[float]]:
    """Train `model`'s prompt learner on `data` with cross-entropy; (steps, the loss of every step)."""
    params = [p for p in model.learner.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    per_epoch = math.ceil(len(data) / settings.batch_size)
    steps = settings.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses = []
    for _ in tqdm(range(settings.epochs), desc="prompt tuning", disable=not progress):
        order = torch.randperm(len(data), generator=g)
        for i in range(per_epoch):
            batch = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            x, y = data.x[batch], data.y[batch]
            if hooks is not None:
                x, y = hooks.batch(x, y)
            loss = F.cross_entropy(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            if hooks is not None:
                hooks.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if hooks is not None:
                hooks.step()
            losses.append(loss.item())
    return steps, losses
