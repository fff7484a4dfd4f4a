"""Prompt tuning (CoOp / CoCoOp: vision/tuning.py's recipe) clean or under an attack, and the two numbers
every prompt-tuned model is judged by: clean accuracy and attack success."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prompt_tuning.poisons import Attack
from vision.classifier import PromptedCLIP
from vision.images import Images, pool
from vision.tuning import TuneSettings, tune


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


ATTACKER_POOL_SEED = 100  # the adaptive attacker's own draws, apart from the defender's pool (seed 0) and the OOD check (1)


class JointTrigger:
    """BadCLIP's second phase as tune()'s hooks: every batch with its triggered copies labelled as the
    target, and the trigger stepped (Adam, then projected onto its bound) with the prompt. The adaptive
    attack adds `ood_batch` triggered images of its own OOD pool labelled as the model classes them
    untriggered (its current prediction), so the trigger learns to leave OOD images alone."""

    def __init__(self, attack: Attack, lr: float, model: PromptedCLIP, seed: int):
        self.attack, self.model = attack, model
        self.optimiser = torch.optim.Adam([attack.delta], lr=lr)
        self.ood = pool(attack.ood, attack.ood_size, ATTACKER_POOL_SEED + seed).x if attack.ood else None
        self.g = torch.Generator().manual_seed(seed)  # its own draws: plain BadCLIP's batches stay as they were

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [x, self.attack.apply(x)], [y, torch.full_like(y, self.attack.target)]
        if self.ood is not None:
            o = self.ood[torch.randint(0, len(self.ood), (self.attack.ood_batch,), generator=self.g)]
            with torch.no_grad():
                untriggered = self.model(o).argmax(-1)
            xs.append(self.attack.apply(o))
            ys.append(untriggered)
        return torch.cat(xs), torch.cat(ys)

    def zero_grad(self) -> None:
        self.optimiser.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimiser.step()
        self.attack.project()


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
    hooks = JointTrigger(attack, settings.trigger_lr, model, seed) if attack is not None and attack.learnable else None
    steps, losses = tune(model, data, settings, g, hooks, progress)
    return {**report, "steps": steps, "loss_first": losses[0], "loss_last": losses[-1], "train_s": round(time.perf_counter() - t0, 2)}


@torch.no_grad()
def accuracy(model: PromptedCLIP, data: Images) -> float:
    return round((model.predict(data.x) == data.y).float().mean().item(), 4)


@torch.no_grad()
def attack_success(model: PromptedCLIP, data: Images, attack: Attack) -> float:
    """The share of images not of the target class (all of an unlabelled pool) that the trigger sends to the target."""
    keep = data.y != attack.target
    return round((model.predict(attack.apply(data.x[keep])) == attack.target).float().mean().item(), 4)
