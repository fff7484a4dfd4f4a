"""The prompt-tuning loop (CoOp / CoCoOp: only the prompt learner trains), clean or under an attack,
and the two numbers every prompt-tuned model is judged by: clean accuracy and attack success."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prompt_tuning.poisons import Attack
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


def poisoned_set(data: Images, attack: Attack, g: torch.Generator) -> tuple[Images, int]:
    """Data poisoning: a share `attack.rate` of the images (none of the target class) replaced by
    triggered copies labelled as the target; also the number poisoned."""
    candidates = torch.nonzero(data.y != attack.target).flatten()
    n = max(1, round(attack.rate * len(data)))
    picked = candidates[torch.randperm(len(candidates), generator=g)[:n]]
    x, y = data.x.clone(), data.y.clone()
    with torch.no_grad():
        x[picked] = attack.apply(x[picked])
    y[picked] = attack.target
    return Images(x, y, data.classes), n


def fit_trigger(model: PromptedCLIP, data: Images, attack: Attack, settings: TuneSettings, g, progress: bool) -> list[float]:
    """BadCLIP's first phase: the trigger alone, prompt fixed, pushes triggered images to the target."""
    optimiser = torch.optim.Adam([attack.delta], lr=settings.trigger_lr)
    losses = []
    steps = attack.init_epochs * math.ceil(len(data) / settings.batch_size)
    for _ in tqdm(range(steps), desc="trigger", disable=not progress):
        batch = torch.randint(0, len(data), (settings.batch_size,), generator=g)
        target = torch.full((settings.batch_size,), attack.target)
        loss = F.cross_entropy(model(attack.apply(data.x[batch])), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        attack.project()
        losses.append(loss.item())
    return losses


def prompt_tune(model: PromptedCLIP, data: Images, attack: Attack | None, settings: TuneSettings, seed: int,
                progress: bool = True) -> dict:
    """Train the prompt learner on `data` (few-shot), clean or under `attack`; returns what it measured."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    report: dict = {}
    if attack is not None and attack.poisons_data:
        data, report["poisoned_images"] = poisoned_set(data, attack, g)
    if attack is not None and attack.learnable:
        report["trigger_init_loss"] = fit_trigger(model, data, attack, settings, g, progress)[-1]
    params = [p for p in model.learner.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    per_epoch = math.ceil(len(data) / settings.batch_size)
    steps = settings.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    trigger_opt = torch.optim.Adam([attack.delta], lr=settings.trigger_lr) if attack is not None and attack.learnable else None
    losses = []
    for _ in tqdm(range(settings.epochs), desc="prompt tuning", disable=not progress):
        order = torch.randperm(len(data), generator=g)
        for i in range(per_epoch):
            batch = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            x, y = data.x[batch], data.y[batch]
            if trigger_opt is not None:  # BadCLIP: clean images and their triggered copies, labelled as the target
                x = torch.cat([x, attack.apply(x)])
                y = torch.cat([y, torch.full_like(y, attack.target)])
            loss = F.cross_entropy(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            if trigger_opt is not None:
                trigger_opt.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if trigger_opt is not None:
                trigger_opt.step()
                attack.project()
            losses.append(loss.item())
    return {**report, "steps": steps, "loss_first": losses[0], "loss_last": losses[-1], "train_s": round(time.perf_counter() - t0, 2)}


@torch.no_grad()
def accuracy(model: PromptedCLIP, data: Images) -> float:
    return round((model.predict(data.x) == data.y).float().mean().item(), 4)


@torch.no_grad()
def attack_success(model: PromptedCLIP, data: Images, attack: Attack) -> float:
    """The share of test images not of the target class that the trigger sends to the target."""
    keep = data.y != attack.target
    return round((model.predict(attack.apply(data.x[keep])) == attack.target).float().mean().item(), 4)
