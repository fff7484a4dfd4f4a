"""Baseline for prompt-tuned CLIP: Pixel Backdoor (Tao et al., ICML 2022, "Better trigger inversion
optimization in backdoor scanning"), adapted: per class a positive and a negative pixel pattern
(x' = clip(x + p⁺ − p⁻), each through tanh into [0, 1]) that send the defender's pool to the class
while changing as few pixels as possible (size: Σ tanh(|p⁺ − p⁻| / 0.1), a smooth pixel count);
flagged when a class needs far fewer pixels than the rest (MAD anomaly index > k)."""

from __future__ import annotations

import torch
from torch import nn

from baselines.trigger_search import Trigger, size_detector

PIXEL_SCALE = 0.1  # a change of this size counts as about one pixel (tanh(1) ≈ 0.76)


class SignedPixels(Trigger):
    def __init__(self, shape):
        super().__init__()
        self.positive = nn.Parameter(torch.full((1, *shape), -2.0) + 0.1 * torch.randn(1, *shape))
        self.negative = nn.Parameter(torch.full((1, *shape), -2.0) + 0.1 * torch.randn(1, *shape))

    def delta(self) -> torch.Tensor:
        return (torch.tanh(self.positive) + 1) / 2 - (torch.tanh(self.negative) + 1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta()).clamp(0, 1)

    def size(self) -> torch.Tensor:
        return torch.tanh(self.delta().abs() / PIXEL_SCALE).sum()

    def image(self) -> torch.Tensor:
        return self.delta()[0]


detect = size_detector(SignedPixels, "Pixel Backdoor")
