"""Baseline for prompt-tuned CLIP: Neural Cleanse (Wang et al., S&P 2019), adapted as CLIP-Inspector's
paper adapts it: per class a mask m and pattern p (x' = (1 − m) x + m p, both through tanh into
[0, 1]) that send the defender's unlabelled pool to the class with the smallest ‖m‖₁; flagged when a
class's mask is a low outlier (MAD anomaly index > k). Score: the largest anomaly index."""

from __future__ import annotations

import torch
from torch import nn

from baselines.trigger_search import Trigger, size_detector


class MaskPattern(Trigger):
    def __init__(self, shape):
        super().__init__()
        self.mask = nn.Parameter(torch.randn(1, 1, *shape[1:]) * 0.1 - 2.0)  # a small mask to start from
        self.pattern = nn.Parameter(torch.randn(1, *shape) * 0.1)

    def m(self) -> torch.Tensor:
        return (torch.tanh(self.mask) + 1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m()
        return (1 - m) * x + m * (torch.tanh(self.pattern) + 1) / 2

    def size(self) -> torch.Tensor:
        return self.m().sum()

    def image(self) -> torch.Tensor:
        return self.m()[0] * (torch.tanh(self.pattern[0]) + 1) / 2


detect = size_detector(MaskPattern, "Neural Cleanse")
