"""How many CPU threads torch computes with: `threads` in the config, else the CPUs Slurm gave the
task, else torch's default (every core). Without a limit, two tasks sharing a node oversubscribe
it; and since reductions split over threads add up in another order, results agree bit for bit only
at the same thread count (provenance records it)."""

from __future__ import annotations

import os

import torch


def positive_threads(threads) -> int | None:
    """A configured thread count, or None where none is set; 0 or less fails in one line (0 is not "every core")."""
    if threads is None:
        return None
    if int(threads) < 1:
        raise ValueError(f"threads must be a positive number of CPU threads (or null), got {threads}")
    return int(threads)


def set_threads(cfg) -> int:
    threads = cfg.get("threads")
    threads = positive_threads(os.environ.get("SLURM_CPUS_PER_TASK") if threads is None else threads)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
