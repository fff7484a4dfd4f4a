"""Mid-loop snapshots: a long loop (attack training, benign fine-tuning, AMDET inversion) that is
preempted or hits its time limit resumes where it was instead of from step zero.

A loop saves its whole state — weights or v, optimizer, schedule, data order, random generators,
history — to one file every `every_s` seconds (`snapshots.every_s`), atomically; a restarted loop
loads it and continues, reaching the same result as an uninterrupted run. Snapshots are our own
files, read back with `torch.load(weights_only=True)`; the loop's owner deletes them once its
output is stored.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from core.provenance import config_hash
from core.store import atomic_write

log = logging.getLogger("amdet")


def check_every_s(every_s: float) -> float:
    if every_s < 0:
        raise ValueError(f"snapshots.every_s must be ≥ 0 (0 = after every step), got {every_s}")
    return every_s


class Snapshots:
    """One loop's snapshot file. `Snapshots(None)` is the switched-off kind: it never saves or loads.
    `key` names the settings the state belongs to: a snapshot saved under other settings is ignored."""

    def __init__(self, path: str | Path | None, every_s: float = 300.0, key: str = ""):
        self.path = Path(path) if path else None
        self.every_s, self.key = check_every_s(every_s), key
        self.last = time.monotonic()
        self.resumed_from: int | None = None  # the step a restarted loop continued from

    def load(self) -> dict | None:
        """The saved state (its "step" says where it was), or None to start from zero."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — a snapshot is a shortcut; without it the loop starts over
            log.warning("ignoring unreadable snapshot %s (%s); starting from step 0", self.path, exc)
            return None
        if state.get("key") != self.key:
            log.warning("ignoring snapshot %s: saved under other settings; starting from step 0", self.path)
            return None
        self.resumed_from = int(state["step"])
        log.info("resuming from the snapshot at step %d: %s", self.resumed_from, self.path)
        return state

    def maybe_save(self, state: Callable[[], dict]) -> None:
        """Save `state()` when `every_s` seconds have passed since the last save (or the start)."""
        if self.path is not None and time.monotonic() - self.last >= self.every_s:
            self.save(state())

    def save(self, state: dict) -> None:
        with atomic_write(self.path) as tmp:
            torch.save({**state, "key": self.key}, tmp)
        self.last = time.monotonic()

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# what may change between a run and its resumption: how it is shown, where it computes, and the job
# block (where it writes; a standalone job's run dir is a timestamp)
VOLATILE = ("snapshots", "progress", "wandb", "threads", "device", "job")


def snapshots_for(cfg, phase: str) -> Snapshots:
    """The snapshots of one phase of a job (`snapshots.dir`/<phase>.pt), keyed by the job's settings,
    or switched off when the job has no snapshot dir (standalone jobs; a sweep's cell sets it)."""
    s = cfg.get("snapshots") or {}
    directory = s.get("dir")
    if not directory:
        return Snapshots(None)
    settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in VOLATILE}
    return Snapshots(Path(directory) / f"{phase}.pt", float(s.get("every_s", 300.0)), key=config_hash(settings))


def rng_state(gen: torch.Generator | None = None, py: random.Random | None = None) -> dict:
    """The random state a loop draws from: torch's global generator, its own, Python's."""
    state = {"torch": torch.get_rng_state()}
    if gen is not None:
        state["gen"] = gen.get_state()
    if py is not None:
        version, internal, gauss = py.getstate()
        state["py"] = [version, list(internal), gauss]
    return state


def restore_rng(state: dict, gen: torch.Generator | None = None, py: random.Random | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if gen is not None:
        gen.set_state(state["gen"])
    if py is not None:
        version, internal, gauss = state["py"]
        py.setstate((version, tuple(internal), gauss))
