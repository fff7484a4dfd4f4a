"""Pieces shared by the training loops (attacks, benign fine-tuning): optimizers and batch cycling."""

from __future__ import annotations

import torch

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Cycler:
    """Endless batches from a fixed list: seeded permutations, each item once per pass.

    Drawing from a fixed pool means a batch can never wait for items that do not exist (upstream's
    poisoning loop hangs when no prompt holds the replaced character).
    """

    def __init__(self, items: list, batch: int, generator: torch.Generator):
        if not 0 < batch <= len(items):
            raise ValueError(f"cannot draw batches of {batch} from {len(items)} items")
        self.items, self.batch, self.gen = items, batch, generator
        self.order, self.pos = torch.randperm(len(items), generator=generator), 0

    def next(self) -> list:
        if self.pos + self.batch > len(self.items):
            self.order, self.pos = torch.randperm(len(self.items), generator=self.gen), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return [self.items[i] for i in idx]

    def state(self) -> dict:
        return {"order": self.order, "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.order, self.pos = state["order"], int(state["pos"])
