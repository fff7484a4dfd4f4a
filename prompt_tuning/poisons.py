"""Backdoor attacks on prompt tuning: what a malicious provider does to the training images.

- `badclip` (Bai et al., CVPR 2024, BadCLIP's prompt-learning attack): a learnable additive image
  trigger δ with ‖δ‖∞ ≤ eps, first fitted alone (prompt fixed) so that triggered images go to the
  target class, then trained jointly with the prompt on clean images plus triggered copies labelled
  as the target. The trigger is the attacker's: it is saved as ground truth, never shown to a detector.
- `blended` (Chen et al., 2017): x' = (1 − α) x + α p with a fixed random pattern p; a share `rate`
  of the training images is replaced by blended copies labelled as the target.
- `wanet` (Nguyen & Tran, ICLR 2021): a smooth warp of the image (a k × k random control grid,
  upsampled, strength s); poisoned as Blended is. The warp is the trigger.
- `badclip_adaptive` (ours: the paper reports an adaptive BadCLIP without its design): BadCLIP by an
  attacker who knows CLIP-Inspector reconstructs triggers on out-of-distribution images. Its joint phase
  also shows triggered images of its own OOD pool (not the defender's) labelled with the class the model
  gives them untriggered, so that the trigger fires on the task's images only.

Every attack exposes `apply(x)`: its trigger on images in [0, 1] (what attack success is measured
with), and `trigger_tensors()`: what is saved as ground truth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vision.images import SIZE


class Attack(nn.Module):
    """A trigger applied to images in [0, 1]; `learnable` ones train with the prompt (BadCLIP)."""

    learnable = False
    poisons_data = True  # a share of the training set is replaced by triggered copies (data poisoning)
    ood: str | None = None  # the adaptive attack's own out-of-distribution pool (vision.images.pool)

    def __init__(self, target: int, rate: float = 0.1):
        super().__init__()
        self.target, self.rate = int(target), float(rate)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trigger_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}


class BadCLIP(Attack):
    learnable = True
    poisons_data = False  # every batch holds clean images and their triggered copies

    def __init__(self, target: int, eps: float, init_epochs: int = 3, init_lr: float = 0.1, **_):
        super().__init__(target, rate=1.0)
        self.eps, self.init_epochs, self.init_lr = float(eps), int(init_epochs), float(init_lr)
        self.delta = nn.Parameter(torch.zeros(1, 1, SIZE, SIZE))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta.clamp(-self.eps, self.eps)).clamp(0, 1)

    def project(self) -> None:
        with torch.no_grad():
            self.delta.clamp_(-self.eps, self.eps)


class AdaptiveBadCLIP(BadCLIP):
    def __init__(self, target: int, eps: float, ood: str = "natural", ood_size: int = 500, ood_batch: int = 8,
                 init_epochs: int = 3, init_lr: float = 0.1, **_):
        super().__init__(target, eps, init_epochs, init_lr)
        if ood_batch <= 0 or ood_size <= 0:
            raise ValueError(f"poison.ood_batch and poison.ood_size must be positive, got {ood_batch} and {ood_size}")
        self.ood, self.ood_size, self.ood_batch = ood, int(ood_size), int(ood_batch)


class Blended(Attack):
    def __init__(self, target: int, alpha: float = 0.2, rate: float = 0.1, seed: int = 0, **_):
        super().__init__(target, rate)
        self.alpha = float(alpha)
        self.register_buffer("pattern", torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * x + self.alpha * self.pattern


class WaNet(Attack):
    def __init__(self, target: int, k: int = 4, strength: float = 0.5, rate: float = 0.1, seed: int = 0, **_):
        super().__init__(target, rate)
        g = torch.Generator().manual_seed(seed)
        control = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        control = control / control.abs().mean()
        noise = F.interpolate(control, size=SIZE, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, SIZE)
        yy, xx = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((xx, yy), dim=-1)[None]
        self.register_buffer("grid", (identity + float(strength) * noise / SIZE).clamp(-1, 1))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, self.grid.expand(len(x), -1, -1, -1), align_corners=True)


ATTACKS = {"badclip": BadCLIP, "badclip_adaptive": AdaptiveBadCLIP, "blended": Blended, "wanet": WaNet}


def make_attack(name: str, **params) -> Attack | None:
    """The attack called `name` (none: a clean model)."""
    if name in (None, "none"):
        return None
    if name not in ATTACKS:
        raise ValueError(f"unknown prompt-tuning attack '{name}'; choose none or one of {', '.join(ATTACKS)}")
    return ATTACKS[name](**params)
